"""Qwen-Image ControlNet (``QwenImageControlNetModel``) through the ControlNet conditioning: at one view
equal to diffusers' QwenImageControlNetPipeline (max abs diff <= 1e-4) on tiny random components
(``devtools.qwen_components``); each view's ControlNet gets the canvas's control latents cropped at
its place; several nets sum their hints; folders load by class; ControlNets of another family are
refused in one line.

The pipeline encodes the control image with a *sample* of the VAE's posterior (from the generator);
ours takes its mean. The VAE here has a nil posterior spread (log-variance at diffusers' clamp, std
~3e-7), so the comparison is of everything else.
"""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, MultiControlNetModel, QwenImageControlNetModel, QwenImageControlNetPipeline

from devtools.dit_components import tiny_flux_controlnet, tiny_flux_pipeline
from devtools.qwen_components import tiny_qwenimage_controlnet, tiny_qwenimage_edit_pipeline, tiny_qwenimage_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.conditionings.controlnet_run import control_crop
from multidiffusion.engine.views import grid_views
from multidiffusion.models.flux import pack_latents
from multidiffusion.vae.codec import encode_images

from .test_dit_controlnet import _control_image
from .test_qwenimage import TEXT, _latents, _packed, _unpacked

STEPS = 3
H = W = 16  # latent pixels: 128 px, the tiny model's native window


@pytest.fixture(scope="module")
def qwen():
    """Two transformer blocks, so a one-block ControlNet's hint is added after both (k = 2), and a
    VAE whose posterior has no spread (a sample is the mean)."""
    pipe = tiny_qwenimage_pipeline(seed=2, layers=2)
    conv = pipe.vae.quant_conv
    half = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[half:] = 0
        conv.bias[half:] = -30
    return pipe


@pytest.fixture(scope="module")
def net(qwen):
    return tiny_qwenimage_controlnet(qwen.transformer, seed=3)


def _md(pipe, **options):
    md = MultiDiffusion(pipe, max_sequence_length=TEXT, **options)
    md.set_progress_bar_config(disable=True)
    return md


class ControlSpy:
    """Records the packed control tokens (``controlnet_cond``) of each call of the net."""

    def __init__(self, net):
        self.seen = []
        self.handle = net.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.seen.append(kwargs["controlnet_cond"].clone())

    def close(self):
        self.handle.remove()


CASES = {
    "plain": dict(true_cfg_scale=1.0),
    "guided": dict(true_cfg_scale=4.0, negative_prompt="blurry"),
    "deep": dict(true_cfg_scale=4.0, negative_prompt="blurry"),  # a two-block net: one hint per block
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_view_equals_the_controlnet_pipeline(qwen, net, case):
    """Same latents and control image: our single view is the pipeline's image step for step, without
    guidance, with true CFG (the net runs on the conditional rows only, its hints serve both
    branches), and for a net of as many blocks as the transformer."""
    if case == "deep":
        net = tiny_qwenimage_controlnet(qwen.transformer, seed=4, layers=2)
    reference = QwenImageControlNetPipeline(**qwen.components, controlnet=net)
    reference.set_progress_bar_config(disable=True)
    image, x = _control_image(seed=1), _latents(1)
    kwargs = dict(CASES[case])
    expected = reference(
        "a red ball",
        control_image=image,
        height=H * 8,
        width=W * 8,
        latents=_packed(x),
        num_inference_steps=STEPS,
        controlnet_conditioning_scale=0.8,
        output_type="latent",
        max_sequence_length=TEXT,
        **kwargs,
    ).images
    expected = _unpacked(expected)
    kwargs["guidance_scale"] = kwargs.pop("true_cfg_scale")
    md = _md(reference) if case == "plain" else _md(qwen, controlnet=net)  # wrapped, or given
    common = dict(height=H * 8, width=W * 8, num_inference_steps=STEPS, output_type="latent", **kwargs)
    got = md.panorama("a red ball", latents=x, control_image=image, controlnet_conditioning_scale=0.8, **common)
    diff = (got.images - expected).abs().max().item()
    print(f"{case}: max|diff| {diff:.2e}, outputs up to {expected.abs().max():.2f}")
    assert diff <= 1e-4, diff
    assert got.stats.controlnet_calls == STEPS  # the conditional rows only, once per step
    plain = _md(qwen).panorama("a red ball", latents=x, **common)
    assert (plain.images - got.images).abs().max() > 1e-3  # the ControlNet mattered


def _canvas_latents(pipe, image):
    """The control image as the pipeline encodes it: [-1, 1], (z - mean) / std."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    md = _md(pipe)
    return encode_images(md.adapter.vae, 2 * pixels - 1, latent_format=md.adapter.latent_format)


@pytest.mark.parametrize("positions", ["view", "canvas"])
def test_a_2x_panorama_gives_each_view_its_crop_of_the_control_latents(qwen, net, positions):
    """A 128 x 256 px panorama of 16-latent windows, stride 8: a finite image of the canvas's size,
    and the ControlNet of each view is given the canvas's control latents cropped at the view's
    latent offset, packed (to float error: the encode is run twice). With canvas positions the net's
    rotary positions are moved for the call and put back after it."""
    md = _md(qwen, controlnet=net, positions=positions)
    image = _control_image(width=2 * W * 8, seed=5)
    spy, rotary = ControlSpy(net), []
    hook = net.pos_embed.register_forward_hook(lambda module, args, out: rotary.append(out[0].clone()))
    try:
        out = md.panorama(
            "a lake",
            height=H * 8,
            width=2 * W * 8,
            window=H,
            stride=W // 2,
            view_batch_size=1,
            control_image=image,
            num_inference_steps=2,  # Qwen-Image's scheduler needs 2
            guidance_scale=1.0,
            output_type="np",
        )
    finally:
        spy.close()
        hook.remove()
    assert out.images.shape == (1, H * 8, 2 * W * 8, 3) and np.isfinite(out.images).all()
    assert len(rotary) == 6 and torch.equal(rotary[0], rotary[1]) == (positions == "view")  # the net's, moved
    latents = _canvas_latents(qwen, image)
    views = grid_views(H, 2 * W, (H, W), (W // 2, W // 2))
    assert len(spy.seen) == 2 * len(views) == 6
    for view, seen in zip(views * 2, spy.seen):
        assert (seen - pack_latents(control_crop(latents, view, 1))).abs().max() <= 1e-4
    assert "forward" not in vars(net.pos_embed) and "forward" not in vars(qwen.transformer.pos_embed)


def test_several_controlnets_sum_their_hints_and_load_by_class(qwen, tmp_path):
    """Two copies of a net at scale s/2 each give the one net at s (hints are scale-linear and summed
    per block); a folder loads as a QwenImageControlNetModel, two as a MultiControlNetModel."""
    folder = tmp_path / "qwen-controlnet"
    tiny_qwenimage_controlnet(qwen.transformer, seed=11).save_pretrained(folder)
    image, x = _control_image(seed=11), _latents(11)
    kwargs = dict(height=H * 8, width=W * 8, latents=x, num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    one_md = _md(qwen, controlnet=str(folder))
    assert type(one_md.adapter.controlnet) is QwenImageControlNetModel
    one = one_md.panorama("a lake", control_image=image, **kwargs)
    two = _md(qwen, controlnet=[str(folder), str(folder)])
    assert type(two.adapter.controlnet) is MultiControlNetModel
    assert [type(n).__name__ for n in two.adapter.controlnets] == ["QwenImageControlNetModel"] * 2
    halves = two.panorama("a lake", control_image=[image, image], controlnet_conditioning_scale=0.5, **kwargs)
    assert (halves.images - one.images).abs().max() <= 1e-4
    assert halves.stats.controlnet_calls == 2 * one.stats.controlnet_calls


def test_controlnets_of_another_family_are_refused_in_one_line(qwen, net, sd16):
    flux = tiny_flux_pipeline(sample_size=16)
    sd_net = ControlNetModel.from_unet(sd16.unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
    cases = [
        (qwen, sd_net, "ControlNetModel is a ControlNet for SD 1.x/2.x or SDXL models, but the model loaded is Qwen"),
        (qwen, tiny_flux_controlnet(flux.transformer), "FluxControlNetModel is a ControlNet for FLUX.1 models, but "),
        (flux, net, "QwenImageControlNetModel is a ControlNet for Qwen-Image models, but the model loaded is FLUX.1"),
        (sd16, net, "QwenImageControlNetModel is a ControlNet for Qwen-Image models, but the model loaded is SD 1"),
        (qwen, tiny_qwenimage_controlnet(qwen.transformer, num_attention_heads=4), r"another Qwen-Image model \(width"),
        (qwen, tiny_qwenimage_controlnet(qwen.transformer, extra_condition_channels=4), "4 extra condition channels"),
    ]
    for pipe, wrong, says in cases:
        with pytest.raises(ValueError, match=says) as error:
            MultiDiffusion(pipe, controlnet=wrong)
        assert "\n" not in str(error.value)
    md = _md(qwen, controlnet=net)
    with pytest.raises(ValueError, match="guess_mode: QWENIMAGE ControlNets have no guess mode"):
        md.panorama("a lake", height=H * 8, width=W * 8, control_image=_control_image(), guess_mode=True)


def test_an_edit_model_takes_a_controlnet():
    """Qwen-Image-Edit with a ControlNet (no diffusers pipeline has both): the net's hints cover the
    view's image tokens and are zero for the reference tokens after them (the view's crop and the
    whole image here); the edit is finite and follows the control image."""
    edit = tiny_qwenimage_edit_pipeline()
    md = _md(edit, controlnet=tiny_qwenimage_controlnet(edit.transformer, seed=13))
    md.adapter.reference_area = 128 * 128  # the whole-image reference at the tiny model's size
    image = _control_image(width=2 * W * 8, seed=14)
    x = _latents(14, w=2 * W)
    kwargs = dict(window=H, stride=W // 2, num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    kwargs.update(latents=x, whole_reference=True)
    one = md.edit(image, "make it red", control_image=_control_image(width=2 * W * 8, seed=15), **kwargs)
    other = md.edit(image, "make it red", control_image=_control_image(width=2 * W * 8, seed=16), **kwargs)
    assert one.images.shape == (1, 16, H, 2 * W) and torch.isfinite(one.images).all()
    assert (one.images - other.images).abs().max() > 1e-3
