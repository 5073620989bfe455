"""Which windows each step denoises: the paper's fixed grid, or the fast mode's shifted windows.

The engine has one sampling loop; a placement only changes the jobs of each step (``plan_for_step``).

- ``"grid"``: the paper's sliding windows (Sec. 4.1), the same every step. With the default stride
  (window / 8) every latent pixel goes through the model about 6-7 times per step.
- ``"shifted"``: windows spaced by the stride at a fresh random offset every step, as
  SpotDiffusion (Frolov et al., 2024). The borders between windows move every step, so none stays
  long enough to become a seam, and each pixel is denoised about window / stride times per step
  (plus the edge windows, which stay at the edges). The default stride, 7/8 of the window, makes neighbours overlap
  by 1/8, where Gaussian weights (Mixture of Diffusers) blend them (:func:`default_stride`).

Offsets come from their own ``torch.Generator`` seeded with ``seed``, drawn in step order, so a run
is reproducible and does not disturb the generator that draws the noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from multidiffusion.engine.fusion import FusionPlan, Job
from multidiffusion.engine.views import View, grid_views, shifted_views, window_weights

__all__ = ["PLACEMENTS", "Windows", "default_stride", "panorama_plans"]

PLACEMENTS = ("grid", "shifted")


def default_stride(window: tuple[int, int], placement: str, multiple: int = 1) -> tuple[int, int]:
    """The stride when none is given: window // 8 for the paper's grid (its 8 for 64-latent windows);
    window - window // 8 for shifted windows, which then overlap by 1/8. Rounded down to a
    ``multiple`` (a transformer's patch size; at least one patch)."""

    def side(w: int) -> int:
        s = w - w // 8 if placement == "shifted" else w // 8
        return max(multiple, s // multiple * multiple)

    return side(window[0]), side(window[1])


class Windows:
    """The views F_i of each step on a ``canvas`` of (rows, columns) latent pixels. Window offsets
    are multiples of ``multiple`` latent pixels (a transformer's patch size)."""

    def __init__(
        self,
        canvas: tuple[int, int],
        window: tuple[int, int],
        stride: tuple[int, int],
        placement: str = "grid",
        circular: bool = False,
        seed: int = 0,
        multiple: int = 1,
    ):
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(map(repr, PLACEMENTS))}, got {placement!r}")
        self.canvas, self.window, self.stride = canvas, window, stride
        self.placement, self.circular, self.seed = placement, circular, seed
        self.multiple = multiple
        self._grid = grid_views(*canvas, window, stride, circular=circular) if placement == "grid" else None
        self._generator = torch.Generator("cpu").manual_seed(seed)
        self._offsets: list[tuple[int, int]] = []

    def offset(self, step: int) -> tuple[int, int]:
        """The shifted windows' offset at ``step``: uniform over the multiples of ``multiple`` in
        [0, stride) per axis, seeded."""
        m = self.multiple
        while len(self._offsets) <= step:
            rows = int(torch.randint(0, max(1, self.stride[0] // m), (1,), generator=self._generator)) * m
            cols = int(torch.randint(0, max(1, self.stride[1] // m), (1,), generator=self._generator)) * m
            self._offsets.append((rows, cols))
        return self._offsets[step]

    def views(self, step: int) -> list[View]:
        if self._grid is not None:
            return self._grid
        return shifted_views(*self.canvas, self.window, self.offset(step), self.circular, self.stride, self.multiple)


def panorama_plans(
    windows: Windows,
    weights: str = "uniform",
    prompt: int = 0,
    device: torch.device | str = "cpu",
) -> Callable[[int], FusionPlan]:
    """``plan_for_step`` of a panorama: every view of the step under one prompt slot, weighted by
    ``weights`` ("uniform" or "gaussian", see :func:`~multidiffusion.engine.views.window_weights`).

    The grid's plan is built once; shifted windows' once per step (the Eq. 5 denominator of a
    few windows, negligible next to the model calls)."""
    cache: dict[tuple[int, int], torch.Tensor | None] = {}

    def weight(view: View) -> torch.Tensor | None:
        if view.size not in cache:
            w = window_weights(view.height, view.width, weights)
            cache[view.size] = None if w is None else w.to(device)
        return cache[view.size]

    def plan(step: int) -> FusionPlan:
        return FusionPlan([Job(v, prompt, weight(v)) for v in windows.views(step)], windows.canvas, device)

    if windows.placement == "grid":
        fixed = plan(0)
        return lambda step: fixed
    return plan
