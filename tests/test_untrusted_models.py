"""Issue 25, models and tasks: inputs that ran silently wrong (an LCM UNet, an all-black inpaint mask),
hub look-ups that waited forever (a LoRA repo id, a single-file checkpoint's configuration) and pickles
refused inside diffusers with its own message."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from multidiffusion import MultiDiffusion


def _lcm_unet(like):
    """``like``'s architecture with a guidance embedding (``time_cond_proj_dim``), as LCM models have."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in like.config.items() if not k.startswith("_")}
    return UNet2DConditionModel.from_config({**config, "time_cond_proj_dim": 8}).eval()


def test_an_lcm_unet_is_refused_by_name(sd16, tmp_path):
    """Before: the UNet's guidance embedding was never fed and the model ran as plain CFG (a wrong image)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**{**sd16.components, "unet": _lcm_unet(sd16.unet)})
    with pytest.raises(ValueError, match=r"time_cond_proj_dim=8.*latent consistency \(LCM\) model.*not supported yet"):
        MultiDiffusion(pipe)
    pipe.save_pretrained(tmp_path / "lcm")
    with pytest.raises(ValueError, match=r"LCM\) model.*not supported yet") as info:
        MultiDiffusion.from_pretrained(tmp_path / "lcm", device="cpu")
    assert "\n" not in str(info.value)


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
