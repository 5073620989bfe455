"""A Union ControlNet (ControlNet-Union SDXL: several control images, each with its mode, in one
model): equal to diffusers' StableDiffusionXLControlNetUnionPipeline at one view, each image cropped
per view, and its settings checked."""

import numpy as np
import pytest
import torch
from diffusers import ControlNetUnionModel, StableDiffusionXLControlNetUnionPipeline

from devtools.components import tiny_sdxl_pipeline
from multidiffusion import MultiDiffusion

from .conftest import noise
from .test_controlnet import ControlSpy, _control_image


@pytest.fixture(scope="module")
def union():
    xl = tiny_sdxl_pipeline(sample_size=16)
    torch.manual_seed(7)
    made = ControlNetUnionModel.from_unet(xl.unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
    width = xl.unet.config.block_out_channels[0]  # from_unet keeps SDXL's 320-wide mode transformer
    config = {k: v for k, v in made.config.items() if k != "_use_default_values"}
    net = ControlNetUnionModel.from_config({**config, "num_trans_channel": width, "num_proj_channel": width})
    with torch.no_grad():  # from_unet zero-initialises the outputs: give them weights so they matter
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    components = {k: v for k, v in xl.components.items() if k not in ("image_encoder", "feature_extractor")}
    pipe = StableDiffusionXLControlNetUnionPipeline(**components, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    return pipe, md


@pytest.mark.parametrize(
    "modes, ranges", [([3], (0.0, 1.0)), ([1, 3], (0.0, 1.0)), ([3], (0.0, 0.5)), ([1, 3], ([0.0, 0.0], [1.0, 0.5]))]
)
def test_one_view_equals_diffusers_union_pipeline(union, modes, ranges):
    pipe, md = union
    images = [_control_image(seed=10 + m) for m in modes]
    latents = noise((1, 4, 16, 16), seed=6)
    kwargs = dict(
        num_inference_steps=3,
        guidance_scale=5.0,
        output_type="latent",
        height=128,
        width=128,
        control_guidance_start=ranges[0],
        control_guidance_end=ranges[1],
    )
    expected = pipe("a lake", control_image=images, control_mode=modes, latents=latents.clone(), **kwargs).images
    got = md.panorama("a lake", control_image=images, control_mode=modes, latents=latents.clone(), **kwargs)
    assert (got.images - expected).abs().max() <= 1e-4
    assert got.parameters["control_mode"] == (modes if len(modes) > 1 else modes[0])
    if len(modes) > 1 and ranges == (0.0, 1.0):
        no_control = {k: v for k, v in kwargs.items() if "control" not in k}
        plain = md.panorama("a lake", latents=latents.clone(), **no_control)
        assert (got.images - plain.images).abs().max() > 1e-3  # the ControlNet acted


def test_each_view_gets_the_crop_of_every_image(union):
    _, md = union
    images = [_control_image(width=256, height=128, seed=s) for s in (1, 2)]
    spy = ControlSpy(md.adapter.controlnet)
    try:
        md.panorama("a lake", height=128, width=256, window=16, stride=16, num_inference_steps=1, guidance_scale=1.0,
                    control_image=images, control_mode=[0, 5], output_type="latent", view_batch_size=1)  # fmt: skip
    finally:
        spy.close()
    assert len(spy.images) == 2  # two windows, one call each
    for call, left in zip(spy.images, (0, 128)):
        assert isinstance(call, list) and len(call) == 2
        for crop, image in zip(call, images):
            pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
            assert torch.allclose(crop[0], pixels[:, :, left : left + 128], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"control_image": "2"}, r"control_mode: a Union ControlNet needs a mode for each control image \(0 to 5\)"),
        ({"control_image": "2", "control_mode": [1]}, r"control_mode must be an integer or a list of 2 integers"),
        ({"control_image": "1", "control_mode": 9}, r"control_mode must be from 0 to 5 for this Union ControlNet"),
        ({"control_mode": 1}, r"control_mode applies to control images"),
    ],
)
def test_union_settings_are_checked(union, kwargs, message):
    _, md = union
    count = kwargs.pop("control_image", None)
    if count is not None:
        kwargs["control_image"] = [_control_image(seed=i) for i in range(int(count))]
        if count == "1":
            kwargs["control_image"] = kwargs["control_image"][0]
    with pytest.raises(ValueError, match=message):
        md.panorama("a lake", height=128, width=128, num_inference_steps=1, output_type="latent", **kwargs)


def test_a_plain_controlnet_takes_no_mode(sd16):
    from .test_controlnet import _controlnet

    md = MultiDiffusion(sd16, controlnet=_controlnet(sd16.unet, 1))
    with pytest.raises(ValueError, match="control_mode is a Union ControlNet's setting"):
        md.panorama("a lake", height=128, width=128, num_inference_steps=1, control_image=_control_image(),
                    control_mode=0, output_type="latent")  # fmt: skip
