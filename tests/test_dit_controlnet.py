"""ControlNets for the diffusion transformers: at one view equal to diffusers' FluxControlNetPipeline
and StableDiffusion3ControlNetPipeline (max abs diff <= 1e-4) on tiny random components; each view's
ControlNet gets the canvas's control latents cropped at its place (wrap-around included); ControlNets
of another family are refused in one line.

The pipelines encode the control image with a *sample* of the VAE's posterior (FLUX from the
generator, SD 3 from torch's global one, a draw per guidance branch); ours takes its mean (see
``multidiffusion.models.flow``). The VAEs here have a nil posterior spread (log-variance at its
clamp, std ~3e-7), so the comparison is of everything else.
"""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, FluxControlNetPipeline, StableDiffusion3ControlNetPipeline
from PIL import Image

from devtools.dit_components import tiny_flux_controlnet, tiny_flux_pipeline, tiny_sd3_controlnet, tiny_sd3_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.conditionings.controlnet_run import control_crop
from multidiffusion.engine.views import grid_views
from multidiffusion.models.flux import pack_latents, unpack_latents
from multidiffusion.vae.codec import encode_images

STEPS = 3
H = W = 16  # latent pixels: 128 px, the tiny models' native window


def _no_spread(pipe):
    """The VAE's posterior log-variance at diffusers' clamp (-30): a sample is the mean."""
    conv = pipe.vae.encoder.conv_out
    half = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[half:] = 0
        conv.bias[half:] = -30
    return pipe


@pytest.fixture(scope="module")
def flux():
    return _no_spread(tiny_flux_pipeline(sample_size=16, seed=3))


@pytest.fixture(scope="module")
def sd3():
    """Two joint blocks: SD 3's last block is context-pre-only and takes no ControlNet residual, so
    with one block a ControlNet would change nothing."""
    return _no_spread(tiny_sd3_pipeline(sample_size=16, seed=3, layers=2))


def _control_image(width=128, height=128, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _latents(seed=0, h=H, w=W):
    return torch.randn((1, 16, h, w), generator=torch.Generator().manual_seed(seed))


def _md(pipe, **options):
    md = MultiDiffusion(pipe, max_sequence_length=16, **options)
    md.set_progress_bar_config(disable=True)
    return md


def _flux_expected(pipe, images, x, **kwargs):
    """FluxControlNetPipeline's latents (unpacked) from the canvas noise ``x``."""
    out = pipe(
        "a red ball",
        control_image=images,
        height=H * 8,
        width=W * 8,
        latents=pack_latents(x),
        max_sequence_length=16,
        **kwargs,
    ).images
    return unpack_latents(out, H, W)


def _pixels(image):
    return torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]


CASES = {
    "one": dict(controlnet_conditioning_scale=0.8),
    "range": dict(controlnet_conditioning_scale=1.2, control_guidance_start=0.25, control_guidance_end=0.75),
    "two": dict(controlnet_conditioning_scale=[0.8, 0.5]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_flux_one_view_equals_flux_controlnet_pipeline(flux, case):
    """A FluxControlNetPipeline wrapped as it is (its ControlNet, or FluxMultiControlNetModel of two)."""
    nets = [tiny_flux_controlnet(flux.transformer, seed=1), tiny_flux_controlnet(flux.transformer, seed=2)]
    two = case == "two"
    pipe = FluxControlNetPipeline(**flux.components, controlnet=nets if two else nets[0])
    pipe.set_progress_bar_config(disable=True)
    images = [_control_image(seed=1), _control_image(seed=2)] if two else _control_image(seed=1)
    steps = 4 if case == "range" else STEPS
    x = _latents(1)
    common = dict(num_inference_steps=steps, guidance_scale=3.5, output_type="latent", **CASES[case])
    expected = _flux_expected(pipe, images, x, **common)
    md = _md(pipe)
    got = md.panorama("a red ball", height=H * 8, width=W * 8, control_image=images, latents=x, **common)
    assert (got.images - expected).abs().max() <= 1e-4
    assert got.stats.controlnet_calls == (2 if case == "range" else (2 if two else 1) * steps)  # skipped outside


@pytest.mark.parametrize("two", [False, True], ids=["one-mode", "two-modes"])
def test_flux_controlnet_union_equals_the_pipeline(flux, two):
    """A FLUX ControlNet-Union (``num_mode``): the mode's embedding before the text tokens, one pass
    per control image and mode over the one model (FluxMultiControlNetModel of it), summed."""
    from diffusers import FluxMultiControlNetModel

    net = tiny_flux_controlnet(flux.transformer, seed=5, num_mode=4)
    pipe = FluxControlNetPipeline(**flux.components, controlnet=FluxMultiControlNetModel([net]) if two else net)
    pipe.set_progress_bar_config(disable=True)
    images = [_control_image(seed=5), _control_image(seed=6)] if two else _control_image(seed=5)
    options = dict(control_mode=[0, 3], controlnet_conditioning_scale=[0.8, 0.5]) if two else dict(control_mode=2)
    common = dict(num_inference_steps=STEPS, guidance_scale=3.5, output_type="latent", **options)
    x = _latents(5)
    # diffusers 0.42 sizes the per-image ranges by the models (1), not the images, and its zip then
    # drops the second image (its output equals the first image's alone); explicit ranges for both
    # make it run both, as ours does
    ranges = dict(control_guidance_start=[0.0, 0.0], control_guidance_end=[1.0, 1.0]) if two else {}
    expected = _flux_expected(pipe, images, x, **common, **ranges)
    md = _md(pipe)
    got = md.panorama("a red ball", height=H * 8, width=W * 8, control_image=images, latents=x, **common)
    assert (got.images - expected).abs().max() <= 1e-4
    assert got.stats.controlnet_calls == (2 if two else 1) * STEPS
    if not two:  # the mode matters
        other = md.panorama(
            "a red ball", height=H * 8, width=W * 8, control_image=images, latents=x, **{**common, "control_mode": 1}
        )
        assert (other.images - got.images).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"control_mode must be from 0 to 3 for this Union ControlNet, got 4"):
        md.panorama("a red ball", height=H * 8, width=W * 8, control_image=_control_image(), control_mode=4)
    with pytest.raises(ValueError, match=r"control_mode: a Union ControlNet needs a mode for each control image"):
        md.panorama("a red ball", height=H * 8, width=W * 8, control_image=_control_image())


def test_flux_true_cfg_controlnet_runs_on_the_positive_prompt_as_the_pipeline(flux):
    """With true CFG the pipeline runs the ControlNet once, on the positive prompt, for both branches."""
    net = tiny_flux_controlnet(flux.transformer, seed=4)
    pipe = FluxControlNetPipeline(**flux.components, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    image, x = _control_image(seed=4), _latents(4)
    common = dict(num_inference_steps=STEPS, guidance_scale=3.5, negative_prompt="blurry", output_type="latent")
    expected = _flux_expected(pipe, image, x, true_cfg_scale=3.0, **common)
    md = _md(pipe, true_cfg_scale=3.0)
    got = md.panorama("a red ball", height=H * 8, width=W * 8, control_image=image, latents=x, **common)
    assert (got.images - expected).abs().max() <= 1e-4
    assert got.stats.controlnet_calls == STEPS


def test_flux_xlabs_controlnet_takes_pixel_crops_as_the_pipeline(flux):
    """A ControlNet with an input_hint_block (XLabs') takes the control pixels in [-1, 1] and the
    transformer repeats its blocks: equal to the pipeline at one view, pixel crops per view."""
    net = tiny_flux_controlnet(flux.transformer, seed=8, conditioning_embedding_channels=16, patch_size=2)
    pipe = FluxControlNetPipeline(**flux.components, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    image, x = _control_image(seed=8), _latents(8)
    common = dict(
        num_inference_steps=STEPS, guidance_scale=3.5, controlnet_conditioning_scale=0.9, output_type="latent"
    )
    expected = _flux_expected(pipe, image, x, **common)
    got = _md(pipe).panorama("a red ball", height=H * 8, width=W * 8, control_image=image, latents=x, **common)
    assert (got.images - expected).abs().max() <= 1e-4
    spy = ControlSpy(net)
    try:
        _md(pipe).panorama("a lake", height=128, width=256, window=16, stride=8, control_image=_control_image(256),
                           num_inference_steps=1, view_batch_size=1, output_type="latent")  # fmt: skip
    finally:
        spy.close()
    pixels = 2 * _pixels(_control_image(256)) - 1
    assert [torch.equal(seen, pixels[..., 64 * i : 64 * i + 128]) for i, seen in enumerate(spy.seen)] == [True] * 3


def test_flux_canvas_positions_batch_the_controlnet_per_position(flux):
    """positions="canvas": the ControlNet, like the transformer, runs once per view position in a
    batch; a batch of every view equals one view per call."""
    md = _md(flux, positions="canvas", controlnet=tiny_flux_controlnet(flux.transformer, seed=9))
    common = dict(height=128, width=256, window=16, stride=8, num_inference_steps=2, output_type="latent")
    image, x = _control_image(256, seed=9), _latents(9, w=32)
    one = md.panorama("a lake", control_image=image, latents=x, view_batch_size=1, **common)
    batched = md.panorama("a lake", control_image=image, latents=x, view_batch_size=3, **common)
    assert (one.images - batched.images).abs().max() <= 1e-5


@pytest.mark.parametrize(("force_zeros", "two"), [(True, False), (False, False), (True, True)])
def test_sd3_one_view_equals_sd3_controlnet_pipeline(sd3, force_zeros, two):
    """InstantX-style (zero pooled projection, no VAE shift) and not; one and two ControlNets; CFG."""
    nets = [tiny_sd3_controlnet(sd3.transformer, seed=s, force_zeros_for_pooled_projection=force_zeros) for s in (1, 2)]
    pipe = StableDiffusion3ControlNetPipeline(**sd3.components, controlnet=nets if two else nets[0])
    pipe.set_progress_bar_config(disable=True)
    images = [_control_image(seed=5), _control_image(seed=6)] if two else _control_image(seed=5)
    scale = [0.7, 0.4] if two else 0.7
    x = _latents(5)
    common = dict(
        negative_prompt="blurry",
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        controlnet_conditioning_scale=scale,
        output_type="latent",
    )
    expected = pipe(
        "a red ball", control_image=images, height=H * 8, width=W * 8, latents=x, max_sequence_length=16, **common
    ).images
    md = _md(pipe)
    got = md.panorama("a red ball", height=H * 8, width=W * 8, control_image=images, latents=x, **common)
    assert (got.images - expected).abs().max() <= 1e-4
    unscaled = {**common, "controlnet_conditioning_scale": [0.0, 0.0] if two else 0.0}
    off = md.panorama("a red ball", height=H * 8, width=W * 8, control_image=images, latents=x, **unscaled)
    assert (off.images - got.images).abs().max() > 1e-3  # the ControlNet acts


class ControlSpy:
    """Records the control input (``controlnet_cond``) of each ControlNet call."""

    def __init__(self, net):
        self.seen = []
        self.handle = net.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.seen.append(kwargs["controlnet_cond"].clone())

    def close(self):
        self.handle.remove()


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_each_view_gets_the_control_latents_at_its_place(flux, sd3, family, circular):
    """A 128 x 384 px panorama of 16-latent windows, stride 12: the ControlNet of each view gets the
    canvas's control latents cropped at the view's latent offset (FLUX: packed into tokens), across
    the 360-degree seam too (to float error: the tiled encode is run twice; a shift by one latent
    changes the crop by ~0.1-1)."""
    pipe = flux if family == "flux" else sd3
    net = (tiny_flux_controlnet if family == "flux" else tiny_sd3_controlnet)(pipe.transformer, seed=7)
    md = _md(pipe, controlnet=net)
    image = _control_image(width=384, height=128, seed=7)
    spy = ControlSpy(net)
    try:
        md.panorama(
            "a lake",
            height=128,
            width=384,
            window=16,
            stride=12,
            circular=circular,
            view_batch_size=1,
            control_image=image,
            num_inference_steps=1,
            guidance_scale=1.0,
            output_type="latent",
        )
    finally:
        spy.close()
    latents = encode_images(pipe.vae, 2 * _pixels(image) - 1)  # (z - shift) * scale, tiled as the call
    if family == "sd3":  # InstantX-style by default: no shift
        latents = latents + pipe.vae.config.shift_factor * pipe.vae.config.scaling_factor
    views = grid_views(16, 48, (16, 16), (12, 12), circular=circular)
    assert len(spy.seen) == len(views)
    for view, seen in zip(views, spy.seen):
        expected = control_crop(latents, view, 1)
        assert (seen - (pack_latents(expected) if family == "flux" else expected)).abs().max() <= 1e-4
    if circular:  # a window across the seam sees the right edge's latents, then the left edge's
        view = next(v for v in views if v.left + v.width > 48)
        seen = spy.seen[views.index(view)]
        seen = unpack_latents(seen, 16, 16) if family == "flux" else seen
        cut = 48 - view.left
        assert (seen[..., :cut] - latents[..., -cut:]).abs().max() <= 1e-4
        assert (seen[..., cut:] - latents[..., : 16 - cut]).abs().max() <= 1e-4


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_an_upscale_conditions_each_view_on_its_resized_input(flux, sd3, family):
    """Tile ControlNet on the transformers: with no control image, an upscale's ControlNet gets the
    resized input (the upscaler's canvas-sized output), VAE-encoded once and cropped per view."""
    pipe = flux if family == "flux" else sd3
    net = (tiny_flux_controlnet if family == "flux" else tiny_sd3_controlnet)(pipe.transformer, seed=8)
    md = _md(pipe, controlnet=net)
    small = _control_image(width=128, height=64, seed=8)
    resized = small.resize((256, 128), Image.LANCZOS)
    spy = ControlSpy(net)
    try:
        out = md.upscale(
            small,
            scale=2,
            window=16,
            stride=8,
            view_batch_size=1,
            num_inference_steps=2,
            strength=0.5,
            guidance_scale=1.0,
            output_type="latent",
        )
    finally:
        spy.close()
    latents = encode_images(pipe.vae, 2 * _pixels(resized) - 1)
    if family == "sd3":  # InstantX-style by default: no shift
        latents = latents + pipe.vae.config.shift_factor * pipe.vae.config.scaling_factor
    views = grid_views(16, 32, (16, 16), (8, 8))
    assert len(spy.seen) == len(views)  # one step runs at strength 0.5 of 2
    for view, seen in zip(views, spy.seen):
        expected = control_crop(latents, view, 1)
        assert (seen - (pack_latents(expected) if family == "flux" else expected)).abs().max() <= 1e-4
    assert out.parameters["control_image"] == ["input"]


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_regions_control_image_conditions_only_its_jobs(flux, sd3, family):
    """A region's control map on the transformers: the ControlNet runs on that region's rows only
    (SD 3 with CFG: its two guidance rows; FLUX without CFG: its one row) and changes the result."""
    pipe = flux if family == "flux" else sd3
    net = (tiny_flux_controlnet if family == "flux" else tiny_sd3_controlnet)(pipe.transformer, seed=10)
    md = _md(pipe, controlnet=net)
    md.share_unconditional = False
    kwargs = dict(
        height=128,
        width=128,
        background="a lake",
        num_inference_steps=2,
        bootstrap_steps=0,
        output_type="latent",
        latents=_latents(10),
    )
    box = {"prompt": "a person", "box": (32, 32, 96, 128)}
    spy = ControlSpy(net)
    try:
        out = md.regions(regions=[{**box, "control_image": _control_image(seed=10)}], **kwargs)
    finally:
        spy.close()
    assert len(spy.seen) == 2  # one job (the region's) per step: the background's isn't conditioned
    assert spy.seen[0].shape[0] == (1 if family == "flux" else 2)
    plain = md.regions(regions=[box], **kwargs)
    assert (out.images - plain.images).abs().max() > 1e-3


def test_controlnets_of_another_family_are_refused_in_one_line(flux, sd3, sd16):
    sd_net = ControlNetModel.from_unet(sd16.unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
    flux_net = tiny_flux_controlnet(flux.transformer)
    sd3_net = tiny_sd3_controlnet(sd3.transformer)
    for pipe, net, says in [
        (flux, sd_net, "ControlNetModel is a ControlNet for SD 1.x/2.x or SDXL models, but the model loaded is FLUX.1"),
        (flux, sd3_net, "SD3ControlNetModel is a ControlNet for SD 3 / 3.5 models, but the model loaded is FLUX.1"),
        (sd3, flux_net, "FluxControlNetModel is a ControlNet for FLUX.1 models, but the model loaded is SD 3 / 3.5"),
        (sd16, flux_net, "FluxControlNetModel is a ControlNet for FLUX.1 models, but the model loaded is SD 1.x/2.x"),
    ]:
        with pytest.raises(ValueError, match=says) as error:
            MultiDiffusion(pipe, controlnet=net)
        assert "\n" not in str(error.value)
    wide = tiny_flux_pipeline(sample_size=16, width=64, head=16)  # another model size of the same family
    with pytest.raises(ValueError, match=r"made for another FLUX.1 model \(joint_attention_dim|width="):
        MultiDiffusion(wide, controlnet=flux_net)


def test_guess_mode_is_refused_for_transformers(flux):
    md = _md(flux, controlnet=tiny_flux_controlnet(flux.transformer))
    with pytest.raises(ValueError, match="guess_mode: FLUX ControlNets have no guess mode"):
        md.panorama("a lake", height=128, width=128, control_image=_control_image(), guess_mode=True)


def test_transformer_controlnets_load_from_folders_by_their_class(flux, sd3, tmp_path):
    for pipe, make, cls in [
        (flux, tiny_flux_controlnet, "FluxControlNetModel"),
        (sd3, tiny_sd3_controlnet, "SD3ControlNetModel"),
    ]:
        folder = tmp_path / cls
        make(pipe.transformer, seed=10).save_pretrained(folder)
        md = _md(pipe, controlnet=[str(folder), str(folder)])
        assert [type(net).__name__ for net in md.adapter.controlnets] == [cls, cls]
        assert type(md.adapter.controlnet).__name__ == cls.replace("ControlNetModel", "MultiControlNetModel")
