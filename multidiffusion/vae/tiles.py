"""Running a VAE half (decoder or encoder) over a large canvas in tiles, with bounded memory.

Tiles overlap by ``overlap`` latent pixels and their outputs are blended with linear ramps across
the overlaps. Blend weights are separable and normalised per axis beforehand, so no canvas-sized
weight sum is kept; outputs are accumulated one row of tiles at a time and every finished row of
pixels is handed to a ``write`` callback. Working memory is one tile's activations plus two
float32 bands of one tile row, whatever the canvas height, plus the activations the exact
statistics keep, which never exceed their budget.

Tiles alone shift tones: the GroupNorm layers would normalise each tile by its own statistics.
:class:`~multidiffusion.vae.norms.GroupNormStats` makes them canvas-wide, measured before the
blended pass (:mod:`multidiffusion.vae.norms`).

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

import torch

from multidiffusion.geometry import axis_starts
from multidiffusion.vae.heap import give_back_freed
from multidiffusion.vae.norms import NORM_STATS, Collective, GroupNormStats, Resume, Stage, is_mine

__all__ = ["NORM_STATS", "Collective", "GroupNormStats", "run_tiled", "tile_starts"]


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
    own = {j: run(left) for j, left in enumerate(lefts) if is_mine(first + j, share)}
    if not shape:
        known = torch.zeros(4, dtype=torch.int64)
        if is_mine(0, share):
            known[:] = torch.tensor(own[0].shape)
        share.broadcast(known, 0, "the tiled VAE's tile shape")
        shape.extend(int(v) for v in known)
    for j in range(len(lefts)):
        k = first + j
        y = own.pop(j) if j in own else torch.empty(shape, dtype=torch.float32, device=device)
        share.broadcast(y, k % share.world, "a tile of the tiled VAE")
        yield j, y
