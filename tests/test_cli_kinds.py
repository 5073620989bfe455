"""The command line's flags derive from the declarations (issue 26): every conditioning kind's flags
and loading flags (multidiffusion.conditionings.KINDS) and every model family's options
(multidiffusion.models.model_flags) are on the verbs with no edit in cli/; IP-Adapter, declared in
its own modules, runs from the command line and its PNG is made again with --from."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from multidiffusion.cli import build_parser
from multidiffusion.conditionings import KINDS, ConditioningKind, Flag
from multidiffusion.files.metadata import read_settings
from multidiffusion.models import model_flags

from .ip_adapter_fixtures import reference_image, write_ip_adapter
from .test_scene import run_cli

SAMPLING_VERBS = ("panorama", "regions", "img2img", "upscale", "inpaint", "outpaint")


def _verbs(parser) -> dict:
    (verbs,) = [a for a in parser._actions if a.dest == "command"]
    return verbs.choices


def test_every_kind_and_family_flag_is_on_every_verb():
    verbs = _verbs(build_parser())
    for name, p in verbs.items():
        flags = set(p._option_string_actions)
        loading = {f.flag for kind in KINDS for f in kind.load_flags} | {flag for flag, _, _ in model_flags()}
        assert loading <= flags, (name, loading - flags)
        if name in SAMPLING_VERBS:
            options = {f.flag for kind in KINDS for f in kind.flags}
            assert options <= flags, (name, options - flags)
    assert {"--ip-adapter", "--ip-adapter-image", "--control-image", "--positions"} <= set(
        verbs["panorama"]._option_string_actions
    )


def test_a_new_kind_brings_its_flags_with_no_edit_in_the_command_line(monkeypatch):
    fake = ConditioningKind(
        name="fake",
        flags=(Flag("--fake-strength", "fake_strength", {"type": float, "help": "how much"}),),
        flag_group="Fake (with --fake-weights FILE)",
        load_flags=(Flag("--fake-weights", "weights", {"metavar": "FILE", "help": "its weights"}),),
    )
    monkeypatch.setattr("multidiffusion.cli.common.KINDS", (*KINDS, fake))
    parser = _verbs(build_parser())["panorama"]
    assert "Fake (with --fake-weights FILE)" in [g.title for g in parser._action_groups]
    args = parser.parse_args(["a lake", "--fake-strength", "0.5", "--fake-weights", "w.safetensors", "-o", "x.png"])
    assert args.fake_strength == 0.5 and args.fake_weights == "w.safetensors"


@pytest.fixture(scope="module")
def adapter(sd16, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ip-adapter")
    write_ip_adapter(folder, sd16.unet, subfolder="models", weight_name="ip.safetensors")
    reference_image(1).save(folder / "style.png")
    return folder


def test_an_ip_adapter_from_the_command_line_and_again_from_its_png(adapter, tiny_model_dir, tmp_path, capsys):
    style = str(adapter / "style.png")
    load = ["--ip-adapter", adapter, "--ip-adapter-subfolder", "models", "--ip-adapter-weight-name", "ip.safetensors"]
    model = ["--model", tiny_model_dir, "-q"]
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    argv = ["panorama", "a lake", "--width", 128, "--height", 64, "--steps", 2, "--seed", 3, *model, *load]
    code, _, err = run_cli([*argv, "--ip-adapter-image", style, "--ip-adapter-scale", 0.7, "-o", first], capsys)
    assert code == 0, err
    stored = read_settings(first)
    assert stored.values["ip_adapter_scale"] == 0.7 and stored.inputs["ip_adapter_image"]["path"] == style
    code, _, err = run_cli(
        ["panorama", "--from", first, "--ip-adapter-image", style, *model, *load, "-o", again], capsys
    )
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
    code, _, err = run_cli(["panorama", "a lake", "--ip-adapter-subfolder", "models", *model, "-o", again], capsys)
    assert (
        code == 2
        and err.strip() == "error: --ip-adapter-subfolder: name the IP-Adapter too (--ip-adapter FOLDER_OR_REPO)"
    )


def test_a_batch_loads_its_model_with_the_typed_model_flags(monkeypatch):
    """--original-size, --positions ... typed with `multidiffusion batch` reach the model's loading
    (they were parsed and then dropped)."""
    from types import SimpleNamespace

    from multidiffusion.cli import batch

    loaded = []
    monkeypatch.setattr(batch, "load_model", lambda *a, **k: loaded.append(k) or SimpleNamespace(
        set_progress_bar_config=lambda **_: None))  # fmt: skip
    args = _verbs(build_parser())["batch"].parse_args(
        ["jobs.jsonl", "--original-size", "window", "--positions", "canvas"]
    )
    models = batch._Models(args)
    models.get(SimpleNamespace(model=None, controlnet=None, model_options={}))
    assert loaded == [{"original_size": "window", "positions": "canvas"}]
    # a line's own model options (a scene's clip_skip) join them, the typed flags winning; other
    # options are another model: loaded again
    models.get(SimpleNamespace(model=None, controlnet=None, model_options={"clip_skip": 1, "positions": "view"}))
    assert loaded[1] == {"clip_skip": 1, "original_size": "window", "positions": "canvas"}
