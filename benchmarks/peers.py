"""The implementations we compare against, run on the same components and latents as ours."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["diffusers_panorama", "ours_panorama"]


def diffusers_panorama(pipe: Any, prompt: str, height: int, width: int, steps: int, guidance: float):
    """diffusers' ``StableDiffusionPanoramaPipeline`` (window 64, stride 8 latents, per-view DDIM
    steps averaged): ``run(latents, view_batch_size) -> latents``."""
    from diffusers import StableDiffusionPanoramaPipeline

    pano = StableDiffusionPanoramaPipeline.from_pipe(pipe)
    pano.set_progress_bar_config(disable=True)

    def run(latents: torch.Tensor, view_batch_size: int, num_inference_steps: int = steps) -> torch.Tensor:
        return pano(
            prompt,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance,
            latents=latents.clone(),
            output_type="latent",
            view_batch_size=view_batch_size,
        ).images

    return run


def ours_panorama(md: Any, prompt: str, height: int, width: int, steps: int, guidance: float, **options: Any):
    """``MultiDiffusion.panorama``: ``run(latents, view_batch_size) -> latents``."""

    def run(latents: torch.Tensor, view_batch_size: int | None, num_inference_steps: int = steps) -> torch.Tensor:
        return md.panorama(
            prompt,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance,
            latents=latents.clone(),
            output_type="latent",
            view_batch_size=view_batch_size,
            generator=torch.Generator().manual_seed(0),
            **options,
        ).images

    return run


Runner = Callable[..., torch.Tensor]
