"""Issue 25, models and tasks: inputs that ran silently wrong (an LCM UNet, an all-black inpaint mask),
hub look-ups that waited forever (a LoRA repo id, a single-file checkpoint's configuration) and pickles
refused inside diffusers with its own message."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from multidiffusion import MultiDiffusion

from .test_loading_errors import online_env, silent_hub  # noqa: F401  (silent_hub: a fixture)


def _lcm_unet(like):
    """``like``'s architecture with a guidance embedding (``time_cond_proj_dim``), as LCM models have."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in like.config.items() if not k.startswith("_")}
    return UNet2DConditionModel.from_config({**config, "time_cond_proj_dim": 8}).eval()


def test_an_lcm_unet_runs_with_its_guidance_embedding(sd16, tmp_path):
    """Before: the UNet's guidance embedding was never fed and the model ran as plain CFG (a wrong image);
    then it was refused by name. Now (issue 29) w reaches it as ``timestep_cond``, one evaluation per
    view and step (tests/test_few_step.py: equal to LatentConsistencyModelPipeline)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**{**sd16.components, "unet": _lcm_unet(sd16.unet)})
    pipe.save_pretrained(tmp_path / "lcm")
    md = MultiDiffusion.from_pretrained(tmp_path / "lcm", device="cpu")
    out = md.panorama("a lake", height=128, width=128, num_inference_steps=2, output_type="latent")
    assert out.stats.evaluations == 2  # no unconditional rows: w is an input, not classifier-free guidance


def test_an_all_black_inpaint_mask_is_refused_before_any_model_call(md16, monkeypatch):
    """Before: a whole job ran and returned the input (nothing to repaint), with no warning."""

    def no_model(*args, **kwargs):
        raise AssertionError("a model ran for a mask with nothing to repaint")

    pipe = md16.adapter.pipe
    monkeypatch.setattr(pipe.unet, "forward", no_model)
    monkeypatch.setattr(pipe.vae, "encode", no_model)
    image = Image.fromarray(np.full((128, 128, 3), 128, np.uint8))
    for mask in (Image.new("L", (128, 128), 0), Image.new("L", (128, 128), 100)):  # black; grey under one half
        with pytest.raises(ValueError, match=r"^mask: no pixel is white .* nothing to repaint") as info:
            md16.inpaint(image, mask, "x", num_inference_steps=2)
        assert "\n" not in str(info.value)


# -- hub look-ups that waited forever: a LoRA repo id, a single-file checkpoint's configuration ---------

_ON_A_SILENT_HUB = """
import json, sys, time
from diffusers import DiffusionPipeline  # imported first (seconds): the bound is on waiting for the hub
from safetensors.torch import save_file
import torch
from multidiffusion import ModelNotFoundError, MultiDiffusion
from multidiffusion.models import hub

hub.HUB_TIMEOUT_S = 2.0
if sys.argv[1] == "lora":
    from devtools.components import tiny_sd_pipeline
    from multidiffusion.models.lora import load_lora

    pipe = tiny_sd_pipeline(sample_size=16)
    call = lambda: load_lora(pipe, "someone/some-lora")
else:  # an SD 1.x checkpoint (its text encoder's names) whose configuration is not in the empty cache
    save_file({"cond_stage_model.transformer.text_model.x": torch.zeros(1)}, sys.argv[2])
    call = lambda: MultiDiffusion.from_pretrained(sys.argv[2], device="cpu")
start = time.monotonic()
try:
    call()
    error = None
except ValueError as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"elapsed": time.monotonic() - start, "error": error}))
"""


@pytest.mark.parametrize("what", ["lora", "single-file"])
def test_hub_look_ups_give_up_within_the_timeout(silent_hub, tmp_path, what):  # noqa: F811
    """Before: diffusers' LoRA weight-name guess (model_info) and the single-file configuration's
    download (snapshot_download) asked the hub with no time limit and hung on a silent one."""
    url, accepted = silent_hub
    env = online_env(url, tmp_path / "hf-home")
    args = [sys.executable, "-c", _ON_A_SILENT_HUB, what, str(tmp_path / "model.safetensors")]
    try:
        run = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: still waiting for the silent hub after 120 s")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert accepted, "the hub was never asked"
    message = result["error"]
    assert message is not None and message.startswith("ModelNotFoundError: ") and "\n" not in message
    assert f"{url} did not answer within 2 s" in message
    expected = "lora: 'someone/some-lora'" if what == "lora" else "building it needs the configuration of"
    assert expected in message
    assert result["elapsed"] < 2 + 5


# -- pickles torch's safe loader refuses inside diffusers: one line naming the field ------------------


def _hostile_pickle(path):
    """A pickle that holds more than tensors (torch.load(weights_only=True) refuses its datetime)."""
    import datetime

    import torch

    torch.save({"when": datetime.datetime(2020, 1, 1)}, path)
    return path


def test_a_pickle_lora_refused_inside_diffusers_is_one_line(tmp_path):
    """Before: OSError: Unable to load weights from checkpoint file for '...' at '...' (the path twice)."""
    from devtools.components import tiny_sd_pipeline
    from multidiffusion.models.lora import load_lora

    with pytest.raises(ValueError, match=r"^lora: evil\.bin could not be read as weights: .*use a \.safetensors"):
        load_lora(tiny_sd_pipeline(sample_size=16), str(_hostile_pickle(tmp_path / "evil.bin")))


def test_a_pickle_controlnet_refused_inside_diffusers_is_one_line(sd16, tmp_path):
    from diffusers import ControlNetModel

    from multidiffusion.models.controlnet import load_controlnet

    folder = tmp_path / "cn"
    ControlNetModel.from_unet(sd16.unet).save_config(folder)
    _hostile_pickle(folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"^controlnet: diffusion_pytorch_model\.bin could not be read as weights"):
        load_controlnet(str(folder), allow_pickle=True)
    with pytest.raises(ValueError, match=r"^controlnet: evil\.bin could not be read as weights"):
        load_controlnet(str(_hostile_pickle(tmp_path / "evil.bin")), allow_pickle=True)
