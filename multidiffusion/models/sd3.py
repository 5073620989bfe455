"""Stable Diffusion 3 and 3.5: CLIP-L and CLIP-G (with projections) and T5, a pooled embedding,
standard classifier-free guidance, a transformer that patchifies its input itself.

The conditioning is StableDiffusion3Pipeline's ``encode_prompt``: the sequence is the two CLIP
encoders' penultimate hidden states concatenated along features, zero-padded to T5's width, then
T5's tokens appended along the sequence; the pooled projection is the two CLIP projections
concatenated. The transformer takes the view's latents (B, 16, h, w) as they are, cuts them into
2x2 patches and adds its positional embedding, a centre crop of its ``pos_embed_max_size`` grid
the size of the view (each view is "an image" of its own size, as the pipeline's whole image); the
timestep is passed as the scheduler gives it (0..1000).

**ControlNets** (``SD3ControlNetModel``, several as ``SD3MultiControlNetModel``), as
StableDiffusion3ControlNetPipeline: the control image VAE-encoded, (z - shift) * scale, or z * scale
for ControlNets with ``force_zeros_for_pooled_projection`` (InstantX's; they also get a zero pooled
projection), cropped per view at its latent offset (see :mod:`multidiffusion.models.flow`); both
guidance branches run it with their own prompt; a ControlNet without a text projection
(``joint_attention_dim`` None, SD 3.5 large's) gets no text, and one without its own positional
embedding (``use_pos_embed`` False) takes the transformer's, as the pipeline sets it. No guess mode.

**Skip-layer guidance** (SD 3.5 medium's optional ``skip_guidance_layers``, e.g. [7, 8, 9]), as the
pipeline: at steps i with start · n < i < stop · n (n the steps that run), with classifier-free
guidance on, each view's conditional rows run once more with those transformer blocks skipped and
the guided prediction gains ``skip_layer_guidance_scale`` (ε_c − ε_skip): one more transformer pass
(of half the rows) per model call in those steps.

Not here: IP-Adapters.
At one view covering the canvas this is StableDiffusion3Pipeline step for step
(``tests/test_dit_equivalence.py``), and StableDiffusion3ControlNetPipeline with a ControlNet
(``tests/test_dit_controlnet.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from multidiffusion.engine.adapter import PromptEmbeddings, split_slots
from multidiffusion.engine.fusion import Job
from multidiffusion.io.messages import shown
from multidiffusion.models.flow import FlowMatchingAdapter
from multidiffusion.models.options import ModelOptions, clip_skip, max_sequence_length, non_negative, option

__all__ = ["StableDiffusion3Adapter", "StableDiffusion3Options"]

_JOINT_BLOCK = re.compile(r"^(?:model\.diffusion_model\.)?joint_blocks\.(\d+)\.")


def _layers(name: str, value: Any) -> tuple[int, ...]:
    """``skip_guidance_layers`` as a tuple of block indices (checked against the model by the adapter)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of block indices, got {shown(value)}")
    return tuple(value)


def parse_layers(text: str) -> list[int]:
    """Block indices from the command line: '7,8,9'."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"expected block indices separated by commas (e.g. 7,8,9), got {shown(text)}") from None


@dataclass(frozen=True)
class StableDiffusion3Options(ModelOptions):
    clip_skip: int | None = clip_skip()
    max_sequence_length: int = max_sequence_length(256)
    skip_guidance_layers: tuple[int, ...] | None = option(
        None,
        check=_layers,
        parse=parse_layers,
        metavar="I,J,...",
        help="skip-layer guidance: transformer blocks skipped in its extra pass (e.g. 7,8,9 for SD 3.5 medium)",
    )
    skip_layer_guidance_scale: float = option(2.8, check=non_negative, parse=float, help="skip-layer guidance scale")
    skip_layer_guidance_start: float = option(
        0.01, check=non_negative, parse=float, help="fraction of the steps where skip-layer guidance starts"
    )
    skip_layer_guidance_stop: float = option(
        0.2, check=non_negative, parse=float, help="fraction of the steps where skip-layer guidance stops"
    )

    def check(self) -> None:
        start, stop = self.skip_layer_guidance_start, self.skip_layer_guidance_stop
        if not start <= stop <= 1:
            raise ValueError(
                "skip_layer_guidance_start and skip_layer_guidance_stop must satisfy 0 ≤ start ≤ stop ≤ 1, got "
                f"{start} and {stop}"
            )


class StableDiffusion3Adapter(FlowMatchingAdapter):
    """SD 3 / 3.5 (medium, large, large turbo) and their fine-tunes; ``clip_skip`` as in diffusers,
    ``max_sequence_length`` T5 tokens (256, the pipeline's default)."""

    family = "sd3"
    label = "SD 3"
    description = "Stable Diffusion 3 / 3.5 (SD3Transformer2DModel)"
    Options = StableDiffusion3Options
    pipeline_class = "StableDiffusion3Pipeline"
    pipelines = ("StableDiffusion3Pipeline",)
    network_classes = ("SD3Transformer2DModel",)
    multi_controlnet = "SD3MultiControlNetModel"
    checkpoint_blocks = "joint_blocks."
    sampling_defaults = (28, 7.0)  # StableDiffusion3Pipeline's
    explicit_sigmas = False
    max_shift_default = 1.16
    clip_skip: int | None
    skip_guidance_layers: tuple[int, ...] | None
    skip_layer_guidance_scale: float
    skip_layer_guidance_start: float
    skip_layer_guidance_stop: float

    def __init__(self, pipe: Any, **options: Any):
        super().__init__(pipe, **options)
        blocks = len(self.transformer.transformer_blocks)
        for layer in self.skip_guidance_layers or ():
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < blocks:
                raise ValueError(
                    f"skip_guidance_layers: each must be a transformer block index from 0 to {blocks - 1}, got "
                    f"{layer!r}"
                )

    @classmethod
    def single_file_config(cls, shapes: dict[str, tuple[int, ...]]) -> str:
        """SD 3.5 large for 38 joint blocks, SD 3.5 medium for MMDiT-X blocks (``attn2``), else SD 3 medium."""
        blocks = {int(m.group(1)) for k in shapes if (m := _JOINT_BLOCK.match(k))}
        if len(blocks) >= 38:
            return "stabilityai/stable-diffusion-3.5-large"
        if any(".x_block.attn2." in k for k in shapes):
            return "stabilityai/stable-diffusion-3.5-medium"
        return "stabilityai/stable-diffusion-3-medium-diffusers"

    @property
    def patch_size(self) -> int:  # type: ignore[override]
        return int(self.transformer.config.patch_size)

    def parameters(self) -> dict[str, Any]:
        """The options as set; skip-layer guidance's settings only with its layers."""
        out = super().parameters()
        return out if self.skip_guidance_layers else {k: v for k, v in out.items() if not k.startswith("skip_")}

    def skip_layer_pass(self, step: int, steps: int) -> tuple[dict[str, Any], float] | None:
        """StableDiffusion3Pipeline's skip-layer guidance: on at steps i with start · n < i < stop · n."""
        start, stop = self.skip_layer_guidance_start, self.skip_layer_guidance_stop
        if not self.skip_guidance_layers or not (steps * start < step < steps * stop):
            return None
        return {"skip_layers": list(self.skip_guidance_layers)}, self.skip_layer_guidance_scale

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
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=num_images,
            do_classifier_free_guidance=guidance,
            negative_prompt=flat_neg if guidance else None,
            clip_skip=self.clip_skip,
            max_sequence_length=self.max_sequence_length,
        )
        slots = len(prompts)
        positive = {"encoder_hidden_states": split_slots(pos, slots), "pooled_projections": split_slots(pooled, slots)}
        if not guidance:
            return PromptEmbeddings(positive, None)
        negative = {
            "encoder_hidden_states": split_slots(neg, slots),
            "pooled_projections": split_slots(neg_pooled, slots),
        }
        return PromptEmbeddings(positive, negative)

    def unet_kwargs(self, cond: PromptEmbeddings, jobs: Sequence[Job], canvas: tuple[int, int]) -> dict[str, Any]:
        slots = [job.prompt for job in jobs]
        return {name: cond.gather(name, slots) for name in cond.positive}

    def predict(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """v for the crops ``x`` (rows, C, h, w): the transformer patchifies them itself."""
        return self.transformer(hidden_states=x, timestep=t.expand(x.shape[0]), return_dict=False, **kwargs)[0]

    def adopt_controlnet(self, net: Any, name: str) -> Any:
        """Checked against the transformer; one without its own positional embedding (SD 3.5 large's
        ControlNets) gets a copy of the transformer's, as StableDiffusion3ControlNetPipeline does."""
        from multidiffusion.models.controlnet import check_transformer_controlnet

        keys = ("in_channels", "patch_size", "pooled_projection_dim")
        check_transformer_controlnet(net, self.transformer, "SD3ControlNetModel", "SD 3 / 3.5", keys, name)
        if net.config.get("use_pos_embed", True) is False:
            net.pos_embed = net._get_pos_embed_from_transformer(self.transformer).to(net.device, net.dtype)
        return net

    def control_input(self, net: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The VAE's latents of the control image, without the shift for InstantX's ControlNets."""
        return self.control_latents(pixels, shift=not net.config.force_zeros_for_pooled_projection), 1

    def run_controlnet(
        self,
        net: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        kwargs: dict[str, Any],
        control: dict[str, Any],
        guess_mode: bool,
    ) -> Any:
        """(block samples,) of ``net``, as StableDiffusion3ControlNetPipeline calls it."""
        pooled = kwargs["pooled_projections"]
        text = kwargs["encoder_hidden_states"] if net.config.joint_attention_dim is not None else None
        return net(
            hidden_states=x,
            timestep=t.expand(x.shape[0]),
            encoder_hidden_states=text,
            pooled_projections=torch.zeros_like(pooled) if net.config.force_zeros_for_pooled_projection else pooled,
            return_dict=False,
            **control,
        )

    def residual_kwargs(self, residuals: Any) -> dict[str, Any]:
        return {"block_controlnet_hidden_states": residuals[0]}
