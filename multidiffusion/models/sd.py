"""Stable Diffusion 1.x and 2.x (epsilon and v-prediction): one CLIP text encoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from multidiffusion.engine.adapter import ModelAdapter, PromptEmbeddings, split_slots
from multidiffusion.engine.fusion import Job

__all__ = ["StableDiffusionAdapter"]


class StableDiffusionAdapter(ModelAdapter):
    """Text encoding through the pipeline's own ``encode_prompt``, so LoRA scales, textual
    inversions and clip skip set on the pipeline apply as they would in diffusers."""

    family = "sd"

    def __init__(self, pipe: Any, clip_skip: int | None = None):
        from diffusers import StableDiffusionPipeline

        controlnet = getattr(pipe, "controlnet", None)  # a ControlNet pipeline's, kept for every task
        if not isinstance(pipe, StableDiffusionPipeline):
            # img2img, panorama or other siblings share the components: reuse them, no copies
            pipe = StableDiffusionPipeline.from_pipe(pipe)
        super().__init__(pipe, controlnet)
        self.clip_skip = clip_skip

    def encode(
        self,
        prompts: Sequence[Sequence[str]],
        negatives: Sequence[Sequence[str]],
        num_images: int,
        guidance: bool,
    ) -> PromptEmbeddings:
        flat = [p for slot in prompts for p in slot]
        flat_neg = [n for slot in negatives for n in slot]
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

    def adopt_controlnet(self, net: Any, name: str) -> Any:
        from multidiffusion.models.controlnet import check_controlnet

        check_controlnet(net, self.unet, name)
        return net

    def unet_kwargs(self, cond: PromptEmbeddings, jobs: Sequence[Job], canvas: tuple[int, int]) -> dict[str, Any]:
        return {"encoder_hidden_states": cond.gather("encoder_hidden_states", [job.prompt for job in jobs])}
