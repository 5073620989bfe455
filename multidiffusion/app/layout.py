"""The Regions tab's layout, as the page holds it: a painted or uploaded colour map, a table that
gives each colour its prompts, and a table of boxes. Turning these into ``Region`` objects is the
library's job; this module only reads the page's values.
"""

from __future__ import annotations

import colorsys
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from multidiffusion.io.image_loader import check_file, open_header
from multidiffusion.regions.layout import Region
from multidiffusion.regions.masks import ASPECT_TOLERANCE

__all__ = [
    "BACKGROUND",
    "PALETTE",
    "blank_layout",
    "colour_cell",
    "colour_of_cell",
    "layout_colours",
    "layout_from_regions",
    "layout_image",
    "merge_colour_table",
    "page_regions",
    "read_boxes",
    "read_colour_table",
    "read_map",
    "region_colour",
]

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#911eb4", "#42d4f4", "#f58231", "#f032e6")
"""Brush colours: distinct, so painted regions are easy to tell apart."""
BACKGROUND = "#ffffff"
"""A blank canvas's colour; like any colour left without a prompt, it belongs to the background."""
MAX_COLOURS = 16
"""Most colours the table lists (the most frequent ones); rarer colours stay background."""
MIN_FRACTION = 0.001
"""Colours covering less of the canvas than this are edge pixels of anti-aliased maps, not regions."""
MAX_DISTINCT = 4096
"""Most distinct colours a layout may have: a map is flat colours, one per region (a photo has 10^5)."""
COUNT_PIXELS = 1 << 20
"""The table's colours are counted on at most this many pixels of the layout (an even grid of them)."""
_HEX = re.compile(r"#[0-9a-fA-F]{6}")


def blank_layout(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (int(width), int(height)), BACKGROUND)


def layout_image(value: Any) -> Image.Image | None:
    """The flattened image of an image-editor value (a dict with 'composite'), a PIL image, or None."""
    if isinstance(value, dict):
        value = value.get("composite") if value.get("composite") is not None else value.get("background")
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = Image.fromarray(value)
    if value.mode in ("RGBA", "LA", "PA") or (value.mode == "P" and "transparency" in value.info):
        value = value.convert("RGBA")
    if value.mode == "RGBA":  # erased (transparent) pixels are blank canvas
        canvas = Image.new("RGB", value.size, BACKGROUND)
        canvas.paste(value, mask=value.getchannel("A"))
        return canvas
    return value.convert("RGB")


def read_map(path: str | os.PathLike, max_side: int) -> tuple[Image.Image, str]:
    """An uploaded colour map as the page's layout, and a note for the page. Sides that are not
    multiples of 8 are rounded (nearest-neighbour resampling keeps the colours flat)."""
    shown = repr(Path(path).name)  # the upload's name, not the server's folders
    try:
        image = open_header(check_file(path, "colour map"), "colour map", shown)  # the header, allowed formats only
    except Image.DecompressionBombError:
        raise ValueError(f"colour map: {shown} declares more than {max_side} px per side, the most allowed") from None
    except ValueError as exc:
        raise ValueError(str(exc).replace(repr(str(Path(path).expanduser())), shown)) from None
    w, h = image.size
    if max(w, h) > max_side:
        raise ValueError(f"the colour map is {w}×{h} px; this server takes maps up to {max_side} px per side")
    image = layout_image(image)
    size = (max(8, round(w / 8) * 8), max(8, round(h / 8) * 8))
    if size == (w, h):
        return image, f"Loaded a {w}×{h} px colour map; the canvas is now its size."
    return image.resize(size, Image.Resampling.NEAREST), (
        f"Loaded a {w}×{h} px colour map, resized to {size[0]}×{size[1]} px (sides are multiples of 8)."
    )


def layout_colours(
    image: Image.Image,
    max_colours: int | None = MAX_COLOURS,
    min_fraction: float = MIN_FRACTION,
    max_pixels: int | None = COUNT_PIXELS,
) -> list[str]:
    """The colours of a layout as '#rrggbb', most frequent first, counted on at most ``max_pixels``
    pixels (an even grid; None: all of them). ValueError if it has more than ``MAX_DISTINCT`` colours."""
    a = np.asarray(image.convert("RGB"))
    if max_pixels is not None and a.shape[0] * a.shape[1] > max_pixels:
        step = math.ceil(math.sqrt(a.shape[0] * a.shape[1] / max_pixels))
        a = a[::step, ::step]
    codes = (a[..., 0].astype(np.uint32) << 16) | (a[..., 1].astype(np.uint32) << 8) | a[..., 2]
    colours, counts = np.unique(codes.ravel(), return_counts=True)  # one number per colour: fast, small
    if len(colours) > MAX_DISTINCT:
        raise ValueError(
            f"the layout has more than {MAX_DISTINCT} colours (a photo or a smooth drawing?): use a colour map "
            "of flat colours, one per region"
        )
    order = np.argsort(-counts, kind="stable")
    keep = [i for i in order if counts[i] >= min_fraction * codes.size][:max_colours]
    return [f"#{int(colours[i]):06x}" for i in keep]


def colour_cell(colour: str) -> str:
    """A table cell that shows a swatch and the colour's hex code."""
    swatch = f"display:inline-block;width:0.9em;height:0.9em;background:{colour};border:1px solid #888"
    return f'<span style="{swatch}"></span> {colour}'


def colour_of_cell(cell: object) -> str | None:
    match = _HEX.search(str(cell or ""))
    return match.group(0).lower() if match else None


def _rows(table: Any) -> list[list[Any]]:
    if table is None:
        return []
    if hasattr(table, "values") and hasattr(table, "columns"):  # a pandas DataFrame
        table = table.values.tolist()
    return [list(row) for row in table]


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def read_colour_table(table: Any) -> dict[str, tuple[str, str]]:
    """{colour: (prompt, negative prompt)} for the rows that have a prompt."""
    prompts: dict[str, tuple[str, str]] = {}
    for row in _rows(table):
        colour = colour_of_cell(row[0] if row else None)
        prompt = _text(row[1]) if len(row) > 1 else ""
        if colour and prompt:
            prompts[colour] = (prompt, _text(row[2]) if len(row) > 2 else "")
    return prompts


def merge_colour_table(colours: Sequence[str], table: Any) -> list[list[str]]:
    """One row per colour of the layout, keeping the prompts already typed for those colours."""
    typed = {}
    for row in _rows(table):
        colour = colour_of_cell(row[0] if row else None)
        if colour:
            typed[colour] = [_text(row[1]) if len(row) > 1 else "", _text(row[2]) if len(row) > 2 else ""]
    return [[colour_cell(c), *typed.get(c, ["", ""])] for c in colours]


Box = tuple[float, float, float, float] | tuple[int, int, int, int]


def read_boxes(table: Any) -> list[tuple[str, str, Box]]:
    """(prompt, negative prompt, (x0, y0, x1, y1)) for each filled row of the boxes table; ValueError
    naming the row otherwise. Coordinates all from 0 to 1 are fractions of the canvas (floats, as the
    API takes them); otherwise they are pixels (whole numbers)."""
    boxes = []
    for n, row in enumerate(_rows(table), start=1):
        cells = [_text(c) for c in row] + [""] * (6 - len(row))
        if not any(cells):
            continue
        prompt, negative, *coords = cells[:6]
        if not prompt:
            raise ValueError(f"box {n}: enter a prompt (or clear the row)")
        try:
            x0, y0, x1, y1 = (float(c) for c in coords)
        except ValueError:
            raise ValueError(f"box {n}: x0, y0, x1, y1 must be numbers, got {', '.join(coords)}") from None
        box: Box = (x0, y0, x1, y1)
        if not all(0 <= c <= 1 for c in box):
            if not all(c.is_integer() for c in box):
                raise ValueError(f"box {n}: use fractions from 0 to 1 or whole pixels, got {', '.join(coords)}")
            box = (int(x0), int(y0), int(x1), int(y1))
        boxes.append((prompt, negative, box))
    return boxes


def page_regions(
    layout: Any, colours: Any, boxes: Any, max_side: int, canvas: tuple[int, int] | None = None
) -> list[Region]:
    """The page's regions: one per colour of the layout that has a prompt in the colour table (every
    other colour is background), then one per row of the boxes table. ``canvas`` (width, height):
    the layout must have its aspect ratio (it is scaled to it)."""
    regions: list[Region] = []
    image = layout_image(layout)
    prompts = read_colour_table(colours)
    if image is not None and prompts:
        if max(image.size) > max_side:
            raise ValueError(
                f"the layout is {image.width}×{image.height} px; this server takes layouts up to {max_side} px per side"
            )
        if canvas is not None and abs(image.width * canvas[1] / (image.height * canvas[0]) - 1) > ASPECT_TOLERANCE:
            raise ValueError(
                f"the layout is {image.width}×{image.height} px but the canvas is {canvas[0]}×{canvas[1]}: set width "
                "and height to the layout's size (or its aspect ratio), or start a new blank canvas"
            )
        table: dict[str, Any] = dict.fromkeys(
            layout_colours(image, max_colours=None, min_fraction=0, max_pixels=None), ""
        )
        for colour, (prompt, negative) in prompts.items():
            if colour in table:  # rows of colours painted over since are ignored
                table[colour] = {"prompt": prompt, "negative_prompt": negative or None}
        regions += Region.from_segmentation(image, table)
    for prompt, negative, box in read_boxes(boxes):
        regions.append(Region(prompt, negative_prompt=negative or None, box=box))
    return regions


def region_colour(i: int) -> str:
    """A distinct colour for the i-th region restored from a PNG: the palette, then spread hues."""
    if i < len(PALETTE):
        return PALETTE[i]
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.55 + 0.4 * ((i // 7) % 2), 0.85 - 0.3 * ((i // 3) % 2))
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def layout_from_regions(
    regions: Sequence[Mapping[str, Any]], width: int, height: int
) -> tuple[Image.Image, list[list[str]], list[list[Any]], list[str]]:
    """The page's layout for regions stored in a PNG: (colour map, colour table, boxes table, notes).

    Masks are painted in distinct colours (soft masks where they are at least 0.5; later regions
    over earlier ones); boxes go to the boxes table. Settings the page does not edit (a region's
    weight, guidance, feather) are named in the notes.
    """
    canvas = np.full((height, width, 3), 255, np.uint8)
    colour_rows: list[list[str]] = []
    box_rows: list[list[Any]] = []
    notes: list[str] = []
    for i, data in enumerate(regions):
        prompt, negative = str(data.get("prompt", "")), str(data.get("negative_prompt") or "")
        dropped = [k for k in ("weight", "guidance_scale", "feather") if data.get(k) not in (None, 0, 0.0, 1.0)]
        if dropped:
            notes.append(f"region {i + 1} ({prompt!r}): its {', '.join(dropped)} can't be edited here and were reset")
        if data.get("box") is not None:
            box_rows.append([prompt, negative, *data["box"]])
            continue
        if data.get("mask") is None:
            continue
        mask = Region(prompt, mask=data["mask"]).pixel_mask(height, width, f"region {i + 1}").numpy() >= 0.5
        if not mask.any():
            notes.append(f"region {i + 1} ({prompt!r}) is too faint a mask to paint and was left out")
            continue
        colour = region_colour(len(colour_rows))
        canvas[mask] = [int(colour[k : k + 2], 16) for k in (1, 3, 5)]
        colour_rows.append([colour_cell(colour), prompt, negative])
    return Image.fromarray(canvas), colour_rows, box_rows, notes
