"""One loader for every image a user hands us (masks, segmentation maps, init and control images),
with limits on file size, pixels and, for colour maps, distinct colours.

Images come from the command line, scene files and the web app, so they may be hostile: a small
PNG can declare 30000 x 30000 pixels (a decompression bomb), a path can name a FIFO or a device
that blocks or never ends, and a colour map with one colour per pixel makes per-colour work
explode. :func:`open_image` checks, in this order and before decoding a single pixel:

- a path is a regular file (``os.stat``; FIFOs, devices and folders are refused without being
  opened) of at most ``max_bytes``; a ``data:image/png;base64,`` URI's payload is at most
  ``max_bytes`` once decoded (checked on the base64 text, before decoding);
- the header's width x height is at most ``max_pixels`` (PIL reads the header lazily);
- then the pixels are decoded; any decoding failure, and PIL's own decompression-bomb error, is a
  ValueError naming the parameter.

:func:`count_colours` / :func:`colour_counts` count the distinct RGB colours of a map in O(pixels)
(one ``np.unique`` over packed 24-bit codes) and refuse maps with more than ``max_colours``.

Every error is a ValueError whose message names the parameter, the value (file name or size) and
the limit, so the CLI, scene loader and web app can show it as is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "DATA_URI_PREFIX",
    "DEFAULT_LIMITS",
    "ImageLimits",
    "InputImage",
    "check_file",
    "check_pixels",
    "colour_counts",
    "count_colours",
    "input_image",
    "is_input_record",
    "open_image",
    "pack_rgb",
]

DATA_URI_PREFIX = "data:image/png;base64,"


@dataclass(frozen=True)
class ImageLimits:
    """Caps on one image input.

    ``max_pixels``: width x height from the header, checked before decoding. 64 Mpx (8192 x 8192)
    is twice the largest canvas side the web app serves by default (4096) in each direction and
    still small enough to decode (64 MB per 8-bit channel). It is below PIL's own warning threshold
    (``Image.MAX_IMAGE_PIXELS``, about 89 Mpx); PIL refuses anything over twice that by itself, so
    raising ``max_pixels`` past about 179 Mpx also needs ``Image.MAX_IMAGE_PIXELS`` raised.

    ``max_bytes``: size of a file or of a data URI's decoded payload. 64 MB holds an uncompressed
    8192 x 8192 8-bit greyscale PNG; any sensible mask or map is far smaller.

    ``max_colours``: distinct RGB colours in a colour-coded segmentation map. Each colour is one
    region with its own prompt and its own mask on the latent grid, so the work and memory grow
    with colours x pixels; 256 is more regions than anyone prompts by hand (the paper's maps have
    a handful) and lets an 8-bit palette image through whole. A map with many more colours is
    antialiased, a JPEG or a photo, not a layout.
    """

    max_pixels: int = 8192 * 8192
    max_bytes: int = 64 * 1024 * 1024
    max_colours: int = 256

    def __post_init__(self) -> None:
        for field in ("max_pixels", "max_bytes", "max_colours"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ImageLimits.{field} must be a whole number ≥ 1, got {value!r}")


DEFAULT_LIMITS = ImageLimits()
"""The limits used when none are given: 64 Mpx, 64 MB, 256 colours."""


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB ({size:,} bytes)"


def _describe(source: object) -> str:
    if isinstance(source, str) and source.startswith("data:"):
        return "the data URI"
    if isinstance(source, (str, os.PathLike)):
        return repr(str(source))
    return f"the {type(source).__name__}"


def check_pixels(width: int, height: int, name: str, limits: ImageLimits = DEFAULT_LIMITS, what: str = "") -> None:
    """ValueError when a ``width`` x ``height`` image has more than ``limits.max_pixels`` pixels."""
    if width * height > limits.max_pixels:
        raise ValueError(
            f"{name}: {what + ' is ' if what else ''}{width}x{height} = {width * height:,} pixels; images may have at "
            f"most {limits.max_pixels:,} pixels (max_pixels)"
        )


def _bomb(exc: Exception, name: str, what: str, limits: ImageLimits) -> ValueError:
    """PIL's DecompressionBombError as our ValueError, with the pixel count PIL read from the header."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "more pixels than PIL allows"
    limit = limits.max_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        limit = min(limit, 2 * Image.MAX_IMAGE_PIXELS)
    return ValueError(f"{name}: {what} is {size}; images may have at most {limit:,} pixels (max_pixels)")


def _decode(fp: io.IOBase, name: str, what: str, limits: ImageLimits, bad: str) -> Image.Image:
    """Open lazily, check the header's size, then decode. Every failure is a ValueError naming
    ``name``; ``bad`` starts the message for data that is not an image."""

    def failure(exc: Exception) -> ValueError:
        if isinstance(exc, Image.DecompressionBombError):
            return _bomb(exc, name, what, limits)
        return ValueError(f"{bad} ({exc})")

    try:
        image = Image.open(fp)  # reads the header only
    except Exception as exc:
        raise failure(exc) from None
    check_pixels(image.width, image.height, name, limits, what)
    try:
        image.load()
    except Exception as exc:
        raise failure(exc) from None
    return image


def _open_data_uri(value: str, name: str, limits: ImageLimits) -> Image.Image:
    if not value.startswith(DATA_URI_PREFIX):
        raise ValueError(f"{name} must be a file or a {DATA_URI_PREFIX}... URI, got {value[:40]!r}...")
    payload = value[len(DATA_URI_PREFIX) :]
    bad = f"{name} is not a valid base64 PNG data URI"
    decoded = len(payload) // 4 * 3  # the decoded size, give or take 2 bytes of padding
    if decoded > limits.max_bytes + 2:
        raise ValueError(
            f"{name}: the data URI holds about {_mb(decoded)}; images may be at most {_mb(limits.max_bytes)} "
            "(max_bytes)"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{bad} ({exc})") from None
    if len(data) > limits.max_bytes:
        raise ValueError(
            f"{name}: the data URI holds {_mb(len(data))}; images may be at most {_mb(limits.max_bytes)} (max_bytes)"
        )
    return _decode(io.BytesIO(data), name, "the data URI", limits, bad)


def check_file(value: str | os.PathLike, name: str, limits: ImageLimits = DEFAULT_LIMITS) -> Path:
    """``value`` as a path to a regular file of at most ``limits.max_bytes``, checked with ``stat``
    (links followed) before anything is opened: folders, FIFOs, sockets and devices are refused."""
    path = Path(value).expanduser()
    what = repr(str(path))
    try:
        info = os.stat(path)  # follows links: a link to /dev/zero is a device
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file {what}") from None
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, socket or device?)"
        raise ValueError(f"{name}: {what} is {kind}; give an image file")
    if info.st_size > limits.max_bytes:
        raise ValueError(
            f"{name}: {what} is {_mb(info.st_size)}; image files may be at most {_mb(limits.max_bytes)} (max_bytes)"
        )
    return path


def _open_path(value: str | os.PathLike, name: str, limits: ImageLimits) -> Image.Image:
    return _read_path(value, name, limits)[0]


def _read_path(value: str | os.PathLike, name: str, limits: ImageLimits) -> tuple[Image.Image, bytes]:
    """The decoded image at a path and the file's bytes (what its SHA-256 is taken of)."""
    path = check_file(value, name, limits)
    what = repr(str(path))
    # Non-blocking open and fstat: the path may have been swapped for a FIFO since the stat.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {what} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{name}: {what} is not a regular file (a FIFO, socket or device?); give an image file")
        # read(n) allocates n bytes up front: ask for the file's size (+1 to see EOF), not the limit.
        data = file.read(min(info.st_size, limits.max_bytes) + 1)
        while len(data) <= limits.max_bytes:  # it may have grown since the stat
            more = file.read(min(1 << 20, limits.max_bytes + 1 - len(data)))
            if not more:
                break
            data += more
    if len(data) > limits.max_bytes:
        raise ValueError(f"{name}: {what} is over {_mb(limits.max_bytes)}, the most an image file may be (max_bytes)")
    return _decode(io.BytesIO(data), name, what, limits, f"{name}: {what} is not an image"), data


def open_image(source: str | os.PathLike | Image.Image, name: str, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """A decoded PIL image from a path, a ``data:image/png;base64,`` URI or a PIL image, within
    ``limits`` (see the module docstring); ValueError naming ``name`` otherwise."""
    if isinstance(source, Image.Image):
        check_pixels(source.width, source.height, name, limits, "the image")
        return source
    if isinstance(source, str) and source.startswith("data:"):
        return _open_data_uri(source, name, limits)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(source, name, limits)
    raise ValueError(f"{name} must be a path, a {DATA_URI_PREFIX}... URI or a PIL image, got {type(source).__name__}")


# -- input images (img2img, upscale, inpaint, outpaint) --------------------------------------------
@dataclass(frozen=True, eq=False)
class InputImage:
    """An input image, decoded and checked, with where it came from: ``path`` and the SHA-256 of the
    file's bytes when it was read from a file (recorded in the result's PNG metadata, so settings
    read back can tell when the file is missing or has changed), else None."""

    image: Image.Image
    path: str | None = None
    sha256: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.image.height, self.image.width

    def record(self) -> dict[str, str | None]:
        """What the PNG metadata stores: the path and its SHA-256 (None for in-memory images)."""
        return {"path": self.path, "sha256": self.sha256}


def _as_pil(value: object, name: str, limits: ImageLimits) -> Image.Image:
    """A PIL image from a numpy array (H, W[, 1/3/4], uint8, or float in [0, 1]) or a torch tensor
    ((1,) C, H, W in [0, 1]), as diffusers' image processors take them."""
    array = value
    if type(value).__module__.startswith("torch"):
        t = value.detach().float().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"{name}: a tensor must be (3, H, W) or (1, 3, H, W) in [0, 1], got {tuple(t.shape)}")
        array = t.permute(1, 2, 0).numpy()
    if (
        not isinstance(array, np.ndarray)
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4))
    ):
        shape = getattr(array, "shape", "")
        allowed = "an image file, a PIL image, an (H, W, 3) array or a tensor"
        raise ValueError(f"{name} must be {allowed}, got {type(value).__name__} {shape}".rstrip())
    check_pixels(array.shape[1], array.shape[0], name, limits, "the image")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise ValueError(f"{name}: an array must be uint8 or float in [0, 1], got {array.dtype}")
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def input_image(
    value: object, name: str = "image", limits: ImageLimits = DEFAULT_LIMITS, mode: str = "RGB"
) -> InputImage:
    """An input image in ``mode`` ("RGB" for images, "L" for masks) from a path, a data URI, a PIL
    image, an array or a tensor, or the ``{"path": ..., "sha256": ...}`` record of stored settings,
    whose file must still have that SHA-256. Checked like every image we are handed
    (:func:`open_image`); ValueError naming ``name`` otherwise.

    Reading the file a stored record names is safe even when the PNG came from someone else: the
    file is used only if its bytes hash to the recorded SHA-256, so a record can only name content
    its author already has."""
    if isinstance(value, InputImage):
        return value if value.image.mode == mode else InputImage(value.image.convert(mode), value.path, value.sha256)
    if isinstance(value, dict):
        return _recorded(value, name, limits, mode)
    if isinstance(value, Image.Image):
        check_pixels(value.width, value.height, name, limits, "the image")
        return InputImage(value.convert(mode) if value.mode != mode else value)
    if isinstance(value, str) and value.startswith("data:"):
        return InputImage(_open_data_uri(value, name, limits).convert(mode))
    if isinstance(value, (str, os.PathLike)):
        image, data = _read_path(value, name, limits)
        return InputImage(image.convert(mode), str(value), hashlib.sha256(data).hexdigest())
    if value is None:
        raise ValueError(f"{name} is required: give an image file, a PIL image or an array")
    return InputImage(_as_pil(value, name, limits).convert(mode))


def is_input_record(value: Any) -> bool:
    """Whether ``value`` is an input image's record as :class:`InputImage`
    writes it: ``{"path": str, "sha256": 64 hex digits}``, or both None for an image that was given
    in memory (kept, so the message on use can say so). Nothing is opened."""
    if not isinstance(value, Mapping) or set(value) != {"path", "sha256"}:
        return False
    path, digest = value["path"], value["sha256"]
    if path is None and digest is None:
        return True
    return (
        isinstance(path, str)
        and bool(path)
        and "\0" not in path
        and isinstance(digest, str)
        and len(digest) == 64
        and all(c in "0123456789abcdefABCDEF" for c in digest)
    )


def _recorded(value: dict, name: str, limits: ImageLimits, mode: str) -> InputImage:
    path, digest = value.get("path"), value.get("sha256")
    if set(value) <= {"path", "sha256"} and path is None and digest is None:
        raise ValueError(
            f"{name}: these settings were recorded from an image given in memory, not read from a file; give the "
            "image again"
        )
    if set(value) - {"path", "sha256"} or not isinstance(path, str) or not isinstance(digest, str):
        raise ValueError(f"{name}: a stored input must be {{'path': ..., 'sha256': ...}}, got {value!r}")
    if not os.path.exists(path):
        raise ValueError(
            f"{name}: the input file {path!r} recorded with these settings is missing; give the image again"
        )
    found = input_image(path, name, limits, mode)
    if found.sha256 != digest.lower():
        raise ValueError(
            f"{name}: the input file {path!r} has changed since these settings were recorded (SHA-256 "
            f"{found.sha256[:12]}... instead of {digest[:12]}...); give the image again"
        )
    return found


# -- colours -------------------------------------------------------------------------------------
def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3 or 4) uint8 -> (H, W) uint32 codes 0xRRGGBB (alpha ignored)."""
    codes = rgb[..., 0].astype(np.uint32) << 16
    codes |= rgb[..., 1].astype(np.uint32) << 8
    codes |= rgb[..., 2]
    return codes


def _codes(value: Image.Image | np.ndarray, name: str, limits: ImageLimits) -> np.ndarray:
    if isinstance(value, Image.Image):
        check_pixels(value.width, value.height, name, limits, "the map")
        value = np.asarray(value.convert("RGB"))
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a PIL image or an array, got {type(value).__name__}")
    is_codes = value.ndim == 2 and value.dtype == np.uint32
    if not is_codes and not (value.ndim == 3 and value.shape[-1] in (3, 4) and value.dtype == np.uint8):
        raise ValueError(
            f"{name} must be a (height, width, 3) uint8 array or (height, width) uint32 colour codes, "
            f"got {value.dtype} {value.shape}"
        )
    check_pixels(value.shape[1], value.shape[0], name, limits, "the map")
    return value if is_codes else pack_rgb(value)


def colour_counts(
    value: Image.Image | np.ndarray, limits: ImageLimits = DEFAULT_LIMITS, name: str = "map"
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct colours of a map as 0xRRGGBB codes (ascending) and their pixel counts.

    ``value`` is a PIL image, a (H, W, 3 or 4) uint8 array or the (H, W) uint32 codes of
    :func:`pack_rgb`. One ``np.unique`` over the codes: time O(pixels log pixels), memory a few
    bytes per pixel, whatever the number of colours. ValueError when there are more than
    ``limits.max_colours``."""
    found, counts = np.unique(_codes(value, name, limits), return_counts=True)
    if len(found) > limits.max_colours:
        raise ValueError(
            f"{name} has {len(found):,} colours; a colour map may have at most {limits.max_colours} (max_colours), one "
            "flat colour per region (is the map antialiased, a JPEG or a photo? draw it with flat colours)"
        )
    return found, counts


def count_colours(value: Image.Image | np.ndarray, limits: ImageLimits = DEFAULT_LIMITS, name: str = "map") -> int:
    """How many distinct RGB colours a map has; ValueError when more than ``limits.max_colours``."""
    return len(colour_counts(value, limits, name)[0])
