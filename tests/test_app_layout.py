"""The Regions tab's page values: colours of a layout, the colour table, the boxes table."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from multidiffusion.app.layout import (
    blank_layout,
    colour_cell,
    layout_colours,
    layout_image,
    merge_colour_table,
    read_boxes,
    read_colour_table,
)


def test_layout_colours_most_frequent_first_without_edge_pixels():
    a = np.full((40, 100, 3), 255, np.uint8)
    a[:, 60:] = (230, 25, 75)
    a[5:15, 5:25] = (67, 99, 216)
    a[0, 0] = (1, 2, 3)  # one stray pixel: an anti-aliased edge, not a region
    assert layout_colours(Image.fromarray(a)) == ["#ffffff", "#e6194b", "#4363d8"]
    assert layout_colours(Image.fromarray(a), max_colours=2) == ["#ffffff", "#e6194b"]


def test_layout_image_reads_editor_values():
    assert layout_image(None) is None
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # erased everywhere
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    image = layout_image({"background": None, "layers": [], "composite": rgba})
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 0, 0) and image.getpixel((1, 1)) == (255, 255, 255)
    assert layout_image(blank_layout(16, 8)).size == (16, 8)


def test_colour_table_keeps_typed_prompts():
    table = [[colour_cell("#e6194b"), "snowy mountains", "fog"], [colour_cell("#4363d8"), "", ""]]
    assert read_colour_table(table) == {"#e6194b": ("snowy mountains", "fog")}
    merged = merge_colour_table(["#ffffff", "#e6194b"], table)
    assert merged == [[colour_cell("#ffffff"), "", ""], [colour_cell("#e6194b"), "snowy mountains", "fog"]]
    assert read_colour_table(None) == {} and read_colour_table([[None, None, None]]) == {}


def test_boxes_table():
    rows = [
        ["a red house", "", 0.1, 0.5, 0.4, 1.0],
        ["", "", "", "", "", ""],
        ["a tree", "snow", 10, 0, 64, 64],
    ]
    assert read_boxes(rows) == [
        ("a red house", "", (0.1, 0.5, 0.4, 1.0)),
        ("a tree", "snow", (10, 0, 64, 64)),
    ]
    with pytest.raises(ValueError, match="box 1: enter a prompt"):
        read_boxes([["", "", 0, 0, 1, 1]])
    with pytest.raises(ValueError, match="box 1: x0, y0, x1, y1 must be numbers"):
        read_boxes([["x", "", "left", 0, 1, 1]])
    with pytest.raises(ValueError, match="box 1: use fractions from 0 to 1 or whole pixels"):
        read_boxes([["x", "", 0.5, 0, 10.5, 1]])
