"""The command line: PNGs that regenerate themselves, one-line errors with exit status 2."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from multidiffusion.cli import main
from multidiffusion.files.metadata import read_parameters

FAST = ["--steps", "2", "--height", "128", "--width", "256", "-q"]


def run(args, capsys):
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pixels(path):
    return np.asarray(Image.open(path))


def test_png_metadata_regenerates_the_same_image(tiny_model_dir, tmp_path, capsys):
    first = tmp_path / "pano.png"
    code, out, err = run(
        [
            "panorama",
            "a red house",
            "--model",
            str(tiny_model_dir),
            "--seed",
            "3",
            "-o",
            str(first),
            "--negative",
            "fog",
            "--scheduler",
            "euler_a",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    assert "wrote" in out
    params = read_parameters(first)
    assert params["prompt"] == "a red house" and params["seed"] == 3 and params["negative_prompt"] == "fog"
    assert params["scheduler"] == "euler_a" and params["width"] == 256 and params["window"] == 16
    assert "Negative prompt: fog" in Image.open(first).text["parameters"]

    again = tmp_path / "again.png"
    code, _, err = run(
        ["panorama", "--from", str(first), "--model", str(tiny_model_dir), "-o", str(again), "-q"], capsys
    )
    assert code == 0, err
    np.testing.assert_array_equal(pixels(first), pixels(again))

    changed = tmp_path / "changed.png"
    code, _, _ = run(
        ["panorama", "--from", str(first), "--model", str(tiny_model_dir), "--seed", "4", "-o", str(changed), "-q"],
        capsys,
    )
    assert code == 0
    assert not np.array_equal(pixels(first), pixels(changed))
    assert read_parameters(changed)["seed"] == 4


def test_random_seed_is_recorded(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "a.png"
    code, _, _ = run(["panorama", "x", "--model", str(tiny_model_dir), "-o", str(path), *FAST], capsys)
    assert code == 0
    assert isinstance(read_parameters(path)["seed"], int)


def test_several_images_are_numbered(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "n.png"
    code, _, _ = run(
        ["panorama", "x", "--model", str(tiny_model_dir), "--num-images", "2", "-o", str(path), *FAST], capsys
    )
    assert code == 0
    assert path.exists() and (tmp_path / "n-2.png").exists()
    assert not np.array_equal(pixels(path), pixels(tmp_path / "n-2.png"))


BAD = [
    (["--width", "100"], "width must be a multiple of 8 from 64 to 16384 (pixels), got 100 (--width)"),
    (["--height", "0"], "height must be a multiple of 8"),
    (["--width", "-64"], "width must be a multiple of 8"),
    (["--width", "99999"], "width must be a multiple of 8"),
    (["--stride", "0"], "stride must be an integer ≥ 1, got 0 (--stride)"),
    (["--window", "16", "--stride", "17"], "stride must be an integer from 1 to 16, got 17 (--stride)"),
    (["--stride", "17"], "stride must be at most the window 16x16, got 17x17"),  # checked against the model's window
    (["--steps", "0"], "num_inference_steps must be an integer from 1 to 1000, got 0 (--steps)"),
    (["--guidance", "-1"], "guidance_scale must be a number ≥ 0, got -1.0 (--guidance)"),
    (["--scheduler", "fast"], "scheduler must be one of ddim"),
    (["--steps", "two"], "argument --steps: invalid int value: 'two'"),
    (["--model", "/no/such/model"], "model file or folder '/no/such/model' does not exist"),
    (["--model", "nobody/no-such-model"], "model 'nobody/no-such-model' is not in the local Hugging Face cache"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_line_exit_2_and_no_file(tiny_model_dir, tmp_path, capsys, args, message):
    path = tmp_path / "out.png"
    model = [] if "--model" in args else ["--model", str(tiny_model_dir)]
    code, _, err = run(["panorama", "x", *model, "-o", str(path), "--steps", "1", *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "output,message",
    [
        ("missing/out.png", "--output folder"),
        ("out.jpg", "--output must be a .png file"),
        ("sub", "is a folder"),
        ("file.txt/out.png", "does not exist"),
        ("/proc/out.png", "is not writable"),
    ],
)
def test_unwritable_output_fails_before_loading(tmp_path, capsys, output, message):
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "file.txt").write_text("x")
    target = output if output.startswith("/") else str(tmp_path / output).replace("/sub", "/sub.png")
    code, _, err = run(["panorama", "x", "--model", "/no/such/model", "-o", target], capsys)
    assert code == 2
    assert message in err and "model" not in err.split(message)[0]


def test_missing_prompt(capsys, tmp_path):
    code, _, err = run(["panorama", "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "a prompt is required" in err


def test_from_a_png_without_parameters(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    code, _, err = run(["panorama", "--from", str(tmp_path / "plain.png"), "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "has no multidiffusion parameters" in err


def test_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "multidiffusion", "panorama", "x", "--width", "100", "-o", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: width must be a multiple of 8 from 64 to 16384 (pixels), got 100 (--width)"
    assert "Traceback" not in proc.stderr


def test_help_explains_the_command(capsys):
    code, out, _ = run(["panorama", "--help"], capsys)
    assert code == 0
    for word in ("--width", "--circular", "--seed", "--scheduler", "examples:", "latent pixels"):
        assert word in out


def test_png_gets_the_usual_file_mode(tmp_path):
    """Written through a private temporary file, the PNG still gets 0666 less the umask, not 0600."""
    from PIL import Image

    from multidiffusion.files.metadata import _UMASK, save_png

    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", {"prompt": "a"})
    assert path.stat().st_mode & 0o777 == 0o666 & ~_UMASK
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
