"""What a task tells the runner, and nothing more.

A task (panorama, regions, img2img, upscale, inpaint, outpaint) states

- its **prompt slots**: the prompts the model is conditioned on (each encoded once per call), their
  negatives and guidance scales; jobs refer to slots by index;
- the **jobs of each step** (``plans``): views F_i of the canvas, a prompt slot and a weight W_i
  each, with the Eq. 5 denominator (a :class:`~multidiffusion.engine.fusion.FusionPlan`);
- what it **composes into the model's input** (``composer``), e.g. bootstrapping's plain-colour
  backgrounds, given the initial noise and the scheduler;
- what it **prepares before the noise is drawn** (``prepare``: image tasks encode their input,
  drawing the encoder's sample from the generator first, in diffusers' order);
- its **strength** (the fraction of the schedule it runs, diffusers' ``strength``: 1 for
  text-to-image) and its **start latents** (``start_latents``: scaled noise for text-to-image, the
  noised input image for image-to-image);
- what it does **after each step** (``after_step``: inpainting blends the known image back);
- the **parameters** that regenerate it (written into PNGs).

The runner (:mod:`multidiffusion.runner`) does the rest for every task: encode -> sample -> decode. A new task is
a subclass of :class:`Task` and a registration (:data:`multidiffusion.tasks.TASKS`), never new
parameters of a shared function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from multidiffusion.engine.adapter import ModelAdapter
from multidiffusion.engine.fusion import FusionPlan, InputComposer
from multidiffusion.engine.noising import initial_sigma

__all__ = ["AfterStep", "PromptSlots", "Start", "StepComposer", "Task"]

StepComposer = Callable[[int, torch.Tensor], "InputComposer | None"]
"""(step index, timestep) -> the composer of that step's model inputs, or None."""


@dataclass
class PromptSlots:
    """Prompt slot p: ``prompts[p]`` (one prompt per canvas of the batch), ``negatives[p]`` likewise,
    and its guidance scale ``guidance[p]``."""

    prompts: list[list[str]]
    negatives: list[list[str]]
    guidance: list[float]


@dataclass
class Start:
    """What exists once sampling is about to begin: the canvas's initial noise (unscaled), the
    scheduler with its timesteps set, the timesteps this call runs (all of them unless the task's
    strength is below 1), the call's generator, and the guided model with the jobs of each step and
    the views per model call (for tasks that run the model before sampling: noise inversion)."""

    noise: torch.Tensor
    scheduler: Any
    generator: torch.Generator | list[torch.Generator] | None
    timesteps: torch.Tensor | None = None
    model: Any = None
    plan_for_step: Callable[[int], FusionPlan] | None = None
    batch_size: int | None = None


AfterStep = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]
"""(step index, timestep, latents after the step) -> replaced latents, or None to keep them."""


class Task:
    """A task bound to a model: ``options`` (checked, see :mod:`multidiffusion.options`) and the
    model's ``adapter``; model-dependent defaults (canvas size, window) are resolved here."""

    name: ClassVar[str] = ""
    composes_inpainting_input: ClassVar[bool] = False
    """Whether the task's composer gives an inpainting UNet its extra input channels (the mask and the
    masked image's latents); any other task refuses such a model up front."""

    def __init__(self, options: Any, adapter: ModelAdapter):
        self.options = options
        self.adapter = adapter
        if adapter.extra_channels and not self.composes_inpainting_input:
            raise ValueError(
                f"{self.name or type(self).__name__}: this model's UNet is an inpainting UNet "
                f"({adapter.latent_channels + adapter.extra_channels} input channels: latents, mask and masked "
                "image), which only the inpaint and outpaint tasks can drive; use the text-to-image model it "
                "was made from"
            )

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the canvas in pixels."""
        raise NotImplementedError

    @property
    def latent_size(self) -> tuple[int, int]:
        f = self.adapter.vae_scale_factor
        return self.size[0] // f, self.size[1] // f

    @property
    def circular(self) -> bool:
        return bool(self.options.circular)

    def prompt_slots(self) -> PromptSlots:
        raise NotImplementedError

    def plans(self, seed: int) -> Callable[[int], FusionPlan]:
        """``plan_for_step(i)``; ``seed`` fixes any random placement (the noise generator's seed)."""
        raise NotImplementedError

    def composer(self, start: Start) -> StepComposer | None:
        """What the task composes into the model's input per step; None: the crops as they are."""
        return None

    @property
    def strength(self) -> float:
        """How much of the schedule runs, as diffusers' ``strength``: 1 starts from pure noise."""
        return 1.0

    def prepare(self, generator: Any, images: int, vae_tiling: dict[str, Any]) -> None:
        """Work before the initial noise is drawn (image tasks: encode the input, sampling the
        encoder's posterior with ``generator``, tiled as ``vae_tiling`` says); nothing by default."""

    def start_latents(self, start: Start) -> torch.Tensor:
        """The canvas the sampler starts from, in the scheduler's units: for text-to-image the
        initial noise times the scheduler's ``init_noise_sigma`` (1 for flow matching)."""
        return start.noise * initial_sigma(start.scheduler)

    def conditionings(self) -> list[Any]:
        """What the task itself conditions the model on, after :meth:`prepare`: prepared
        :class:`~multidiffusion.engine.conditioning.Conditioning` objects (an edit's reference
        latents per view), added to the call's; none by default."""
        return []

    def after_step(self, start: Start) -> AfterStep | None:
        """What replaces the canvas after each scheduler step (inpainting's blending), or None."""
        return None

    def region_slots(self) -> list[tuple[int, str, Any]]:
        """(prompt slot, parameter name, region) of prompts that come from a region (a region layout's:
        ``(1, "regions[0]", Region(...))``), whose per-region fields (a control image, a LoRA set, ...)
        the call's conditionings read; none by default."""
        return []

    def canvas_input(self) -> Any:
        """The task's input image at the canvas's size (a PIL image: an upscale's resized input),
        after :meth:`prepare`, for conditionings that take it; None for tasks without one."""
        return None

    def extra_evaluations(self, jobs_per_step: int) -> int:
        """Window evaluations the task spends outside the sampling steps (noise inversion), for the
        compute bound."""
        return 0

    def parameters(self) -> dict[str, Any]:
        """JSON-ready settings that regenerate the result (by API names), defaults resolved."""
        raise NotImplementedError
