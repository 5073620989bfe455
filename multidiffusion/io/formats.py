"""Which image formats we decode, and how decoded pixels become 8-bit images and masks: the part of
the one image loader (:mod:`multidiffusion.io.image_loader`) that knows PIL's formats and modes.

PIL identifies a format by its content, not the file's name, and some of its plugins run external
programs (EPS is decoded by Ghostscript, a PostScript interpreter that can read and write files and
loop forever): every image is opened with PIL's ``formats`` argument (:func:`open_header`), so an
EPS file named photo.png is refused, not decoded.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ALLOWED_FORMATS",
    "ALLOWED_TEXT",
    "as_mode",
    "clean_error",
    "mask_image",
    "open_header",
    "restrict_decoders",
    "to_8bit",
]

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
"""The formats (PIL's names) of every image we decode. Each is decoded by PIL's own code; none runs an
external program (EPS would run Ghostscript, which interprets PostScript: it can read and write files
and loop forever). PIL picks a format by the content, not the name, so this list is passed to every
``Image.open`` (PIL's ``formats`` argument): an EPS file named photo.png is refused, not decoded."""
ALLOWED_TEXT = "PNG, JPEG, WebP, BMP, TIFF or GIF"
""":data:`ALLOWED_FORMATS` as messages name them."""


def clean_error(exc: Exception) -> str:
    """PIL's exception text on one line, without object reprs (``<_io.BytesIO object at 0x...>``)."""
    text = " ".join(re.sub(r"<[^<>]*\bat 0x[0-9a-fA-F]+>", "the data", str(exc)).split())
    text = text or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _format_of(head: bytes) -> str | None:
    """The format PIL would take a file starting with ``head`` for, asked of its plugins' prefix
    checks only (no plugin opens anything): a refused file's message names what it is."""
    Image.init()
    checks = [(fmt, Image.OPEN[fmt][1]) for fmt in Image.ID] + list(_FORGOTTEN.items())
    for fmt, accept in checks:
        try:
            if accept is not None and accept(head):
                return fmt
        except Exception:  # a plugin's check on a short prefix
            continue
    return None


def _a(word: str) -> str:
    """``word`` with its article as read aloud: an EPS, a PSD."""
    return f"an {word}" if word[:1] in "AEFHILMNORSX" else f"a {word}"


def open_header(fp: Any, name: str, what: str, formats: tuple[str, ...] = ALLOWED_FORMATS) -> Image.Image:
    """``fp`` (a binary file object at its start, or a path already checked by :func:`check_file`:
    opening a FIFO blocks) opened lazily by PIL: the header read, no pixel decoded, and only if its
    content is one of ``formats`` (:data:`ALLOWED_FORMATS`). Another format, named after what its
    content is whatever the file is called, or data that is no image is a one-line ValueError naming
    ``name``. PIL's DecompressionBombError (its own cap on the header's pixels) is raised as is, for
    the caller to word with its limits."""
    allowed = ALLOWED_TEXT if formats == ALLOWED_FORMATS else " or ".join(formats)
    try:
        with warnings.catch_warnings():  # the pixels are checked against our limits, with our message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp, formats=list(formats))  # identifies by content among these only
    except Image.DecompressionBombError:
        raise
    except UnidentifiedImageError:
        pass
    except Exception as exc:  # PIL raises many kinds for damaged headers
        raise ValueError(f"{name}: {what} is not an image ({clean_error(exc)}); images may be {allowed}") from None
    try:
        if isinstance(fp, (str, os.PathLike)):
            with open(fp, "rb") as file:
                head = file.read(16)
        else:
            fp.seek(0)
            head = fp.read(16)
    except (OSError, ValueError):
        head = b""
    found = _format_of(head)
    if found is None:
        raise ValueError(f"{name}: {what} is not an image (cannot identify the format); images may be {allowed}")
    if found in formats:  # its plugin took the prefix but not the header
        raise ValueError(f"{name}: {what} is not an image (a damaged {found} file); images may be {allowed}")
    raise ValueError(f"{name}: {what} is {_a(found)} file; images may be {allowed}")


def restrict_decoders(formats: tuple[str, ...] = ALLOWED_FORMATS) -> None:
    """Make PIL forget, in this process, how to open any format but ``formats``: for code we do not
    control that decodes by content with a plain ``Image.open`` (Gradio decodes what its image
    editors are sent before any handler sees it). The web app's server calls it at start; the
    library itself does not, as it opens every image with ``formats`` and leaves PIL as it is for
    the programs that import it. Saving is untouched."""
    Image.init()
    for fmt in [fmt for fmt in Image.ID if fmt not in formats]:
        Image.ID.remove(fmt)
        _FORGOTTEN[fmt] = Image.OPEN.pop(fmt, (None, None))[1]  # messages still name what a file is


_FORGOTTEN: dict[str, Any] = {}
"""The prefix checks of the formats :func:`restrict_decoders` made PIL forget, by format."""


def to_8bit(image: Image.Image, name: str = "image", what: str = "the image") -> Image.Image:
    """``image`` with 8 bits per channel: 16- and 32-bit images scaled, not clipped as PIL's
    ``convert`` does (a 16-bit white 65535 would stay white, but mid-grey 32768 would become 255).

    - ``I;16`` (16-bit greyscale PNG and TIFF, any byte order): ``round(v / 257)``, so 0 -> 0 and
      65535 -> 255 exactly;
    - ``I`` (32-bit integers) and ``F`` (32-bit floats) carry no bit depth, so their values say it:
      at most 1 are fractions of white (x 255: a float image in [0, 1], a 0/1 mask), at most 255
      8-bit values (as is), at most 65535 16-bit values (/ 257), and for ``I`` anything larger the
      full 32-bit range (x 255 / (2^31 - 1)). Negative values, NaN, infinities and floats above 65535
      are a ValueError naming ``name``: no scale would be right.

    Other modes are returned as they are (PIL converts them correctly)."""
    if image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.uint32)
        return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")
    if image.mode not in ("I", "F"):
        return image
    values = np.asarray(image)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    bits = "32-bit float" if image.mode == "F" else "32-bit integer"
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or (image.mode == "F" and hi > 65535):
        raise ValueError(
            f"{name}: {what} is a {bits} image with values in [{lo:g}, {hi:g}]; such images may hold values in "
            f"[0, 1], [0, 255] or [0, 65535]{'' if image.mode == 'F' else ' or any non-negative 32-bit value'}"
        )
    scale = 255.0 if hi <= 1 else 1.0 if hi <= 255 else 1 / 257 if hi <= 65535 else 255 / (2**31 - 1)
    scaled = np.clip(np.round(values.astype(np.float64) * scale), 0, 255)
    return Image.fromarray(scaled.astype(np.uint8), "L")


def mask_image(image: Image.Image, name: str = "mask") -> Image.Image:
    """The mask an image gives, as an 8-bit L image (255 = the mask applies), the same for every mask
    (region masks, inpainting masks, uploads): its alpha channel when it has any transparency (an
    RGBA, LA or PA image, a palette or greyscale PNG with a transparent colour), else its luminance;
    1-bit masks give 0 and 255, 16- and 32-bit ones are scaled (:func:`to_8bit`). Alpha wins
    because a mask cut out in an editor is drawn as opaque against transparent, whatever the colour
    under the transparent pixels; an opaque image says where by its brightness."""
    image = to_8bit(image, name, "the mask")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        alpha = image.getchannel("A") if "A" in image.getbands() else image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    return image if image.mode == "L" else image.convert("L")


def as_mode(image: Image.Image, mode: str, name: str) -> Image.Image:
    """``image`` in ``mode``, 8-bit; "L" is a mask's mode, read by :func:`mask_image`."""
    if mode == "L":
        return mask_image(image, name)
    image = to_8bit(image, name)
    return image if image.mode == mode else image.convert(mode)
