"""The first half of an upscale: the input image resized to the canvas, before MultiDiffusion
re-works it (:mod:`multidiffusion.tasks.upscale`).

Three kinds of upscaler, all ending at the exact target size:

- a **PIL filter** by name (:data:`~multidiffusion.options.UPSCALE_FILTERS`, "lanczos" by default):
  cheap, no detail added; the diffusion pass adds the detail;
- a **callable** PIL image -> PIL image of any size (anything: a web service, another library's
  model); its result is resized (Lanczos) to the target;
- an **ESRGAN-family model file** (RealESRGAN, 4x-UltraSharp, SwinIR, ... anything spandrel reads)
  run in overlapping tiles, so a large image never enters the network whole: the network's memory
  follows the tile, and the result is accumulated in bands of rows (one row of tiles in float, the
  rest already 8-bit), so the image's own memory is its 8-bit size plus one band. Tiles are blended
  over their overlap: a network's output near a tile's border saw padding instead of the image, so
  the outer quarter of the overlap is dropped and linear ramps hand over in its middle half.
  spandrel is the ``upscale`` extra (``pip install "multidiffusion[upscale]"``). A ``.pth`` file
  is a pickle, which can run code when opened: refused without ``allow_pickle`` (spandrel's
  restricted unpickler narrows but does not remove that risk); ``.safetensors`` files are plain
  tensors.

A network of scale s is run once when s x the image reaches the target (a 4x model for a 2x upscale
gives 4x, resized down, as A1111 and ComfyUI do), and again only while its output stays within the
target (a 2x model runs twice for 4x); any remaining factor is Lanczos. So the largest image held is
the target or one network pass of the input, never s times the target.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from multidiffusion.engine.views import axis_starts
from multidiffusion.models.files import sha256_file
from multidiffusion.options import MAX_SCALE, UPSCALE_FILTERS, check_number, check_upscaler

__all__ = [
    "FILTERS",
    "MissingExtraError",
    "file_record",
    "load_model",
    "require_spandrel",
    "run_tiled",
    "target_size",
    "upscale_image",
    "upscaler_record",
]

FILTERS: dict[str, Image.Resampling] = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
"""PIL's resampling filters by the names :data:`~multidiffusion.options.UPSCALE_FILTERS` allows."""
assert set(FILTERS) == set(UPSCALE_FILTERS)

INSTALL = 'pip install "multidiffusion[upscale]"'
TILE = 256
"""Input pixels per network tile (a side): 256 px of an ESRGAN's input is ~0.3-1 GB of activations at
4x in float32, and large enough that the overlap costs little."""
OVERLAP = 32
"""Input pixels shared by neighbouring tiles: more than the few pixels over which an ESRGAN's output
visibly depends on its border, blended linearly."""


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is missing or cannot be imported; the message says what to install.

    Both an ``ImportError`` (what Python code expects of a missing package) and a ``ValueError``
    (what the command line and the web app show as a one-line message for a bad option)."""


def require_spandrel() -> Any:
    """The ``spandrel`` module, or :class:`MissingExtraError` in one line naming the extra.

    Any failure of the import counts (not only a missing package): spandrel imports torchvision,
    and a torchvision built for another torch fails with a RuntimeError at import."""
    try:
        import spandrel
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MissingExtraError(
            f"upscaler: model files are read with spandrel, which cannot be imported here ({reason}); {INSTALL}"
        ) from None
    return spandrel


def target_size(image: Image.Image, scale: float) -> tuple[int, int]:
    """(height, width) of ``image`` times ``scale``, rounded to whole pixels."""
    scale = check_number("scale", scale, 1, MAX_SCALE)
    return round(image.height * scale), round(image.width * scale)


def file_record(path: str | os.PathLike) -> dict[str, str]:
    """What a result's parameters store of an upscaler file: its path and SHA-256, so stored settings
    can tell a changed file from the one used (as for input images)."""
    return {"path": str(path), "sha256": sha256_file(path)}


def upscaler_record(upscaler: Any) -> str | dict[str, str]:
    """The stored form of an upscaler: the filter's name, the file's :func:`file_record`, or
    "callable" (a function cannot be stored; settings read back ask for it again)."""
    if isinstance(upscaler, str) and upscaler in FILTERS:
        return upscaler
    if isinstance(upscaler, (str, os.PathLike)):
        return file_record(upscaler)
    return "callable"


def upscale_image(
    image: Image.Image,
    scale: float | None = None,
    upscaler: str | os.PathLike | Callable[[Image.Image], Image.Image] | Any = "lanczos",
    *,
    size: tuple[int, int] | None = None,
    allow_pickle: bool = False,
    device: torch.device | str | None = None,
    tile: int = TILE,
    overlap: int = OVERLAP,
) -> Image.Image:
    """``image`` resized by ``scale`` (or to ``size`` = (height, width), which wins) with ``upscaler``:
    a filter name, a callable PIL -> PIL, a model file (spandrel; ``.pth`` only with
    ``allow_pickle``) or a model spandrel has loaded already (an ``ImageModelDescriptor``). The
    result is RGB and exactly the target size. Model files run on ``device`` (default CPU) in tiles
    of ``tile`` input pixels overlapping by ``overlap``."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
    if size is None:
        if scale is None:
            raise ValueError("upscale_image: give scale or size")
        size = target_size(image, scale)
    height, width = size
    image = image.convert("RGB") if image.mode != "RGB" else image
    if _is_descriptor(upscaler):
        return _to_size(_run_model(upscaler, image, size, device, tile, overlap), size)
    upscaler = check_upscaler(upscaler, allow_pickle)
    if isinstance(upscaler, str) and upscaler in FILTERS:
        return image.resize((width, height), resample=FILTERS[upscaler])
    if isinstance(upscaler, str):
        model = load_model(upscaler, allow_pickle=allow_pickle, device=device)
        return _to_size(_run_model(model, image, size, device, tile, overlap), size)
    result = upscaler(image)
    if not isinstance(result, Image.Image):
        raise ValueError(f"upscaler: the callable must return a PIL image, got {type(result).__name__}")
    return _to_size(result.convert("RGB") if result.mode != "RGB" else result, size)


def _to_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if (image.height, image.width) == tuple(size):
        return image
    return image.resize((size[1], size[0]), resample=Image.Resampling.LANCZOS)


def _is_descriptor(value: Any) -> bool:
    """A model spandrel has loaded (duck-typed, so spandrel need not be importable to ask)."""
    return all(hasattr(value, a) for a in ("scale", "size_requirements", "input_channels", "model"))


def load_model(path: str | os.PathLike, *, allow_pickle: bool = False, device: torch.device | str | None = None) -> Any:
    """An image-to-image network from a model file, read by spandrel (``ModelLoader``) onto
    ``device`` in eval mode. ValueError naming ``upscaler`` for a pickle without ``allow_pickle``,
    a file spandrel cannot read, or a network that is not RGB image to RGB image;
    :class:`MissingExtraError` when spandrel cannot be imported."""
    checked = check_upscaler(str(path), allow_pickle)
    if checked in FILTERS:
        raise ValueError(f"upscaler: {str(path)!r} is a filter name, not a model file")
    spandrel = require_spandrel()
    name = Path(checked).name
    try:
        model = spandrel.ModelLoader(device=device or "cpu").load_from_file(checked)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"upscaler: {name!r} is not a model spandrel can read ({detail})") from None
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise ValueError(f"upscaler: {name!r} is a {type(model).__name__} ({model.purpose}), not an image upscaler")
    if model.input_channels != 3 or model.output_channels != 3:
        raise ValueError(
            f"upscaler: {name!r} maps {model.input_channels} to {model.output_channels} channels; an upscaler "
            "for RGB images (3 to 3) is needed"
        )
    return model.eval()


def _run_model(model: Any, image: Image.Image, size: tuple[int, int], device: Any, tile: int, overlap: int):
    """Network passes (see the module docstring) of a spandrel descriptor over ``image``."""
    s = int(model.scale)
    device = torch.device(device) if device is not None else model.device
    dtype = torch.float16 if device.type == "cuda" and getattr(model, "supports_half", False) else torch.float32
    model.to(device=device, dtype=dtype)
    internal = getattr(getattr(model, "tiling", None), "name", "") == "INTERNAL"  # tiles by itself
    current = image
    while True:
        pixels = torch.from_numpy(np.asarray(current).copy()).permute(2, 0, 1)[None]
        whole = max(current.height, current.width)
        current = run_tiled(
            lambda x: model(x.to(device=device, dtype=dtype)),
            pixels,
            s,
            whole if internal else tile,
            0 if internal else overlap,
        )
        # another pass only while its output stays within the target (Lanczos does the rest)
        if s == 1 or current.height * s > size[0] or current.width * s > size[1]:
            break
    return current


def _ramp(length: int, fade: int, start: bool, end: bool) -> torch.Tensor:
    """Blend weights along one side of a tile, for an end that meets a neighbour over ``fade`` pixels
    (``start``/``end``): 0 on the outer quarter of the overlap, where the network saw the tile's
    padding instead of the image, then linear over its middle half, 1 beyond (and at the image's
    edges). The neighbour's weight is 1 where this one is 0, so every pixel has some weight."""
    w = torch.ones(length)
    fade = min(fade, length)
    if fade > 0:
        margin = fade // 4
        rise = fade - 2 * margin
        ramp = torch.cat([torch.zeros(margin), (torch.arange(rise, dtype=torch.float32) + 0.5) / rise])
        ramp = torch.cat([ramp, torch.ones(fade - ramp.numel())])
        if start:
            w[:fade] = torch.minimum(w[:fade], ramp)
        if end:
            w[length - fade :] = torch.minimum(w[length - fade :], ramp.flip(0))
    return w


@torch.no_grad()
def run_tiled(
    network: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    scale: int,
    tile: int = TILE,
    overlap: int = OVERLAP,
) -> Image.Image:
    """``network`` (a (1, 3, h, w) float image in [0, 1] -> (1, 3, h*scale, w*scale)) over an 8-bit
    (1, 3, H, W) image in overlapping tiles of ``tile`` pixels, blended over the ``overlap`` (the outer
    quarter of each tile's overlap dropped, linear ramps over the middle half;
    :func:`~multidiffusion.engine.views.axis_starts` places the tiles: a last tile flush with each
    edge). Rows of the output are finished and converted to 8 bits as soon as no later tile
    touches them, so the float data held is one row of tiles."""
    if tile < 8 or not 0 <= overlap < tile:
        raise ValueError(f"tile must be ≥ 8 and overlap in [0, tile), got tile={tile}, overlap={overlap}")
    _, _, height, width = pixels.shape
    th, tw = min(tile, height), min(tile, width)
    tops = axis_starts(height, th, tile - overlap)
    lefts = axis_starts(width, tw, tile - overlap)
    out = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    num = torch.zeros((3, 0, width * scale))
    den = torch.zeros((1, 0, width * scale))
    done = 0  # output rows finished and written to ``out``; ``num``/``den`` hold rows from here on

    def flush(until: int) -> None:
        nonlocal num, den, done
        k = until - done
        if k <= 0:
            return
        rows = (num[:, :k] / den[:, :k]).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        out[done:until] = rows.permute(1, 2, 0).numpy()
        num, den, done = num[:, k:], den[:, k:], until

    for top in tops:
        flush(top * scale)  # rows above this row of tiles are final
        bottom = (top + th) * scale
        if done + num.shape[1] < bottom:
            grow = bottom - done - num.shape[1]
            num = torch.cat([num, torch.zeros((3, grow, width * scale))], dim=1)
            den = torch.cat([den, torch.zeros((1, grow, width * scale))], dim=1)
        rows = _ramp(th * scale, overlap * scale, top > 0, top + th < height)
        for left in lefts:
            crop = pixels[:, :, top : top + th, left : left + tw].float().div_(255)
            result = network(crop)
            expected = (1, 3, th * scale, tw * scale)
            if tuple(result.shape) != expected:
                raise ValueError(
                    f"upscaler: the network returned {tuple(result.shape)} for a {th}x{tw} tile; expected "
                    f"{expected} (its scale, {scale}x)"
                )
            cols = _ramp(tw * scale, overlap * scale, left > 0, left + tw < width)
            weight = rows[:, None] * cols[None, :]
            r0, c0 = top * scale - done, left * scale
            num[:, r0 : r0 + th * scale, c0 : c0 + tw * scale] += result[0].float().cpu() * weight
            den[:, r0 : r0 + th * scale, c0 : c0 + tw * scale] += weight
    flush(height * scale)
    return Image.fromarray(out)
