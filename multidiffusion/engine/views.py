"""Views of the canvas: the maps F_i of the paper, and their inverses.

A view is a window on the latent canvas J. ``crop`` is F_i (it cuts the window out, wrapping around
the horizontal edge on circular canvases), ``paste_add`` is the accumulation of F_i⁻¹ used by Eq. 5
(it adds a window-sized tensor back at the window's place, zeros elsewhere).

All sizes here are in latent pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from multidiffusion.geometry import axis_starts

__all__ = [
    "WEIGHTS",
    "View",
    "axis_starts",
    "crop",
    "crop_batch",
    "grid_views",
    "paste_add",
    "shifted_views",
    "window_weights",
]


@dataclass(frozen=True)
class View:
    """A window of ``height`` x ``width`` latent pixels whose top-left corner is (``top``, ``left``).

    On a circular canvas ``left + width`` may exceed the canvas width: the window then wraps around
    to column 0.
    """

    top: int
    left: int
    height: int
    width: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)


def grid_views(
    height: int,
    width: int,
    window: tuple[int, int],
    stride: tuple[int, int],
    circular: bool = False,
) -> list[View]:
    """The paper's sliding windows (Sec. 4.1), row-major, covering every latent pixel.

    ``window`` and ``stride`` are (rows, columns). A window side larger than the canvas shrinks to
    the canvas side. ``circular`` wraps windows around the horizontal edge (360-degree panoramas).
    """
    win_h, win_w = min(window[0], height), min(window[1], width)
    tops = axis_starts(height, win_h, stride[0])
    lefts = axis_starts(width, win_w, stride[1], wrap=circular)
    return [View(top, left, win_h, win_w) for top in tops for left in lefts]


def shifted_views(
    height: int,
    width: int,
    window: tuple[int, int],
    offset: tuple[int, int],
    circular: bool = False,
    stride: tuple[int, int] | None = None,
    multiple: int = 1,
) -> list[View]:
    """Few windows of the full window size, displaced by ``offset`` (SpotDiffusion-style fast mode).

    Each step of the fast mode draws a fresh offset, so the borders between windows never stay in
    one place and no seam can form. ``stride`` (default: the window, i.e. windows that do not
    overlap) is the spacing of the windows. Along a wrapping axis, ``ceil(size / stride)`` windows
    are spread evenly from ``offset``. Along a non-wrapping axis, the edge windows sit at the edges
    and the inner ones a stride apart, shifted by ``offset`` within the play the span leaves them
    (at least half a stride); no two neighbours are more than a stride apart. Coverage (latent
    pixels denoised per canvas pixel) stays close to window / stride.
    With ``multiple`` > 1 (a transformer's patch size; canvas, window, stride and offset multiples
    of it) every start is a multiple of it too.
    """
    win_h, win_w = min(window[0], height), min(window[1], width)
    s_h, s_w = stride if stride is not None else (win_h, win_w)
    tops = _shifted_starts(height, win_h, min(s_h, win_h), offset[0], wrap=False, multiple=multiple)
    lefts = _shifted_starts(width, win_w, min(s_w, win_w), offset[1], wrap=circular, multiple=multiple)
    return [View(top, left, win_h, win_w) for top in tops for left in lefts]


def _shifted_starts(size: int, window: int, stride: int, offset: int, wrap: bool, multiple: int = 1) -> list[int]:
    if window >= size:
        return [0]
    if wrap:
        n = math.ceil(size / stride)
        return [(offset + (k * (size // multiple)) // n * multiple) % size for k in range(n)]
    # A non-wrapping axis: the first window at 0, the last at size - window, and between them inner
    # windows a stride apart whose position moves with the offset. The count is the least that keeps
    # every gap within the stride while leaving the inner windows at least half a stride of play, so
    # the borders keep moving from step to step. (Placing windows at offset + k * stride and clamping
    # them to the canvas piles extra windows up at the edges: 3.25 instead of 3 on a canvas two
    # windows wide.)
    span = size - window
    n = math.ceil(span / stride + 0.5) + 1
    play = (n - 1) * stride - span  # >= stride / 2
    first = span - (n - 2) * stride + (offset % stride) * play // stride // multiple * multiple
    inner = [first + k * stride for k in range(n - 2)]
    return sorted({0, span, *(s for s in inner if 0 < s < span)})


WEIGHTS = ("uniform", "gaussian")
"""Per-pixel weights W_i of a window in Eq. 5."""


def window_weights(height: int, width: int, kind: str = "uniform", variance: float = 0.01) -> torch.Tensor | None:
    """W_i of a ``height`` x ``width`` window: ``None`` for "uniform" (W_i = 1, the paper's panorama)
    or, for "gaussian", the separable Gaussian of Mixture of Diffusers (Jiménez, 2023): centre 1,
    ``exp(-d² / (2 · variance))`` at a distance d from the centre in units of the window side
    (variance 0.01: about 4e-6 at the edges, never 0). Where windows overlap, the pixels near a
    window's centre dominate Eq. 5, which hides the borders of windows placed far apart.
    """
    if kind == "uniform":
        return None
    if kind != "gaussian":
        raise ValueError(f"weights must be one of {', '.join(map(repr, WEIGHTS))}, got {kind!r}")

    def profile(n: int) -> torch.Tensor:
        d = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) / n
        return torch.exp(-(d * d) / (2 * variance))

    return (profile(height)[:, None] * profile(width)[None, :]).float()


def _column_slices(view: View, canvas_width: int) -> list[tuple[slice, slice]]:
    """(canvas columns, view columns) slices of a view, two pieces when it wraps."""
    left = view.left % canvas_width
    right = left + view.width
    if right <= canvas_width:
        return [(slice(left, right), slice(0, view.width))]
    first = canvas_width - left
    return [
        (slice(left, canvas_width), slice(0, first)),
        (slice(0, right - canvas_width), slice(first, view.width)),
    ]


def crop(x: torch.Tensor, view: View) -> torch.Tensor:
    """F_i: the window ``view`` of a canvas ``x`` (..., H, W), wrapping horizontally if needed."""
    rows = slice(view.top, view.top + view.height)
    pieces = _column_slices(view, x.shape[-1])
    if len(pieces) == 1:
        return x[..., rows, pieces[0][0]]
    return torch.cat([x[..., rows, canvas_cols] for canvas_cols, _ in pieces], dim=-1)


def paste_add(canvas: torch.Tensor, view: View, value: torch.Tensor | float) -> None:
    """canvas += F_i⁻¹(value), in place: adds a window-sized ``value`` at the window's place."""
    rows = slice(view.top, view.top + view.height)
    for canvas_cols, view_cols in _column_slices(view, canvas.shape[-1]):
        if isinstance(value, torch.Tensor):
            canvas[..., rows, canvas_cols] += value[..., view_cols]
        else:
            canvas[..., rows, canvas_cols] += value


def crop_batch(x: torch.Tensor, views: Sequence[View]) -> torch.Tensor:
    """Crops of equal size from a canvas batch ``x`` (N, C, H, W), stacked view-major: (V*N, C, h, w)."""
    return torch.cat([crop(x, v) for v in views], dim=0)
