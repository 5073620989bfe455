"""How a conditioning kind declares itself: what it adds to the options, to ``Region``, to the
``MultiDiffusion`` class and to the command line, how it checks its values, and how it turns a
call's options into a prepared :class:`~multidiffusion.engine.conditioning.Conditioning`.

A kind is one :class:`ConditioningKind` (a module-level constant, e.g. ``CONTROLNET``) in its own
module of this package, listed in :data:`multidiffusion.conditionings.KINDS`. Its parts:

- ``name``: a short name (``"controlnet"``);
- ``Options``: a dataclass mixin (``@dataclass(kw_only=True)``) of its call-level option fields
  with defaults (``control_image=None``, ...); ``SamplingOptions`` inherits all of them through
  :class:`~multidiffusion.conditionings.ConditioningOptions`, so every task takes them;
- ``Args``: a ``TypedDict`` (``total=False``) of the same names and types, for the public
  methods' ``**kwargs: Unpack[...]``;
- ``RegionFields``: a dataclass mixin (``kw_only=True``) of per-``Region`` fields, or None;
- ``Methods``: a mixin of ``MultiDiffusion`` methods (``load_ip_adapter``, ...), or None;
- ``flags``: command-line flags, each a :class:`Flag` (flag, option field, argparse keyword
  arguments); a shell adds every kind's flags and maps them to the option fields;
- ``load_flags`` and ``load(pipeline, values, allow_pickle)``: flags that load the kind's weights
  (``--ip-adapter``: arguments of its ``Methods``' loader, never options, so stored settings never
  load a file) and what loads them into a ``MultiDiffusion`` (``values`` by field; ``allow_pickle``
  as the user typed it); a shell adds every kind's and calls every kind's ``load``;
- ``image_fields``: option fields that hold input images (PNGs record them as files with their
  SHA-256, ``--from`` asks for them again, trust rules apply); ``image_lists``: those of them that
  hold a list of images; ``region_image_fields``: the same for ``Region``'s fields;
- ``recorded_only``: keys its ``record()`` writes as a note of what was loaded (``ip_adapter_files``:
  file names and SHA-256), never settings: stored settings that hold them are read without them;
- ``check(options)``: validates (and normalises) its option fields in place; a clear
  ``ValueError`` naming the parameter and what is allowed. Called by ``SamplingOptions``;
- ``check_region(region)``: the same for a ``Region``'s fields; ``region_record(region)``: those
  fields as a region stores them (JSON-ready, only the ones set);
- ``prepare(context, options, task)``: once per call, after the task is built and its input
  prepared: a :class:`~multidiffusion.engine.conditioning.Conditioning`, or None when the call does
  not use this kind. ``context`` (:class:`Context`) holds the model adapter and the
  ``MultiDiffusion`` object; ``task`` the :class:`~multidiffusion.engine.task.Task` (its ``size``,
  ``region_slots()`` for per-region fields, ``canvas_input()`` for an input image at canvas size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from multidiffusion.engine.conditioning import Conditioning

__all__ = ["ConditioningKind", "Context", "Flag"]


@dataclass(frozen=True)
class Flag:
    """A command-line flag (``"--control-image"``) for option field ``field``, with argparse's
    keyword arguments (``help``, ``type``, ``action``, ...)."""

    flag: str
    field: str
    kwargs: dict[str, Any]


@dataclass
class Context:
    """What a kind's ``prepare`` may use besides the options and the task: the model's adapter
    (:class:`~multidiffusion.engine.adapter.ModelAdapter`: its ``pipe``, ``unet``, ControlNets, ...)
    and the ``MultiDiffusion`` object the call runs through (None when called without one)."""

    adapter: Any
    pipeline: Any = None


def _no_check(value: Any) -> None:
    return None


def _no_record(region: Any) -> dict[str, Any]:
    return {}


def _no_load(pipeline: Any, values: dict[str, Any], allow_pickle: bool = False) -> None:
    return None


def _nothing(context: Context, options: Any, task: Any) -> Conditioning | None:
    return None


@dataclass(frozen=True)
class ConditioningKind:
    """One kind of conditioning, declared (see the module docstring for each part)."""

    name: str
    Options: type | None = None
    Args: type | None = None
    RegionFields: type | None = None
    Methods: type | None = None
    flags: tuple[Flag, ...] = ()
    flag_group: str = ""
    load_flags: tuple[Flag, ...] = ()
    load: Callable[[Any, dict[str, Any], bool], None] = _no_load
    image_fields: tuple[str, ...] = ()
    recorded_only: tuple[str, ...] = ()
    image_lists: tuple[str, ...] = ()
    region_image_fields: tuple[str, ...] = ()
    check: Callable[[Any], None] = _no_check
    check_region: Callable[[Any], None] = _no_check
    region_record: Callable[[Any], dict[str, Any]] = _no_record
    prepare: Callable[[Context, Any, Any], Conditioning | None] = _nothing
