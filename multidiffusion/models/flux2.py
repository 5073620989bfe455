"""FLUX.2 [dev] (Black Forest Labs, 2025): a Mistral Small 3 text encoder, a 32-channel VAE whose
latents are 2x2-patchified and batch-normalised, a ``Flux2Transformer2DModel`` over 128-channel
tokens with 4-axis rotary positions, and a distilled guidance embedding; as diffusers'
``Flux2Pipeline`` runs it. [klein] (:mod:`multidiffusion.models.flux2_klein`) extends this adapter.

- **Latents.** The canvas is in the VAE's own layout, (B, 32, H/8, W/8), normalised as the pipeline
  normalises its latents: FLUX.2's VAE keeps a batch norm's running mean and variance over the 128
  channels of its latents *patchified* 2x2 (channel 4c + 2i + j holds channel c at offset (i, j) of
  each patch), and the model's latents are (patchify(z) − mean) / √(var + eps). That map is
  :class:`Flux2Latents` (:attr:`Flux2Adapter.latent_format`): patchify, normalise, unpatchify, so
  every encode and decode (img2img, inpainting, upscaling, tiled decode, bootstrapping's colour
  images) goes through it, and ``latents=`` / ``output_type="latent"`` use the VAE's layout as for
  the other families. The patchified, normalised (B, 128, H/16, W/16) tensor the pipeline calls
  ``latents`` is patchify(canvas); its tokens are FLUX.1's packing of the canvas
  (:func:`~multidiffusion.models.flux.pack_latents`: same channel order, row-major).
- **Text**: the pipeline's own ``encode_prompt``: each prompt in a chat of FLUX.2's system message
  and a user turn through the processor's chat template, padded to ``max_sequence_length``, and the
  hidden states of Mistral's layers 10, 20 and 30 stacked per token (3 x 5120 features).
- **Positions** (4 axes: time, row, column, sequence): text tokens at (0, 0, 0, l), image tokens at
  (0, i, j, 0). ``positions="view"`` (default) gives every view the ids of an image of its own size,
  as the pipeline gives a whole image; ``"canvas"`` adds the view's place on the canvas (top/2,
  left/2), each distinct place one transformer call (the transformer reads one set of ids per call).
  Why local by default: FLUX.2 was trained on whole images of many sizes and aspect ratios (up to
  4 MP), each image's grid counted from (0, 0), with reference images told apart by the time axis
  (10, 20, ...), never on a window of a larger image; a view shown as an image of its own size is
  what it saw. Rotary attention between image tokens only depends on differences of positions,
  which both choices give alike; canvas ids change where the image sits relative to the text
  (always at rows/columns 0) and, on a wide canvas, reach columns the model never saw with a
  native-size image. Canvas positions remain the option to measure on real weights (the seam metric).
- **Timestep** t / 1000, as the pipeline (the transformer scales by 1000 again); the fused quantity
  is the velocity the transformer predicts.
- **Schedule**: sigmas linspace(1, 1/n, n) shifted (exponentially) by FLUX.2's empirical μ
  (``compute_empirical_mu``), a function of the image's token count *and* the number of steps; here
  of the token count of a *view* (what the model sees), not the canvas.
- **Guidance**: [dev] is guidance-distilled: ``guidance_scale`` (4.0 by default) is an input of the
  transformer (its guidance embedding), one evaluation per view and step, no classifier-free
  guidance and no negative prompt (``Flux2Pipeline`` has none; a negative prompt given is not used);
  each prompt slot may carry its own scale (regions).

- **Reference images** (``md.edit``, :mod:`multidiffusion.tasks.edit`): the pipeline's ``image=``
  encodes each reference (the posterior's mode, normalised as above), packs it into tokens appended
  after the image's, the k-th (k = 0, 1, ...) at rotary ids (10 + 10k, i, j, 0): its own time
  index, its grid counted from (0, 0); the transformer's output is cut back to the image tokens.
  Here reference 0 is each view's crop of the input (at the view's own place with canvas
  positions), reference 1 the optional whole image at the pipeline's size (≤ 1 MP, sides
  multiples of 16: :meth:`Flux2Adapter.reference_size`). The prompt does not see the image (the
  pipeline's Mistral / Qwen3 ``encode_prompt`` takes none; only its caption upsampling, not done here,
  would read it). At one view this is Flux2Pipeline / Flux2KleinPipeline with ``image=``
  (``tests/test_flux2_edit.py``).
- **Single files**: a transformer file in BFL's or diffusers' names (told by
  ``single_stream_modulation.``) loads through ``Flux2Transformer2DModel.from_single_file``;
  [klein] 4B / 9B by the text width of its ``txt_in`` (:meth:`Flux2Adapter.single_file_config`).

At one view covering the canvas this is Flux2Pipeline step for step (``tests/test_flux2.py``).
Not here: caption upsampling, ControlNets (diffusers has none for FLUX.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from multidiffusion.engine.adapter import PromptEmbeddings, split_slots
from multidiffusion.engine.fusion import Job
from multidiffusion.models.flow import FlowMatchingAdapter
from multidiffusion.models.flux import FluxAdapter, pack_latents, unpack_latents
from multidiffusion.models.options import ModelOptions, max_sequence_length, positions

__all__ = ["Flux2Adapter", "Flux2Latents", "Flux2Options", "is_klein", "patchify", "unpatchify"]


@dataclass(frozen=True)
class Flux2Options(ModelOptions):
    positions: str = positions()
    max_sequence_length: int = max_sequence_length(512)


def patchify(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 4C, h/2, w/2), channel 4c + 2i + j holding channel c at offset (i, j) of
    each 2x2 patch (Flux2Pipeline's ``_patchify_latents``)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patchify` (``_unpatchify_latents``)."""
    b, c4, h, w = x.shape
    x = x.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c4 // 4, h * 2, w * 2)


@dataclass(frozen=True, eq=False)
class Flux2Latents:
    """FLUX.2's latents <-> its VAE's: x = unpatchify((patchify(z) − μ) / σ) with the VAE's batch-norm
    running mean μ and σ = √(running var + eps) over the 128 patchified channels (what Flux2Pipeline
    does around ``vae.encode`` / ``vae.decode``), kept in the VAE's (B, 32, h, w) layout."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, vae: torch.nn.Module) -> Flux2Latents:
        bn = vae.bn
        return cls(bn.running_mean.detach().clone(), torch.sqrt(bn.running_var + vae.config.batch_norm_eps))

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        return (
            self.mean.view(shape).to(like.device, like.dtype),
            self.std.view(shape).to(like.device, like.dtype),
        )

    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latents)
        return unpatchify(patchify(latents) * std + mean)

    def from_vae(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return unpatchify((patchify(z) - mean) / std)


def image_ids(rows: int, cols: int, top: int = 0, left: int = 0, device: Any = None, time: int = 0) -> torch.Tensor:
    """(rows · cols, 4) rotary ids (time, top + i, left + j, 0) of a token grid, row-major (Flux2Pipeline's
    ``_prepare_latent_ids`` at time = top = left = 0; its ``_prepare_image_ids`` of the k-th reference
    image at time = 10 + 10k)."""
    zero = torch.zeros(1, dtype=torch.int64)
    grid = torch.cartesian_prod(torch.tensor([time]), torch.arange(rows) + top, torch.arange(cols) + left, zero)
    return grid.to(device=device, dtype=torch.int64)


def text_ids(length: int, device: Any = None) -> torch.Tensor:
    """(length, 4) rotary ids (0, 0, 0, l) of the text tokens (``_prepare_text_ids``)."""
    ids = torch.zeros(length, 4, dtype=torch.int64, device=device)
    ids[:, 3] = torch.arange(length, device=device)
    return ids


REFERENCES = "reference_latents"
"""The model input holding each row's reference latents (editing): a list of (rows, 32, h_k, w_k)."""

REFERENCE_TIME = 10
"""The time-axis spacing of reference images' rotary ids (``_prepare_image_ids``' ``scale``)."""


def is_klein(pipe: Any) -> bool:
    """Whether ``pipe`` is a FLUX.2 [klein] pipeline (a ``Flux2Klein*`` class, or a Qwen3 text encoder
    beside the FLUX.2 transformer) rather than [dev] (Mistral 3)."""
    encoder = type(getattr(pipe, "text_encoder", None)).__name__
    return type(pipe).__name__.startswith("Flux2Klein") or encoder.startswith("Qwen3")


class Flux2Adapter(FlowMatchingAdapter):
    """FLUX.2 [dev] text-to-image. ``positions``: "view" (default) or "canvas" (module docstring);
    ``max_sequence_length``: Mistral tokens of every prompt, chat template and system message
    included (512, Flux2Pipeline's default)."""

    family = "flux2"
    label = "FLUX.2 [dev]"
    description = "FLUX.2 [dev] (Flux2Transformer2DModel, Mistral 3 text encoder)"
    Options = Flux2Options
    pipeline_class = "Flux2Pipeline"
    pipelines = ("Flux2Pipeline",)
    network_classes = ("Flux2Transformer2DModel",)
    components = ("vae", "scheduler", "text_encoder", "tokenizer")
    tokens_per_patch = 4
    explicit_sigmas = True
    positions: str
    sampling_defaults = (50, 4.0)  # type: ignore[assignment]  # Flux2Pipeline's steps and guidance scale

    klein = False
    """Whether the family is [klein] (a Qwen3 text encoder) rather than [dev] (Mistral 3)."""

    reference_area = 1024 * 1024
    """Pixels above which the pipeline brings a reference image down to this area (``image=``)."""

    checkpoint_blocks = ("single_stream_modulation.",)  # BFL's .lin. and diffusers' .linear.

    @classmethod
    def single_file_config(cls, shapes: dict[str, tuple[int, ...]]) -> str:
        """FLUX.2 [klein] by its text width (Qwen3 4B: 7680, 8B: 12288), else [dev]."""
        width = next(
            (s[1] for k, s in shapes.items() if k.endswith(("txt_in.weight", "context_embedder.weight"))), None
        )
        return {7680: "black-forest-labs/FLUX.2-klein-4B", 12288: "black-forest-labs/FLUX.2-klein-9B"}.get(
            width, "black-forest-labs/FLUX.2-dev"
        )

    @classmethod
    def claims(cls, pipe: Any) -> bool:
        """A pipeline with a ``Flux2Transformer2DModel`` and this variant's text encoder (:func:`is_klein`)."""
        return super().claims(pipe) and is_klein(pipe) == cls.klein

    @property
    def native_latent_size(self) -> tuple[int, int]:
        """The pipeline's default image size in latent pixels (128: 1024 px)."""
        size = getattr(self.pipe, "default_sample_size", 128)
        return size, size

    @property
    def latent_format(self) -> Flux2Latents:
        """Patchified, batch-norm-normalised latents, in the VAE's layout (module docstring)."""
        return Flux2Latents.of(self.vae)

    @property
    def guidance_embedded(self) -> bool:
        """Whether the transformer takes the guidance scale as an input ([dev]: yes)."""
        return bool(self.transformer.config.guidance_embeds)

    def shift_mu(self, tokens: int, steps: int, config: Any) -> float:
        """FLUX.2's empirical μ for ``tokens`` image tokens (a view's) and ``steps`` steps, as its
        pipelines compute it (``compute_empirical_mu``; the scheduler's base/max shift are not read)."""
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        return compute_empirical_mu(image_seq_len=tokens, num_steps=steps)

    def classifier_free(self, slots: Any) -> bool:
        """[dev]: never (its guidance is embedded)."""
        return False

    def condition(self, slots: Any, num_images: int) -> tuple[PromptEmbeddings, list[float]]:
        """Prompts encoded once, no classifier-free guidance; each slot's ``guidance_scale`` becomes
        the transformer's guidance input."""
        cond = self.encode(slots.prompts, slots.negatives, num_images, self.classifier_free(slots))
        if self.guidance_embedded:
            scales = torch.tensor(slots.guidance, dtype=torch.float32, device=self.device)
            cond.positive["guidance"] = scales[:, None].expand(-1, cond.batch).contiguous()  # (P, B)
        return cond, [1.0] * len(slots.prompts)

    def encode(
        self,
        prompts: Sequence[Sequence[str]],
        negatives: Sequence[Sequence[str]],
        num_images: int,
        guidance: bool,
    ) -> PromptEmbeddings:
        """The pipeline's ``encode_prompt`` of the prompts and, when ``guidance``, of the negatives."""
        slots = len(prompts)

        def encoded(texts: list[str]) -> dict[str, torch.Tensor]:
            embeds, _ = self.pipe.encode_prompt(
                prompt=texts,
                device=self.device,
                num_images_per_prompt=num_images,
                max_sequence_length=self.max_sequence_length,
            )
            return {"encoder_hidden_states": split_slots(embeds, slots)}

        positive = encoded([p for slot in prompts for p in slot])
        negative = encoded([n for slot in negatives for n in slot]) if guidance else None
        return PromptEmbeddings(positive, negative)

    def unet_kwargs(self, cond: PromptEmbeddings, jobs: Sequence[Job], canvas: tuple[int, int]) -> dict[str, Any]:
        slots = [job.prompt for job in jobs]
        kwargs = {name: cond.gather(name, slots) for name in cond.positive}
        if self.positions == "canvas":  # (top, left) in tokens per row, both branches: as FLUX.1's
            kwargs["positions"] = cond.cached(
                ("positions", tuple(job.view for job in jobs), canvas[1]),
                lambda: FluxAdapter._row_offsets(self, jobs, canvas[1], cond.batch, cond.negative is not None),
            )
        return kwargs

    def network_calls(self, kwargs: dict[str, Any]) -> int:
        positions = kwargs.get("positions")
        return 1 if positions is None else len(torch.unique(positions, dim=0))

    def reference_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Flux2Pipeline's size for a reference image of ``size`` (height, width) pixels: over
        :attr:`reference_area` (1 MP) scaled down to it (each side truncated), then each side floored
        to a multiple of 16 (the VAE's 8 times the 2x2 patch)."""
        h, w = size
        if h * w > self.reference_area:
            scale = math.sqrt(self.reference_area / (h * w))
            h, w = int(h * scale), int(w * scale)
        multiple = 2 * self.vae_scale_factor
        return h // multiple * multiple, w // multiple * multiple

    def reference_inputs(self, references: list[torch.Tensor]) -> dict[str, Any]:
        """FLUX.2's reference images: each (rows, 32, h_k, w_k) packed into tokens after the image's,
        the k-th at time index 10 + 10k (module docstring)."""
        return {REFERENCES: list(references)}

    def predict(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """v for the crops ``x`` (rows, 32, h, w): packed to 128-channel tokens (reference tokens after
        them when editing), through the transformer with the text ids and the views' image ids (one
        call, or one per distinct view place with canvas positions), cut back to the image tokens,
        unpacked."""
        n, _, h, w = x.shape
        positions = kwargs.get("positions")
        text = kwargs["encoder_hidden_states"]
        guidance = kwargs.get("guidance")
        dtype = self.transformer.dtype
        tokens = pack_latents(x).to(dtype)
        references = [pack_latents(r.to(x.dtype)).to(dtype) for r in kwargs.get(REFERENCES, ())]
        shapes = [r.shape[-2:] for r in kwargs.get(REFERENCES, ())]
        timestep = t.expand(n).to(x.dtype) / 1000
        txt_ids = text_ids(text.shape[1], x.device)

        def run(rows: Any, top: int, left: int) -> torch.Tensor:
            ids = [image_ids(h // 2, w // 2, top, left, x.device)]
            for k, (rh, rw) in enumerate(shapes):  # the view's crop at the view's place, the whole image at (0, 0)
                place = (top, left) if k == 0 else (0, 0)
                ids.append(image_ids(rh // 2, rw // 2, *place, x.device, time=REFERENCE_TIME * (k + 1)))
            return self.transformer(
                hidden_states=torch.cat([tokens[rows], *(r[rows] for r in references)], dim=1),
                encoder_hidden_states=text[rows],
                timestep=timestep[rows],
                img_ids=torch.cat(ids),
                txt_ids=txt_ids,
                guidance=None if guidance is None else guidance[rows],
                return_dict=False,
            )[0][:, : tokens.shape[1]]

        if positions is None:
            out = run(slice(None), 0, 0)
        else:
            out = tokens.new_empty(tokens.shape)
            for top, left in torch.unique(positions, dim=0).tolist():
                rows = ((positions[:, 0] == top) & (positions[:, 1] == left)).nonzero().flatten().to(x.device)
                out[rows] = run(rows, top, left).to(out.dtype)
        return unpack_latents(out, h, w).to(x.dtype)
