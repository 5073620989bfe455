"""Prompt embeddings kept between calls, by text, for a loop that renders one layout after another
(:mod:`multidiffusion.live`): a stroke that moves a mask re-encodes nothing, a new prompt on one
region encodes that region's prompt only. It stands where the runner encodes a call's prompts
(``RunSettings.prompts``, beside :class:`~.text_encoders.EncodedPrompts`, which re-encodes every
call's prompts while the encoders are loaded)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from multidiffusion.engine.adapter import PromptEmbeddings

__all__ = ["PromptCache"]


class PromptCache:
    """Prompt embeddings kept between calls, by text: stands where the runner encodes a call's
    prompts (``RunSettings.prompts``). Each prompt slot (a region's prompt, the background's) is
    conditioned alone (``adapter.condition`` of that slot, its guidance scale included) and the
    slots' tensors stacked, so a slot whose text did not change is a hit: the same tensors as one
    call's encoding where each prompt is encoded on its own (CLIP pads every prompt to 77 tokens;
    T5 to ``max_sequence_length``). Where that can't hold, the whole call is the key: slots that
    don't stack (padded to a call's longest prompt) or guided and unguided slots in one call (the
    negatives are encoded for all or none). ``hits`` and ``misses`` count slots (or calls).

    The key holds the adapter and the names of the loaded LoRAs; after changing a LoRA's weight or
    a textual inversion, call :meth:`clear`. ``fallback`` (the model's own encoder of prompts)
    serves the calls after its text encoders were released."""

    def __init__(self, fallback: Any = None, max_entries: int = 64):
        self.fallback = fallback
        self.max_entries = int(max_entries)
        self.scope: tuple = ()
        self.hits = 0
        self.misses = 0
        self._kept: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def condition(self, adapter: Any, slots: Any, num_images: int) -> tuple[PromptEmbeddings, list[float]]:
        """The embeddings of ``slots`` (as ``adapter.condition``), from the cache where it has them."""
        if self.fallback is not None and getattr(self.fallback, "released", False):
            return self.fallback.condition(adapter, slots, num_images)
        guidance = [float(g) for g in slots.guidance]
        base = (id(adapter), self.scope, int(num_images))
        if len({g > 1.0 for g in guidance}) == 1:  # every slot guided or none: each slot encodes alone as in the call
            parts = [
                self._get(
                    (*base, tuple(p), tuple(n), g),
                    lambda p=p, n=n, g=g: adapter.condition(_Slots(tuple(p), tuple(n), g), num_images),
                )
                for p, n, g in zip(slots.prompts, slots.negatives, guidance)
            ]
            stacked = _stacked([cond for cond, _ in parts])
            if stacked is not None:
                return stacked, [g for _, slot_guidance in parts for g in slot_guidance]
        key = (*base, _texts(slots.prompts), _texts(slots.negatives), tuple(guidance))
        cond, guidance = self._get(key, lambda: adapter.condition(slots, num_images))
        return _fresh(cond), list(guidance)

    def _get(self, key: tuple, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._kept:
                self.hits += 1
                self._kept.move_to_end(key)
                return self._kept[key]
        value = make()
        with self._lock:
            self.misses += 1
            self._kept[key] = value
            while len(self._kept) > self.max_entries:
                self._kept.popitem(last=False)
        return value


def _texts(slots: Any) -> tuple:
    return tuple(tuple(slot) for slot in slots)


def _fresh(cond: PromptEmbeddings) -> PromptEmbeddings:
    """``cond`` with its own dicts and an empty per-call cache (tensors shared, not copied)."""
    return PromptEmbeddings(dict(cond.positive), None if cond.negative is None else dict(cond.negative))


def _stacked(parts: list[PromptEmbeddings]) -> PromptEmbeddings | None:
    """One-slot embeddings (1, B, ...) stacked into (P, B, ...), as a call encoding P slots at once;
    None where they don't stack (a family that pads each call's prompts to its longest)."""
    try:
        positive = {k: torch.cat([p.positive[k] for p in parts]) for k in parts[0].positive}
        if any(p.negative is None for p in parts):
            return PromptEmbeddings(positive, None) if all(p.negative is None for p in parts) else None
        return PromptEmbeddings(positive, {k: torch.cat([p.negative[k] for p in parts]) for k in parts[0].negative})
    except (RuntimeError, KeyError):
        return None


@dataclass(frozen=True)
class _Slots:
    """One prompt slot, as the adapter reads a call's slots (``engine.adapter.Prompts``)."""

    prompt: tuple[str, ...]
    negative: tuple[str, ...]
    scale: float

    @property
    def prompts(self) -> list[tuple[str, ...]]:
        return [self.prompt]

    @property
    def negatives(self) -> list[tuple[str, ...]]:
        return [self.negative]

    @property
    def guidance(self) -> list[float]:
        return [self.scale]
