"""Trust levels (issue 25, holes 2, 3 and 5): a value's origin decides what it may open.

Typed by the user: anything, pickles with --allow-pickle. A scene or batch file: files under its
folder, repo ids from the hub only, never a pickle. Stored settings (a PNG's) and web requests: no
file, no record path, no LoRA or ControlNet; a model only as the demo or a hub repo id."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from PIL import Image

from multidiffusion.app import ModelPool, ServerLimits
from multidiffusion.app.from_png import values_from_png
from multidiffusion.files.metadata import settings_from_parameters
from multidiffusion.files.scene import load_scene, parse_scene
from multidiffusion.io.trust import Origin, RecordedFile, RepoId, TypedPath, is_repo_id
from multidiffusion.models.controlnet import load_controlnet
from multidiffusion.models.files import ModelNotFoundError
from multidiffusion.models.loading import load_pipeline

from .test_scene import run_cli
from .test_untrusted_settings import REGIONS, _audit_opens, _png_with


class _Evil:
    """Unpickling this creates ``marker``: proof that a pickle's code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle(path, marker):
    torch.save({"state_dict": _Evil(str(marker))}, path)
    return path


@pytest.fixture
def photo(tmp_path):
    Image.new("RGB", (64, 64), (90, 120, 200)).save(tmp_path / "photo.png")
    return tmp_path / "photo.png"


# -- hole 2: --allow-pickle covers exactly the paths typed on that command line -------------------
def test_allow_pickle_does_not_reach_a_scenes_model(tmp_path, photo, capsys):
    marker = tmp_path / "ran"
    _pickle(tmp_path / "evil.ckpt", marker)
    _pickle(tmp_path / "up.pth", marker)
    (tmp_path / "s.toml").write_text('task = "upscale"\nimage = "photo.png"\nmodel = "evil.ckpt"\nscale = 1\n')
    argv = ["upscale", "--scene", tmp_path / "s.toml", "--allow-pickle", "--steps", 4, "-o", tmp_path / "o.png"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "model 'evil.ckpt' is a pickle named by a scene or batch file" in err, err
    assert "pass --model FILE --allow-pickle" in err and not marker.exists()
    (tmp_path / "u.toml").write_text('task = "upscale"\nimage = "photo.png"\nupscaler = "up.pth"\n')
    argv = ["upscale", "--scene", tmp_path / "u.toml", "--allow-pickle", "--steps", 4, "-o", tmp_path / "o.png"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "upscaler: 'up.pth' is a pickle named by the settings, not typed" in err, err
    assert not marker.exists() and not (tmp_path / "o.png").exists()


def test_allow_pickle_does_not_reach_a_batch_lines_model(tmp_path, photo, capsys):
    marker = tmp_path / "ran"
    _pickle(tmp_path / "evil.ckpt", marker)
    line = {"task": "img2img", "image": "photo.png", "prompt": "a", "model": "evil.ckpt", "output": "o.png"}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(line) + "\n")
    code, _, err = run_cli(["batch", tmp_path / "jobs.jsonl", "--allow-pickle", "-q"], capsys)
    assert code == 1 and "model 'evil.ckpt' is a pickle named by a scene or batch file" in err, err
    assert not marker.exists() and not (tmp_path / "o.png").exists()


def test_a_typed_pickle_path_is_the_only_kind_allow_pickle_covers(tmp_path):
    from multidiffusion.io.trust import pickle_allowed, typed_weights

    typed = typed_weights(str(tmp_path / "m.ckpt"))
    assert isinstance(typed, TypedPath) and pickle_allowed(typed, True) and not pickle_allowed(typed, False)
    assert not pickle_allowed(str(tmp_path / "m.ckpt"), True)  # a scene's or a PNG's: plain text
    assert typed_weights("demo") == "demo" and typed_weights("org/name") == "org/name"


# -- hole 3: stored settings name no file -------------------------------------------------------
def _same_refusal_whatever_it_names(tmp_path, capsys, params_for, argv_for, message):
    """Each target (an image, text, a missing file) named by stored settings: one message, nothing opened."""
    Image.new("RGB", (64, 64)).save(tmp_path / "image.png")
    (tmp_path / "text.png").write_text("secret")
    targets = [tmp_path / "image.png", tmp_path / "text.png", tmp_path / "missing.png"]
    opened = _audit_opens({str(t) for t in targets})
    errors = set()
    for target in targets:
        png = _png_with(tmp_path, params_for(str(target)), "stored.png")
        code, _, err = run_cli(argv_for(png), capsys)
        assert code == 2 and message in err, err
        errors.add(err.replace(target.name, "X"))
    assert len(errors) == 1, errors  # no existence oracle
    assert opened == []


def test_from_never_reads_a_segmentation_map_a_png_names(tmp_path, capsys):
    def params(target):
        return {**REGIONS, "segmentation": {"map": target, "colors": {"#000000": "a house"}}}

    def argv(png):
        return ["regions", "--from", png, "-o", tmp_path / "o.png"]

    _same_refusal_whatever_it_names(tmp_path, capsys, params, argv, "segmentation.map: settings stored in a PNG")


def test_from_never_loads_a_lora_a_png_names(tmp_path, capsys):
    def params(target):
        return {**REGIONS, "loras": {"style": target}}

    def argv(png):
        return ["regions", "--from", png, "-o", tmp_path / "o.png"]

    _same_refusal_whatever_it_names(
        tmp_path, capsys, params, argv, "name no ControlNet or LoRA; pass --lora style=FILE"
    )


def test_the_app_never_reads_a_region_control_image_record(tmp_path, md16):
    import hashlib

    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "server.png")
    digest = hashlib.sha256((tmp_path / "server.png").read_bytes()).hexdigest()
    box = [0.0, 0.0, 0.5, 0.5]
    for record in (
        {"path": str(tmp_path / "server.png"), "sha256": digest},
        {"path": "/etc/hostname", "sha256": "0" * 64},
    ):
        region = {"prompt": "a", "box": box, "control_image": record}
        png = _png_with(tmp_path, {**REGIONS, "regions": [region]})
        opened = _audit_opens({record["path"]})
        with pytest.raises(ValueError) as exc:
            values_from_png(png, ServerLimits(), ModelPool(["tiny"], lambda name: md16))
        assert "regions[0].control_image: settings stored in a PNG or sent in a request name no files" in str(exc.value)
        assert digest[:12] not in str(exc.value) and opened == []


def test_a_stored_repo_id_is_never_a_folder_of_the_current_directory(tmp_path, monkeypatch, capsys, tiny_model_dir):
    """A PNG naming 'org/name' where ./org/name is a model folder: the folder is not loaded (the
    name is the hub's: offline and not cached, it is not found)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    os.makedirs(tmp_path / "org")
    os.symlink(tiny_model_dir, tmp_path / "org" / "name")
    stored = settings_from_parameters({**REGIONS, "model": "org/name"})
    assert isinstance(stored.model, RepoId)
    png = _png_with(tmp_path, {**REGIONS, "model": "org/name"})
    opened = _audit_opens({str(tmp_path / "org" / "name" / "model_index.json")})
    code, _, err = run_cli(["regions", "--from", png, "--steps", 1, "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and "model 'org/name' is not in the local Hugging Face cache" in err, err
    assert opened == [] and not (tmp_path / "o.png").exists()
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        load_pipeline(RepoId("org/name"))


def test_a_stored_task_key_cannot_switch_the_task(tmp_path, capsys):
    png = _png_with(tmp_path, {**REGIONS, "mode": "img2img", "task": "regions", "prompt": "a"})
    code, _, err = run_cli(["img2img", "--from", png, "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and "name two tasks" in err, err


# -- hole 5: scene names stay in the scene's folder ----------------------------------------------
def test_scene_names_never_fall_back_to_the_current_directory(tmp_path, monkeypatch):
    scene_dir, cwd = tmp_path / "scene", tmp_path / "cwd"
    scene_dir.mkdir()
    (cwd / "org" / "net").mkdir(parents=True)
    (cwd / "nets").mkdir()
    (scene_dir / "mine").mkdir()
    monkeypatch.chdir(cwd)
    origin = Origin.file(scene_dir, "s.toml")
    assert origin.weights("mine", "controlnet") == str(scene_dir / "mine")
    assert isinstance(origin.weights("org/net", "controlnet"), RepoId)  # the hub's, not ./org/net
    for name in ("nets", "model.bin"):  # neither under the scene's folder nor a repo id
        with pytest.raises(ValueError, match=r"neither a file under the scene.s folder|outside the scene.s folder"):
            origin.weights(name if name == "nets" else "../cwd/nets", "controlnet")
    (scene_dir / "s.toml").write_text('background = "a"\nmodel = "nets"\n')
    with pytest.raises(ValueError, match=r"s\.toml: model 'nets' is neither a file under the scene's folder"):
        load_scene(scene_dir / "s.toml")
    (scene_dir / "s.toml").write_text('background = "a"\nmodel = "org/net"\ncontrolnet = "org/net"\n')
    scene = load_scene(scene_dir / "s.toml")
    assert isinstance(scene.model, RepoId) and isinstance(scene.controlnet[0], RepoId)
    (scene_dir / "s.toml").write_text('background = "a"\nloras = { x = "org/net" }\n')
    assert isinstance(load_scene(scene_dir / "s.toml").loras[0][1], RepoId)


def test_a_repo_id_controlnet_is_never_loaded_from_a_folder_here(tmp_path, monkeypatch, controlnet_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    os.makedirs(tmp_path / "org")
    os.symlink(controlnet_dir, tmp_path / "org" / "net")
    assert load_controlnet("org/net") is not None  # typed: the user's own folder
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        load_controlnet(RepoId("org/net"))


def test_stored_origin_refuses_every_file_kind_with_one_message():
    origin = Origin.stored()
    for field, call in [
        ("mask", lambda: origin.file_name("/etc/passwd", "mask")),
        ("image", lambda: origin.recorded({"path": "/etc/passwd", "sha256": "0" * 64}, "image")),
        ("model", lambda: origin.weights("/models/x.safetensors", "model")),
    ]:
        with pytest.raises(ValueError, match=f"^{field}: settings stored in a PNG or sent in a request name no files"):
            call()
    assert origin.file_name("data:image/png;base64,AAAA", "mask").startswith("data:")
    assert origin.weights("demo", "model") == "demo" and isinstance(origin.weights("a/b", "model"), RepoId)
    with pytest.raises(ValueError, match="give the image again"):
        parse_scene({"task": "img2img", "prompt": "a", "image": {"path": "/x.png", "sha256": "0" * 64}}, origin=origin)


def test_only_a_scene_makes_a_record_that_is_read(tmp_path, photo):
    import hashlib

    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    found = Origin.file(tmp_path).recorded({"path": "photo.png", "sha256": digest}, "image")
    assert found == RecordedFile(str(photo), digest)
    scene = parse_scene(
        {"task": "img2img", "prompt": "a", "image": {"path": "photo.png", "sha256": digest}}, base=tmp_path
    )
    assert scene.options.image.sha256 == digest
    with pytest.raises(ValueError, match="outside the scene's folder"):
        Origin.file(tmp_path / "sub").recorded({"path": "../photo.png", "sha256": digest}, "image")


@pytest.mark.parametrize(
    ("name", "ok"),
    [("org/name", True), ("demo", False), ("./org/name", False), ("org/x.safetensors", False), ("a/b/c", False)],
)
def test_repo_ids(name, ok):
    assert is_repo_id(name) is ok


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 5000 + "]" * 5000, "nested more than|nested too deep"),
        ('{"mode": "panorama", "seed": 1' + "0" * 5000 + "}", "digits"),
    ],
)
def test_stored_settings_text_is_bounded_like_a_scene_file(tmp_path, capsys, text, message):
    """The audit's stored cases: a PNG chunk nested 5000 deep gave a RecursionError with exit 1, a
    5000-digit integer Python's 4300-digit text."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("multidiffusion", text)
    Image.new("RGB", (8, 8)).save(tmp_path / "s.png", pnginfo=info)
    code, _, err = run_cli(["panorama", "--from", tmp_path / "s.png", "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and "parameters can't be read" in err and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err) and "4300" not in err and "Recursion" not in err
