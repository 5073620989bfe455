"""The command line with SDXL: micro-conditioning flags, stored and regenerated from the PNG."""

import numpy as np
from PIL import Image

from multidiffusion.files.metadata import read_parameters

from .test_cli import FAST, run


def test_sdxl_flags_are_stored_and_regenerated(tiny_sdxl_dir, tmp_path, capsys):
    first = tmp_path / "xl.png"
    args = ["panorama", "a harbour", "--model", str(tiny_sdxl_dir), "--seed", "2", "-o", str(first), *FAST]
    code, _, err = run([*args, "--crops-coords", "offset", "--original-size", "1024x2048"], capsys)
    assert code == 0, err
    params = read_parameters(first)
    assert params["crops_coords_top_left"] == "offset" and params["original_size"] == [1024, 2048]

    again = tmp_path / "again.png"
    code, _, err = run(
        ["panorama", "--from", str(first), "--model", str(tiny_sdxl_dir), "-o", str(again), "-q"], capsys
    )
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))

    plain = tmp_path / "plain.png"
    code, _, err = run(
        ["panorama", "a harbour", "--model", str(tiny_sdxl_dir), "--seed", "2", "-o", str(plain), *FAST], capsys
    )
    assert code == 0, err
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(plain)))


def test_rerun_of_an_sdxl_png_on_an_sd_model(tiny_sdxl_dir, tiny_model_dir, tmp_path, capsys):
    first = tmp_path / "xl.png"
    code, _, err = run(["panorama", "a harbour", "--model", str(tiny_sdxl_dir), "-o", str(first), *FAST], capsys)
    assert code == 0, err
    # the stored SDXL micro-conditioning is not forced on another model
    again = tmp_path / "sd.png"
    code, _, err = run(["panorama", "--from", str(first), "--model", str(tiny_model_dir), "-o", str(again)], capsys)
    assert code == 0, err
    assert "original_size" not in read_parameters(again)


def test_sdxl_flags_on_an_sd_model_are_one_line_errors(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    args = ["panorama", "x", "--model", str(tiny_model_dir), "-o", str(out), *FAST]
    code, _, err = run([*args, "--original-size", "window"], capsys)
    assert code == 2 and err.startswith("error: original_size applies to SDXL models") and err.count("\n") == 1
    code, _, err = run([*args, "--original-size", "big"], capsys)
    assert code == 2 and "expected canvas, window or HxW pixels, got 'big'" in err
    assert not out.exists()
