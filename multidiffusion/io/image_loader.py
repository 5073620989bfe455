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
- the format is one of :data:`ALLOWED_FORMATS` (PNG, JPEG, WebP, BMP, TIFF, GIF), whatever the
  file's name or the URI's media type say: PIL identifies a format by its content, and some of its
  plugins run external programs (EPS is decoded by Ghostscript, a PostScript interpreter that can
  read and write files), so every image is opened with PIL's ``formats`` argument (:func:`open_header`);
- then the pixels are decoded (a GIF's or TIFF's first frame); any decoding failure, and PIL's own
  decompression-bomb error, is a ValueError naming the parameter;
- the EXIF orientation is applied (a phone's portrait photo is stored landscape with a tag that
  says "rotate"), and 16- and 32-bit images are scaled to 8 bits, not clipped (:func:`to_8bit`).

A colour map's colours are counted, within ``max_colours``, by :mod:`multidiffusion.regions.colours`.

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

import numpy as np
from PIL import Image, ImageOps

from multidiffusion.io.formats import (
    ALLOWED_FORMATS,
    as_mode,
    clean_error,
    mask_image,
    open_header,
    restrict_decoders,
    to_8bit,
)
from multidiffusion.io.trust import RecordedFile, is_record

__all__ = [
    "ALLOWED_FORMATS",
    "DATA_URI_PREFIX",
    "DEFAULT_LIMITS",
    "ImageLimits",
    "InputImage",
    "check_file",
    "check_pixels",
    "input_image",
    "is_input_record",
    "mask_image",
    "open_header",
    "open_image",
    "restrict_decoders",
    "to_8bit",
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


def _decode(fp: io.IOBase, name: str, what: str, limits: ImageLimits) -> Image.Image:
    """Open lazily (allowed formats only), check the header's size, decode, turn upright (EXIF) and
    scale to 8 bits. Every failure is a ValueError naming ``name``; ``what`` is the input as shown."""
    try:
        image = open_header(fp, name, what)  # reads the header only
    except Image.DecompressionBombError as exc:
        raise _bomb(exc, name, what, limits) from None
    check_pixels(image.width, image.height, name, limits, what)  # the same count upright or not
    try:
        image.load()  # a GIF's, TIFF's or WebP's first frame
        ImageOps.exif_transpose(image, in_place=True)
    except Image.DecompressionBombError as exc:
        raise _bomb(exc, name, what, limits) from None
    except Exception as exc:
        raise ValueError(f"{name}: {what} is not an image ({clean_error(exc)})") from None
    return to_8bit(image, name, what)


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
    return _decode(io.BytesIO(data), name, "the data URI", limits)


def check_file(value: str | os.PathLike, name: str, limits: ImageLimits = DEFAULT_LIMITS) -> Path:
    """``value`` as a path to a regular file of at most ``limits.max_bytes``, checked with ``stat``
    (links followed) before anything is opened: folders, FIFOs, sockets and devices are refused."""
    if "\0" in os.fspath(value):  # os.stat's own message, "embedded null byte", names nothing
        raise ValueError(f"{name}: the path {str(value)!r} holds a null byte; give an image file's path")
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # "~user/..." for no such user
        path = Path(value)
    what = repr(str(path))
    try:
        info = os.stat(path)  # follows links: a link to /dev/zero is a device
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file {what}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{name}: cannot read {what} ({getattr(exc, 'strerror', None) or clean_error(exc)})") from None
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
    return _decode(io.BytesIO(data), name, what, limits), data


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
    """An input image in ``mode`` ("RGB" for images, "L" for masks, read by :func:`mask_image`) from a
    path, a data URI, a PIL image, an array or a tensor, or a
    :class:`~multidiffusion.io.trust.RecordedFile` (a scene's ``{ path, sha256 }``), whose file must
    still have that SHA-256. Checked like every image we are handed (:func:`open_image`); ValueError
    naming ``name`` otherwise.

    A plain ``{"path": ..., "sha256": ...}`` dict, as stored settings hold it, is never opened: stored
    settings may come from anyone, and only a scene file (confined to its folder) or the user turns a
    record into a :class:`RecordedFile` (:mod:`multidiffusion.io.trust`)."""
    if isinstance(value, InputImage):
        if value.image.mode == mode:
            return value
        return InputImage(as_mode(value.image, mode, name), value.path, value.sha256)
    if isinstance(value, RecordedFile):
        return _recorded(value, name, limits, mode)
    if isinstance(value, Mapping):
        raise _unopened_record(value, name)
    if isinstance(value, Image.Image):
        check_pixels(value.width, value.height, name, limits, "the image")
        return InputImage(as_mode(value, mode, name))
    if isinstance(value, str) and value.startswith("data:"):
        return InputImage(as_mode(_open_data_uri(value, name, limits), mode, name))
    if isinstance(value, (str, os.PathLike)):
        image, data = _read_path(value, name, limits)
        return InputImage(as_mode(image, mode, name), str(value), hashlib.sha256(data).hexdigest())
    if value is None:
        raise ValueError(f"{name} is required: give an image file, a PIL image or an array")
    return InputImage(as_mode(_as_pil(value, name, limits), mode, name))


is_input_record = is_record
"""Whether a value has the shape of an input image's record (:func:`multidiffusion.io.trust.is_record`)."""


def _unopened_record(value: Mapping, name: str) -> ValueError:
    """The refusal of a record dict: nothing it names is opened or looked up, so the message is the
    same whatever the name points to."""
    if is_input_record(value) and value["path"] is None:
        return ValueError(
            f"{name}: these settings were recorded from an image given in memory, not read from a file; give the "
            "image again"
        )
    if is_input_record(value):
        return ValueError(
            f"{name}: stored settings name the input file {Path(value['path']).name!r}, which is never read from "
            "them; give the image again"
        )
    return ValueError(f"{name} must be an image file, a PIL image or an array, got a table")


def _recorded(value: RecordedFile, name: str, limits: ImageLimits, mode: str) -> InputImage:
    if not os.path.exists(value.path):
        raise ValueError(
            f"{name}: the input file {value.path!r} recorded in the scene is missing; give the image again"
        )
    found = input_image(value.path, name, limits, mode)
    if found.sha256 != value.sha256.lower():
        raise ValueError(
            f"{name}: the input file {value.path!r} has changed since these settings were recorded (SHA-256 "
            f"{found.sha256[:12]}... instead of {value.sha256[:12]}...); give the image again"
        )
    return found
