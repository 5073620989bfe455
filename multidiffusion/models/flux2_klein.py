"""FLUX.2 [klein] (4B / 9B, base and step-distilled): FLUX.2's VAE, latents, transformer, positions
and schedule (:mod:`multidiffusion.models.flux2`, whose adapter this one extends), with a Qwen3
text encoder and no guidance embedding; as diffusers' ``Flux2KleinPipeline`` runs it.

What is [klein]'s own:

- **Text**: the pipeline's ``encode_prompt``: each prompt as a user turn through Qwen3's chat
  template (generation prompt, ``enable_thinking=False``, no system message), padded to
  ``max_sequence_length``, the hidden states of layers 9, 18 and 27 stacked per token.
- **Guidance**: the base models take true classifier-free guidance, v = v_u + g (v_c − v_u), on when
  g = ``guidance_scale`` > 1 (4.0 by default, 50 steps), both branches in one batched call. The
  pipeline's negative is always the empty prompt; here ``negative_prompt`` replaces it when given
  (the empty prompt otherwise, as the pipeline). The step-distilled models (the pipeline's
  ``is_distilled``) run without guidance, one evaluation per view and step (4 steps by default),
  and ignore ``guidance_scale``, as the pipeline does.

Positions, local by default, for the reason :mod:`~multidiffusion.models.flux2` gives (the same
training on whole images counted from their corner). At one view covering the canvas this is
Flux2KleinPipeline step for step (``tests/test_flux2_klein.py``).
"""

from __future__ import annotations

from typing import Any

from multidiffusion.engine.adapter import PromptEmbeddings
from multidiffusion.models.flow import FlowMatchingAdapter
from multidiffusion.models.flux2 import Flux2Adapter

__all__ = ["Flux2KleinAdapter"]


class Flux2KleinAdapter(Flux2Adapter):
    """FLUX.2 [klein] text-to-image (base: true CFG; distilled: none). ``positions`` and
    ``max_sequence_length`` (Qwen3 tokens, chat template included; 512) as for [dev]."""

    family = "flux2_klein"
    label = "FLUX.2 [klein]"
    description = "FLUX.2 [klein] (Flux2Transformer2DModel, Qwen3 text encoder)"
    pipeline_class = "Flux2KleinPipeline"
    pipelines = ("Flux2KleinPipeline",)

    klein = True
    checkpoint_blocks = None  # [dev]'s single_file_config names the [klein] repos; else this claims every FLUX.2 file

    @property
    def distilled(self) -> bool:
        """Whether the model is step-distilled (the pipeline's ``is_distilled``): no guidance."""
        return bool(self.pipe.config.get("is_distilled", False))

    @property
    def sampling_defaults(self) -> tuple[int, float]:  # type: ignore[override]
        """Flux2KleinPipeline's 50 steps at guidance 4.0 for a base model; a distilled one 4 steps
        without guidance (1.0), as BFL run it."""
        return (4, 1.0) if self.distilled else (50, 4.0)

    def classifier_free(self, slots: Any) -> bool:
        """A base model: some slot's scale exceeds 1; a distilled one: never."""
        return not self.distilled and max(slots.guidance) > 1.0

    def condition(self, slots: Any, num_images: int) -> tuple[PromptEmbeddings, list[float]]:
        """Plain classifier-free guidance on ``guidance_scale`` (> 1: on) for a base model; none for a
        distilled one."""
        if self.distilled:
            return self.encode(slots.prompts, slots.negatives, num_images, False), [1.0] * len(slots.prompts)
        return FlowMatchingAdapter.condition(self, slots, num_images)
