"""Stable Diffusion 1.x and 2.x (epsilon and v-prediction): one CLIP text encoder."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from multidiffusion.engine.adapter import PromptEmbeddings, split_slots
from multidiffusion.engine.fusion import Job
from multidiffusion.models.base import FamilyAdapter
from multidiffusion.models.guidance_embedding import GuidanceEmbedding
from multidiffusion.models.options import ModelOptions, clip_skip

__all__ = ["StableDiffusionAdapter", "StableDiffusionOptions"]


@dataclass(frozen=True)
class StableDiffusionOptions(ModelOptions):
    clip_skip: int | None = clip_skip()


class StableDiffusionAdapter(GuidanceEmbedding, FamilyAdapter):
    """Text encoding through the pipeline's own ``encode_prompt``, so LoRA scales, textual
    inversions and clip skip set on the pipeline apply as they would in diffusers. An LCM UNet takes
    its guidance scale as an embedding (:mod:`~multidiffusion.models.guidance_embedding`)."""

    family = "sd"
    label = "SD 1.x/2.x"
    description = "Stable Diffusion 1.x / 2.x (UNet2DConditionModel)"
    Options = StableDiffusionOptions
    pipeline_class = "StableDiffusionPipeline"
    # inpainting: md.inpaint / outpaint; LCM models' folders name their own pipeline
    pipelines = ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline", "LatentConsistencyModelPipeline")
    clip_skip: int | None

    @classmethod
    def claims(cls, pipe: Any) -> bool:
        """A UNet without added conditioning (SDXL's text-time embedding is SDXL's)."""
        return super().claims(pipe) and pipe.unet.config.get("addition_embed_type") is None

    def encode(
        self,
        prompts: Sequence[Sequence[str]],
        negatives: Sequence[Sequence[str]],
        num_images: int,
        guidance: bool,
    ) -> PromptEmbeddings:
        flat = [p for slot in prompts for p in slot]
        flat_neg = [n for slot in negatives for n in slot]
        with _final_norm_reachable(self.pipe.text_encoder if self.clip_skip is not None else None):
            pos, neg = self.pipe.encode_prompt(
                flat,
                self.device,
                num_images,
                guidance,
                negative_prompt=flat_neg if guidance else None,
                clip_skip=self.clip_skip,
            )
        slots = len(prompts)
        return PromptEmbeddings(
            positive={"encoder_hidden_states": split_slots(pos, slots)},
            negative={"encoder_hidden_states": split_slots(neg, slots)} if guidance else None,
        )

    def unet_kwargs(self, cond: PromptEmbeddings, jobs: Sequence[Job], canvas: tuple[int, int]) -> dict[str, Any]:
        return {
            "encoder_hidden_states": cond.gather("encoder_hidden_states", [job.prompt for job in jobs]),
            **self.guidance_inputs(cond, jobs),
        }


@contextlib.contextmanager
def _final_norm_reachable(encoder: Any) -> Iterator[None]:
    """With ``clip_skip``, diffusers' ``encode_prompt`` applies the text encoder's final LayerNorm to
    an earlier layer's hidden states through ``text_encoder.text_model.final_layer_norm``; the
    ``CLIPTextModel`` of transformers 5 has no ``text_model`` wrapper (the norm is its own
    attribute), so the call fails. Lend it that name for the call (the same norm, the same result)."""
    if encoder is None or hasattr(encoder, "text_model") or not hasattr(encoder, "final_layer_norm"):
        yield  # transformers 4's CLIPTextModel has it; without clip_skip nothing reaches for it
        return
    encoder.__dict__["text_model"] = SimpleNamespace(final_layer_norm=encoder.final_layer_norm)
    try:
        yield
    finally:
        encoder.__dict__.pop("text_model", None)
