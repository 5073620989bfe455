"""Which windows each step denoises: the paper's fixed grid, or the fast mode's shifted windows.

The engine has one sampling loop; a layout only changes the jobs of each step (``plan_for_step``).

- ``"grid"``: the paper's sliding windows (Sec. 4.1), the same every step. With the default stride
  (window / 8) every latent pixel goes through the model about 6-7 times per step.
- ``"shifted"``: windows spaced by the stride (default: the window, so they do not overlap) at a
  fresh random offset every step, as SpotDiffusion (Frolov et al., 2024). The borders between
  windows move every step, so none stays long enough to become a seam, and each pixel is denoised
  about once per step (coverage ≈ window / stride, plus the clamped edge windows).

Offsets come from their own ``torch.Generator`` seeded with ``seed``, drawn in step order, so a run
is reproducible and does not disturb the generator that draws the noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from multidiffusion.engine.fusion import FusionPlan, Job
from multidiffusion.engine.views import View, grid_views, shifted_views, window_weights

__all__ = ["TILINGS", "WindowLayout", "panorama_plans"]

TILINGS = ("grid", "shifted")


class WindowLayout:
    """The views F_i of each step on a ``canvas`` of (rows, columns) latent pixels."""

    def __init__(
        self,
        canvas: tuple[int, int],
        window: tuple[int, int],
        stride: tuple[int, int],
        tiling: str = "grid",
        circular: bool = False,
        seed: int = 0,
    ):
        if tiling not in TILINGS:
            raise ValueError(f"tiling must be one of {', '.join(map(repr, TILINGS))}, got {tiling!r}")
        self.canvas, self.window, self.stride = canvas, window, stride
        self.tiling, self.circular, self.seed = tiling, circular, seed
        self._grid = grid_views(*canvas, window, stride, circular=circular) if tiling == "grid" else None
        self._generator = torch.Generator("cpu").manual_seed(seed)
        self._offsets: list[tuple[int, int]] = []

    def offset(self, step: int) -> tuple[int, int]:
        """The shifted layout's offset at ``step``: uniform in [0, stride) per axis, seeded."""
        while len(self._offsets) <= step:
            rows = int(torch.randint(0, self.stride[0], (1,), generator=self._generator))
            cols = int(torch.randint(0, self.stride[1], (1,), generator=self._generator))
            self._offsets.append((rows, cols))
        return self._offsets[step]

    def views(self, step: int) -> list[View]:
        if self._grid is not None:
            return self._grid
        return shifted_views(*self.canvas, self.window, self.offset(step), self.circular, self.stride)


def panorama_plans(
    layout: WindowLayout,
    weights: str = "uniform",
    prompt: int = 0,
    device: torch.device | str = "cpu",
) -> Callable[[int], FusionPlan]:
    """``plan_for_step`` of a panorama: every view of the step under one prompt slot, weighted by
    ``weights`` ("uniform" or "gaussian", see :func:`~multidiffusion.engine.views.window_weights`).

    The grid's plan is built once; the shifted layout's once per step (the Eq. 5 denominator of a
    few windows, negligible next to the model calls)."""
    cache: dict[tuple[int, int], torch.Tensor | None] = {}

    def weight(view: View) -> torch.Tensor | None:
        if view.size not in cache:
            w = window_weights(view.height, view.width, weights)
            cache[view.size] = None if w is None else w.to(device)
        return cache[view.size]

    def plan(step: int) -> FusionPlan:
        return FusionPlan([Job(v, prompt, weight(v)) for v in layout.views(step)], layout.canvas, device)

    if layout.tiling == "grid":
        fixed = plan(0)
        return lambda step: fixed
    return plan
