"""What a run with a loaded model will cost, before its first model call: the task built and its
first step planned as the runner does, then counted by :mod:`multidiffusion.runner.estimate` (the
costs, their units and why). Above the engine because it builds the task (:mod:`multidiffusion.tasks`).
"""

from __future__ import annotations

from typing import Any

from multidiffusion.io.ranges import steps_that_run
from multidiffusion.runner.estimate import PLAN_JOBS, Estimate, _grid_jobs, estimate_run, memory_refusal

__all__ = ["Estimate", "check_memory", "estimate", "memory_refusal"]


def estimate(md: Any, options: Any, **context: Any) -> Estimate:
    """The estimate of running ``options`` (checked task options) with ``md``: no model call, no
    encoding; the task, its first plan and the timesteps as the runner makes them. ``context`` as
    :meth:`~multidiffusion.pipeline.MultiDiffusion.generate` (a regions ``layout``)."""
    from multidiffusion.engine.schedulers import make_scheduler
    from multidiffusion.runner.run import planned_steps
    from multidiffusion.tasks import task_for

    context = {"layout": context["layout"]} if options.task == "regions" and "layout" in context else {}
    task = task_for(options, md.adapter, **context)
    images = len(task.prompt_slots().prompts[0]) * task.options.num_images_per_prompt
    bound = _grid_jobs(task)
    if bound is not None and bound > PLAN_JOBS:  # building the plan would take minutes: count the grid
        steps = steps_that_run(task.options.num_inference_steps, task.strength)
        return estimate_run(task, bound, images, steps, md._decode, exact=False)
    scheduler = options.scheduler if options.scheduler is not None else md.scheduler
    sched = make_scheduler(scheduler, md.adapter.pipe.scheduler.config)
    plan_for_step, timesteps = planned_steps(task, sched, None)
    return estimate_run(task, len(plan_for_step(0).jobs), images, len(timesteps), md._decode)


def check_memory(md: Any, options: Any, **context: Any) -> Estimate:
    """:func:`estimate`, raising ValueError (:func:`memory_refusal`) when the run needs more memory
    than is available: what a batch item is refused with, in seconds, before its first step."""
    found = estimate(md, options, **context)
    refusal = memory_refusal(found)
    if refusal is not None:
        raise ValueError(refusal)
    return found
