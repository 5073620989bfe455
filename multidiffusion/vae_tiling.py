"""Running a VAE half (decoder or encoder) over a large canvas in tiles, with bounded memory.

Tiles overlap by ``overlap`` latent pixels and their outputs are blended with linear ramps across
the overlaps. Blend weights are separable and normalised per axis beforehand, so no canvas-sized
weight sum is kept; outputs are accumulated one row of tiles at a time and every finished row of
pixels is handed to a ``write`` callback. Working memory is one tile's activations plus two
float32 bands of one tile row, whatever the canvas height.

Tiles alone shift tones: the GroupNorm layers would normalise each tile by its own statistics.
:class:`GroupNormStats` makes them canvas-wide. A first pass over the tiles records each GroupNorm
layer's per-tile mean and variance (tiles normalised by their own statistics, as usual) and merges
them into canvas statistics; the second pass normalises every tile with those. The statistics are
then the canvas's own up to the first pass's per-tile normalisation of earlier layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .views import axis_starts

__all__ = ["GroupNormStats", "run_tiled", "tile_starts"]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis (tiles of ``min(tile, size)``, overlapping by ≥ ``overlap``)."""
    return axis_starts(size, min(tile, size), tile - overlap)


def _ramps(starts: list[int], length: int, size: int, overlap: int, scale: int, device) -> list[torch.Tensor]:
    """Per-tile blend weights along one axis, in output pixels, normalised to sum to 1 at every pixel.

    Each tile's weight rises linearly over ``overlap`` pixels on every side that has a neighbour."""
    n, band = length * scale, overlap * scale
    raw = []
    for start in starts:
        r = torch.ones(n, device=device)
        if band:
            ramp = (torch.arange(min(band, n), device=device, dtype=torch.float32) + 0.5) / band
            if start > 0:
                r[: len(ramp)] = torch.minimum(r[: len(ramp)], ramp)
            if start + length < size:
                r[n - len(ramp) :] = torch.minimum(r[n - len(ramp) :], ramp.flip(0))
        raw.append(r)
    total = torch.zeros(size * scale, device=device)
    for start, r in zip(starts, raw):
        total[start * scale : start * scale + n] += r
    return [r / total[start * scale : start * scale + n] for start, r in zip(starts, raw)]


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    canvas: tuple[int, int],
    tile: int,
    overlap: int,
    in_scale: int,
    out_scale: int,
    write: Callable[[int, torch.Tensor], None],
    norms: GroupNormStats | None = None,
) -> None:
    """Apply ``fn`` to ``x`` (B, C, canvas * in_scale) in tiles of ``tile`` canvas units.

    ``fn`` maps a crop of k x l canvas units (k*in_scale x l*in_scale pixels) to an output of
    k*out_scale x l*out_scale pixels. Blended output rows are passed to ``write(first_row, rows)``
    (float32, (B, C', n, canvas[1] * out_scale)) top to bottom, each row exactly once. With
    ``norms``, a first pass records canvas-wide GroupNorm statistics and the second applies them.
    """
    h, w = canvas
    th, tw = min(tile, h), min(tile, w)
    tops, lefts = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)

    def run(top: int, left: int) -> torch.Tensor:
        i, s = in_scale, slice(top * in_scale, (top + th) * in_scale)
        return fn(x[..., s, left * i : (left + tw) * i])

    if norms is not None:
        with norms.recording():
            for top in tops:
                for left in lefts:
                    run(top, left)
    rows = _ramps(tops, th, h, overlap, out_scale, x.device)
    cols = _ramps(lefts, tw, w, overlap, out_scale, x.device)
    s = out_scale
    band: torch.Tensor | None = None
    previous = 0
    with norms.applying() if norms is not None else contextlib.nullcontext():
        for i, top in enumerate(tops):
            new: torch.Tensor | None = None
            for j, left in enumerate(lefts):
                y = run(top, left).float()
                if new is None:
                    new = torch.zeros((*y.shape[:2], th * s, w * s), dtype=torch.float32, device=y.device)
                    if band is not None:  # rows the previous tile row shares with this one carry over
                        shift = (top - previous) * s
                        new[..., : th * s - shift, :] = band[..., shift:, :]
                        write(previous * s, band[..., :shift, :])
                new[..., left * s : (left + tw) * s] += y * rows[i][:, None] * cols[j]
            band, previous = new, top
    assert band is not None
    write(previous * s, band)


class GroupNormStats:
    """Canvas-wide GroupNorm statistics for tiled inference (see the module docstring).

    ``recording()``: each GroupNorm normalises by its tile's statistics (as usual) and merges the
    tile's per-group mean and variance into a canvas total (Chan et al.'s pairwise update, in
    float64). ``applying()``: each GroupNorm normalises by the totals, in one fused multiply-add.
    """

    def __init__(self, *modules: nn.Module):
        self.norms = [m for module in modules for m in module.modules() if isinstance(m, nn.GroupNorm)]
        self.totals: dict[int, tuple[float, torch.Tensor, torch.Tensor]] = {}

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
        self.totals = {}

        def forward(i: int, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
            g = x.reshape(x.shape[0], norm.num_groups, -1)
            var, mean = torch.var_mean(g.float(), dim=-1, unbiased=False)
            n, mean, m2 = float(g.shape[-1]), mean.double(), var.double() * g.shape[-1]
            if i in self.totals:
                n0, mean0, m20 = self.totals[i]
                delta = mean - mean0
                total = n0 + n
                mean, m2, n = mean0 + delta * (n / total), m20 + m2 + delta * delta * (n0 * n / total), total
            self.totals[i] = (n, mean, m2)
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)

        return self._patched(forward)

    def applying(self):
        def forward(i: int, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
            n, mean, m2 = self.totals[i]
            rstd = torch.rsqrt((m2 / n).clamp_min(0) + norm.eps)  # (B, groups), float64
            per_group = x.shape[1] // norm.num_groups
            scale = rstd.repeat_interleave(per_group, dim=1)
            shift = -(mean.repeat_interleave(per_group, dim=1)) * scale
            if norm.affine:
                scale = scale * norm.weight.double()
                shift = shift * norm.weight.double() + norm.bias.double()
            shape = (*scale.shape, *(1,) * (x.dim() - 2))
            return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))

        return self._patched(forward)
