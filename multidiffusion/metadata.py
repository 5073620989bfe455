"""Images on disk: PNG with the generation parameters in text chunks, written atomically.

Two chunks are written: ``multidiffusion`` holds the parameters as JSON (what ``--from`` reads to
regenerate an image), ``parameters`` holds an AUTOMATIC1111-style summary that other tools display.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

__all__ = ["METADATA_KEY", "a1111_parameters", "check_output_path", "read_parameters", "save_png"]

METADATA_KEY = "multidiffusion"


def check_output_path(path: str | os.PathLike, name: str = "output") -> Path:
    """Fail before any computing if ``path`` can't be written as a PNG."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".png":
        raise ValueError(f"{name} must be a .png file (the parameters are stored in it), got {str(path)!r}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"{name} folder {str(parent)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a folder")
    try:  # the real test (os.access says yes to root on read-only file systems)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.stem}-", suffix=".png"):
            pass
    except OSError as exc:
        raise ValueError(f"{name} {str(path)!r} is not writable: {exc.strerror}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{name} {str(path)!r} is not writable")
    return path


def a1111_parameters(params: Mapping[str, Any]) -> str:
    """The AUTOMATIC1111 'parameters' text: prompt, negative prompt, then 'Key: value' pairs."""
    lines = [str(params.get("prompt") or params.get("background") or "")]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    fields = {
        "Steps": params.get("num_inference_steps"),
        "Sampler": params.get("scheduler"),
        "CFG scale": params.get("guidance_scale"),
        "Seed": params.get("seed"),
        "Size": f"{params.get('width')}x{params.get('height')}",
        "Model": params.get("model"),
        "MultiDiffusion": f"window {params.get('window')}, stride {params.get('stride')}"
        + (", circular" if params.get("circular") else ""),
    }
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it


def save_png(image: Image.Image, path: str | os.PathLike, params: Mapping[str, Any] | None = None) -> Path:
    """Write ``image`` with ``params`` in its text chunks; the file appears whole or not at all."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    if params is not None:
        info.add_text(METADATA_KEY, json.dumps(params, sort_keys=True))
        info.add_text("parameters", a1111_parameters(params))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a new file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_parameters(source: str | os.PathLike | Image.Image) -> dict[str, Any]:
    """The parameters stored by :func:`save_png`; ValueError if the image has none."""
    image = source if isinstance(source, Image.Image) else Image.open(source)
    text = getattr(image, "text", {}) or image.info
    if METADATA_KEY not in text:
        raise ValueError("image has no multidiffusion parameters (it was not written by multidiffusion)")
    try:
        params = json.loads(text[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"image's multidiffusion parameters are not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise ValueError("image's multidiffusion parameters are not a JSON object")
    return params
