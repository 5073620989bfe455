"""Every task on the tiny diffusion transformers (FLUX.1, SD 3): panoramas (grid, circular, fast
mode) covering every latent pixel on the 2x2 token grid, regions whose fused weights follow their
masks (with bootstrapping noised by ``scale_noise``), images in, and the errors of what is not
supported."""

import types

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

from multidiffusion import MultiDiffusion, Region
from multidiffusion.engine.views import paste_add
from multidiffusion.engine.windows import default_stride
from multidiffusion.options import PanoramaOptions, RegionsOptions
from multidiffusion.tasks import task_for

FAMILIES = ["flux", "sd3"]
PANORAMA = dict(height=128, width=288, num_inference_steps=2, output_type="latent")  # 16 x 36 latents


@pytest.fixture
def scale_noise_calls(monkeypatch):
    """Counts the flow-matching forward process's calls (img2img starts, blending, bootstrapping)."""
    calls = []
    original = FlowMatchEulerDiscreteScheduler.scale_noise

    def counted(self, sample, timestep, noise=None):
        calls.append(sample.shape)
        return original(self, sample, timestep, noise)

    monkeypatch.setattr(FlowMatchEulerDiscreteScheduler, "scale_noise", counted)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "layout",
    [
        dict(window=16, stride=8),
        dict(window=16, stride=8, circular=True),
        dict(placement="shifted"),
    ],
    ids=["grid", "circular", "shifted"],
)
def test_panoramas_cover_every_latent_pixel_on_the_token_grid(dit_models, family, layout):
    md = dit_models[family]
    task = task_for(PanoramaOptions(prompt="a lake", **PANORAMA, **layout), md.adapter)
    plans = task.plans(seed=3)
    for step in range(4):
        plan = plans(step)
        assert bool((plan.normalizer > 0).all())  # Eq. 5's denominator: every latent pixel covered
        for job in plan.jobs:
            v = job.view
            assert v.top % 2 == v.left % 2 == v.height % 2 == v.width % 2 == 0, v
    out = md.panorama("a lake", **PANORAMA, **layout, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 16, 16, 36)
    assert torch.isfinite(out.images).all()
    assert out.stats.coverage >= 1.0
    if layout.get("placement") == "shifted":
        assert out.stats.coverage < 2.5  # few windows per step: the fast mode


def test_default_strides_are_whole_patches():
    assert default_stride((24, 40), "grid", 2) == (2, 4)  # 24 // 8 = 3, rounded down to a patch
    assert default_stride((24, 24), "shifted", 2) == (20, 20)  # 24 - 3 = 21 -> 20
    assert default_stride((24, 24), "grid") == (3, 3)  # UNets: unchanged


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(window=15), "window must be a multiple of 2 latent pixels for this FLUX model"),
        (dict(window=16, stride=5), "stride must be a multiple of 2 latent pixels"),
        (dict(height=136), "height must be a multiple of 16"),
    ],
)
def test_layouts_off_the_token_grid_are_refused(dit_models, options, match):
    kwargs = {**PANORAMA, **options}
    with pytest.raises(ValueError, match=match):
        dit_models["flux"].panorama("a lake", **kwargs)


def _fused_shares(calls, plan_normalizer, slots, canvas):
    """Each prompt slot's share of every latent pixel in Eq. 5, rebuilt from the jobs the model ran."""
    shares = torch.zeros((slots, 1, *canvas))
    seen = set()
    for jobs in calls:
        for job in jobs:
            if (job.view, job.prompt) in seen:
                continue
            seen.add((job.view, job.prompt))
            paste_add(shares[job.prompt : job.prompt + 1], job.view, 1.0 if job.weight is None else job.weight.cpu())
    return shares / plan_normalizer


@pytest.mark.parametrize("family", FAMILIES)
def test_regions_with_bootstrapping_follow_their_masks(dit_models, family, scale_noise_calls, monkeypatch):
    md = dit_models[family]
    calls = []
    original = md.adapter.unet_kwargs

    def recording(cond, jobs, canvas):
        calls.append(list(jobs))
        return original(cond, jobs, canvas)

    monkeypatch.setattr(md.adapter, "unet_kwargs", recording)
    regions = [Region("a red ball", box=(0.0, 0.0, 0.5, 1.0))]  # the left half
    kwargs = dict(height=128, width=256, window=16, stride=8, bootstrap_steps=1, num_inference_steps=2)
    out = md.regions(background="a beach", regions=regions, output_type="latent", **kwargs)
    assert torch.isfinite(out.images).all()
    layout = md.region_layout(height=128, width=256, background="a beach", regions=regions)
    task = task_for(RegionsOptions(background="a beach", regions=regions, **kwargs), md.adapter)
    shares = _fused_shares(calls, task.plans(0)(0).normalizer.cpu(), 2, (16, 32))
    torch.testing.assert_close(shares[:, 0], layout.masks)  # binary masks: Eq. 5 weights = the masks
    assert torch.equal(layout.masks[1][:, :16], torch.ones(16, 16)) and not layout.masks[1][:, 16:].any()
    # bootstrapping noised each foreground job's background with scale_noise, in the first step only
    foreground = sum(1 for jobs in calls[:1] for j in jobs if j.prompt == 1)
    assert len(scale_noise_calls) >= foreground > 0


def _picture(width=256, height=128, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", FAMILIES)
def test_images_in_use_the_flow_matching_forward_process(dit_models, family, scale_noise_calls):
    md = dit_models[family]
    image = _picture()
    out = md.img2img(image, "a lake", strength=0.5, num_inference_steps=4, window=16, stride=8, output_type="latent")
    assert out.images.shape == (1, 16, 16, 32) and torch.isfinite(out.images).all()
    assert len(scale_noise_calls) == 1  # the start: the image noised to the first step that runs
    mask = Image.fromarray(np.pad(np.full((128, 64), 255, np.uint8), ((0, 0), (96, 96))))
    out = md.inpaint(image, mask, "a boat", num_inference_steps=3, window=16, stride=8, output_type="latent")
    assert torch.isfinite(out.images).all()
    assert len(scale_noise_calls) == 1 + 2  # latent blending after each step but the last


def test_flux_canvas_positions_run_each_view_alone(flux16):
    md = MultiDiffusion(flux16, max_sequence_length=16, positions="canvas")
    md.set_progress_bar_config(disable=True)
    x = torch.randn((1, 16, 16, 32), generator=torch.Generator().manual_seed(0))
    kwargs = dict(height=128, width=256, window=16, stride=8, num_inference_steps=2, latents=x, output_type="latent")
    canvas = md.panorama("a lake", view_batch_size=3, **kwargs)
    views = 3
    assert canvas.stats.model_calls == 2 * views  # one transformer call per view position
    assert canvas.parameters["positions"] == "canvas"
    md.adapter.positions = "view"
    own = md.panorama("a lake", view_batch_size=3, **kwargs)
    assert own.stats.model_calls == 2
    assert not torch.allclose(canvas.images, own.images)  # text tokens see image tokens elsewhere


def test_unsupported_families_name_the_supported_ones(flux16, sd3_16):
    other = types.SimpleNamespace(transformer=torch.nn.Linear(1, 1), vae=flux16.vae, scheduler=flux16.scheduler)
    supported = r"Linear is not supported; the supported families are: .*Stable Diffusion 3 .*FLUX\.1"
    with pytest.raises(ValueError, match=supported):
        MultiDiffusion(other)
    with pytest.raises(ValueError, match=r"has no 'unet'.*supported families are: Stable Diffusion 1\.x"):
        MultiDiffusion(types.SimpleNamespace(vae=flux16.vae))
    with pytest.raises(ValueError, match=r"positions applies to ([^;]+, )?FLUX\.1(, [^;]+)? models; this model is"):
        MultiDiffusion(sd3_16, positions="canvas")


def test_ddpm_schedulers_are_refused_with_flux(dit_models):
    """(ControlNets of FLUX's family run: tests/test_dit_controlnet.py.)"""
    md = dit_models["flux"]
    with pytest.raises(ValueError, match=r"DDIMScheduler is a DDPM-family scheduler.*flow matching"):
        md.panorama("a lake", scheduler="ddim", **PANORAMA)


def test_img2img_siblings_share_their_components(flux16, sd3_16):
    from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline

    for cls, pipe in ((FluxImg2ImgPipeline, flux16), (StableDiffusion3Img2ImgPipeline, sd3_16)):
        md = MultiDiffusion(cls(**pipe.components))
        assert md.adapter.transformer is pipe.transformer


def test_flow_schedulers_by_name_and_the_other_family_refused(dit_models, md16):
    out = dit_models["sd3"].panorama("a lake", scheduler="flow_euler", **PANORAMA)
    assert out.parameters["scheduler"] == "flow_euler"
    assert dit_models["flux"].panorama("a lake", **PANORAMA).parameters["scheduler"] == "flow_euler"  # its own
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler is a flow-matching scheduler"):
        md16.panorama("a lake", scheduler="flow_euler", height=128, width=128, num_inference_steps=1)


@pytest.mark.parametrize("circular", [False, True])
def test_tiled_decode_of_16_channel_latents(dit_models, circular):
    md = dit_models["flux"]
    x = torch.randn((1, 16, 16, 32), generator=torch.Generator().manual_seed(1))
    kwargs = dict(height=128, width=256, num_inference_steps=1, latents=x, circular=circular, output_type="np")
    whole = md.panorama("a lake", window=16, stride=8, **kwargs).images
    md.set_vae_tiling(tile=16, overlap=4, norm_stats="fast")
    try:
        tiled = md.panorama("a lake", window=16, stride=8, **kwargs).images
    finally:
        md.set_vae_tiling()
    assert tiled.shape == whole.shape == (1, 128, 256, 3)
    assert np.abs(tiled - whole).mean() < 0.02  # tiles agree with the whole decode (canvas-wide statistics)


@pytest.mark.parametrize("family", FAMILIES)
def test_flow_noise_inversion_retraces_to_the_input(dit_models, family, monkeypatch):
    """Noise inversion on flow-matching models: Euler run upwards on the fused velocity, then Euler
    sampling from it, at one view without CFG, ends near the input's latents z_0; fresh noise ends
    far from them (measured: RMS 0.070 against 0.87 on the tiny FLUX, 0.023 against 1.61 on the
    tiny SD 3). The start is x_T itself: ``scale_noise`` of the implied noise gives it back."""
    import multidiffusion.tasks.upscale as upscale_module

    md = dit_models[family]
    seen = {}
    implied = upscale_module.implied_flow_noise

    def recording(latents, inverted, sigma):
        seen.update(z0=latents.clone(), inverted=inverted.clone(), sigma=sigma)
        return implied(latents, inverted, sigma)

    monkeypatch.setattr(upscale_module, "implied_flow_noise", recording)
    outs = {}
    for inversion in (True, False):
        outs[inversion] = md.upscale(
            _picture(128, 128),
            scale=1,
            prompt="a lake",
            strength=0.6,
            num_inference_steps=10,
            guidance_scale=1.0,
            noise_inversion=inversion,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),  # the same z_0 both times
        )
        assert outs[inversion].stats.jobs == (12 if inversion else 6)  # one view; 6 steps run, 6 inverted
    z0, sigma = seen["z0"], seen["sigma"]
    again = (1 - sigma) * z0 + sigma * implied(z0, seen["inverted"], sigma)
    assert torch.allclose(again, seen["inverted"], atol=1e-5)
    inverted, fresh = (((outs[k].images - z0) ** 2).mean().sqrt().item() for k in (True, False))
    assert inverted < 0.3 * fresh, (inverted, fresh)
