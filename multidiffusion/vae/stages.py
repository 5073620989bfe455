"""An ``AutoencoderKL`` split at its latent resolution, so each half is tiled where it pays.

The decoder is a latent-resolution stage (post-quant conv, input conv, the mid block with its
global self-attention) followed by a pixel-resolution stage (the up blocks and output layers, 64x
more pixels and nearly all of the memory). The encoder is the mirror image. Decoding therefore runs
the latent stage on the whole latent canvas (in windows of ``latent_tile`` only beyond that size),
with its exact attention and GroupNorm statistics, keeps its output (a few hundred channels at
latent resolution) and tiles the pixel stage only. Tile-local attention was the larger error of
tiling the whole decoder, and it also skewed the GroupNorm statistics the tiles record; how close
tiled and whole decodes come is measured by ``python -m benchmarks --suites decode`` (docs/benchmarks.md,
"Speed and memory"; figures in ``benchmarks/results/``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from multidiffusion.vae.norms import GroupNormStats
from multidiffusion.vae.tiles import run_tiled

__all__ = ["Stages", "decoder_stages", "encoder_stages", "run_latent_stage"]

Stage = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Stages:
    """``latent``: latent resolution to latent resolution; ``pixel``: the stage that changes the
    resolution by the VAE's factor, as its ``pixel_segments`` run in order (a resnet, an up- or
    down-sampler, the output layers: the points where exact GroupNorm statistics resume, see
    :mod:`multidiffusion.vae.tiles`). ``*_norms``: the modules holding each stage's GroupNorms."""

    latent: Stage
    latent_norms: list[nn.Module]
    pixel_segments: list[Stage]
    pixel_norms: list[nn.Module]


def _block_segments(block: nn.Module, samplers: str) -> list[Stage]:
    """A diffusers ``UpDecoderBlock2D`` / ``DownEncoderBlock2D`` as its resnets and samplers, the
    calls its ``forward`` makes; any other block whole."""
    if type(block).__name__ not in ("UpDecoderBlock2D", "DownEncoderBlock2D"):
        return [functools.partial(block, temb=None) if samplers == "upsamplers" else block]
    parts: list[Stage] = [functools.partial(resnet, temb=None) for resnet in block.resnets]
    return parts + list(getattr(block, samplers, None) or [])


def _has(module: nn.Module, *names: str) -> bool:
    return all(getattr(module, n, None) is not None for n in names)


def decoder_stages(vae: nn.Module) -> Stages | None:
    """The decoder of a diffusers ``AutoencoderKL`` in two stages; None for other VAEs."""
    dec = getattr(vae, "decoder", None)
    if dec is None or not _has(dec, "conv_in", "mid_block", "up_blocks", "conv_norm_out", "conv_act", "conv_out"):
        return None
    if not isinstance(dec.conv_norm_out, nn.GroupNorm):
        return None
    post = getattr(vae, "post_quant_conv", None)
    up_dtype = next(iter(dec.up_blocks.parameters())).dtype

    def latent(z: torch.Tensor) -> torch.Tensor:
        if post is not None:
            z = post(z)
        return dec.mid_block(dec.conv_in(z), None).to(up_dtype)

    def out(x: torch.Tensor) -> torch.Tensor:
        return dec.conv_out(dec.conv_act(dec.conv_norm_out(x)))

    segments = [part for block in dec.up_blocks for part in _block_segments(block, "upsamplers")]
    return Stages(latent, [dec.mid_block], [*segments, out], [dec.up_blocks, dec.conv_norm_out])


def encoder_stages(vae: nn.Module) -> Stages | None:
    """The encoder of a diffusers ``AutoencoderKL`` in two stages (to the posterior's moments)."""
    enc = getattr(vae, "encoder", None)
    if enc is None or not _has(enc, "conv_in", "down_blocks", "mid_block", "conv_norm_out", "conv_act", "conv_out"):
        return None
    quant = getattr(vae, "quant_conv", None)

    def latent(x: torch.Tensor) -> torch.Tensor:
        x = enc.conv_out(enc.conv_act(enc.conv_norm_out(enc.mid_block(x))))
        return quant(x) if quant is not None else x

    segments = [part for block in enc.down_blocks for part in _block_segments(block, "downsamplers")]
    return Stages(latent, [enc.mid_block, enc.conv_norm_out], [enc.conv_in, *segments], [enc.conv_in, enc.down_blocks])


def run_latent_stage(
    stage: Stage, norms: list[nn.Module], x: torch.Tensor, latent_tile: int, norm_stats: str = "exact"
) -> torch.Tensor:
    """``stage(x)`` whole when x is at most ``latent_tile`` on each side, else in blended windows
    of that size (overlap a quarter) with canvas-wide GroupNorm statistics; output in x's dtype."""
    h, w = x.shape[-2:]
    if h <= latent_tile and w <= latent_tile:
        return stage(x)
    out: torch.Tensor | None = None

    def write(row: int, rows: torch.Tensor) -> None:
        nonlocal out
        if out is None:
            out = torch.empty((*rows.shape[:2], h, w), dtype=x.dtype, device=x.device)
        out[..., row : row + rows.shape[-2], :] = rows

    run_tiled(stage, x, (h, w), latent_tile, latent_tile // 4, 1, 1, write, GroupNormStats(*norms, mode=norm_stats))
    assert out is not None
    return out
