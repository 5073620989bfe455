"""A panorama (paper Sec. 4.1): one prompt over windows that cover a canvas of any size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from multidiffusion.engine.fusion import FusionPlan
from multidiffusion.engine.task import PromptSlots, Task
from multidiffusion.engine.windows import Windows, panorama_plans
from multidiffusion.options import PanoramaOptions
from multidiffusion.tasks.common import canvas_size, window_and_stride, window_parameters

__all__ = ["PanoramaTask"]


class PanoramaTask(Task):
    """Prompt slot 0 for every window; the windows of each step come from the placement (the
    paper's grid, or the fast mode's shifted windows), weighted uniformly or by a Gaussian."""

    name = "panorama"
    options: PanoramaOptions

    def __init__(self, options: PanoramaOptions, adapter: Any):
        super().__init__(options, adapter)
        h, w = adapter.native_latent_size
        f = adapter.vae_scale_factor
        self._size = canvas_size(options, adapter, (h * f, 4 * w * f))
        self.window, self.stride = window_and_stride(options, adapter, options.placement)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def prompt_slots(self) -> PromptSlots:
        prompts = self.options.prompts
        negative = self.options.negative_prompt
        negatives = [negative or ""] * len(prompts) if not isinstance(negative, list) else list(negative)
        return PromptSlots([prompts], [negatives], [self.options.guidance_scale])

    def plans(self, seed: int) -> Callable[[int], FusionPlan]:
        o, multiple = self.options, self.adapter.patch_size
        windows = Windows(self.latent_size, self.window, self.stride, o.placement, self.circular, seed, multiple)
        return panorama_plans(windows, self.options.window_weights, device=self.adapter.device)

    def parameters(self) -> dict[str, Any]:
        o = self.options
        return {
            "prompt": o.prompt,
            "negative_prompt": o.negative_prompt,
            "height": self.size[0],
            "width": self.size[1],
            **window_parameters(self.window, self.stride),
            "circular": o.circular,
            "placement": o.placement,
            "weights": o.window_weights,
        }
