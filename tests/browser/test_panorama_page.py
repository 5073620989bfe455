"""The Panorama tab in headless Chromium: a small demo-model panorama, the size limit, PNG settings."""

from __future__ import annotations

from PIL import Image

from multidiffusion.files.metadata import read_parameters, save_png

from .conftest import GENERATE_MS, MAX_SIDE, MODEL


def set_number(page, selector: str, value: object) -> None:
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Enter")  # sliders' number boxes apply the value on Enter or blur


def generated_image(page):
    image = page.locator("#pano-result img")
    image.wait_for(timeout=GENERATE_MS)
    page.wait_for_function("() => document.querySelector('#pano-result img').naturalWidth > 0")
    return image


def test_generate_a_demo_panorama(page, tmp_path, screenshot):
    page.fill("#pano-prompt textarea", "snowy mountains under a starry night sky")
    set_number(page, "#pano-width input", 256)
    set_number(page, "#pano-height input", 64)
    set_number(page, "#pano-steps input[type=number]", 8)
    set_number(page, "#pano-seed input", 7)
    page.click("#pano-generate")

    image = generated_image(page)
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [256, 64]
    status = page.locator("#pano-message")
    assert "256x64 px, seed 7" in status.inner_text()
    screenshot(page, "app-panorama")

    with page.expect_download() as download:
        page.click("#pano-download")
    path = tmp_path / "download.png"
    download.value.save_as(path)
    params = read_parameters(path)
    assert params["prompt"] == "snowy mountains under a starry night sky"
    assert params["seed"] == 7 and params["num_inference_steps"] == 8 and params["model"] == MODEL
    assert Image.open(path).size == (256, 64)


def test_too_large_a_canvas_is_a_clear_message(page):
    page.fill("#pano-prompt textarea", "a red house in a green meadow")
    set_number(page, "#pano-width input", 100_000)
    page.click("#pano-generate")
    status = page.locator("#pano-message .error")
    status.wait_for()
    text = status.inner_text()
    assert f"width must be a multiple of 8 from 64 to {MAX_SIDE} (pixels), got 100000 (this server's limit" in text
    assert "Traceback" not in page.content()
    assert page.locator("#pano-result img").count() == 0


def test_settings_load_from_a_png(page, tmp_path):
    path = tmp_path / "made-earlier.png"
    settings = {
        "mode": "panorama",
        "prompt": "a red house in a green meadow",
        "negative_prompt": "fog",
        "width": 192,
        "height": 64,
        "num_inference_steps": 12,
        "guidance_scale": 5.0,
        "seed": 42,
        "scheduler": "euler_a",
        "circular": True,
        "window": 16,
        "stride": 4,
        "model": MODEL,
    }
    save_png(Image.new("RGB", (192, 64)), path, settings)
    page.click("#load-accordion button, #load-accordion .label-wrap")
    page.locator("#load-png input[type=file]").set_input_files(str(path))
    page.locator("#load-message .info").wait_for()
    assert page.input_value("#pano-prompt textarea") == "a red house in a green meadow"
    assert page.input_value("#pano-negative textarea") == "fog"
    assert page.input_value("#pano-width input") == "192"
    assert page.input_value("#pano-seed input") == "42"
    assert page.input_value("#pano-steps input[type=number]") == "12"
    assert page.locator("#pano-circular input").is_checked()


def test_uploads_are_size_limited(page, tmp_path):
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)  # 3 MB as PNG
    path = tmp_path / "huge.png"
    Image.fromarray(noise).save(path)
    page.click("#load-accordion button, #load-accordion .label-wrap")
    page.locator("#load-png input[type=file]").set_input_files(str(path))
    page.get_by_text("exceed the maximum allowed size of 2.0 Mb").wait_for()
