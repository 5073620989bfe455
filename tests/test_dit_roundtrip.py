"""Issue 26's reproduction: a panorama made on a FLUX.1 or SD 3 model and saved by the command line
could not be made again (`--from a.png --model FOLDER` exited 2 with "unknown setting
'max_sequence_length'"): the PNG reader knew only SDXL's model options. It now takes every family's
(:func:`multidiffusion.models.family_options`, derived from their declared options), so the round
trip gives the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from multidiffusion.files.metadata import read_settings

from .test_scene import run_cli


@pytest.fixture(scope="module", params=["flux", "sd3"])
def dit_dir(request, flux16, sd3_16, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    (flux16 if request.param == "flux" else sd3_16).save_pretrained(folder)
    return request.param, folder


def test_a_dit_panorama_saved_by_the_cli_is_made_again_from_its_png(dit_dir, tmp_path, capsys):
    _family, folder = dit_dir
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    args = ["--model", folder, "--steps", 2, "--width", 256, "--height", 128, "--seed", 3, "-q"]
    code, _, err = run_cli(["panorama", "a lake at dawn", *args, "-o", first], capsys)
    assert code == 0, err
    stored = read_settings(first, "panorama")
    assert "max_sequence_length" in stored.model_options and "max_sequence_length" not in stored.values
    code, _, err = run_cli(["panorama", "--from", first, "--model", folder, "-q", "-o", again], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
