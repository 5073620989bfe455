"""FLUX.1 (dev and schnell): CLIP pooled + T5 sequence embeddings, 2x2 latent patches as tokens,
rotary positions, a distilled guidance embedding.

Per batch of views (:meth:`FluxAdapter.predict`):

- **Packing**: a view's latents (C, h, w) become h/2 · w/2 tokens of 4C features (FluxPipeline's
  ``_pack_latents``), token (i, j) holding the 2x2 patch at rows 2i..2i+1, columns 2j..2j+1; the
  prediction is unpacked the same way back (``_unpack_latents``).
- **Positions** (``img_ids``, rotary embeddings over (0, row, column) per token):
  ``positions="view"`` (default) gives every view the ids of an image of its own size, (0..h/2-1,
  0..w/2-1), as FluxPipeline gives a whole image: each window is "an image" to the model.
  ``positions="canvas"`` gives each view its place on the canvas, (top/2 + i, left/2 + j). Rotary
  embeddings make attention depend on differences of positions only, so between image tokens both
  are the same; they differ only in where the image tokens sit relative to the text tokens (all at
  position 0). With "canvas" the views of a batch have different ids, so each view is its own
  transformer call (its guidance branches and images still batched).
- **Timestep** t / 1000 (the transformer multiplies by 1000 again), as FluxPipeline.
- **Guidance**: a guidance-distilled transformer (``guidance_embeds``, FLUX.1-dev) takes
  ``guidance_scale`` as an input embedding and runs *without* classifier-free guidance (one
  evaluation per view), as FluxPipeline; each prompt slot may carry its own scale (regions).
  FLUX.1-schnell has no such embedding and ignores ``guidance_scale``, as FluxPipeline.
  ``true_cfg_scale`` > 1 with a non-empty negative prompt adds true classifier-free guidance,
  v = v_neg + s (v_pos − v_neg) (FluxPipeline's ``true_cfg_scale``; an empty negative counts as
  none), both branches in one batched call.

**ControlNets** (``FluxControlNetModel``, several as ``FluxMultiControlNetModel``), as
FluxControlNetPipeline: the control image VAE-encoded (see :mod:`multidiffusion.models.flow` for the
per-view crop of the canvas's control latents) and packed like the latents; XLabs-style ControlNets
with an ``input_hint_block`` take the pixels in [-1, 1] instead (their crop at the view's pixel
offset) and the transformer repeats their blocks (``controlnet_blocks_repeat``). The ControlNet gets
the view's image ids, the timestep, text and, when it embeds guidance, the slot's guidance scale;
with true CFG it runs on the positive prompt only and its output serves both branches, as the
pipeline. FLUX ControlNets have no guess mode. A ControlNet-Union (``num_mode``) takes a
``control_mode`` per control image and runs once per image (:mod:`multidiffusion.conditionings.controlnet_run`).

At one view covering the canvas this is FluxPipeline step for step (``tests/test_dit_equivalence.py``),
and FluxControlNetPipeline with a ControlNet (``tests/test_dit_controlnet.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from multidiffusion.engine.adapter import PromptEmbeddings, map_tensors, split_slots
from multidiffusion.engine.fusion import Job
from multidiffusion.models.files import has_tensors
from multidiffusion.models.flow import FlowMatchingAdapter
from multidiffusion.models.options import POSITIONS, ModelOptions, max_sequence_length, non_negative, option, positions

__all__ = ["POSITIONS", "FluxAdapter", "FluxOptions", "pack_latents", "unpack_latents"]


@dataclass(frozen=True)
class FluxOptions(ModelOptions):
    positions: str = positions()
    true_cfg_scale: float = option(
        1.0, check=non_negative, parse=float, help="true classifier-free guidance with the negative prompt (≤ 1: off)"
    )
    max_sequence_length: int = max_sequence_length(512)


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, h/2 · w/2, 4C) tokens of 2x2 patches, row-major (FluxPipeline's
    ``_pack_latents``)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: (B, h/2 · w/2, 4C) -> (B, C, h, w) (``_unpack_latents``)."""
    b, _, features = tokens.shape
    x = tokens.view(b, h // 2, w // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, features // 4, h, w)


def image_ids(rows: int, cols: int, top: int = 0, left: int = 0, device: Any = None, dtype: Any = None) -> torch.Tensor:
    """(rows · cols, 3) rotary ids (0, top + i, left + j) of a token grid, row-major
    (FluxPipeline's ``_prepare_latent_image_ids`` at top = left = 0)."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = ids[..., 1] + (torch.arange(rows)[:, None] + top)
    ids[..., 2] = ids[..., 2] + (torch.arange(cols)[None, :] + left)
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


class FluxAdapter(FlowMatchingAdapter):
    """FLUX.1 text-to-image transformers (dev, schnell and fine-tunes). Text encoding goes through
    the pipeline's own ``encode_prompt`` (CLIP pooled + T5 sequence; LoRA scales apply).

    ``positions``: "view" (default) or "canvas" (module docstring); ``true_cfg_scale``: true
    classifier-free guidance with the negative prompt (1: off, the default); ``max_sequence_length``:
    T5 tokens (512, FluxPipeline's default)."""

    family = "flux"
    label = "FLUX.1"
    description = "FLUX.1 dev / schnell (FluxTransformer2DModel)"
    Options = FluxOptions
    pipeline_class = "FluxPipeline"
    pipelines = ("FluxPipeline",)
    network_classes = ("FluxTransformer2DModel",)
    multi_controlnet = "FluxMultiControlNetModel"
    tokens_per_patch = 4
    checkpoint_blocks = "double_blocks."
    positions: str
    true_cfg_scale: float

    @property
    def sampling_defaults(self) -> tuple[int, float]:
        """FluxPipeline's 28 steps at guidance 3.5 (dev); 4 steps for schnell (no guidance embedding)."""
        return (28, 3.5) if self.transformer.config.guidance_embeds else (4, 0.0)

    explicit_sigmas = True
    max_shift_default = 1.15
    controlnet_positive_only = True

    @classmethod
    def single_file_config(cls, shapes: dict[str, tuple[int, ...]]) -> str:
        """FLUX.1-dev for a transformer with a guidance embedding, else FLUX.1-schnell."""
        guided = has_tensors(shapes, "guidance_in.")
        return "black-forest-labs/FLUX.1-dev" if guided else "black-forest-labs/FLUX.1-schnell"

    @property
    def native_latent_size(self) -> tuple[int, int]:
        """FluxPipeline's default image size in latent pixels (128: 1024 px)."""
        size = getattr(self.pipe, "default_sample_size", 128)
        return size, size

    @property
    def guidance_embedded(self) -> bool:
        """Whether the transformer takes the guidance scale as an input (guidance-distilled: dev)."""
        return bool(self.transformer.config.guidance_embeds)

    def classifier_free(self, slots: Any) -> bool:
        """True CFG (FluxPipeline's): ``true_cfg_scale`` > 1 and some negative prompt given; the
        guidance embedding (dev) costs no second branch."""
        return self.true_cfg_scale > 1 and any(n for slot in slots.negatives for n in slot)

    def condition(self, slots: Any, num_images: int) -> tuple[PromptEmbeddings, list[float]]:
        """Prompts encoded once; true CFG when ``true_cfg_scale`` > 1 and some negative is given; the
        guidance embedding (dev) of each slot is the slot's ``guidance_scale``."""
        cond = self.encode(slots.prompts, slots.negatives, num_images, self.classifier_free(slots))
        if self.guidance_embedded:
            scales = torch.tensor(slots.guidance, dtype=torch.float32, device=self.device)
            per_image = scales[:, None].expand(-1, cond.batch).contiguous()  # (P, B)
            cond.positive["guidance"] = per_image
            if cond.negative is not None:
                cond.negative["guidance"] = per_image  # FluxPipeline: the same embedding in both branches
        return cond, [self.true_cfg_scale] * len(slots.prompts)

    def encode(
        self,
        prompts: Sequence[Sequence[str]],
        negatives: Sequence[Sequence[str]],
        num_images: int,
        guidance: bool,
    ) -> PromptEmbeddings:
        slots = len(prompts)

        def encoded(texts: list[str]) -> dict[str, torch.Tensor]:
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=texts,
                prompt_2=None,
                device=self.device,
                num_images_per_prompt=num_images,
                max_sequence_length=self.max_sequence_length,
            )
            return {
                "encoder_hidden_states": split_slots(embeds, slots),
                "pooled_projections": split_slots(pooled, slots),
            }

        positive = encoded([p for slot in prompts for p in slot])
        negative = encoded([n for slot in negatives for n in slot]) if guidance else None
        return PromptEmbeddings(positive, negative)

    def unet_kwargs(self, cond: PromptEmbeddings, jobs: Sequence[Job], canvas: tuple[int, int]) -> dict[str, Any]:
        slots = [job.prompt for job in jobs]
        kwargs = {name: cond.gather(name, slots) for name in cond.positive}
        if self.positions == "canvas":
            kwargs["positions"] = cond.cached(
                ("positions", tuple(job.view for job in jobs), canvas[1]),
                lambda: self._row_offsets(jobs, canvas[1], cond.batch, cond.negative is not None),
            )
        return kwargs

    def _row_offsets(self, jobs: Sequence[Job], canvas_width: int, batch: int, guided: bool) -> torch.Tensor:
        """(rows, 2) token offsets (top, left) of each input row's view, in the rows' order (both
        guidance branches, negatives first, when ``guided``)."""
        p = self.patch_size
        offsets = torch.tensor([[job.view.top // p, (job.view.left % canvas_width) // p] for job in jobs])
        offsets = offsets.repeat_interleave(batch, dim=0)
        return torch.cat([offsets, offsets]) if guided else offsets

    def network_calls(self, kwargs: dict[str, Any]) -> int:
        positions = kwargs.get("positions")
        return 1 if positions is None else len(torch.unique(positions, dim=0))

    def predict(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """v for the crops ``x`` (rows, C, h, w): packed to tokens, through the transformer with the
        text ids (zeros) and image ids of the views, unpacked."""
        _, _, h, w = x.shape

        def run(tokens: torch.Tensor, timestep: torch.Tensor, ids: dict[str, torch.Tensor], **rest: Any) -> Any:
            return self.transformer(hidden_states=tokens, timestep=timestep, return_dict=False, **ids, **rest)[0]

        return unpack_latents(self._per_position(x, t, kwargs, run), h, w)

    def _per_position(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any], call: Any) -> Any:
        """``call(tokens, timestep, ids, **kwargs)`` for the packed crops ``x``: ``ids`` holds the
        text ids (zeros) and the views' image ids; every row at once, or with canvas positions one
        call per distinct view position (its branches and images together), merged back in row order."""
        kwargs = dict(kwargs)
        positions = kwargs.pop("positions", None)
        n, _, h, w = x.shape
        tokens = pack_latents(x)
        text = kwargs["encoder_hidden_states"]
        txt_ids = torch.zeros(text.shape[1], 3, device=x.device, dtype=text.dtype)
        timestep = t.expand(n).to(x.dtype) / 1000

        def run(rows: Any, top: int, left: int) -> Any:
            img_ids = image_ids(h // 2, w // 2, top, left, device=x.device, dtype=text.dtype)
            ids = {"img_ids": img_ids, "txt_ids": txt_ids}
            selected = map_tensors(lambda v: v[rows] if v.dim() > 0 and v.shape[0] == n else v, kwargs)
            return call(tokens[rows], timestep[rows], ids, **selected)

        if positions is None:
            return run(slice(None), 0, 0)
        out: Any = None
        for top, left in torch.unique(positions, dim=0).tolist():
            rows = ((positions[:, 0] == top) & (positions[:, 1] == left)).nonzero().flatten().to(x.device)
            part = run(rows, top, left)
            if out is None:
                out = map_tensors(lambda v: v.new_zeros((n, *v.shape[1:])), part)
            out = _place(out, part, rows)
        return out

    def adopt_controlnet(self, net: Any, name: str) -> Any:
        from multidiffusion.models.controlnet import check_transformer_controlnet

        keys = ("in_channels", "joint_attention_dim", "pooled_projection_dim")
        check_transformer_controlnet(net, self.transformer, "FluxControlNetModel", "FLUX.1", keys, name)
        if net.config.guidance_embeds and not self.guidance_embedded:
            raise ValueError(f"{name}: this FLUX ControlNet embeds guidance but the transformer does not (schnell)")
        return net

    def control_input(self, net: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """FluxControlNetPipeline's control input: the VAE's latents of the image in [-1, 1], cropped at
        the views' latent offsets (packed in :meth:`run_controlnet`); for a ControlNet with an
        ``input_hint_block`` (XLabs) the pixels in [-1, 1], cropped at the views' pixel offsets."""
        if net.input_hint_block is not None:
            return 2 * pixels - 1, self.vae_scale_factor
        return self.control_latents(pixels), 1

    def run_controlnet(
        self,
        net: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        kwargs: dict[str, Any],
        control: dict[str, Any],
        guess_mode: bool,
    ) -> Any:
        """(block samples, single block samples) of ``net``, as FluxControlNetPipeline calls it."""
        cond = control["controlnet_cond"]
        control = {**control, "controlnet_cond": cond if net.input_hint_block is not None else pack_latents(cond)}
        if not net.config.guidance_embeds:
            kwargs = {k: v for k, v in kwargs.items() if k != "guidance"}

        def run(tokens: torch.Tensor, timestep: torch.Tensor, ids: dict[str, torch.Tensor], **rest: Any) -> Any:
            return net(hidden_states=tokens, timestep=timestep, return_dict=False, **ids, **rest)

        return self._per_position(x, t, {**kwargs, **control}, run)

    def residual_kwargs(self, residuals: Any) -> dict[str, Any]:
        blocks, single = residuals
        repeat = self.controlnets[0].input_hint_block is not None  # as the pipeline: its first ControlNet's kind
        return {
            "controlnet_block_samples": blocks,
            "controlnet_single_block_samples": single,
            "controlnet_blocks_repeat": repeat,
        }


def _place(out: Any, part: Any, rows: torch.Tensor) -> Any:
    """``part``'s rows written into ``out`` at ``rows``, leaf by leaf (None leaves stay None)."""
    if isinstance(out, torch.Tensor):
        return out.index_copy(0, rows, part.to(out.dtype))
    if isinstance(out, (list, tuple)):
        return type(out)(_place(o, p, rows) for o, p in zip(out, part))
    return out
