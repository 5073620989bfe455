"""A region layout's options (paper Sec. 4.2): the regions, the background prompt, bootstrapping,
and an optional input image re-worked under the layout."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from multidiffusion.io.checks import check_int
from multidiffusion.io.ranges import check_negative, check_text
from multidiffusion.options.image_tasks import INPUT, check_input_image
from multidiffusion.options.limits import Limits
from multidiffusion.options.sampling import SamplingOptions
from multidiffusion.regions.few_step import MASK_SCHEDULES
from multidiffusion.regions.layout import Region, as_regions

__all__ = ["RegionsOptions"]


@dataclass
class RegionsOptions(SamplingOptions):
    """Region prompts (paper Sec. 4.2): each :class:`~multidiffusion.regions.Region` gets its own
    prompt, ``background`` the complement of their union. ``bootstrap_steps`` (None: 40 % of the
    steps, the paper's 20 of 50; 0: off) denoise each region over a random plain colour first.
    ``bootstrap_centre`` draws each region at its views' centre while bootstrapping and moves it back;
    ``mask_schedule="quantized"`` thresholds the masks at each step's noise level (both for few steps,
    :mod:`~multidiffusion.regions.few_step`). With ``image`` the layout re-works that image from
    ``strength`` (None: 0.75), as img2img does."""

    task: ClassVar[str] = "regions"

    background: str | None = None
    regions: Sequence[Region | Mapping[str, Any]] = ()
    bootstrap_steps: int | None = None
    bootstrap_centre: bool = False
    mask_schedule: str = "soft"
    image: Any = field(default=None, metadata=INPUT)
    strength: float | None = None

    def __post_init__(self, limits: Limits | None) -> None:
        super().__post_init__(limits)
        self.background = check_text("background", self.background, required=False)
        check_negative("negative_prompt", self.negative_prompt)
        self.regions = as_regions(self.regions, self.checked_against.max_regions, self.checked_against.suffix())
        self.check_steps()
        if not isinstance(self.bootstrap_centre, bool):
            raise ValueError(f"bootstrap_centre must be True or False, got {self.bootstrap_centre!r}")
        if self.mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"mask_schedule must be one of {', '.join(MASK_SCHEDULES)}, got {self.mask_schedule!r}")
        if not self.regions and self.background is None:
            raise ValueError("regions: give at least one region or a background prompt")
        if self.image is None:
            if self.strength is not None:
                raise ValueError("strength applies to an input image: give image= too, or leave strength unset")
        else:
            self.strength = 0.75 if self.strength is None else self.strength
            check_input_image(self)

    def check_steps(self) -> None:
        """bootstrap_steps defaults to the paper's 40% of the steps (20 of 50) and is at most all of them."""
        super().check_steps()
        steps = self.num_inference_steps
        if steps is None:
            if self.bootstrap_steps is not None:
                self.bootstrap_steps = check_int("bootstrap_steps", self.bootstrap_steps, 0)
            return
        if self.bootstrap_steps is None:
            self.bootstrap_steps = int(0.4 * steps + 0.5)
        self.bootstrap_steps = check_int("bootstrap_steps", self.bootstrap_steps, 0, steps)
