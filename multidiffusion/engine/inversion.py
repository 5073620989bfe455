"""DDIM inversion over a canvas: the noise that DDIM sampling would turn back into given latents.

DDIM (η = 0) is a deterministic map from x_t to x_s (s < t):

    x_s = √ᾱ_s · x̂_0 + √(1 − ᾱ_s) · ε,   x̂_0 = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t,   ε = Φ(x_t, t)

Run backwards from clean latents z_0, one level at a time (ᾱ_s > ᾱ_t), with the model's output at
the *lower* level standing in for the one at the higher (the usual approximation, Song et al. 2021;
exact in the limit of small steps):

    x_t = √ᾱ_t · x̂_0 + √(1 − ᾱ_t) · ε,   x̂_0 = (x_s − √(1 − ᾱ_s) · ε) / √ᾱ_s,   ε = Φ(x_s, t)

The model is asked at the higher timestep t, the one the sampler will ask at that level (as
diffusers' ``DDIMInverseScheduler`` and null-text inversion do). Φ here is MultiDiffusion's fused
prediction (paper Eq. 5) over the whole canvas: the same views, weights and batching as sampling,
so an inversion of a canvas of any size costs what sampling does, not a whole-canvas model call.

Everything is in variance-preserving units (what the UNet takes); :func:`implied_noise` turns the
result into the noise ε̃ with x_T = √ᾱ_T z_0 + √(1 − ᾱ_T) ε̃, which any scheduler's ``add_noise``
turns into its own units, so sampling can start from it with DDIM, Euler or DPM++ alike (for DDIM
the inversion is the sampler's mirror image; for the others it is a structured start noise).

**Flow matching** (SD 3, FLUX; :func:`flow_invert`). Their sampler is Euler on the velocity the
model predicts along the straight line x_σ = (1 − σ) z_0 + σ ε, dx/dσ = v = Φ(x_σ, σ):

    x_s = x_t + (σ_s − σ_t) · Φ(x_t, t)

and the inversion runs it upwards with the same approximation as DDIM's (the model asked at the
higher level, at the lower level's sample): x_t = x_s + (σ_t − σ_s) · Φ(x_s, t). Euler sampling then
retraces it exactly wherever Φ does not change between the two samples. :func:`implied_flow_noise`
gives ε̃ with x_T = (1 − σ_T) z_0 + σ_T ε̃, which the scheduler's ``scale_noise`` turns back into x_T.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from multidiffusion.engine.fusion import Denoiser, FusionPlan, fused_prediction

__all__ = [
    "alphas_at",
    "ddim_invert",
    "flow_invert",
    "implied_flow_noise",
    "implied_noise",
    "inversion_levels",
    "sigmas_at",
]


def alphas_at(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """ᾱ at each timestep from the scheduler's ``alphas_cumprod`` (linearly interpolated between
    training timesteps for fractional ones), float64. ValueError when the scheduler has none (a
    flow-matching scheduler: use :func:`sigmas_at` and :func:`flow_invert`)."""
    table = getattr(scheduler, "alphas_cumprod", None)
    if table is None:
        raise ValueError(
            "noise_inversion needs a scheduler with alphas_cumprod (DDIM, Euler, DPM++, ...), got "
            f"{type(scheduler).__name__}"
        )
    table = table.detach().to("cpu", torch.float64)
    t = timesteps.detach().to("cpu", torch.float64).clamp(0, len(table) - 1)
    low = t.floor().long()
    high = (low + 1).clamp(max=len(table) - 1)
    frac = t - low
    return table[low] * (1 - frac) + table[high] * frac


def inversion_levels(run: torch.Tensor, steps: int) -> torch.Tensor:
    """The timesteps an inversion of ``steps`` steps climbs through, ascending, ending at the first
    timestep that sampling runs (``run[0]``; ``run`` is the sampler's timesteps, descending).

    With as many steps as sampling runs, exactly its timesteps reversed (so DDIM sampling retraces
    the inversion); otherwise ``steps`` levels evenly spaced from ``run[0] / steps`` to ``run[0]``."""
    distinct = torch.unique_consecutive(run)
    if steps == len(distinct):
        return distinct.flip(0)
    top = float(run[0])
    levels = torch.linspace(top / steps, top, steps, dtype=torch.float64).round()
    levels = torch.unique(levels.clamp(min=1)).to(run.dtype)
    levels[-1] = run[0]
    return levels


def _x0_and_eps(out: torch.Tensor, x: torch.Tensor, alpha: float, prediction_type: str):
    """(x̂_0, ε) from a model output at an input x of level ᾱ, for ε- and v-prediction (an
    x_0-predicting model gives no ε at the clean level the inversion starts from)."""
    a, b = alpha**0.5, (1 - alpha) ** 0.5
    if prediction_type == "epsilon":
        return (x - b * out) / a, out
    if prediction_type == "v_prediction":
        return a * x - b * out, a * out + b * x
    raise ValueError(
        f"noise_inversion works with epsilon- and v-prediction models, not prediction_type={prediction_type!r}"
    )


def _climb(
    model: Denoiser,
    latents: torch.Tensor,
    levels: torch.Tensor,
    plan_for_level: Callable[[int], FusionPlan],
    batch_size: int | None,
    step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Clean ``latents`` carried up through ``levels``: at level k the fused prediction of ``model``
    over ``plan_for_level(k)``'s views, then ``step(k, x, prediction)`` (float32) gives the next x."""
    x = latents.float()
    with torch.no_grad():
        for k, t in enumerate(levels):
            out = fused_prediction(model, x.to(latents.dtype), t.to(latents.device), plan_for_level(k), batch_size)
            x = step(k, x, out.float())
    return x.to(latents.dtype)


def ddim_invert(
    model: Denoiser,
    latents: torch.Tensor,
    levels: torch.Tensor,
    alphas: torch.Tensor,
    plan_for_level: Callable[[int], FusionPlan],
    batch_size: int | None = None,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Clean ``latents`` z_0 (B, C, H, W) carried up through ``levels`` (ascending timesteps, ᾱ of
    each in ``alphas``) by the DDIM inversion step of the module docstring, with the fused prediction
    of ``model`` over ``plan_for_level(k)``'s views at step k. Returns x_T in variance-preserving
    units; ``len(levels)`` fused predictions. The canvas is carried in float32."""

    def step(k: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        alpha_prev = float(alphas[k - 1]) if k else 1.0  # z_0: clean
        x0, eps = _x0_and_eps(out, x, alpha_prev, prediction_type)
        alpha = float(alphas[k])
        return alpha**0.5 * x0 + (1 - alpha) ** 0.5 * eps

    return _climb(model, latents, levels, plan_for_level, batch_size, step)


def implied_noise(latents: torch.Tensor, inverted: torch.Tensor, alpha: float) -> torch.Tensor:
    """The noise ε̃ with ``inverted`` = √ᾱ ``latents`` + √(1 − ᾱ) ε̃: what a scheduler's ``add_noise``
    at that level needs to give back ``inverted`` (in its own units)."""
    return ((inverted.float() - alpha**0.5 * latents.float()) / (1 - alpha) ** 0.5).to(latents.dtype)


def sigmas_at(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """σ at each timestep of a flow-matching scheduler, t / ``num_train_timesteps`` (its timesteps are
    its shifted sigmas times that), float64."""
    return timesteps.detach().to("cpu", torch.float64) / float(scheduler.config.num_train_timesteps)


def flow_invert(
    model: Denoiser,
    latents: torch.Tensor,
    levels: torch.Tensor,
    sigmas: torch.Tensor,
    plan_for_level: Callable[[int], FusionPlan],
    batch_size: int | None = None,
) -> torch.Tensor:
    """Clean ``latents`` z_0 carried up through ``levels`` (ascending timesteps, σ of each in
    ``sigmas``) by the Euler inversion step of the module docstring, with the fused velocity of
    ``model`` over ``plan_for_level(k)``'s views at step k. Returns x_T; ``len(levels)`` fused
    predictions. The canvas is carried in float32."""

    def step(k: int, x: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        sigma_prev = float(sigmas[k - 1]) if k else 0.0  # z_0: clean
        return x + (float(sigmas[k]) - sigma_prev) * velocity

    return _climb(model, latents, levels, plan_for_level, batch_size, step)


def implied_flow_noise(latents: torch.Tensor, inverted: torch.Tensor, sigma: float) -> torch.Tensor:
    """The noise ε̃ with ``inverted`` = (1 − σ) ``latents`` + σ ε̃: what ``scale_noise`` at σ needs to
    give back ``inverted``."""
    return ((inverted.float() - (1 - sigma) * latents.float()) / sigma).to(latents.dtype)
