"""What the page's handlers share: the models, the limits and where results go."""

from __future__ import annotations

from dataclasses import dataclass, field

from multidiffusion.app.handlers import OutputStore
from multidiffusion.app.limits import ServerLimits
from multidiffusion.app.models import ModelPool
from multidiffusion.app.settings import Choice, available_choices
from multidiffusion.app.upscalers import Upscalers
from multidiffusion.pipeline import MultiDiffusion

__all__ = ["AppContext"]


@dataclass
class AppContext:
    pool: ModelPool
    limits: ServerLimits
    store: OutputStore
    default_size: tuple[int, int]  # (height, width) of a panorama for the first model (native x 4 wide)
    upscalers: Upscalers = field(default_factory=Upscalers)  # filters, and the files the operator named
    controlnet: bool = False  # the served models run ControlNets (serve --controlnet): control image inputs shown

    @property
    def native_size(self) -> tuple[int, int]:
        """(height, width) of the first model's native image."""
        height, width = self.default_size
        return height, width // 4

    @property
    def regions_size(self) -> tuple[int, int]:
        """The Regions tab's first canvas: native height, twice the native width, within the limits."""
        height, width = self.native_size
        return min(height, self.limits.max_side), min(2 * width, self.limits.max_side)

    @property
    def panorama_size(self) -> tuple[int, int]:
        height, width = self.default_size
        return min(height, self.limits.max_side), min(width, self.limits.max_side)

    @property
    def panorama_choices(self) -> tuple[Choice, ...]:
        return available_choices(MultiDiffusion.panorama)

    def task_choices(self, task: str) -> tuple[Choice, ...]:
        """The optional arguments (placement, weights) of the task's ``MultiDiffusion`` method."""
        return available_choices(getattr(MultiDiffusion, task))
