"""``MultiDiffusion``: the public entry point. It validates arguments, lays out the jobs of a task
(panorama windows; region prompts x windows) and runs the one engine: prompts -> embeddings (once)
-> canvas noise -> per step: views -> batched model calls -> fused prediction -> scheduler step ->
latents -> tiled decode -> images + parameters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from multidiffusion.engine.fusion import FusionPlan, InputComposer
from multidiffusion.engine.sampler import GuidedModel, SamplingStats, sample
from multidiffusion.engine.schedulers import SCHEDULERS, make_scheduler
from multidiffusion.engine.views import WEIGHTS, grid_views
from multidiffusion.engine.windows import TILINGS, WindowLayout, panorama_plans
from multidiffusion.models import ModelAdapter, adapter_for
from multidiffusion.models.loading import load_pipeline
from multidiffusion.options import (
    MAX_STEPS,
    OUTPUT_TYPES,
    check_choice,
    check_int,
    check_number,
    check_side,
    pair,
)
from multidiffusion.regions.bootstrap import bootstrap_composer, draw_backgrounds
from multidiffusion.regions.layout import Region, RegionLayout, region_layout
from multidiffusion.vae.codec import decode_latents, decode_to_uint8
from multidiffusion.version import __version__

__all__ = ["MultiDiffusion", "MultiDiffusionOutput"]

Generator = torch.Generator | list[torch.Generator] | None


@dataclass
class MultiDiffusionOutput:
    """Result of a call. ``images`` is a list of PIL images, an array, a tensor or the latents,
    by ``output_type``; ``parameters`` regenerate it (written into PNGs); ``stats`` count the cost."""

    images: Any
    parameters: dict[str, Any] = field(default_factory=dict)
    stats: SamplingStats = field(default_factory=SamplingStats)


class MultiDiffusion:
    """MultiDiffusion (Bar-Tal et al., ICML 2023) around a Stable Diffusion 1.x, 2.x or XL pipeline.

    >>> md = MultiDiffusion.from_pretrained("demo")
    >>> md.panorama("snowy mountains at sunset", width=1024).images[0].save("pano.png")

    ``MultiDiffusion(pipe)`` wraps a pipeline you already have, with its LoRAs, textual inversions
    and scheduler; ``from_pretrained`` loads one and sets the paper's sampler, DDIM.
    """

    def __init__(
        self,
        pipe: Any,
        scheduler: str | Any | None = None,
        model_name: str | None = None,
        *,
        clip_skip: int | None = None,
        crops_coords_top_left: str | None = None,
        original_size: str | tuple[int, int] | None = None,
    ):
        """``pipe``: any Stable Diffusion 1.x / 2.x / XL pipeline (text-to-image or img2img; its
        components are shared, not copied). ``clip_skip`` as in diffusers. SDXL only:
        ``crops_coords_top_left`` ("zero", default, or "offset": each view's offset on the canvas)
        and ``original_size`` ("canvas", default, "window" or (height, width) pixels) set the
        micro-conditioning of every view; see :mod:`multidiffusion.models.sdxl` for why."""
        self.adapter: ModelAdapter = adapter_for(
            pipe, clip_skip=clip_skip, crops_coords_top_left=crops_coords_top_left, original_size=original_size
        )
        self.scheduler = scheduler if scheduler is not None else self.pipe.scheduler
        make_scheduler(self.scheduler, self.pipe.scheduler.config)  # fail now on a bad name
        self.model_name = model_name or getattr(getattr(pipe, "config", None), "_name_or_path", None) or "custom"
        self._progress: dict[str, Any] = {}
        self._decode: dict[str, Any] = {}

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        *,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        scheduler: str | Any = "ddim",
        allow_pickle: bool = False,
        config: str | None = None,
        prediction_type: str | None = None,
        clip_skip: int | None = None,
        crops_coords_top_left: str | None = None,
        original_size: str | tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> MultiDiffusion:
        """Load ``model``: ``"demo"`` (shipped, offline), a Hugging Face repo id (local cache first),
        a diffusers folder, or a single ``.safetensors`` checkpoint of SD 1.x, 2.x or SDXL (its
        family is read from its tensor names; ``config`` names a diffusers folder or repo id of the
        same architecture, needed offline). Pickle checkpoints (.ckpt/.bin/.pt) load only with
        ``allow_pickle=True``. ``prediction_type`` ("epsilon", "v_prediction", "sample") overrides
        the model's, e.g. for v-prediction fine-tunes whose files don't say so. ``device`` defaults
        to CUDA when present, ``torch_dtype`` to float16 on accelerators and float32 on the CPU.
        The other options are the constructor's.
        """
        pipe = load_pipeline(
            model,
            torch_dtype=torch_dtype,
            device=device,
            allow_pickle=allow_pickle,
            config=config,
            prediction_type=prediction_type,
            **kwargs,
        )
        return cls(
            pipe,
            scheduler=scheduler,
            model_name=str(model),
            clip_skip=clip_skip,
            crops_coords_top_left=crops_coords_top_left,
            original_size=original_size,
        )

    # -- conveniences users of diffusers expect -------------------------------------------------
    @property
    def pipe(self) -> Any:
        return self.adapter.pipe

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MultiDiffusion:
        self.pipe.to(device=device, dtype=dtype)
        return self

    def compile(self, mode: str | None = None, **kwargs: Any) -> MultiDiffusion:
        """``torch.compile`` the UNet in place (``mode``: None, "reduce-overhead", "max-autotune").

        The first call of each shape compiles (tens of seconds to minutes), so it pays on long runs
        on a GPU; measured on a CPU, see the README's "Speed and memory". Shapes are static: keep
        ``view_batch_size`` dividing the number of views to avoid a second compilation.
        """
        self.adapter.unet.compile(mode=mode, dynamic=False, **kwargs)
        return self

    @property
    def family(self) -> str:
        """The model family: "sd" (SD 1.x / 2.x) or "sdxl"."""
        return self.adapter.family

    def load_lora(self, lora: str | os.PathLike | dict, adapter_name: str | None = None, **kwargs: Any) -> str:
        """Load a LoRA into the pipeline (diffusers' ``load_lora_weights``; needs peft) and return its
        adapter name; ``ValueError`` in one line when it was trained for another model family."""
        from multidiffusion.models.lora import load_lora

        return load_lora(self.pipe, lora, adapter_name, **kwargs)

    def set_vae_tiling(
        self, tile: int | None = None, overlap: int | None = None, norm_stats: str = "exact"
    ) -> MultiDiffusion:
        """How canvases larger than the VAE's tile are decoded (see :func:`~multidiffusion.vae.codec.decode_latents`):
        ``tile`` and ``overlap`` in latent pixels (defaults: the VAE's native size, at least 64, and a
        quarter of it); ``norm_stats="fast"`` measures GroupNorm statistics in one pass instead of
        layer by layer (about 2-3x faster decoding, visibly less faithful on trained VAEs)."""
        from multidiffusion.vae.tiles import NORM_STATS

        check_choice("norm_stats", norm_stats, NORM_STATS)
        self._decode = {"tile": tile, "overlap": overlap, "norm_stats": norm_stats}
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options for the tqdm progress bar, as in diffusers (``disable=True`` hides it)."""
        self._progress = kwargs

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels when not given: the model's native size and 4x that wide."""
        h, w = self.adapter.native_latent_size
        f = self.adapter.vae_scale_factor
        return h * f, 4 * w * f

    # -- tasks ------------------------------------------------------------------------------------
    @torch.no_grad()
    def panorama(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        circular: bool = False,
        view_batch_size: int | None = None,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        scheduler: str | Any | None = None,
        eta: float = 0.0,
        callback_on_step_end: Callable[..., dict | None] | None = None,
        tiling: str = "grid",
        weights: str = "uniform",
    ) -> MultiDiffusionOutput:
        """A panorama of any size: the paper's sliding windows (Sec. 4.1), all under one prompt.

        ``window`` and ``stride`` are in latent pixels (an int or (rows, columns)): window defaults
        to the model's native latent size (64 for SD 1.x/2-base), stride to window // 8 (the
        paper's 8). Layouts whose stride does not divide the canvas get a last window flush with
        the edge, so every latent pixel is denoised. ``circular`` makes a 360-degree panorama: the
        windows and the decode wrap around the horizontal edge. The other arguments are
        diffusers': ``latents`` is the initial canvas noise (B, C, height/f, width/f).

        Fast mode: ``tiling="shifted"`` denoises windows spaced by the stride (default: the window,
        no overlap) at a fresh random offset every step, about one model evaluation per latent
        pixel instead of ~7 (SpotDiffusion); the offsets are drawn from a generator seeded with
        ``generator``'s seed (0 without one), so runs are reproducible. ``weights="gaussian"``
        weights each window by a Gaussian centred on it (Mixture of Diffusers) instead of the
        paper's uniform W_i = 1; it matters where windows overlap.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else []
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        negatives = _negatives("negative_prompt", negative_prompt, len(prompts))
        height, width = self._canvas(height, width)
        check_choice("tiling", tiling, TILINGS)
        check_choice("weights", weights, WEIGHTS)
        win, strd = self._window(window, stride, tiling)
        canvas = (height // self._f, width // self._f)
        layout = WindowLayout(canvas, win, strd, tiling, bool(circular), seed=_offset_seed(generator))
        params = {
            "mode": "panorama",
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "window": list(win) if win[0] != win[1] else win[0],
            "stride": list(strd) if strd[0] != strd[1] else strd[0],
            "circular": bool(circular),
            "tiling": tiling,
            "weights": weights,
        }
        return self._generate(
            [prompts],
            [negatives],
            [guidance_scale],
            panorama_plans(layout, weights, device=self.device),
            params=params,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            view_batch_size=view_batch_size,
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            latents=latents,
            output_type=output_type,
            scheduler=scheduler,
            eta=eta,
            circular=bool(circular),
            callback_on_step_end=callback_on_step_end,
        )

    def region_layout(
        self,
        height: int | None = None,
        width: int | None = None,
        background: str | None = None,
        regions: Sequence[Region | dict[str, Any]] = (),
    ) -> RegionLayout:
        """The regions rasterised on this model's latent grid, as :meth:`regions` uses them: per
        prompt slot (background first) the masks M_p and Eq. 5 weights W_p; ``.preview()`` draws it.
        ``height`` and ``width`` default to the model's native size."""
        height, width = self._canvas(height, width, native=True)
        return region_layout(regions, height, width, self._f, background)

    @torch.no_grad()
    def regions(
        self,
        height: int | None = None,
        width: int | None = None,
        background: str | None = None,
        regions: Sequence[Region | dict[str, Any]] = (),
        bootstrap_steps: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | None = None,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        circular: bool = False,
        view_batch_size: int | None = None,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        scheduler: str | Any | None = None,
        eta: float = 0.0,
        callback_on_step_end: Callable[..., dict | None] | None = None,
    ) -> MultiDiffusionOutput:
        """Region-based generation (paper Sec. 4.2): each region of the canvas gets its own prompt.

        ``regions`` are :class:`Region` objects (a prompt with a mask, a box, or a colour of a
        segmentation map via ``Region.from_segmentation``); ``background`` is the prompt of the
        complement of their union (None only if they cover the canvas). Each prompt's weights on
        the latent grid enter Eq. 5 (see :class:`~multidiffusion.regions.layout.RegionLayout`); a prompt
        is evaluated only in the windows where its weight is non-zero.

        ``bootstrap_steps``: for that many first steps each region is denoised over a random
        constant-colour background (:mod:`~multidiffusion.regions.bootstrap`); default 40 % of the steps
        (the paper's 20 of 50), 0 turns it off. ``height`` and ``width`` default to the model's
        native size, where the canvas is a single window: one view per prompt, as in the paper.
        Larger canvases, panoramas included, use sliding windows (``window``, ``stride`` and
        ``circular`` as in :meth:`panorama`). ``negative_prompt`` is the background's and the
        default of the regions'; the other arguments are :meth:`panorama`'s. ``generator`` also
        draws the bootstrap backgrounds, after the initial noise; with ``latents`` given and no
        generator they come from torch's global generator.
        """
        height, width = self._canvas(height, width, native=True)
        steps = check_int("num_inference_steps", num_inference_steps, 1, MAX_STEPS)
        if bootstrap_steps is None:
            bootstrap_steps = int(0.4 * steps + 0.5)
        bootstrap_steps = check_int("bootstrap_steps", bootstrap_steps, 0, steps)
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt must be a string or None, got {negative_prompt!r}")
        layout = region_layout(regions, height, width, self._f, background)
        win, strd = self._window(window, stride)
        canvas = (height // self._f, width // self._f)
        views = grid_views(*canvas, win, strd, circular=bool(circular))
        plan = FusionPlan(layout.jobs(views), canvas, self.device)

        composer: dict[str, Any] = {}

        def prepare(noise: torch.Tensor, sched: Any) -> None:
            if not bootstrap_steps or not layout.regions:
                return
            backgrounds = draw_backgrounds(
                self.adapter.vae,
                steps=bootstrap_steps,
                views=len(views),
                regions=len(layout.regions),
                images=noise.shape[0],
                size=views[0].size,
                generator=generator,
                dtype=self.dtype,
            )
            composer["for_step"] = bootstrap_composer(layout, views, backgrounds, noise, sched)

        def composer_for_step(i: int, t: torch.Tensor) -> InputComposer | None:
            return composer["for_step"](i, t) if composer else None

        params = {
            "mode": "regions",
            "background": background,
            "negative_prompt": negative_prompt,
            "regions": layout.region_parameters(),
            "bootstrap_steps": bootstrap_steps,
            "window": list(win) if win[0] != win[1] else win[0],
            "stride": list(strd) if strd[0] != strd[1] else strd[0],
            "circular": bool(circular),
        }
        return self._generate(
            [[p] for p in layout.prompts],
            [[n] for n in layout.negative_prompts(negative_prompt)],
            layout.guidance_scales(guidance_scale),
            lambda i: plan,
            params=params,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            view_batch_size=view_batch_size,
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            latents=latents,
            output_type=output_type,
            scheduler=scheduler,
            eta=eta,
            circular=bool(circular),
            callback_on_step_end=callback_on_step_end,
            composer_for_step=composer_for_step,
            prepare=prepare,
        )

    # -- shared machinery -------------------------------------------------------------------------
    @property
    def _f(self) -> int:
        return self.adapter.vae_scale_factor

    def _canvas(self, height: int | None, width: int | None, native: bool = False) -> tuple[int, int]:
        """Validated (height, width); defaults: :attr:`default_size`, or the model's native size."""
        default_h, default_w = self.default_size
        if native:
            h, w = self.adapter.native_latent_size
            default_h, default_w = h * self._f, w * self._f
        multiple = max(8, self._f)
        return (
            check_side("height", default_h if height is None else height, multiple),
            check_side("width", default_w if width is None else width, multiple),
        )

    def _window(self, window: Any, stride: Any, tiling: str = "grid") -> tuple[tuple[int, int], tuple[int, int]]:
        """Window and stride in latent pixels; the stride defaults to window // 8 for the paper's grid
        and to the window (no overlap) for the shifted fast mode."""
        native = self.adapter.native_latent_size
        win_h, win_w = native if window is None else pair("window", window)
        win = (check_int("window", win_h, 8), check_int("window", win_w, 8))
        if stride is None:
            strd = win if tiling == "shifted" else (max(1, win[0] // 8), max(1, win[1] // 8))
        else:
            s_h, s_w = pair("stride", stride)
            strd = (check_int("stride", s_h, 1, win[0]), check_int("stride", s_w, 1, win[1]))
        return win, strd

    def _generate(
        self,
        prompts: Sequence[Sequence[str]],
        negatives: Sequence[Sequence[str]],
        guidance: Sequence[float],
        plan_for_step: Callable[[int], FusionPlan],
        *,
        params: dict[str, Any],
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        view_batch_size: int | None,
        num_images_per_prompt: int,
        generator: Generator,
        latents: torch.Tensor | None,
        output_type: str,
        scheduler: str | Any | None,
        eta: float,
        circular: bool,
        callback_on_step_end: Callable[..., dict | None] | None,
        composer_for_step: Callable[[int, torch.Tensor], InputComposer | None] | None = None,
        prepare: Callable[[torch.Tensor, Any], None] | None = None,
    ) -> MultiDiffusionOutput:
        """Encode prompts once, sample the canvas, decode. ``prompts[p]`` is prompt slot p (its
        list holds one prompt per canvas in the batch); jobs refer to slots by index.
        ``prepare(noise, scheduler)`` runs once the initial noise and scheduler exist."""
        steps = check_int("num_inference_steps", num_inference_steps, 1, MAX_STEPS)
        check_number("guidance_scale", guidance_scale, 0)
        for g in guidance:
            check_number("guidance_scale", g, 0)
        check_number("eta", eta, 0, 1)
        n = check_int("num_images_per_prompt", num_images_per_prompt, 1, 64)
        if view_batch_size is not None:
            view_batch_size = check_int("view_batch_size", view_batch_size, 1)
        check_choice("output_type", output_type, OUTPUT_TYPES)
        sched = make_scheduler(scheduler if scheduler is not None else self.scheduler, self.pipe.scheduler.config)

        batch = len(prompts[0]) * n
        shape = (batch, self.adapter.latent_channels, height // self._f, width // self._f)
        noise = self._initial_noise(shape, generator, latents)
        use_cfg = max(guidance) > 1.0
        cond = self.adapter.encode(prompts, negatives, n, use_cfg)
        stats = SamplingStats()
        model = GuidedModel(self.adapter, cond, guidance, shape[-2:], stats)
        if prepare is not None:
            prepare(noise, sched)

        callback = None
        if callback_on_step_end is not None:

            def callback(i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
                result = callback_on_step_end(self, i, t, {"latents": x})
                return (result or {}).get("latents")

        with model.attached():
            x = sample(
                model,
                sched,
                noise,
                steps,
                plan_for_step,
                batch_size=view_batch_size or self._auto_batch(),
                composer_for_step=composer_for_step,
                generator=generator,
                eta=eta,
                callback=callback,
                progress=self._progress,
            )
        params = {
            **params,
            **self.adapter.parameters(),
            "model": self.model_name,
            "height": height,
            "width": width,
            "num_inference_steps": steps,
            "guidance_scale": guidance_scale,
            "num_images_per_prompt": n,
            "scheduler": _scheduler_label(scheduler if scheduler is not None else self.scheduler),
            "eta": eta,
            "seed": _seed_of(generator, latents),
            "multidiffusion_version": __version__,
        }
        return MultiDiffusionOutput(self._postprocess(x, output_type, circular), params, stats)

    def _initial_noise(self, shape: tuple[int, ...], generator: Generator, latents: torch.Tensor | None):
        if latents is None:
            return randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
        if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(
                f"latents must have shape {shape} (images, channels, height/{self._f}, width/{self._f}), got {got}"
            )
        return latents.to(device=self.device, dtype=self.dtype)

    def _auto_batch(self) -> int:
        """Views per UNet call when not given: about 16k latent pixels of native windows per call on
        the CPU (4 of SD's 64x64 windows, 64 of the demo model's 16x16), 4x that on accelerators,
        where batching pays (16 SD windows, 4 SDXL ones). On a 2-core CPU the demo model's 64 x 1024
        panorama takes 31 s at 64 views per call and 44 s at 4 (25 steps)."""
        h, w = self.adapter.native_latent_size
        budget = 4 * 64 * 64 * (4 if self.device.type == "cuda" else 1)
        return max(1, budget // (h * w))

    def _postprocess(self, latents: torch.Tensor, output_type: str, circular: bool) -> Any:
        if output_type == "latent":
            return latents
        if output_type == "pil":  # 8 bits per band of rows: no float copy of the whole image
            from PIL import Image

            pixels = decode_to_uint8(self.adapter.vae, latents, circular=circular, **self._decode).numpy()
            return [Image.fromarray(p) for p in pixels]
        image = decode_latents(self.adapter.vae, latents, circular=circular, **self._decode)
        processor = VaeImageProcessor(vae_scale_factor=self._f)
        return processor.postprocess(image, output_type=output_type)


def _negatives(name: str, value: str | list[str] | None, count: int) -> list[str]:
    if value is None:
        return [""] * count
    if isinstance(value, str):
        return [value] * count
    if isinstance(value, (list, tuple)) and len(value) == count and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{name} must be a string or a list of {count} strings (one per prompt), got {value!r}")


def _scheduler_label(scheduler: Any) -> str:
    if isinstance(scheduler, str):
        from multidiffusion.engine.schedulers import scheduler_name

        return scheduler_name(scheduler)
    name = type(scheduler).__name__
    for label, (cls_name, overrides) in SCHEDULERS.items():
        if cls_name == name and all(scheduler.config.get(k) == v for k, v in overrides.items()):
            return label
    return name


def _offset_seed(generator: Generator) -> int:
    """Seed of the fast mode's window offsets: the noise generator's seed, so ``--seed`` fixes both."""
    first = generator[0] if isinstance(generator, list) and generator else generator
    return int(first.initial_seed()) if isinstance(first, torch.Generator) else 0


def _seed_of(generator: Generator, latents: torch.Tensor | None) -> int | None:
    if latents is None and isinstance(generator, torch.Generator):
        return int(generator.initial_seed())
    return None
