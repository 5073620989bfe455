"""What a task tells the runner, and nothing more.

A task (panorama, regions; next: img2img, upscale, inpaint) states

- its **prompt slots**: the prompts the model is conditioned on (each encoded once per call), their
  negatives and guidance scales; jobs refer to slots by index;
- the **jobs of each step** (``plans``): views F_i of the canvas, a prompt slot and a weight W_i
  each, with the Eq. 5 denominator (a :class:`~multidiffusion.engine.fusion.FusionPlan`);
- what it **composes into the model's input** (``composer``), e.g. bootstrapping's plain-colour
  backgrounds, given the initial noise and the scheduler;
- its **start latents** (``start_latents``: the noise for text-to-image tasks);
- the **parameters** that regenerate it (written into PNGs).

The runner (:mod:`.runner`) does the rest for every task: encode -> sample -> decode. A new task is
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

__all__ = ["PromptSlots", "Start", "StepComposer", "Task"]

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
    scheduler with its timesteps set, and the call's generator."""

    noise: torch.Tensor
    scheduler: Any
    generator: torch.Generator | list[torch.Generator] | None


class Task:
    """A task bound to a model: ``options`` (checked, see :mod:`multidiffusion.options`) and the
    model's ``adapter``; model-dependent defaults (canvas size, window) are resolved here."""

    name: ClassVar[str] = ""

    def __init__(self, options: Any, adapter: ModelAdapter):
        self.options = options
        self.adapter = adapter

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

    def start_latents(self, start: Start) -> torch.Tensor:
        """The canvas the sampler starts from, unscaled: the initial noise for text-to-image."""
        return start.noise

    def parameters(self) -> dict[str, Any]:
        """JSON-ready settings that regenerate the result (by API names), defaults resolved."""
        raise NotImplementedError
