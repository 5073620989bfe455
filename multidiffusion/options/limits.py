"""What one call may ask (:class:`Limits`): the library's own bounds are the widest; a server passes
stricter ones, which every task's options are checked against."""

from __future__ import annotations

from dataclasses import dataclass

from multidiffusion.io.checks import check_int
from multidiffusion.io.ranges import MAX_IMAGES, MAX_SIDE, MAX_STEPS, MIN_SIDE
from multidiffusion.regions.layout import MAX_REGIONS

__all__ = ["LIBRARY_LIMITS", "Limits"]


@dataclass(frozen=True)
class Limits:
    """What one call may ask. The defaults are the library's own; a server passes stricter ones, and
    ``note`` (e.g. "this server's limit, set with `multidiffusion serve --max-side`") is added to the
    message when a value is above one of them.

    ``max_evaluations`` bounds compute, not sizes: window evaluations over the whole call (jobs per
    step, a job being one view under one prompt, x steps x images), checked once the model's window
    is known. On the demo model a 4096 x 64 panorama with window 8 and stride 1 at 150 steps costs
    152,550 of them; with the defaults (50 steps) 25,250.
    """

    max_side: int = MAX_SIDE
    max_steps: int = MAX_STEPS
    max_images: int = MAX_IMAGES
    max_regions: int = MAX_REGIONS
    max_evaluations: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        check_int("max_side", self.max_side, MIN_SIDE, MAX_SIDE)
        check_int("max_steps", self.max_steps, 1, MAX_STEPS)
        check_int("max_images", self.max_images, 1, MAX_IMAGES)
        check_int("max_regions", self.max_regions, 0, MAX_REGIONS)
        if self.max_evaluations is not None:
            check_int("max_evaluations", self.max_evaluations, 1)

    def suffix(self) -> str:
        return f" ({self.note})" if self.note else ""


LIBRARY_LIMITS = Limits()
