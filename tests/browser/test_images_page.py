"""The Upscale and Inpaint / Outpaint tabs in headless Chromium: upload an image, re-work or upscale
it; paint a mask (or upload one) and inpaint; extend the sides; refusals at the server's limits;
an image task's PNG settings back into its tab.

Runs of upscale, inpaint and outpaint skip while their task is not registered in
``multidiffusion.tasks.TASKS``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from multidiffusion.files.metadata import read_parameters, save_png
from multidiffusion.tasks import TASKS

from .conftest import GENERATE_MS, MAX_SIDE, MODEL

MASK_UPLOAD = 'input[data-testid="Upload a mask-upload-button"]'
IMAGE_UPLOAD = 'input[data-testid="Upload an image-upload-button"]'
UPSCALE_UPLOAD = 'input[data-testid="Upload the image to re-work-upload-button"]'


def needs_task(task: str):
    return pytest.mark.skipif(task not in TASKS, reason=f"the {task} task is not registered yet (multidiffusion.tasks)")


def landscape(path, width=128, height=64):
    """Sky over meadow, the demo model's world."""
    a = np.zeros((height, width, 3), np.uint8)
    a[: height // 2] = (90, 150, 230)
    a[height // 2 :] = (60, 160, 60)
    Image.fromarray(a).save(path)
    return str(path)


def set_number(page, selector: str, value: object) -> None:
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Enter")  # sliders' number boxes apply the value on Enter or blur


def result_size(page, prefix: str) -> list[int]:
    page.locator(f"#{prefix}-result img").wait_for(timeout=GENERATE_MS)
    page.wait_for_function(f"() => document.querySelector('#{prefix}-result img').naturalWidth > 0")
    return page.locator(f"#{prefix}-result img").evaluate("img => [img.naturalWidth, img.naturalHeight]")


def download(page, prefix: str, path):
    with page.expect_download() as done:
        page.click(f"#{prefix}-download")
    done.value.save_as(path)
    return read_parameters(path)


def open_upscale(page, image: str) -> None:
    page.click("#tab-upscale-button")
    page.locator(UPSCALE_UPLOAD).set_input_files(image)
    page.locator("#upscale-message .info").wait_for()


def open_inpaint(page, image: str) -> None:
    page.click("#tab-inpaint-button")
    page.locator("#inpaint-editor canvas").first.wait_for()
    page.locator(IMAGE_UPLOAD).set_input_files(image)
    page.locator("#inpaint-message .info").wait_for()


def paint(page) -> None:
    """A short stroke of the brush across the middle of the image."""
    page.click("#inpaint-editor button[aria-label=Brush]")
    canvas = page.locator("#inpaint-editor canvas").first.bounding_box()
    x, y = canvas["x"] + canvas["width"] * 0.4, canvas["y"] + canvas["height"] * 0.5
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 4):  # each move re-renders the canvas (slow without a GPU): keep it short
        page.mouse.move(x + 20 * k, y)
    page.mouse.up()


def test_upload_an_image_and_rework_it(page, tmp_path, screenshot):
    open_upscale(page, landscape(tmp_path / "meadow.png"))
    assert "Loaded 'meadow.png', 128×64 px. Upscaled 2x: about 256×128 px." in page.inner_text("#upscale-message")
    page.click("#upscale-task label:has-text('img2img')")
    page.locator("#upscale-only").wait_for(state="hidden")  # scale and upscaler are the upscale's
    page.wait_for_function("() => document.querySelector('#upscale-strength input[type=number]').value === '0.75'")
    page.fill("#upscale-prompt textarea", "snowy mountains under a starry night sky")
    set_number(page, "#upscale-steps input[type=number]", 8)
    set_number(page, "#upscale-seed input", 4)
    page.click("#upscale-generate")

    assert result_size(page, "upscale") == [128, 64]
    assert "128x64 px re-worked: 128x64 px, seed 4" in page.inner_text("#upscale-message")
    screenshot(page, "app-img2img")
    params = download(page, "upscale", tmp_path / "reworked.png")
    assert params["task"] == "img2img" and params["strength"] == 0.75 and params["model"] == MODEL
    assert params["image"]["path"] == "meadow.png" and len(params["image"]["sha256"]) == 64
    assert params["num_inference_steps"] == 8 and params["seed"] == 4

    # its settings load back into the Upscale tab, on the img2img task; the image is uploaded again
    page.reload()
    page.wait_for_selector("#pano-prompt textarea")
    page.click("#load-accordion button, #load-accordion .label-wrap")
    page.locator("#load-png input[type=file]").set_input_files(str(tmp_path / "reworked.png"))
    page.locator("#load-message .note").wait_for()
    assert "upload it again" in page.inner_text("#load-message")
    assert page.locator("#tab-upscale-button").get_attribute("aria-selected") == "true"
    assert page.locator("#upscale-task input[value=img2img]").is_checked()
    assert page.input_value("#upscale-prompt textarea") == "snowy mountains under a starry night sky"
    assert page.input_value("#upscale-strength input[type=number]") == "0.75"
    assert page.input_value("#upscale-seed input") == "4"


def test_too_large_an_image_is_refused_with_a_message(page, tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (MAX_SIDE + 64, 64), "white").save(wide)
    page.click("#tab-upscale-button")
    page.locator(UPSCALE_UPLOAD).set_input_files(str(wide))
    error = page.locator("#upscale-message .error")
    error.wait_for()
    refusal = f"image is {MAX_SIDE + 64}×64 px; this server takes images up to {MAX_SIDE} px per side"
    assert refusal in error.inner_text()
    page.click("#upscale-generate")  # a refused upload is not kept: the run asks for an image
    page.wait_for_function("() => document.querySelector('#upscale-message .error') !== null")
    page.wait_for_function("() => document.querySelector('#upscale-message').innerText.includes('image is required')")
    assert "image is required: upload an image" in page.inner_text("#upscale-message")
    assert page.locator("#upscale-result img").count() == 0
    assert "Traceback" not in page.content()


@needs_task("upscale")
def test_upscale_an_image(page, tmp_path, screenshot):
    open_upscale(page, landscape(tmp_path / "small.png", 64, 64))
    set_number(page, "#upscale-steps input[type=number]", 8)
    set_number(page, "#upscale-seed input", 2)
    page.click("#upscale-generate")
    assert result_size(page, "upscale") == [128, 128]
    assert "64x64 px upscaled 2x: 128x128 px, seed 2" in page.inner_text("#upscale-message")
    screenshot(page, "app-upscale")
    params = download(page, "upscale", tmp_path / "up.png")
    assert params["task"] == "upscale" and params["scale"] == 2 and params["upscaler"] == "lanczos"


def test_inpaint_needs_a_mask(page, tmp_path):
    open_inpaint(page, landscape(tmp_path / "meadow.png"))
    assert "Loaded 'meadow.png', 128×64 px" in page.inner_text("#inpaint-message")
    page.fill("#inpaint-prompt textarea", "a red house")
    page.click("#inpaint-generate")
    page.wait_for_function("() => document.querySelector('#inpaint-message .error') !== null")
    assert page.inner_text("#inpaint-message").startswith("mask: paint over the part of the image to repaint")


@needs_task("inpaint")
def test_paint_a_mask_and_inpaint(page, tmp_path, screenshot):
    open_inpaint(page, landscape(tmp_path / "meadow.png"))
    paint(page)
    page.fill("#inpaint-prompt textarea", "a red house")
    set_number(page, "#inpaint-steps input[type=number]", 4)
    set_number(page, "#inpaint-seed input", 3)
    page.click("#inpaint-generate")
    assert result_size(page, "inpaint") == [128, 64]
    assert "128x64 px inpainted: 128x64 px, seed 3" in page.inner_text("#inpaint-message")
    screenshot(page, "app-inpaint")
    params = download(page, "inpaint", tmp_path / "inpainted.png")
    assert params["task"] == "inpaint" and params["image"]["path"] == "meadow.png"


@needs_task("inpaint")
def test_upload_a_mask_and_inpaint(page, tmp_path):
    open_inpaint(page, landscape(tmp_path / "meadow.png"))
    mask = np.zeros((32, 64), np.uint8)  # half the image's size: resized to it
    mask[8:24, 40:60] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    page.locator(MASK_UPLOAD).set_input_files(str(tmp_path / "mask.png"))
    page.get_by_text("Loaded the mask").wait_for()
    page.fill("#inpaint-prompt textarea", "a red house")
    set_number(page, "#inpaint-steps input[type=number]", 4)
    page.click("#inpaint-generate")
    assert result_size(page, "inpaint") == [128, 64]


@needs_task("outpaint")
def test_extend_an_image_to_360_degrees(page, tmp_path, screenshot):
    open_inpaint(page, landscape(tmp_path / "meadow.png"))
    page.click("#inpaint-task label:has-text('Outpaint')")
    page.locator("#outpaint-left input").wait_for()
    page.wait_for_function("() => document.querySelector('#inpaint-mask-blur input').value === '8'")
    set_number(page, "#outpaint-left input", 32)
    set_number(page, "#outpaint-right input", 32)
    page.check("#inpaint-circular input")
    page.fill("#inpaint-prompt textarea", "a green meadow under a blue sky")
    set_number(page, "#inpaint-steps input[type=number]", 4)
    page.click("#inpaint-generate")
    assert result_size(page, "inpaint") == [192, 64]
    assert "128x64 px extended: 192x64 px" in page.inner_text("#inpaint-message")
    screenshot(page, "app-outpaint")
    params = download(page, "inpaint", tmp_path / "wide.png")
    assert params["task"] == "outpaint" and params["left"] == 32 and params["circular"] is True


def test_settings_of_an_outpaint_load_into_its_tab(page, tmp_path):
    path = tmp_path / "outpainted.png"
    settings = {"mode": "outpaint", "prompt": "a green meadow", "left": 64, "right": 32, "overlap": 8,
                "mask_blur": 6, "circular": True, "seed": 11, "num_inference_steps": 12, "model": MODEL}  # fmt: skip
    save_png(Image.new("RGB", (224, 64)), path, settings)
    page.click("#load-accordion button, #load-accordion .label-wrap")
    page.locator("#load-png input[type=file]").set_input_files(str(path))
    page.locator("#load-message .note").wait_for()
    assert page.locator("#tab-inpaint-button").get_attribute("aria-selected") == "true"
    assert page.locator("#inpaint-task input[value=outpaint]").is_checked()
    page.locator("#outpaint-left input").wait_for()  # the outpaint settings are shown
    assert page.input_value("#outpaint-left input") == "64" and page.input_value("#outpaint-right input") == "32"
    assert page.input_value("#inpaint-mask-blur input") == "6"  # the stored value, not the task's default
    assert page.locator("#inpaint-circular input").is_checked()
    assert page.input_value("#inpaint-prompt textarea") == "a green meadow"
