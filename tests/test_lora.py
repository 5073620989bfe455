"""LoRAs: loading through MultiDiffusion, and one clear error for a LoRA of another model family."""

import pytest
import torch

from devtools.components import tiny_sd_pipeline, tiny_sdxl_pipeline
from multidiffusion import MultiDiffusion

from .conftest import noise


def _sd_lora():
    """A random LoRA for the tiny SD UNet, as diffusers state dict (what load_lora_weights takes)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = tiny_sd_pipeline(sample_size=16).unet
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    config.init_lora_weights = False  # random, so the LoRA changes the output
    torch.manual_seed(0)
    unet.add_adapter(config)
    return {"unet." + k: v for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)).items()}


def test_lora_without_peft_is_one_clear_error(monkeypatch):
    import multidiffusion.models.lora

    monkeypatch.setattr(multidiffusion.models.lora, "_peft_backend", lambda: False)
    md = MultiDiffusion(tiny_sd_pipeline(sample_size=16))
    with pytest.raises(ValueError, match="loading LoRAs needs the peft package: pip install peft"):
        md.load_lora({})


def test_lora_of_the_same_family_applies():
    pytest.importorskip("peft")
    md = MultiDiffusion(tiny_sd_pipeline(sample_size=16))
    md.set_progress_bar_config(disable=True)
    latents = noise((1, 4, 16, 16))
    kwargs = dict(height=128, width=128, num_inference_steps=1, output_type="latent")
    before = md.panorama("x", latents=latents.clone(), **kwargs).images
    assert md.load_lora(_sd_lora(), adapter_name="style") == "style"
    after = md.panorama("x", latents=latents.clone(), **kwargs).images
    assert not torch.allclose(before, after)
    with pytest.raises(ValueError, match="adapter_name 'style' is already loaded"):
        md.load_lora(_sd_lora(), adapter_name="style")


def test_sd_lora_on_sdxl_is_one_clear_error():
    pytest.importorskip("peft")
    md = MultiDiffusion(tiny_sdxl_pipeline(sample_size=16))
    with pytest.raises(ValueError) as info:
        md.load_lora(_sd_lora())
    message = str(info.value)
    assert message.startswith("the LoRA state dict does not fit this SDXL model")
    assert "its layers take inputs 32 wide where the model's take 80" in message  # cross-attention widths
    assert "\n" not in message
    assert md.pipe.get_list_adapters() == {} or not any(md.pipe.get_list_adapters().values())


def test_lora_matching_no_layer_is_refused():
    pytest.importorskip("peft")
    md = MultiDiffusion(tiny_sd_pipeline(sample_size=16))
    lora = {k.replace("unet.", "unet.nonexistent_block."): v for k, v in _sd_lora().items()}
    with pytest.raises(ValueError, match=r"does not fit this SD 1\.x/2\.x model|has no layer that matches"):
        md.load_lora(lora)
