"""Values as messages quote them: short whatever they are (a hostile value may be a megabyte of
text, a 5,000-digit integer Python refuses to print, or a container nested thousands deep)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["shown"]


def shown(value: Any) -> str:
    """``value`` as a message quotes it, short: numbers by ``{:g}`` (``1e-308``, not 309 digits),
    integers past 20 digits by their length (Python refuses to print past 4,300), text and other
    values cut at 60 characters with their length."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if abs(value) < 10**20:
            return str(value)
        return f"an integer of about {int(abs(value).bit_length() * math.log10(2)) + 1:,} digits"
    if isinstance(value, float):
        return repr(value) if len(repr(value)) <= 20 else f"{value:g}"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else f"{value[:40]!r}... ({len(value):,} characters)"
    if isinstance(value, (list, tuple, dict, set)) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value):,} items"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # a huge integer inside, or a cycle of containers
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else f"{text[:60]}... (a {type(value).__name__})"


# -- single values ---------------------------------------------------------------------------------
