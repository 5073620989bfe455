"""Window geometry on one axis, shared by the engine's views and the VAE's tiles: a leaf module
(nothing of the package below it), so neither has to import the other."""

from __future__ import annotations

__all__ = ["axis_starts"]


def axis_starts(size: int, window: int, stride: int, wrap: bool = False) -> list[int]:
    """Start offsets of windows along one axis so that every position in ``range(size)`` is covered.

    Non-wrapping: windows every ``stride`` from 0, plus a last window flush with the edge when
    ``size - window`` is not a multiple of ``stride`` (the paper's code and diffusers leave those
    positions undenoised). A window larger than the axis shrinks to it: one window at 0.

    Wrapping (circular): windows every ``stride`` from 0 up to ``size``; windows that pass the edge
    continue at 0. With ``size % stride == 0`` the layout is invariant to rolling by a stride.
    """
    if size <= 0 or window <= 0 or stride <= 0:
        raise ValueError(f"size, window and stride must be positive, got {size}, {window}, {stride}")
    if window >= size:
        return [0]
    if wrap:
        return list(range(0, size, stride))
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts
