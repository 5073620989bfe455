"""A region layout's options (paper Sec. 4.2): the regions, the background prompt, bootstrapping,
and an optional input image re-worked under the layout."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from multidiffusion.io.checks import check_int
from multidiffusion.io.messages import shown
from multidiffusion.io.ranges import check_guidance, check_negative, check_prompt_length, check_text
from multidiffusion.options.image_tasks import INPUT, check_input_image
from multidiffusion.options.limits import Limits
from multidiffusion.options.sampling import SamplingOptions
from multidiffusion.regions.layout import Region, as_regions

__all__ = ["MAX_REGION_WEIGHT", "RegionsOptions"]


@dataclass
class RegionsOptions(SamplingOptions):
    """Region prompts (paper Sec. 4.2): each :class:`~multidiffusion.regions.Region` gets its own
    prompt, ``background`` the complement of their union. ``bootstrap_steps`` (None: 40 % of the
    steps, the paper's 20 of 50; 0: off) denoise each region over a random plain colour first.
    With ``image`` the layout re-works that image from ``strength`` (None: 0.75), as img2img does."""

    task: ClassVar[str] = "regions"

    background: str | None = None
    regions: Sequence[Region | Mapping[str, Any]] = ()
    bootstrap_steps: int | None = None
    image: Any = field(default=None, metadata=INPUT)
    strength: float | None = None

    def __post_init__(self, limits: Limits | None) -> None:
        super().__post_init__(limits)
        self.background = check_text("background", self.background, required=False)
        check_negative("negative_prompt", self.negative_prompt)
        self.regions = as_regions(self.regions, self.checked_against.max_regions, self.checked_against.suffix())
        _check_region_numbers(self.regions)
        self.check_steps()
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


MAX_REGION_WEIGHT = 1000.0
"""Largest region weight (a multiplier of its mask in Eq. 5's weights; 1 is the paper's)."""


def _check_region_numbers(regions: Sequence[Region]) -> None:
    """What the regions module leaves open: prompt lengths, and finite bounds on the numbers that
    multiply noise estimates (a guidance scale or weight of 1e308 overflows to a black image)."""
    for i, region in enumerate(regions):
        name = f"regions[{i}]"
        check_prompt_length(f"{name}.prompt", region.prompt)
        if region.negative_prompt is not None:
            check_prompt_length(f"{name}.negative_prompt", region.negative_prompt)
        if region.guidance_scale is not None:
            check_guidance(f"{name}.guidance_scale", region.guidance_scale)
        if region.weight > MAX_REGION_WEIGHT:
            raise ValueError(
                f"{name}.weight must be a number > 0 up to {MAX_REGION_WEIGHT:g}, got {shown(region.weight)}"
            )
