"""Qwen-Image (and Qwen-Image-Edit): a dual-stream MMDiT (``QwenImageTransformer2DModel``) over
Qwen2.5-VL text features and the latents of a causal 3D VAE, as diffusers' ``QwenImagePipeline``
runs it.

- **Text**: the pipeline's own ``encode_prompt``: each prompt in the pipeline's chat template (a
  system turn asking to describe the image, the prompt as the user turn, the assistant's turn
  opened), run through Qwen2.5-VL; the features are its last hidden states with the padding and
  the template's first tokens (``prompt_template_encode_start_idx``: the system turn) dropped, cut to
  ``max_sequence_length``. Prompts then have different lengths: they are kept padded to one length
  with a mask over each row's tokens (``encoder_hidden_states_mask``), given to the transformer
  only when some row is padded, as the pipeline does. The text tokens' rotary positions follow the
  image's, so padding changes none of them.
- **Latents** are the VAE's (B, 16, H/8, W/8), the frame axis of the causal 3D VAE removed
  (:mod:`multidiffusion.models.qwenimage_vae`; the pipeline's (B, 16, 1, H/8, W/8) packed to tokens):
  ``latents=`` takes them so, ``output_type="latent"`` returns them so. Normalised per channel,
  x = (z − latents_mean) / latents_std (the default :class:`~multidiffusion.vae.latents.ScaledLatents`
  of the VAE view's config). Each view is packed into 2x2 patches as tokens (FLUX.1's packing, the
  pipeline's ``_pack_latents``) and unpacked back.
- **Positions** (``positions``): the transformer makes its rotary positions from ``img_shapes``,
  *centred* on the image (``scale_rope``: rows −⌈h/2⌉..⌊h/2⌋−1, likewise columns), the text
  after them (from max(h/2, w/2) on). ``"view"`` (default) gives every view the positions of an
  image of its own size, as the pipeline gives a whole image; ``"canvas"`` gives each view the rows
  and columns of its place in the canvas's centred grid and the text the canvas's start, so the
  views' positions are those of one canvas-sized image (rows of a batch at different places are
  separate transformer calls, since the transformer takes one set of positions per call). The
  default is local because of how the model was trained: on whole images of many sizes and aspect
  ratios, each centred on its own grid (the centring was chosen so positions stay in the trained
  range as images grow), never on a window of a larger image. A view shown as an image of its own
  size is the training distribution; rotary attention between image tokens depends only on
  differences of positions, which both choices give alike, but canvas positions move the views
  away from the centre and the text past max(H/2, W/2) of the canvas, far beyond any trained image
  on a wide panorama. Both are measurable on real weights (the seam metric in the benchmarks).
- **Timestep** t / 1000 (the transformer multiplies again), the prediction v, fused by Eq. 5.
- **Schedule**: sigmas linspace(1, 1/n, n), shifted by μ from the token count of the *view* (what
  the model sees) with the scheduler's own settings (Qwen-Image's: exponential time shift up to
  8192 tokens, max shift 0.9).
- **Guidance**: true classifier-free guidance as the pipeline defines it, on the engine's
  ``guidance_scale`` (the pipeline's ``true_cfg_scale``; 4.0 by default): v = v_u + s (v_c − v_u),
  then rescaled token by token to the conditional prediction's norm, v · ‖v_c‖ / ‖v‖, the norm
  over each 2x2 patch's 64 features (:meth:`QwenImageAdapter.guide`). On when s > 1; the negative
  prompt defaults to the empty prompt (the pipeline guides only when given one; its examples give
  " "). A guidance-distilled transformer (``guidance_embeds``) takes ``guidance_scale`` as its
  guidance embedding instead and runs without CFG, one evaluation per view, as FLUX.1-dev.

At one view covering the canvas this is QwenImagePipeline, and img2img QwenImageImg2ImgPipeline,
step for step (``tests/test_qwenimage.py``). Editing (Qwen-Image-Edit, the ``edit`` task): each view
also sees reference latents (:meth:`QwenImageAdapter.reference_inputs`, ``tests/test_edit.py``).
ControlNets (``QwenImageControlNetModel``) as QwenImageControlNetPipeline runs them:
:mod:`multidiffusion.models.qwenimage_controlnet` (``tests/test_qwenimage_controlnet.py``). Not
here: the layered and inpainting pipelines' own inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from multidiffusion.engine.adapter import PromptEmbeddings, map_tensors, split_slots
from multidiffusion.engine.fusion import Job
from multidiffusion.models.flow import FlowMatchingAdapter
from multidiffusion.models.flux import pack_latents, unpack_latents
from multidiffusion.models.options import ModelOptions, max_sequence_length, positions
from multidiffusion.models.qwenimage_controlnet import QwenImageControlNet
from multidiffusion.models.qwenimage_positions import placed_rope
from multidiffusion.models.qwenimage_vae import ImageVae

__all__ = ["QwenImageAdapter", "QwenImageOptions"]

REFERENCE = "reference_latents"
"""The model input holding each row's reference latents (editing): a list of (rows, C, h_i, w_i)."""


@dataclass(frozen=True)
class QwenImageOptions(ModelOptions):
    positions: str = positions()
    max_sequence_length: int = max_sequence_length(512)


class QwenImageAdapter(QwenImageControlNet, FlowMatchingAdapter):
    """Qwen-Image text-to-image and Qwen-Image-Edit transformers. ``positions``: "view" (default)
    or "canvas" (module docstring); ``max_sequence_length``: Qwen2.5-VL tokens of every prompt after
    the template's dropped prefix (512, QwenImagePipeline's default)."""

    family = "qwenimage"
    label = "Qwen-Image"
    description = "Qwen-Image / Qwen-Image-Edit (QwenImageTransformer2DModel)"
    Options = QwenImageOptions
    pipeline_class = "QwenImagePipeline"
    pipelines = ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageEditPipeline")
    network_classes = ("QwenImageTransformer2DModel",)
    components = ("vae", "scheduler", "text_encoder", "tokenizer")
    tokens_per_patch = 4
    explicit_sigmas = True
    sampling_defaults = (50, 4.0)
    reference_area = 1024 * 1024
    """Pixels of a whole reference image as QwenImageEditPipeline brings it (its VL encoder's image)."""
    positions: str

    def __init__(self, pipe: Any, **options: Any):
        self.processor = getattr(pipe, "processor", None)  # Qwen-Image-Edit's: the VL encoder sees images
        self.edit_pipe = pipe if type(pipe).__name__.startswith("QwenImageEdit") else None
        self._image_vae: tuple[Any, ImageVae] | None = None
        super().__init__(pipe, **options)

    @classmethod
    def check_network(cls, pipe: Any) -> None:
        """A transformer over 2x2 patches of the VAE's ``z_dim`` channels (64 inputs)."""
        latent = pipe.vae.config.z_dim
        channels = pipe.transformer.config.in_channels
        if channels != 4 * latent:
            raise ValueError(
                f"the QwenImageTransformer2DModel takes {channels} input channels but Qwen-Image takes {4 * latent} "
                f"(the VAE's {latent} latent channels in 2x2 patches); use a text-to-image or Edit model"
            )

    @property
    def vae(self) -> ImageVae:
        """The pipeline's causal 3D VAE as an image VAE (:class:`~multidiffusion.models.qwenimage_vae.ImageVae`)."""
        video = self.pipe.vae
        if self._image_vae is None or self._image_vae[0] is not video:
            size = self.native_latent_size[0] * 2 ** len(video.config.temperal_downsample)
            self._image_vae = (video, ImageVae(video, sample_size=size))
        return self._image_vae[1]

    @property
    def native_latent_size(self) -> tuple[int, int]:
        """QwenImagePipeline's default image size in latent pixels (128: 1024 px)."""
        size = getattr(self.pipe, "default_sample_size", 128)
        return size, size

    @property
    def guidance_embedded(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    def classifier_free(self, slots: Any) -> bool:
        """True CFG when some slot's scale exceeds 1, unless the transformer embeds guidance."""
        return not self.guidance_embedded and max(slots.guidance) > 1.0

    def condition(self, slots: Any, num_images: int) -> tuple[PromptEmbeddings, list[float]]:
        """True CFG when some slot's scale exceeds 1; a guidance-distilled transformer takes each
        slot's scale as its guidance embedding and runs unguided. Slots that carry an ``image`` (the
        edit task's) are encoded by the Edit pipeline with that image, brought to
        :meth:`reference_size` as the pipeline brings it, in the VL encoder's view."""
        image = getattr(slots, "image", None)
        if image is not None:
            h, w = self.reference_size((image.height, image.width))
            image = self.edit_pipeline.image_processor.resize(image, h, w)
        cond = self.encode(slots.prompts, slots.negatives, num_images, self.classifier_free(slots), image=image)
        if not self.guidance_embedded:
            return cond, list(slots.guidance)
        scales = torch.tensor(slots.guidance, dtype=torch.float32, device=self.device)
        cond.positive["guidance"] = scales[:, None].expand(-1, cond.batch).contiguous()
        return cond, [1.0] * len(slots.prompts)

    def encode(
        self,
        prompts: Sequence[Sequence[str]],
        negatives: Sequence[Sequence[str]],
        num_images: int,
        guidance: bool,
        image: Any = None,
    ) -> PromptEmbeddings:
        """Prompts through the pipeline's ``encode_prompt`` (with ``image``: the Edit pipeline's, the
        VL encoder seeing the image), padded to one length with their masks."""
        slots = len(prompts)

        def encoded(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            if image is None:
                embeds, mask = self.pipe.encode_prompt(
                    prompt=texts,
                    device=self.device,
                    num_images_per_prompt=num_images,
                    max_sequence_length=self.max_sequence_length,
                )
            else:  # one text per call: the processor pairs each text's image token with one image
                rows = [
                    self.edit_pipeline.encode_prompt(
                        prompt=[text], image=image, device=self.device, num_images_per_prompt=num_images
                    )[0]
                    for text in texts
                ]
                length = max(r.shape[1] for r in rows)
                embeds = torch.cat([F.pad(r, (0, 0, 0, length - r.shape[1])) for r in rows])
                mask = torch.cat(
                    [F.pad(torch.ones(r.shape[:2], dtype=torch.long), (0, length - len(r[0]))) for r in rows]
                )
                return embeds, mask.to(embeds.device)
            if mask is None:
                mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            return embeds, mask

        positive = encoded([p for slot in prompts for p in slot])
        negative = encoded([n for slot in negatives for n in slot]) if guidance else None
        length = max(e.shape[1] for e, _ in [positive] + ([negative] if negative else []))

        def padded(pair: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
            embeds, mask = pair
            extra = length - embeds.shape[1]
            embeds, mask = F.pad(embeds, (0, 0, 0, extra)), F.pad(mask, (0, extra))
            return {
                "encoder_hidden_states": split_slots(embeds, slots),
                "encoder_hidden_states_mask": split_slots(mask, slots),
            }

        return PromptEmbeddings(padded(positive), padded(negative) if negative is not None else None)

    @property
    def edit_pipeline(self) -> Any:
        """The QwenImageEditPipeline this model was given (editing needs its processor)."""
        if self.edit_pipe is None:
            raise ValueError(
                "this Qwen-Image model is a text-to-image one (QwenImagePipeline): editing needs a Qwen-Image-Edit "
                "model (QwenImageEditPipeline, with its processor)"
            )
        return self.edit_pipe

    def guide(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        """QwenImagePipeline's true CFG: v = v_u + s (v_c − v_u), rescaled per token to ‖v_c‖."""
        combined = uncond + scale * (cond - uncond)
        return combined * (_token_norm(cond) / _token_norm(combined))

    def unet_kwargs(self, cond: PromptEmbeddings, jobs: Sequence[Job], canvas: tuple[int, int]) -> dict[str, Any]:
        slots = [job.prompt for job in jobs]
        kwargs = {name: cond.gather(name, slots) for name in cond.positive}
        if self.positions == "canvas":
            kwargs["positions"] = cond.cached(
                ("positions", tuple(job.view for job in jobs), canvas),
                lambda: self._places(jobs, canvas, cond.batch, cond.negative is not None),
            )
        return kwargs

    def _places(self, jobs: Sequence[Job], canvas: tuple[int, int], batch: int, guided: bool) -> torch.Tensor:
        """(rows, 4) per input row: its view's (top, left) and the canvas's (rows, columns), in tokens."""
        p = self.patch_size
        places = torch.tensor(
            [[job.view.top // p, (job.view.left % canvas[1]) // p, canvas[0] // p, canvas[1] // p] for job in jobs]
        )
        places = places.repeat_interleave(batch, dim=0)
        return torch.cat([places, places]) if guided else places

    def network_calls(self, kwargs: dict[str, Any]) -> int:
        places = kwargs.get("positions")
        return 1 if places is None else len(torch.unique(places, dim=0))

    def reference_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """QwenImageEditPipeline's size for a reference of ``size`` (height, width) pixels: its aspect
        ratio at an area of :attr:`reference_area`, sides multiples of 32 (``calculate_dimensions``)."""
        self.edit_pipeline  # noqa: B018 (refuses a text-to-image model in one line)
        ratio = size[1] / size[0]
        width = math.sqrt(self.reference_area * ratio)
        return round(width / ratio / 32) * 32, round(width / 32) * 32

    def reference_inputs(self, references: list[torch.Tensor]) -> dict[str, Any]:
        """Qwen-Image-Edit's reference latents: each (rows, C, h_i, w_i) packed into tokens appended
        after the image's, each its own entry of ``img_shapes`` (its own frame index in the rotary
        positions), as the Edit pipeline appends its one reference."""
        self.edit_pipeline  # noqa: B018
        return {REFERENCE: list(references)}

    def predict(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """v for the crops ``x`` (rows, C, h, w): packed to tokens (reference tokens after them when
        editing), through the transformer with the views' ``img_shapes``, unpacked."""
        kwargs = dict(kwargs)
        places = kwargs.pop("positions", None)
        if places is None:
            return self._call(x, t, kwargs, None)
        n = x.shape[0]
        out = torch.empty_like(x)
        for place in torch.unique(places, dim=0).tolist():
            rows = (places == torch.tensor(place)).all(dim=1).nonzero().flatten().to(x.device)
            selected = map_tensors(lambda v, rows=rows: v[rows] if v.dim() > 0 and v.shape[0] == n else v, kwargs)
            out[rows] = self._call(x[rows], t, selected, place)
        return out

    def _call(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any], place: list[int] | None) -> torch.Tensor:
        n, _, h, w = x.shape
        tokens = pack_latents(x)
        shapes = [(1, h // 2, w // 2)]
        for reference in kwargs.pop(REFERENCE, ()):
            tokens = torch.cat([tokens, pack_latents(reference.to(x.dtype))], dim=1)
            shapes.append((1, reference.shape[-2] // 2, reference.shape[-1] // 2))
        hints = kwargs.get("controlnet_block_samples")
        if hints is not None and tokens.shape[1] > hints[0].shape[1]:  # a ControlNet's: none for reference tokens
            kwargs["controlnet_block_samples"] = [F.pad(h, (0, 0, 0, tokens.shape[1] - h.shape[1])) for h in hints]
        mask = kwargs.pop("encoder_hidden_states_mask")
        guidance = kwargs.pop("guidance", None)
        with placed_rope(self.transformer, place):
            out = self.transformer(
                hidden_states=tokens,
                timestep=t.expand(n).to(x.dtype) / 1000,
                guidance=guidance,
                encoder_hidden_states_mask=None if bool(mask.all()) else mask,
                img_shapes=[shapes] * n,
                return_dict=False,
                **kwargs,
            )[0]
        return unpack_latents(out[:, : (h // 2) * (w // 2)], h, w)


def _token_norm(v: torch.Tensor) -> torch.Tensor:
    """‖·‖ of each 2x2 patch's features (its channels at 4 pixels) of (rows, C, h, w) latents, the
    norm of the pipeline's packed token, spread back over the patch's pixels: (rows, 1, h, w)."""
    squares = F.avg_pool2d(v.pow(2).sum(1, keepdim=True), 2) * 4
    return squares.sqrt().repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
