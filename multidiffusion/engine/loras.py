"""A LoRA set per prompt: regions may bring their own LoRAs (a character in one region, a style in
another), so the UNet's active adapters change between model calls.

Jobs carry a ``group`` (the LoRA set of their prompt slot) and :meth:`FusionPlan.batches` keeps
groups apart, so the adapters switch once per batch, never per view: at most one switch per LoRA
set per step. Switching goes through peft's layers directly (each LoRA layer's active adapters and
scales), which is what diffusers' ``set_adapters`` does too, minus its name checks on every call;
the state at the call's start (the LoRAs the user set on the pipeline) is restored after it and is
what prompts without their own LoRAs run with.

Only the UNet switches: prompts are encoded once per call, so a LoRA's text-encoder part (if any)
applies to every prompt when loaded with the pipeline's adapters active, and not per region.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["LoraSwitch", "lora_key"]

LoraKey = tuple[tuple[str, float], ...]


def lora_key(loras: Mapping[str, float] | None) -> LoraKey | None:
    """A hashable LoRA set (sorted (name, weight) pairs), None for "the pipeline's own"."""
    return None if loras is None else tuple(sorted((str(k), float(v)) for k, v in loras.items()))


def _lora_layers(unet: torch.nn.Module) -> list[Any]:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


class LoraSwitch:
    """Switches the UNet between LoRA sets: :meth:`use` a job group's set (None: the state the call
    began with); :meth:`attached` restores that state when the call ends. ``switches`` and
    ``seconds`` count what switching cost."""

    def __init__(self, unet: torch.nn.Module, loaded: set[str]):
        self.unet = unet
        self.layers = _lora_layers(unet)
        self.loaded = loaded
        self.current: LoraKey | None = None
        self.switches = 0
        self.seconds = 0.0
        self._start: list[tuple[Any, Any, dict[str, float]]] = []

    def check(self, key: LoraKey, name: str) -> None:
        """ValueError naming ``name`` when the set names an adapter that isn't loaded."""
        missing = sorted({n for n, _ in key} - self.loaded)
        if missing:
            loaded = ", ".join(sorted(self.loaded)) or "none (load them with md.load_lora(..., adapter_name=...))"
            raise ValueError(f"{name}: LoRA {missing[0]!r} is not loaded; loaded: {loaded}")

    def _snapshot(self) -> list[tuple[Any, Any, dict[str, float]]]:
        return [(m, list(m.active_adapters), dict(m.scaling)) for m in self.layers]

    def _restore(self, state: list[tuple[Any, Any, dict[str, float]]]) -> None:
        for module, active, scaling in state:
            module.set_adapter(active)
            module.scaling.update(scaling)

    def use(self, key: LoraKey | None) -> None:
        if key == self.current:
            return
        started = time.perf_counter()
        if key is None:
            self._restore(self._start)
        else:
            names = [n for n, _ in key]
            weights = dict(key)
            for module in self.layers:
                present = [n for n in names if n in module.scaling]
                module.set_adapter(present or list(module.active_adapters))
                for n in present:
                    module.set_scale(n, weights[n])
                if not present:  # this layer has none of the set's adapters: it must not add any
                    module.set_adapter([])
        self.current = key
        self.switches += 1
        self.seconds += time.perf_counter() - started

    @contextlib.contextmanager
    def attached(self) -> Iterator[LoraSwitch]:
        self._start = self._snapshot()
        self.current = None
        try:
            yield self
        finally:
            self._restore(self._start)
            self.current = None
