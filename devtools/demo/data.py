"""The training set: procedural scenes pre-generated into memory, captions tokenized once."""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from devtools.demo.scenes import NATIVE_SIZE, generate

__all__ = ["make_dataset", "to_tensor", "tokenize"]


def make_dataset(seed: int, n: int, size: int = NATIVE_SIZE) -> tuple[np.ndarray, list[str]]:
    """``n`` images (n, size, size, 3) uint8 and their captions, deterministic in ``seed``."""
    images, captions, _ = generate(np.random.default_rng(seed), n, size)
    return images, captions


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1], the VAE's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def tokenize(tokenizer: PreTrainedTokenizerBase, captions: list[str]) -> torch.Tensor:
    """Token ids (N, model_max_length), padded and truncated as StableDiffusionPipeline does."""
    out = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return out.input_ids
