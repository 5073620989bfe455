"""The sampling loop: any diffusers scheduler, one step per canvas on the fused prediction.

    for t in scheduler.timesteps:
        x = scheduler.step(fused_prediction(model, scale(x), t, plan), t, x)

Guidance lives in :class:`GuidedModel` (both branches of every view in one UNet call); views and
weights in the :class:`~multidiffusion.fusion.FusionPlan` of each step; everything model-specific in
the adapter. The scheduler keeps its own duties: ``init_noise_sigma``, ``scale_model_input``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .adapters.base import Conditioning, ModelAdapter
from .fusion import FusionPlan, InputComposer, Job, fused_prediction
from .shared_prefix import SharedPrefix

__all__ = ["GuidedModel", "SamplingStats", "sample"]


@dataclass
class SamplingStats:
    """What a run cost: UNet calls, jobs (views x prompts) evaluated, latent pixels through the UNet."""

    model_calls: int = 0
    jobs: int = 0
    latent_pixels: int = 0
    steps: int = 0
    canvas_pixels: int = 0

    @property
    def coverage(self) -> float:
        """Latent pixels through the UNet per canvas latent pixel per step, per guidance branch."""
        if not self.steps or not self.canvas_pixels:
            return 0.0
        return self.latent_pixels / (self.steps * self.canvas_pixels)


class GuidedModel:
    """Φ(x | y) with classifier-free guidance, ε_u + s (ε_c − ε_u), for a batch of jobs.

    The crops of all jobs and both guidance branches go through the UNet in one call, whose layers
    before the first cross-attention run once for both branches (:mod:`~multidiffusion.shared_prefix`;
    ``share_prefix=False`` turns that off). ``guidance`` holds one scale per prompt slot (regions may
    set their own).
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        cond: Conditioning,
        guidance: Sequence[float],
        canvas: tuple[int, int],
        stats: SamplingStats | None = None,
        share_prefix: bool = True,
    ):
        self.adapter = adapter
        self.prefix = SharedPrefix(adapter.unet) if share_prefix and cond.negative is not None else None
        self.cond = cond
        self.canvas = canvas
        self.stats = stats if stats is not None else SamplingStats()
        self.guidance = list(guidance)
        self._uniform = self.guidance[0] if len(set(self.guidance)) == 1 else None
        self._scales: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, crops: torch.Tensor, t: torch.Tensor, jobs: Sequence[Job]) -> torch.Tensor:
        guided = self.cond.negative is not None
        x = torch.cat([crops, crops]) if guided else crops
        kwargs = self.adapter.unet_kwargs(self.cond, jobs, self.canvas)
        with self.prefix.halves(crops.shape[0]) if self.prefix is not None else contextlib.nullcontext():
            out = self.adapter.unet(x, t, return_dict=False, **kwargs)[0]
        self.stats.model_calls += 1
        self.stats.jobs += len(jobs)
        self.stats.latent_pixels += sum(job.view.height * job.view.width for job in jobs)
        if not guided:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self._scale(jobs, crops.shape[0] // len(jobs)) * (cond - uncond)

    def attached(self) -> contextlib.AbstractContextManager:
        """Context for a sampling run: installs the shared-prefix hooks, removes them after."""
        return self.prefix.attached() if self.prefix is not None else contextlib.nullcontext()

    def _scale(self, jobs: Sequence[Job], batch: int) -> float | torch.Tensor:
        if self._uniform is not None:
            return self._uniform
        key = tuple(job.prompt for job in jobs)
        if key not in self._scales:
            scales = torch.tensor([self.guidance[p] for p in key], device=self.adapter.device)
            self._scales[key] = scales.repeat_interleave(batch).to(self.adapter.dtype).view(-1, 1, 1, 1)
        return self._scales[key]


StepCallback = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]
"""(step index, timestep, latents) -> optionally replaced latents."""


def _step_kwargs(scheduler, generator, eta: float) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def sample(
    model: GuidedModel,
    scheduler,
    latents: torch.Tensor,
    num_inference_steps: int,
    plan_for_step: Callable[[int], FusionPlan],
    *,
    batch_size: int | None = None,
    composer_for_step: Callable[[int, torch.Tensor], InputComposer | None] | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    eta: float = 0.0,
    callback: StepCallback | None = None,
    progress: dict | None = None,
) -> torch.Tensor:
    """Run the MultiDiffusion process Ψ from noise ``latents`` (unscaled, N(0, I)) to clean latents.

    ``plan_for_step(i)`` gives the views, prompts and weights of step i (fixed for the paper's grid,
    fresh for the shifted fast mode); ``composer_for_step(i, t)`` may rewrite the crops fed to the
    model (bootstrapping of regions).
    """
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    timesteps = scheduler.timesteps
    x = latents * scheduler.init_noise_sigma
    extra = _step_kwargs(scheduler, generator, eta)
    model.stats.canvas_pixels = x.shape[-2] * x.shape[-1]
    order = getattr(scheduler, "order", 1)
    with tqdm(total=num_inference_steps, **(progress or {})) as bar:
        for i, t in enumerate(timesteps):
            x_in = scheduler.scale_model_input(x, t)
            compose = composer_for_step(i, t) if composer_for_step is not None else None
            prediction = fused_prediction(model, x_in, t, plan_for_step(i), batch_size, compose)
            x = scheduler.step(prediction, t, x, return_dict=False, **extra)[0]
            model.stats.steps += 1
            if callback is not None:
                replaced = callback(i, t, x)
                if replaced is not None:
                    x = replaced
            if i == len(timesteps) - 1 or (i + 1) % order == 0:
                bar.update()
    return x
