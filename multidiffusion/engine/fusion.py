"""The fused prediction: paper Eq. 5 applied to model outputs.

For views F_i with per-pixel weights W_i, the MultiDiffusion step solves (paper Eq. 3)

    argmin_J  Σ_i || W_i ⊙ (F_i(J) − Φ(F_i(J_t) | y_i)) ||²

whose closed form is (paper Eq. 5)

    J = Σ_i F_i⁻¹(W_i ⊙ Φ(F_i(J_t) | y_i))  /  Σ_i F_i⁻¹(W_i).

Here Φ is the model's output (ε, v or x0 prediction, after classifier-free guidance), not the
scheduler's x_{t-1}: the fused prediction is handed to the scheduler once per step for the whole
canvas. For DDIM (η = 0) the step is affine in (x_t, ε) with coefficients shared by all views, so
this equals the paper's per-view averaging exactly; for ancestral and multistep schedulers it is the
correct generalisation (one noise draw and one history for the canvas).

The numerator is a sum over jobs, so several processes can each add their share of the jobs and sum
the partial numerators (:mod:`~multidiffusion.engine.distributed`). It accumulates in float64 (float32
on devices without it), so the order of the additions, which the number of processes changes, is
lost when the sum is rounded: the result does not depend on how the jobs were shared.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from multidiffusion.engine import distributed
from multidiffusion.engine.views import View, crop_batch, paste_add

__all__ = ["Denoiser", "FusionPlan", "InputComposer", "Job", "fused_prediction"]


@dataclass(frozen=True, eq=False)
class Job:
    """One model evaluation per step: view F_i of the canvas under prompt ``prompt`` with weight W_i.

    ``weight`` is the view's weight on its own latent grid, shape (h, w), or ``None`` for W_i = 1.
    ``group``: jobs of different groups never share a model call (a region's own LoRA set).
    """

    view: View
    prompt: int
    weight: torch.Tensor | None = None
    group: Any = None


Denoiser = Callable[[torch.Tensor, torch.Tensor, Sequence[Job]], torch.Tensor]
"""(crops (k*B, C, h, w), timestep, jobs of length k) -> guided model output, same shape as crops."""

InputComposer = Callable[[torch.Tensor, Sequence[Job]], torch.Tensor]
"""Rewrites the crops fed to the model for some jobs (bootstrapping); must not touch the canvas."""


@dataclass(eq=False)
class FusionPlan:
    """The jobs of one step and the denominator of Eq. 5, Σ_i F_i⁻¹(W_i), computed once.

    Raises ``ValueError`` when a canvas pixel gets no weight from any job: Eq. 5 is undefined there.
    (Jobs whose weight is zero in their window are not made in the first place:
    :meth:`~multidiffusion.regions.layout.RegionLayout.jobs`.)
    """

    jobs: list[Job]
    canvas: tuple[int, int]
    device: torch.device | str = "cpu"
    normalizer: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.jobs:
            raise ValueError("a fusion plan needs at least one job")
        den = torch.zeros((1, 1, *self.canvas), dtype=torch.float32, device=self.device)
        for job in self.jobs:
            w = 1.0 if job.weight is None else job.weight.to(device=self.device, dtype=torch.float32)
            paste_add(den, job.view, w)
        uncovered = int((den <= 0).sum())
        if uncovered:
            raise ValueError(
                f"{uncovered} latent pixels of the {self.canvas[0]}x{self.canvas[1]} canvas have zero total "
                "weight: every pixel must be covered by a view (and, with regions, by a region or the "
                "background)"
            )
        self.normalizer = den
        # weights move to the device and dtype of the accumulation once, not every step
        self.jobs = [
            job
            if job.weight is None
            else Job(job.view, job.prompt, job.weight.to(self.device, torch.float32), job.group)
            for job in self.jobs
        ]

    def batches(self, batch_size: int | None, jobs: Sequence[Job] | None = None) -> Iterator[list[Job]]:
        """Jobs (``jobs``, a share of the plan's, or all of them) in groups of at most ``batch_size``
        (None: all), each group with one view size and one job group."""
        by_size: dict[tuple[tuple[int, int], Any], list[Job]] = {}
        for job in self.jobs if jobs is None else jobs:
            by_size.setdefault((job.view.size, job.group), []).append(job)
        for group in by_size.values():
            step = batch_size or len(group)
            for i in range(0, len(group), step):
                yield group[i : i + step]

    @property
    def coverage(self) -> float:
        """Latent pixels pushed through the model per canvas latent pixel (per guidance branch)."""
        pixels = sum(job.view.height * job.view.width for job in self.jobs)
        return pixels / (self.canvas[0] * self.canvas[1])


def fused_prediction(
    denoise: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    plan: FusionPlan,
    batch_size: int | None = None,
    compose: InputComposer | None = None,
) -> torch.Tensor:
    """Eq. 5 on model outputs: Σ_i F_i⁻¹(W_i ⊙ Φ(F_i(x))) / Σ_i F_i⁻¹(W_i), for a canvas batch x.

    ``x`` is the scheduler-scaled canvas (B, C, H, W). Jobs run through ``denoise`` in groups of
    ``batch_size`` views (each view carries all B images). The numerator accumulates in float64
    (float32 on MPS). In a sharded run (:func:`~multidiffusion.engine.distributed.active`) this
    process evaluates its share of the jobs and the partial numerators are summed over the processes;
    the denominator is the plan's, from all the jobs.
    """
    n = x.shape[0]
    shard = distributed.active()
    num = torch.zeros(x.shape, dtype=_accumulation_dtype(x.device), device=x.device)
    jobs = shard.jobs(plan) if shard is not None else None
    with shard.summed(num, "the Eq. 5 numerator") if shard is not None else contextlib.nullcontext():
        for group in plan.batches(batch_size, jobs):
            crops = crop_batch(x, [job.view for job in group])
            if compose is not None:
                crops = compose(crops, group)
            out = denoise(crops, t, group)
            for i, job in enumerate(group):
                o = out[i * n : (i + 1) * n]
                paste_add(num, job.view, o if job.weight is None else o * job.weight)
    return (num / plan.normalizer).to(x.dtype)


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64
