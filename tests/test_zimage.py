"""Z-Image at one view equals diffusers' ZImagePipeline (max abs diff <= 1e-4), and panoramas and
region layouts run, on tiny random components built in-process: a Qwen3 text encoder over a
character vocabulary with a chat template (Qwen3's, without tools), a ZImageTransformer2DModel of
width 64, a 16-channel VAE (nothing downloaded)."""

import numpy as np
import pytest
import torch
from diffusers import ZImageImg2ImgPipeline
from PIL import Image

from devtools.zimage_components import tiny_zimage_pipeline
from multidiffusion import MultiDiffusion, Region
from multidiffusion.files.metadata import read_settings
from multidiffusion.models.flow import calculate_shift
from multidiffusion.models.zimage import ZImageAdapter

from .family_checks import the_other_tasks_run
from .test_scene import run_cli

STEPS = 3
H = W = 16  # latent pixels: 128 px, the tiny model's native window


@pytest.fixture(scope="module")
def zimage():
    return tiny_zimage_pipeline()


@pytest.fixture(scope="module")
def zimage_dynamic():
    return tiny_zimage_pipeline(dynamic=True, seed=1)


def _md(pipe):
    md = MultiDiffusion(pipe, max_sequence_length=64)
    md.set_progress_bar_config(disable=True)
    return md


def _latents(seed=0, h=H, w=W):
    return torch.randn((1, 16, h, w), generator=torch.Generator().manual_seed(seed))


def _reference(pipe, latents, **kwargs):
    return pipe(
        height=H * 8,
        width=W * 8,
        num_inference_steps=STEPS,
        latents=latents.clone(),
        output_type="latent",
        max_sequence_length=64,
        **kwargs,
    ).images


def _ours(pipe, latents, prompt, **kwargs):
    return _md(pipe).panorama(
        prompt, height=H * 8, width=W * 8, num_inference_steps=STEPS, latents=latents, output_type="latent", **kwargs
    )


def test_turbo_without_guidance_equals_the_pipeline(zimage):
    x = _latents()
    expected = _reference(zimage, x, prompt="a red ball", guidance_scale=0.0)
    got = _ours(zimage, x, "a red ball", guidance_scale=0.0)
    assert got.images.shape == (1, 16, H, W)
    assert (got.images - expected).abs().max() <= 1e-4
    assert (got.images - x).abs().max() > 0.1  # it did denoise
    assert got.stats.evaluations == STEPS  # no unconditional branch


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_guided_resolution_shifted_equals_the_pipeline(zimage_dynamic, negative):
    """Z-Image's guidance v_c + g (v_c - v_u), the empty negative by default, μ from the view."""
    pipe = zimage_dynamic
    x = _latents(1)
    kwargs = dict(guidance_scale=2.5, negative_prompt=negative)
    expected = _reference(pipe, x, prompt="a lighthouse", **kwargs)
    got = _ours(pipe, x, "a lighthouse", **kwargs)
    assert (got.images - expected).abs().max() <= 1e-4
    assert got.stats.evaluations == 2 * STEPS and got.stats.model_calls == STEPS


@pytest.mark.parametrize("dynamic", [False, True], ids=["turbo", "guided"])
def test_img2img_equals_the_img2img_pipeline(zimage, zimage_dynamic, dynamic):
    """The start goes through the flow-matching forward process, drawn in diffusers' order."""
    pipe = zimage_dynamic if dynamic else zimage
    reference = ZImageImg2ImgPipeline(**pipe.components)
    reference.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (H * 8, W * 8, 3), dtype=np.uint8))
    kwargs = dict(strength=0.6, num_inference_steps=5, guidance_scale=2.0 if dynamic else 0.0, output_type="latent")
    expected = reference(
        prompt="a lake",
        image=image,
        height=H * 8,
        width=W * 8,
        generator=torch.Generator().manual_seed(5),
        max_sequence_length=64,
        **kwargs,
    ).images
    got = _md(pipe).img2img(image, "a lake", generator=torch.Generator().manual_seed(5), **kwargs)
    assert (got.images - expected).abs().max() <= 1e-4
    assert got.stats.evaluations == (2 if dynamic else 1) * 3  # strength 0.6 of 5 steps


def test_the_schedule_shift_comes_from_the_view_not_the_canvas(zimage_dynamic):
    pipe = zimage_dynamic
    seen = []
    _md(pipe).panorama(
        "a lake",
        height=H * 8,
        width=4 * W * 8,
        window=H,
        stride=W // 2,
        num_inference_steps=STEPS,
        guidance_scale=0.0,
        output_type="latent",
        callback_on_step_end=lambda md, i, t, kw: seen.append(float(t)),
    )
    _reference(pipe, _latents(), prompt="a lake", guidance_scale=0.0)  # the pipeline at the view's size
    assert seen == pytest.approx(pipe.scheduler.timesteps.tolist(), abs=1e-4)
    canvas = type(pipe.scheduler).from_config(pipe.scheduler.config)
    ZImageAdapter(pipe).set_timesteps(canvas, STEPS, "cpu", (H, 4 * W))  # what the whole canvas would get
    assert canvas.timesteps[1] > seen[1] + 0.1 and calculate_shift(64) < calculate_shift(256)


def test_a_two_view_panorama_covers_the_canvas(zimage):
    md = _md(zimage)
    out = md.panorama(
        "a lake", height=H * 8, width=2 * W * 8, window=H, stride=W // 2, num_inference_steps=2, output_type="latent"
    )
    assert out.images.shape == (1, 16, H, 2 * W)
    assert torch.isfinite(out.images).all()
    assert out.stats.coverage >= 1.0
    assert out.stats.jobs == 2 * 3  # 3 views of 16 at stride 8 across 32, each step


def test_canvas_positions_place_each_view_on_the_canvas(zimage):
    x = _latents(3, w=2 * W)
    kwargs = dict(height=H * 8, width=2 * W * 8, window=H, stride=W // 2, num_inference_steps=2, output_type="latent")
    local = _md(zimage).panorama("a lake", latents=x, **kwargs)
    md = MultiDiffusion(zimage, max_sequence_length=64, positions="canvas")
    md.set_progress_bar_config(disable=True)
    placed = md.panorama("a lake", latents=x, **kwargs)
    assert placed.parameters["positions"] == "canvas" and local.parameters["positions"] == "view"
    assert (placed.images - local.images).abs().max() > 1e-3  # the views right of the first moved
    assert placed.stats.model_calls == local.stats.model_calls  # still one call per batch of views
    assert "patchify_and_embed" not in vars(zimage.transformer)  # the wrapper is gone after the call
    one = md.panorama("a lake", latents=_latents(), **{**kwargs, "width": W * 8})  # one view at (0, 0)
    assert torch.equal(
        one.images, _md(zimage).panorama("a lake", latents=_latents(), **{**kwargs, "width": W * 8}).images
    )
    with pytest.raises(ValueError, match="rotary tables"):  # 64 tokens per side in the tiny model
        md.panorama("a lake", **{**kwargs, "width": 2 * 64 * 8 + W * 8, "num_inference_steps": 1})
    assert "patchify_and_embed" not in vars(zimage.transformer)


def test_a_region_layout_runs(zimage):
    md = _md(zimage)
    regions = [Region("a red ball", box=(0.0, 0.0, 0.5, 1.0))]
    out = md.regions(
        background="a beach",
        regions=regions,
        height=H * 8,
        width=2 * W * 8,
        window=H,
        stride=W // 2,
        num_inference_steps=2,
        output_type="latent",
    )
    assert out.images.shape == (1, 16, H, 2 * W)
    assert torch.isfinite(out.images).all()
    assert out.stats.jobs > 2 * 3  # the region's views run besides the background's


def test_the_family_is_recognised_with_its_defaults(zimage):
    md = _md(zimage)
    assert isinstance(md.adapter, ZImageAdapter) and md.family == "zimage"
    assert md.adapter.sampling_defaults == (50, 5.0)
    assert md.adapter.native_latent_size == (H, W)
    assert md.adapter.parameters() == {"positions": "view", "max_sequence_length": 64}
    with pytest.raises(ValueError, match="max_sequence_length"):
        MultiDiffusion(zimage, max_sequence_length=0)
    with pytest.raises(ValueError, match="true_cfg_scale applies to FLUX"):
        MultiDiffusion(zimage, true_cfg_scale=2.0)  # another family's option


def test_other_tasks_and_the_png_round_trip(zimage, tmp_path, capsys, monkeypatch):
    """Inpainting, outpainting, upscaling and the fast mode run through the same contract; a panorama
    saved by the command line from a Z-Image folder is made again from its PNG with the same pixels;
    a folder named for Turbo takes Turbo's defaults."""
    md = _md(zimage)
    the_other_tasks_run(md, H, W, 16)
    folder = tmp_path / "tiny-z-image-turbo"
    zimage.save_pretrained(folder)
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    args = ["--model", folder, "--width", 256, "--height", 128, "--seed", 3, "-q"]
    args += ["--max-sequence-length", 64, "--positions", "canvas"]
    code, _, err = run_cli(["panorama", "a lake at dawn", *args, "-o", first], capsys)
    assert code == 0, err
    stored = read_settings(first, "panorama")
    assert stored.model_options == {"positions": "canvas", "max_sequence_length": 64}
    assert stored.values["num_inference_steps"] == 8 and stored.values["guidance_scale"] == 0.0  # Turbo's
    code, _, err = run_cli(["panorama", "--from", first, "--model", folder, "-q", "-o", again], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
