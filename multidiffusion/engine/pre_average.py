"""Latent pre-averaging (StreamMultiDiffusion, Kim et al. 2024): Eq. 5 applied to each view's denoised
estimate x̂_0 computed from the view's *own* input, then one scheduler step (the re-noising) on the canvas.

Without it the engine fuses the model outputs p_i and steps the canvas once. Wherever a view's input
is the canvas's x_t (panoramas, region layouts outside bootstrapping, binary masks under it), the two
are the same computation: x̂_0 is affine in (x_t, p) with coefficients shared by every view, so the
Eq. 5 average of the views' x̂_0 is the x̂_0 of the averaged p, and the scheduler re-noises once
either way (one noise draw for the canvas; averaging per-view stepped latents, the paper's loop,
would average independent draws). They part where a job's input x_k differs from the canvas under a
non-zero weight: bootstrapping with soft (feathered) masks, x_k = M_k x + (1 − M_k) bg_t. There the
view's estimate is x̂_0,k = a x_k − b p_k, and the prediction that gives the same x̂_0 from the canvas
x is

    p'_k = p_k + r(t) (x − x_k),        ε: r = 1/√(1−ᾱ_t);  v: r = √ᾱ_t/√(1−ᾱ_t);  x0: r = 0;  flow velocity: r = 1/σ_t

(in the scheduler-scaled input units the model sees). Fusing p'_k by Eq. 5 and stepping once is
StreamMultiDiffusion's pre-averaging for any scheduler of the engine: fused x̂_0, then its re-noising.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from multidiffusion.engine.fusion import Denoiser, InputComposer, Job
from multidiffusion.engine.noising import is_flow_matching

__all__ = ["input_rate", "pre_averaged"]


def input_rate(scheduler: Any, t: torch.Tensor) -> float:
    """r(t): how much a prediction changes per unit of input, at fixed x̂_0, for ``scheduler`` at ``t``."""
    if is_flow_matching(scheduler):
        return float(scheduler.config.num_train_timesteps / float(t))  # σ_t = t / T, x̂_0 = x − σ v
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "sample":
        return 0.0
    sigmas, index = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
    if sigmas is not None and index is not None:  # k-diffusion style (Euler, DPM++, UniPC): ᾱ = 1 / (1 + σ²)
        alpha = 1.0 / (1.0 + float(sigmas[index]) ** 2)
    else:  # DDIM, DDPM, LCM, TCD, PNDM: ᾱ at the discrete timestep
        alpha = float(scheduler.alphas_cumprod[round(float(t))])
    rate = 1.0 / (1.0 - alpha) ** 0.5
    return rate * alpha**0.5 if kind == "v_prediction" else rate


def pre_averaged(denoise: Denoiser, compose: InputComposer, rate: float) -> tuple[Denoiser, InputComposer]:
    """(denoiser, composer) for :func:`~multidiffusion.engine.fusion.fused_prediction` whose fused output
    is Eq. 5 of the views' own x̂_0, re-expressed as a prediction from the canvas: the composer keeps
    x − x_k of its batch (latent channels), the denoiser adds r (x − x_k) to that batch's prediction."""
    shifts: list[torch.Tensor] = []

    def compose_kept(crops: torch.Tensor, jobs: Sequence[Job]) -> torch.Tensor:
        composed = compose(crops, jobs)
        shifts.append(crops - composed[:, : crops.shape[1]])
        return composed

    def denoise_corrected(crops: torch.Tensor, t: torch.Tensor, jobs: Sequence[Job]) -> torch.Tensor:
        out = denoise(crops, t, jobs)
        shift = shifts.pop()
        return out + rate * shift[:, : out.shape[1]].to(out.dtype)

    return denoise_corrected, compose_kept
