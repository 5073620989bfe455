"""The image verbs of the command line (img2img, upscale, inpaint, outpaint, and regions with an input
image): PNGs that record their inputs (path and SHA-256) and re-run with --from, inputs that went
missing or changed, scene files with images, and bad input that gives one line, exit status 2 and no
file.

Successful runs need the task itself (``multidiffusion.tasks.TASKS``); the tasks being written in
parallel are skipped until they are merged. Everything checked before a model loads runs for every
verb now: the options of all four tasks exist."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multidiffusion.files.metadata import read_parameters, read_settings
from multidiffusion.files.scene import load_scene
from multidiffusion.tasks import TASKS

from .test_images import _bilevel_png
from .test_scene import run_cli

REPO = Path(__file__).resolve().parent.parent
VERBS = ("img2img", "upscale", "inpaint", "outpaint")
FAST = ["--steps", "2", "--seed", "1", "-q"]


def needs_task(task: str):
    """Skip a run of ``task`` until its module is merged (its options and CLI already exist)."""
    return pytest.mark.skipif(task not in TASKS, reason=f"the {task} task is not merged yet (multidiffusion.tasks)")


def with_task(verb: str):
    return pytest.param(verb, marks=needs_task(verb), id=verb)


def picture(path: Path, width: int = 128, height: int = 128, seed: int = 0) -> Path:
    """A smooth RGB picture (a sky-to-ground gradient with noise), saved as a PNG."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    rgb = (1 - y) * np.array([90, 150, 230]) + y * np.array([40, 140, 50])
    rgb = np.broadcast_to(rgb, (height, width, 3)) + rng.normal(0, 8, (height, width, 3))
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
    return path


def mask_file(path: Path, width: int = 128, height: int = 128) -> Path:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[: height // 2] = 255
    Image.fromarray(mask).save(path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Input files in their own folder (so 'nothing written' is checked on the output folder alone)."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    picture(folder / "photo.png")
    picture(folder / "other.png", seed=5)
    mask_file(folder / "mask.png")
    return folder


def verb_args(verb: str, folder: Path) -> list:
    """The verb's input flags on ``folder``'s files, at the tiny model's scale (128 px windows)."""
    image = ["-i", folder / "photo.png"]
    return {
        "img2img": [*image, "a lake", "--strength", "0.5"],
        "upscale": [*image, "--scale", "1.5", "--strength", "0.5"],
        "inpaint": [*image, "--mask", folder / "mask.png", "a lake"],
        "outpaint": [*image, "--right", "64", "a lake"],
    }[verb]


def run_ok(argv: list, capsys) -> str:
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    return out


def run_fails(argv: list, capsys, out_dir: Path) -> str:
    """Run ``argv``: exit 2, one line 'error: ...' and nothing written in ``out_dir``; the line."""
    before = set(out_dir.iterdir())
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert set(out_dir.iterdir()) == before  # nothing written
    return err.strip()


# -- runs, metadata and --from ------------------------------------------------------------------------
@pytest.mark.parametrize("verb", [with_task(v) for v in VERBS])
def test_a_run_records_its_inputs_and_from_reruns_it(verb, inputs, tmp_path, tiny_model_dir, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    model = ["--model", tiny_model_dir]
    first = out_dir / "first.png"
    stdout = run_ok([verb, *verb_args(verb, inputs), *model, *FAST, "-o", first], capsys)
    assert "wrote" in stdout and "model calls" in stdout
    params = read_parameters(first)
    assert params["task"] == verb and params["seed"] == 1
    photo = inputs / "photo.png"
    assert params["image"] == {"path": str(photo), "sha256": sha256(photo)}  # absolute: --from works anywhere
    if verb == "inpaint":
        assert params["mask"] == {"path": str(inputs / "mask.png"), "sha256": sha256(inputs / "mask.png")}
    stored = read_settings(first, verb)
    assert "image" not in stored.values and stored.inputs["image"] == params["image"]

    # a PNG's settings never read a file (issue 25): --from asks for the inputs again, whatever the file
    # named is now (there, changed or missing: one message, nothing opened), then reruns
    given = ["-i", photo] + (["--mask", inputs / "mask.png"] if verb == "inpaint" else [])
    err = run_fails([verb, "--from", first, *model, "-o", out_dir / "x.png"], capsys, out_dir)
    assert f"--from {first}: the image was made from the image 'photo.png'" in err and "pass --image FILE again" in err
    again = out_dir / "again.png"
    run_ok([verb, "--from", first, *given, *model, "-q", "-o", again], capsys)
    np.testing.assert_array_equal(pixels(again), pixels(first))

    # a new --image with --from replaces the recorded one (and the canvas follows it)
    picture(inputs / "small.png", width=64, height=64, seed=3)
    other = out_dir / "other.png"
    run_ok([verb, "--from", first, "-i", inputs / "small.png", *model, "-q", "-o", other]
           + (["--mask", inputs / "mask.png"] if verb == "inpaint" else []), capsys)  # fmt: skip
    assert read_parameters(other)["image"]["path"] == str(inputs / "small.png")
    assert read_parameters(other)["width"] < params["width"]
    photo.unlink()  # gone: the same message, nothing written
    assert run_fails([verb, "--from", first, *model, "-o", out_dir / "x.png"], capsys, out_dir) == err


@needs_task("img2img")
def test_img2img_from_changes_settings_and_keeps_the_input(inputs, tmp_path, tiny_model_dir, capsys):
    model = ["--model", tiny_model_dir]
    first = tmp_path / "first.png"
    run_ok(["img2img", *verb_args("img2img", inputs), "--width", "192", *model, *FAST, "-o", first], capsys)
    assert (read_parameters(first)["width"], read_parameters(first)["height"]) == (192, 128)
    changed = tmp_path / "changed.png"
    run_ok(["img2img", "--from", first, "-i", inputs / "photo.png", "--strength", "1", *model, "-q", "-o", changed],
           capsys)  # fmt: skip
    params = read_parameters(changed)
    assert params["strength"] == 1.0 and params["width"] == 192 and params["image"] == read_parameters(first)["image"]
    assert not np.array_equal(pixels(changed), pixels(first))


def test_regions_rework_an_image(inputs, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out.png"
    argv = ["regions", "--background", "a sky", "--region", "a ball", "--box", "0.1,0.1,0.5,0.5"]
    argv += ["-i", inputs / "photo.png", "--strength", "0.6", "--model", tiny_model_dir, *FAST, "-o", out]
    run_ok(argv, capsys)
    params = read_parameters(out)
    assert params["image"] == {"path": str(inputs / "photo.png"), "sha256": sha256(inputs / "photo.png")}
    assert params["strength"] == 0.6 and (params["width"], params["height"]) == (128, 128)  # the image's size
    err = run_fails(["regions", "--from", out, "--model", tiny_model_dir, "-o", tmp_path / "x.png"], capsys, tmp_path)
    assert err.startswith(f"error: --from {out}: the image was made from the image 'photo.png'")
    again = tmp_path / "again.png"
    run_ok(["regions", "--from", out, "-i", inputs / "photo.png", "--model", tiny_model_dir, "-q", "-o", again], capsys)
    np.testing.assert_array_equal(pixels(again), pixels(out))


def test_a_recorded_in_memory_image_asks_for_the_image(tmp_path, inputs, tiny_model_dir, capsys):
    from .test_untrusted_settings import _png_with

    png = _png_with(tmp_path, {"mode": "img2img", "prompt": "a lake", "image": {"path": None, "sha256": None}})
    err = run_fails(["img2img", "--from", png, "-o", tmp_path / "x.png"], capsys, tmp_path)
    assert err.startswith(f"error: --from {png}: the image was given in memory: the PNG does not hold it; pass --image")
    if "img2img" in TASKS:  # with the image given again it runs
        out = tmp_path / "out.png"
        run_ok(
            ["img2img", "--from", png, "-i", inputs / "photo.png", "--model", tiny_model_dir, *FAST, "-o", out], capsys
        )
        assert read_parameters(out)["image"]["path"] == str(inputs / "photo.png")


# -- bad input ------------------------------------------------------------------------------------------
def _bad_files(folder: Path) -> None:
    (folder / "notes.png").write_text("not an image")
    (folder / "bomb.png").write_bytes(_bilevel_png(30000, 30000, complete=False))  # 900 Mpx in a few KB
    (folder / "big.png").write_bytes(_bilevel_png(9000, 9000, complete=False))  # over our 64 Mpx, under PIL's
    (folder / "wide.png").write_bytes(_bilevel_png(16400, 64))  # a canvas wider than the largest side
    mask_file(folder / "tall-mask.png", width=64, height=128)
    mask_file(folder / "small-mask.png", width=64, height=64)  # another size, the same aspect: resized
    (folder / "model.pth").write_bytes(b"not really a pickle")
    (folder / "x.toml").write_text('task = "inpaint"\nprompt = "a"\n')


BAD = [  # (verb, arguments after the verb, what the one line says)
    ("img2img", ["-i", "{in}/nope.png", "a"], "image: no such file '{in}/nope.png' (--image)"),
    ("img2img", ["-i", "{in}/notes.png", "a"], "image: '{in}/notes.png' is not an image"),
    ("img2img", ["-i", "{in}", "a"], "image: '{in}' is a folder; give an image file (--image)"),
    ("img2img", ["-i", "{in}/bomb.png", "a"], "image: '{in}/bomb.png' is "),
    (
        "img2img",
        ["-i", "{in}/big.png", "a"],
        "'{in}/big.png' is 9000x9000 = 81,000,000 pixels; images may have at most",
    ),
    ("img2img", ["-i", "{in}/wide.png", "a"], "width must be a multiple of 8 from 64 to 16384 (pixels), got 16400"),
    ("upscale", ["-i", "{in}/bomb.png"], "image: '{in}/bomb.png' is "),
    ("inpaint", ["-i", "{in}/nope.png", "--mask", "{in}/mask.png", "a"], "image: no such file"),
    ("outpaint", ["-i", "{in}/notes.png", "--left", "64", "a"], "image: '{in}/notes.png' is not an image"),
    ("img2img", ["-i", "{in}/photo.png", "a", "--strength", "0"], "strength must be a number in (0, 1]"),
    ("img2img", ["-i", "{in}/photo.png", "a", "--strength", "1.5"], "got 1.5 (--strength)"),
    ("img2img", ["-i", "{in}/photo.png", "a", "--strength", "nan"], "strength must be a number in (0, 1]"),
    ("upscale", ["-i", "{in}/photo.png", "--strength", "-0.1"], "strength must be a number in (0, 1]"),
    ("inpaint", ["-i", "{in}/photo.png", "--mask", "{in}/mask.png", "a", "--strength", "2"], "(--strength)"),
    ("outpaint", ["-i", "{in}/photo.png", "--left", "64", "a", "--strength", "0"], "(--strength)"),
    ("upscale", ["-i", "{in}/photo.png", "--scale", "0.5"], "scale must be a number from 1 to 8.0, got 0.5 (--scale)"),
    ("upscale", ["-i", "{in}/photo.png", "--scale", "9"], "scale must be a number from 1 to 8.0, got 9.0 (--scale)"),
    ("upscale", ["-i", "{in}/photo.png", "--upscaler", "{in}/model.pth"], "upscaler: '{in}/model.pth' is a pickle"),
    ("upscale", ["-i", "{in}/photo.png", "--upscaler", "{in}/none.safetensors"], "upscaler: no such file"),
    ("upscale", ["-i", "{in}/photo.png", "--inversion-steps", "0"], "inversion_steps must be an integer from 1"),
    ("upscale", ["-i", "{in}/photo.png", "--steps", "2"], "strength 0.35 runs none of the 2 steps (int(2 x 0.35) = 0)"),
    (
        "img2img",
        ["-i", "{in}/photo.png", "a", "--strength", "0.01", "--steps", "50"],  # unset: checked at the model's
        "give a strength of at least 0.02 or at least 100 steps",
    ),
    ("inpaint", ["-i", "{in}/photo.png", "--mask", "{in}/tall-mask.png", "a"], "mask is 64x128 but the image is"),
    ("inpaint", ["-i", "{in}/photo.png", "--mask", "{in}/notes.png", "a"], "mask: '{in}/notes.png' is not an image"),
    ("inpaint", ["-i", "{in}/photo.png", "--mask", "{in}/mask.png", "a", "--mask-blur", "-1"], "(--mask-blur)"),
    ("inpaint", ["-i", "{in}/photo.png", "a"], "an input mask is required: --mask FILE"),
    (
        "outpaint",
        ["-i", "{in}/photo.png", "--left", "12", "a"],
        "left must be a multiple of 8 (pixels), got 12 (--left)",
    ),
    ("outpaint", ["-i", "{in}/photo.png", "a"], "outpaint: give at least one of left, right, top, bottom"),
    ("outpaint", ["-i", "{in}/photo.png", "--top", "8", "--overlap", "-8", "a"], "overlap must be an integer"),
    ("img2img", ["a"], "an input image is required: --image FILE"),
    ("img2img", ["-i", "{in}/photo.png"], "a prompt is required"),
    ("img2img", ["-i", "{in}/photo.png", "a", "--width", "100"], "width must be a multiple of 8"),
    ("img2img", ["-i", "{in}/photo.png", "a", "--steps", "0"], "num_inference_steps must be an integer from 1 to 1000"),
    ("img2img", ["--scene", "{in}/x.toml", "--from", "{in}/photo.png"], "give --scene FILE or --from PNG, not both"),
    ("img2img", ["--scene", "{in}/x.toml"], "x.toml: task is 'inpaint', not img2img: run it with `multidiffusion inpa"),
    ("img2img", ["--from", "{in}/photo.png"], "has no multidiffusion parameters"),
    ("regions", ["--background", "a", "--strength", "0.5"], "strength applies to an input image"),
    ("regions", ["--background", "a", "-i", "{in}/nope.png"], "image: no such file '{in}/nope.png' (--image)"),
    ("regions", ["--background", "a", "-i", "{in}/photo.png", "--strength", "0"], "strength must be a number in (0"),
    ("regions", ["{in}/x.toml"], "x.toml: task is 'inpaint', not regions: run it with `multidiffusion inpaint --sce"),
]


@pytest.mark.parametrize(("verb", "args", "message"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_one_line_exit_2_and_nothing_written(verb, args, message, inputs, tmp_path, capsys):
    _bad_files(inputs)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = [verb, *(str(a).replace("{in}", str(inputs)) for a in args), "-o", out_dir / "out.png"]
    err = run_fails([*argv, "--model", "/no/such/model", "-q"], capsys, out_dir)  # refused before any loading
    assert message.replace("{in}", str(inputs)) in err, err


def test_a_mask_of_another_size_but_the_same_aspect_is_accepted(inputs, tmp_path, capsys):
    _bad_files(inputs)
    argv = ["inpaint", "-i", inputs / "photo.png", "--mask", inputs / "small-mask.png", "a", "-o", tmp_path / "o.png"]
    err = run_fails([*argv, "--model", "/no/such/model"], capsys, tmp_path)
    assert "model file or folder '/no/such/model' does not exist" in err  # past every input check


def test_a_real_process_prints_one_line_and_no_traceback(inputs, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = ["upscale", "-i", str(inputs / "photo.png"), "--scale", "9", "-o", str(tmp_path / "x.png")]
    proc = subprocess.run(
        [sys.executable, "-m", "multidiffusion", *argv], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: scale must be a number from 1 to 8.0, got 9.0 (--scale)"
    assert not (tmp_path / "x.png").exists()


def test_help_shows_the_flags_and_examples(capsys):
    for verb, flags in {
        "img2img": ["--image", "--strength", "--width", "--placement", "--scene", "--from"],
        "upscale": ["--scale", "--upscaler", "--noise-inversion", "--inversion-steps", "--allow-pickle"],
        "inpaint": ["--mask", "--mask-blur", "--strength"],
        "outpaint": ["--left", "--right", "--top", "--bottom", "--overlap", "--mask-blur"],
        "regions": ["--image", "--strength"],
    }.items():
        code, out, _ = run_cli([verb, "--help"], capsys)
        assert code == 0
        for word in [*flags, "examples:", "--model demo"]:
            assert word in out, (verb, word)


# -- scene files with images -----------------------------------------------------------------------------
def test_the_demo_inpaint_scene_reads_its_image_and_mask():
    scene = load_scene(REPO / "examples" / "demo" / "inpaint.toml")
    options = scene.options
    assert scene.task == "inpaint" and scene.model == "demo"
    assert options.image.path == str(REPO / "examples" / "demo" / "images" / "mountains.png")
    assert options.image.size == options.mask.size == (64, 128) and options.mask.image.mode == "L"
    assert (options.height, options.width) == (64, 128)


@needs_task("img2img")
def test_a_scene_file_runs_and_its_result_reruns_from_anywhere(tmp_path, tiny_model_dir, capsys, monkeypatch):
    folder = tmp_path / "scene"
    (folder / "images").mkdir(parents=True)
    picture(folder / "images" / "photo.png")
    (folder / "s.toml").write_text(
        'task = "img2img"\nimage = "images/photo.png"\nprompt = "a lake"\nstrength = 0.5\n'
        "num_inference_steps = 2\nseed = 3\n"
    )
    monkeypatch.chdir(folder)
    out = tmp_path / "out.png"
    run_ok(["img2img", "--scene", "s.toml", "--model", tiny_model_dir, "-q", "-o", out], capsys)
    params = read_parameters(out)
    photo = folder / "images" / "photo.png"
    assert params["image"] == {"path": str(photo), "sha256": sha256(photo)} and params["seed"] == 3
    monkeypatch.chdir(tmp_path)  # another folder: the input given again
    again = tmp_path / "again.png"
    run_ok(["img2img", "--from", out, "-i", photo, "--model", tiny_model_dir, "-q", "-o", again], capsys)
    np.testing.assert_array_equal(pixels(again), pixels(out))


def test_scene_errors_on_the_command_line_name_the_file(tmp_path, capsys):
    folder = tmp_path / "scene"
    folder.mkdir()
    picture(tmp_path / "outside.png")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for text, message in [
        (
            'task = "inpaint"\nimage = "../outside.png"\nmask = "m.png"\nprompt = "a"',
            "s.toml: image '../outside.png' is",
        ),
        ('task = "inpaint"\nimage = "nope.png"\nmask = "m.png"\nprompt = "a"', "s.toml: image: no such file"),
        ('task = "inpaint"\nimage = "nope.png"\nprompt = "a"', "an input mask is required"),
        ('task = "inpaint"\nimage = "nope.png"\nmask = "m.png"\nprompt = "a"\nstrengh = 1', "did you mean"),
    ]:
        (folder / "s.toml").write_text(text + "\n")
        err = run_fails(["inpaint", "--scene", folder / "s.toml", "-o", out_dir / "o.png"], capsys, out_dir)
        assert message in err, err
