"""What an upscale may resize with (:func:`check_upscaler`): a filter name, a callable, or an
upscaler model file (a pickle only when allowed; a stored record only while the file is unchanged)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from multidiffusion.io.messages import shown

__all__ = ["MAX_SCALE", "MAX_UPSCALER_BYTES", "UPSCALE_FILTERS", "check_upscaler"]

MAX_SCALE = 8.0
"""Largest upscaling factor: 8x takes a 512 px image to 4096 px; larger jumps give the model too
little to work from in one pass (upscale twice instead)."""
UPSCALE_FILTERS = ("lanczos", "bicubic", "bilinear", "nearest")
"""Resampling filters an upscale can use by name (PIL's); a model file or a callable also works."""
MAX_UPSCALER_BYTES = 2 * 1024**3
"""Largest upscaler model file (ESRGAN-family networks are 1-100 MB; some are larger)."""


def check_upscaler(value: Any, allow_pickle: bool = False) -> Any:
    """A filter name (:data:`UPSCALE_FILTERS`), a callable, or an upscaler model file that exists
    and, when it is a pickle (.pth, .pt, .ckpt, .bin: opening one can run code), ``allow_pickle``."""
    if isinstance(value, str) and value.lower() in UPSCALE_FILTERS:
        return value.lower()
    if callable(value):
        return value
    if isinstance(value, Mapping):  # a result's stored record: the file must still be the one used
        return _recorded_upscaler(value, allow_pickle)
    if value == "callable":
        raise ValueError(
            "upscaler: these settings were made with a callable upscaler, which cannot be stored; give upscaler= "
            "(a filter name, a model file or the callable) again"
        )
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(
            f"upscaler must be one of {', '.join(map(repr, UPSCALE_FILTERS))}, an upscaler model file "
            f"(.safetensors, .pth) or a callable, got {type(value).__name__}"
        )
    from multidiffusion.io.image_loader import ImageLimits, check_file
    from multidiffusion.models.files import is_pickle_path

    path = check_file(value, "upscaler", ImageLimits(max_bytes=MAX_UPSCALER_BYTES))
    if is_pickle_path(path) and allow_pickle is not True:
        raise ValueError(
            f"upscaler: {str(value)!r} is a pickle file, which can run code when opened; convert it to "
            ".safetensors, or pass allow_pickle=True (--allow-pickle) if you trust its source"
        )
    return str(value)


def _recorded_upscaler(value: Mapping, allow_pickle: bool) -> str:
    """The upscaler file a stored ``{"path": ..., "sha256": ...}`` names, if its bytes still hash to
    the recorded SHA-256 (so a record can only name content its author has, as for input images)."""
    from multidiffusion.models.files import sha256_file

    path, digest = value.get("path"), value.get("sha256")
    if set(value) != {"path", "sha256"} or not isinstance(path, str) or not isinstance(digest, str):
        raise ValueError(
            f"upscaler: a stored model file must be {{'path': ..., 'sha256': ...}}, got {shown(dict(value))}"
        )
    checked = check_upscaler(path, allow_pickle)
    if checked in UPSCALE_FILTERS:
        raise ValueError(f"upscaler: a stored model file must name a file, got the filter {path!r}")
    found = sha256_file(checked)
    if found != digest.lower():
        raise ValueError(
            f"upscaler: the model file {path!r} has changed since these settings were recorded (SHA-256 "
            f"{found[:12]}... instead of {digest[:12]}...); give the upscaler again"
        )
    return checked
