"""Stable Diffusion XL: two text encoders, a pooled text embedding and six "time ids" per view.

SDXL's UNet is conditioned (Podell et al. 2023, Sec. 2.2) on the size of the original training
image, the top-left corner of the crop taken from it, and the target size of the generated image:

    time_ids = (original_h, original_w, crop_top, crop_left, target_h, target_w)     (pixels)

Under MultiDiffusion each view is a crop of a larger canvas, so these values are set per view:

- ``target_size`` is the view's own size: it is the image the UNet generates (SDXL's multi-aspect
  fine-tuning pairs each training image with target = its actual size).
- ``original_size="canvas"`` (default): the canvas size. The window is then described as a piece of
  an image that size, and SDXL's size conditioning reads a large original as a high-resolution
  source. diffusers' SDXL tiling pipeline (examples/community/mixture_tiling_sdxl.py) and Optimum's
  SDXL panorama pipeline do the same (original size = the full image). ``"window"`` uses the view's
  size, as a plain SDXL call of that size would; an explicit ``(height, width)`` in pixels is kept
  for every view (e.g. (2048, 2048) to push for detail).
- ``crops_coords_top_left="zero"`` (default): (0, 0) for every view. The SDXL paper recommends
  (0, 0) for well-centred, uncropped-looking images, and both peer pipelines above use it for
  every tile. ``"offset"`` gives each view its offset on the canvas (in pixels), the literal
  reading of "this window is a crop of the canvas": content may then continue past the window's
  edges, which suits panoramas, but crop values of thousands of pixels lie outside what SDXL saw
  in training; we have not measured which is better on real weights.

A view covering the whole canvas therefore gets exactly what ``StableDiffusionXLPipeline`` passes
for an image of that size (original = target = canvas, crop (0, 0)), under every option except an
explicit ``original_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from multidiffusion.engine.adapter import PromptEmbeddings, split_slots
from multidiffusion.engine.fusion import Job
from multidiffusion.io.messages import shown
from multidiffusion.models.base import FamilyAdapter
from multidiffusion.models.guidance_embedding import GuidanceEmbedding
from multidiffusion.models.options import ModelOptions, clip_skip, option

__all__ = ["CROPS_COORDS", "ORIGINAL_SIZES", "StableDiffusionXLAdapter", "StableDiffusionXLOptions"]

CROPS_COORDS = ("zero", "offset")
ORIGINAL_SIZES = ("canvas", "window")
_NUM_TIME_IDS = 6


def _original_size(name: str, value: Any) -> str | tuple[int, int]:
    if isinstance(value, str) and value in ORIGINAL_SIZES:
        return value
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(
        f"{name} must be 'canvas', 'window' or a (height, width) pair of positive pixel counts, got {shown(value)}"
    )


def parse_original_size(text: str) -> str | tuple[int, int]:
    """'canvas', 'window' or HxW pixels (e.g. '2048x2048') from the command line."""
    if text in ORIGINAL_SIZES:
        return text
    parts = text.lower().split("x")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        return (int(parts[0]), int(parts[1]))
    raise ValueError(f"expected canvas, window or HxW pixels, got {shown(text)}")


@dataclass(frozen=True)
class StableDiffusionXLOptions(ModelOptions):
    clip_skip: int | None = clip_skip()
    crops_coords_top_left: str = option(
        "zero",
        choices=CROPS_COORDS,
        flag="--crops-coords",
        help="each view's crop conditioning, (0, 0) or its offset on the canvas",
    )
    original_size: str | tuple[int, int] = option(
        "canvas",
        check=_original_size,
        parse=parse_original_size,
        metavar="{canvas,window,HxW}",
        help="each view's original-size conditioning: canvas, window or HxW pixels",
    )


class StableDiffusionXLAdapter(GuidanceEmbedding, FamilyAdapter):
    """SDXL base models and their fine-tunes. Text encoding goes through the pipeline's own
    ``encode_prompt`` (both encoders, pooled embedding; LoRAs, textual inversions and clip skip
    apply); the time ids are built per view (see the module docstring for the options)."""

    family = "sdxl"
    label = "SDXL"
    description = "Stable Diffusion XL (UNet2DConditionModel with text-time conditioning)"
    Options = StableDiffusionXLOptions
    pipeline_class = "StableDiffusionXLPipeline"
    pipelines = ("StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline")
    components = ("vae", "scheduler", "text_encoder_2", "tokenizer_2")
    family_sampling_defaults = (50, 5.0)  # StableDiffusionXLPipeline's (an LCM UNet: 4 steps at w 8)
    clip_skip: int | None
    crops_coords_top_left: str
    original_size: str | tuple[int, int]

    def __init__(self, pipe: Any, **options: Any):
        super().__init__(pipe, **options)
        self._check_added_embedding()

    @classmethod
    def claims(cls, pipe: Any) -> bool:
        """A UNet with SDXL's text-and-time added conditioning."""
        return super().claims(pipe) and pipe.unet.config.get("addition_embed_type") == "text_time"

    def _check_added_embedding(self) -> None:
        """SDXL base UNets take 6 time ids + the pooled embedding; the refiner takes 5 (aesthetic score)."""
        unet = self.unet
        expected = unet.add_embedding.linear_1.in_features
        pooled = self.pipe.text_encoder_2.config.projection_dim
        given = unet.config.addition_time_embed_dim * _NUM_TIME_IDS + pooled
        if expected != given:
            raise ValueError(
                f"this UNet's added conditioning takes {expected} features, but SDXL's {_NUM_TIME_IDS} time ids and "
                f"pooled text embedding give {given}: an SDXL refiner (aesthetic-score conditioning) cannot generate "
                "from noise; use an SDXL base model or a fine-tune of it"
            )

    def encode(
        self,
        prompts: Sequence[Sequence[str]],
        negatives: Sequence[Sequence[str]],
        num_images: int,
        guidance: bool,
    ) -> PromptEmbeddings:
        flat = [p for slot in prompts for p in slot]
        flat_neg = [n for slot in negatives for n in slot]
        pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=flat,
            device=self.device,
            num_images_per_prompt=num_images,
            do_classifier_free_guidance=guidance,
            negative_prompt=flat_neg if guidance else None,
            clip_skip=self.clip_skip,
        )
        slots = len(prompts)
        positive = {"encoder_hidden_states": split_slots(pos, slots), "text_embeds": split_slots(pooled, slots)}
        if not guidance:
            return PromptEmbeddings(positive, None)
        if self.pipe.config.get("force_zeros_for_empty_prompt", False):
            # SDXL's unconditional branch is all zeros where no negative prompt is given, as in diffusers
            # (negative_prompt=None); an empty string counts as none here
            empty = torch.tensor([n == "" for n in flat_neg], device=neg.device).repeat_interleave(num_images)
            neg = torch.where(empty.view(-1, 1, 1), torch.zeros_like(neg), neg)
            neg_pooled = torch.where(empty.view(-1, 1), torch.zeros_like(neg_pooled), neg_pooled)
        negative = {"encoder_hidden_states": split_slots(neg, slots), "text_embeds": split_slots(neg_pooled, slots)}
        return PromptEmbeddings(positive, negative)

    def unet_kwargs(self, cond: PromptEmbeddings, jobs: Sequence[Job], canvas: tuple[int, int]) -> dict[str, Any]:
        slots = [job.prompt for job in jobs]
        text_embeds = cond.gather("text_embeds", slots)
        return {
            "encoder_hidden_states": cond.gather("encoder_hidden_states", slots),
            "added_cond_kwargs": {
                "text_embeds": text_embeds,
                "time_ids": cond.cached(
                    ("time_ids", tuple(job.view for job in jobs), tuple(canvas)),
                    lambda: self.time_ids(jobs, canvas, cond.batch, cond.negative is not None, text_embeds.dtype),
                ),
            },
            **self.guidance_inputs(cond, jobs),
        }

    def time_ids(
        self,
        jobs: Sequence[Job],
        canvas: tuple[int, int],
        batch: int,
        guided: bool,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """(original_h, original_w, crop_top, crop_left, target_h, target_w) in pixels for each job's
        ``batch`` images, both guidance branches (same ids) when ``guided``."""
        rows = [self.view_time_ids(job.view, canvas) for job in jobs]
        ids = torch.tensor(rows, dtype=dtype, device=self.device).repeat_interleave(batch, dim=0)
        return torch.cat([ids, ids]) if guided else ids

    def view_time_ids(self, view: Any, canvas: tuple[int, int]) -> list[int]:
        """The six time ids of one view (latent coordinates in, pixels out)."""
        f = self.vae_scale_factor
        target = [view.height * f, view.width * f]
        if self.original_size == "canvas":
            original = [canvas[0] * f, canvas[1] * f]
        elif self.original_size == "window":
            original = target
        else:
            original = list(self.original_size)
        crop = [view.top * f, (view.left % canvas[1]) * f] if self.crops_coords_top_left == "offset" else [0, 0]
        return original + crop + target
