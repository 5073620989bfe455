"""Guidance as an input: latent consistency models (LCM, Luo et al. 2023), UNets with a guidance embedding.

A latent consistency model was distilled from a guided teacher: the guidance scale w of the teacher's
ε_u + w (ε_c − ε_u) became an input of the student, embedded like a timestep and added to the
UNet's time embedding (``timestep_cond``; the UNet's config has ``time_cond_proj_dim``). The model
then runs *without* classifier-free guidance, one evaluation per view and step. diffusers'
``LatentConsistencyModelPipeline`` (and ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``
given such a UNet) embed w − 1 (the LCM paper's ω, with w = ω + 1):

    timestep_cond = get_guidance_scale_embedding(w − 1, time_cond_proj_dim)

Each prompt slot embeds its own scale, so a region's ``guidance_scale`` stays its own. Under
MultiDiffusion nothing else changes: every view's prediction is fused by Eq. 5 and the scheduler
(LCMScheduler, its own in the model's folder) steps the canvas once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from multidiffusion.engine.adapter import PromptEmbeddings
from multidiffusion.engine.fusion import Job

__all__ = ["LCM_SAMPLING_DEFAULTS", "GuidanceEmbedding", "embeds_guidance"]

LCM_SAMPLING_DEFAULTS = (4, 8.0)
"""(steps, w) as ``LatentConsistencyModelPipeline``'s example runs an LCM model."""
LCM_LORA_SAMPLING_DEFAULTS = (4, 1.0)
"""(steps, guidance) of a plain UNet whose own scheduler is LCMScheduler (an LCM-LoRA fused in, as the
few-step demo "demo-lcm"): diffusers' LCM-LoRA examples, 4 steps without classifier-free guidance."""


def embeds_guidance(unet: Any) -> bool:
    """Whether ``unet`` takes the guidance scale as an input (an LCM UNet: ``time_cond_proj_dim`` set)."""
    return getattr(unet.config, "time_cond_proj_dim", None) is not None


class GuidanceEmbedding:
    """Mixin for UNet family adapters: an LCM UNet gets its guidance scale as ``timestep_cond`` and
    no unconditional branch; any other UNet is conditioned as its family does."""

    unet: Any
    pipe: Any
    device: torch.device
    dtype: torch.dtype

    def classifier_free(self, slots: Any) -> bool:
        """No negative branch for an LCM UNet (the scale is embedded); the family's rule otherwise."""
        return not embeds_guidance(self.unet) and super().classifier_free(slots)  # type: ignore[misc]

    def condition(self, slots: Any, num_images: int) -> tuple[PromptEmbeddings, list[float]]:
        """Prompts encoded once without a negative branch, and each slot's w − 1 embedded (the
        model's ``timestep_cond``), for an LCM UNet; the family's classifier-free guidance otherwise."""
        if not embeds_guidance(self.unet):
            return super().condition(slots, num_images)  # type: ignore[misc]
        cond = self.encode(slots.prompts, slots.negatives, num_images, False)  # type: ignore[attr-defined]
        w = torch.tensor([float(g) for g in slots.guidance]) - 1.0
        embedding = self.pipe.get_guidance_scale_embedding(w, embedding_dim=self.unet.config.time_cond_proj_dim)
        embedding = embedding.to(device=self.device, dtype=self.dtype)  # (P, D)
        cond.positive["timestep_cond"] = embedding[:, None].expand(-1, cond.batch, -1).contiguous()
        return cond, [1.0] * len(slots.prompts)  # 1: no classifier-free guidance on top

    def guidance_inputs(self, cond: PromptEmbeddings, jobs: Sequence[Job]) -> dict[str, Any]:
        """The ``timestep_cond`` rows of a batch of jobs (empty for a UNet without the embedding)."""
        if "timestep_cond" not in cond.positive:
            return {}
        return {"timestep_cond": cond.gather("timestep_cond", [job.prompt for job in jobs])}

    @property
    def sampling_defaults(self) -> tuple[int, float]:
        """LCM models: 4 steps at w = 8 (the LCM pipeline's example); a plain UNet with its own
        LCMScheduler (an LCM-LoRA fused): 4 steps at guidance 1; others: the family's."""
        if embeds_guidance(self.unet):
            return LCM_SAMPLING_DEFAULTS
        if self.pipe.scheduler.config.get("_class_name") == "LCMScheduler":
            return LCM_LORA_SAMPLING_DEFAULTS
        return self.family_sampling_defaults

    family_sampling_defaults: tuple[int, float] = (50, 7.5)
    """The family's diffusers pipeline defaults (StableDiffusionPipeline's 50 steps at 7.5)."""
