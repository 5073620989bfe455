"""The Regions tab's layout, as the page holds it: a painted or uploaded colour map, a table that
gives each colour its prompts, and a table of boxes. Turning these into ``Region`` objects is the
library's job; this module only reads the page's values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "BACKGROUND",
    "PALETTE",
    "blank_layout",
    "colour_cell",
    "colour_of_cell",
    "layout_colours",
    "layout_image",
    "merge_colour_table",
    "read_boxes",
    "read_colour_table",
]

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#911eb4", "#42d4f4", "#f58231", "#f032e6")
"""Brush colours: distinct, so painted regions are easy to tell apart."""
BACKGROUND = "#ffffff"
"""A blank canvas's colour; like any colour left without a prompt, it belongs to the background."""
MAX_COLOURS = 16
"""Most colours the table lists (the most frequent ones); rarer colours stay background."""
MIN_FRACTION = 0.001
"""Colours covering less of the canvas than this are edge pixels of anti-aliased maps, not regions."""
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
    if value.mode == "RGBA":  # erased (transparent) pixels are blank canvas
        canvas = Image.new("RGB", value.size, BACKGROUND)
        canvas.paste(value, mask=value.getchannel("A"))
        return canvas
    return value.convert("RGB")


def layout_colours(image: Image.Image, max_colours: int = MAX_COLOURS, min_fraction: float = MIN_FRACTION) -> list[str]:
    """The colours of a layout as '#rrggbb', most frequent first."""
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    keep = [i for i in order if counts[i] >= min_fraction * len(pixels)][:max_colours]
    return ["#{:02x}{:02x}{:02x}".format(*colours[i]) for i in keep]


def colour_cell(colour: str) -> str:
    """A table cell that shows a swatch and the colour's hex code."""
    return f'<span style="color:{colour}">■</span> {colour}'


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
