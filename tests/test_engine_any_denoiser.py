"""The engine as a function of any denoiser: views, weights, the fused step (paper Eq. 5) and the
sampling loop driven by a plain callable ``denoise(crops, t, jobs)``, no model, adapter or diffusers
pipeline (k-diffusion style: the model is any callable, conditioning opaque to the loop)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from multidiffusion.engine.fusion import FusionPlan, Job, fused_prediction
from multidiffusion.engine.sampler import sample
from multidiffusion.engine.views import View, grid_views

H, W = 16, 24  # latent canvas


def _denoise(crops: torch.Tensor, t: torch.Tensor, jobs: list[Job]) -> torch.Tensor:
    """A hand-written denoiser: each job's crop times (prompt + 2), plus the view's left column,
    minus a quarter of t (so the prediction depends on the crop, the job and the timestep)."""
    per = crops.shape[0] // len(jobs)
    scale = torch.tensor([job.prompt + 2.0 for job in jobs], dtype=crops.dtype).repeat_interleave(per)
    shift = torch.tensor([float(job.view.left) for job in jobs], dtype=crops.dtype).repeat_interleave(per)
    return crops * scale.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1) - float(t) / 4


def _jobs(circular: bool) -> list[Job]:
    """Grid views under two prompts, some weighted by powers of two (sums stay exact), and one view
    wrapping around the canvas's right edge when ``circular``."""
    views = grid_views(H, W, (8, 8), (4, 8), circular=circular)
    weight = torch.ones(8, 8)
    weight[:, :4] = 2.0
    weight[2:6, 2:6] = 0.5
    jobs = [Job(v, 0, weight if i % 3 == 0 else None) for i, v in enumerate(views)]
    jobs += [Job(v, 1, None) for v in views[1::2]]
    if circular:
        jobs.append(Job(View(4, W - 4, 8, 8), 1, weight))
    return jobs


def _eq5(x: torch.Tensor, t: torch.Tensor, jobs: list[Job]) -> torch.Tensor:
    """Σ_i F_i⁻¹(W_i ⊙ Φ(F_i(x))) / Σ_i F_i⁻¹(W_i), written out with explicit row and column indices
    (columns modulo the width: a wrapping view), one job at a time, in float64."""
    num = torch.zeros(x.shape, dtype=torch.float64)
    den = torch.zeros((1, 1, H, W), dtype=torch.float32)
    for job in jobs:
        v = job.view
        rows = torch.arange(v.top, v.top + v.height)
        cols = torch.arange(v.left, v.left + v.width) % W
        crop = x[:, :, rows][:, :, :, cols]
        out = _denoise(crop, t, [job])
        w = torch.ones(v.height, v.width) if job.weight is None else job.weight
        num[:, :, rows.view(-1, 1), cols.view(1, -1)] += out * w
        den[:, :, rows.view(-1, 1), cols.view(1, -1)] += w
    return (num / den).to(x.dtype)


def test_the_fused_step_of_a_plain_callable_is_eq5_exactly():
    torch.manual_seed(0)
    for circular in (False, True):
        x = torch.randint(-8, 8, (2, 4, H, W)).to(torch.float32)  # integers: every sum exact
        jobs = _jobs(circular)
        t = torch.tensor(20.0)
        got = fused_prediction(_denoise, x, t, FusionPlan(jobs, (H, W)))
        want = _eq5(x, t, jobs)
        assert torch.equal(got, want), (circular, (got - want).abs().max())
        # batching changes nothing: the same jobs two or five per call
        for batch in (2, 5):
            assert torch.equal(fused_prediction(_denoise, x, t, FusionPlan(jobs, (H, W)), batch), want)


def test_sample_runs_a_plain_callable_with_a_ddim_scheduler():
    """One ``sample()`` with a plain DDIM scheduler and the plain callable: the same latents as the
    loop written out (Eq. 5 of each step, then the scheduler's step on the whole canvas)."""
    jobs = _jobs(circular=False)
    plan = FusionPlan(jobs, (H, W))
    latents = torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(1))

    def scheduler() -> DDIMScheduler:
        s = DDIMScheduler(num_train_timesteps=1000)
        s.set_timesteps(5)
        return s

    ours = scheduler()
    got = sample(_denoise, ours, latents, ours.timesteps, lambda step: plan, progress={"disable": True})
    ref = scheduler()
    x = latents
    for t in ref.timesteps:
        x = ref.step(_eq5(x, t, jobs), t, x).prev_sample
    assert torch.equal(got, x)
    assert got.abs().max() > 0 and not torch.equal(got, latents)
