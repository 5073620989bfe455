"""Z-Image (Base and Turbo): a single-stream diffusion transformer (``ZImageTransformer2DModel``)
over Qwen3 text features, as diffusers' ``ZImagePipeline`` runs it.

- **Text**: the pipeline's own ``encode_prompt``: each prompt wrapped in the tokenizer's chat
  template (a user turn, the generation prompt, ``enable_thinking=True``), tokenized to
  ``max_sequence_length`` and encoded by the Qwen3 model; the features are its penultimate hidden
  states with the padding dropped, so prompts have different lengths. They are kept here padded to
  one length with each row's length (``cap_lens``) and cut back to it before the transformer, which
  then pads them itself exactly as it pads the pipeline's list.
- **Latents** are the VAE's (B, 16, H/8, W/8), unpacked, as the pipeline keeps them; the transformer
  cuts each view into 2x2 patches itself, so a view, stride and offset are multiples of 2 latent
  pixels. Latents <-> pixels: (z - shift_factor) * scaling_factor, read from the VAE's config (the
  default :class:`~multidiffusion.vae.latents.ScaledLatents`).
- **Positions** (``positions``): the transformer builds its rotary ids itself, the caption's tokens
  at (1..L, 0, 0) and the image's at (L + 1, row, column) counted from (0, 0) at the image's
  top-left corner. ``"view"`` (default) gives every view those ids, as the pipeline gives a whole
  image; ``"canvas"`` adds the view's place on the canvas (top/2, left/2) to its rows and columns.
  The default is local because of how the model was trained: on whole images of many sizes and
  aspect ratios, rows and columns counted from each image's corner, never on a window of a larger
  image, so a view shown as an image of its own size is the training distribution. Rotary
  embeddings depend only on differences of positions, so between image tokens both give the same
  attention; canvas ids change where the image sits relative to the caption, and on a canvas
  larger than the images it was trained on they reach rows and columns it never saw (its rotary
  tables end at ``axes_lens``, 512 tokens: 8192 px, past which canvas positions are refused). All
  rows still go through one transformer call either way.
- **Timestep**: the transformer takes (1000 - t) / 1000 and predicts -v; :meth:`ZImageAdapter.predict`
  returns v (the flow-matching velocity the other transformers predict), so Eq. 5 fuses v.
- **Schedule**: sigmas linspace(1, 1/n, n), shifted by μ from the token count of the *view* (what
  the model sees) when the scheduler shifts dynamically, else by its fixed ``shift`` (Turbo's 3.0).
- **Guidance** as the pipeline defines it: v = v_c + g (v_c - v_u) with g = ``guidance_scale``, on
  when g > 0 (the engine's v_u + s (v_c - v_u) with s = 1 + g; the negative prompt defaults to the
  empty prompt, encoded through the template). Z-Image Turbo is distilled and runs with g = 0: one
  evaluation per view and step. The pipeline's ``cfg_truncation`` and ``cfg_normalization`` (off
  by default there) are not offered.

At one view covering the canvas this is ZImagePipeline step for step (``tests/test_zimage.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from multidiffusion.engine.adapter import PromptEmbeddings, split_slots
from multidiffusion.engine.fusion import Job
from multidiffusion.models.flow import FlowMatchingAdapter
from multidiffusion.models.flux import FluxAdapter
from multidiffusion.models.options import ModelOptions, max_sequence_length, positions

__all__ = ["ZImageAdapter", "ZImageOptions"]


@dataclass(frozen=True)
class ZImageOptions(ModelOptions):
    positions: str = positions()
    max_sequence_length: int = max_sequence_length(512)


class ZImageAdapter(FlowMatchingAdapter):
    """Z-Image text-to-image transformers (Base, Turbo and fine-tunes). ``positions``: "view"
    (default) or "canvas" (module docstring); ``max_sequence_length``: Qwen3 tokens of every prompt,
    chat template included (512, ZImagePipeline's default)."""

    family = "zimage"
    label = "Z-Image"
    description = "Z-Image / Z-Image Turbo (ZImageTransformer2DModel)"
    Options = ZImageOptions
    pipeline_class = "ZImagePipeline"
    pipelines = ("ZImagePipeline",)
    network_classes = ("ZImageTransformer2DModel",)
    components = ("vae", "scheduler", "text_encoder", "tokenizer")
    explicit_sigmas = True
    max_shift_default = 1.15
    positions: str

    @property
    def sampling_defaults(self) -> tuple[int, float]:
        """ZImagePipeline's 50 steps at guidance 5.0; Z-Image Turbo (a folder or repo id naming
        "turbo") 8 steps without guidance, as the pipeline's example runs it."""
        name = str(getattr(self.pipe, "name_or_path", "") or self.transformer.config.get("_name_or_path", ""))
        return (8, 0.0) if "turbo" in name.lower() else (50, 5.0)

    @property
    def native_latent_size(self) -> tuple[int, int]:
        """ZImagePipeline's default image size in latent pixels (128: 1024 px)."""
        size = getattr(self.pipe, "default_sample_size", 128)
        return size, size

    def condition(self, slots: Any, num_images: int) -> tuple[PromptEmbeddings, list[float]]:
        """Prompts encoded once; guidance when some slot's g > 0, at the engine's scale 1 + g."""
        guided = max(slots.guidance) > 0
        cond = self.encode(slots.prompts, slots.negatives, num_images, guided)
        return cond, [1.0 + g for g in slots.guidance]

    def encode(
        self,
        prompts: Sequence[Sequence[str]],
        negatives: Sequence[Sequence[str]],
        num_images: int,
        guidance: bool,
    ) -> PromptEmbeddings:
        slots = len(prompts)

        def encoded(texts: list[str]) -> list[torch.Tensor]:
            embeds, _ = self.pipe.encode_prompt(
                prompt=texts,
                device=self.device,
                do_classifier_free_guidance=False,
                max_sequence_length=self.max_sequence_length,
            )
            return [e for e in embeds for _ in range(num_images)]  # as the pipeline repeats them

        positive = encoded([p for slot in prompts for p in slot])
        negative = encoded([n for slot in negatives for n in slot]) if guidance else None
        length = max(len(e) for e in positive + (negative or []))

        def padded(embeds: list[torch.Tensor]) -> dict[str, torch.Tensor]:
            feats = embeds[0].new_zeros((len(embeds), length, embeds[0].shape[-1]))
            for i, e in enumerate(embeds):
                feats[i, : len(e)] = e
            lens = torch.tensor([len(e) for e in embeds], device=feats.device)
            return {"cap_feats": split_slots(feats, slots), "cap_lens": split_slots(lens, slots)}

        return PromptEmbeddings(padded(positive), padded(negative) if negative is not None else None)

    def unet_kwargs(self, cond: PromptEmbeddings, jobs: Sequence[Job], canvas: tuple[int, int]) -> dict[str, Any]:
        slots = [job.prompt for job in jobs]
        kwargs = {name: cond.gather(name, slots) for name in cond.positive}
        if self.positions == "canvas":  # (top, left) in tokens per row, both branches: as FLUX.1's
            kwargs["positions"] = cond.cached(
                ("positions", tuple(job.view for job in jobs), canvas[1]),
                lambda: FluxAdapter._row_offsets(self, jobs, canvas[1], cond.batch, cond.negative is not None),
            )
        return kwargs

    def predict(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """v for the crops ``x`` (rows, C, h, w): each row an image of its own size (local positions),
        its caption cut to its length, all in one transformer call."""
        kwargs = dict(kwargs)
        feats, lens = kwargs.pop("cap_feats"), kwargs.pop("cap_lens").tolist()
        positions = kwargs.pop("positions", None)
        captions = [feats[i, :n] for i, n in enumerate(lens)]
        n = x.shape[0]
        timestep = (1000 - t.expand(n).to(torch.float32)) / 1000
        images = list(x.to(self.transformer.dtype).unsqueeze(2).unbind(0))
        with _placed(self.transformer, None if positions is None else positions.tolist()):
            out = self.transformer(images, timestep, captions, return_dict=False, **kwargs)[0]
        return -torch.stack([o.float() for o in out]).squeeze(2).to(x.dtype)


@contextmanager
def _placed(transformer: Any, offsets: list[list[int]] | None) -> Iterator[None]:
    """With ``offsets`` ((top, left) in tokens per input row), the transformer's image rotary ids
    moved by them for the call (its ``patchify_and_embed`` wrapped on the instance, then restored)."""
    if offsets is None:
        yield
        return
    rows, cols = transformer.config.axes_lens[1:]
    original = transformer.patchify_and_embed

    def placed(images: list[torch.Tensor], captions: list[torch.Tensor], patch: int, f_patch: int) -> Any:
        out = original(images, captions, patch, f_patch)
        for ids, image, (top, left) in zip(out[3], images, offsets):
            h, w = image.shape[-2] // patch, image.shape[-1] // patch
            if top + h > rows or left + w > cols:
                raise ValueError(
                    f'positions="canvas": the canvas reaches token row {top + h}, column {left + w}, past the '
                    f'transformer\'s rotary tables ({rows} x {cols} tokens); use positions="view"'
                )
            tokens = image.shape[1] // f_patch * h * w
            ids[:tokens, 1] += top
            ids[:tokens, 2] += left
        return out

    transformer.patchify_and_embed = placed
    try:
        yield
    finally:
        del transformer.patchify_and_embed
