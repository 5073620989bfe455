"""Model options: the settings a model family takes at load time (``from_pretrained(...,
clip_skip=2)``), declared once per family as a frozen dataclass of :func:`option` fields.

Everything else derives from that declaration (:mod:`multidiffusion.models` collects the registered
families): the family's defaults (the fields' defaults), its checks (:meth:`ModelOptions.__post_init__`:
choices, the fields' own ``check`` and the class's cross-field :meth:`ModelOptions.check`), the
keywords ``MultiDiffusion`` accepts, the options a PNG or scene records and reads back
(:meth:`ModelOptions.record`), and the command line's flags (:func:`cli_flags`).

A leaf module (no torch): the command line builds its flags from it without loading a model.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from multidiffusion.io.messages import shown

__all__ = [
    "ModelOptions",
    "cli_flags",
    "clip_skip",
    "max_sequence_length",
    "non_negative",
    "option",
    "option_fields",
]


def option(
    default: Any,
    *,
    help: str,
    choices: Sequence[Any] = (),
    check: Callable[[str, Any], Any] | None = None,
    parse: Callable[[str], Any] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A declared model option: a dataclass field with its ``default`` (the family's), a one-line
    ``help``, the allowed ``choices`` (or a ``check(name, value)`` that returns the value, normalised,
    or raises a ``ValueError`` naming the option), how the command line ``parse``s it from text
    (default: as text) and its ``flag`` there (default ``--name-with-dashes``)."""
    meta = {"help": help, "choices": tuple(choices), "check": check, "parse": parse, "flag": flag, "metavar": metavar}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelOptions:
    """Base of a family's declared options (subclass it as a frozen dataclass of :func:`option`
    fields). None for any field means its default; values are checked when the options are made."""

    def __post_init__(self) -> None:
        for f in option_fields(type(self)):
            value = getattr(self, f.name)
            if value is None:
                object.__setattr__(self, f.name, f.default)
                continue
            choices, check = f.metadata["choices"], f.metadata["check"]
            if choices and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(map(repr, choices))}, got {shown(value)}")
            if check is not None:
                object.__setattr__(self, f.name, check(f.name, value))
        self.check()

    def check(self) -> None:
        """Checks across fields (a ``ValueError`` naming them); none by default."""

    def record(self) -> dict[str, Any]:
        """The options as a result records them (JSON values; unset ones left out)."""
        return {
            f.name: _json(getattr(self, f.name)) for f in option_fields(type(self)) if getattr(self, f.name) is not None
        }


def option_fields(options: type[ModelOptions]) -> tuple[dataclasses.Field, ...]:
    """The declared options of a family's options class, in declaration order."""
    return dataclasses.fields(options)


def _json(value: Any) -> Any:
    return [_json(v) for v in value] if isinstance(value, (tuple, list)) else value


def cli_flags(families: Sequence[tuple[str, type[ModelOptions]]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(flag, option name, argparse keyword arguments) for every option of ``families`` ((name in
    words, options class) pairs), in declaration order, an option that several families take once:
    its help names them and their defaults."""
    seen: dict[str, tuple[dataclasses.Field, list[tuple[str, Any]]]] = {}
    for words, options in families:
        for f in option_fields(options):
            seen.setdefault(f.name, (f, []))[1].append((words, f.default))
    flags = []
    for name, (f, takers) in seen.items():
        defaults = {repr(d) for _, d in takers}
        default = repr(takers[0][1]) if len(defaults) == 1 else ", ".join(f"{d!r} for {words}" for words, d in takers)
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": None,
            "help": f"{' / '.join(words for words, _ in takers)}: {f.metadata['help']} (default: {default})",
        }
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        if f.metadata["parse"] is not None:
            kwargs["type"] = _argparse_type(f.metadata["parse"])
        if f.metadata["metavar"] is not None:
            kwargs["metavar"] = f.metadata["metavar"]
        flags.append((f.metadata["flag"] or "--" + name.replace("_", "-"), name, kwargs))
    return flags


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` for argparse: its ``ValueError`` becomes the flag's error message as it is."""
    if parse in (int, float):
        return parse

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


# -- checks and options several families share ---------------------------------------------------


def non_negative(name: str, value: Any) -> float:
    """``value`` as a float when it is a number ≥ 0, else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number ≥ 0, got {shown(value)}")
    return float(value)


def _integer_from(low: int, high: int | None = None) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"≥ {low}"
            raise ValueError(f"{name} must be an integer {allowed}, got {shown(value)}")
        return value

    return check


def clip_skip() -> Any:
    """``clip_skip`` as diffusers' pipelines take it: CLIP layers skipped from the end (None: none)."""
    return option(
        None, help="CLIP layers to skip from the end, as diffusers' clip_skip", check=_integer_from(0), parse=int
    )


POSITIONS = ("view", "canvas")
"""A transformer view's rotary positions: an image of its own size, or its place on the canvas."""


def positions() -> Any:
    """``positions`` of a DiT family: each view's rotary positions, "view" (the view alone, as the
    pipeline at that size; the default) or "canvas" (its place on the canvas)."""
    return option(
        "view",
        choices=POSITIONS,
        help="each view's rotary positions: an image of its own size (view) or its place on the canvas",
    )


def check_clip_skip(value: int, pipe: Any) -> None:
    """``clip_skip`` against the model: fewer layers than each CLIP text encoder has (diffusers
    indexes its hidden states from the end; past them it fails with an IndexError)."""
    for name in ("text_encoder", "text_encoder_2"):
        layers = getattr(getattr(getattr(pipe, name, None), "config", None), "num_hidden_layers", None)
        if isinstance(layers, int) and value >= layers:
            raise ValueError(
                f"clip_skip must be less than the {layers} layers of this model's {name}, got {shown(value)}"
            )


def max_sequence_length(default: int) -> Any:
    """``max_sequence_length``: text-encoder tokens of every prompt (T5's; Z-Image's Qwen3's), 1 to 512
    (``default``: the pipeline's)."""
    return option(
        default, help="text-encoder tokens of every prompt (1 to 512)", check=_integer_from(1, 512), parse=int
    )
