"""Conditionings as plug-ins: ControlNet, LoRA switching per region, skip-layer guidance, ...

Each kind is declared in its own module as a
:class:`~multidiffusion.conditionings.base.ConditioningKind` (options, ``Region`` fields,
``MultiDiffusion`` methods, flags, image fields, checks, ``prepare``) and listed here, in
:data:`KINDS`; once per call every kind's ``prepare`` turns the options into a prepared
:class:`~multidiffusion.engine.conditioning.Conditioning` (or None), which the engine's guided model
iterates without naming any (:func:`prepare_conditionings`).

The composed classes give the rest of the package every kind's parts at once:

- :class:`ConditioningOptions`: the dataclass every task's options inherit (``SamplingOptions``);
- :class:`ConditioningArgs`: the ``TypedDict`` of the same names for the task methods'
  ``**kwargs: Unpack[...]``;
- :class:`ConditioningRegionFields`: the fields ``Region`` inherits;
- :class:`ConditioningMethods`: the methods ``MultiDiffusion`` inherits.

Adding a kind: its module(s), then here an import, its entry in :data:`KINDS` and its classes in the
bases of the composed classes it contributes to (written out so that type checkers and IDEs see
every field and argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from multidiffusion.conditionings import ip_adapter
from multidiffusion.conditionings.base import ConditioningKind, Context, Flag
from multidiffusion.conditionings.controlnet import (
    CONTROLNET,
    ControlNetArgs,
    ControlNetOptions,
    ControlNetRegionFields,
)
from multidiffusion.conditionings.loras import LORAS, LoraRegionFields
from multidiffusion.conditionings.skip_layers import SKIP_LAYERS
from multidiffusion.engine.conditioning import Conditioning

__all__ = [
    "KINDS",
    "Conditioning",
    "ConditioningArgs",
    "ConditioningKind",
    "ConditioningMethods",
    "ConditioningOptions",
    "ConditioningRegionFields",
    "Context",
    "Flag",
    "check_options",
    "check_region",
    "image_fields",
    "prepare_conditionings",
    "recorded_only",
    "region_image_fields",
    "region_record",
]

KINDS: tuple[ConditioningKind, ...] = (CONTROLNET, LORAS, SKIP_LAYERS, ip_adapter.IP_ADAPTER)
"""Every conditioning kind, in the order their checks run and their model inputs are merged
(guidance terms are added after guidance)."""


@dataclass(kw_only=True)
class ConditioningOptions(ControlNetOptions, ip_adapter.IPAdapterOptions):
    """Every kind's call-level option fields (keyword-only, with defaults)."""


class ConditioningArgs(ControlNetArgs, ip_adapter.IPAdapterArgs, total=False):
    """Every kind's keyword arguments of the task methods."""


@dataclass(kw_only=True)
class ConditioningRegionFields(ControlNetRegionFields, LoraRegionFields, ip_adapter.IPAdapterRegionFields):
    """Every kind's per-region fields (keyword-only, with defaults)."""


class ConditioningMethods(ip_adapter.IPAdapterMethods):
    """Every kind's ``MultiDiffusion`` methods."""


def check_options(options: Any) -> None:
    """Every kind's checks of its option fields (normalising them in place)."""
    for kind in KINDS:
        kind.check(options)


def check_region(region: Any) -> None:
    """Every kind's checks of a ``Region``'s fields."""
    for kind in KINDS:
        kind.check_region(region)


def region_record(region: Any) -> dict[str, Any]:
    """Every kind's fields of ``region`` as stored (only those set)."""
    return {k: v for kind in KINDS for k, v in kind.region_record(region).items()}


def image_fields(lists: bool = False) -> tuple[str, ...]:
    """The option fields that hold input images (``lists``: only those holding a list of them)."""
    return tuple(f for kind in KINDS for f in (kind.image_lists if lists else kind.image_fields))


def recorded_only() -> tuple[str, ...]:
    """Keys the kinds record as notes of what was loaded, never read back as settings."""
    return tuple(key for kind in KINDS for key in kind.recorded_only)


def region_image_fields() -> tuple[str, ...]:
    """The ``Region`` fields that hold input images."""
    return tuple(f for kind in KINDS for f in kind.region_image_fields)


def prepare_conditionings(context: Context, options: Any, task: Any) -> list[Conditioning]:
    """The call's prepared conditionings, in :data:`KINDS` order (those a call does not use left out)."""
    prepared = (kind.prepare(context, options, task) for kind in KINDS)
    return [c for c in prepared if c is not None]
