"""Region fusion at few steps (StreamMultiDiffusion, Kim et al., CVPR 2025; our own code): mask-centring
bootstrapping and masks quantized with the noise level. Both are options of the regions task, off by
default (see docs/demo-model.md for the measurement that chose the defaults).

**Mask-centring bootstrapping** (``bootstrap_centre``). During bootstrapping a foreground job's
input is x_k = M_k ⊙ F_i(x_t) + (1 − M_k) ⊙ bg_t (:mod:`.bootstrap`). With centring the model sees
that input rolled (circularly, inside the view) by the whole number of latent pixels

    d_k = round(c_view − c(M_k)),    c(M) = Σ M(y, x) · (y, x) / Σ M,   c_view = ((h − 1) / 2, (w − 1) / 2)

so the region's centroid sits at the view's centre, where a model trained on centred objects draws
them best; its prediction is rolled back by −d_k before Eq. 5, so the object lands in its mask. A roll
is a permutation of latent pixels, so with d_k = 0 (a mask already centred) nothing changes, and
applied per job the un-roll is exact (the per-view step of the paper is elementwise: rolling the
prediction back equals stepping the rolled view and rolling it back). Only bootstrapping steps roll.

**Quantized masks** (``mask_schedule="quantized"``). At step i with noise level σ_i a region's mask
is replaced by its threshold

    M_k,i = 1[M_k / max M_k > σ_i],    σ_i = √(1 − ᾱ_{t_i})  (DDPM-style schedulers; Euler's: σ/√(1+σ²)),
                                        σ_i = t_i / T           (flow matching)

which is StreamMultiDiffusion's rule (noise levels against the soft mask), with the mask divided by
its peak so that a region never vanishes (a feathered mask's peak is 254/255 = 0.996 after 8-bit
rasterising, below σ = 0.998 of t = 999, and the region had no weight at the first step: measured on
the demo, fidelity 0.33 to 0.02; dividing by the peak only gets 0.08 back, see below). At high
noise only the mask's core (its peak) speaks for the region, and the region grows into its soft
edge as the noise falls; every step's masks are binary, the last step's the most generous. Weights
follow the layout's rule (W_k = weight_k · M_k,i, background clamp(1 − Σ_k M_k,i, 0, 1)). A latent
pixel the threshold leaves to no prompt at all (possible only without a background prompt) keeps
its soft weights. A binary mask on the latent grid is unchanged (1 > σ for σ < 1): quantization
acts on soft edges (feathering, box edges that cut a latent pixel). The bootstrapping composite keeps the soft masks.
Measured on the demo at 4 steps (docs/demo-model.md, Regions at few steps), this rule starves small
soft regions: their core is a few latent pixels for most of the steps, and fidelity falls (feather
4 px: 0.33 to 0.08); hence off by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from multidiffusion.engine.fusion import Denoiser, Job
from multidiffusion.engine.noising import is_flow_matching
from multidiffusion.engine.views import crop
from multidiffusion.regions.layout import RegionLayout

__all__ = ["MASK_SCHEDULES", "centred_denoiser", "centring_shift", "noise_level", "quantized_weights"]

MASK_SCHEDULES = ("soft", "quantized")
"""``soft``: the layout's masks every step (the paper); ``quantized``: thresholded at the step's noise level."""


def noise_level(scheduler, t: torch.Tensor | float) -> float:
    """σ in [0, 1] of timestep ``t``: √(1 − ᾱ_t), or t / T for flow matching."""
    if is_flow_matching(scheduler):
        return float(t) / float(scheduler.config.num_train_timesteps)
    alphas = scheduler.alphas_cumprod
    index = min(max(round(float(t)), 0), len(alphas) - 1)
    return float((1 - alphas[index]) ** 0.5)


def quantized_weights(layout: RegionLayout, level: float) -> torch.Tensor:
    """The layout's Eq. 5 weights W_p (P, h, w) with every region's mask thresholded at ``level``
    (module docstring); pixels left with no weight at all keep the soft weights."""
    offset = layout.offset
    soft = layout.masks[offset:]
    peaks = soft.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(soft.dtype).tiny)
    fg = (soft / peaks > level).to(soft.dtype)
    scales = torch.tensor([r.weight for r in layout.regions], dtype=fg.dtype).view(-1, 1, 1)
    weights = fg * scales
    if offset:
        weights = torch.cat([(1 - fg.sum(0, keepdim=True)).clamp(0, 1), weights])
    empty = weights.sum(0, keepdim=True) <= 0
    return torch.where(empty, layout.weights, weights)


def centring_shift(mask: torch.Tensor) -> tuple[int, int]:
    """(dy, dx): the roll that brings the centroid of ``mask`` (h, w) to the centre; (0, 0) if empty."""
    total = float(mask.sum())
    if total <= 0:
        return 0, 0
    h, w = mask.shape
    ys = torch.arange(h, dtype=torch.float64).view(-1, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, -1)
    m = mask.to(torch.float64)
    cy, cx = float((m * ys).sum()) / total, float((m * xs).sum()) / total
    return round((h - 1) / 2 - cy), round((w - 1) / 2 - cx)


def centred_denoiser(layout: RegionLayout) -> Callable[[Denoiser], Denoiser]:
    """``around(denoise)``: a denoiser that rolls each foreground job's crops by its
    :func:`centring_shift` before ``denoise`` and its prediction back after (background jobs as they
    are). For the bootstrapping steps only (the caller decides)."""
    masks = layout.masks
    shifts: dict[tuple, tuple[int, int]] = {}

    def shift_of(job: Job) -> tuple[int, int]:
        key = (job.view, job.prompt)
        if key not in shifts:
            region = layout.region_index(job.prompt)
            shifts[key] = (0, 0) if region is None else centring_shift(crop(masks[job.prompt], job.view))
        return shifts[key]

    def around(denoise: Denoiser) -> Denoiser:
        def centred(crops: torch.Tensor, t: torch.Tensor, jobs: Sequence[Job]) -> torch.Tensor:
            n = crops.shape[0] // len(jobs)
            moves = [shift_of(job) for job in jobs]
            if all(d == (0, 0) for d in moves):
                return denoise(crops, t, jobs)
            rolled = crops.clone()
            for j, d in enumerate(moves):
                if d != (0, 0):
                    rolled[j * n : (j + 1) * n] = torch.roll(crops[j * n : (j + 1) * n], d, dims=(-2, -1))
            out = denoise(rolled, t, jobs)
            for j, d in enumerate(moves):
                if d != (0, 0):
                    out[j * n : (j + 1) * n] = torch.roll(out[j * n : (j + 1) * n], (-d[0], -d[1]), dims=(-2, -1))
            return out

        return centred

    return around
