"""The engine against diffusers: one view is the plain pipeline, panoramas are the paper's."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPanoramaPipeline

from devtools.components import tiny_sd_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.engine.schedulers import SCHEDULERS, make_scheduler

from .conftest import noise


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpm++2m"])
def test_one_view_equals_stable_diffusion_pipeline(sd16, md16, scheduler):
    sched = make_scheduler(scheduler, sd16.scheduler.config)
    latents = noise((1, 4, 16, 16))
    original = sd16.scheduler
    sd16.scheduler = make_scheduler(scheduler, original.config)
    try:
        expected = sd16(
            "a red house",
            num_inference_steps=4,
            latents=latents.clone(),
            output_type="np",
            negative_prompt="blurry",
            generator=torch.Generator().manual_seed(1),
        ).images
    finally:
        sd16.scheduler = original
    out = md16.panorama(
        "a red house",
        height=128,
        width=128,
        num_inference_steps=4,
        latents=latents.clone(),
        output_type="np",
        negative_prompt="blurry",
        scheduler=sched,
        generator=torch.Generator().manual_seed(1),
    )
    assert out.stats.model_calls == 4  # one view, both guidance branches in one call
    # the layers before the first cross-attention run once for both branches (shared_prefix.py):
    # the same arithmetic at half the batch, equal up to float32 rounding
    np.testing.assert_allclose(out.images, expected, atol=1e-5)


def test_one_view_v_prediction_equals_pipeline():
    pipe = tiny_sd_pipeline(sample_size=16, prediction_type="v_prediction", seed=3)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    latents = noise((1, 4, 16, 16), seed=2)
    expected = pipe("a tree", num_inference_steps=3, latents=latents.clone(), output_type="latent").images
    got = md.panorama(
        "a tree", height=128, width=128, num_inference_steps=3, latents=latents.clone(), output_type="latent"
    ).images
    torch.testing.assert_close(
        got, expected, rtol=0, atol=2e-5
    )  # float rounding: the shared guidance prefix runs at half batch


@pytest.fixture(scope="module")
def diffusers_panorama(sd64):
    pano = StableDiffusionPanoramaPipeline.from_pipe(sd64)
    pano.set_progress_bar_config(disable=True)
    return pano


@pytest.mark.parametrize("view_batch_size", [1, pytest.param(3, marks=pytest.mark.slow)])  # batching: also below
@pytest.mark.parametrize("circular", [False, True])
def test_panorama_equals_diffusers_panorama(sd64, diffusers_panorama, view_batch_size, circular):
    # 512 x 768: (96 - 64) / 8 + 1 = 5 windows, both cover the canvas; DDIM, same latents
    latents = noise((1, 4, 64, 96), seed=4)
    expected = diffusers_panorama(
        "a mountain",
        height=512,
        width=768,
        num_inference_steps=3,
        latents=latents.clone(),
        output_type="latent",
        view_batch_size=view_batch_size,
        circular_padding=circular,
    ).images
    md = MultiDiffusion(sd64)
    md.set_progress_bar_config(disable=True)
    out = md.panorama(
        "a mountain",
        height=512,
        width=768,
        num_inference_steps=3,
        latents=latents.clone(),
        output_type="latent",
        view_batch_size=view_batch_size,
        circular=circular,
    )
    # diffusers averages per-view DDIM steps; we step once on averaged predictions: equal up to rounding
    # (up to 2.2e-5 seen, depending on the CPU's vector units)
    torch.testing.assert_close(out.images, expected, rtol=1e-5, atol=5e-5)
    assert out.parameters["window"] == 64 and out.parameters["stride"] == 8


def test_every_latent_pixel_is_denoised_when_stride_does_not_divide(md16, monkeypatch):
    import multidiffusion.engine.fusion as fusion

    seen = torch.zeros(1, 1, 21, 53)  # 168 x 424 px: (53-16) % 2 != 0 and (21-16) % 2 != 0
    original = fusion.crop_batch

    def spy(x, views):
        for v in views:
            seen[..., v.top : v.top + v.height, v.left : v.left + v.width] += 1
        return original(x, views)

    monkeypatch.setattr(fusion, "crop_batch", spy)
    out = md16.panorama(
        "hills",
        height=168,
        width=424,
        num_inference_steps=2,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    assert seen.min() >= 2  # every pixel seen by the model at every step
    assert torch.isfinite(out.images).all()


def test_diffusers_layout_leaves_columns_undenoised(sd64):
    # the gap we close: diffusers' own layout stops short of the right edge
    pano = StableDiffusionPanoramaPipeline.from_pipe(sd64)
    views = pano.get_views(512, 840)  # 105 latent columns, (105 - 64) % 8 == 1
    assert max(v[3] for v in views) < 105


def test_circular_panorama_is_equivariant_to_rolling_by_strides(md16):
    latents = noise((1, 4, 16, 48), seed=5)
    kwargs = dict(height=128, width=384, num_inference_steps=3, output_type="latent", circular=True, view_batch_size=1)
    base = md16.panorama("a lake", latents=latents.clone(), **kwargs).images
    shift = 3 * 2  # three strides of 2 latent pixels
    rolled = md16.panorama("a lake", latents=torch.roll(latents, shift, dims=-1), **kwargs).images
    torch.testing.assert_close(rolled, torch.roll(base, shift, dims=-1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_named_scheduler_runs(md16, name):
    out = md16.panorama(
        "a desert",
        height=128,
        width=256,
        num_inference_steps=3,
        scheduler=name,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 128, 256, 3)
    assert np.isfinite(out.images).all()
    assert out.parameters["scheduler"] == name


def test_several_images_prompt_lists_and_output_types(md16):
    out = md16.panorama(
        ["a", "b"],
        height=128,
        width=256,
        num_inference_steps=2,
        num_images_per_prompt=2,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (4, 3, 128, 256)
    assert not torch.allclose(out.images[0], out.images[1])  # different noise per image
    pil = md16.panorama("a", height=128, width=256, num_inference_steps=2, output_type="pil").images
    assert pil[0].size == (256, 128)


def test_view_batching_leaves_output_unchanged(md16):
    latents = noise((1, 4, 16, 40), seed=6)
    outs = [
        md16.panorama(
            "sea",
            height=128,
            width=320,
            num_inference_steps=2,
            latents=latents.clone(),
            view_batch_size=b,
            output_type="latent",
        ).images
        for b in (1, 5, 100)
    ]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-5, atol=1e-5)


def test_callback_sees_every_step_and_can_replace_latents(md16):
    steps = []

    def callback(md, i, t, kwargs):
        steps.append(i)
        return {"latents": torch.zeros_like(kwargs["latents"])}

    out = md16.panorama(
        "x", height=128, width=128, num_inference_steps=3, callback_on_step_end=callback, output_type="latent"
    )
    assert steps == [0, 1, 2]
    assert out.images.abs().max() == 0


def test_same_seed_same_image(md16):
    a = md16.panorama(
        "x",
        height=128,
        width=256,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(7),
    )
    b = md16.panorama(
        "x",
        height=128,
        width=256,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(7),
    )
    np.testing.assert_array_equal(a.images, b.images)
    assert a.parameters["seed"] == 7
