"""Region prompts (paper Sec. 4.2): each region of the canvas gets its own prompt slot, the
background the complement of their union; bootstrapping composes regions over plain colours."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from multidiffusion.conditionings.loras import region_lora_sets
from multidiffusion.engine.fusion import FusionPlan, Job
from multidiffusion.engine.task import PromptSlots, Start, StepComposer, Task
from multidiffusion.engine.views import grid_views
from multidiffusion.options import RegionsOptions
from multidiffusion.regions.bootstrap import bootstrap_composer, draw_backgrounds
from multidiffusion.regions.few_step import centred_denoiser, noise_level, quantized_weights
from multidiffusion.regions.layout import RegionLayout, region_layout
from multidiffusion.tasks.common import canvas_size, window_and_stride, window_parameters
from multidiffusion.tasks.images import EncodedImage

__all__ = ["RegionsTask"]


class RegionsTask(Task):
    """Prompt slots: the background (when given) then the regions. Jobs: every (window, slot) pair
    where the slot's weight is non-zero in the window (:meth:`RegionLayout.jobs`), the same every
    step. At the model's native size the canvas is one window: one view per prompt, as the paper.

    ``layout``: the regions already rasterised for this canvas and model (a shell that previewed
    the layout passes it, so a layout is rasterised once per run)."""

    name = "regions"
    options: RegionsOptions

    def __init__(self, options: RegionsOptions, adapter: Any, layout: RegionLayout | None = None):
        super().__init__(options, adapter)
        h, w = adapter.native_latent_size
        f = adapter.vae_scale_factor
        self._size = canvas_size(options, adapter, (h * f, w * f))
        self.window, self.stride = window_and_stride(options, adapter)
        if layout is None or not _same_layout(layout, options, (*self._size, f)):
            layout = region_layout(options.regions, *self._size, f, options.background)
        self.layout = layout
        self.views = grid_views(*self.latent_size, self.window, self.stride, circular=self.circular)
        self._plan: FusionPlan | None = None
        self._levels: list[float] | None = None  # the steps' noise levels, for quantized masks
        self._quantized: dict[bytes, FusionPlan] = {}
        self.input = EncodedImage(options.image, self._size, adapter) if options.image is not None else None

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def prompt_slots(self) -> PromptSlots:
        negatives = self.layout.negative_prompts(self.options.negative_prompt)
        return PromptSlots(
            [[p] for p in self.layout.prompts],
            [[n] for n in negatives],
            self.layout.guidance_scales(self.options.guidance_scale),
        )

    def region_slots(self) -> list[tuple[int, str, Any]]:
        offset = self.layout.offset
        return [(offset + i, f"regions[{i}]", r) for i, r in enumerate(self.layout.regions)]

    def plans(self, seed: int) -> Callable[[int], FusionPlan]:
        if self._plan is None:
            self._plan = self._plan_of(self.layout)
        plan = self._plan
        if self.options.mask_schedule != "quantized":
            return lambda step: plan
        return lambda step: plan if self._levels is None else self._quantized_plan(self._levels[step])

    def _quantized_plan(self, level: float) -> FusionPlan:
        """The step's plan with masks thresholded at its noise level (:mod:`~multidiffusion.regions.few_step`);
        the soft plan until :meth:`composer` has read the levels off the scheduler."""
        weights = quantized_weights(self.layout, level)
        key = weights.numpy().tobytes()
        if key not in self._quantized:
            self._quantized[key] = self._plan_of(dataclasses.replace(self.layout, weights=weights))
        return self._quantized[key]

    def _plan_of(self, layout: RegionLayout) -> FusionPlan:
        jobs = layout.jobs(self.views)
        sets = region_lora_sets(self.region_slots())
        if sets:  # a region's LoRA set keeps its jobs in batches of their own
            jobs = [Job(j.view, j.prompt, j.weight, sets[j.prompt][0] if j.prompt in sets else None) for j in jobs]
        return FusionPlan(jobs, self.latent_size, self.adapter.device)

    @property
    def strength(self) -> float:
        return self.options.strength if self.input is not None else 1.0

    def prepare(self, generator: Any, images: int, vae_tiling: dict[str, Any]) -> None:
        if self.input is not None:
            self.input.encode(generator, images, vae_tiling)

    def start_latents(self, start: Start) -> torch.Tensor:
        """Scaled noise, or with an input image the image noised to the first timestep that runs."""
        return self.input.noised(start) if self.input is not None else super().start_latents(start)

    def composer(self, start: Start) -> StepComposer | None:
        """Bootstrapping (:mod:`multidiffusion.regions.bootstrap`) for the first ``bootstrap_steps``;
        the backgrounds are drawn from the call's generator after the initial noise. With quantized
        masks, reads each step's noise level off the scheduler first (the plans use them)."""
        if self.options.mask_schedule == "quantized" and start.timesteps is not None:
            self._levels = [noise_level(start.scheduler, t) for t in start.timesteps]
        steps = self.options.bootstrap_steps
        if not steps or not self.layout.regions:
            return None
        backgrounds = draw_backgrounds(
            self.adapter.vae,
            steps=steps,
            views=len(self.views),
            regions=len(self.layout.regions),
            images=start.noise.shape[0],
            size=self.views[0].size,
            generator=start.generator,
            dtype=self.adapter.dtype,
            latent_format=self.adapter.latent_format,
        )
        around = centred_denoiser(self.layout) if self.options.bootstrap_centre else None
        return bootstrap_composer(self.layout, self.views, backgrounds, start.noise, start.scheduler, around)

    def parameters(self) -> dict[str, Any]:
        o = self.options
        return {
            "background": o.background,
            "negative_prompt": o.negative_prompt,
            "regions": self.layout.region_parameters(),
            "bootstrap_steps": o.bootstrap_steps,
            **({"bootstrap_centre": True} if o.bootstrap_centre else {}),
            **({"mask_schedule": o.mask_schedule} if o.mask_schedule != "soft" else {}),
            "height": self.size[0],
            "width": self.size[1],
            **window_parameters(self.window, self.stride),
            "circular": o.circular,
            **({"image": self.input.record(), "strength": o.strength} if self.input is not None else {}),
        }


def _same_layout(layout: RegionLayout, options: RegionsOptions, canvas: tuple[int, int, int]) -> bool:
    """Whether ``layout`` was rasterised from these very regions, background and canvas."""
    return (
        (layout.height, layout.width, layout.scale_factor) == canvas
        and layout.background == options.background
        and len(layout.regions) == len(options.regions)
        and all(a is b for a, b in zip(layout.regions, options.regions))
    )
