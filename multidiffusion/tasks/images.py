"""What the image-to-image tasks share: the input image on the canvas, encoded and noised.

diffusers' image-to-image pipelines start from the input's latents noised to the first timestep
that runs (``strength`` says which: 0.75 of 50 steps runs the last 37):

    z_0 = VAE.encode(image).sample(generator) * scaling     (drawn before the noise)
    x_start = noise_to(scheduler, z_0, noise, timesteps[0])     (add_noise, or scale_noise for flow matching)

Here the encode is tiled with canvas-wide GroupNorm statistics (:func:`~multidiffusion.vae.codec.encode_images`),
so an input of any size costs a tile's memory, and the draws happen in diffusers' order, so at one
view the result equals their pipelines'.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor

from multidiffusion.engine.adapter import ModelAdapter
from multidiffusion.engine.noising import noise_to
from multidiffusion.engine.task import Start
from multidiffusion.io.image_loader import InputImage
from multidiffusion.vae.codec import encode_images

__all__ = ["EncodedImage", "image_tensor"]


def image_tensor(image: Any, size: tuple[int, int], adapter: ModelAdapter) -> torch.Tensor:
    """A PIL image as a (1, 3, H, W) tensor in [-1, 1] of the canvas ``size``, resized (Lanczos) when
    it differs, exactly as diffusers' image processor prepares pipeline inputs."""
    processor = VaeImageProcessor(vae_scale_factor=adapter.vae_scale_factor)
    return processor.preprocess(image, height=size[0], width=size[1])


class EncodedImage:
    """An input image on a canvas of ``size`` pixels: :meth:`encode` before the noise, then
    :meth:`noised` for the start latents."""

    def __init__(self, image: InputImage, size: tuple[int, int], adapter: ModelAdapter):
        self.image = image
        self.size = size
        self.adapter = adapter
        self.latents: torch.Tensor | None = None

    def pixels(self) -> torch.Tensor:
        """The input as the canvas sees it: (1, 3, H, W) in [-1, 1]."""
        return image_tensor(self.image.image, self.size, self.adapter)

    def encode(
        self, generator: Any, images: int, vae_tiling: dict[str, Any], pixels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode (tiled) ``pixels`` (default: the input) to scaled latents, one sample of the
        posterior per image (one draw shared by all images with a single generator, as diffusers)."""
        pixels = self.pixels() if pixels is None else pixels
        tiling = {k: v for k, v in vae_tiling.items() if k in ("tile", "overlap", "norm_stats", "share", "cache_mb")}
        latents = encode_images(
            self.adapter.vae,
            pixels,
            generator=generator,
            sample=True,
            latent_format=self.adapter.latent_format,
            **tiling,
        )
        if latents.shape[0] != images:
            latents = latents.repeat(images // latents.shape[0], 1, 1, 1)
        self.latents = latents.to(device=self.adapter.device, dtype=self.adapter.dtype)
        return self.latents

    def noised(self, start: Start) -> torch.Tensor:
        """The encoded input noised to the first timestep that runs (diffusers' ``add_noise``, or
        ``scale_noise`` for flow-matching schedulers: :func:`~multidiffusion.engine.noising.noise_to`)."""
        if self.latents is None:
            raise RuntimeError("encode() the input before noising it")
        t = start.timesteps[:1].repeat(start.noise.shape[0])
        return noise_to(start.scheduler, self.latents, start.noise, t)

    def record(self) -> dict[str, Any]:
        """The input as the PNG metadata stores it: path and SHA-256 of the file (None in memory)."""
        return self.image.record()
