"""The task methods of :class:`~multidiffusion.MultiDiffusion`, one short method per task: each
takes its own parameters, then every shared one as typed keywords (``**kwargs: Unpack[...]`` of
:mod:`multidiffusion.options.arguments`, so ``help()``, IDEs and type checkers see every argument),
builds the task's options (where every argument is checked) and hands them to ``generate``.

A mixin beside the conditioning kinds' methods, so that the public class (:mod:`multidiffusion.pipeline`)
stays what loads and configures the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from multidiffusion.options import (
    EditOptions,
    Img2ImgOptions,
    InpaintOptions,
    OutpaintOptions,
    PanoramaOptions,
    RegionsOptions,
    SamplingOptions,
    UpscaleOptions,
)
from multidiffusion.options.arguments import CALL_ARGUMENTS, PlacementArgs, SamplingArgs, task_method
from multidiffusion.output import MultiDiffusionOutput
from multidiffusion.regions.layout import Region

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = ["TaskMethods"]


class TaskMethods:
    """``panorama``, ``regions``, ``img2img``, ``upscale``, ``inpaint``, ``outpaint`` and ``edit``: each runs
    through ``self.generate(options, generator=..., latents=..., callback_on_step_end=...)``."""

    generate: Callable[..., MultiDiffusionOutput]

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
        bootstrap_centre: bool = False,
        mask_schedule: str = "soft",
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

        For few steps (:mod:`~multidiffusion.regions.few_step`): ``bootstrap_centre`` draws each region
        at its view's centre while bootstrapping and moves it back; ``mask_schedule="quantized"``
        thresholds the region masks at each step's noise level.
        """
        given = dict(height=height, width=width, background=background, regions=regions, image=image)
        few = dict(bootstrap_centre=bootstrap_centre, mask_schedule=mask_schedule)
        return self._run(RegionsOptions, kwargs, **given, bootstrap_steps=bootstrap_steps, strength=strength, **few)

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

    @task_method(EditOptions, PlacementArgs)
    def edit(
        self,
        image: Any,
        prompt: str | list[str],
        whole_reference: bool = False,
        strength: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        **kwargs: Unpack[PlacementArgs],
    ) -> MultiDiffusionOutput:
        """Edit ``image`` (any size) as ``prompt`` instructs, with an editing model (Qwen-Image-Edit):
        the canvas is the image's size (or ``height`` x ``width``) under :meth:`panorama`'s windows,
        and each window is given its crop of the image as the model's reference image, so a 4K photo
        is edited tile by tile at the model's native size. The prompt is encoded once with the whole
        image (brought to the model's reference size, as its pipeline). ``whole_reference`` also
        gives every window the whole image at that size as a second reference. ``strength`` 1 (the
        default, as the edit pipelines) starts from noise; less starts from the image noised to that
        step. The rest are :meth:`panorama`'s arguments. At one window covering a canvas of the
        pipeline's reference size this equals diffusers' ``QwenImageEditPipeline``.
        """
        given = dict(image=image, prompt=prompt, whole_reference=whole_reference, strength=strength)
        return self._run(EditOptions, kwargs, **given, height=height, width=width)

    def _run(self, task: type[SamplingOptions], keywords: dict[str, Any], **given: Any) -> MultiDiffusionOutput:
        """Run a task method: its options from its own arguments and the shared keywords, the call's
        objects (generator, latents, callback) passed on beside them."""
        call = {k: keywords.pop(k) for k in CALL_ARGUMENTS if k in keywords}
        return self.generate(task(**given, **keywords), **call)
