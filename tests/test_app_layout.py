"""The Regions tab's page values: colours of a layout, the colour table, the boxes table."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from multidiffusion import Region
from multidiffusion.app.layout import (
    BACKGROUND,
    blank_layout,
    colour_cell,
    layout_colours,
    layout_from_regions,
    layout_image,
    merge_colour_table,
    page_regions,
    read_boxes,
    read_colour_table,
    read_map,
    region_colour,
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


def three_colour_map(width=256, height=128):
    a = np.full((height, width, 3), 255, np.uint8)
    a[:, width // 2 :] = (230, 25, 75)
    a[8 : height // 2, 8 : width // 4] = (67, 99, 216)
    return Image.fromarray(a)


def test_page_regions_from_the_map_the_table_and_the_boxes():
    image = three_colour_map()
    table = merge_colour_table(layout_colours(image), [[colour_cell("#e6194b"), "snowy mountains", "fog"]])
    regions = page_regions({"composite": image}, table, [["a red house", "", 0.1, 0.5, 0.4, 1.0]], max_side=512)
    assert [r.prompt for r in regions] == ["snowy mountains", "a red house"]
    assert regions[0].negative_prompt == "fog" and regions[1].negative_prompt is None
    mask = regions[0].pixel_mask(128, 256)
    assert float(mask[:, 128:].min()) == 1.0 and float(mask[:, :128].max()) == 0.0  # blue stays background
    assert regions[1].box == (0.1, 0.5, 0.4, 1.0)
    assert page_regions({"composite": image}, [[colour_cell("#e6194b"), "", ""]], None, 512) == []
    with pytest.raises(ValueError, match="the layout is 256×128 px; this server takes layouts up to 128 px"):
        page_regions(image, table, None, max_side=128)


def test_an_uploaded_map_is_read_and_rounded(tmp_path):
    path = tmp_path / "map.png"
    three_colour_map(250, 98).save(path)
    image, note = read_map(path, 512)
    assert image.size == (248, 96) and "resized to 248×96 px" in note
    assert set(layout_colours(image)) == {"#ffffff", "#e6194b", "#4363d8"}
    with pytest.raises(ValueError, match="up to 200 px per side"):
        read_map(path, 200)
    (tmp_path / "not.png").write_text("hello")
    with pytest.raises(ValueError, match="not an image"):
        read_map(tmp_path / "not.png", 512)


def test_stored_regions_become_a_layout_again():
    image = three_colour_map()
    table = merge_colour_table(layout_colours(image), [[colour_cell("#e6194b"), "snowy mountains", "fog"],
                                                       [colour_cell("#4363d8"), "a lake", ""]])  # fmt: skip
    regions = page_regions(image, table, [["a red house", "", 10, 64, 100, 128]], 512)
    stored = [r.to_dict() for r in regions] + [{"prompt": "faint", "mask": regions[0].to_dict()["mask"], "weight": 2}]
    stored[-1]["mask"] = Region("x", mask=np.full((128, 256), 0.2, np.float32)).to_dict()["mask"]
    layout, colours, boxes, notes = layout_from_regions(stored, 256, 128)
    assert layout.size == (256, 128)
    assert [row[1:] for row in colours] == [["snowy mountains", "fog"], ["a lake", ""]]
    assert boxes == [["a red house", "", 10, 64, 100, 128]]
    again = page_regions(layout, colours, boxes, 512)
    for before, after in zip(regions, again):
        assert before.prompt == after.prompt
        assert bool((before.pixel_mask(128, 256) == after.pixel_mask(128, 256)).all())
    assert any("weight" in n for n in notes) and any("too faint" in n for n in notes)
    assert len({region_colour(i) for i in range(32)} | {BACKGROUND}) == 33  # distinct colours for 32 regions
