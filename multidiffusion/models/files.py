"""What loading a model and reading a single checkpoint share: the one error, and how a pickle file
is recognised (by its name alone: a pickle can run code when it is opened)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from multidiffusion.io.trust import PICKLE_SUFFIXES, is_pickle_path

__all__ = [
    "GGUF_SUFFIX",
    "PICKLE_SUFFIXES",
    "ModelNotFoundError",
    "has_tensors",
    "is_gguf_path",
    "is_pickle_path",
    "refused_pickle",
    "sha256_file",
]

CHECKPOINT_PREFIXES = ("", "model.diffusion_model.")
"""What single-file checkpoints put before their tensor names (Stability's and ComfyUI's files)."""
GGUF_SUFFIX = ".gguf"
"""llama.cpp's GGUF: quantized transformers as ComfyUI-GGUF and the model makers publish them."""


class ModelNotFoundError(ValueError):
    """The model can't be found or loaded; the message says how to get it."""


def refused_pickle(exc: BaseException, name: str) -> ModelNotFoundError | None:
    """diffusers' ``OSError`` for a weights file torch's safe loader (``weights_only=True``) refused (a
    pickle that holds more than tensors, or no checkpoint at all), as one line naming ``name``; None
    for any other error."""
    found = re.search(r"Unable to load weights from checkpoint file for '([^']*)'", str(exc))
    if not isinstance(exc, OSError) or found is None:
        return None
    return ModelNotFoundError(
        f"{name}: {Path(found[1]).name} could not be read as weights: torch's safe loader refused it (a pickle "
        "that holds more than tensors, or not a checkpoint at all), so nothing in it ran, with or without "
        "allow_pickle (--allow-pickle); use a .safetensors file"
    )


def has_tensors(names: Iterable[str], prefix: str | tuple[str, ...]) -> bool:
    """Whether a checkpoint's tensor ``names`` include one starting with ``prefix`` (or any of several:
    a family's original and diffusers names), bare or after one of the :data:`CHECKPOINT_PREFIXES`."""
    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
    starts = tuple(p + q for p in CHECKPOINT_PREFIXES for q in prefixes)
    return any(name.startswith(starts) for name in names)


def is_gguf_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a GGUF file (by its suffix, any case)."""
    return Path(path).suffix.lower() == GGUF_SUFFIX


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB chunks: what stored settings record of a
    file they used, so a changed file can be told from the one used."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
