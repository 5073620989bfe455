"""Upscaling: resize (PIL filters, callables, ESRGAN-family files through spandrel, tiled), then
img2img over windows; noise inversion by DDIM over the fused prediction."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from multidiffusion import MultiDiffusion
from multidiffusion.files.metadata import settings_from_parameters
from multidiffusion.options import Limits, UpscaleOptions, build_options
from multidiffusion.tasks.upscale import _pixels
from multidiffusion.upscalers import (
    FILTERS,
    MissingExtraError,
    require_spandrel,
    run_tiled,
    upscale_image,
    upscaler_record,
)
from multidiffusion.vae.codec import encode_images


def _picture(width=64, height=48, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    return Image.fromarray(np.clip(base + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8))


def _spandrel_missing() -> str | None:
    try:
        require_spandrel()
    except MissingExtraError as exc:
        return str(exc)
    return None


# -- sizes and options ------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "scale", "expected"), [((64, 48), 2, (128, 96)), ((100, 72), 1.5, (144, 104))])
def test_the_output_is_the_input_times_scale_rounded_down_to_multiples_of_8(md16, size, scale, expected):
    out = md16.upscale(_picture(*size), scale=scale, num_inference_steps=2, strength=0.5)
    assert out.images[0].size == expected
    p = out.parameters
    assert (p["task"], p["scale"], p["upscaler"], p["width"], p["height"]) == ("upscale", scale, "lanczos", *expected)
    assert (p["noise_inversion"], p["inversion_steps"], p["strength"]) == (False, None, 0.5)


@pytest.mark.parametrize("scale", [0.5, 8.5, "2", float("nan")])
def test_scale_out_of_range_is_named(scale):
    with pytest.raises(ValueError, match=r"scale must be a number from 1 to 8"):
        UpscaleOptions(image=_picture(), scale=scale)


def test_height_and_width_must_agree_with_scale():
    with pytest.raises(ValueError, match="height: an upscale's size is the image's times scale"):
        UpscaleOptions(image=_picture(), scale=2, height=64)


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filters_resize_as_pil_does(name):
    image = _picture(37, 29)
    got = upscale_image(image, 2, name.upper() if name == "bicubic" else name)
    assert got.size == (74, 58)
    assert np.array_equal(np.asarray(got), np.asarray(image.resize((74, 58), FILTERS[name])))


def test_an_unknown_filter_or_type_is_named(tmp_path):
    with pytest.raises(ValueError, match="upscaler: no such file 'lanczoz'"):
        UpscaleOptions(image=_picture(), upscaler="lanczoz")
    with pytest.raises(ValueError, match="upscaler must be one of 'lanczos'"):
        UpscaleOptions(image=_picture(), upscaler=3)


def test_a_callable_upscaler_is_resized_to_the_exact_target_and_recorded_as_callable(md16):
    calls = []

    def upscaler(image):
        calls.append(image.size)
        return image.resize((image.width * 3, image.height * 3), Image.Resampling.NEAREST).convert("L")

    image = _picture(64, 48)
    assert upscale_image(image, 2, upscaler).size == (128, 96)  # 3x, grey: resized, RGB again
    assert upscale_image(image, 2, upscaler).mode == "RGB"
    out = md16.upscale(image, scale=2, upscaler=upscaler, num_inference_steps=2, strength=0.5, output_type="latent")
    assert calls[-1] == (64, 48) and out.images.shape[-2:] == (12, 16)
    assert out.parameters["upscaler"] == "callable"
    stored = settings_from_parameters({**out.parameters, "image": _data_uri(image)})
    assert stored.files == {"upscaler": "callable"} and "upscaler" not in stored.values  # given again, never run
    with pytest.raises(ValueError, match="upscaler: the callable must return a PIL image, got ndarray"):
        upscale_image(image, 2, lambda im: np.asarray(im))


def test_a_pickle_upscaler_is_refused_without_allow_pickle(md16, tmp_path):
    path = tmp_path / "4x-model.pth"
    path.write_bytes(b"not really a pickle")
    for call in (
        lambda: UpscaleOptions(image=_picture(), upscaler=str(path)),
        lambda: md16.upscale(_picture(), upscaler=str(path)),
        lambda: upscale_image(_picture(), 2, str(path)),
    ):
        with pytest.raises(ValueError, match=r"upscaler: '.*4x-model\.pth' is a pickle file.*allow_pickle=True"):
            call()
    assert UpscaleOptions(image=_picture(), upscaler=str(path), allow_pickle=True).upscaler == str(path)


def test_a_stored_upscaler_file_is_its_path_and_sha256_and_must_be_unchanged(tmp_path):
    path = tmp_path / "2x-model.safetensors"
    path.write_bytes(b"weights v1")
    record = upscaler_record(str(path))
    assert record["path"] == str(path) and len(record["sha256"]) == 64
    options = build_options("upscale", {"image": _picture(), "upscaler": record})
    assert options.upscaler == str(path)
    path.write_bytes(b"weights v2")
    with pytest.raises(ValueError, match=r"upscaler: the model file .* has changed since these settings were recorded"):
        build_options("upscale", {"image": _picture(), "upscaler": record})
    with pytest.raises(ValueError, match="upscaler: a stored model file must be"):
        build_options("upscale", {"image": _picture(), "upscaler": {"path": str(path)}})


# -- model files: tiling and spandrel -----------------------------------------------------------------
def test_tiled_network_equals_the_whole_image_for_a_pointwise_network():
    pixels = torch.from_numpy(np.array(_picture(90, 70))).permute(2, 0, 1)[None]
    nearest = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")  # noqa: E731
    tiled = run_tiled(nearest, pixels, 2, tile=32, overlap=8)
    whole = np.asarray(_picture(90, 70).resize((180, 140), Image.Resampling.NEAREST))
    assert tiled.size == (180, 140) and np.array_equal(np.asarray(tiled), whole)


def test_tiles_of_a_network_with_context_blend_without_visible_borders():
    """A 5x5 blur then 2x upscale: each tile sees zero padding at its own borders (2 input pixels
    deep), which lie in the dropped outer quarter of a 12-pixel overlap: the blend equals the whole
    image's result up to 8-bit rounding."""
    torch.manual_seed(0)
    blur = torch.full((3, 1, 5, 5), 1 / 25)

    def network(x):
        return F.interpolate(F.conv2d(x, blur, padding=2, groups=3), scale_factor=2, mode="bilinear")

    pixels = torch.from_numpy(np.array(_picture(96, 80))).permute(2, 0, 1)[None]
    whole = run_tiled(network, pixels, 2, tile=96, overlap=0)
    tiled = run_tiled(network, pixels, 2, tile=32, overlap=12)
    diff = np.abs(np.asarray(tiled, np.float32) - np.asarray(whole, np.float32))
    assert diff.mean() < 0.01 and diff.max() <= 1, (diff.mean(), diff.max())


def test_a_network_of_the_wrong_scale_is_named():
    pixels = torch.zeros((1, 3, 16, 16), dtype=torch.uint8)
    with pytest.raises(
        ValueError, match=r"upscaler: the network returned \(1, 3, 16, 16\) .* expected \(1, 3, 32, 32\)"
    ):
        run_tiled(lambda x: x, pixels, 2, tile=16, overlap=0)


def test_without_spandrel_a_model_file_gives_one_line_naming_the_extra(md16, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel", None)  # `import spandrel` now raises ImportError
    path = tmp_path / "4x-model.safetensors"
    path.write_bytes(b"weights")
    for call in (
        lambda: md16.upscale(_picture(), upscaler=str(path), num_inference_steps=3),
        lambda: upscale_image(_picture(), 2, str(path)),
    ):
        with pytest.raises(MissingExtraError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and message.startswith("upscaler: ")
        assert 'pip install "multidiffusion[upscale]"' in message
        assert isinstance(info.value, ValueError) and isinstance(info.value, ImportError)


@pytest.mark.skipif(_spandrel_missing() is not None, reason=f"spandrel is not usable here: {_spandrel_missing()}")
def test_an_esrgan_file_upscales_through_spandrel_in_tiles(tmp_path):
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    path = tmp_path / "2x-tiny-esrgan.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    image = _picture(70, 50)
    got = upscale_image(image, 3, str(path), tile=32, overlap=8)
    assert got.size == (210, 150)  # one 2x pass (a second would pass the target), then Lanczos
    from multidiffusion.upscalers import load_model

    model = load_model(str(path))
    assert model.scale == 2
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    whole = run_tiled(lambda x: model(x), pixels, 2, tile=70, overlap=0)
    tiled = run_tiled(lambda x: model(x), pixels, 2, tile=32, overlap=8)
    assert np.abs(np.asarray(whole, np.float32) - np.asarray(tiled, np.float32)).mean() < 1.0


# -- the diffusion pass ------------------------------------------------------------------------------
def test_at_scale_1_an_upscale_is_img2img_on_the_same_pixels(md16):
    image = _picture(128, 128, seed=3)
    kwargs = dict(strength=0.5, num_inference_steps=4, output_type="latent", negative_prompt="blurry")
    a = md16.upscale(image, scale=1, prompt="a red house", generator=torch.Generator().manual_seed(2), **kwargs)
    b = md16.img2img(image, "a red house", generator=torch.Generator().manual_seed(2), **kwargs)
    assert torch.equal(a.images, b.images)


def test_an_empty_prompt_skips_the_idle_guidance_branch(md16):
    image = _picture(64, 48)
    kwargs = dict(scale=2, strength=0.5, num_inference_steps=4, output_type="latent")
    guided = md16.upscale(image, guidance_scale=7.5, generator=torch.Generator().manual_seed(1), **kwargs)
    plain = md16.upscale(image, guidance_scale=1.0, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.allclose(guided.images, plain.images, atol=1e-5)
    assert guided.stats.evaluations == guided.stats.jobs  # one UNet row per window: no ε_u
    prompted = md16.upscale(image, prompt="a lake", generator=torch.Generator().manual_seed(1), **kwargs)
    assert prompted.stats.evaluations == 2 * prompted.stats.jobs


def test_the_fast_mode_upscales_with_coverage_near_one(md16):
    """Shifted windows (stride 7/8 of the window) cost about (8/7)² per latent pixel per step, plus
    the windows clamped at the two edges of each axis: ~1.5 on a 2-D canvas 8 windows a side, where
    the paper's grid (stride window/8) costs ~50."""
    image = _picture(128, 128)
    kwargs = dict(scale=4, window=8, strength=0.5, num_inference_steps=2, output_type="latent")
    fast = md16.upscale(image, placement="shifted", generator=torch.Generator().manual_seed(0), **kwargs)
    assert fast.images.shape[-2:] == (64, 64)
    assert 1.0 <= fast.stats.coverage <= 1.6, fast.stats.coverage
    assert fast.parameters["placement"] == "shifted" and fast.parameters["weights"] == "gaussian"


def test_noise_inversion_costs_the_stated_extra_evaluations(md16):
    image = _picture(96, 64)
    kwargs = dict(scale=2, prompt="a lake", strength=0.5, num_inference_steps=4, output_type="latent")
    plain = md16.upscale(image, generator=torch.Generator().manual_seed(0), **kwargs)
    inverted = md16.upscale(image, noise_inversion=True, generator=torch.Generator().manual_seed(0), **kwargs)
    jobs_per_step = plain.stats.jobs // plain.stats.steps
    assert inverted.parameters["inversion_steps"] == 2  # as many as run: int(4 * 0.5)
    assert inverted.stats.jobs - plain.stats.jobs == 2 * jobs_per_step
    assert inverted.stats.evaluations - plain.stats.evaluations == 2 * 2 * jobs_per_step  # guided: 2 rows
    assert inverted.stats.coverage == plain.stats.coverage  # coverage stays per sampling step
    assert not torch.equal(inverted.images, plain.images)
    three = md16.upscale(
        image, noise_inversion=True, inversion_steps=3, generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert three.stats.jobs - plain.stats.jobs == 3 * jobs_per_step and three.parameters["inversion_steps"] == 3
    # the compute bound counts it before any model call
    limits = Limits(max_evaluations=plain.stats.jobs + jobs_per_step)
    options = UpscaleOptions(image=image, noise_inversion=True, limits=limits, **kwargs)
    with pytest.raises(ValueError, match=r"window evaluations \(.* \+ \d+ before sampling"):
        md16.generate(options)
    options = UpscaleOptions(image=image, limits=limits, **kwargs)
    md16.generate(options, generator=torch.Generator().manual_seed(0))  # without inversion it fits


@pytest.fixture(scope="module")
def demo():
    md = MultiDiffusion.from_pretrained("demo", device="cpu")
    md.set_progress_bar_config(disable=True)
    return md


def test_inverting_then_sampling_reconstructs_the_input_better_than_fresh_noise(demo):
    """DDIM at guidance 1 on one view (the demo's 64 px window): sampling from the inversion retraces
    it, so it ends near the image's own latents; fresh noise ends elsewhere. Measured on the demo
    model at 12 steps: RMS error 0.067 against fresh noise's 0.146; asserted with a margin."""
    from devtools.demo.scenes import render_scene, sample_scene

    errors = {False: [], True: []}
    for seed in (0, 1):
        image = Image.fromarray(render_scene(sample_scene(np.random.default_rng(seed)), height=64, width=64))
        z0 = encode_images(demo.pipe.vae, _pixels(image), generator=torch.Generator().manual_seed(seed), sample=True)
        for inversion in (False, True):
            out = demo.upscale(
                image,
                scale=1,
                prompt="a landscape",
                strength=0.5,
                num_inference_steps=12,
                guidance_scale=1.0,
                scheduler="ddim",
                noise_inversion=inversion,
                output_type="latent",
                generator=torch.Generator().manual_seed(seed),  # the same encoder sample as z0
            )
            assert out.stats.jobs == (12 if inversion else 6)  # one view; 6 steps run, 6 inverted
            errors[inversion].append(((out.images - z0) ** 2).mean().sqrt().item())
    fresh, inverted = np.mean(errors[False]), np.mean(errors[True])
    assert inverted < 0.6 * fresh, (inverted, fresh)


def test_stored_parameters_rebuild_the_same_upscale(md16, tmp_path, monkeypatch):
    from multidiffusion.tasks import task_for

    monkeypatch.setattr("multidiffusion.tasks.upscale.require_spandrel", lambda: None)  # no run here

    path, weights = tmp_path / "in.png", tmp_path / "2x.safetensors"
    _picture(64, 48).save(path)
    weights.write_bytes(b"weights")
    options = UpscaleOptions(image=str(path), scale=2, upscaler=str(weights), noise_inversion=True, strength=0.5)
    params = {"mode": "upscale", **task_for(options, md16.adapter).parameters()}
    assert params["upscaler"]["path"] == str(weights) and params["inversion_steps"] == 25  # int(50 * 0.5)
    stored = settings_from_parameters(params)
    assert stored.files == {"upscaler": "2x.safetensors"}  # a stored model file is never loaded: given again
    again = stored.options(None, upscaler=str(weights), image=str(path))  # files are given again
    for key in ("scale", "upscaler", "noise_inversion", "strength", "height", "width"):
        assert getattr(again, key) == getattr(options, key), key
    assert again.inversion_steps == 25 and again.image.sha256 == options.image.sha256


def _data_uri(image) -> str:
    """An image as stored settings may embed it (a PNG data URI)."""
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
