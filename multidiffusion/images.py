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
import math
import os
import re
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from multidiffusion.io.trust import RecordedFile, is_record

__all__ = [
    "ALLOWED_FORMATS",
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
    "mask_image",
    "open_header",
    "open_image",
    "pack_rgb",
    "restrict_decoders",
    "to_8bit",
]

DATA_URI_PREFIX = "data:image/png;base64,"

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
"""The formats (PIL's names) of every image we decode. Each is decoded by PIL's own code; none runs an
external program (EPS would run Ghostscript, which interprets PostScript: it can read and write files
and loop forever). PIL picks a format by the content, not the name, so this list is passed to every
``Image.open`` (PIL's ``formats`` argument): an EPS file named photo.png is refused, not decoded."""
ALLOWED_TEXT = "PNG, JPEG, WebP, BMP, TIFF or GIF"
""":data:`ALLOWED_FORMATS` as messages name them."""


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


def _clean(exc: Exception) -> str:
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
        raise ValueError(f"{name}: {what} is not an image ({_clean(exc)}); images may be {allowed}") from None
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


def _as_mode(image: Image.Image, mode: str, name: str) -> Image.Image:
    """``image`` in ``mode``, 8-bit; "L" is a mask's mode, read by :func:`mask_image`."""
    if mode == "L":
        return mask_image(image, name)
    image = to_8bit(image, name)
    return image if image.mode == mode else image.convert(mode)


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
        raise ValueError(f"{name}: {what} is not an image ({_clean(exc)})") from None
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
        raise ValueError(f"{name}: cannot read {what} ({getattr(exc, 'strerror', None) or _clean(exc)})") from None
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
        return InputImage(_as_mode(value.image, mode, name), value.path, value.sha256)
    if isinstance(value, RecordedFile):
        return _recorded(value, name, limits, mode)
    if isinstance(value, Mapping):
        raise _unopened_record(value, name)
    if isinstance(value, Image.Image):
        check_pixels(value.width, value.height, name, limits, "the image")
        return InputImage(_as_mode(value, mode, name))
    if isinstance(value, str) and value.startswith("data:"):
        return InputImage(_as_mode(_open_data_uri(value, name, limits), mode, name))
    if isinstance(value, (str, os.PathLike)):
        image, data = _read_path(value, name, limits)
        return InputImage(_as_mode(image, mode, name), str(value), hashlib.sha256(data).hexdigest())
    if value is None:
        raise ValueError(f"{name} is required: give an image file, a PIL image or an array")
    return InputImage(_as_mode(_as_pil(value, name, limits), mode, name))


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
