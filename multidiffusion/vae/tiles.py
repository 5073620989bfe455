"""Running a VAE half (decoder or encoder) over a large canvas in tiles, with bounded memory.

Tiles overlap by ``overlap`` latent pixels and their outputs are blended with linear ramps across
the overlaps. Blend weights are separable and normalised per axis beforehand, so no canvas-sized
weight sum is kept; outputs are accumulated one row of tiles at a time and every finished row of
pixels is handed to a ``write`` callback. Working memory is one tile's activations plus two
float32 bands of one tile row, whatever the canvas height.

Tiles alone shift tones: the GroupNorm layers would normalise each tile by its own statistics.
:class:`GroupNormStats` makes them canvas-wide, measured before the blended pass. Exactly, layer by
layer (the default): layer k's per-tile moments are merged into canvas moments while layers before
k already use canvas moments, so they are the whole decode's (up to the tiles' borders); this costs
about half a pass over the tiles per GroupNorm layer, since each measuring pass stops at its layer.
Or fast, in one pass where each tile normalises by its own moments; that skews deeper layers, most
on trained VAEs. How far each mode's tiled decode is from a whole decode, and what it costs, is
measured by ``python -m benchmarks --suites decode`` (README, "Speed and memory";
``benchmarks/results/``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multidiffusion.engine.views import axis_starts

__all__ = ["NORM_STATS", "GroupNormStats", "run_tiled", "tile_starts"]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis (tiles of ``min(tile, size)``, overlapping by ≥ ``overlap``)."""
    return axis_starts(size, min(tile, size), tile - overlap)


def _owned(starts: list[int], length: int, size: int) -> list[tuple[int, int]]:
    """The part of each tile (offsets within it) that it alone accounts for in the statistics: the
    tiles' overlaps split at their middles, so the parts partition the axis."""
    cuts = [0] + [(a + length + b) // 2 for a, b in itertools.pairwise(starts)] + [size]
    return [(cuts[k] - s, cuts[k + 1] - s) for k, s in enumerate(starts)]


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
    ``norms``, canvas-wide GroupNorm statistics are measured first (:meth:`GroupNormStats.measure`)
    and applied while the tiles are blended.
    """
    h, w = canvas
    th, tw = min(tile, h), min(tile, w)
    tops, lefts = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)

    def run(top: int, left: int) -> torch.Tensor:
        i, s = in_scale, slice(top * in_scale, (top + th) * in_scale)
        return fn(x[..., s, left * i : (left + tw) * i])

    if norms is not None:
        own_rows, own_cols = _owned(tops, th, h), _owned(lefts, tw, w)
        norms.measure(
            [
                (functools.partial(run, top, left), (*own_rows[i], *own_cols[j], th, tw))
                for i, top in enumerate(tops)
                for j, left in enumerate(lefts)
            ]
        )
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


NORM_STATS = ("exact", "fast")


Region = tuple[int, int, int, int, int, int]
"""(first row, end row, first column, end column) of a tile's owned part and the tile's (rows,
columns), all in canvas units."""


def _crop_owned(x: torch.Tensor, region: Region | None) -> torch.Tensor:
    """The owned part of a tile's activation (B, C, H, W), or (B, C, H*W) inside attention."""
    if region is None:
        return x
    r0, r1, c0, c1, th, tw = region
    if x.dim() == 3:
        scale = round((x.shape[-1] / (th * tw)) ** 0.5)
        x = x.reshape(*x.shape[:2], th * scale, tw * scale)
    scale = x.shape[-2] // th
    return x[..., r0 * scale : r1 * scale, c0 * scale : c1 * scale]


class _Stop(Exception):
    """Ends a tile's forward pass once the statistic being swept has been recorded."""


class GroupNormStats:
    """Canvas-wide GroupNorm statistics for tiled inference (see the module docstring).

    ``mode="exact"`` measures them layer by layer (:meth:`sweep`): the statistics of layer k are
    recorded with layers 1..k-1 already normalised by canvas statistics, so every tile sees what a
    whole decode computes, up to the tiles' borders. ``mode="fast"`` records all layers in one pass
    in which each tile normalises by its own statistics (:meth:`recording`); per-tile normalisation
    skews the deeper layers' statistics, most on trained VAEs (README, "Speed and memory").
    ``applying()``: each GroupNorm normalises by the totals, in one fused multiply-add.
    """

    def __init__(self, *modules: nn.Module, mode: str = "exact"):
        if mode not in NORM_STATS:
            raise ValueError(f"norm_stats must be one of {', '.join(map(repr, NORM_STATS))}, got {mode!r}")
        self.mode = mode
        self.norms = [m for module in modules for m in module.modules() if isinstance(m, nn.GroupNorm)]
        self.totals: dict[int, tuple[float, torch.Tensor, torch.Tensor]] = {}

    def measure(self, tiles: Sequence[tuple[Callable[[], object], Region]]) -> None:
        """Fill ``totals`` from the tiles: (a call that runs the tile through the module, the part
        of the tile it owns). In exact mode only owned parts count, so overlaps count once."""
        if self.mode == "fast":
            with self.recording():
                for run, _ in tiles:
                    run()
        else:
            self.sweep(tiles)

    def sweep(self, tiles: Sequence[tuple[Callable[[], object], Region]]) -> None:
        """Exact statistics, one GroupNorm per pass over the tiles, in execution order: a pass
        applies the statistics found so far, records the first layer without any and stops the
        forward there. The cost is the sum of the prefixes, about half a pass per layer."""
        self.totals = {}
        while len(self.totals) < len(self.norms):
            self._target: int | None = None
            self._pending = None
            with self._patched(self._sweep_forward):
                for run, region in tiles:
                    self._region = region
                    with contextlib.suppress(_Stop):
                        run()
            self._region = None
            if self._target is None:  # the remaining GroupNorms never run
                break
            self.totals[self._target] = self._pending

    def _sweep_forward(self, i: int, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if i in self.totals:
            return self._normalize(norm, x, self.totals[i])
        if self._target is not None and self._target != i:
            raise RuntimeError("GroupNorm layers ran in a different order in different tiles")
        self._target = i
        self._pending = self._merge(self._pending, self._moments(norm, _crop_owned(x, self._region)))
        raise _Stop

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

    @staticmethod
    def _moments(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        g = x.reshape(x.shape[0], norm.num_groups, -1)
        var, mean = torch.var_mean(g.float(), dim=-1, unbiased=False)
        return float(g.shape[-1]), mean.double(), var.double() * g.shape[-1]

    @staticmethod
    def _merge(a, b):
        """Chan et al.'s pairwise update of (count, mean, sum of squared deviations)."""
        if a is None:
            return b
        (n0, mean0, m20), (n, mean, m2) = a, b
        delta, total = mean - mean0, n0 + n
        return total, mean0 + delta * (n / total), m20 + m2 + delta * delta * (n0 * n / total)

    def recording(self):
        self.totals = {}

        def forward(i: int, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
            self.totals[i] = self._merge(self.totals.get(i), self._moments(norm, x))
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)

        return self._patched(forward)

    def applying(self):
        def forward(i: int, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
            return self._normalize(norm, x, self.totals[i])

        return self._patched(forward)

    @staticmethod
    def _normalize(norm: nn.GroupNorm, x: torch.Tensor, totals) -> torch.Tensor:
        n, mean, m2 = totals
        rstd = torch.rsqrt((m2 / n).clamp_min(0) + norm.eps)  # (B, groups), float64
        per_group = x.shape[1] // norm.num_groups
        scale = rstd.repeat_interleave(per_group, dim=1)
        shift = -(mean.repeat_interleave(per_group, dim=1)) * scale
        if norm.affine:
            scale = scale * norm.weight.double()
            shift = shift * norm.weight.double() + norm.bias.double()
        shape = (*scale.shape, *(1,) * (x.dim() - 2))
        return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))
