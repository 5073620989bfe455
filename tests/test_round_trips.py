"""Round trips for every task and every model family (issue 26): an image the command line saved is
made again from its PNG (``--from``) with the same pixels, and the web app's "Load settings" brings
the same settings back into its form (checked the way a run would use them: the form's request).

Every task on SD; SDXL, SD 3 and FLUX.1 on a task each besides the panorama their own tests run
(tests/test_sdxl_cli.py, tests/test_dit_roundtrip.py). Canvases of 8 x 8 latents, 2 steps, and one
saved model folder per family for the module."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from multidiffusion.app import ModelPool, ServerLimits
from multidiffusion.app.from_png import values_from_png
from multidiffusion.app.settings import (
    available_choices,
    inpaint_request,
    panorama_request,
    regions_request,
    upscale_request,
)
from multidiffusion.files.metadata import read_settings
from multidiffusion.pipeline import MultiDiffusion

from .test_scene import run_cli

TASKS = {
    "panorama": ["a lake at dawn", "--width", 128, "--height", 64],
    "regions": [
        *("--background", "a meadow", "--region", "a red ball", "--box", "0.1,0.2,0.6,0.8"),
        *("--width", 64, "--height", 64),
    ],
    "img2img": ["a watercolour", "-i", "{image}", "--strength", 0.75],
    "upscale": ["a photo", "-i", "{small}", "--scale", 2, "--strength", 0.5],
    "inpaint": ["a red door", "-i", "{image}", "--mask", "{mask}"],
    "outpaint": ["more meadow", "-i", "{image}", "--right", 16],
}
"""Each task's command line (after the verb); "{image}" ... are the input files."""
INPUTS = {"img2img": ["-i"], "upscale": ["-i"], "inpaint": ["-i", "--mask"], "outpaint": ["-i"]}
"""The input flags --from asks for again (a PNG's settings never read a file)."""

CASES = [
    *[("sd", task) for task in TASKS],
    ("sdxl", "regions"),
    ("sd3", "img2img"),
    ("flux", "inpaint"),
]


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tiny_sdxl_dir, flux16, sd3_16, tmp_path_factory):
    """family -> a saved model folder (SD's and SDXL's are the session's)."""
    out = {"sd": tiny_model_dir, "sdxl": tiny_sdxl_dir}
    for family, pipe in (("flux", flux16), ("sd3", sd3_16)):
        out[family] = tmp_path_factory.mktemp(f"round-trip-{family}")
        pipe.save_pretrained(out[family])
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("round-trip-inputs")
    rng = np.random.default_rng(0)
    files = {}
    for name, size in (("image", 64), ("small", 32)):
        pixels = np.full((size, size, 3), (80, 140, 200), np.uint8)
        pixels[size // 2 :] = (60, 160, 60)
        pixels = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        files[name] = folder / f"{name}.png"
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 24:40] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    files["mask"] = folder / "mask.png"
    return files


@pytest.fixture(scope="module")
def saved(folders, inputs, tmp_path_factory):
    """(family, task) -> (the first PNG, the one made again --from it), made once for the module."""
    made: dict[tuple[str, str], tuple[Any, Any]] = {}

    def make(family: str, task: str, capsys) -> tuple[Any, Any]:
        if (family, task) not in made:
            folder = tmp_path_factory.mktemp(f"{family}-{task}")
            first, again = folder / "first.png", folder / "again.png"
            argv = [str(a).format(**{k: str(v) for k, v in inputs.items()}) for a in TASKS[task]]
            model = ["--model", folders[family], "-q"]
            code, _, err = run_cli([task, *argv, "--steps", 2, "--seed", 3, *model, "-o", first], capsys)
            assert code == 0, err
            given = [a for i, a in enumerate(argv) if i and argv[i - 1] in INPUTS.get(task, ())]
            typed = [x for flag, path in zip(INPUTS.get(task, []), given) for x in (flag, path)]
            code, _, err = run_cli([task, "--from", first, *typed, *model, "-o", again], capsys)
            assert code == 0, err
            made[family, task] = first, again
        return made[family, task]

    return make


@pytest.mark.parametrize(("family", "task"), CASES)
def test_from_a_saved_png_makes_the_same_pixels(saved, family, task, capsys):
    first, again = saved(family, task, capsys)
    assert read_settings(again).task == task
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))


REQUESTS = {
    "panorama": panorama_request,
    "regions": regions_request,
    "img2img": upscale_request,
    "upscale": upscale_request,
    "inpaint": inpaint_request,
    "outpaint": inpaint_request,
}
"""The tab's request builder of each task (the Upscale tab also re-works images; the Inpaint tab
also outpaints)."""


def _mask_layer(path) -> dict[str, Any]:
    """The mask file as the image editor sends it: white strokes on a transparent layer."""
    mask = np.asarray(Image.open(path).convert("L"))
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask > 127] = (255, 255, 255, 255)
    return {"layers": [Image.fromarray(layer, "RGBA")]}


def _comparable(options: Any) -> dict[str, Any]:
    """A run's settings without what the page takes from elsewhere: the input images (uploaded
    again), the model (named as the server lists it) and the regions (compared by prompt and mask)."""
    return {k: v for k, v in options.settings().items() if k not in ("image", "mask", "model", "regions")}


@pytest.mark.parametrize(("family", "task"), CASES)
def test_load_settings_in_the_web_app_brings_back_the_same_settings(saved, inputs, family, task, capsys, md16):
    first, _ = saved(family, task, capsys)
    stored = read_settings(first)
    pool = ModelPool(["tiny"], lambda name: md16)
    mode, values, notes = values_from_png(first, ServerLimits(), pool)
    assert mode == task
    assert values["model"] == "tiny" and any("not offered by this server" in n for n in notes)  # a folder
    given = {}  # the inputs, uploaded again as the page's note asks
    if task in INPUTS:
        given["image"] = values["image"] = str(inputs["small" if task == "upscale" else "image"])
    if task == "inpaint":
        values["mask"] = _mask_layer(inputs["mask"])
        given["mask"] = str(inputs["mask"])
    request = REQUESTS[task]
    if task == "regions":
        loaded = request(values, ServerLimits(), pool).options
    else:  # with the drop-downs the page shows for the task (placement, weights)
        choices = available_choices(getattr(MultiDiffusion, task))
        loaded = request(values, ServerLimits(), pool, choices=choices).options
    again = stored.options(**given)  # as --from reads the PNG
    assert _comparable(loaded) == _comparable(again)
    if task == "regions":
        (region,) = loaded.regions
        (stored_region,) = again.regions
        assert region.prompt == stored_region.prompt == "a red ball"
        np.testing.assert_array_equal(
            np.asarray(region.pixel_mask(64, 64)) > 0.5, np.asarray(stored_region.pixel_mask(64, 64)) > 0.5
        )
