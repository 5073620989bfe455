"""What the engine needs from a model family, and nothing more.

An adapter encodes prompts once per call and, for each batch of views, gives the model the keyword
arguments that condition it (text embeddings; for SDXL also pooled embeddings and per-view time
ids). Guidance, views, fusion and the scheduler are the engine's, shared by every family.

The engine calls the model only through the adapter:

- :meth:`ModelAdapter.condition`: prompts encoded once, and the classifier-free guidance scale of
  each prompt slot (a guidance-distilled FLUX runs without CFG and takes its scale as an input);
- :meth:`ModelAdapter.set_timesteps`: the schedule, given the size of the views the model sees
  (flow-matching models shift it by their token count);
- :meth:`ModelAdapter.unet_kwargs`: the conditioning of a batch of jobs, every tensor in it with one
  row per model input row (the engine selects rows when guidance branches share work);
- :meth:`ModelAdapter.predict`: the model's output for a batch of crops (B, C, h, w), the same shape
  back; a diffusion transformer packs the crops into tokens and unpacks its prediction here;
- :meth:`ModelAdapter.network_calls`: forward passes of one ``predict`` (for the statistics).

What conditions the model beyond the prompts (ControlNets, IP-Adapters, LoRA sets, skip-layer
guidance) reaches it through :class:`~multidiffusion.engine.conditioning.Conditioning`; how a family
runs its ControlNets, options and latents are the family's (:mod:`multidiffusion.models.base`).

Everything a model takes that is the same for all rows (positional ids, the timestep) is built in
:meth:`~ModelAdapter.predict`, never put in the keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from multidiffusion.engine.fusion import Job
from multidiffusion.engine.noising import is_flow_matching

__all__ = ["ModelAdapter", "PromptEmbeddings", "Prompts", "map_tensors", "select_rows"]


class Prompts(Protocol):
    """The prompts of a call as the adapter reads them (a task's prompt slots): P slots of B' texts
    each, their negatives, and each slot's classifier-free guidance scale."""

    prompts: Sequence[Sequence[str]]
    negatives: Sequence[Sequence[str]]
    guidance: Sequence[float]


@dataclass
class PromptEmbeddings:
    """Encoded prompts: for each named input a tensor (P, B, ...) for P prompt slots and B images.

    ``negative`` is None when classifier-free guidance is off.
    """

    positive: dict[str, torch.Tensor]
    negative: dict[str, torch.Tensor] | None
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def num_slots(self) -> int:
        return next(iter(self.positive.values())).shape[0]

    @property
    def batch(self) -> int:
        return next(iter(self.positive.values())).shape[1]

    def gather(self, name: str, prompts: Sequence[int]) -> torch.Tensor:
        """Input ``name`` for jobs with these prompt slots: (k*B, ...) or, with guidance,
        (2*k*B, ...) with all negatives first; cached, since the same groups recur every step."""

        def make() -> torch.Tensor:
            pos = torch.cat([self.positive[name][p] for p in prompts])
            if self.negative is None:
                return pos
            return torch.cat([torch.cat([self.negative[name][p] for p in prompts]), pos])

        return self.cached((name, tuple(prompts)), make)

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per key for this call: for adapter inputs that recur every step."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


class ModelAdapter:
    """What the engine asks of a model, with defaults that fit UNets (a family's adapter derives
    from :class:`multidiffusion.models.base.FamilyAdapter`, which adds what the rest of the package
    asks: options, latents <-> VAE, pipelines)."""

    family = "base"
    patch_size: int = 1
    """Latent pixels per side of one model token: every view, stride and window offset is a multiple
    of it (2 for FLUX and SD 3, whose transformers take 2x2 patches; 1 for UNets)."""
    shares_prefix: bool = True
    """Whether guidance branches may share the first UNet layers (:mod:`~multidiffusion.engine.shared_prefix`)."""

    def __init__(self, pipe: Any):
        self.pipe = pipe

    @property
    def unet(self) -> torch.nn.Module:
        """The denoising network: the UNet, or a diffusion transformer (``pipe.transformer``)."""
        return self.pipe.unet

    @property
    def vae(self) -> torch.nn.Module:
        return self.pipe.vae

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel (a family's, from its VAE)."""
        raise NotImplementedError

    @property
    def latent_channels(self) -> int:
        """Channels of the canvas: the VAE's latents (an inpainting UNet takes more, see below)."""
        return self.vae.config.latent_channels

    @property
    def extra_channels(self) -> int:
        """UNet input channels beyond the latents: 0, or latents + 1 for an inpainting UNet (the mask
        and the masked image's latents, which the inpainting tasks compose into every view's input)."""
        return self.unet.config.in_channels - self.latent_channels

    @property
    def native_latent_size(self) -> tuple[int, int]:
        """The UNet's training size in latent pixels (height, width): the default window."""
        size = self.unet.config.sample_size
        return (size[0], size[1]) if isinstance(size, (list, tuple)) else (size, size)

    @property
    def prediction_type(self) -> str:
        return self.pipe.scheduler.config.get("prediction_type", "epsilon")

    @property
    def sampling_defaults(self) -> tuple[int, float]:
        """(num_inference_steps, guidance_scale) when a call leaves them unset: the family's diffusers
        pipeline defaults (SD 1.x/2.x: 50 steps at 7.5)."""
        return 50, 7.5

    def parameters(self) -> dict[str, Any]:
        """Family-specific settings that change the output, recorded with each image (PNG metadata)."""
        return {}

    def encode(
        self,
        prompts: Sequence[Sequence[str]],
        negatives: Sequence[Sequence[str]],
        num_images: int,
        guidance: bool,
    ) -> PromptEmbeddings:
        """Encode P prompt slots of B' prompts each (and their negatives) for ``num_images`` each."""
        raise NotImplementedError

    def unet_kwargs(self, cond: PromptEmbeddings, jobs: Sequence[Job], canvas: tuple[int, int]) -> dict[str, Any]:
        """Keyword arguments of the model call for a batch of jobs (``canvas`` in latent pixels)."""
        raise NotImplementedError

    def classifier_free(self, slots: Prompts) -> bool:
        """Whether a call with these prompt slots runs classifier-free guidance: a second, negative
        branch of every window (the cost estimate counts its rows). diffusers' rule: some slot's
        scale exceeds 1. A family whose guidance is embedded, distilled away or on another scale
        says so here, and its :meth:`condition` follows the same rule."""
        return max(slots.guidance) > 1.0

    def condition(self, slots: Prompts, num_images: int) -> tuple[PromptEmbeddings, list[float]]:
        """The prompts encoded once for the call, and the classifier-free guidance scale of each slot:
        guidance runs when :meth:`classifier_free` says so."""
        guided = self.classifier_free(slots)
        return self.encode(slots.prompts, slots.negatives, num_images, guided), list(slots.guidance)

    def set_timesteps(self, scheduler: Any, steps: int, device: Any, view: tuple[int, int]) -> None:
        """Set ``steps`` timesteps on ``scheduler`` for views of ``view`` (rows, columns) latent
        pixels, the largest the model sees; UNet families' schedules don't depend on it. A
        flow-matching scheduler is refused: these models were trained on the DDPM family's noising."""
        if is_flow_matching(scheduler):
            raise ValueError(
                f"scheduler: {type(scheduler).__name__} is a flow-matching scheduler (for SD 3 and FLUX), but this "
                f"{self.family.upper()} model was trained with DDPM-style noising; use ddim, euler, dpm++2m or another "
                "of its family"
            )
        scheduler.set_timesteps(steps, device=device)

    def guide(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        """The guided prediction of one batch from its two branches: classifier-free guidance,
        ε_u + s (ε_c − ε_u) (a family whose pipeline guides otherwise overrides it: Qwen-Image
        rescales the result per token to the conditional branch's norm)."""
        return uncond + scale * (cond - uncond)

    def predict(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """The model's output for the crops ``x`` (rows, C, h, w) at timestep ``t``, conditioned by
        ``kwargs`` (:meth:`unet_kwargs`, rows selected by the engine): (rows, latent channels, h, w)."""
        return self.unet(x, t, return_dict=False, **kwargs)[0]

    def network_calls(self, kwargs: dict[str, Any]) -> int:
        """Forward passes of the network one :meth:`predict` with these ``kwargs`` makes (for the
        run's statistics): 1, unless the adapter splits a batch (FLUX with canvas positions)."""
        return 1


def split_slots(flat: torch.Tensor, slots: int) -> torch.Tensor:
    """(P*B, ...) as returned by a pipeline's ``encode_prompt`` to (P, B, ...)."""
    return flat.reshape(slots, flat.shape[0] // slots, *flat.shape[1:])


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    """``value`` (tensors nested in dicts, lists and tuples; other leaves kept) with ``fn`` applied
    to every tensor."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(fn, v) for v in value)
    return value


def select_rows(value: Any, full: int, rows: torch.Tensor) -> Any:
    """``value`` (model keyword arguments, nested) with every batch-sized tensor (``full`` rows)
    reduced to ``rows``."""

    def select(v: torch.Tensor) -> torch.Tensor:
        if v.dim() > 0 and v.shape[0] == full:
            return v.index_select(0, rows.to(v.device))
        return v

    return map_tensors(select, value)
