"""LoRAs on the command line and in scene files: --lora [NAME=]FILE[:WEIGHT] (the whole image at its
weight, or weight 0: only the regions naming it), a scene's ``loras`` table, the PNG recording them
by file name and SHA-256 without ever loading them back, and bad values refused before any model
loads (exit 2, nothing written)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from multidiffusion.cli.common import lora_type
from multidiffusion.files.metadata import read_parameters, read_settings

from .test_cli_images import pixels, run_fails, run_ok, sha256

peft = pytest.importorskip("peft")

FAST = ["--steps", "2", "--seed", "1", "-q"]


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    from .test_region_loras import _lora

    path = tmp_path_factory.mktemp("loras") / "style.safetensors"
    save_file({k: v.contiguous() for k, v in _lora(3).items()}, path)
    return path


def test_lora_flag_syntax():
    assert lora_type("style.safetensors") == ("style", "style.safetensors", 1.0)
    assert lora_type("a=loras/x.safetensors:0.5") == ("a", "loras/x.safetensors", 0.5)
    assert lora_type("loras/x.safetensors:0") == ("x", "loras/x.safetensors", 0.0)
    assert lora_type("/abs/my=file.safetensors") == ("my=file", "/abs/my=file.safetensors", 1.0)
    with pytest.raises(argparse.ArgumentTypeError, match="from -10 to 10"):
        lora_type("x.safetensors:11")


def test_a_lora_acts_is_recorded_and_from_asks_for_it_again(lora_file, tiny_model_dir, tmp_path, capsys):
    model = ["--model", tiny_model_dir]
    args = ["panorama", "a lake", "--width", "128", "--height", "128", *FAST, *model]
    plain, styled, half = tmp_path / "plain.png", tmp_path / "styled.png", tmp_path / "half.png"
    run_ok([*args, "-o", plain], capsys)
    run_ok([*args, "--lora", f"{lora_file}", "-o", styled], capsys)
    run_ok([*args, "--lora", f"s={lora_file}:0.5", "-o", half], capsys)
    assert not np.array_equal(pixels(plain), pixels(styled))
    assert not np.array_equal(pixels(half), pixels(styled))
    params = read_parameters(half)
    assert params["lora_files"] == {"s": {"file": "style.safetensors", "sha256": sha256(lora_file), "weight": 0.5}}
    assert read_settings(half).loras == {"s": "style.safetensors"}

    err = run_fails(["panorama", "--from", half, *model, "-o", tmp_path / "x.png"], capsys, tmp_path)
    assert "the image was made with the LoRAs s (style.safetensors), which the PNG does not store" in err
    again = tmp_path / "again.png"
    run_ok(["panorama", "--from", half, *model, "--lora", f"s={lora_file}:0.5", "-q", "-o", again], capsys)
    np.testing.assert_array_equal(pixels(again), pixels(half))


def test_weight_zero_acts_only_in_the_regions_that_name_it(lora_file, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "style.safetensors").write_bytes(lora_file.read_bytes())
    base = {"width": 128, "height": 128, "background": "a lake", "num_inference_steps": 2, "seed": 1}
    region = {"prompt": "a red house", "box": [0, 0, 128, 128]}
    scenes = {
        "plain": {**base, "regions": [region]},
        "loaded": {**base, "loras": {"st": {"file": "loras/style.safetensors", "weight": 0}}, "regions": [region]},
        "named": {
            **base,
            "loras": {"st": {"file": "loras/style.safetensors", "weight": 0}},
            "regions": [{**region, "loras": {"st": 1.0}}],
        },
    }
    out = {}
    for name, scene in scenes.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(scene))
        out[name] = tmp_path / f"{name}.png"
        run_ok(["regions", tmp_path / f"{name}.json", "--model", tiny_model_dir, "-q", "-o", out[name]],
               capsys)  # fmt: skip
    np.testing.assert_array_equal(pixels(out["loaded"]), pixels(out["plain"]))  # loaded, acting nowhere
    assert not np.array_equal(pixels(out["named"]), pixels(out["plain"]))  # acting in the region
    assert read_parameters(out["named"])["lora_files"]["st"]["weight"] == 0.0


def test_bad_loras_are_one_line_before_any_model_loads(lora_file, tmp_path, capsys):
    args = ["panorama", "a lake", "--width", "256", "--height", "128", *FAST, "-o", tmp_path / "x.png"]
    (tmp_path / "weights.bin").write_bytes(b"not read")
    err = run_fails([*args, "--lora", tmp_path / "weights.bin"], capsys, tmp_path)
    assert "weights.bin is a pickle, which can run code when loaded" in err
    err = run_fails([*args, "--lora", tmp_path / "missing.safetensors"], capsys, tmp_path)
    assert "no such file or folder" in err
    err = run_fails([*args, "--lora", f"a={lora_file}", "--lora", f"a={lora_file}"], capsys, tmp_path)
    assert "the name 'a' is given twice" in err
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps({"width": 128, "height": 128, "regions": [
        {"prompt": "x", "box": [0, 0, 64, 64], "loras": {"nope": 1.0}}]}))  # fmt: skip
    err = run_fails(["regions", scene, "-o", tmp_path / "y.png"], capsys, tmp_path)
    assert "regions[0].loras: 'nope' is not a LoRA given with --lora NAME=FILE (given: none)" in err
    scene.write_text(json.dumps({"width": 128, "height": 128, "background": "a lake",
                                 "loras": {"a": {"file": "x.safetensors", "w": 1}}}))  # fmt: skip
    err = run_fails(["regions", scene, "-o", tmp_path / "y.png"], capsys, tmp_path)
    assert "loras.a must be a file name or a table" in err


def test_load_lora_stacks_on_the_active_ones_at_its_weight(md16_loras):
    from multidiffusion.models.lora import _lora_layers

    layer = _lora_layers(md16_loras.pipe)[0]
    assert set(layer.active_adapters) == {"one"}  # "zero" loaded with weight 0: not acting
    md16_loras.load_lora(md16_loras.lora_source, adapter_name="two", weight=0.5)
    assert set(layer.active_adapters) == {"one", "two"}
    assert md16_loras.lora_files["two"]["weight"] == 0.5


@pytest.fixture
def md16_loras(lora_file):
    from devtools.components import tiny_sd_pipeline
    from multidiffusion import MultiDiffusion

    md = MultiDiffusion(tiny_sd_pipeline(sample_size=16))
    md.load_lora(lora_file, adapter_name="one")
    md.load_lora(lora_file, adapter_name="zero", weight=0)
    md.lora_source = lora_file
    return md
