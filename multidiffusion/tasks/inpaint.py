"""Inpainting over MultiDiffusion's windows: repaint the white part of a mask, keep the rest.

The task follows diffusers' ``StableDiffusionInpaintPipeline`` (and ``StableDiffusionXLInpaintPipeline``,
the same steps) on a canvas of any size:

- the mask is binarised at 0.5 after resizing to the canvas (their ``mask_processor``), then, unlike
  diffusers, feathered by ``mask_blur`` pixels (a Gaussian of that standard deviation, as A1111's mask
  blur); the latent mask M is the pixel mask interpolated (nearest) to the latent grid;
- the masked image is ``image * (mask < 0.5)``;
- draws, in diffusers' order: the image's encoder sample (for a 4-channel UNet, or below strength 1),
  then the initial noise ε, then the masked image's encoder sample;
- start latents: ``ε · init_noise_sigma`` at strength 1, else ``add_noise(z_image, ε, t_first)``;
- a **4-channel UNet** (any text-to-image model) is kept on the image by latent blending after every
  scheduler step i (diffusers' loop; "Blended Latent Diffusion", Avrahami et al. 2023):

      x ← (1 − M) ⊙ add_noise(z_image, ε, t_{i+1}) + M ⊙ x        (z_image itself after the last step)

- a **9-channel inpainting UNet** (SD 1.5/2 inpainting, SDXL inpainting) takes
  ``[scale(x), M, z_masked]`` as its input: the two extra inputs belong to the canvas and are cropped
  with every view (wrapping around on circular canvases) by the task's composer; diffusers blends
  nothing for these models, and neither does this task.

At one view covering the canvas this is diffusers' pipeline step for step (``tests/test_inpaint.py``).
Over several windows the blending and the extra channels act on the canvas, so every window sees
the same known image and mask.

Differences from diffusers: ``latents`` given with strength < 1 are the noise added to the image here
(diffusers then ignores the strength and starts from ``latents · init_noise_sigma``); for a 4-channel
UNet diffusers encodes the masked image and discards it, here its encoder sample is drawn (so
ancestral schedulers see the same generator state) but nothing is encoded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from multidiffusion.engine.noising import initial_sigma, noise_to
from multidiffusion.engine.task import AfterStep, Start, StepComposer
from multidiffusion.engine.views import crop_batch
from multidiffusion.options import InpaintOptions
from multidiffusion.tasks.images import EncodedImage
from multidiffusion.tasks.img2img import Img2ImgTask

__all__ = ["InpaintTask", "gaussian_blur", "latent_mask", "mask_tensor"]

Generator = torch.Generator | list[torch.Generator] | None


def gaussian_blur(x: torch.Tensor, sigma: float, wrap: bool = False) -> torch.Tensor:
    """``x`` (N, C, H, W) blurred by a Gaussian of standard deviation ``sigma`` pixels, as A1111's mask
    blur (``cv2.GaussianBlur`` with a kernel of 2·⌊2.5σ + 0.5⌋ + 1 taps along each axis): weights
    exp(−d² / 2σ²), normalised; edges mirrored without repeating the edge pixel (OpenCV's
    BORDER_REFLECT_101), or wrapped around along the width when ``wrap`` (circular canvases)."""
    if sigma <= 0:
        return x
    radius = int(2.5 * sigma + 0.5)
    d = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(d * d) / (2 * sigma * sigma))
    kernel = (kernel / kernel.sum()).to(device=x.device, dtype=torch.float32)
    out = _blur_axis(x.float(), kernel, dim=3, wrap=wrap)
    return _blur_axis(out, kernel, dim=2, wrap=False).to(x.dtype)


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, dim: int, wrap: bool) -> torch.Tensor:
    n, radius = x.shape[dim], (kernel.numel() - 1) // 2
    index = torch.arange(-radius, n + radius, device=x.device)
    if wrap:
        index = index % n
    elif n == 1:
        index = torch.zeros_like(index)
    else:  # reflect-101, repeated as often as the kernel needs (it may be wider than the axis)
        period = 2 * (n - 1)
        index = index % period
        index = torch.where(index >= n, period - index, index)
    padded = x.index_select(dim, index).movedim(dim, -1)
    shape = padded.shape
    out = F.conv1d(padded.reshape(-1, 1, shape[-1]), kernel.view(1, 1, -1))
    return out.reshape(*shape[:-1], n).movedim(-1, dim)


def mask_tensor(mask: Any, size: tuple[int, int], blur: float = 0, wrap: bool = False) -> torch.Tensor:
    """A mask (PIL image, white = repaint) as a (1, 1, H, W) float tensor in [0, 1] on a canvas of
    ``size`` (height, width) pixels: resized (Lanczos), made grey and binarised at 0.5 exactly as
    diffusers' inpainting ``mask_processor`` prepares it, then feathered by :func:`gaussian_blur` of
    ``blur`` pixels (none at 0, the binary mask diffusers uses)."""
    processor = VaeImageProcessor(do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    binary = processor.preprocess(mask, height=size[0], width=size[1]).float()
    return gaussian_blur(binary, blur, wrap) if blur else binary


def latent_mask(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """The pixel mask on the latent grid: nearest-neighbour interpolation, as diffusers'
    ``prepare_mask_latents`` (``F.interpolate`` with its default mode)."""
    return F.interpolate(mask, size=latent_size)


class InpaintTask(Img2ImgTask):
    """The input image's canvas and a panorama's windows, repainting where the mask is white:
    latent blending for a 4-channel UNet, the mask and masked-image channels for an inpainting UNet
    (see the module docstring for the equations)."""

    name = "inpaint"
    composes_inpainting_input = True
    options: InpaintOptions

    def __init__(self, options: Any, adapter: Any):
        super().__init__(options, adapter)
        self.mask = self.mask_pixels()
        self._pixels: torch.Tensor | None = None
        self._generator: Any = None
        self._vae_tiling: dict[str, Any] = {}
        self._inputs: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @property
    def inpainting_unet(self) -> bool:
        """Whether the UNet takes the mask and the masked image's latents (9 channels for SD)."""
        return bool(self.adapter.extra_channels)

    def mask_pixels(self) -> torch.Tensor:
        """The (1, 1, H, W) mask on the canvas, 1 = repaint (:func:`mask_tensor`); ``ValueError`` when it
        marks nothing to repaint (no pixel at least half white once resized to the canvas), before any
        model call."""
        mask = mask_tensor(self.options.mask.image, self.size, self.options.mask_blur, self.circular)
        if not bool((mask > 0).any()):
            raise ValueError(
                "mask: no pixel is white (or at least half grey) once resized to the canvas, so there is nothing "
                "to repaint; white marks the part to repaint, black the part to keep"
            )
        return mask

    def canvas_pixels(self) -> torch.Tensor:
        """The known image on the canvas, (1, 3, H, W) in [-1, 1]."""
        return self.input.pixels()

    def pixels(self) -> torch.Tensor:
        if self._pixels is None:
            self._pixels = self.canvas_pixels()
        return self._pixels

    def prepare(self, generator: Generator, images: int, vae_tiling: dict[str, Any]) -> None:
        """The image's encoder sample, before the noise, where diffusers draws it: for a 4-channel UNet
        (its latents are blended back) or below strength 1 (they start the canvas). With a list of
        generators diffusers samples the single input image with the first one, then repeats it."""
        self._generator = generator[0] if isinstance(generator, list) else generator
        self._vae_tiling = vae_tiling
        if not self.inpainting_unet or self.strength < 1:
            self.input.encode(self._generator, images, vae_tiling, pixels=self.pixels())

    def _mask_inputs(self, start: Start) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(latent mask (B, 1, h, w), masked image's latents (B, C, h, w) or None for a 4-channel UNet),
        made once, after the initial noise: the masked image's encoder sample is diffusers' third draw."""
        if self._inputs is None:
            adapter, images = self.adapter, start.noise.shape[0]
            masked_pixels = self.pixels() * (self.mask < 0.5)
            if self.inpainting_unet:
                masked_image = EncodedImage(self.options.image, self.size, adapter)
                masked = masked_image.encode(self._generator, images, self._vae_tiling, pixels=masked_pixels)
            else:  # diffusers encodes it anyway and discards it: draw its sample, encode nothing
                h, w = self.latent_size
                device = adapter.device  # the execution device, also under CPU offloading
                randn_tensor((1, adapter.latent_channels, h, w), generator=self._generator, device=device)
                masked = None
            m = latent_mask(self.mask, self.latent_size).to(device=adapter.device, dtype=adapter.dtype)
            self._inputs = (m.repeat(images, 1, 1, 1), masked)
        return self._inputs

    def start_latents(self, start: Start) -> torch.Tensor:
        """Pure noise (times ``init_noise_sigma``) at strength 1, as diffusers' inpainting pipelines;
        below it the image noised to the first timestep that runs."""
        if self.strength >= 1:
            return start.noise * initial_sigma(start.scheduler)
        return self.input.noised(start)

    def composer(self, start: Start) -> StepComposer | None:
        """For an inpainting UNet: each view's crop gets the mask and masked-image latents of the same
        view appended as channels, ``[scale(x), M, z_masked]`` as diffusers concatenates them."""
        mask, masked = self._mask_inputs(start)
        if masked is None:
            return None
        extra = torch.cat([mask, masked], dim=1)

        def compose(crops: torch.Tensor, jobs: Any) -> torch.Tensor:
            return torch.cat([crops, crop_batch(extra, [job.view for job in jobs]).to(crops.dtype)], dim=1)

        return lambda step, t: compose

    def after_step(self, start: Start) -> AfterStep | None:
        """For a 4-channel UNet, latent blending after step i: the known image noised to the next
        timestep outside the mask, the sampler's latents inside (none for an inpainting UNet)."""
        mask, masked = self._mask_inputs(start)
        if masked is not None:
            return None
        known, noise, timesteps, scheduler = self.input.latents, start.noise, start.timesteps, start.scheduler
        if known is None or timesteps is None:
            raise RuntimeError("prepare() the task before sampling")

        def blend(i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            target = known
            if i < len(timesteps) - 1:
                target = noise_to(scheduler, known, noise, timesteps[i + 1].reshape(1))
            return (1 - mask) * target + mask * x

        return blend

    def mask_parameters(self) -> dict[str, Any]:
        """How the mask was given, as stored: its record (path and SHA-256) and the feathering."""
        return {"mask": self.options.mask.record(), "mask_blur": self.options.mask_blur}

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), **self.mask_parameters()}
