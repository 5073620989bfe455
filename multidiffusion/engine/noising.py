"""The forward process, whatever the scheduler's family: one place that noises latents to a step.

DDPM-family schedulers (DDIM, Euler, DPM++, ...) noise with ``add_noise``, variance preserving:

    x_t = √ᾱ_t · z_0 + √(1 − ᾱ_t) · ε

flow-matching schedulers (SD 3, FLUX: ``FlowMatchEulerDiscreteScheduler`` and kin) with
``scale_noise``, a straight line from the data to the noise:

    x_σ = (1 − σ) · z_0 + σ · ε,      σ = t / 1000

Image-to-image starts, inpainting's latent blending and region bootstrapping all call
:func:`noise_to`, so every task works on either family. :func:`initial_sigma` and
:func:`scale_input` stand in for ``init_noise_sigma`` and ``scale_model_input``, which
flow-matching schedulers do not have (their model input is the sample itself, their start the noise).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["initial_sigma", "is_flow_matching", "noise_to", "scale_input"]


def is_flow_matching(scheduler: Any) -> bool:
    """Whether ``scheduler`` noises along flow matching's straight line (``scale_noise``, no ``add_noise``)."""
    return callable(getattr(scheduler, "scale_noise", None)) and not callable(getattr(scheduler, "add_noise", None))


def noise_to(scheduler: Any, sample: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """``sample`` (B, C, H, W) noised with ``noise`` to ``timestep`` (a scalar or one per image), in
    the scheduler's own units: ``scale_noise`` for flow matching, ``add_noise`` otherwise."""
    t = timestep.reshape(-1).to(sample.device)
    if t.numel() == 1 and sample.shape[0] != 1:
        t = t.expand(sample.shape[0])
    if is_flow_matching(scheduler):
        return scheduler.scale_noise(sample, t, noise)
    return scheduler.add_noise(sample, noise, t)


def initial_sigma(scheduler: Any) -> float:
    """The scale of the start noise: ``init_noise_sigma`` (1 where the scheduler has none)."""
    return getattr(scheduler, "init_noise_sigma", 1.0)


def scale_input(scheduler: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The model's input at ``t``: ``scale_model_input`` where the scheduler has one, else ``x``."""
    scale = getattr(scheduler, "scale_model_input", None)
    return scale(x, t) if callable(scale) else x
