"""Paper Eq. 5 on model outputs, checked against a direct computation."""

import pytest
import torch

from multidiffusion.engine.fusion import FusionPlan, Job, fused_prediction
from multidiffusion.engine.views import View, crop, grid_views


def fake_model(crops, t, jobs):
    # any per-view function that depends on the view's content and its prompt
    prompts = torch.tensor([j.prompt for j in jobs]).repeat_interleave(crops.shape[0] // len(jobs))
    return torch.tanh(crops) * (1 + prompts.view(-1, 1, 1, 1)) + crops.mean(dim=(1, 2, 3), keepdim=True)


def test_eq5_matches_direct_computation_with_weights():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 12, 30)
    views = grid_views(12, 30, (8, 8), (4, 5))
    jobs = []
    for i, v in enumerate(views):
        jobs.append(Job(v, 0, torch.rand(v.height, v.width) + 0.1))
        jobs.append(Job(v, 1, torch.rand(v.height, v.width) * (i % 2)))  # some zero weights
    num = torch.zeros_like(x)
    den = torch.zeros(1, 1, 12, 30)
    for job in jobs:  # Eq. 5, one view at a time
        out = fake_model(crop(x, job.view), None, [job])
        sl = (..., slice(job.view.top, job.view.top + 8), slice(job.view.left, job.view.left + 8))
        num[sl] += job.weight * out
        den[sl] += job.weight
    expected = num / den
    plan = FusionPlan(jobs, (12, 30))
    for batch in (None, 1, 3):
        got = fused_prediction(fake_model, x, None, plan, batch)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_single_view_is_the_model_output_exactly():
    x = torch.randn(1, 4, 8, 8)
    plan = FusionPlan([Job(View(0, 0, 8, 8), 0)], (8, 8))
    assert torch.equal(fused_prediction(fake_model, x, None, plan), fake_model(x, None, plan.jobs))


def test_uncovered_pixels_are_an_error():
    with pytest.raises(ValueError, match="zero total weight"):
        FusionPlan([Job(View(0, 0, 8, 8), 0)], (8, 12))
    with pytest.raises(ValueError, match="zero total weight"):
        FusionPlan([Job(View(0, 0, 8, 8), 0, torch.zeros(8, 8))], (8, 8))


def test_coverage_factor():
    plan = FusionPlan([Job(v, 0) for v in grid_views(64, 256, (64, 64), (8, 8))], (64, 256))
    assert plan.coverage == 6.25
