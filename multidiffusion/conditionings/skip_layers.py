"""Skip-layer guidance (SD 3.5's, as ``StableDiffusion3Pipeline``): at the steps where the model's
adapter asks for it (:meth:`~multidiffusion.models.base.FamilyAdapter.skip_layer_pass`, set with
the model: ``skip_guidance_layers`` and ``skip_layer_guidance_scale`` / ``_start`` / ``_stop``), the
conditional rows run again with some of the model's layers skipped, ε_skip, and the guided
prediction gains

    ε = ε_u + s (ε_c − ε_u) + s_l (ε_c − ε_skip).

A model setting, not a call option: the kind has no options; its parameters are the adapter's
(recorded with the model's).
"""

from __future__ import annotations

from typing import Any

import torch

from multidiffusion.conditionings.base import ConditioningKind, Context
from multidiffusion.engine.conditioning import Conditioning, ModelCall, Predict
from multidiffusion.models.base import FamilyAdapter

__all__ = ["SKIP_LAYERS", "SkipLayerGuidance"]


class SkipLayerGuidance(Conditioning):
    """s_l (ε_c − ε_skip) at the steps where the adapter's ``skip_layer_pass`` gives a pass."""

    adds_guidance = True

    def __init__(self, adapter: Any):
        self.adapter = adapter

    def active(self, step: int, steps: int) -> bool:
        return self.adapter.skip_layer_pass(step, steps) is not None

    def guidance_term(self, call: ModelCall, cond: torch.Tensor, predict: Predict) -> torch.Tensor | None:
        skip = self.adapter.skip_layer_pass(call.step, call.steps)
        if skip is None:
            return None
        extra, scale = skip
        skipped = predict(call.x, {**call.kwargs, **extra})
        return scale * (cond - skipped)


def prepare(context: Context, options: Any, task: Any) -> Conditioning | None:
    """Skip-layer guidance when the model's adapter has its own ``skip_layer_pass`` (it says per step
    whether it acts)."""
    adapter = context.adapter
    if type(adapter).skip_layer_pass is FamilyAdapter.skip_layer_pass:
        return None
    return SkipLayerGuidance(adapter)


SKIP_LAYERS = ConditioningKind(name="skip_layers", prepare=prepare)
