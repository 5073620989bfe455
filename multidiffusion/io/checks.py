"""The checks of single values every layer's options use (numbers, integers, choices, aspect
ratios): a ``ValueError`` that names the parameter, the value given and what is allowed.

They live at the bottom of the package so that the options of every layer (the tasks', the
conditionings' in :mod:`multidiffusion.conditionings`) check values the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from multidiffusion.io.messages import shown

__all__ = ["check_choice", "check_int", "check_number", "check_same_aspect"]


def check_int(name: str, value: Any, lo: int, hi: int | None = None, note: str = "") -> int:
    """``value`` as an int in [lo, hi] (integral floats accepted); ValueError naming ``name`` otherwise."""
    allowed = f"an integer ≥ {lo}" if hi is None else f"an integer from {lo} to {hi}"
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be {allowed}, got {shown(value)}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {allowed}, got {shown(value)}{note}")
    return value


def check_number(name: str, value: Any, lo: float, hi: float | None = None) -> float:
    """``value`` as a finite float in [lo, hi]; ValueError naming ``name`` otherwise."""
    allowed = f"a number ≥ {lo}" if hi is None else f"a number from {lo} to {hi}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {allowed}, got {shown(value)}")
    try:
        finite = math.isfinite(value)  # an int past float's range overflows here
    except OverflowError:
        finite = False
    if not finite or value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {allowed}, got {shown(value)}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {shown(value)}")
    return value


def check_same_aspect(name: str, size: tuple[int, int], other: str, other_size: tuple[int, int]) -> None:
    """ValueError when an image of ``size`` (height, width) has another aspect ratio than ``other``'s
    (1 % tolerance: a mask of another size of the same shape is resized)."""
    (h, w), (oh, ow) = size, other_size
    if abs(w * oh - ow * h) > 0.01 * ow * h:
        raise ValueError(
            f"{name} is {w}x{h} but the {other} is {ow}x{oh}: give a {name} of the same size or at least the same "
            "aspect ratio"
        )
