"""A LoRA set per region: the region's jobs run with its LoRAs, in batches of their own, and the
pipeline's adapters are as they were after the call."""

import pytest
import torch

from devtools.components import tiny_sd_pipeline
from multidiffusion import MultiDiffusion

from .conftest import noise

peft = pytest.importorskip("peft")


def _lora(seed):
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = tiny_sd_pipeline(sample_size=16).unet
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    config.init_lora_weights = False
    torch.manual_seed(seed)
    unet.add_adapter(config)
    return {"unet." + k: v for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)).items()}


@pytest.fixture(scope="module")
def md():
    md = MultiDiffusion(tiny_sd_pipeline(sample_size=16))
    md.set_progress_bar_config(disable=True)
    md.load_lora(_lora(1), adapter_name="a")
    md.load_lora(_lora(2), adapter_name="b")
    md.pipe.set_adapters(["a", "b"], [0.0, 0.0])  # the pipeline's own state: both loaded, neither acting
    return md


KW = dict(height=128, width=128, num_inference_steps=2, bootstrap_steps=0, output_type="latent")


def test_a_region_covering_the_canvas_equals_its_loras_set_on_the_pipeline(md):
    latents = noise((1, 4, 16, 16), seed=1)
    region = {"prompt": "a red house", "box": (0, 0, 128, 128)}
    ours = md.regions(regions=[{**region, "loras": {"a": 0.8}}], latents=latents.clone(), **KW).images
    md.pipe.set_adapters(["a", "b"], [0.8, 0.0])
    try:
        expected = md.regions(regions=[region], latents=latents.clone(), **KW).images
    finally:
        md.pipe.set_adapters(["a", "b"], [0.0, 0.0])
    plain = md.regions(regions=[region], latents=latents.clone(), **KW).images
    assert (ours - expected).abs().max() <= 1e-5
    assert (ours - plain).abs().max() > 1e-3  # the LoRA acted


def test_two_regions_switch_per_batch_and_the_pipeline_is_restored(md):
    latents = noise((1, 4, 16, 32), seed=2)
    kwargs = {**KW, "width": 256, "window": 16, "stride": 8, "background": "a lake"}
    before = md.regions(regions=[{"prompt": "x", "box": (0, 0, 128, 128)}], latents=latents.clone(), **kwargs)
    calls = []
    hook = md.adapter.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        out = md.regions(
            regions=[
                {"prompt": "x", "box": (0, 0, 128, 128), "loras": {"a": 1.0}},
                {"prompt": "y", "box": (128, 0, 256, 128), "loras": {"b": 0.5}},
            ],
            latents=latents.clone(),
            **kwargs,
        )
    finally:
        hook.remove()
    # 3 windows; the regions cover the canvas, so no background jobs: x in windows 0-1, y in 1-2. Per
    # step one UNet call per LoRA set (2 jobs x 2 guidance rows each), never one per view
    assert calls == [4, 4] * 2
    after = md.regions(regions=[{"prompt": "x", "box": (0, 0, 128, 128)}], latents=latents.clone(), **kwargs)
    assert torch.equal(before.images, after.images)  # the adapters are back as they were
    assert out.parameters["regions"][0]["loras"] == {"a": 1.0}
    assert out.stats.lora_switches == 4  # a, b, a, b: one per batch
    assert out.stats.lora_seconds > 0


def test_a_lora_that_is_not_loaded_is_named(md):
    with pytest.raises(ValueError, match=r"regions\[0\]\.loras: LoRA 'zzz' is not loaded; loaded: a, b"):
        md.regions(regions=[{"prompt": "x", "box": (0, 0, 64, 64), "loras": {"zzz": 1.0}}], background="y", **KW)


@pytest.mark.parametrize(
    ("loras", "message"),
    [({"a": 20}, r"loras\['a'\] must be a weight from -10 to 10"), (["a"], "loras must be a table")],
)
def test_bad_lora_sets_are_named(md, loras, message):
    with pytest.raises(ValueError, match=message):
        md.regions(regions=[{"prompt": "x", "box": (0, 0, 64, 64), "loras": loras}], background="y", **KW)
