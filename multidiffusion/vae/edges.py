"""The canvas' outer edges in a decode: replicated latents instead of the decoder's zero padding.

Every convolution of a VAE decoder pads its input with zeros, so the outermost pixel rows and
columns of an image are computed from a neighbourhood that is half zeros: a decoder that never
learnt otherwise draws a 1-3 px band of other colour there (the demo VAE's "frame", 2-5x the jump
between inside rows; ``benchmarks/demo_border.py``). Decoding the latents padded by a few replicated
latent pixels on every side and cropping the padding off gives the edge pixels a neighbourhood like
the inside's: the decoder's frame falls into the cropped margin.

Diffusers decodes with zero padding, and a canvas of the model's native size (one view, which must
equal diffusers' pipelines) keeps it under ``"auto"``; larger canvases (panoramas, upscales, any
layout of several windows) have no such peer and get :data:`EDGE_PAD` latent pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["EDGE_PAD", "check_edge_pad", "resolve_edge_pad"]

EDGE_PAD = 2
"""Replicated latent pixels on each side under ``edge_pad="auto"`` (8 image pixels of the demo's
factor-4 VAE, 16 of SD's): more than the frame's 1-3 px, and a decoder's 3x3 convolutions reach
one latent pixel per up-sampling level before the crop."""


def check_edge_pad(edge_pad: int | str) -> None:
    """``edge_pad`` is "auto" or an int ≥ 0, or a ValueError says so."""
    if edge_pad == "auto":
        return
    if isinstance(edge_pad, bool) or not isinstance(edge_pad, int) or edge_pad < 0:
        raise ValueError(f"edge_pad must be 'auto' or an integer ≥ 0 (latent pixels), got {edge_pad!r}")


def resolve_edge_pad(vae: nn.Module, edge_pad: int | str, shape: Sequence[int]) -> int:
    """Latent pixels to replicate on each side of latents of ``shape`` (B, C, rows, columns):
    ``edge_pad`` itself, or under "auto" :data:`EDGE_PAD` when the canvas exceeds the VAE's native
    sample on either side and 0 otherwise (the one-view decode stays diffusers'). "auto" leaves
    VAEs without a 2-D ``sample_size`` and ``block_out_channels`` (video VAEs' 5-D latents) alone."""
    check_edge_pad(edge_pad)
    if edge_pad != "auto":
        return int(edge_pad)
    config = vae.config
    sample, blocks = getattr(config, "sample_size", None), getattr(config, "block_out_channels", None)
    if len(shape) != 4 or not sample or not blocks:
        return 0
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    f = 2 ** (len(blocks) - 1)
    return EDGE_PAD if max(shape[-2:]) * f > int(sample) else 0
