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

Declared as the ``loras`` kind: a ``Region`` field ``loras`` (adapter name -> weight); no
call-level option (the pipeline's active LoRAs are ``md.load_lora`` / ``set_adapters``'s).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from multidiffusion.conditionings.base import ConditioningKind, Context
from multidiffusion.engine.conditioning import Conditioning, ModelCall
from multidiffusion.io.messages import shown
from multidiffusion.io.ranges import MAX_LORA_WEIGHT, check_lora_weight

__all__ = ["LORAS", "MAX_LORA_WEIGHT", "LoraRegionFields", "LoraSwitch", "lora_key", "region_lora_sets"]

"""Largest LoRA weight magnitude (a region's; diffusers' scales are used at 0-2)."""

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


@dataclass(kw_only=True)
class LoraRegionFields:
    """``loras``: adapter name -> weight, LoRAs loaded with ``md.load_lora(..., adapter_name=...)``
    that this region's views run with instead of the pipeline's active ones (UNet only)."""

    loras: Mapping[str, float] | None = None


def check_region(region: Any) -> None:
    """A region's ``loras``: a table of adapter names to weights from -10 to 10 (made floats)."""
    if region.loras is None:
        return
    if not isinstance(region.loras, Mapping) or not all(isinstance(k, str) and k for k in region.loras):
        raise ValueError(f"loras must be a table of adapter name = weight, got {shown(region.loras)}")
    region.loras = {k: check_lora_weight(f"loras[{k!r}]", v) for k, v in region.loras.items()}


def region_record(region: Any) -> dict[str, Any]:
    return {"loras": dict(region.loras)} if region.loras is not None else {}


def region_lora_sets(region_slots: Sequence[tuple[int, str, Any]]) -> dict[int, tuple[LoraKey, str]]:
    """Prompt slot -> (its LoRA set, the parameter's name for errors) of the regions (a task's
    ``region_slots()``) that have their own; the task gives their jobs the set as ``group``, so
    :meth:`FusionPlan.batches` keeps them in batches of their own."""
    return {
        slot: (key, f"{name}.loras")
        for slot, name, region in region_slots
        if (key := lora_key(getattr(region, "loras", None))) is not None
    }


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


class LoraSwitching(Conditioning):
    """The :class:`LoraSwitch` of a call as a conditioning: each batch of jobs (one group, one LoRA
    set) switches the UNet to its set before the model call; restored when the call ends."""

    def __init__(self, switch: LoraSwitch):
        self.switch = switch

    def attached(self, adapter: Any) -> contextlib.AbstractContextManager:
        return self.switch.attached()

    def model_inputs(self, call: ModelCall) -> dict[str, Any]:
        self.switch.use(call.jobs[0].group)  # a batch holds one group (FusionPlan.batches)
        return {}

    def stats(self) -> dict[str, float]:
        return {"lora_switches": self.switch.switches, "lora_seconds": self.switch.seconds}


def prepare(context: Context, options: Any, task: Any) -> Conditioning | None:
    """The UNet's LoRA switch when some prompt has its own LoRA set, each set checked."""
    sets = region_lora_sets(task.region_slots())
    if not sets:
        return None
    adapter = context.adapter
    lister = getattr(adapter.pipe, "get_list_adapters", None)
    loaded = {n for names in (lister() if lister else {}).values() for n in names}
    switch = LoraSwitch(adapter.unet, loaded)
    for key, name in sets.values():
        switch.check(key, name)
    return LoraSwitching(switch)


LORAS = ConditioningKind(
    name="loras",
    RegionFields=LoraRegionFields,
    check_region=check_region,
    region_record=region_record,
    prepare=prepare,
)
