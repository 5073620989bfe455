"""What a PNG stores and reads back: the task under ``task`` (older PNGs said ``mode``, and still
read), and the input-image keys derived from the options' markers and the conditioning kinds."""

import pytest
from PIL import Image

from multidiffusion.conditionings import image_fields
from multidiffusion.files.metadata import read_settings, save_png, settings_from_parameters
from multidiffusion.files.scene import parse_scene
from multidiffusion.options import input_fields

SETTINGS = {"prompt": "a lake", "num_inference_steps": 2}


@pytest.mark.parametrize("key", ["task", "mode"])
def test_the_task_reads_back_under_task_and_under_older_pngs_mode(tmp_path, key):
    path = save_png(Image.new("RGB", (64, 64)), tmp_path / "out.png", {key: "panorama", **SETTINGS})
    stored = read_settings(path)
    assert stored.task == "panorama" and stored.options().prompt == "a lake"
    assert "task" not in stored.values and "mode" not in stored.values
    assert parse_scene({key: "panorama", **SETTINGS}, source="").task == "panorama"  # stored settings as a scene


def test_two_different_tasks_are_refused():
    with pytest.raises(ValueError, match="name two tasks"):
        settings_from_parameters({"task": "panorama", "mode": "img2img", **SETTINGS})
    assert settings_from_parameters({"task": "panorama", "mode": "panorama", **SETTINGS}).task == "panorama"


def test_input_image_keys_are_derived_from_the_options_and_the_conditionings():
    assert input_fields("inpaint")[:2] == ("image", "mask") and "mask" not in input_fields("img2img")
    assert "image" in input_fields("regions") and "image" not in input_fields("panorama")
    for task in ("panorama", "upscale"):
        assert set(image_fields()) <= set(input_fields(task))
    with pytest.raises(ValueError, match="mask: stored settings carry input images embedded"):
        settings_from_parameters({"task": "inpaint", **SETTINGS, "image": "data:x", "mask": "/etc/passwd"})
