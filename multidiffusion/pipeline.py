"""``MultiDiffusion``: the public entry point. Load a model, then one short method per task: each
builds the task's options (:mod:`multidiffusion.options`, where every argument is checked) and hands
them to :meth:`MultiDiffusion.generate`, which binds the task to the model
(:mod:`multidiffusion.tasks`) and runs the one engine (:mod:`multidiffusion.runner`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from multidiffusion.engine.adapter import ModelAdapter
from multidiffusion.engine.schedulers import make_scheduler
from multidiffusion.files.metadata import model_label
from multidiffusion.models import adapter_for
from multidiffusion.models.loading import load_pipeline
from multidiffusion.options import (
    Img2ImgOptions,
    InpaintOptions,
    OutpaintOptions,
    PanoramaOptions,
    RegionsOptions,
    SamplingOptions,
    UpscaleOptions,
    check_choice,
)
from multidiffusion.options.arguments import CALL_ARGUMENTS, PlacementArgs, SamplingArgs, task_method
from multidiffusion.output import MultiDiffusionOutput
from multidiffusion.regions.layout import Region, RegionLayout, region_layout
from multidiffusion.runner import RunSettings, run
from multidiffusion.tasks import task_for
from multidiffusion.tasks.common import canvas_size

__all__ = ["MultiDiffusion", "MultiDiffusionOutput"]

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

Generator = torch.Generator | list[torch.Generator] | None


class MultiDiffusion:
    """MultiDiffusion (Bar-Tal et al., ICML 2023) around a Stable Diffusion 1.x, 2.x, XL, 3 / 3.5 or
    FLUX.1 pipeline.

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
        positions: str | None = None,
        true_cfg_scale: float | None = None,
        max_sequence_length: int | None = None,
        skip_guidance_layers: Sequence[int] | None = None,
        skip_layer_guidance_scale: float | None = None,
        skip_layer_guidance_start: float | None = None,
        skip_layer_guidance_stop: float | None = None,
        share_prefix: bool = True,
        share_unconditional: bool = True,
        controlnet: Any = None,
    ):
        """``pipe``: any Stable Diffusion 1.x / 2.x / XL pipeline (text-to-image, img2img or inpainting;
        or a ``StableDiffusion3Pipeline`` / ``FluxPipeline`` or their img2img siblings;
        its components are shared, not copied; an inpainting UNet serves :meth:`inpaint` and
        :meth:`outpaint` only). ``clip_skip`` as in diffusers. SDXL only:
        ``crops_coords_top_left`` ("zero", default, or "offset": each view's offset on the canvas)
        and ``original_size`` ("canvas", default, "window" or (height, width) pixels) set the
        micro-conditioning of every view; see :mod:`multidiffusion.models.sdxl` for why.

        Diffusion transformers (``StableDiffusion3Pipeline``, ``FluxPipeline``): ``max_sequence_length``
        (T5 tokens); FLUX only: ``positions`` ("view", default: each view's rotary ids are an image
        of its own size; "canvas": its place on the canvas) and ``true_cfg_scale`` (> 1: true
        classifier-free guidance with the negative prompt; FLUX.1-dev takes ``guidance_scale`` as
        its distilled guidance embedding). SD 3 only: ``skip_guidance_layers`` (e.g. [7, 8, 9] for SD
        3.5 medium) with ``skip_layer_guidance_scale`` / ``_start`` / ``_stop`` (default 2.8, 0.01,
        0.2), StableDiffusion3Pipeline's skip-layer guidance. See :mod:`multidiffusion.models.flux`
        and ``.sd3``.

        ``share_prefix`` (guidance branches share the UNet layers before the first cross-attention)
        and ``share_unconditional`` (the prompts of one window share ε_u) are exact optimisations,
        on by default; they are attributes too, so a comparison can switch them off.

        ``controlnet``: a ``ControlNetModel``, its folder, repo id or ``.safetensors`` file, or a list
        of them (several ControlNets); a diffusers ControlNet pipeline passed as ``pipe`` brings its
        own. Every task then takes ``control_image`` and diffusers' other ControlNet arguments."""
        self.adapter: ModelAdapter = adapter_for(
            pipe,
            clip_skip=clip_skip,
            crops_coords_top_left=crops_coords_top_left,
            original_size=original_size,
            positions=positions,
            true_cfg_scale=true_cfg_scale,
            max_sequence_length=max_sequence_length,
            skip_guidance_layers=skip_guidance_layers,
            skip_layer_guidance_scale=skip_layer_guidance_scale,
            skip_layer_guidance_start=skip_layer_guidance_start,
            skip_layer_guidance_stop=skip_layer_guidance_stop,
        )
        self.set_controlnet(controlnet if controlnet is not None else self.adapter.controlnet)
        self.scheduler = scheduler if scheduler is not None else self.pipe.scheduler
        make_scheduler(self.scheduler, self.pipe.scheduler.config)  # fail now on a bad name
        self.model_name = model_name or getattr(getattr(pipe, "config", None), "_name_or_path", None) or "custom"
        self.share_prefix = share_prefix
        self.share_unconditional = share_unconditional
        self._progress: dict[str, Any] = {}
        self._decode: dict[str, Any] = {}
        self.lora_files: dict[str, dict[str, Any]] = {}
        """LoRAs loaded with :meth:`load_lora`, by adapter name: what results record of them."""

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        *,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        scheduler: str | Any | None = None,
        allow_pickle: bool = False,
        config: str | None = None,
        prediction_type: str | None = None,
        clip_skip: int | None = None,
        crops_coords_top_left: str | None = None,
        original_size: str | tuple[int, int] | None = None,
        positions: str | None = None,
        true_cfg_scale: float | None = None,
        max_sequence_length: int | None = None,
        skip_guidance_layers: Sequence[int] | None = None,
        skip_layer_guidance_scale: float | None = None,
        skip_layer_guidance_start: float | None = None,
        skip_layer_guidance_stop: float | None = None,
        controlnet: Any = None,
        **kwargs: Any,
    ) -> MultiDiffusion:
        """Load ``model``: ``"demo"`` (shipped, offline), a Hugging Face repo id (local cache first),
        a diffusers folder, or a single ``.safetensors`` checkpoint of SD 1.x, 2.x or SDXL (its
        family is read from its tensor names; ``config`` names a diffusers folder or repo id of the
        same architecture, needed offline). Pickle checkpoints (.ckpt/.bin/.pt) load only with
        ``allow_pickle=True``. ``prediction_type`` ("epsilon", "v_prediction", "sample") overrides
        the model's, e.g. for v-prediction fine-tunes whose files don't say so. ``device`` defaults
        to CUDA when present, ``torch_dtype`` to float16 on accelerators and float32 on the CPU.
        ``controlnet``: a ControlNet folder, repo id or ``.safetensors`` file (or a list), loaded
        the same way (pickles only with ``allow_pickle``) and checked against the model's family.
        ``scheduler`` defaults to "ddim" (the paper's sampler) for UNet models and to the model's own
        flow-matching scheduler for diffusion transformers (SD 3, FLUX). Other keyword arguments go
        to diffusers' ``from_pretrained`` (e.g. ``quantization_config``, ``transformer=``). The
        other options are the constructor's.
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
        if scheduler is None and getattr(pipe, "transformer", None) is None:
            scheduler = "ddim"
        md = cls(
            pipe,
            scheduler=scheduler,
            model_name=model_label(model),
            clip_skip=clip_skip,
            crops_coords_top_left=crops_coords_top_left,
            original_size=original_size,
            positions=positions,
            true_cfg_scale=true_cfg_scale,
            max_sequence_length=max_sequence_length,
            skip_guidance_layers=skip_guidance_layers,
            skip_layer_guidance_scale=skip_layer_guidance_scale,
            skip_layer_guidance_start=skip_layer_guidance_start,
            skip_layer_guidance_stop=skip_layer_guidance_stop,
        )
        return md.set_controlnet(controlnet, allow_pickle=allow_pickle) if controlnet is not None else md

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
        """The model family: "sd" (SD 1.x / 2.x), "sdxl", "sd3" (SD 3 / 3.5) or "flux" (FLUX.1)."""
        return self.adapter.family

    def load_lora(
        self, lora: str | os.PathLike | dict, adapter_name: str | None = None, weight: float = 1.0, **kwargs: Any
    ) -> str:
        """Load a LoRA into the pipeline (diffusers' ``load_lora_weights``; needs peft) and return its
        adapter name; ``ValueError`` in one line when it was trained for another model family.

        It acts on the whole image at ``weight``, stacked with the LoRAs already active; with
        ``weight=0`` it acts only in the regions that name it (``Region(loras={name: w})``). A LoRA
        file is recorded in every result's parameters (``lora_files``: name, file name, SHA-256 and
        weight), never loaded back from them."""
        from multidiffusion.models.files import sha256_file
        from multidiffusion.models.lora import load_lora

        name = load_lora(self.pipe, lora, adapter_name, weight, **kwargs)
        path = Path(lora).expanduser() if isinstance(lora, (str, os.PathLike)) else None
        if path is not None and path.is_file():
            self.lora_files[name] = {"file": path.name, "sha256": sha256_file(path), "weight": float(weight)}
        else:
            self.lora_files[name] = {"file": str(lora) if path is not None else "a state dict", "weight": float(weight)}
        return name

    def set_controlnet(self, controlnet: Any, allow_pickle: bool = False) -> MultiDiffusion:
        """Run with ``controlnet`` (as the constructor takes it; None: without), checked against the
        model's family."""
        from multidiffusion.models.controlnet import load_controlnets

        nets = None if controlnet is None else load_controlnets(controlnet, self.adapter, allow_pickle=allow_pickle)
        self.adapter.controlnet = nets
        return self

    def set_vae_tiling(
        self,
        tile: int | None = None,
        overlap: int | None = None,
        norm_stats: str = "exact",
        cache_mb: float | None = None,
    ) -> MultiDiffusion:
        """How canvases larger than the VAE's tile are decoded and encoded (see
        :func:`~multidiffusion.vae.codec.decode_latents`): ``tile`` and ``overlap`` in latent pixels
        (defaults: the VAE's native size, at least 64, and a quarter of it); ``norm_stats="fast"``
        measures GroupNorm statistics in one pass per tile instead of layer by layer (visibly less
        faithful on trained VAEs); ``cache_mb``: the memory the exact statistics may keep to resume
        their passes (default: 2048 MiB, at most a quarter of the free memory; 0: the least memory,
        several times slower, with the memory freed by each tile given back to the system on the
        CPU, see :mod:`multidiffusion.vae.heap`)."""
        from multidiffusion.vae.codec import check_cache_mb
        from multidiffusion.vae.tiles import NORM_STATS

        check_choice("norm_stats", norm_stats, NORM_STATS)
        check_cache_mb(cache_mb)
        self._decode = {"tile": tile, "overlap": overlap, "norm_stats": norm_stats, "cache_mb": cache_mb}
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

    # -- tasks: each method's own parameters, then the shared ones (arguments.SamplingArgs) ----------
    @task_method(PanoramaOptions, PlacementArgs)
    def panorama(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        **kwargs: Unpack[PlacementArgs],
    ) -> MultiDiffusionOutput:
        """A panorama of any size: the paper's sliding windows (Sec. 4.1), all under one prompt.

        ``window`` and ``stride`` are in latent pixels (an int or (rows, columns)): window defaults
        to the model's native latent size (64 for SD 1.x/2-base), stride to window // 8 (the
        paper's 8). Layouts whose stride does not divide the canvas get a last window flush with
        the edge, so every latent pixel is denoised. ``circular`` makes a 360-degree panorama: the
        windows and the decode wrap around the horizontal edge. The other arguments are
        diffusers': ``latents`` is the initial canvas noise (B, C, height/f, width/f).
        ``num_inference_steps`` and ``guidance_scale`` left unset take the model family's diffusers
        defaults (SD 1.x/2.x 50 at 7.5, SDXL 50 at 5.0, SD 3 28 at 7.0, FLUX.1-dev 28 at 3.5,
        FLUX.1-schnell 4), for every task; results record the values used.

        Fast mode: ``placement="shifted"`` denoises windows at a fresh random offset every step
        (SpotDiffusion), overlapping by 1/8 by default (stride 7/8 of the window) and weighted by a
        Gaussian centred on each (Mixture of Diffusers): about 1.2 model evaluations per latent
        pixel instead of ~7. The offsets are drawn from a generator seeded with ``generator``'s
        seed (0 without one), so runs are reproducible. ``weights`` ("uniform", the paper's W_i = 1,
        or "gaussian") overrides the placement's default.

        ControlNet (when the model has one: ``from_pretrained(..., controlnet=...)`` or a diffusers
        ControlNet pipeline): ``control_image`` (one per ControlNet) belongs to the canvas (another
        size of the same aspect ratio is resized) and each view is conditioned on its crop;
        ``controlnet_conditioning_scale``, ``control_guidance_start`` / ``end`` and ``guess_mode``
        are diffusers'; ``control_preprocessor`` ("none", "canny", "tile", "tile-grey", one per
        control image or one for all) makes the map from the image first
        (:mod:`multidiffusion.preprocessors`). A Union ControlNet (``ControlNetUnionModel``, e.g.
        ControlNet-Union SDXL) takes several control images, each with its ``control_mode`` (as
        diffusers' ``StableDiffusionXLControlNetUnionPipeline``). Every task takes these.
        """
        return self._run(PanoramaOptions, kwargs, prompt=prompt, height=height, width=width)

    def region_layout(
        self,
        height: int | None = None,
        width: int | None = None,
        background: str | None = None,
        regions: Sequence[Region | dict[str, Any]] = (),
    ) -> RegionLayout:
        """The regions rasterised on this model's latent grid, as :meth:`regions` uses them: per
        prompt slot (background first) the masks M_p and Eq. 5 weights W_p; ``.preview()`` draws it.
        ``height`` and ``width`` default to the model's native size. Pass it to :meth:`generate`
        (``layout=``) to run the same regions without rasterising them again."""
        options = RegionsOptions(height=height, width=width, background=background, regions=regions)
        h, w = self.adapter.native_latent_size
        f = self.adapter.vae_scale_factor
        size = canvas_size(options, self.adapter, (h * f, w * f))
        return region_layout(options.regions, *size, f, options.background)

    @task_method(RegionsOptions, SamplingArgs)
    def regions(
        self,
        height: int | None = None,
        width: int | None = None,
        background: str | None = None,
        regions: Sequence[Region | dict[str, Any]] = (),
        bootstrap_steps: int | None = None,
        image: Any = None,
        strength: float | None = None,
        **kwargs: Unpack[SamplingArgs],
    ) -> MultiDiffusionOutput:
        """Region-based generation (paper Sec. 4.2): each region of the canvas gets its own prompt.

        ``regions`` are :class:`Region` objects (a prompt with a mask, a box, or a colour of a
        segmentation map via ``Region.from_segmentation``); ``background`` is the prompt of the
        complement of their union (None only if they cover the canvas). Each prompt's weights on
        the latent grid enter Eq. 5 (see :class:`~multidiffusion.regions.RegionLayout`); a prompt
        is evaluated only in the windows where its weight is non-zero.

        ``bootstrap_steps``: for that many first steps each region is denoised over a random
        constant-colour background (:mod:`~multidiffusion.regions.bootstrap`); default 40 % of the
        steps (the paper's 20 of 50), 0 turns it off. ``height`` and ``width`` default to the
        model's native size, where the canvas is a single window: one view per prompt, as in the
        paper. Larger canvases, panoramas included, use sliding windows (``window``, ``stride`` and
        ``circular`` as in :meth:`panorama`). ``negative_prompt`` is the background's and the
        default of the regions'; the other arguments are :meth:`panorama`'s. ``generator`` also
        draws the bootstrap backgrounds, after the initial noise; with ``latents`` given and no
        generator they come from torch's global generator.

        ``image`` (a file, PIL image, array or tensor) re-works that image under the layout from
        ``strength`` (default 0.75), as :meth:`img2img` does; the canvas defaults to its size.
        """
        given = dict(height=height, width=width, background=background, regions=regions, image=image)
        return self._run(RegionsOptions, kwargs, **given, bootstrap_steps=bootstrap_steps, strength=strength)

    @task_method(Img2ImgOptions, PlacementArgs)
    def img2img(
        self,
        image: Any,
        prompt: str | list[str],
        strength: float = 0.75,
        height: int | None = None,
        width: int | None = None,
        **kwargs: Unpack[PlacementArgs],
    ) -> MultiDiffusionOutput:
        """Re-work an image of any size under ``prompt`` (SDEdit over sliding windows).

        ``image``: a file, a PIL image, an (H, W, 3) array or a (3, H, W) tensor in [0, 1]; the
        canvas is its size rounded down to multiples of 8, or ``height`` x ``width`` (resized,
        Lanczos). It is encoded in tiles and noised to the step ``strength`` says (diffusers'
        convention: the last ``int(num_inference_steps * strength)`` steps run); the rest are
        :meth:`panorama`'s arguments, fast mode and ``circular`` included. ``latents`` is the
        noise added to the encoded image. At the model's native size with the grid placement this
        equals diffusers' img2img pipelines.
        """
        given = dict(image=image, prompt=prompt, strength=strength, height=height, width=width)
        return self._run(Img2ImgOptions, kwargs, **given)

    @task_method(UpscaleOptions, PlacementArgs)
    def upscale(
        self,
        image: Any,
        scale: float = 2.0,
        prompt: str | list[str] = "",
        strength: float = 0.35,
        upscaler: str | os.PathLike | Callable[..., Any] = "lanczos",
        noise_inversion: bool = False,
        inversion_steps: int | None = None,
        allow_pickle: bool = False,
        **kwargs: Unpack[PlacementArgs],
    ) -> MultiDiffusionOutput:
        """Upscale ``image`` ``scale`` times (1 to 8): resized by ``upscaler`` ("lanczos", the default,
        or "bicubic", "bilinear", "nearest"; an ESRGAN-family model file read by spandrel, from the
        ``upscale`` extra; or any callable PIL image -> PIL image), then encoded in tiles, re-worked
        by MultiDiffusion from ``strength`` and decoded in tiles: memory follows the tile and the
        window, not the image. The prompt may be empty. ``noise_inversion`` starts from a DDIM
        inversion of the resized image's latents (``inversion_steps`` model steps, default the
        steps that run) instead of fresh noise, keeping more of the input's detail.
        ``placement="shifted"`` (the fast mode) pays most here: ~1.5 model evaluations per latent
        pixel per step on canvases several windows wide, where the paper's grid costs 20-50 (2-D
        canvases). ``allow_pickle`` lets a ``.pth`` upscaler be unpickled.
        """
        given = dict(image=image, scale=scale, prompt=prompt, strength=strength, upscaler=upscaler)
        inversion = dict(noise_inversion=noise_inversion, inversion_steps=inversion_steps)
        return self._run(UpscaleOptions, kwargs, **given, **inversion, allow_pickle=allow_pickle)

    @task_method(InpaintOptions, PlacementArgs)
    def inpaint(
        self,
        image: Any,
        mask: Any,
        prompt: str | list[str],
        strength: float = 1.0,
        mask_blur: int = 4,
        height: int | None = None,
        width: int | None = None,
        **kwargs: Unpack[PlacementArgs],
    ) -> MultiDiffusionOutput:
        """Repaint the white part of ``mask`` in ``image`` (any size) under ``prompt``, keeping the rest.

        ``mask``: white = repaint, black = keep (a file, PIL image or array of the image's size or
        aspect ratio), feathered by ``mask_blur`` pixels. With any model the known image is blended
        back after every step (diffusers' latent blending); a 9-channel inpainting UNet (SD 1.5/2
        or SDXL inpainting) also sees the mask and the masked image in every view. ``strength`` 1
        repaints from pure noise; the rest are :meth:`img2img`'s arguments.
        """
        given = dict(image=image, mask=mask, prompt=prompt, strength=strength, mask_blur=mask_blur)
        return self._run(InpaintOptions, kwargs, **given, height=height, width=width)

    @task_method(OutpaintOptions, PlacementArgs)
    def outpaint(
        self,
        image: Any,
        prompt: str | list[str],
        left: int = 0,
        right: int = 0,
        top: int = 0,
        bottom: int = 0,
        overlap: int = 16,
        mask_blur: int = 8,
        strength: float = 1.0,
        **kwargs: Unpack[PlacementArgs],
    ) -> MultiDiffusionOutput:
        """Extend ``image`` by ``left``, ``right``, ``top`` and ``bottom`` pixels (multiples of 8) under
        ``prompt``: an inpainting of a larger canvas whose mask is the new area plus ``overlap``
        pixels of the image along each new side (feathered by ``mask_blur``). With ``circular=True``
        the canvas wraps around horizontally, so extending a photo left and right makes a seamless
        360-degree panorama. The rest are :meth:`inpaint`'s arguments.
        """
        sides = dict(left=left, right=right, top=top, bottom=bottom)
        given = dict(image=image, prompt=prompt, overlap=overlap, mask_blur=mask_blur, strength=strength)
        return self._run(OutpaintOptions, kwargs, **sides, **given)

    def _run(self, task: type[SamplingOptions], keywords: dict[str, Any], **given: Any) -> MultiDiffusionOutput:
        """Run a task method: its options from its own arguments and the shared keywords, the call's
        objects (generator, latents, callback) passed on beside them."""
        call = {k: keywords.pop(k) for k in CALL_ARGUMENTS if k in keywords}
        return self.generate(task(**given, **keywords), **call)

    @torch.no_grad()
    def generate(
        self,
        options: SamplingOptions,
        *,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable[..., dict | None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        layout: RegionLayout | None = None,
    ) -> MultiDiffusionOutput:
        """Run any task from its checked options (what the task methods above, the command line,
        scene files and the web app all call). ``should_stop()`` is asked after every step; True
        raises :class:`~multidiffusion.runner.Cancelled`. Without ``generator`` and
        ``latents``, ``options.seed`` seeds a CPU generator. ``layout``: the regions task's layout from
        :meth:`region_layout` (used when it was made from the same regions and canvas)."""
        if not isinstance(options, SamplingOptions):
            raise TypeError(f"options must be task options (e.g. PanoramaOptions), got {type(options).__name__}")
        context = {"layout": layout} if options.task == "regions" else {}
        task = task_for(options, self.adapter, **context)
        settings = RunSettings(
            scheduler=self.scheduler,
            model_name=self.model_name,
            share_prefix=self.share_prefix,
            share_unconditional=self.share_unconditional,
            progress=self._progress,
            decode=self._decode,
            lora_files=self.lora_files,
        )
        return run(
            task,
            settings,
            generator=generator,
            latents=latents,
            callback_on_step_end=callback_on_step_end,
            pipeline=self,
            should_stop=should_stop,
        )
