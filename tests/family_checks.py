"""Checks every new model family's tests share (issue 27: each family is one module and one
registry line, and its tests run the same claims on it)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image


def the_other_tasks_run(md: Any, h: int, w: int, channels: int) -> None:
    """Inpainting, outpainting, upscaling and the shifted fast mode run through the family's
    adapter on a canvas of ``h`` x ``2w`` latents (views ``w`` wide), giving finite latents of the
    VAE's layout (1, ``channels``, h, 2w)."""
    rng = np.random.default_rng(6)
    image = Image.fromarray(rng.integers(0, 256, (h * 8, 2 * w * 8, 3), dtype=np.uint8))
    mask = Image.fromarray(np.pad(np.full((h * 8, 64), 255, np.uint8), ((0, 0), (96, 96))))
    kwargs: dict[str, Any] = dict(num_inference_steps=2, window=w, stride=8, output_type="latent")
    small = image.crop((0, 0, w * 8, h * 8))
    for out in (
        md.inpaint(image, mask, "a boat", **kwargs),
        md.outpaint(small, "a lake", right=w * 8, **kwargs),
        md.upscale(small.resize((w * 8, h * 4)), scale=2.0, prompt="a lake", strength=0.5, **kwargs),
        md.panorama("a lake", height=h * 8, width=2 * w * 8, placement="shifted", **kwargs),
    ):
        assert out.images.shape == (1, channels, h, 2 * w) and torch.isfinite(out.images).all()
