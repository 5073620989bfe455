"""Chroma (lodestones' Chroma1-HD / -Base and fine-tunes): a FLUX.1-schnell-derived transformer
(``ChromaTransformer2DModel``) with one T5 text encoder, no CLIP pooled embedding, no guidance
embedding (its modulations come from a small "distilled guidance" network of the timestep), and
true classifier-free guidance with the negative prompt.

What it shares with FLUX.1 (:mod:`multidiffusion.models.flux`, whose adapter this one extends):
latents packed into 2x2 patches as tokens and unpacked back, rotary ``img_ids`` per view (``txt_ids``
zeros), the timestep passed as t / 1000, the sigmas linspace(1, 1/n, n) shifted by μ from the
*view's* token count when the scheduler shifts by resolution, the VAE (FLUX.1's, latents
(z − shift) · scale: the default :class:`~multidiffusion.vae.latents.ScaledLatents`).

What is Chroma's own (ChromaPipeline, as diffusers 0.42 has it):

- **Text**: the pipeline's own ``encode_prompt`` (T5 run *with* its attention mask; LoRA scales and
  textual inversions apply as in diffusers). It also returns a mask over the T5 tokens that keeps
  the text and the first padding token; per model call the mask is extended by ones over the view's
  image tokens (``_prepare_attention_mask``), so it is built in :meth:`ChromaAdapter.predict`, where
  the view's size is known, from the per-row text mask that :meth:`ChromaAdapter.unet_kwargs` gathers.
- **Guidance**: plain classifier-free guidance on ``guidance_scale`` (> 1: on, with the negative
  prompt, "" when none is given), v = v_neg + s (v_pos − v_neg), as the pipeline; the engine batches
  both branches in one call. There is no guidance embedding to feed and no separate
  ``true_cfg_scale``.
- **Defaults**: 35 steps at guidance 5.0, 1024 px (the pipeline's ``default_sample_size`` 128 latents).

**Positions.** ``positions="view"`` (default) gives every view the ids of an image of its own size,
(0..h/2-1, 0..w/2-1), as the pipeline gives a whole image; ``"canvas"`` gives each view its place on
the canvas (FLUX.1's option, the same code). Why local by default: Chroma was trained (from
FLUX.1-schnell's weights, itself trained so) on images near its native size, each given the ids of
its own token grid from (0, 0) next to text tokens at position 0, never ids offset as a window of a
larger canvas. Between image tokens rotary attention only sees differences, which both choices give
alike; what differs is the offset of the image tokens from the text tokens, and with canvas
positions a view of a wide panorama sits at column ids (up to the canvas's width / 16 px) the model
never saw next to its text. Local positions keep every view inside what it was trained on; canvas
positions remain the option to measure on real weights (``docs/benchmarks.md``'s seam metric takes
any model).

At one view covering the canvas this is ChromaPipeline step for step (``tests/test_chroma.py``).
Single-file transformers (lodestones' ``.safetensors``) are told from FLUX.1's by the approximator's
``distilled_guidance_layer.`` tensors (so Chroma is registered before FLUX.1) and read by diffusers'
``ChromaTransformer2DModel.from_single_file``, the rest from Chroma1-HD or ``config=``.
Not here: ControlNets (diffusers has none for Chroma), IP-Adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from multidiffusion.engine.adapter import PromptEmbeddings, split_slots
from multidiffusion.models.flow import FlowMatchingAdapter
from multidiffusion.models.flux import FluxAdapter, unpack_latents
from multidiffusion.models.options import ModelOptions, max_sequence_length, positions

__all__ = ["ChromaAdapter", "ChromaOptions"]

TEXT_MASK = "text_attention_mask"
"""The name under which the per-row T5 mask travels from :meth:`ChromaAdapter.encode` to
:meth:`ChromaAdapter.predict` (extended there by the view's image tokens to ``attention_mask``)."""


@dataclass(frozen=True)
class ChromaOptions(ModelOptions):
    positions: str = positions()
    max_sequence_length: int = max_sequence_length(512)


class ChromaAdapter(FluxAdapter):
    """Chroma text-to-image transformers. ``positions``: "view" (default) or "canvas" (module
    docstring); ``max_sequence_length``: T5 tokens (512, ChromaPipeline's default)."""

    family = "chroma"
    label = "Chroma"
    description = "Chroma (ChromaTransformer2DModel)"
    Options = ChromaOptions  # type: ignore[assignment]
    pipeline_class = "ChromaPipeline"
    pipelines = ("ChromaPipeline",)
    network_classes = ("ChromaTransformer2DModel",)
    components = ("vae", "scheduler", "text_encoder", "tokenizer")
    checkpoint_blocks = "distilled_guidance_layer."  # Chroma's own (its files have FLUX.1's double_blocks. too)
    sampling_defaults = (35, 5.0)  # type: ignore[assignment]  # ChromaPipeline's steps and guidance scale

    @classmethod
    def single_file_config(cls, shapes: dict[str, tuple[int, ...]]) -> str:
        """Chroma1-HD's configuration and components (diffusers' default for a Chroma file)."""
        return "lodestones/Chroma1-HD"

    @property
    def guidance_embedded(self) -> bool:
        """Chroma has no guidance embedding."""
        return False

    def classifier_free(self, slots: Any) -> bool:
        """ChromaPipeline's plain rule (not FLUX.1's true CFG): some slot's scale exceeds 1."""
        return max(slots.guidance) > 1.0

    def condition(self, slots: Any, num_images: int) -> tuple[PromptEmbeddings, list[float]]:
        """Plain classifier-free guidance, as ChromaPipeline: on when some slot's scale exceeds 1, with
        the negative prompt ("" when none)."""
        return FlowMatchingAdapter.condition(self, slots, num_images)

    def encode(
        self,
        prompts: Sequence[Sequence[str]],
        negatives: Sequence[Sequence[str]],
        num_images: int,
        guidance: bool,
    ) -> PromptEmbeddings:
        """The pipeline's ``encode_prompt``: T5 embeddings and the text mask (text + one padding
        token), of the prompts and, when ``guidance``, of the negatives."""
        slots = len(prompts)
        embeds, _, mask, neg_embeds, _, neg_mask = self.pipe.encode_prompt(
            prompt=[p for slot in prompts for p in slot],
            negative_prompt=[n for slot in negatives for n in slot] if guidance else None,
            device=self.device,
            num_images_per_prompt=num_images,
            do_classifier_free_guidance=guidance,
            max_sequence_length=self.max_sequence_length,
        )
        positive = {"encoder_hidden_states": split_slots(embeds, slots), TEXT_MASK: split_slots(mask, slots)}
        negative = None
        if guidance:
            negative = {
                "encoder_hidden_states": split_slots(neg_embeds, slots),
                TEXT_MASK: split_slots(neg_mask, slots),
            }
        return PromptEmbeddings(positive, negative)

    def predict(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """v for the crops ``x`` (rows, C, h, w): packed to tokens, the rows' text masks extended by
        ones over the view's image tokens (the pipeline's ``_prepare_attention_mask``), through the
        transformer with the text ids (zeros) and the views' image ids, unpacked."""
        _, _, h, w = x.shape
        image_tokens = (h // 2) * (w // 2)

        def run(tokens: torch.Tensor, timestep: torch.Tensor, ids: dict[str, torch.Tensor], **rest: Any) -> Any:
            text_mask = rest.pop(TEXT_MASK)
            ones = torch.ones(text_mask.shape[0], image_tokens, device=text_mask.device, dtype=torch.bool)
            mask = torch.cat([text_mask, ones], dim=1)  # the pipeline's: float text mask, bool ones -> float
            return self.transformer(
                hidden_states=tokens, timestep=timestep, attention_mask=mask, return_dict=False, **ids, **rest
            )[0]

        return unpack_latents(self._per_position(x, t, kwargs, run), h, w)

    def adopt_controlnet(self, net: Any, name: str) -> Any:
        """diffusers has no ControlNet for Chroma: refused in a line."""
        return FlowMatchingAdapter.adopt_controlnet(self, net, name)
