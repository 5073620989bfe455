"""ControlNet in scene files: ``controlnet`` (files and folders relative to the scene and confined to
its folder, repo ids as given), ``control_image`` and the control settings, region tables with their
own control image, ControlNet index and LoRAs; stored settings never name a ControlNet or a control
file to open without its SHA-256."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from multidiffusion.files.metadata import read_parameters, settings_from_parameters
from multidiffusion.files.scene import load_scene

from .test_cli_images import run_ok
from .test_controlnet import _control_image


def _write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def scene_dir(tmp_path):
    folder = tmp_path / "scene"
    (folder / "cn").mkdir(parents=True)
    (folder / "cn" / "config.json").write_text("{}")
    (folder / "cn" / "model.safetensors").write_bytes(b"")
    _control_image(width=256, height=128, seed=2).save(folder / "edges.png")
    _control_image(width=256, height=128, seed=3).save(folder / "pose.png")
    Image.new("RGB", (64, 32), "grey").save(folder / "photo.png")
    return folder


def test_scene_controlnet_fields_are_read_and_confined(scene_dir):
    path = _write(
        scene_dir,
        "s.toml",
        """
controlnet = ["cn", "lllyasviel/sd-controlnet-canny"]
control_image = ["edges.png", "edges.png"]
controlnet_conditioning_scale = [0.5, 0.8]
control_guidance_end = 0.5
guess_mode = true
control_preprocessor = "canny"
width = 256
height = 128
background = "a field"
[[regions]]
prompt = "a dancer"
box = [0.3, 0.1, 0.7, 1.0]
control_image = "pose.png"
controlnet_conditioning_scale = 0.7
controlnet = 1
loras = { "watercolor" = 0.8 }
""",
    )
    scene = load_scene(path)
    assert scene.controlnet == [str(scene_dir / "cn"), "lllyasviel/sd-controlnet-canny"]
    o = scene.options
    assert [image.path for image in o.control_image] == [str(scene_dir / "edges.png")] * 2
    assert o.controlnet_conditioning_scale == [0.5, 0.8] and o.control_guidance_end == [0.5, 0.5] and o.guess_mode
    region = o.regions[0]
    assert region.control_image.path == str(scene_dir / "pose.png")
    assert (region.controlnet, region.controlnet_conditioning_scale, region.loras) == (1, 0.7, {"watercolor": 0.8})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('controlnet = "../cn"', "s.toml: controlnet '../cn' is outside the scene's folder"),
        ('controlnet = ["cn", "../x.safetensors"]', "s.toml: controlnet[1] '../x.safetensors' is outside"),
        ("controlnet = 3", "s.toml: controlnet must be a string or a list of strings"),
        ('control_image = "../edges.png"', "s.toml: control_image '../edges.png' is outside the scene's folder"),
        ('control_image = "input"', "control_image"),  # only an upscale's input: here a file, missing
        ("controlnet_conditioning_scale = 0.5", "controlnet_conditioning_scale applies to a control image"),
        ('[[regions]]\nprompt = "x"\ncontrol_image = "../pose.png"', "s.toml: regions[0].control_image '../pose.png'"),
        ('[[regions]]\nprompt = "x"\nloras = 3', "s.toml: regions[0].loras must be a table"),
        ('[[regions]]\nprompt = "x"\ncontrolnet = -1', "regions[0].controlnet must be the index"),
    ],
)
def test_bad_scene_controlnet_fields_are_named(scene_dir, text, message):
    path = _write(scene_dir, "s.toml", f'background = "a field"\nwidth = 256\nheight = 128\n{text}\n')
    with pytest.raises(ValueError) as info:
        load_scene(path)
    assert message in str(info.value)


def test_an_upscale_scene_takes_input_as_its_control_image(scene_dir):
    path = _write(scene_dir, "up.json", json.dumps({"task": "upscale", "image": "photo.png", "control_image": "input"}))
    scene = load_scene(path)
    assert scene.options.control_image == ["input"]


def test_a_scene_names_the_shipped_controlnets_by_name_and_nothing_else_bare(scene_dir):
    """ "demo" and "demo-tile" are the package's ControlNets, taken as names; a bare name that is
    neither shipped, a file there nor a repo id is refused (a model's shipped name is no ControlNet)."""

    def scene(controlnet):
        fields = {"task": "upscale", "image": "photo.png", "controlnet": controlnet}
        return _write(scene_dir, "up.json", json.dumps(fields))

    assert load_scene(scene("demo-tile")).controlnet == ["demo-tile"]
    assert load_scene(scene(["demo"])).controlnet == ["demo"]
    with pytest.raises(ValueError, match="controlnet 'demo-lcm' is neither a file"):
        load_scene(scene("demo-lcm"))


def test_stored_settings_never_name_a_controlnet_or_an_unchecked_control_file():
    base = {"mode": "regions", "background": "x", "controlnet": "/models/evil"}
    assert "controlnet" not in settings_from_parameters(base).values  # never read back
    with pytest.raises(ValueError, match=r"regions\[0\]\.control_image: stored settings carry control images"):
        settings_from_parameters({**base, "regions": [{"prompt": "y", "control_image": "/etc/passwd"}]})
    with pytest.raises(ValueError, match="control_image: stored settings carry control images"):
        settings_from_parameters({"mode": "panorama", "prompt": "x", "control_image": ["input"]})
    with pytest.raises(ValueError, match="control_image: stored settings carry control images"):
        settings_from_parameters({"mode": "panorama", "prompt": "x", "control_image": "/etc/passwd"})
    record = {"path": "/data/edges.png", "sha256": "0" * 64}
    stored = settings_from_parameters({"mode": "upscale", "control_image": ["input", record]})
    assert stored.inputs["control_image"] == ["input", record] and "control_image" not in stored.values


def test_cli_runs_a_region_scene_with_a_controlnet_and_a_region_control_image(
    scene_dir,
    tiny_model_dir,
    controlnet_dir,
    tmp_path,
    capsys,
):
    import shutil

    shutil.copytree(controlnet_dir, scene_dir / "tiny-cn")
    path = _write(
        scene_dir,
        "r.toml",
        """
controlnet = "tiny-cn"
width = 256
height = 128
background = "a field"
num_inference_steps = 2
seed = 1
[[regions]]
prompt = "a dancer"
box = [0.3, 0.1, 0.7, 1.0]
control_image = "pose.png"
controlnet_conditioning_scale = 0.7
""",
    )
    out = tmp_path / "r.png"
    run_ok(["regions", path, "--model", tiny_model_dir, "-q", "-o", out], capsys)
    params = read_parameters(out)
    assert params["regions"][0]["control_image"]["path"] == str(scene_dir / "pose.png")
    plain = tmp_path / "plain.png"
    (scene_dir / "r.toml").write_text(path.read_text().replace('controlnet = "tiny-cn"\n', "").replace(
        'control_image = "pose.png"\n', ""))  # fmt: skip
    run_ok(["regions", path, "--model", tiny_model_dir, "-q", "-o", plain], capsys)
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(plain)))
