"""IP-Adapter in the engine: image embeddings for every model input row, gated per prompt slot.

An IP-Adapter (Ye et al. 2023) adds to each cross-attention of the UNet a second attention over
``num_tokens`` tokens projected from an image's CLIP embedding c_img:

    Z = Attention(Q, K_text, V_text) + λ · Attention(Q, K_ip(c_img), V_ip(c_img))

diffusers' ``load_ip_adapter`` installs that (attention processors and the projection
``unet.encoder_hid_proj``); the UNet takes the embeddings as ``added_cond_kwargs["image_embeds"]``
(a list, one tensor per loaded IP-Adapter, one row per batch row). Classifier-free guidance gives
the unconditional rows the negative embedding (zeros for a plain IP-Adapter), as the diffusers
pipelines do.

MultiDiffusion feeds a batch of jobs (view F_i, prompt slot k) per model call; this module gives
each row the embedding of its slot's image: the canvas's image for every slot, or a region's own.
A slot with no image gets no IP-Adapter term at all: :class:`SlotGate` multiplies the projected
image tokens of its rows by 0, so K_ip = V_ip = 0 there and the second attention adds exactly 0
(softmax weights times zero values), the same output as with λ = 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from multidiffusion.engine.conditioning import Conditioning, ModelCall

__all__ = ["IPAdapterConditioning", "SlotGate", "SlotImage", "ip_adapter_scales", "set_ip_adapter_scales"]

SlotImage = list[tuple[torch.Tensor, torch.Tensor]]
"""One image's embeddings, per loaded IP-Adapter: (negative, positive), each (1, images, ...)."""


class SlotGate(nn.Module):
    """Stands in for ``unet.encoder_hid_proj`` during a run. Given ``{"embeds": [...], "gate": g}``
    (``g``: 1 or 0 per batch row) it projects the embeddings as the original module and multiplies
    each row's image tokens by its gate; given ``{"embeds": None, "gate": g}`` (no image at all) it
    returns zero tokens, ``tokens`` (count, width) per IP-Adapter; given a plain list it is the
    original module."""

    def __init__(self, projection: nn.Module, tokens: Sequence[tuple[int, int]]):
        super().__init__()
        self.projection = projection
        self.tokens = list(tokens)

    def forward(self, image_embeds: Any) -> Any:
        if not isinstance(image_embeds, Mapping):
            return self.projection(image_embeds)
        gate = image_embeds["gate"]
        if image_embeds["embeds"] is None:
            return [gate.new_zeros(gate.shape[0], 1, n, width) for n, width in self.tokens]
        tokens = self.projection(image_embeds["embeds"])
        return [t * gate.to(t.dtype).view(-1, *([1] * (t.dim() - 1))) for t in tokens]


def _ip_processors(unet: nn.Module) -> list[Any]:
    """The UNet's IP-Adapter attention processors (those with a ``scale`` list and ``to_k_ip``)."""
    return [p for p in unet.attn_processors.values() if hasattr(p, "to_k_ip") and hasattr(p, "scale")]


def ip_adapter_scales(unet: nn.Module) -> list[list[Any]]:
    """Each IP-Adapter processor's scales (one per loaded IP-Adapter), in processor order."""
    return [list(p.scale) for p in _ip_processors(unet)]


def set_ip_adapter_scales(unet: nn.Module, scales: Sequence[Sequence[Any]]) -> None:
    """Put back what :func:`ip_adapter_scales` returned."""
    for processor, scale in zip(_ip_processors(unet), scales):
        processor.scale = list(scale)


class IPAdapterConditioning(Conditioning):
    """The prepared IP-Adapter of one sampling call.

    ``slots``: prompt slot -> its image's embeddings (:data:`SlotImage`), or None for a slot that
    sees no image (all None: a call without an image on a model with an IP-Adapter loaded, which
    then runs as without it); ``batch``: rows per job (images per prompt); ``scale``: diffusers'
    ``set_ip_adapter_scale`` argument for this call (None: as the model is set); ``record``: what
    the result stores.

    ε_u of two jobs over the same crop is the same when all slots see an image with the same
    negative embedding (a canvas-wide image; a plain IP-Adapter's negative is zeros), or none
    does: only then may the guided model share the unconditional branch."""

    def __init__(
        self,
        slots: Sequence[SlotImage | None],
        batch: int,
        scale: Any = None,
        record: Mapping[str, Any] | None = None,
    ):
        self.slots = list(slots)
        self.batch = batch
        self.scale = scale
        self._record = dict(record or {})
        images = [s for s in self.slots if s is not None]
        self.gated = len(images) < len(self.slots)
        self._zeros = [(torch.zeros_like(n), torch.zeros_like(p)) for n, p in images[0]] if images else None
        self.branches_differ = bool(images)  # the unconditional rows see the negative image embedding
        self.shares_unconditional = not images or (
            not self.gated and all(all(torch.equal(a[0], b[0]) for a, b in zip(images[0], s)) for s in images)
        )
        self._rows: dict[tuple[tuple[int, ...], int], dict[str, Any]] = {}
        self.rows_seen = 0  # batch rows given an image, over the run

    @contextlib.contextmanager
    def attached(self, adapter: Any) -> Iterator[None]:
        """For the run: the call's scale on the IP-Adapter processors, and the slot gate in front of
        the image projection when some slot sees no image; both put back after."""
        unet = adapter.unet
        processors = _ip_processors(unet)
        if not processors:
            raise ValueError("ip_adapter_image: this model has no IP-Adapter loaded; call load_ip_adapter first")
        saved = ip_adapter_scales(unet)
        projection = unet.encoder_hid_proj
        try:
            if self.scale is not None:
                adapter.pipe.set_ip_adapter_scale(self.scale)
            if self.gated:
                width = unet.config.cross_attention_dim
                unet.encoder_hid_proj = SlotGate(projection, [(n, width) for n in processors[0].num_tokens])
            yield
        finally:
            unet.encoder_hid_proj = projection
            set_ip_adapter_scales(unet, saved)

    def model_inputs(self, call: ModelCall) -> dict[str, Any]:
        """``added_cond_kwargs["image_embeds"]`` for the rows of ``call.x``: the unconditional rows
        first (every job's, or with a shared unconditional branch as many as there are, all alike),
        then each job's ``batch`` conditional rows; the slot's image, or gated off."""
        prompts = tuple(job.prompt for job in call.jobs)
        unconditional = call.x.shape[0] - len(prompts) * self.batch if call.guided else 0
        key = (prompts, unconditional)
        if key not in self._rows:
            self._rows[key] = self._make_rows(prompts, unconditional, call.x.device, call.x.dtype)
        rows = self._rows[key]
        self.rows_seen += rows["seen"]
        added = {**call.kwargs.get("added_cond_kwargs", {}), "image_embeds": rows["image_embeds"]}
        return {"added_cond_kwargs": added}

    def _make_rows(
        self, prompts: tuple[int, ...], unconditional: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Any]:
        gate = [float(self.slots[p] is not None) for p in prompts]
        if unconditional == len(prompts) * self.batch:  # every job's own unconditional rows
            negatives, negative_gate = list(prompts), gate
        else:  # shared: every slot alike (all with an image and the same negative, or none)
            shared = unconditional // self.batch
            negatives, negative_gate = [prompts[0]] * shared, gate[:1] * shared
        gates = torch.tensor(negative_gate + gate, device=device).repeat_interleave(self.batch)
        seen = int(sum(negative_gate + gate)) * self.batch
        if self._zeros is None:  # no image at all: zero image tokens everywhere
            return {"image_embeds": {"embeds": None, "gate": gates.to(dtype)}, "seen": 0}
        embeds = []
        for a, zeros in enumerate(self._zeros):
            images = [self.slots[p][a] if self.slots[p] is not None else zeros for p in (*negatives, *prompts)]
            rows = [image[0] for image in images[: len(negatives)]] + [image[1] for image in images[len(negatives) :]]
            embeds.append(torch.cat(rows).repeat_interleave(self.batch, dim=0).to(device=device, dtype=dtype))
        if not self.gated:
            return {"image_embeds": embeds, "seen": seen}
        return {"image_embeds": {"embeds": embeds, "gate": gates.to(dtype)}, "seen": seen}

    def record(self) -> dict[str, Any]:
        return dict(self._record)
