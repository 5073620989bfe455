"""Running a VAE half (decoder or encoder) over a large canvas in tiles, with bounded memory.

Tiles overlap by ``overlap`` latent pixels and their outputs are blended with linear ramps across
the overlaps. Blend weights are separable and normalised per axis beforehand, so no canvas-sized
weight sum is kept; outputs are accumulated one row of tiles at a time and every finished row of
pixels is handed to a ``write`` callback. Working memory is one tile's activations plus two
float32 bands of one tile row, whatever the canvas height, plus the activations the exact
statistics keep, which never exceed their budget.

Tiles alone shift tones: the GroupNorm layers would normalise each tile by its own statistics.
:class:`GroupNormStats` makes them canvas-wide, measured before the blended pass. Exactly, layer by
layer (the default): layer k's per-tile moments are merged into canvas moments while layers before
k already use canvas moments, so they are the whole decode's (up to the tiles' borders). Each
measuring pass stops at its layer; run from the tiles' inputs every time, that would cost about half
a pass over the tiles per GroupNorm layer, so the tiles' activations where a pass stopped are kept
(within a memory budget) and the next passes resume there (:meth:`GroupNormStats.sweep`). Or
fast, in one pass where each tile normalises by its own moments; that skews deeper layers, most on
trained VAEs. How far each mode's tiled decode is from a whole decode, and what it costs, is
measured by ``python -m benchmarks --suites decode`` (README, "Speed and memory";
``benchmarks/results/``).

Several processes (``share``, a :class:`Collective` such as
:class:`~multidiffusion.engine.distributed.Shard`) split the tiles: rank r runs tiles k with
k % world == r, in the statistics' passes and in the blended pass. Per-tile GroupNorm moments are
summed over the ranks into one table (each tile's row comes from one rank, the others add zeros) and
merged in tile order; each blended tile is broadcast by the rank that ran it and every rank blends
all of them in tile order. Every rank thus gets the output a single process computes, bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from multidiffusion.engine.views import axis_starts
from multidiffusion.vae.heap import give_back_freed

__all__ = ["NORM_STATS", "Collective", "GroupNormStats", "run_tiled", "tile_starts"]


class Collective(Protocol):
    """Processes that share a tiled pass: this one is ``rank`` of ``world`` (ranks run the same
    calls in the same order; see :mod:`multidiffusion.engine.distributed`)."""

    rank: int
    world: int

    def all_reduce(self, tensor: torch.Tensor, what: str) -> None:
        """Sum ``tensor`` over the ranks, in place."""

    def broadcast(self, tensor: torch.Tensor, src: int, what: str) -> None:
        """Rank ``src``'s ``tensor`` on every rank, in place."""


def _mine(k: int, share: Collective | None) -> bool:
    return share is None or k % share.world == share.rank


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


Stage = Callable[[torch.Tensor], torch.Tensor]


def run_tiled(
    fn: Stage | Sequence[Stage],
    x: torch.Tensor,
    canvas: tuple[int, int],
    tile: int,
    overlap: int,
    in_scale: int,
    out_scale: int,
    write: Callable[[int, torch.Tensor], None],
    norms: GroupNormStats | None = None,
    share: Collective | None = None,
) -> None:
    """Apply ``fn`` to ``x`` (B, C, canvas * in_scale) in tiles of ``tile`` canvas units.

    ``fn`` maps a crop of k x l canvas units (k*in_scale x l*in_scale pixels) to an output of
    k*out_scale x l*out_scale pixels; it may be given as its segments, run in order, where exact
    GroupNorm statistics may resume (see :class:`GroupNormStats`). Blended output rows are passed to
    ``write(first_row, rows)`` (float32, (B, C', n, canvas[1] * out_scale)) top to bottom, each row
    exactly once. With ``norms``, canvas-wide GroupNorm statistics are measured first
    (:meth:`GroupNormStats.measure`) and applied while the tiles are blended. With ``share``, the
    ranks split the tiles and every rank gets every row (see the module docstring).
    """
    segments = list(fn) if isinstance(fn, Sequence) else [fn]
    h, w = canvas
    th, tw = min(tile, h), min(tile, w)
    tops, lefts = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)

    def crop(top: int, left: int) -> torch.Tensor:
        i, s = in_scale, slice(top * in_scale, (top + th) * in_scale)
        return x[..., s, left * i : (left + tw) * i]

    resume = Resume()
    if norms is not None:
        own_rows, own_cols = _owned(tops, th, h), _owned(lefts, tw, w)
        resume = norms.measure(
            segments,
            [
                (functools.partial(crop, top, left), (*own_rows[i], *own_cols[j], th, tw))
                for i, top in enumerate(tops)
                for j, left in enumerate(lefts)
            ],
            share,
            x.shape[0],
        )

    def run(top: int, left: int) -> torch.Tensor:
        k = tops.index(top) * len(lefts) + lefts.index(left)
        return resume.finish(segments, k, functools.partial(crop, top, left))

    rows = _ramps(tops, th, h, overlap, out_scale, x.device)
    cols = _ramps(lefts, tw, w, overlap, out_scale, x.device)
    s = out_scale
    band: torch.Tensor | None = None
    previous = 0
    shape: list[int] = []  # of a blended tile, learnt from the first one (sharded runs)
    with norms.applying() if norms is not None else contextlib.nullcontext():
        for i, top in enumerate(tops):
            new: torch.Tensor | None = None
            tiles = _row_outputs(functools.partial(_run_float, run, top), lefts, i * len(lefts), share, shape, x.device)
            for j, y in tiles:
                if new is None:
                    new = torch.zeros((*y.shape[:2], th * s, w * s), dtype=torch.float32, device=y.device)
                    if band is not None:  # rows the previous tile row shares with this one carry over
                        shift = (top - previous) * s
                        new[..., : th * s - shift, :] = band[..., shift:, :]
                        write(previous * s, band[..., :shift, :])
                left = lefts[j]
                new[..., left * s : (left + tw) * s] += y * rows[i][:, None] * cols[j]
                del y
                if norms is not None and norms.give_back:
                    give_back_freed(x.device)
            band, previous = new, top
    assert band is not None
    write(previous * s, band)


def _run_float(run: Callable[[int, int], torch.Tensor], top: int, left: int) -> torch.Tensor:
    return run(top, left).float()


def _row_outputs(
    run: Callable[[int], torch.Tensor],
    lefts: list[int],
    first: int,
    share: Collective | None,
    shape: list[int],
    device: torch.device,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(column index, output) of a row of tiles in order. Alone: each tile is run when it is blended.
    Shared: this rank runs its tiles of the row first, then each tile is broadcast by its rank (the
    shape once, from tile 0's rank, so ranks that run none know it)."""
    if share is None:
        for j, left in enumerate(lefts):
            yield j, run(left)
        return
    own = {j: run(left) for j, left in enumerate(lefts) if _mine(first + j, share)}
    if not shape:
        known = torch.zeros(4, dtype=torch.int64)
        if _mine(0, share):
            known[:] = torch.tensor(own[0].shape)
        share.broadcast(known, 0, "the tiled VAE's tile shape")
        shape.extend(int(v) for v in known)
    for j in range(len(lefts)):
        k = first + j
        y = own.pop(j) if j in own else torch.empty(shape, dtype=torch.float32, device=device)
        share.broadcast(y, k % share.world, "a tile of the tiled VAE")
        yield j, y


NORM_STATS = ("exact", "fast")


Moments = tuple[float, torch.Tensor, torch.Tensor]
"""(count, mean, sum of squared deviations) of a GroupNorm's input per (image, group)."""

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


Tile = tuple[Callable[[], torch.Tensor], Region]
"""A call that gives the tile's input crop, and the part of the tile it owns."""


class Resume:
    """Where the tiles' forward passes resume: ``activations[k]``, tile k's input of segment
    ``segment`` (the segments before it need not run again), kept for this rank's tiles while they
    fit the budget; empty: from the tiles' inputs."""

    def __init__(self, segment: int = 0, activations: dict[int, torch.Tensor] | None = None):
        self.segment = segment
        self.activations = activations or {}

    def start(self, k: int, crop: Callable[[], torch.Tensor], keep: bool = True) -> tuple[int, torch.Tensor]:
        """(first segment to run, its input) for tile k; ``keep=False`` lets the kept input go."""
        if k not in self.activations:
            return 0, crop()
        return self.segment, self.activations[k] if keep else self.activations.pop(k)

    def finish(self, segments: Sequence[Stage], k: int, crop: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Tile k's output, from where it resumes (the kept input is let go: one use)."""
        first, x = self.start(k, crop, keep=False)
        for segment in segments[first:]:
            x = segment(x)
        return x


class GroupNormStats:
    """Canvas-wide GroupNorm statistics for tiled inference (see the module docstring).

    ``mode="exact"`` measures them layer by layer (:meth:`sweep`): the statistics of layer k are
    recorded with layers 1..k-1 already normalised by canvas statistics, so every tile sees what a
    whole decode computes, up to the tiles' borders. ``mode="fast"`` records all layers in one pass
    in which each tile normalises by its own statistics; per-tile normalisation
    skews the deeper layers' statistics, most on trained VAEs (README, "Speed and memory").
    ``applying()``: each GroupNorm normalises by the totals, in one fused multiply-add.
    """

    def __init__(self, *modules: nn.Module, mode: str = "exact", cache_bytes: int = 0, give_back: bool = False):
        if mode not in NORM_STATS:
            raise ValueError(f"norm_stats must be one of {', '.join(map(repr, NORM_STATS))}, got {mode!r}")
        self.mode = mode
        self.cache_bytes = cache_bytes
        self.give_back = give_back  # the heap's free pages back to the system after each tile (vae.heap)
        self.norms = [m for module in modules for m in module.modules() if isinstance(m, nn.GroupNorm)]
        self.totals: dict[int, tuple[float, torch.Tensor, torch.Tensor]] = {}

    def measure(
        self, segments: Sequence[Stage], tiles: Sequence[Tile], share: Collective | None = None, batch: int = 1
    ) -> Resume:
        """Fill ``totals`` from the tiles, each run through ``segments`` in order. In exact mode only
        owned parts count, so overlaps count once. With ``share``, this rank runs its tiles only and
        the moments of all tiles (``batch`` images) are exchanged; either way they are merged in
        tile order. Returns where the blended pass may resume each tile (exact mode)."""
        if self.mode == "exact":
            return self.sweep(segments, tiles, share, batch)
        found: dict[tuple[int, int], Moments] = {}

        def record(i: int, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
            found[(i, self._tile)] = self._moments(norm, x)
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)

        with self._patched(record):
            for k, (crop, _) in enumerate(tiles):
                if _mine(k, share):
                    self._tile = k
                    Resume().finish(segments, k, crop)
        if share is not None:
            found = self._exchange(found, len(tiles), share, batch)
        self.totals = {}
        for i, k in sorted(found, key=lambda key: key[1]):  # per layer, in tile order
            self.totals[i] = self._merge(self.totals.get(i), found[(i, k)])
        return Resume()

    def sweep(
        self, segments: Sequence[Stage], tiles: Sequence[Tile], share: Collective | None = None, batch: int = 1
    ) -> Resume:
        """Exact statistics, one GroupNorm per pass over the tiles, in execution order: a pass
        applies the statistics found so far, records the first layer without any and stops the
        forward there. From the start, that costs the sum of the prefixes, about half a pass per
        layer. So a pass that stops in segment s keeps every tile's input of s, when all of them fit
        in ``cache_bytes``, and the next passes (and the blended pass) resume there: each segment then
        runs about 1.5 times in all (to its GroupNorms, then through), whatever the depth."""
        self.totals = {}
        resume = Resume()
        mine = [k for k in range(len(tiles)) if _mine(k, share)]
        while len(self.totals) < len(self.norms):
            self._target: int | None = None
            self._found: dict[tuple[int, int], Moments] = {}
            kept: dict[int, torch.Tensor] = {}
            stopped: int | None = None  # the segment this pass stops in
            fits = False
            with self._patched(self._sweep_forward):
                for k in mine:
                    crop, self._region = tiles[k]
                    self._tile = k
                    first, x = resume.start(k, crop)
                    device = x.device
                    for s in range(first, len(segments)):
                        try:
                            y = segments[s](x)
                        except _Stop:
                            if stopped is None and s > resume.segment:  # a later resume point: keep it?
                                fits = x.numel() * x.element_size() * len(mine) <= self.cache_bytes
                            stopped = s
                            if fits:
                                kept[k] = x
                                resume.activations.pop(k, None)
                            break
                        x = y
                    del x
                    if self.give_back:
                        give_back_freed(device)
            self._region = None
            if fits:
                resume = Resume(stopped, kept)
            found = self._found if share is None else self._exchange(self._found, len(tiles), share, batch)
            targets = {i for i, _ in found}
            if not targets:  # the remaining GroupNorms never run
                break
            if len(targets) > 1:
                raise RuntimeError("GroupNorm layers ran in a different order in different tiles")
            target = targets.pop()
            pending = None
            for key in sorted(found, key=lambda key: key[1]):  # in tile order
                pending = self._merge(pending, found[key])
            self.totals[target] = pending
        return resume

    def _sweep_forward(self, i: int, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if i in self.totals:
            return self._normalize(norm, x, self.totals[i])
        if self._target is not None and self._target != i:
            raise RuntimeError("GroupNorm layers ran in a different order in different tiles")
        self._target = i
        self._found[(i, self._tile)] = self._moments(norm, _crop_owned(x, self._region))
        raise _Stop

    def _exchange(
        self, found: dict[tuple[int, int], Moments], tiles: int, share: Collective, batch: int
    ) -> dict[tuple[int, int], Moments]:
        """Every rank's (layer, tile) -> moments, from this rank's: one all-reduce of a table with a
        row per (layer, tile) (a row holds present, count, means and sums of squared deviations,
        padded to the widest layer; each row is filled by one rank and zero on the others)."""
        width = max(n.num_groups for n in self.norms) * batch
        table = torch.zeros((len(self.norms) * tiles, 2 + 2 * width), dtype=torch.float64)
        for (i, k), (n, mean, m2) in found.items():
            row = table[i * tiles + k]
            row[0], row[1] = 1, n
            row[2 : 2 + mean.numel()] = mean.reshape(-1).cpu()
            row[2 + width : 2 + width + m2.numel()] = m2.reshape(-1).cpu()
        share.all_reduce(table, "the tiled VAE's GroupNorm statistics")
        device = next(iter(found.values()))[1].device if found else getattr(share, "device", torch.device("cpu"))
        out: dict[tuple[int, int], Moments] = {}
        for r in torch.nonzero(table[:, 0]).flatten().tolist():
            i, k = divmod(r, tiles)
            g = self.norms[i].num_groups * batch
            row = table[r].to(device)
            shape = (batch, self.norms[i].num_groups)
            out[(i, k)] = (float(table[r, 1]), row[2 : 2 + g].view(shape), row[2 + width : 2 + width + g].view(shape))
        return out

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
        return torch.addcmul(shift.to(x).view(shape), x, scale.to(x).view(shape))
