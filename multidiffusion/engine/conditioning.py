"""The engine's side of a conditioning: what acts on the model calls of one sampling call.

A conditioning (a ControlNet, LoRA switching, skip-layer guidance, an IP-Adapter: see
:mod:`multidiffusion.conditionings`, which declares them and prepares them from a call's options)
reaches the engine as a prepared :class:`Conditioning`. :class:`~multidiffusion.engine.sampler.GuidedModel`
holds a sequence of them and iterates it without naming any; the engine knows no concrete kind.

For a batch of jobs at step i of n the guided model builds its input rows x (the unconditional
rows first, then the conditional ones, jobs in order, ``per`` rows each) and the model's keyword
arguments, then for every conditioning that is :meth:`~Conditioning.active` at that step merges
:meth:`~Conditioning.model_inputs` into those keyword arguments (later conditionings see what
earlier ones added) and calls the model once. After classifier-free guidance
ε = ε_u + s (ε_c − ε_u) it adds every active conditioning's :meth:`~Conditioning.guidance_term`
(skip-layer guidance: s_l (ε_c − ε_skip)).

The contract, per sampling call (one ``run``; everything defaults to "does nothing"):

- ``attached(adapter)``: a context manager around the call (install attention processors or LoRA
  layers, restore them after);
- ``active(step, steps)``: whether it acts at step ``step`` of ``steps`` (the steps that run);
- ``shares_unconditional``: False when, while active, ε_u of two jobs over the same crop may differ
  (a per-view control crop, a per-region image): the guided model then evaluates every job's ε_u;
- ``branches_differ``: True when the unconditional rows get other inputs than the conditional ones
  (guess mode, an IP-Adapter's negative image embedding): then equal positive and negative prompts
  do not make guidance a no-op, and the runner keeps both branches;
- ``model_inputs(call) -> dict``: named model inputs for the rows of ``call`` (a :class:`ModelCall`:
  the adapter, input rows ``x``, timestep ``t``, ``jobs``, the model's ``kwargs`` so far, ``guided``,
  ``step`` of ``steps``), tensors with one row per row of ``call.x``, merged into the call's kwargs;
- ``guidance_term(call, cond, predict) -> tensor | None``: a term added to the guided prediction,
  asked of those with ``adds_guidance``; ``call`` holds the conditional rows only (``x``: the crops,
  ``kwargs``: theirs), ``cond`` their output ε_c, ``predict(x, kwargs)`` runs the model (counted);
- ``stats() -> dict``: counts of what it did (e.g. ``controlnet_calls``), added to the run's
  :class:`~multidiffusion.engine.sampler.SamplingStats` by name;
- ``record() -> dict``: its parameters as the result stores them (JSON-ready, API names).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Conditioning", "ModelCall", "Predict"]

Predict = Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]
"""(input rows, model keyword arguments) -> the model's output for those rows (counted in the stats)."""


@dataclass(frozen=True)
class ModelCall:
    """One call of the model for a batch of jobs at step ``step`` of ``steps``: input rows ``x``
    (with guidance, ``guided``: [unconditional rows; conditional rows], jobs in order, the same
    number of rows each; the unconditional rows may be fewer when jobs share them) at timestep
    ``t``, and the model's keyword arguments ``kwargs`` for those rows."""

    adapter: Any
    x: torch.Tensor
    t: torch.Tensor
    jobs: Sequence[Any]
    kwargs: dict[str, Any]
    guided: bool
    step: int
    steps: int


class Conditioning:
    """A prepared conditioning of one sampling call; the base class does nothing."""

    shares_unconditional: bool = True
    """False: while active, jobs over the same crop may have different ε_u (do not share it)."""
    branches_differ: bool = False
    """True: the unconditional rows get other inputs than the conditional ones (keep guidance on)."""
    adds_guidance: bool = False
    """True: :meth:`guidance_term` may add a term (the guided model asks only those that say so)."""

    def attached(self, adapter: Any) -> contextlib.AbstractContextManager:
        """Context around the sampling call (hooks installed, restored after)."""
        return contextlib.nullcontext()

    def active(self, step: int, steps: int) -> bool:
        """Whether it acts at step ``step`` of ``steps``."""
        return True

    def model_inputs(self, call: ModelCall) -> dict[str, Any]:
        """Model keyword arguments for the rows of ``call`` (merged into ``call.kwargs``)."""
        return {}

    def guidance_term(self, call: ModelCall, cond: torch.Tensor, predict: Predict) -> torch.Tensor | None:
        """A term added to the guided prediction of the conditional rows ``call.x`` (output
        ``cond``), or None. Only asked with guidance on and ``adds_guidance``."""
        return None

    def stats(self) -> dict[str, float]:
        """Counts of what it did in this call, by :class:`SamplingStats` name."""
        return {}

    def record(self) -> dict[str, Any]:
        """Its parameters as stored with the result (API names, JSON-ready)."""
        return {}
