"""Model adapters: one per model family, all driving the same engine."""

from __future__ import annotations

from typing import Any

from .base import Conditioning, ModelAdapter
from .sd import StableDiffusionAdapter

__all__ = ["Conditioning", "ModelAdapter", "StableDiffusionAdapter", "adapter_for"]


def adapter_for(pipe: Any, **kwargs: Any) -> ModelAdapter:
    """The adapter for a diffusers pipeline (or any object with its components)."""
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if getattr(pipe, name, None) is None:
            raise ValueError(
                f"pipe must be a Stable Diffusion pipeline with a UNet, VAE, text encoder, tokenizer and "
                f"scheduler; {type(pipe).__name__} has no {name!r}"
            )
    return StableDiffusionAdapter(pipe, **kwargs)
