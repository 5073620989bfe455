"""ControlNet on the command line: --controlnet (repeatable; folders, repo ids, .safetensors files),
--control-image and the per-ControlNet settings, --from with the recorded control images (checked by
SHA-256) and the ControlNet given again, the Tile ControlNet of upscale, and bad values named by
their flag (exit 2, nothing written, before any model loads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from multidiffusion.files.metadata import read_parameters, read_settings

from .test_cli_images import picture, pixels, run_fails, run_ok, sha256
from .test_controlnet import _control_image

FAST = ["--steps", "2", "--seed", "1", "-q"]


@pytest.fixture
def files(tmp_path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    _control_image(width=256, height=128, seed=3).save(folder / "edges.png")
    picture(folder / "photo.png", width=96, height=64)
    return folder


@pytest.fixture
def out_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_panorama_with_a_controlnet_records_the_control_image_and_from_reruns_it(
    files, out_dir, tiny_model_dir, controlnet_dir, capsys
):
    model = ["--model", tiny_model_dir]
    edges = files / "edges.png"
    first = out_dir / "first.png"
    args = ["panorama", "a lake", "--width", "256", "--height", "128", *FAST, *model]
    run_ok([*args, "--controlnet", controlnet_dir, "--control-image", edges, "--control-scale", "0.7",
            "--control-end", "0.5", "-o", first], capsys)  # fmt: skip
    params = read_parameters(first)
    assert params["control_image"] == [{"path": str(edges), "sha256": sha256(edges)}]
    assert params["controlnet_conditioning_scale"] == 0.7 and params["control_guidance_end"] == 0.5
    stored = read_settings(first)
    assert "control_image" not in stored.values and stored.inputs["control_image"] == params["control_image"]
    plain = out_dir / "plain.png"
    run_ok([*args, "-o", plain], capsys)
    assert not np.array_equal(pixels(plain), pixels(first))  # the ControlNet acted

    # a PNG's settings never read a file (issue 25): the control image is asked for again, then the ControlNet
    err = run_fails(["panorama", "--from", first, *model, "-o", out_dir / "x.png"], capsys, out_dir)
    assert f"--from {first}: the image was made from the control_image 'edges.png'" in err
    assert "pass --control-image FILE again" in err
    err = run_fails(["panorama", "--from", first, *model, "--control-image", edges, "-o", out_dir / "x.png"],
                    capsys, out_dir)  # fmt: skip
    assert f"--from {first}: the image was made with a ControlNet, which the PNG does not store" in err
    again = out_dir / "again.png"
    run_ok(["panorama", "--from", first, *model, "--controlnet", controlnet_dir, "--control-image", edges, "-q",
            "-o", again], capsys)  # fmt: skip
    np.testing.assert_array_equal(pixels(again), pixels(first))


def test_upscale_with_a_controlnet_and_no_control_image_uses_the_resized_input(
    files, out_dir, tiny_model_dir, controlnet_dir, capsys
):
    model = ["--model", tiny_model_dir, "--controlnet", controlnet_dir]
    first = out_dir / "up.png"
    run_ok(["upscale", "-i", files / "photo.png", "--scale", "2", "--strength", "0.5", *FAST, *model, "-o", first],
           capsys)  # fmt: skip
    params = read_parameters(first)
    assert params["control_image"] == ["input"] and params["control_preprocessor"] == "none"
    photo = ["-i", files / "photo.png"]  # a PNG's settings never read a file: the input is given again
    err = run_fails(["upscale", "--from", first, *photo, "--model", tiny_model_dir, "-o", out_dir / "x.png"], capsys,
                    out_dir)  # fmt: skip
    assert "which the PNG does not store; pass --controlnet MODEL again" in err
    again = out_dir / "again.png"
    run_ok(["upscale", "--from", first, *photo, *model, "-q", "-o", again], capsys)
    np.testing.assert_array_equal(pixels(again), pixels(first))
    tiled = out_dir / "tiled.png"
    run_ok(["upscale", "--from", first, *photo, *model, "--control-preprocessor", "tile", "-q", "-o", tiled], capsys)
    assert read_parameters(tiled)["control_preprocessor"] == "tile"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--control-scale", "-1"], "controlnet_conditioning_scale must be"),
        (["--control-start", "0.8", "--control-end", "0.2"], "control_guidance_start must be below"),
        (["--control-preprocessor", "depth"], "--control-preprocessor: invalid choice"),
        (["--control-image", "{files}/missing.png"], "(--control-image)"),
        (
            ["--control-image", "{files}/edges.png", "--control-image", "{files}/edges.png"],
            "--control-image: give one per --controlnet (1), got 2",
        ),
        (
            ["--control-scale", "0.5", "--control-scale", "0.6"],
            "controlnet_conditioning_scale must be a number or a list of 1",
        ),
    ],
)
def test_bad_control_flags_are_named(files, out_dir, controlnet_dir, extra, message, capsys):
    extra = [e.format(files=files) for e in extra]
    base = [
        "panorama",
        "x",
        "--width",
        "256",
        "--height",
        "128",
        "--controlnet",
        controlnet_dir,
        "-o",
        out_dir / "x.png",
    ]
    if "--control-image" not in extra:
        base += ["--control-image", files / "edges.png"]
    err = run_fails([*base, *extra], capsys, out_dir)
    assert message in err


def test_controlnet_flags_are_checked_before_any_model_loads(files, out_dir, tmp_path, capsys):
    edges = ["--control-image", files / "edges.png"]
    base = ["panorama", "x", "--width", "256", "--height", "128", "--model", tmp_path / "no-such-model", "-o",
            out_dir / "x.png"]  # fmt: skip
    err = run_fails([*base, *edges], capsys, out_dir)
    assert "a control image needs a ControlNet: pass --controlnet MODEL" in err
    err = run_fails([*base, *edges, "--controlnet", "./missing-controlnet"], capsys, out_dir)
    assert "--controlnet: no such file or folder" in err and "missing-controlnet'" in err
    pickle = tmp_path / "cn.pth"
    pickle.write_bytes(b"not really")
    err = run_fails([*base, *edges, "--controlnet", pickle], capsys, out_dir)
    assert "--controlnet: cn.pth is a pickle checkpoint" in err
    err = run_fails(["upscale", "-i", files / "photo.png", "--control-image", "input", "--model", "demo", "-o",
                     out_dir / "x.png"], capsys, out_dir)  # fmt: skip
    assert "a control image needs a ControlNet" in err


def test_control_mode_is_a_union_controlnets_setting(files, out_dir, tiny_model_dir, controlnet_dir, capsys):
    args = ["panorama", "a lake", "--width", "256", "--height", "128", *FAST, "--model", tiny_model_dir]
    err = run_fails([*args, "--control-mode", "1", "-o", out_dir / "x.png"], capsys, out_dir)
    assert "control_mode applies to control images" in err
    err = run_fails([*args, "--controlnet", controlnet_dir, "--control-image", files / "edges.png", "--control-mode",
                     "1", "-o", out_dir / "x.png"], capsys, out_dir)  # fmt: skip
    assert "control_mode is a Union ControlNet's setting; this model's ControlNet takes none" in err


def test_a_controlnet_without_a_control_image_is_refused_not_run_unused(files, out_dir, capsys):
    """Issue 26, as a new user found it: `--controlnet demo` with no `--control-image` ran with the
    ControlNet unused, exit 0, no word. An upscale's Tile ControlNet takes its input instead."""
    for verb in (["panorama", "a lake"], ["img2img", "-i", files / "photo.png", "a lake"]):
        err = run_fails([*verb, "--controlnet", "demo", "--model", "demo", "-o", out_dir / "x.png"], capsys, out_dir)
        assert "--controlnet: a ControlNet needs a control image: give --control-image FILE" in err
