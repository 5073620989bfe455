"""The image tabs' inputs as the page holds them: an uploaded image file, the mask painted over it in
the image editor (or uploaded), and the editor's value built from them.

Every uploaded file goes through the library's checked loader
(:func:`multidiffusion.io.image_loader.input_image`) after the server's own checks, in this order and before a
pixel is decoded: the file's size against ``--max-upload-mb``, then the sides its header declares
against ``--max-side``. Messages name the input and the server's limit; they show the uploaded
file's name, never the server's folders, and the PNG's settings record that name (and the file's
SHA-256), not where the server keeps it.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from multidiffusion.app.limits import ServerLimits
from multidiffusion.io.image_loader import ImageLimits, InputImage, input_image, open_header
from multidiffusion.options import check_same_aspect

__all__ = ["MASK_COLOUR", "editor_value", "mask_from_editor", "mask_layer", "read_upload", "upload_limits"]

MASK_ALPHA = 0.6
"""How opaque the mask's white strokes are drawn over the image (painted or uploaded), so the image
shows through them."""
MASK_COLOUR = f"rgba(255, 255, 255, {MASK_ALPHA})"
"""The brush's colour on the inpainting editor: white strokes are what is repainted."""


def upload_limits(limits: ServerLimits) -> ImageLimits:
    """The library loader's caps for one upload on this server: its upload size, and the pixels of
    an image whose sides are within ``--max-side``."""
    return ImageLimits(max_pixels=limits.max_side * limits.max_side, max_bytes=limits.max_upload_bytes)


def _side_note(limits: ServerLimits) -> str:
    return f"this server takes images up to {limits.max_side} px per side (set by `multidiffusion serve --max-side`)"


def read_upload(path: str | os.PathLike, name: str, limits: ServerLimits, mode: str = "RGB") -> InputImage:
    """An uploaded image file, checked (a regular file, not a link, its size, then the sides its
    header declares, then the library's loader) and decoded in ``mode``; recorded under the upload's
    file name. ValueError naming ``name`` otherwise."""
    path = Path(path)
    shown = repr(path.name)
    if "\0" in str(path):  # os.stat's own message, "embedded null byte", names nothing
        raise ValueError(f"{name}: the upload's name {shown} holds a null byte; upload an image file")
    try:  # lstat: an upload is a file the server wrote, never a link (to anything on the server)
        info = os.lstat(path)
    except OSError:
        raise ValueError(f"{name}: the upload {shown} is gone (the page was open too long?); upload it again") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{name}: {shown} is not a file; upload an image file")
    limits.check_upload(name, info.st_size)
    try:
        with open_header(path, name, shown) as header:  # the header only, of an allowed format
            width, height = header.size
    except Image.DecompressionBombError:  # PIL's own cap, which the server lowers to its sides
        raise ValueError(f"{name} declares far more pixels than allowed; {_side_note(limits)}") from None
    if max(width, height) > limits.max_side:
        raise ValueError(f"{name} is {width}×{height} px; {_side_note(limits)}")
    try:
        found = input_image(path, name, upload_limits(limits), mode=mode)
    except ValueError as exc:  # the loader names the file by its path: show its name only
        raise ValueError(str(exc).replace(repr(str(path)), shown)) from None
    return dataclasses.replace(found, path=path.name)


def editor_value(image: Image.Image, mask: Image.Image | None = None) -> dict[str, Any]:
    """The image editor's value: ``image`` as its background, ``mask`` (L, white = repaint) as its
    one layer of white strokes."""
    layers = [] if mask is None else [_mask_strokes(mask)]
    composite = image.convert("RGBA")
    for layer in layers:
        composite = Image.alpha_composite(composite, layer)
    return {"background": image, "layers": layers, "composite": composite}


def _mask_strokes(mask: Image.Image) -> Image.Image:
    alpha = np.asarray(mask.convert("L"), dtype=np.float32) * MASK_ALPHA
    rgba = np.zeros((*alpha.shape, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = np.round(alpha).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def _as_image(value: Any) -> Image.Image | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    if isinstance(value, Image.Image):
        return value
    raise ValueError(f"mask: the image editor sent a {type(value).__name__}, not an image")


def mask_from_editor(value: Any, limits: ServerLimits) -> Image.Image | None:
    """The mask painted in the editor: L, white where the strokes are (their opacity up to the brush's,
    :data:`MASK_ALPHA`, is a full repaint; their soft edges are grey); None when nothing is painted."""
    if not isinstance(value, dict):
        return None
    layers = [_as_image(layer) for layer in value.get("layers") or []]
    mask: np.ndarray | None = None
    for layer in layers:
        if layer is None:
            continue
        if max(layer.size) > limits.max_side:
            raise ValueError(f"mask is {layer.width}×{layer.height} px; {_side_note(limits)}")
        if layer.mode not in ("RGBA", "LA", "PA", "P"):
            continue  # an opaque layer has no strokes to tell apart
        alpha = np.asarray(layer.convert("RGBA").getchannel("A"), dtype=np.float32)
        if mask is not None and alpha.shape != mask.shape:
            raise ValueError("mask: the editor's layers have different sizes; clear the mask and paint it again")
        mask = alpha if mask is None else np.maximum(mask, alpha)
    if mask is None or not mask.any():
        return None
    full = 255 * MASK_ALPHA  # strokes are drawn at this opacity: at least as opaque is a full repaint
    return Image.fromarray(np.round(np.clip(mask / full, 0, 1) * 255).astype(np.uint8), "L")


def mask_layer(path: str | os.PathLike, image: InputImage, limits: ServerLimits) -> dict[str, Any]:
    """The editor's value with an uploaded mask (white = repaint; any size of the image's aspect
    ratio, resized to it) as its strokes over ``image``."""
    mask = read_upload(path, "mask", limits, mode="L").image
    check_same_aspect("mask", (mask.height, mask.width), "image", image.size)
    if mask.size != image.image.size:
        mask = mask.resize(image.image.size, Image.Resampling.BILINEAR)
    return editor_value(image.image, mask)
