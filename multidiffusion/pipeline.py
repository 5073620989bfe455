"""``MultiDiffusion``: the public entry point. Load a model, then one short method per task
(:mod:`multidiffusion.task_methods`): each builds the task's options (:mod:`multidiffusion.options`,
where every argument is checked) and hands them to :meth:`MultiDiffusion.generate`, which binds the
task to the model (:mod:`multidiffusion.tasks`) and runs the one engine (:mod:`multidiffusion.runner`).
Every conditioning kind adds its methods (``load_ip_adapter``, ...: :mod:`multidiffusion.conditionings`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from multidiffusion.conditionings import ConditioningMethods
from multidiffusion.engine.adapter import ModelAdapter
from multidiffusion.engine.schedulers import few_step_schedule, make_scheduler
from multidiffusion.files.metadata import model_label
from multidiffusion.models import adapter_for, split_model_options
from multidiffusion.models.guidance_embedding import embeds_guidance
from multidiffusion.models.loading import load_pipeline
from multidiffusion.options import (
    RegionsOptions,
    SamplingOptions,
    check_choice,
)
from multidiffusion.output import MultiDiffusionOutput
from multidiffusion.regions.layout import Region, RegionLayout, region_layout
from multidiffusion.runner import RunSettings, run
from multidiffusion.runner.text_encoders import EncodedPrompts
from multidiffusion.task_methods import TaskMethods
from multidiffusion.tasks import task_for
from multidiffusion.tasks.common import canvas_size

__all__ = ["MultiDiffusion", "MultiDiffusionOutput"]

if TYPE_CHECKING:
    pass  # typing.Unpack from Python 3.11

Generator = torch.Generator | list[torch.Generator] | None


class MultiDiffusion(TaskMethods, ConditioningMethods):
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
        share_prefix: bool = True,
        share_unconditional: bool = True,
        controlnet: Any = None,
        release_text_encoders: bool = False,
        **model_options: Any,
    ):
        """``pipe``: any Stable Diffusion 1.x / 2.x / XL pipeline (text-to-image, img2img or inpainting;
        or a ``StableDiffusion3Pipeline`` / ``FluxPipeline`` or their img2img siblings;
        its components are shared, not copied; an inpainting UNet serves :meth:`inpaint` and
        :meth:`outpaint` only).

        ``model_options``: the model family's options, each family declaring its own (its adapter's
        ``Options``, :mod:`multidiffusion.models.options`; another family's is a ``ValueError``
        naming the families that take it): ``clip_skip`` as in diffusers. SDXL only:
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
        own. Every task then takes ``control_image`` and diffusers' other ControlNet arguments.

        ``release_text_encoders``: free the text encoders as soon as the first call has encoded its
        prompts, before its first step (see :meth:`release_text_encoders`)."""
        self.adapter: ModelAdapter = adapter_for(pipe, **model_options)
        self.set_controlnet(controlnet if controlnet is not None else self.adapter.controlnet)
        self.scheduler = scheduler if scheduler is not None else self.pipe.scheduler
        make_scheduler(self.scheduler, self.pipe.scheduler.config)  # fail now on a bad name
        self.model_name = model_name or getattr(getattr(pipe, "config", None), "_name_or_path", None) or "custom"
        self.share_prefix = share_prefix
        self.share_unconditional = share_unconditional
        self._progress: dict[str, Any] = {}
        self._decode: dict[str, Any] = {"edge_pad": "auto"}  # see set_vae_tiling
        self.lora_files: dict[str, dict[str, Any]] = {}
        """LoRAs loaded with :meth:`load_lora`, by adapter name: what results record of them."""
        self._prompts = EncodedPrompts(release_after_encoding=release_text_encoders)

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
        controlnet: Any = None,
        release_text_encoders: bool = False,
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
        ``scheduler`` defaults to "ddim" (the paper's sampler) for UNet models (a few-step model keeps its
        own: an LCM UNet's LCMScheduler, SD-Turbo's trailing Euler) and to the model's own flow-matching
        scheduler for diffusion transformers (SD 3, FLUX). Other keyword arguments go
        to diffusers' ``from_pretrained`` (e.g. ``quantization_config``, ``transformer=``), except the
        model family's options (``clip_skip``, ...: the constructor's ``model_options``).
        ``release_text_encoders``: free the text encoders once the first call has encoded its prompts
        (:meth:`release_text_encoders`).
        """
        model_options, kwargs = split_model_options(kwargs)
        pipe = load_pipeline(
            model,
            torch_dtype=torch_dtype,
            device=device,
            allow_pickle=allow_pickle,
            config=config,
            prediction_type=prediction_type,
            **kwargs,
        )
        if scheduler is None and getattr(pipe, "transformer", None) is None and not _few_step(pipe):
            scheduler = "ddim"
        md = cls(
            pipe,
            scheduler=scheduler,
            model_name=model_label(model),
            release_text_encoders=release_text_encoders,
            **model_options,
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
        on a GPU; measured on a CPU, see docs/benchmarks.md, "Speed and memory". Shapes are static: keep
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

    def release_text_encoders(self) -> list[str]:
        """Free the text encoders (``pipe.text_encoder``, ``_2``, ``_3`` set to None, their memory given
        back) and return the names freed. The prompts of the last call stay encoded: a call with the
        same prompts, negatives, guidance scales and images per prompt runs as before (same output);
        any other prompt is a one-line ValueError. A diffusion transformer's text encoder can be as
        large as the model (FLUX.2 [dev]: Mistral Small 24B), and a call needs it only before its
        first step: docs/benchmarks.md, "Memory against width", gives the peaks with and without."""
        return self._prompts.release(self.pipe)

    def stream(self, layouts: Any, **defaults: Any) -> Any:
        """Region layouts rendered as they come, for live painting from Python: each item of
        ``layouts`` (``regions``' arguments over ``defaults``, or ``RegionsOptions``) renders as soon
        as it arrives; a newer one cancels the render in progress at its next step and at most the
        newest waits; each finished frame is yielded (:func:`multidiffusion.live.stream`, whose
        ``LiveRegions`` is the push-and-wait form the web app's live mode uses)."""
        from multidiffusion.live import stream

        return stream(self, layouts, **defaults)

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
        edge_pad: int | str = "auto",
    ) -> MultiDiffusion:
        """How canvases larger than the VAE's tile are decoded and encoded (see
        :func:`~multidiffusion.vae.codec.decode_latents`): ``tile`` and ``overlap`` in latent pixels
        (defaults: the VAE's native size, at least 64, and a quarter of it); ``norm_stats="fast"``
        measures GroupNorm statistics in one pass per tile instead of layer by layer (visibly less
        faithful on trained VAEs); ``cache_mb``: the memory the exact statistics may keep to resume
        their passes (default: 2048 MiB, at most a quarter of the free memory; 0: the least memory,
        several times slower, with the memory freed by each tile given back to the system on the
        CPU, see :mod:`multidiffusion.vae.heap`); ``edge_pad``: latent pixels replicated beyond the
        canvas' edges for the decode ("auto": 2 on canvases larger than the VAE's native size, none at
        one view, decoded as diffusers; 0: never), which keeps a decoder's frame out of the image
        (:mod:`multidiffusion.vae.edges`)."""
        from multidiffusion.vae.codec import check_cache_mb
        from multidiffusion.vae.edges import check_edge_pad
        from multidiffusion.vae.tiles import NORM_STATS

        check_choice("norm_stats", norm_stats, NORM_STATS)
        check_cache_mb(cache_mb)
        check_edge_pad(edge_pad)
        self._decode = {"tile": tile, "overlap": overlap, "norm_stats": norm_stats, "cache_mb": cache_mb}
        self._decode["edge_pad"] = edge_pad
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

    # -- tasks: one method each (task_methods.TaskMethods), all through generate -------------------
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
            prompts=self._prompts,
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


def _few_step(pipe: Any) -> bool:
    """A distilled few-step UNet model, which samples with its own scheduler (not the paper's DDIM):
    an LCM UNet, or a scheduler config of a few-step schedule (:func:`few_step_schedule`)."""
    return embeds_guidance(pipe.unet) or few_step_schedule(pipe.scheduler.config)
