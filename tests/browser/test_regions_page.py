"""The Regions tab in headless Chromium: upload a colour map, give its colours prompts, generate
with the demo model; paint a region; load a regions PNG's settings back."""

from __future__ import annotations

import numpy as np
from PIL import Image

from multidiffusion.files.metadata import read_parameters

from .conftest import GENERATE_MS, MODEL

RED, BLUE = "#e6194b", "#4363d8"
UPLOAD = 'input[data-testid="Upload a colour map-upload-button"]'


def colour_map(path, width=128, height=64):
    a = np.full((height, width, 3), 255, np.uint8)
    a[:, width // 2 :] = (230, 25, 75)  # red: the right half
    a[8:56, 8:40] = (67, 99, 216)  # blue: a box on the left
    Image.fromarray(a).save(path)
    return path


def open_regions(page):
    page.click("#tab-regions-button")
    page.locator("#regions-layout canvas").first.wait_for()


def colour_row(page, colour: str) -> int:
    """The row of the colour table that holds ``colour``."""
    cell = page.locator("#regions-colours [data-testid^='cell-'][data-col='0']", has_text=colour)
    cell.wait_for()
    return int(cell.get_attribute("data-row"))


def type_cell(page, table: str, row: int, col: int, text: str) -> None:
    cell = page.locator(f'#{table} [data-testid="cell-{row}-{col}"]')
    cell.dblclick()
    editor = cell.locator("textarea, input")
    editor.wait_for()
    editor.fill(text)
    editor.press("Enter")
    page.wait_for_function(
        "([sel, text]) => document.querySelector(sel)?.innerText.includes(text)",
        arg=[f'#{table} [data-testid="cell-{row}-{col}"]', text],
    )


def set_number(page, selector: str, value: object) -> None:
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Enter")


def test_upload_a_map_assign_prompts_generate(page, tmp_path, screenshot):
    open_regions(page)
    page.locator(UPLOAD).set_input_files(str(colour_map(tmp_path / "map.png")))
    page.get_by_text("Loaded a 128×64 px colour map").wait_for()
    assert page.input_value("#regions-width input") == "128" and page.input_value("#regions-height input") == "64"

    page.fill("#regions-background textarea", "a green meadow under a blue sky")
    type_cell(page, "regions-colours", colour_row(page, RED), 1, "snowy mountains")
    type_cell(page, "regions-colours", colour_row(page, BLUE), 1, "a red house")
    set_number(page, "#regions-steps input[type=number]", 8)
    set_number(page, "#regions-seed input", 3)
    page.click("#regions-generate")

    image = page.locator("#regions-result img")
    image.wait_for(timeout=GENERATE_MS)
    page.wait_for_function("() => document.querySelector('#regions-result img').naturalWidth > 0")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [128, 64]
    assert page.locator("#regions-preview-image img").is_visible()  # the layout, beside the result
    assert "128x64 px, seed 3, " in page.inner_text("#regions-message") and "2 regions" in page.inner_text(
        "#regions-message"
    )
    screenshot(page, "app-regions")

    with page.expect_download() as download:
        page.click("#regions-download")
    png = tmp_path / "regions.png"
    download.value.save_as(png)
    params = read_parameters(png)
    assert params["task"] == "regions" and params["model"] == MODEL and params["seed"] == 3
    assert [r["prompt"] for r in params["regions"]] == ["snowy mountains", "a red house"]

    # the PNG's settings load back into a fresh page: the tab, the prompts, the layout
    page.reload()
    page.wait_for_selector("#pano-prompt textarea")
    page.click("#load-accordion button, #load-accordion .label-wrap")
    page.locator("#load-png input[type=file]").set_input_files(str(png))
    page.locator("#load-message .info").wait_for()
    assert page.locator("#tab-regions-button").get_attribute("aria-selected") == "true"
    assert page.input_value("#regions-background textarea") == "a green meadow under a blue sky"
    assert page.input_value("#regions-seed input") == "3"
    table = page.inner_text("#regions-colours")
    assert "snowy mountains" in table and "a red house" in table


def test_paint_a_region_and_preview_it(page):
    open_regions(page)
    page.click("#regions-layout button[aria-label=Brush]")  # the first colour of the palette: red
    canvas = page.locator("#regions-layout canvas").first.bounding_box()
    x, y = canvas["x"] + canvas["width"] * 0.3, canvas["y"] + canvas["height"] * 0.5
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 4):  # a short stroke: each move re-renders the canvas (slow without a GPU)
        page.mouse.move(x + 30 * k, y)
    page.mouse.up()
    page.fill("#regions-background textarea", "a green meadow")
    page.click("#regions-preview")  # reads the painted colours into the table
    type_cell(page, "regions-colours", colour_row(page, RED), 1, "a red house")
    page.click("#regions-preview")
    page.wait_for_function(
        "() => { const img = document.querySelector('#regions-preview-image img'); return img && img.naturalWidth > 0 }"
    )
    assert page.locator("#regions-message .error").count() == 0
