"""Budgets for what one set of settings embeds: a scene, a batch line, a PNG's stored settings or a
web request may carry images as PNG data URIs (masks, maps, input and control images), and each is
checked on its own by the image loader (:data:`~multidiffusion.io.image_loader.DEFAULT_LIMITS`: 64 Mpx, 64
MB). Together they were not: a 343 KB PNG with 24 embedded 5784^2 control images took a server to
4.2 GB, 40 x 8192^2 took the command line to 7.5 GB before a refusal that needed none of them
(issue 25). :func:`check_embedded` counts them and adds up the pixels their headers declare,
before a single pixel is decoded, and refuses settings over :data:`MAX_EMBEDDED_IMAGES` or
:data:`MAX_EMBEDDED_PIXELS`.

Only the header is read: the first bytes of the base64 text are decoded (PNG, GIF, BMP and WebP
say their size within the first 30 bytes; a JPEG's size marker may follow its metadata, so up to
:data:`HEADER_BYTES` are tried, then the whole payload, which the loader bounds anyway).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterator
from typing import Any

from PIL import Image

from multidiffusion.io.formats import ALLOWED_FORMATS

__all__ = ["HEADER_BYTES", "MAX_EMBEDDED_IMAGES", "MAX_EMBEDDED_PIXELS", "check_embedded", "embedded_images"]

MAX_EMBEDDED_IMAGES = 72
"""Most images one set of settings embeds: 32 region masks and 32 region control images (the most
regions a canvas takes), an input image and its mask, and a control image per ControlNet."""
MAX_EMBEDDED_PIXELS = 2 * 8192 * 8192
"""Most pixels, added up, of the images one set of settings embeds: two images of the loader's
largest (8192^2), or 32 masks of 2896^2. Decoded as RGB that is 384 MB, which keeps the whole of a
hostile PNG's or request's images well under 2 GB with the conversions that follow; a real layout
embeds masks at canvas size (32 x 1024^2 = 34 Mpx at most for a 1024 px SDXL canvas)."""
HEADER_BYTES = 64 * 1024
"""Bytes decoded to find an embedded image's size before decoding the whole payload."""


def embedded_images(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every data URI in ``value`` (nested tables and lists), with where it is (``regions[2].mask``)."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            if item.startswith("data:"):
                yield at, item
        elif isinstance(item, dict):
            stack.extend((v, f"{at}.{k}" if at else str(k)) for k, v in reversed(list(item.items())))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{at}[{i}]") for i, v in reversed(list(enumerate(item))))


def _pixels(uri: str) -> int:
    """The pixels an embedded image's header declares; 0 when it has no readable header (the loader
    refuses it with its own message when it comes to it)."""
    payload = uri.partition(",")[2]
    for size in (HEADER_BYTES, len(payload)):
        text = payload[: size // 3 * 4]
        try:
            head = base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
            with Image.open(io.BytesIO(head), formats=list(ALLOWED_FORMATS)) as image:  # the loader's list
                return image.width * image.height
        except Image.DecompressionBombError:
            return Image.MAX_IMAGE_PIXELS * 2 + 1 if Image.MAX_IMAGE_PIXELS else MAX_EMBEDDED_PIXELS + 1
        except (binascii.Error, ValueError, OSError, SyntaxError):
            if size >= len(payload):
                return 0
    return 0


def check_embedded(data: Any, source: str = "the settings") -> None:
    """ValueError when ``data`` embeds more than :data:`MAX_EMBEDDED_IMAGES` images or more than
    :data:`MAX_EMBEDDED_PIXELS` pixels in all, naming the budget and what it holds; nothing decoded."""
    total = 0
    for count, (where, uri) in enumerate(embedded_images(data), 1):
        if count > MAX_EMBEDDED_IMAGES:
            raise ValueError(
                f"{source} embed more than {MAX_EMBEDDED_IMAGES} images (image {count} is {where}); one scene, PNG or "
                f"request may embed at most {MAX_EMBEDDED_IMAGES}"
            )
        total += _pixels(uri)
        if total > MAX_EMBEDDED_PIXELS:
            raise ValueError(
                f"{source} embed images of more than {MAX_EMBEDDED_PIXELS:,} pixels in all (over it at image {count}, "
                f"{where}); one scene, PNG or request may embed at most {MAX_EMBEDDED_PIXELS // 2**20} Mpx"
            )
