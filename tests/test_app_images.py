"""The web app's image tabs without a browser: uploads through the checked loader within the server's
limits, the mask painted in the editor, the upscalers a server offers (never a path from the page),
the Upscale and Inpaint / Outpaint forms, their handlers on the tiny model, and their PNGs' settings
read back without opening anything they name. Browser tests are in tests/browser/test_images_page.py.

Upscale, inpaint and outpaint runs skip while their task is not registered in
``multidiffusion.tasks.TASKS`` (their options and forms are tested regardless)."""

from __future__ import annotations

import hashlib
import html
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multidiffusion.app import ModelPool, ServerLimits
from multidiffusion.app.from_png import values_from_png
from multidiffusion.app.handlers import (
    Cancelled,
    OutputStore,
    generate_inpaint,
    generate_upscale,
    load_inpaint_image,
    load_mask,
)
from multidiffusion.app.inputs import MASK_ALPHA, editor_value, mask_from_editor, read_upload
from multidiffusion.app.settings import inpaint_request, steps_that_run, upscale_request
from multidiffusion.app.upscalers import Upscalers, parse_upscaler
from multidiffusion.files.metadata import read_parameters, save_png
from multidiffusion.tasks import TASKS

from .test_app import run_cli

IMAGE_FORM = {
    "prompt": "a red house",
    "negative_prompt": "",
    "num_inference_steps": 4,
    "guidance_scale": 7.5,
    "seed": 5,
    "scheduler": "ddim",
    "circular": False,
    "window": "",
    "stride": "",
    "model": "tiny",
}


def needs_task(task: str):
    return pytest.mark.skipif(task not in TASKS, reason=f"the {task} task is not registered yet (multidiffusion.tasks)")


@pytest.fixture
def pool(md16):
    return ModelPool(["tiny"], lambda name: md16)


def picture(path, width=128, height=64, seed=0):
    rng = np.random.default_rng(seed)
    a = np.zeros((height, width, 3), np.uint8)
    a[: height // 2] = (80, 140, 230)
    a[height // 2 :] = (60, 160, 60)
    a = np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)
    Image.fromarray(a).save(path)
    return str(path)


FULL = round(255 * MASK_ALPHA)  # the brush's opacity


def strokes(width=128, height=64, box=(40, 16, 80, 48), alpha=FULL):
    """An editor layer as the brush paints it: white at the brush's opacity inside ``box``."""
    a = np.zeros((height, width, 4), np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = (255, 255, 255, alpha)
    return Image.fromarray(a, "RGBA")


# -- uploads ------------------------------------------------------------------------------------------
def test_an_upload_goes_through_the_checked_loader_and_keeps_its_name(tmp_path):
    path = picture(tmp_path / "photo.png")
    found = read_upload(path, "image", ServerLimits())
    assert found.size == (64, 128) and found.image.mode == "RGB"
    assert found.path == "photo.png"  # the upload's name, never the server's folder
    assert found.sha256 == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_uploads_beyond_the_servers_limits_are_refused_before_decoding(tmp_path, monkeypatch):
    big = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(big)
    with pytest.raises(ValueError, match=r"^image is 1\.0 MB; this server accepts uploads up to 0\.5 MB"):
        read_upload(big, "image", ServerLimits(max_upload_mb=0.5))
    wide = tmp_path / "wide.png"
    Image.new("RGB", (2048, 64)).save(wide)  # a small file, too wide
    with pytest.raises(ValueError, match=r"^image is 2048×64 px; this server takes images up to 1024 px per side"):
        read_upload(wide, "image", ServerLimits(max_side=1024))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(20_000, 4_000))  # declares 8 * 10^7 pixels, holds none
    with pytest.raises(ValueError, match=r"^mask is 20000×4000 px; this server takes images up to 1024 px per side"):
        read_upload(bomb, "mask", ServerLimits(max_side=1024))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1024 * 1024)  # as the server sets it
    with pytest.raises(ValueError, match=r"^mask declares far more pixels than allowed; this server takes images up"):
        read_upload(bomb, "mask", ServerLimits(max_side=1024))
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match=r"^image: 'sub' is not a file"):
        read_upload(tmp_path / "sub", "image", ServerLimits())
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(
        ValueError, match=r"^image: 'notes\.png' is not an image \(cannot identify the format\); images may be PNG"
    ) as info:
        read_upload(text, "image", ServerLimits())
    assert str(tmp_path) not in str(info.value)  # the server's folders stay private
    with pytest.raises(ValueError, match=r"the upload \'gone\.png\' is gone"):
        read_upload(tmp_path / "gone.png", "image", ServerLimits())


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# -- the mask in the editor ----------------------------------------------------------------------------
def test_the_mask_is_what_the_brush_painted():
    background = Image.new("RGB", (128, 64), "blue")
    assert mask_from_editor(None, ServerLimits()) is None
    assert mask_from_editor({"background": background, "layers": [], "composite": background}, ServerLimits()) is None
    blank = {"background": background, "layers": [strokes(box=(0, 0, 0, 0))], "composite": background}
    assert mask_from_editor(blank, ServerLimits()) is None
    soft = strokes(box=(0, 0, 8, 8), alpha=FULL // 2)  # a stroke's soft edge: grey
    value = {"background": background, "layers": [strokes(), soft], "composite": background}
    mask = np.asarray(mask_from_editor(value, ServerLimits()))
    assert mask.shape == (64, 128) and mask[16:48, 40:80].min() == 255 and mask[:, 90:].max() == 0
    assert 120 <= mask[0, 0] <= 135
    with pytest.raises(ValueError, match=r"^mask is 2048×64 px; this server takes images up to 1024 px"):
        mask_from_editor({"layers": [strokes(2048, 64)]}, ServerLimits(max_side=1024))
    with pytest.raises(ValueError, match=r"^mask: the editor's layers have different sizes"):
        mask_from_editor({"layers": [strokes(), strokes(64, 64)]}, ServerLimits())


def test_an_uploaded_mask_becomes_strokes_on_the_image(tmp_path):
    image = picture(tmp_path / "photo.png")
    value, kept, note = load_inpaint_image(image, ServerLimits())
    assert kept == image and "Loaded 'photo.png', 128×64 px" in note
    assert value["background"].size == (128, 64) and value["layers"] == []
    small = np.zeros((32, 64), np.uint8)
    small[8:24, 20:40] = 255  # half the image's size: resized to it
    Image.fromarray(small).save(tmp_path / "mask.png")
    value, note = load_mask(tmp_path / "mask.png", image, ServerLimits())
    assert "Loaded the mask" in note
    mask = np.asarray(mask_from_editor(value, ServerLimits()))
    assert mask.shape == (64, 128) and mask[20:44, 44:76].min() == 255 and mask[:, :30].max() == 0
    Image.new("L", (64, 64)).save(tmp_path / "square.png")
    with pytest.raises(ValueError, match=r"^mask is 64x64 but the image is 128x64"):
        load_mask(tmp_path / "square.png", image, ServerLimits())
    with pytest.raises(ValueError, match=r"^mask: upload the image first"):
        load_mask(tmp_path / "mask.png", None, ServerLimits())
    assert editor_value(Image.new("RGB", (8, 8)))["layers"] == []


# -- upscalers -------------------------------------------------------------------------------------------
def test_the_page_chooses_upscalers_by_name_never_by_path(tmp_path):
    plain = Upscalers()
    assert plain.names == ("lanczos", "bicubic", "bilinear", "nearest")
    assert plain.resolve("Bicubic") == ("bicubic", False) and plain.resolve(None) == ("lanczos", False)
    model = tmp_path / "4x.safetensors"
    model.write_bytes(b"weights")
    for bad in (str(model), "/etc/passwd", "../4x.safetensors", "4x", 3):
        with pytest.raises(ValueError, match=r"^upscaler must be one of 'lanczos', .* \(this server's list\)"):
            plain.resolve(bad)

    offered = Upscalers([parse_upscaler(f"sharp={model}")])
    assert offered.names[-1] == "sharp" and offered.resolve("sharp") == (str(model), False)
    assert offered.name_of(str(model)) == "sharp" and offered.name_of("sharp") == "sharp"
    assert offered.name_of("/elsewhere/4x.pth") is None and offered.name_of("LANCZOS") == "lanczos"
    assert offered.name_of({"path": str(model), "sha256": "0" * 64}) == "sharp"  # the library's record of a file
    assert parse_upscaler(str(model)) == ("4x", str(model))

    pickle = tmp_path / "old.pth"
    pickle.write_bytes(b"weights")
    with pytest.raises(ValueError, match=r"^--upscaler old=.*old\.pth: upscaler: .* is a pickle file"):
        Upscalers({"old": pickle})
    assert Upscalers({"old": pickle}, allow_pickle=True).resolve("old") == (str(pickle), True)
    with pytest.raises(ValueError, match=r"^--upscaler lanczos=.*: the name 'lanczos' is taken"):
        Upscalers({"lanczos": model})
    with pytest.raises(ValueError, match=r"^--upscaler gone=.*: upscaler: no such file"):
        Upscalers({"gone": tmp_path / "gone.safetensors"})


# -- the forms ------------------------------------------------------------------------------------------
def test_upscale_form_checks(pool, tmp_path):
    image = picture(tmp_path / "photo.png")
    form = {**IMAGE_FORM, "task": "upscale", "image": image, "strength": 0.35, "scale": 2, "upscaler": "bicubic"}
    request = upscale_request({**form, "prompt": ""}, ServerLimits(), pool)
    o = request.options
    assert o.task == "upscale" and (o.height, o.width) == (128, 256) and o.upscaler == "bicubic"
    assert o.prompt == "" and o.image.path == "photo.png" and request.seed == 5
    bad = [
        ({"scale": 9}, "^scale must be a number from 1 to 8.0, got 9"),
        ({"strength": 0}, r"^strength must be a number in \(0, 1\]"),
        ({"upscaler": "/models/4x.pth"}, "^upscaler must be one of"),
        ({"task": "restore"}, "^task must be one of 'upscale', 'img2img', got 'restore'"),
        ({"image": None}, "^image is required: upload an image"),
        ({"num_inference_steps": 2}, r"^strength 0\.35 runs none of the 2 steps .* at least 3 steps"),
    ]
    for change, match in bad:
        with pytest.raises(ValueError, match=match):
            upscale_request({**form, **change}, ServerLimits(), pool)
    with pytest.raises(ValueError, match=r"^width must be a multiple of 8 from 64 to 512 \(pixels\), got 1024 \(this"):
        upscale_request({**form, "scale": 8}, ServerLimits(max_side=512), pool)  # the result is above the limit

    img2img = upscale_request({**form, "task": "img2img", "strength": 0.5, "scale": None}, ServerLimits(), pool)
    assert img2img.options.task == "img2img" and (img2img.options.height, img2img.options.width) == (64, 128)
    with pytest.raises(ValueError, match=r"^prompt must be a non-empty prompt"):
        upscale_request({**form, "task": "img2img", "prompt": " "}, ServerLimits(), pool)


def test_inpaint_and_outpaint_form_checks(pool, tmp_path):
    image = picture(tmp_path / "photo.png")
    mask = {"background": None, "layers": [strokes()], "composite": None}
    form = {**IMAGE_FORM, "task": "inpaint", "image": image, "mask": mask, "strength": 1.0, "mask_blur": 4}
    request = inpaint_request(form, ServerLimits(), pool)
    o = request.options
    assert o.task == "inpaint" and o.mask.size == (64, 128) and o.mask_blur == 4 and (o.height, o.width) == (64, 128)
    with pytest.raises(ValueError, match=r"^mask: paint over the part of the image to repaint"):
        inpaint_request({**form, "mask": {"background": None, "layers": [], "composite": None}}, ServerLimits(), pool)
    with pytest.raises(ValueError, match=r"^mask_blur must be an integer from 0 to 256, got -1"):
        inpaint_request({**form, "mask_blur": -1}, ServerLimits(), pool)

    sides = {"left": 64, "right": 64, "top": 0, "bottom": 0, "overlap": 16, "mask_blur": 8}
    out = inpaint_request({**form, **sides, "task": "outpaint", "mask": None, "circular": True}, ServerLimits(), pool)
    assert out.options.task == "outpaint" and (out.options.height, out.options.width) == (64, 256)
    assert out.options.circular is True
    with pytest.raises(ValueError, match=r"^left must be a multiple of 8 \(pixels\), got 20"):
        inpaint_request({**form, **sides, "task": "outpaint", "left": 20}, ServerLimits(), pool)
    with pytest.raises(ValueError, match=r"^outpaint: give at least one of left, right, top, bottom"):
        inpaint_request({**form, **sides, "task": "outpaint", "left": 0, "right": 0}, ServerLimits(), pool)
    with pytest.raises(ValueError, match=r"^width must be a multiple of 8 from 64 to 192 \(pixels\), got 256"):
        inpaint_request({**form, **sides, "task": "outpaint"}, ServerLimits(max_side=192), pool)


# -- runs ------------------------------------------------------------------------------------------------
def test_img2img_runs_writes_a_png_and_its_settings_come_back(pool, tmp_path):
    image = picture(tmp_path / "photo.png")
    steps: list[tuple[int, int]] = []
    form = {**IMAGE_FORM, "task": "img2img", "image": image, "strength": 0.5}
    store = OutputStore(tmp_path / "out")
    result = generate_upscale(
        form, pool=pool, limits=ServerLimits(), store=store, on_step=lambda i, n: steps.append((i, n))
    )
    assert steps == [(1, 2), (2, 2)]  # strength 0.5 of 4 steps: the progress bar counts the 2 that run
    assert result.message.startswith("128x64 px re-worked: 128x64 px, seed 5, ")
    params = read_parameters(result.path)
    assert params["task"] == "img2img" and params["model"] == "tiny" and params["strength"] == 0.5
    digest = hashlib.sha256(Path(image).read_bytes()).hexdigest()
    assert params["image"] == {"path": "photo.png", "sha256": digest}  # the upload's name, not its folder
    assert Image.open(result.path).size == (128, 64)

    mode, values, notes = values_from_png(result.path, ServerLimits(), pool)
    assert mode == "img2img" and values["task"] == "img2img" and values["strength"] == 0.5
    assert values["prompt"] == "a red house" and values["seed"] == 5 and "image" not in values
    assert notes == ["the input image is not stored in the PNG: upload it again"]
    again = generate_upscale({**form, **values}, pool=pool, limits=ServerLimits(), store=store)
    assert (np.asarray(Image.open(again.path)) == np.asarray(Image.open(result.path))).all()


def test_a_cancelled_image_job_stops_between_steps_and_writes_nothing(pool, tmp_path):
    done: list[int] = []
    form = {**IMAGE_FORM, "task": "img2img", "image": picture(tmp_path / "photo.png"), "strength": 1.0}
    store = OutputStore(tmp_path / "out")
    with pytest.raises(Cancelled):
        generate_upscale(
            form,
            pool=pool,
            limits=ServerLimits(),
            store=store,
            on_step=lambda i, n: done.append(i),
            is_cancelled=lambda: bool(done),
        )
    assert done == [1] and list(store.folder.glob("*.png")) == []


def test_progress_counts_the_steps_that_run():
    class Options:
        num_inference_steps = 10
        strength = 0.35

    assert steps_that_run(Options()) == 3
    Options.strength = 1.0
    assert steps_that_run(Options()) == 10


@needs_task("upscale")
def test_upscale_runs(pool, tmp_path):
    image = picture(tmp_path / "photo.png", 64, 64)
    form = {**IMAGE_FORM, "task": "upscale", "prompt": "", "image": image, "strength": 0.5, "scale": 2}
    result = generate_upscale(
        {**form, "upscaler": "bicubic"}, pool=pool, limits=ServerLimits(), store=OutputStore(tmp_path)
    )
    assert Image.open(result.path).size == (128, 128) and result.message.startswith("64x64 px upscaled 2x: 128x128")
    params = read_parameters(result.path)
    assert params["task"] == "upscale" and params["upscaler"] == "bicubic" and params["scale"] == 2
    mode, values, _ = values_from_png(result.path, ServerLimits(), pool)
    assert mode == "upscale" and values["task"] == "upscale" and values["upscaler"] == "bicubic"


@needs_task("inpaint")
def test_inpaint_runs(pool, tmp_path):
    image = picture(tmp_path / "photo.png")
    mask = {"background": None, "layers": [strokes()], "composite": None}
    form = {**IMAGE_FORM, "task": "inpaint", "image": image, "mask": mask, "strength": 1.0, "mask_blur": 4}
    result = generate_inpaint(form, pool=pool, limits=ServerLimits(), store=OutputStore(tmp_path))
    assert Image.open(result.path).size == (128, 64) and result.message.startswith("128x64 px inpainted: ")
    mode, values, notes = values_from_png(result.path, ServerLimits(), pool)
    assert mode == "inpaint" and values["task"] == "inpaint" and values["mask_blur"] == 4
    assert notes == ["the input image is not stored in the PNG: upload it again and paint its mask"]


@needs_task("outpaint")
def test_outpaint_runs(pool, tmp_path):
    image = picture(tmp_path / "photo.png")
    sides = {"left": 64, "right": 0, "top": 0, "bottom": 0, "overlap": 16, "mask_blur": 8}
    form = {**IMAGE_FORM, "task": "outpaint", "image": image, "strength": 1.0, **sides}
    result = generate_inpaint(form, pool=pool, limits=ServerLimits(), store=OutputStore(tmp_path))
    assert Image.open(result.path).size == (192, 64) and result.message.startswith("128x64 px extended: 192x64")
    mode, values, _ = values_from_png(result.path, ServerLimits(), pool)
    assert mode == "outpaint" and values["left"] == 64 and values["task"] == "outpaint"


# -- settings read back ------------------------------------------------------------------------------------
def test_stored_image_settings_open_nothing_they_name(pool, tmp_path):
    """A PNG's stored upscaler path and input record are never looked at by the server: the
    upscaler is replaced by a filter (with a note), the inputs are left for the user to upload."""
    secret = tmp_path / "secret.png"
    picture(secret)
    stored = {
        "mode": "upscale",
        "prompt": "",
        "scale": 2,
        "strength": 0.3,
        "upscaler": "/srv/models/4x.pth",
        "allow_pickle": True,
        "noise_inversion": True,
        "image": {"path": str(secret), "sha256": "0" * 64},  # a file that exists, with another hash
        "height": 4096,
        "width": 4096,
        "num_inference_steps": 30,
        "seed": 9,
        "model": "tiny",
    }
    path = tmp_path / "stored.png"
    save_png(Image.new("RGB", (8, 8)), path, stored)
    mode, values, notes = values_from_png(path, ServerLimits(max_side=512), pool)
    assert mode == "upscale" and values["upscaler"] == "lanczos" and values["noise_inversion"] is True
    assert values["task"] == "upscale" and values["scale"] == 2 and values["strength"] == 0.3 and values["seed"] == 9
    assert not {"image", "height", "width", "allow_pickle"} & set(values)
    assert notes[0] == "upscaler '4x.pth' is not offered by this server; using 'lanczos'"  # the name only

    record = {"path": "/srv/models/4x.pth", "sha256": "0" * 64}  # how the library stores a file it used
    save_png(Image.new("RGB", (8, 8)), path, {**stored, "upscaler": record})
    _, values, notes = values_from_png(path, ServerLimits(max_side=512), pool)
    assert values["upscaler"] == "lanczos" and notes[0].startswith("upscaler '4x.pth' is not offered")

    offered = tmp_path / "4x.safetensors"
    offered.write_bytes(b"weights")
    save_png(Image.new("RGB", (8, 8)), path, {**stored, "upscaler": "sharp"})
    _, values, notes = values_from_png(path, ServerLimits(), pool, Upscalers({"sharp": offered}))
    assert values["upscaler"] == "sharp" and len(notes) == 1

    save_png(Image.new("RGB", (8, 8)), path, {"mode": "outpaint", "prompt": "x", "left": 12, "model": "tiny"})
    with pytest.raises(ValueError, match=r"^the image's settings can't be used: left must be a multiple of 8"):
        values_from_png(path, ServerLimits(), pool)


# -- the page ------------------------------------------------------------------------------------------------
@pytest.fixture
def app(md16, tmp_path):
    pytest.importorskip("gradio")
    from multidiffusion.app.server import create_app

    return create_app(
        ["tiny"], lambda name: md16, ServerLimits(max_side=512, max_upload_mb=1), OutputStore(tmp_path / "out")
    )


def _ids(components) -> set:
    return {getattr(c, "elem_id", None) for c in components}


def _event(app, output_id: str, input_ids: set, name: str | None = None):
    for fn in app.fns.values():
        if output_id in _ids(fn.outputs) and input_ids <= _ids(fn.inputs) and name in (None, fn.name):
            return fn
    raise AssertionError(f"no event writes {output_id} from {input_ids}")


def test_the_image_tabs_are_on_the_page(app):
    config = app.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"upscale-image", "upscale-task", "upscale-scale", "upscale-upscaler", "upscale-strength"} <= ids
    assert {"upscale-inversion", "upscale-placement", "upscale-generate", "upscale-result", "upscale-download"} <= ids
    assert {"inpaint-editor", "inpaint-upload", "inpaint-upload-mask", "inpaint-task", "inpaint-mask-blur"} <= ids
    assert {"outpaint-left", "outpaint-right", "outpaint-top", "outpaint-bottom", "outpaint-overlap"} <= ids
    assert {"inpaint-circular", "inpaint-generate", "inpaint-result", "inpaint-download"} <= ids
    upscaler = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "upscale-upscaler")
    assert [choice[1] for choice in upscaler["props"]["choices"]] == ["lanczos", "bicubic", "bilinear", "nearest"]
    for prefix in ("upscale", "inpaint"):  # generations share one queue with the other tabs'
        generate = _event(app, f"{prefix}-result", {f"{prefix}-prompt"})
        assert generate.concurrency_id == "generate" and generate.concurrency_limit == 1


def test_uploads_to_the_image_tabs_are_checked_with_a_message(app, tmp_path):
    load = _event(app, "inpaint-editor", {"inpaint-upload"}, "load_image")
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)).save(big)
    *_, status = load.fn(str(big))
    assert "image is 2.9 MB; this server accepts uploads up to 1 MB" in status and "error" in status
    wide = tmp_path / "wide.png"
    Image.new("RGB", (1024, 64)).save(wide)
    *_, status = load.fn(str(wide))
    assert "image is 1024×64 px; this server takes images up to 512 px per side" in status
    value, kept, status = load.fn(picture(tmp_path / "photo.png"))
    assert kept.endswith("photo.png") and Image.open(value["background"]).size == (128, 64) and "info" in status

    load_upscale = _event(app, "upscale-message", {"upscale-image"}, "load_image")
    preview, kept, status = load_upscale.fn(picture(tmp_path / "photo.png"), "upscale", 2)
    assert "Loaded 'photo.png', 128×64 px. Upscaled 2x: about 256×128 px." in html.unescape(status)
    assert kept.endswith("photo.png") and Image.open(preview).size == (128, 64)
    assert "this server takes images up to 512 px" in load_upscale.fn(str(wide), "upscale", 2)[-1]


def test_serve_offers_the_upscalers_the_operator_names(monkeypatch, capsys, tmp_path):
    pytest.importorskip("gradio")
    from multidiffusion.app import server

    calls = {}
    monkeypatch.setattr(server, "create_app", lambda models, loader, limits, **kw: calls.update(kw))
    monkeypatch.setattr(server, "launch", lambda app, **kw: None)
    model = tmp_path / "4x.safetensors"
    model.write_bytes(b"weights")
    code, _ = run_cli(["serve", "--upscaler", f"sharp={model}"], capsys)
    assert code == 0 and calls["upscalers"].names[-1] == "sharp"
    pickle = tmp_path / "4x.pth"
    pickle.write_bytes(b"weights")
    code, err = run_cli(["serve", "--upscaler", str(pickle)], capsys)
    assert code == 2 and "--upscaler 4x=" in err and "is a pickle file" in err and len(err.strip().splitlines()) == 1
    code, _ = run_cli(["serve", "--upscaler", str(pickle), "--allow-pickle"], capsys)
    assert code == 0 and calls["upscalers"].resolve("4x") == (str(pickle), True)


def test_the_server_caps_what_pil_decodes(monkeypatch):
    from multidiffusion.app.server import limit_decoded_pixels

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    Image.init()
    monkeypatch.setattr(Image, "ID", list(Image.ID))  # it also makes PIL forget formats: restored after
    monkeypatch.setattr(Image, "OPEN", dict(Image.OPEN))
    limit_decoded_pixels(ServerLimits(max_side=1024))
    assert Image.MAX_IMAGE_PIXELS == 1024 * 1024
    limit_decoded_pixels(ServerLimits(max_side=16384))  # never raised
    assert Image.MAX_IMAGE_PIXELS == 1024 * 1024


def test_the_page_reads_only_files_uploaded_to_it(md16, tmp_path):
    """A request that names a file on the server as its image (not an upload) gets no result: Gradio
    refuses paths outside its upload folder before the handler runs, and the tab's image is the path
    its upload button kept on the server (a session's state, never the request's). The same file
    uploaded runs."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("gradio")
    from multidiffusion.app.server import create_app, launch

    from .test_app_cancel import _free_port, _join, _result

    store = OutputStore(tmp_path / "out")
    app = create_app(["tiny"], lambda name: md16, ServerLimits(), store)
    port = _free_port()
    launch(app, host="127.0.0.1", port=port, limits=ServerLimits(), block=False)
    secret = picture(tmp_path / "secret.png")
    try:
        index, fn = next((i, fn) for i, fn in app.fns.items() if "upscale-result" in _ids(fn.outputs))
        by_id = {"upscale-prompt": "a red house", "upscale-task": "img2img", "upscale-steps": 4, "upscale-seed": 1}
        data = [by_id.get(c.elem_id, c.value) for c in fn.inputs]
        forged = {"path": secret, "meta": {"_type": "gradio.FileData"}}
        up_index, up_fn = next(
            (i, fn) for i, fn in app.fns.items() if fn.name == "load_image" and "upscale-image" in _ids(fn.inputs)
        )
        up_data = [by_id.get(c.elem_id, c.value) for c in up_fn.inputs]
        upload_at = [c.elem_id for c in up_fn.inputs].index("upscale-image")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/gradio_api/", timeout=120) as client:
            up_data[upload_at] = forged
            _join(client, up_index, up_data, "forged")
            done = _result(client, "forged")
            assert not done["success"], done  # Gradio: "not uploaded by a user"; the handler never ran
            forged_state = [forged if c.elem_id is None else v for c, v in zip(fn.inputs, data)]
            _join(client, index, forged_state, "forged")  # the tab's image is the session's state, and Gradio
            done = _result(client, "forged")  # refuses a path not uploaded anywhere in a request
            assert not done["success"], done
            assert list(store.folder.glob("*.png")) == []

            with open(secret, "rb") as f:
                uploaded = client.post("upload", files={"files": ("secret.png", f, "image/png")}).json()[0]
            up_data[upload_at] = {"path": uploaded, "orig_name": "secret.png", "meta": {"_type": "gradio.FileData"}}
            _join(client, up_index, up_data, "uploaded")
            assert _result(client, "uploaded")["success"]
            _join(client, index, data, "uploaded")
            done = _result(client, "uploaded")
        assert done["success"], done
        assert "128x64 px re-worked" in done["output"]["data"][2] and len(list(store.folder.glob("*.png"))) == 1
    finally:
        app.close()
