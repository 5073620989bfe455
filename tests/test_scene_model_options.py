"""A scene file's model options (the families' declared options, e.g. SD's ``clip_skip``) go to the
model it runs with, as ``from_pretrained``'s keywords, not to the task: derived from the families'
declarations (:func:`multidiffusion.models.take_model_options`), recorded with the result."""

from __future__ import annotations

from multidiffusion import load_scene
from multidiffusion.files.metadata import read_parameters

from .test_scene import run_cli

SCENE = """task = "regions"
width = 64
height = 64
num_inference_steps = 1
seed = 3
background = "a meadow"
{extra}
[[regions]]
prompt = "a red ball"
box = [0.1, 0.2, 0.6, 0.8]
"""


def test_a_scene_names_model_options_apart_from_the_task(tmp_path):
    (tmp_path / "scene.toml").write_text(SCENE.format(extra="clip_skip = 1"))
    scene = load_scene(tmp_path / "scene.toml")
    assert scene.model_options == {"clip_skip": 1}
    assert "clip_skip" not in scene.options.settings()


def test_the_command_line_loads_the_model_with_the_scenes_options(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "scene.toml").write_text(SCENE.format(extra="clip_skip = 1"))
    out = tmp_path / "out.png"
    code, _, err = run_cli(["regions", tmp_path / "scene.toml", "-o", out, "--model", tiny_model_dir, "-q"], capsys)
    assert code == 0, err
    assert read_parameters(out)["clip_skip"] == 1
    (tmp_path / "bad.toml").write_text(SCENE.format(extra='clip_skip = "many"'))
    bad = ["regions", tmp_path / "bad.toml", "-o", tmp_path / "b.png", "--model", tiny_model_dir]
    code, _, err = run_cli(bad, capsys)
    assert code == 2 and "clip_skip" in err and "Traceback" not in err and not (tmp_path / "b.png").exists()


def test_clip_skip_takes_an_earlier_layer_through_the_final_norm(tiny_model_dir):
    """clip_skip=1 on SD: the second-to-last layer's hidden states through the final LayerNorm, as
    diffusers defines it (which reaches the norm by a name transformers 5 no longer has)."""
    import torch

    from multidiffusion import MultiDiffusion

    md = MultiDiffusion.from_pretrained(str(tiny_model_dir), clip_skip=1)
    got = md.adapter.encode([["a lake"]], [[""]], 1, False).positive["encoder_hidden_states"][0]
    tok, enc = md.pipe.tokenizer, md.pipe.text_encoder
    ids = tok(["a lake"], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = enc(ids.input_ids, output_hidden_states=True).hidden_states
        want, last = enc.final_layer_norm(hidden[-2]), enc(ids.input_ids)[0]
    torch.testing.assert_close(got, want.to(got.dtype))
    assert not torch.allclose(got, last.to(got.dtype))  # not the last layer's
    assert "text_model" not in enc.__dict__  # the name lent for the call is taken back


def test_clip_skip_past_the_text_encoders_layers_is_refused_by_name(tiny_model_dir):
    """A clip_skip the text encoder has no layers for (a 40-digit one from a scene) is one clear
    error when the model loads, not an IndexError at the first prompt."""
    import pytest

    from multidiffusion import MultiDiffusion

    for value in (2, 10**39):
        with pytest.raises(ValueError, match=r"clip_skip must be less than the 2 layers of this model's text_encoder"):
            MultiDiffusion.from_pretrained(str(tiny_model_dir), clip_skip=value)
