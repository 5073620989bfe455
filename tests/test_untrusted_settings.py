"""Settings from elsewhere (a PNG from anyone, a scene file, a form) go through one options layer:
the same bad value gets the same message from the API, the command line, a scene file and the web
app; stored settings never name a file to open or a model file to load; any input gives a result or
a clean error."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from multidiffusion.app import ModelPool, ServerLimits
from multidiffusion.app.from_png import values_from_png
from multidiffusion.app.settings import PANORAMA_KEYS, panorama_request
from multidiffusion.files.metadata import METADATA_KEY, settings_from_parameters
from multidiffusion.files.scene import load_scene, parse_scene
from multidiffusion.options import MAX_SEED, TASK_OPTIONS, PanoramaOptions, build_options

from .test_scene import run_cli

BAD = [  # (API name, CLI flag and its text, bad value, the library's message)
    ("num_inference_steps", "--steps", 0, "num_inference_steps must be an integer from 1 to 1000, got 0"),
    ("guidance_scale", "--guidance", -1.5, "guidance_scale must be a number ≥ 0, got -1.5"),
    ("width", "--width", 100, "width must be a multiple of 8 from 64 to 16384 (pixels), got 100"),
    ("seed", "--seed", -5, f"seed must be -1 (random) or an integer from 0 to {MAX_SEED}, got -5"),
    ("scheduler", "--scheduler", "fastest", "scheduler must be one of ddim, ddpm"),
    ("stride", "--stride", 0, "stride must be an integer ≥ 1, got 0"),
    ("num_images_per_prompt", "--num-images", 0, "num_images_per_prompt must be an integer from 1 to 64, got 0"),
]


@pytest.mark.parametrize(("key", "flag", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_the_same_bad_value_gets_the_same_message_everywhere(md16, tmp_path, capsys, key, flag, value, message):
    # the Python API
    with pytest.raises(ValueError) as api:  # the API takes a generator; seeds are the options'
        if key == "seed":
            md16.generate(PanoramaOptions(prompt="a lake", seed=value))
        else:
            md16.panorama("a lake", **{key: value})
    assert message in str(api.value)
    # the command line (one line, exit 2, the flag named after the library's message)
    code, _, err = run_cli(["panorama", "a lake", flag, value, "-o", tmp_path / "x.png", "--model", "demo"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert message in err, err
    # a scene file
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps({"background": "a lake", key: value}))
    with pytest.raises(ValueError) as from_scene:
        load_scene(scene)
    assert str(from_scene.value) == f"scene.json: {api.value}" or message in str(from_scene.value)
    # the web app's form (a server whose limits are the library's), for the settings the page has
    if key not in PANORAMA_KEYS:
        return
    pool = ModelPool(["tiny"], lambda name: md16)
    form = {"prompt": "a lake", "model": "tiny", "window": "", "stride": "", "seed": 1, key: value}
    if key in ("window", "stride"):
        form[key] = str(value)
    with pytest.raises(ValueError) as app:
        panorama_request(form, ServerLimits(max_side=16384, max_steps=1000), pool)
    assert message in str(app.value)


def _png_with(tmp_path, params, name="stored.png"):
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(params))
    path = tmp_path / name
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    return path


REGIONS = {"mode": "regions", "width": 64, "height": 64, "background": "a lake", "num_inference_steps": 2}


def _targets(tmp_path):
    """What a stored mask name may point at: an image, text, a FIFO, nothing."""
    Image.new("L", (64, 64), 255).save(tmp_path / "image.png")
    (tmp_path / "text.png").write_text("not an image")
    os.mkfifo(tmp_path / "fifo.png")
    return {
        "image": tmp_path / "image.png",
        "text": tmp_path / "text.png",
        "fifo": tmp_path / "fifo.png",
        "missing": tmp_path / "missing.png",
    }


def test_a_stored_mask_name_is_refused_the_same_way_whatever_it_names(tmp_path, capsys, md16, monkeypatch):
    opened: list[str] = []
    named = _targets(tmp_path)
    targets = {str(p) for p in named.values()}

    def audit(event, args):
        if event == "open" and args and str(args[0]) in targets:
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    pool = ModelPool(["tiny"], lambda name: md16)
    messages = set()
    for kind, target in named.items():
        regions = [{"prompt": "a moon", "mask": str(target)}]
        png = _png_with(tmp_path, {**REGIONS, "regions": regions}, f"{kind}-settings.png")
        code, _, err = run_cli(["regions", "--from", png, "--model", "demo", "-o", tmp_path / "o.png"], capsys)
        assert code == 2
        messages.add(err.replace(str(png), "PNG"))
        with pytest.raises(ValueError) as app:
            values_from_png(png, ServerLimits(), pool)
        messages.add(str(app.value))
    assert len(messages) == 2, messages  # one for the command line, one for the page: no oracle
    assert all("stored settings carry masks embedded" in m for m in messages)
    assert opened == []  # nothing named was opened
    assert not (tmp_path / "o.png").exists()


SCENE_FILES = {  # a scene that reads NAME, for every kind of file a scene may name
    "mask": 'background = "a lake"\n[[regions]]\nprompt = "a moon"\nmask = "NAME"\n',
    "image": 'task = "img2img"\nprompt = "a lake"\nimage = "NAME"\n',
    "inpaint-mask": 'task = "inpaint"\nprompt = "a"\nimage = "data:image/png;base64,AAAA"\nmask = "NAME"\n',
    "record": 'task = "img2img"\nprompt = "a"\nimage = { path = "NAME", sha256 = "' + "0" * 64 + '" }\n',
    "upscaler": 'task = "upscale"\nimage = "data:image/png;base64,AAAA"\nupscaler = "NAME"\n',
}


@pytest.mark.parametrize("kind", SCENE_FILES)
def test_scene_files_read_only_under_their_folder(tmp_path, kind):
    named = _targets(tmp_path)
    opened = _audit_opens({str(p) for p in named.values()})
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    (scenes / "link.png").symlink_to(tmp_path / "image.png")
    messages = set()
    for name in (
        "../image.png",
        "../text.png",
        "../fifo.png",
        "../missing.png",
        str(tmp_path / "image.png"),
        "link.png",
    ):
        (scenes / "s.toml").write_text(SCENE_FILES[kind].replace("NAME", name))
        with pytest.raises(ValueError) as exc:
            load_scene(scenes / "s.toml")
        messages.add(str(exc.value).replace(repr(name), "NAME"))
    assert len(messages) == 1 and "outside the scene's folder" in messages.pop()
    assert opened == []
    (scenes / "s.toml").write_text(SCENE_FILES[kind].replace("NAME", "../image.png"))
    if kind == "mask":
        assert load_scene(scenes / "s.toml", allow_outside=True).options.regions[0].prompt == "a moon"
    elif kind == "image":
        assert load_scene(scenes / "s.toml", allow_outside=True).options.image.path == str(named["image"])


IMG2IMG = {"mode": "img2img", "prompt": "a lake", "num_inference_steps": 2}


def _audit_opens(targets: set[str]) -> list[str]:
    """A list that collects every open() of one of ``targets`` from now on (an audit hook)."""
    opened: list[str] = []

    def audit(event, args):
        if event == "open" and args and str(args[0]) in targets:
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    return opened


@pytest.mark.parametrize("key", ["image", "mask"])
def test_a_stored_input_name_is_refused_the_same_way_whatever_it_names(tmp_path, capsys, md16, key):
    named = _targets(tmp_path)
    opened = _audit_opens({str(p) for p in named.values()})
    pool = ModelPool(["tiny"], lambda name: md16)
    task = "inpaint" if key == "mask" else "img2img"
    messages = set()
    for kind, target in named.items():
        params = {**IMG2IMG, "mode": task, key: str(target)}
        if key == "mask":
            params["image"] = "data:image/png;base64,AAAA"
        png = _png_with(tmp_path, params, f"{kind}-settings.png")
        code, _, err = run_cli([task, "--from", png, "--model", "demo", "-o", tmp_path / "o.png"], capsys)
        assert code == 2
        messages.add(err.replace(str(png), "PNG"))
        with pytest.raises(ValueError) as app:
            values_from_png(png, ServerLimits(), pool)
        messages.add(str(app.value))
    assert len(messages) == 2, messages  # one for the command line, one for the page: no oracle
    assert all(f"{key}: stored settings carry input images embedded" in m for m in messages)
    assert opened == []
    assert not (tmp_path / "o.png").exists()


def test_a_stored_input_record_is_never_opened_the_cli_asks_for_the_image_again(tmp_path, capsys):
    """Hole 3 of issue 25: a record is a file name from somebody's PNG. It is never opened (nor
    looked up: the message is the same whether the file exists, is missing or has changed), and
    the command line asks for the input again."""
    import hashlib

    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(photo)
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    stored = settings_from_parameters({**IMG2IMG, "image": {"path": str(photo), "sha256": digest}})
    assert "image" not in stored.values and stored.inputs == {"image": {"path": str(photo), "sha256": digest}}
    opened = _audit_opens({str(photo), str(tmp_path / "gone.png")})
    messages = set()
    for record in (
        {"path": str(photo), "sha256": digest},
        {"path": str(photo), "sha256": "f" * 64},
        {"path": str(tmp_path / "gone.png"), "sha256": digest},
    ):
        with pytest.raises(ValueError, match="never read from them; give the image again") as exc:
            settings_from_parameters({**IMG2IMG, "image": record}).options()
        messages.add(str(exc.value).replace("gone.png", "photo.png"))
        png = _png_with(tmp_path, {**IMG2IMG, "image": record})
        code, _, err = run_cli(["img2img", "--from", png, "--steps", 1, "-o", tmp_path / "o.png"], capsys)
        assert code == 2 and "pass --image FILE again" in err, err
        messages.add(err.replace("gone.png", "photo.png"))
    assert len(messages) == 2, messages  # one for the library, one for the command line: no oracle
    assert opened == []
    with pytest.raises(ValueError, match="recorded from an image given in memory"):
        settings_from_parameters({**IMG2IMG, "image": {"path": None, "sha256": None}}).options()
    for record in (
        {"path": str(photo)},
        {"path": str(photo), "sha256": "abc"},
        {"path": str(photo), "sha256": digest, "more": 1},
        {"path": 3, "sha256": digest},
        [str(photo), digest],
    ):
        with pytest.raises(ValueError, match="stored settings carry input images embedded"):
            settings_from_parameters({**IMG2IMG, "image": record})


def test_the_app_never_reads_a_recorded_input(tmp_path, md16):
    """A server must not read its own disk for an uploaded PNG (even a hash-checked read tells
    whether a file exists): records are kept apart from the values the page reads."""
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    record = {"path": str(tmp_path / "photo.png"), "sha256": "0" * 64}
    png = _png_with(tmp_path, {**IMG2IMG, "image": record})
    opened = _audit_opens({record["path"]})
    mode, values, notes = values_from_png(png, ServerLimits(), ModelPool(["tiny"], lambda name: md16))
    assert mode == "img2img" and "image" not in values
    assert any("upload it again" in note for note in notes)  # the page asks for the image instead
    assert opened == []


def test_a_stored_upscaler_file_is_never_loaded(tmp_path, capsys):
    import hashlib

    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    (tmp_path / "evil.pth").write_bytes(b"pickle")
    record = {
        "path": str(tmp_path / "photo.png"),
        "sha256": hashlib.sha256((tmp_path / "photo.png").read_bytes()).hexdigest(),
    }
    opened = _audit_opens({str(tmp_path / "evil.pth")})
    for upscaler in (str(tmp_path / "evil.pth"), "evil.pth", {"path": str(tmp_path / "evil.pth"), "sha256": "0" * 64}):
        params = {"mode": "upscale", "image": record, "upscaler": upscaler, "allow_pickle": True}
        stored = settings_from_parameters(params)
        assert stored.files == {"upscaler": "evil.pth"} and "allow_pickle" not in stored.values
        png = _png_with(tmp_path, params)
        argv = ["upscale", "--from", png, "-i", tmp_path / "photo.png", "--allow-pickle", "-o", tmp_path / "o.png"]
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and "made with the upscaler 'evil.pth', a file; pass --upscaler FILE to use it" in err, err
    assert settings_from_parameters({**params, "upscaler": "Lanczos"}).values["upscaler"] == "Lanczos"
    assert opened == [] and not (tmp_path / "o.png").exists()


def test_allow_pickle_never_covers_a_model_a_png_names(tmp_path, capsys):
    marker = tmp_path / "ran"
    for model in ("evil.ckpt", str(tmp_path / "evil.ckpt"), "../evil.ckpt", "evil.safetensors"):
        png = _png_with(tmp_path, {"mode": "panorama", "prompt": "a lake", "model": model})
        code, _, err = run_cli(["panorama", "--from", png, "--allow-pickle", "-o", tmp_path / "o.png"], capsys)
        assert code == 2 and "pass --model PATH to use it" in err, err
    assert not marker.exists() and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [("abc", "seed must be -1 \\(random\\) or an integer"), (2**64, "seed must be -1"), (True, "seed must be")],
)
def test_stored_seeds_are_checked(value, message):
    stored = settings_from_parameters({"mode": "panorama", "prompt": "a lake", "seed": value})
    with pytest.raises(ValueError, match=message):
        stored.options()


def test_a_stored_seed_of_minus_one_means_random():
    assert settings_from_parameters({"mode": "panorama", "prompt": "a", "seed": -1}).options().seed is None


def test_prompts_must_be_text_everywhere():
    for prompt in ("   ", "\t\n", "bad \udcff bytes"):
        with pytest.raises(ValueError, match="prompt must be"):
            build_options("panorama", {"prompt": prompt})
        with pytest.raises(ValueError, match="background must be"):
            build_options("regions", {"background": prompt})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "width", "height", "background", "negative_prompt", "regions", "segmentation", "bootstrap_steps",
        "num_inference_steps", "guidance_scale", "window", "stride", "circular", "view_batch_size",
        "num_images_per_prompt", "seed", "scheduler", "eta", "model", "prompt", "mode", "placement", "weights",
        "output_type", "tiling", "crops_coords_top_left", "original_size", "unknown",
        "image", "mask", "strength", "scale", "upscaler", "allow_pickle", "noise_inversion", "inversion_steps",
        "mask_blur", "left", "right", "top", "bottom", "overlap", "task",
    ]
)  # fmt: skip
REGION = st.dictionaries(
    st.sampled_from(["prompt", "negative_prompt", "mask", "box", "feather", "weight", "guidance_scale", "x"]),
    JSON | st.sampled_from(["a moon", [0.1, 0.1, 0.5, 0.5], [0, 0, 32, 32], "data:image/png;base64,AAAA", "m.png"]),
    max_size=5,
)
RECORD = st.fixed_dictionaries(
    {
        "path": st.none() | st.sampled_from(["photo.png", "/nonexistent/x.png"]),
        "sha256": st.none() | st.text(max_size=64),
    }
)
SETTINGS = st.dictionaries(
    KEYS, JSON | st.lists(REGION, max_size=3) | RECORD | st.sampled_from(["lanczos", "x.pth", "img2img"]), max_size=8
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=SETTINGS)
def test_fuzz_scene_files_give_a_result_or_a_clean_error(tmp_path, data):
    with contextlib.suppress(ValueError):
        parse_scene(data, base=tmp_path, source="scene.toml")


@settings(max_examples=150, deadline=None)
@given(data=SETTINGS, task=st.sampled_from([*TASK_OPTIONS, "other", None]))
def test_fuzz_stored_png_settings_give_a_result_or_a_clean_error(data, task):
    params = {**data, "mode": task} if task is not None else data
    with contextlib.suppress(ValueError):
        settings_from_parameters(params).options()


def test_compute_per_request_is_bounded(md16):
    """Sides and steps alone allow costly requests (window 8, stride 1): window evaluations are
    bounded too, before any model call."""
    pool = ModelPool(["tiny"], lambda name: md16)
    form = {"prompt": "a lake", "model": "tiny", "width": 4096, "height": 64, "num_inference_steps": 150}
    limits = ServerLimits(max_side=4096, max_steps=150)
    request = panorama_request({**form, "window": "8", "stride": "1"}, limits, pool)
    calls = []
    with pytest.raises(ValueError, match=r"this request needs [\d,]+ window evaluations .* more than the 50,000"):
        md16.generate(request.options, callback_on_step_end=lambda *a: calls.append(1))
    assert calls == []
    cheap = panorama_request({**form, "num_inference_steps": 1}, limits, pool)
    assert md16.generate(dataclasses.replace(cheap.options, output_type="latent")).stats.steps == 1
