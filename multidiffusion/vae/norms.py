"""Canvas-wide GroupNorm statistics for a VAE half run in tiles (:mod:`multidiffusion.vae.tiles`).

Tiles alone shift tones: the GroupNorm layers would normalise each tile by its own statistics.
:class:`GroupNormStats` makes them canvas-wide, measured before the blended pass. Exactly, layer by
layer (the default): layer k's per-tile moments are merged into canvas moments while layers before
k already use canvas moments, so they are the whole decode's (up to the tiles' borders). Each
measuring pass stops at its layer; run from the tiles' inputs every time, that would cost about half
a pass over the tiles per GroupNorm layer, so the tiles' activations where a pass stopped are kept
(within a memory budget) and the next passes resume there (:meth:`GroupNormStats.sweep`). Or
fast, in one pass where each tile normalises by its own moments; that skews deeper layers, most on
trained VAEs. How far each mode's tiled decode is from a whole decode, and what it costs, is
measured by ``python -m benchmarks --suites decode`` (docs/benchmarks.md, "Speed and memory";
``benchmarks/results/``).

With ``share`` (a :class:`Collective`), the ranks split the tiles and exchange the moments (see
:mod:`multidiffusion.vae.tiles`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from multidiffusion.vae.heap import give_back_freed

__all__ = ["NORM_STATS", "Collective", "GroupNormStats", "Resume", "Stage", "is_mine"]


class Collective(Protocol):
    """Processes that share a tiled pass: this one is ``rank`` of ``world`` (ranks run the same
    calls in the same order; see :mod:`multidiffusion.engine.distributed`)."""

    rank: int
    world: int

    def all_reduce(self, tensor: torch.Tensor, what: str) -> None:
        """Sum ``tensor`` over the ranks, in place."""

    def broadcast(self, tensor: torch.Tensor, src: int, what: str) -> None:
        """Rank ``src``'s ``tensor`` on every rank, in place."""


def is_mine(k: int, share: Collective | None) -> bool:
    """Whether tile ``k`` is this rank's to run (every tile when alone)."""
    return share is None or k % share.world == share.rank


Stage = Callable[[torch.Tensor], torch.Tensor]


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
    skews the deeper layers' statistics, most on trained VAEs (docs/benchmarks.md, "Speed and memory").
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
                if is_mine(k, share):
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
        mine = [k for k in range(len(tiles)) if is_mine(k, share)]
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
