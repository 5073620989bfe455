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

- **ControlNet** (``ZImageControlNetModel``, the Z-Image-Turbo-Fun ControlNets), as
  ZImageControlNetPipeline runs it: the control image VAE-encoded (the posterior's mode, as the
  pipeline's ``argmax``), (z - shift_factor) * scaling_factor, zero channels appended up to the net's
  ``control_in_dim`` (the 2.x nets' 33: their inpainting inputs, zeros in the plain pipeline), and each
  view given the crop of those canvas latents at its latent place (:mod:`~multidiffusion.models.flow`).
  The net shares the transformer's embedders and refiners (diffusers' ``from_transformer``) and runs
  on the same rows: both guidance branches with their own captions, no guess mode. Its output, one
  hint per main block it feeds, scaled by ``controlnet_conditioning_scale`` (the pipeline's default
  0.75; ours 1.0, as every family's), is added to the unified [image; caption] token stream after
  those blocks. Several nets sum their hints per block (held in diffusers' ``MultiControlNetModel``,
  a plain list here; diffusers has no Z-Image one). With canvas positions the net's rotary ids move
  with the view's as the transformer's do.

At one view covering the canvas this is ZImagePipeline step for step (``tests/test_zimage.py``), and
ZImageControlNetPipeline with a ControlNet (``tests/test_zimage_controlnet.py``).
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
    # single-file transformers (diffusers' and Tongyi's / ComfyUI's names alike carry the pad tokens)
    checkpoint_blocks = ("x_pad_token", "cap_pad_token")
    positions: str

    @classmethod
    def single_file_config(cls, shapes: dict[str, tuple[int, ...]]) -> str:
        """Z-Image Turbo's configuration and components (diffusers' default for a Z-Image file: Base
        and Turbo files have the same tensors; pass config= for Base)."""
        return "Tongyi-MAI/Z-Image-Turbo"

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

    def classifier_free(self, slots: Any) -> bool:
        """ZImagePipeline's rule: guidance g > 0 (its scale is the engine's 1 + g)."""
        return max(slots.guidance) > 0

    def condition(self, slots: Any, num_images: int) -> tuple[PromptEmbeddings, list[float]]:
        """Prompts encoded once; guidance when some slot's g > 0, at the engine's scale 1 + g."""
        cond = self.encode(slots.prompts, slots.negatives, num_images, self.classifier_free(slots))
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
        hints = kwargs.pop("controlnet_block_samples", None)
        if hints is not None:  # to this call's unified length: its image tokens and longest caption
            length = _padded(self.tokens(x.shape[-2:])) + max(_padded(k) for k in lens)
            kwargs["controlnet_block_samples"] = {i: _fitted(h, length) for i, h in hints.items()}
        with _placed(self.transformer, _offsets(positions), self.transformer.config.axes_lens):
            out = self.transformer(images, timestep, captions, return_dict=False, **kwargs)[0]
        return -torch.stack([o.float() for o in out]).squeeze(2).to(x.dtype)

    def adopt_controlnet(self, net: Any, name: str) -> Any:
        """A ``ZImageControlNetModel`` made for this transformer (its width, heads and norms, blocks it
        feeds that exist), given the transformer's shared modules as ZImageControlNetPipeline does."""
        from diffusers import ZImageControlNetModel

        from multidiffusion.models.controlnet import check_controlnet_class

        check_controlnet_class(net, ("ZImageControlNetModel",), "Z-Image", name)
        c, m = net.config, self.transformer.config
        for key in ("dim", "n_heads", "n_kv_heads", "qk_norm", "norm_eps"):
            if c.get(key) != m.get(key):
                raise ValueError(
                    f"{name}: this ZImageControlNetModel was made for another Z-Image model ({key}={c.get(key)!r}) "
                    f"than the one loaded ({key}={m.get(key)!r}); use a ControlNet made for this model"
                )
        if max(c.control_layers_places) >= m.n_layers or (c.control_in_dim or 0) < m.in_channels:
            raise ValueError(
                f"{name}: this ZImageControlNetModel feeds blocks {list(c.control_layers_places)} with "
                f"{c.control_in_dim} control channels, but the transformer has {m.n_layers} blocks and "
                f"{m.in_channels} latent channels; use a ControlNet made for this model"
            )
        return ZImageControlNetModel.from_transformer(net, self.transformer)

    def control_input(self, net: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """ZImageControlNetPipeline's control context: the VAE's latents of the image in [-1, 1] with
        zero channels up to the net's ``control_in_dim``, cropped at the views' latent offsets."""
        latents = self.control_latents(pixels)
        extra = net.config.control_in_dim - latents.shape[1]
        return torch.cat([latents, latents.new_zeros((1, extra, *latents.shape[2:]))], dim=1), 1

    def run_controlnet(
        self,
        net: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        kwargs: dict[str, Any],
        control: dict[str, Any],
        guess_mode: bool,
    ) -> Any:
        """``net``'s hints for the crops ``x`` as ZImageControlNetPipeline calls it (each row an image
        of its own, its caption cut to its length), one per main transformer block (None where it
        feeds none), each padded to the longest unified length any row of the call can have, so
        that the hints of rows and of several nets add up (:meth:`predict` cuts them to its call's)."""
        feats, lens = kwargs["cap_feats"], kwargs["cap_lens"].tolist()
        n, _, h, w = x.shape
        dtype = self.transformer.dtype
        images = list(x.to(dtype).unsqueeze(2).unbind(0))
        context = list(control["controlnet_cond"].to(dtype).unsqueeze(2).unbind(0))
        captions = [feats[i, :k] for i, k in enumerate(lens)]
        timestep = (1000 - t.expand(n).to(torch.float32)) / 1000
        with _placed(net, _offsets(kwargs.get("positions")), self.transformer.config.axes_lens):
            hints = net(images, timestep, captions, context, conditioning_scale=control["conditioning_scale"])
        length = _padded(self.tokens((h, w))) + _padded(feats.shape[1])
        return tuple(_fitted(hints[i], length) if i in hints else None for i in range(len(self.transformer.layers)))

    def residual_kwargs(self, residuals: Any) -> dict[str, Any]:
        return {"controlnet_block_samples": {i: r for i, r in enumerate(residuals) if r is not None}}


SEQ_MULTI_OF = 32
"""The transformer pads image and caption tokens to multiples of this (diffusers' ``SEQ_MULTI_OF``)."""


def _padded(tokens: int) -> int:
    return -(-tokens // SEQ_MULTI_OF) * SEQ_MULTI_OF


def _fitted(hint: torch.Tensor, length: int) -> torch.Tensor:
    """A hint (rows, tokens, dim) cut or zero-padded to ``length`` tokens: past every row's own
    length its tokens are padding, which the transformer masks."""
    if hint.shape[1] >= length:
        return hint[:, :length]
    return torch.cat([hint, hint.new_zeros((hint.shape[0], length - hint.shape[1], hint.shape[2]))], dim=1)


def _offsets(positions: torch.Tensor | None) -> list[list[int]] | None:
    return None if positions is None else positions.tolist()


@contextmanager
def _placed(transformer: Any, offsets: list[list[int]] | None, axes_lens: Sequence[int]) -> Iterator[None]:
    """With ``offsets`` ((top, left) in tokens per input row), the image rotary ids of ``transformer``
    (or of its ControlNet, which builds its own the same way) moved by them for the call (its
    ``patchify_and_embed`` wrapped on the instance, then restored); ``axes_lens``: the rotary tables'
    lengths (the transformer's config)."""
    if offsets is None:
        yield
        return
    rows, cols = axes_lens[1:]
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
