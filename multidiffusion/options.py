"""Argument checks shared by the library, the command line and the web app.

Every error is a ``ValueError`` that names the parameter, the value given and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "MAX_SIDE",
    "MAX_STEPS",
    "MIN_SIDE",
    "OUTPUT_TYPES",
    "check_choice",
    "check_int",
    "check_number",
    "check_side",
    "pair",
]

MIN_SIDE = 64
"""Smallest canvas side in pixels."""
MAX_SIDE = 16384
"""Largest canvas side in pixels (a 512 x 16384 panorama is 32 SD windows wide)."""
MAX_STEPS = 1000
"""Most inference steps (the schedulers' training steps)."""
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi]; ValueError naming ``name`` otherwise."""
    allowed = f"an integer ≥ {lo}" if hi is None else f"an integer from {lo} to {hi}"
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_number(name: str, value: Any, lo: float, hi: float | None = None) -> float:
    """``value`` as a finite float in [lo, hi]; ValueError naming ``name`` otherwise."""
    allowed = f"a number ≥ {lo}" if hi is None else f"a number from {lo} to {hi}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return float(value)


def check_side(name: str, value: Any, multiple: int = 8) -> int:
    """A canvas side in pixels: a multiple of ``multiple`` from MIN_SIDE to MAX_SIDE."""
    allowed = f"a multiple of {multiple} from {MIN_SIDE} to {MAX_SIDE}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be {allowed} (pixels), got {value!r}")
    if value % multiple or not MIN_SIDE <= value <= MAX_SIDE:
        raise ValueError(f"{name} must be {allowed} (pixels), got {value}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def pair(name: str, value: Any) -> tuple[Any, Any]:
    """An int or an (rows, columns) pair as a pair."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an integer or a (height, width) pair, got {value!r}")
        return value[0], value[1]
    return value, value
