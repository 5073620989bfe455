"""Latents to images with bounded memory: tiled, blended and (for 360-degree panoramas) wrapping.

A wide canvas is decoded in overlapping tiles whose outputs are blended with linear ramps across the
overlap, so peak memory depends on the tile size, not the canvas size, and no full-image attention
matrix is ever formed.

Tiles alone shift tones: the decoder's GroupNorm layers normalise each tile by its own statistics.
We decode twice: the first pass records each GroupNorm layer's per-tile mean and mean square, which
combine into canvas-wide statistics; the second pass normalises every tile with those. The
statistics are then the canvas's own up to the first pass's per-tile normalisation of earlier
layers, so tiles agree in tone and the blend hides the rest (local attention in the mid block).
A canvas that fits in one tile is decoded whole, exactly as diffusers does.

Circular canvases are padded with their own opposite edge before decoding and cropped after, so the
0/360-degree seam is decoded with real neighbours on both sides.

Encoding is needed only for the constant-colour backgrounds of region bootstrapping
(:func:`encode_constant`): small window-sized images, encoded whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .views import View, axis_starts, crop

__all__ = ["decode_latents", "default_tile", "encode_constant", "scale_latents", "unscale_latents", "vae_scale_factor"]


def vae_scale_factor(vae: nn.Module) -> int:
    """Pixels per latent pixel: 2 ** (number of down-sampling blocks)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def default_tile(vae: nn.Module) -> int:
    """Tile side in latent pixels: the VAE's native sample size (64 for SD 1.x/2.x, 128 for SDXL)."""
    sample = vae.config.sample_size
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return max(8, int(sample) // vae_scale_factor(vae))


def _latent_stats(vae: nn.Module, latents: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None, None
    shape = (1, len(mean), 1, 1)
    return (
        torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape),
        torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape),
    )


def unscale_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Diffusion latents to the VAE's own latent space (inverse of :func:`scale_latents`)."""
    mean, std = _latent_stats(vae, latents)
    if mean is not None:
        return latents * std / vae.config.scaling_factor + mean
    return latents / vae.config.scaling_factor


def scale_latents(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The VAE's latents to diffusion latents: z * scaling_factor (with SDXL-style mean/std if set)."""
    mean, std = _latent_stats(vae, z)
    if mean is not None:
        return (z - mean) * vae.config.scaling_factor / std
    return z * vae.config.scaling_factor


@contextlib.contextmanager
def _upcast_if_needed(vae: nn.Module) -> Iterator[torch.dtype]:
    """SDXL's VAE overflows in float16 (``force_upcast``): decode in float32, as diffusers does."""
    dtype = vae.dtype
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)
        try:
            yield torch.float32
        finally:
            vae.to(dtype)
    else:
        yield dtype


@torch.no_grad()
def decode_latents(
    vae: nn.Module,
    latents: torch.Tensor,
    *,
    circular: bool = False,
    tile: int | None = None,
    overlap: int | None = None,
) -> torch.Tensor:
    """Decode diffusion latents (B, C, h, w) to images (B, 3, h*f, w*f) in [-1, 1].

    ``tile`` and ``overlap`` are in latent pixels (defaults: the VAE's native size and a quarter of
    it). With ``circular``, the canvas wraps horizontally: the left and right edges are decoded as
    neighbours.
    """
    tile = tile or default_tile(vae)
    overlap = tile // 4 if overlap is None else overlap
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
    with _upcast_if_needed(vae) as dtype:
        z = unscale_latents(vae, latents).to(dtype)
        pad = 0
        if circular:
            pad = min(max(overlap, 8), z.shape[-1])
            z = torch.cat([z[..., -pad:], z, z[..., :pad]], dim=-1)
        h, w = z.shape[-2:]
        if h <= tile and w <= tile:
            image = vae.decode(z, return_dict=False)[0]
        else:
            image = _decode_tiled(vae, z, tile, overlap)
    if pad:
        f = vae_scale_factor(vae)
        image = image[..., pad * f : image.shape[-1] - pad * f]
    return image


@torch.no_grad()
def encode_constant(vae: nn.Module, colours: torch.Tensor, size: tuple[int, int], batch: int = 4) -> torch.Tensor:
    """Diffusion latents (N, C, *size) of constant images of ``colours`` (N, 3) in [0, 1].

    Each image is ``size`` latent pixels (times the VAE's factor) and encoded whole, ``batch`` per
    call, edges included; the posterior's mean is used, scaled like any diffusion latent.
    """
    f = vae_scale_factor(vae)
    out = []
    with _upcast_if_needed(vae) as dtype:
        for chunk in colours.split(batch):
            images = (2 * chunk - 1).to(device=vae.device, dtype=dtype)[:, :, None, None]
            images = images.expand(-1, -1, size[0] * f, size[1] * f).contiguous()
            out.append(vae.encode(images).latent_dist.mean)
    return scale_latents(vae, torch.cat(out))


def _decode_tiled(vae: nn.Module, z: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    f = vae_scale_factor(vae)
    h, w = z.shape[-2:]
    tiles = [
        View(top, left, min(tile, h), min(tile, w))
        for top in axis_starts(h, min(tile, h), tile - overlap)
        for left in axis_starts(w, min(tile, w), tile - overlap)
    ]
    norms = _GroupNormStats(vae.decoder)
    with norms.recording():
        for view in tiles:
            vae.decode(crop(z, view), return_dict=False)
    out = None
    den = torch.zeros((1, 1, h * f, w * f), dtype=torch.float32, device=z.device)
    with norms.applying():
        for view in tiles:
            image = vae.decode(crop(z, view), return_dict=False)[0].float()
            if out is None:
                out = torch.zeros((z.shape[0], image.shape[1], h * f, w * f), dtype=torch.float32, device=z.device)
            ramp = _blend_ramp(view, (h, w), overlap, f, z.device)
            pixel_view = View(view.top * f, view.left * f, view.height * f, view.width * f)
            _paste(out, pixel_view, image * ramp)
            _paste(den, pixel_view, ramp)
    return (out / den).to(z.dtype)


def _paste(canvas: torch.Tensor, view: View, value: torch.Tensor) -> None:
    canvas[..., view.top : view.top + view.height, view.left : view.left + view.width] += value


def _ramp_1d(start: int, length: int, size: int, overlap: int, f: int, device: torch.device) -> torch.Tensor:
    """Weights along one axis of a tile: rising over the overlap where a neighbour tile exists."""
    n = length * f
    r = torch.ones(n, device=device)
    band = overlap * f
    if band == 0:
        return r
    ramp = (torch.arange(band, device=device, dtype=torch.float32) + 0.5) / band
    if start > 0:
        r[:band] = torch.minimum(r[:band], ramp)
    if start + length < size:
        r[n - band :] = torch.minimum(r[n - band :], ramp.flip(0))
    return r


def _blend_ramp(view: View, canvas: tuple[int, int], overlap: int, f: int, device: torch.device) -> torch.Tensor:
    rows = _ramp_1d(view.top, view.height, canvas[0], overlap, f, device)
    cols = _ramp_1d(view.left, view.width, canvas[1], overlap, f, device)
    return rows[:, None] * cols[None, :]


class _GroupNormStats:
    """Canvas-wide GroupNorm statistics for tiled decoding (see the module docstring).

    ``recording()``: each GroupNorm normalises by its tile's statistics (as usual) and adds the
    tile's per-group sums to a canvas total. ``applying()``: each GroupNorm normalises by the totals.
    """

    def __init__(self, module: nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
        self.sums: dict[int, list[torch.Tensor]] = {}

    @contextlib.contextmanager
    def _patched(self, forward) -> Iterator[None]:
        originals = [norm.forward for norm in self.norms]
        for i, norm in enumerate(self.norms):
            norm.forward = lambda x, i=i, norm=norm: forward(i, norm, x)  # type: ignore[method-assign]
        try:
            yield
        finally:
            for norm, original in zip(self.norms, originals):
                norm.forward = original  # type: ignore[method-assign]

    def recording(self):
        self.sums = {}

        def forward(i: int, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
            g = x.double().reshape(x.shape[0], norm.num_groups, -1)
            total = [g.sum(-1), (g * g).sum(-1), torch.full_like(g[:, :, 0], g.shape[-1])]
            if i in self.sums:
                self.sums[i] = [a + b for a, b in zip(self.sums[i], total)]
            else:
                self.sums[i] = total
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)

        return self._patched(forward)

    def applying(self):
        def forward(i: int, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
            s, sq, n = self.sums[i]
            mean = (s / n).float()
            var = (sq / n - (s / n) ** 2).clamp_min(0).float()
            g = x.float().reshape(x.shape[0], norm.num_groups, -1)
            g = (g - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)
            y = g.reshape(x.shape).to(x.dtype)
            if norm.affine:
                shape = (1, -1) + (1,) * (x.dim() - 2)
                y = y * norm.weight.view(shape) + norm.bias.view(shape)
            return y

        return self._patched(forward)
