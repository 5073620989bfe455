"""Colour-coded segmentation maps: read as RGB, their distinct colours counted in O(pixels) (one
``np.unique`` over packed 24-bit codes) and refused past ``max_colours`` (each colour is a region with
its own prompt and mask: a map with a colour per pixel is a photo or an antialiased drawing), colour
names and hex codes parsed, and each colour's mask (:func:`segmentation_masks`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, overload

import numpy as np
import torch
from PIL import Image, ImageColor

from multidiffusion.io.image_loader import DEFAULT_LIMITS, ImageLimits, check_pixels, open_image, to_8bit
from multidiffusion.io.messages import shown
from multidiffusion.regions.masks import MaskLike

__all__ = [
    "ColourMasks",
    "colour_counts",
    "colour_hex",
    "colour_table",
    "count_colours",
    "load_rgb",
    "pack_rgb",
    "parse_colour",
    "segmentation_masks",
]


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


def _read_rgb(value: MaskLike, name: str, limits: ImageLimits) -> np.ndarray:
    if isinstance(value, (str, os.PathLike, Image.Image)):
        value = open_image(value, name, limits)
    if isinstance(value, Image.Image):
        return np.asarray(to_8bit(value, name, "the map").convert("RGB"))
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.ndim == 3 and value.shape[0] in (3, 4) and value.shape[-1] not in (3, 4):
            value = np.moveaxis(value, 0, -1)
        if value.ndim != 3 or value.shape[-1] not in (3, 4) or value.dtype != np.uint8:
            raise ValueError(f"{name} must be a (height, width, 3) uint8 array, got {value.dtype} {value.shape}")
        return value[..., :3]
    raise ValueError(f"{name} must be a path, a PIL image or an array, got {type(value).__name__}")


def load_rgb(value: MaskLike, name: str = "map", limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A colour-coded map (H, W, 3) uint8 from a path, data URI, PIL image, array or tensor, held to
    ``limits``: bytes and pixels, and at most ``limits.max_colours`` distinct colours."""
    rgb = _read_rgb(value, name, limits)
    colour_counts(rgb, limits, name)
    return rgb


# -- colours and segmentation maps ---------------------------------------------------------------
def parse_colour(value: Any, name: str = "colour") -> tuple[int, int, int]:
    """An RGB triple from '#rrggbb', '#rgb', 'r,g,b', a CSS colour name or a sequence of 3 ints."""
    if isinstance(value, str):
        text = value.strip()
        if "," in text:
            parts = text.strip("()[] ").split(",")
            try:
                value = [int(p) for p in parts]
            except ValueError:
                raise ValueError(f"{name} {text!r} is not a colour: use '#rrggbb', 'r,g,b' or a name") from None
        else:
            try:
                rgb = ImageColor.getrgb(text)
            except ValueError:
                raise ValueError(f"{name} {text!r} is not a colour: use '#rrggbb', 'r,g,b' or a name") from None
            return rgb[0], rgb[1], rgb[2]
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        return value[0], value[1], value[2]
    raise ValueError(f"{name} {value!r} is not a colour: use '#rrggbb', 'r,g,b' or three integers 0-255")


def colour_hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


class ColourMasks(Sequence[np.ndarray]):
    """The boolean masks of some colours of a map, each built when it is asked for (indexing,
    iteration) and not kept: holding one mask per colour of a large map would take colours x
    pixels bytes. Keeps the map's packed colour codes (4 bytes per pixel)."""

    def __init__(self, codes: np.ndarray, colours: Sequence[tuple[int, int, int]]) -> None:
        self._codes = codes
        self._wanted = [(r << 16) | (g << 8) | b for r, g, b in colours]

    def __len__(self) -> int:
        return len(self._wanted)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self._codes == code for code in self._wanted[index]]
        return self._codes == self._wanted[index]


def segmentation_masks(
    image: MaskLike, colours: Sequence[tuple[int, int, int]], name: str = "map", limits: ImageLimits = DEFAULT_LIMITS
) -> ColourMasks:
    """One boolean mask per colour of a colour-coded map, built lazily (see :class:`ColourMasks`).
    Every colour of the map must be listed and every listed colour must occur: ValueError naming the
    colours found otherwise. Maps beyond ``limits`` (bytes, pixels, ``max_colours`` colours) are
    refused before any mask is built."""
    codes = pack_rgb(_read_rgb(image, name, limits))
    found, counts = colour_counts(codes, limits, name)
    order = np.argsort(-counts, kind="stable")  # by area, ties by colour
    found, counts = found[order], counts[order]
    wanted = {(r << 16) | (g << 8) | b for r, g, b in colours}

    def describe(code: int, count: int) -> str:
        return f"{colour_hex(((code >> 16) & 255, (code >> 8) & 255, code & 255))} ({count} px)"

    missing = [(c, n) for c, n in zip(found.tolist(), counts.tolist()) if c not in wanted]
    if missing:
        listed = ", ".join(describe(c, n) for c, n in missing[:12])
        more = ""
        if len(missing) > 12:
            more = f" and {len(missing) - 12} more (is the map antialiased or a JPEG? use flat colours)"
        raise ValueError(
            f"{name} has colours with no prompt: {listed}{more}. Colours in the map: "
            f"{', '.join(describe(c, n) for c, n in zip(found.tolist()[:12], counts.tolist()[:12]))}"
            f"{' ...' if len(found) > 12 else ''}. Give each a prompt (an empty prompt leaves it to the background)"
        )
    present = set(found.tolist())
    absent = [colour_hex(c) for c in colours if ((c[0] << 16) | (c[1] << 8) | c[2]) not in present]
    if absent:
        raise ValueError(
            f"{name} does not contain the colours {', '.join(absent)}; colours in the map: "
            f"{', '.join(describe(c, n) for c, n in zip(found.tolist()[:12], counts.tolist()[:12]))}"
        )
    return ColourMasks(codes, colours)


def colour_table(table: Mapping[Any, Any], name: str = "colors") -> list[tuple[tuple[int, int, int], Any]]:
    """(rgb, value) pairs of a colour -> value table; duplicate colours (e.g. 'red' and '#ff0000') fail."""
    if not isinstance(table, Mapping) or not table:
        raise ValueError(f"{name} must be a non-empty table of colour -> prompt, got {shown(table)}")
    pairs: list[tuple[tuple[int, int, int], Any]] = []
    seen: dict[tuple[int, int, int], Any] = {}
    for key, value in table.items():
        rgb = parse_colour(key, f"{name} key")
        if rgb in seen:
            raise ValueError(f"{name}: {key!r} and {seen[rgb]!r} are the same colour {colour_hex(rgb)}")
        seen[rgb] = key
        pairs.append((rgb, value))
    return pairs
