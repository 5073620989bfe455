"""Diffusion transformers at one view equal their diffusers pipelines (max abs diff <= 1e-4), on
tiny random FLUX.1 and SD 3 components built in-process (tokenizers included, nothing downloaded)."""

import numpy as np
import pytest
import torch
from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline
from PIL import Image

from devtools.dit_components import tiny_flux_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.models.flow import calculate_shift
from multidiffusion.models.flux import pack_latents, unpack_latents

STEPS = 3
H = W = 16  # latent pixels: 128 px, the tiny models' native window


def _latents(seed=0, channels=16, h=H, w=W):
    return torch.randn((1, channels, h, w), generator=torch.Generator().manual_seed(seed))


def _md(pipe, **options):
    md = MultiDiffusion(pipe, max_sequence_length=16, **options)
    md.set_progress_bar_config(disable=True)
    return md


def _flux_reference(pipe, latents, **kwargs):
    out = pipe(
        height=H * 8,
        width=W * 8,
        num_inference_steps=STEPS,
        latents=pack_latents(latents),
        output_type="latent",
        max_sequence_length=16,
        **kwargs,
    ).images
    return unpack_latents(out, H, W)


def test_flux_dev_one_view_equals_flux_pipeline(flux16):
    """Distilled guidance: no CFG (one evaluation per view and step), guidance_scale embedded."""
    x = _latents()
    expected = _flux_reference(flux16, x, prompt="a red ball", guidance_scale=3.5)
    got = _md(flux16).panorama(
        "a red ball",
        height=H * 8,
        width=W * 8,
        num_inference_steps=STEPS,
        guidance_scale=3.5,
        latents=x,
        output_type="latent",
    )
    assert (got.images - expected).abs().max() <= 1e-4
    assert got.stats.evaluations == STEPS  # no unconditional branch
    assert got.parameters["positions"] == "view" and got.parameters["true_cfg_scale"] == 1.0


def test_flux_true_cfg_equals_flux_pipeline(flux16):
    x = _latents(1)
    kwargs = dict(guidance_scale=3.5, negative_prompt="blurry")
    expected = _flux_reference(flux16, x, prompt="a red ball", true_cfg_scale=4.0, **kwargs)
    got = _md(flux16, true_cfg_scale=4.0).panorama(
        "a red ball", height=H * 8, width=W * 8, num_inference_steps=STEPS, latents=x, output_type="latent", **kwargs
    )
    assert (got.images - expected).abs().max() <= 1e-4
    assert got.stats.evaluations == 2 * STEPS  # both branches, in one call per step
    assert got.stats.model_calls == STEPS


def test_flux_schnell_one_view_equals_flux_pipeline():
    """No guidance embedding (schnell): guidance_scale is ignored, as FluxPipeline ignores it."""
    schnell = tiny_flux_pipeline(sample_size=16, guidance_embeds=False, seed=1)
    x = _latents(2)
    expected = _flux_reference(schnell, x, prompt="a lake", guidance_scale=0.0)
    got = _md(schnell).panorama(
        "a lake",
        height=H * 8,
        width=W * 8,
        num_inference_steps=STEPS,
        guidance_scale=0.0,
        latents=x,
        output_type="latent",
    )
    assert (got.images - expected).abs().max() <= 1e-4


def test_sd3_one_view_equals_sd3_pipeline_with_a_generator(sd3_16):
    """Standard CFG (both branches batched); the noise drawn from the generator in diffusers' order."""
    kwargs = dict(negative_prompt="blurry", num_inference_steps=STEPS, guidance_scale=5.0, output_type="latent")
    expected = sd3_16(
        "a red ball",
        height=H * 8,
        width=W * 8,
        generator=torch.Generator().manual_seed(7),
        max_sequence_length=16,
        **kwargs,
    ).images
    got = _md(sd3_16).panorama(
        "a red ball", height=H * 8, width=W * 8, generator=torch.Generator().manual_seed(7), **kwargs
    )
    assert (got.images - expected).abs().max() <= 1e-4


def test_sd3_skip_layer_guidance_equals_the_pipeline(sd3_16):
    """SD 3.5's skip-layer guidance: at steps start·n < i < stop·n a third pass of the conditional rows
    with block 0 skipped, s_l (ε_c − ε_skip) added; equal at one view, and in a panorama it costs one
    more (half-size) pass per model call in those steps."""
    slg = dict(skip_layer_guidance_scale=2.0, skip_layer_guidance_start=0.2, skip_layer_guidance_stop=0.7)
    kwargs = dict(negative_prompt="blurry", num_inference_steps=5, guidance_scale=5.0, output_type="latent")
    x = _latents(8)
    expected = sd3_16(
        "a red ball",
        height=H * 8,
        width=W * 8,
        latents=x,
        max_sequence_length=16,
        skip_guidance_layers=[0],
        **slg,
        **kwargs,
    ).images
    md = _md(sd3_16, skip_guidance_layers=[0], **slg)
    got = md.panorama("a red ball", height=H * 8, width=W * 8, latents=x, **kwargs)
    assert (got.images - expected).abs().max() <= 1e-4
    plain = _md(sd3_16).panorama("a red ball", height=H * 8, width=W * 8, latents=x, **kwargs)
    assert (plain.images - got.images).abs().max() > 1e-3  # it acts
    assert got.stats.model_calls - plain.stats.model_calls == 2  # steps 2 and 3 of 5 (1 < i < 3.5)
    assert got.parameters["skip_guidance_layers"] == [0] and got.parameters["skip_layer_guidance_scale"] == 2.0
    wide = md.panorama("a red ball", height=H * 8, width=W * 8 * 2, window=16, stride=8, view_batch_size=3, **kwargs)
    wide_plain = _md(sd3_16).panorama(
        "a red ball", height=H * 8, width=W * 8 * 2, window=16, stride=8, view_batch_size=3, **kwargs
    )
    assert wide.stats.evaluations - wide_plain.stats.evaluations == 2 * 3  # 3 views, their conditional rows, 2 steps
    for options, says in [
        (dict(skip_guidance_layers=[1]), "skip_guidance_layers: each must be a transformer block index from 0 to 0"),
        (dict(skip_guidance_layers=[0], skip_layer_guidance_start=0.5, skip_layer_guidance_stop=0.2), "0 ≤ start"),
        (dict(skip_guidance_layers=[0], skip_layer_guidance_scale=-1), "skip_layer_guidance_scale must be"),
    ]:
        with pytest.raises(ValueError, match=says):
            _md(sd3_16, **options)


def test_decoded_images_equal_the_pipelines(flux16):
    """The VAE's shift_factor: latents = (z − shift) · scale, decoded back as the pipeline does."""
    x = _latents(3)
    expected = flux16(
        "a red ball",
        height=H * 8,
        width=W * 8,
        num_inference_steps=2,
        latents=pack_latents(x),
        output_type="np",
        max_sequence_length=16,
    ).images
    got = (
        _md(flux16)
        .panorama(
            "a red ball",
            height=H * 8,
            width=W * 8,
            num_inference_steps=2,
            guidance_scale=3.5,
            latents=x,
            output_type="np",
        )
        .images
    )
    assert np.abs(got - expected).max() <= 1e-4


def _picture(seed=0, size=128):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_img2img_one_view_equals_diffusers(family, flux16, sd3_16):
    """The image-to-image start goes through scale_noise (flow matching), drawn in diffusers' order."""
    pipe = flux16 if family == "flux" else sd3_16
    cls = FluxImg2ImgPipeline if family == "flux" else StableDiffusion3Img2ImgPipeline
    reference = cls(**pipe.components)
    reference.set_progress_bar_config(disable=True)
    image = _picture(4)
    kwargs = dict(strength=0.6, num_inference_steps=5, guidance_scale=4.0, output_type="latent")
    expected = reference(
        prompt="a lake",
        image=image,
        height=H * 8,
        width=W * 8,
        generator=torch.Generator().manual_seed(5),
        max_sequence_length=16,
        **kwargs,
    ).images
    if family == "flux":
        expected = unpack_latents(expected, H, W)
    got = _md(pipe).img2img(image, "a lake", generator=torch.Generator().manual_seed(5), **kwargs).images
    assert (got - expected).abs().max() <= 1e-4


def test_schedule_shift_comes_from_the_window_not_the_canvas(flux16):
    """μ of a 16 x 64 latent panorama with 16-latent windows is the 16 x 16 image's (64 tokens)."""
    md = _md(flux16)
    seen = []
    md.panorama(
        "a lake",
        height=H * 8,
        width=4 * W * 8,
        num_inference_steps=STEPS,
        window=16,
        stride=8,
        output_type="latent",
        callback_on_step_end=lambda pipe, i, t, kw: seen.append(float(t)),
    )
    _flux_reference(flux16, _latents(), prompt="a lake")  # FluxPipeline at the window's size
    assert seen == pytest.approx(flux16.scheduler.timesteps.tolist(), abs=1e-4)
    canvas = type(flux16.scheduler).from_config(flux16.scheduler.config)
    md.adapter.set_timesteps(canvas, STEPS, "cpu", (H, 4 * W))  # what the whole canvas would get
    assert canvas.timesteps[1] > seen[1] + 1  # a stronger shift: more time at high noise
    assert calculate_shift(64) < calculate_shift(256)
