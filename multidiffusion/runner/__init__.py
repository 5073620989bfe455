"""The run of one call, above the engine: a task's options and model -> prompts encoded once ->
the call's conditionings prepared -> the engine's sampling loop -> tiled decode -> images, their
parameters and cost (:mod:`.run`); what a run will cost, known before its first model call
(:mod:`.estimate`)."""

from multidiffusion.runner.run import Cancelled, RunSettings, denoising_timesteps, planned_steps, run

__all__ = ["Cancelled", "RunSettings", "denoising_timesteps", "planned_steps", "run"]
