"""Schedulers by name, built from a model's scheduler config.

Any diffusers scheduler works with the engine (it steps the whole canvas once per step); these names
are shortcuts for the command line and the web app. A1111 and ComfyUI spellings are accepted too
("DPM++ 2M Karras", "dpmpp_2m", "euler_ancestral").

:data:`SCHEDULERS` are the DDPM family's (SD 1.x, 2.x, XL); :data:`FLOW_SCHEDULERS` the flow-matching
ones of diffusion transformers (SD 3, FLUX), built from the model's own scheduler config so its shift
settings carry over. A model refuses the other family's (its adapter's ``set_timesteps``).

Few-step models sample with their distillation's schedule: ``lcm`` (LCMScheduler: LCM models and
LCM-LoRAs), ``tcd`` (TCDScheduler; the call's ``eta`` is TCD's gamma, the share of noise re-injected
each step, passed to ``step`` as diffusers' pipelines pass ``eta``), and the "trailing" timestep
spacing that Lightning and Hyper-SD LoRAs were distilled on (``euler_trailing``: SDXL-Lightning's
``EulerDiscreteScheduler(timestep_spacing="trailing")``, SD-Turbo's; ``ddim_trailing``: Hyper-SD's DDIM;
``euler_a_trailing``: SDXL-Turbo's), whose first step starts at the last training timestep (999), where
"leading" spacing starts one stride lower (at 1 step, "leading" starts at t = 1: no image at all).
"""

from __future__ import annotations

from typing import Any

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin

__all__ = ["FLOW_SCHEDULERS", "SCHEDULERS", "few_step_schedule", "make_scheduler", "scheduler_name"]

# canonical name -> (diffusers class name, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),  # the paper's sampler
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpm++2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpm++2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++2s": ("DPMSolverSinglestepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    # few-step models' own schedules (docs/models.md, "Few-step models")
    "lcm": ("LCMScheduler", {}),  # LCM models and LCM-LoRAs; keeps the config's original_inference_steps
    "tcd": ("TCDScheduler", {}),  # TCD LoRAs; its gamma is the call's eta, passed to each step
    "euler_trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),  # SDXL-Lightning
    "ddim_trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),  # Hyper-SD
    "euler_a_trailing": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),  # SDXL-Turbo
}

FLOW_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),  # SD 3's and FLUX's own
}

_ALIASES = {
    "eulerancestral": "euler_a",
    "dpmpp2m": "dpm++2m",
    "dpmpp2mkarras": "dpm++2m_karras",
    "dpmpp2msde": "dpm++2m_sde",
    "dpmpp2s": "dpm++2s",
    "dpmsolver": "dpm++2m",
    "dpm2ancestral": "dpm2_a",
    "uni_pc": "unipc",
    "lightning": "euler_trailing",
}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum() or ch == "+")


_ALL = SCHEDULERS | FLOW_SCHEDULERS
_BY_KEY = {_key(name): name for name in _ALL} | {_key(a): c for a, c in _ALIASES.items()}


def scheduler_name(name: str) -> str:
    """The canonical name for ``name``; ``ValueError`` listing the valid names if unknown."""
    canonical = _BY_KEY.get(_key(name)) if isinstance(name, str) else None
    if canonical is None:
        raise ValueError(f"scheduler must be one of {', '.join(_ALL)} (or a diffusers scheduler), got {name!r}")
    return canonical


def make_scheduler(name_or_scheduler: str | SchedulerMixin, config: Any) -> SchedulerMixin:
    """A fresh scheduler: by name from ``config`` (a model's scheduler config), or a copy of one given.

    A copy is made so that sampling never changes the state of a scheduler the caller holds.
    """
    if isinstance(name_or_scheduler, SchedulerMixin):
        return type(name_or_scheduler).from_config(name_or_scheduler.config)
    cls_name, overrides = _ALL[scheduler_name(name_or_scheduler)]
    cls = getattr(diffusers, cls_name)
    return cls.from_config(config, **overrides)


def few_step_schedule(config: Any) -> bool:
    """Whether a model's scheduler config is a distilled few-step model's own (LCM, TCD, or "trailing"
    timestep spacing: SD-Turbo, SDXL-Turbo, Lightning), which loading keeps instead of the paper's DDIM."""
    few_step = config.get("_class_name") in ("LCMScheduler", "TCDScheduler")
    return few_step or config.get("timestep_spacing") == "trailing"
