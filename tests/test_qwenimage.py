"""Qwen-Image at one view equals diffusers' QwenImagePipeline and QwenImageImg2ImgPipeline (max abs
diff <= 1e-4), and panoramas and region layouts run, on tiny random components built in-process
(devtools/qwen_components.py: a Qwen2.5-VL text encoder of width 32 over a character vocabulary,
a QwenImageTransformer2DModel of width 32, a causal 3D VAE of base width 8; nothing downloaded)."""

import numpy as np
import pytest
import torch
from diffusers import QwenImageImg2ImgPipeline
from PIL import Image

from devtools.qwen_components import tiny_qwenimage_pipeline
from multidiffusion import MultiDiffusion, Region
from multidiffusion.files.metadata import read_settings
from multidiffusion.models.flow import calculate_shift
from multidiffusion.models.qwenimage import QwenImageAdapter

from .family_checks import the_other_tasks_run
from .test_scene import run_cli

STEPS = 3
H = W = 16  # latent pixels: 128 px, the tiny model's native window
TEXT = 200  # tokens: a character tokenizer spends ~110 on the template past its dropped prefix


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwenimage_pipeline()


def _md(pipe, **options):
    md = MultiDiffusion(pipe, max_sequence_length=TEXT, **options)
    md.set_progress_bar_config(disable=True)
    return md


def _latents(seed=0, h=H, w=W):
    return torch.randn((1, 16, h, w), generator=torch.Generator().manual_seed(seed))


def _packed(x):
    """Our (B, 16, h, w) latents as the pipeline's packed (B, h/2 * w/2, 64) tokens."""
    return QwenImageImg2ImgPipeline._pack_latents(x, x.shape[0], 16, x.shape[-2], x.shape[-1])


def _unpacked(tokens, h=H, w=W):
    return QwenImageImg2ImgPipeline._unpack_latents(tokens, h * 8, w * 8, 8)[:, :, 0]


def _reference(pipe, latents, **kwargs):
    tokens = pipe(
        height=H * 8,
        width=W * 8,
        num_inference_steps=STEPS,
        latents=_packed(latents),
        output_type="latent",
        max_sequence_length=TEXT,
        **kwargs,
    ).images
    return _unpacked(tokens)


def _ours(pipe, latents, prompt, **kwargs):
    return _md(pipe).panorama(
        prompt, height=H * 8, width=W * 8, num_inference_steps=STEPS, latents=latents, output_type="latent", **kwargs
    )


@pytest.mark.parametrize("negative", ["", "blurry, low quality"])
def test_true_cfg_equals_the_pipeline(qwen, negative):
    """True CFG with the per-token norm rescale, μ from the view, the negative's own length."""
    x = _latents()
    expected = _reference(qwen, x, prompt="a red ball on the sand", negative_prompt=negative, true_cfg_scale=4.0)
    got = _ours(qwen, x, "a red ball on the sand", negative_prompt=negative, guidance_scale=4.0)
    diff = (got.images - expected).abs().max()
    assert got.images.shape == (1, 16, H, W)
    assert diff <= 1e-4, diff
    assert (got.images - x).abs().max() > 0.1  # it did denoise
    assert got.stats.evaluations == 2 * STEPS and got.stats.model_calls == STEPS


def test_without_guidance_equals_the_pipeline(qwen):
    x = _latents(1)
    expected = _reference(qwen, x, prompt="a lighthouse", true_cfg_scale=1.0)
    got = _ours(qwen, x, "a lighthouse", guidance_scale=1.0)
    assert (got.images - expected).abs().max() <= 1e-4
    assert got.stats.evaluations == STEPS


def test_the_norm_rescale_is_what_qwen_guidance_does(qwen):
    """Plain CFG (no rescale) is measurably different: the rescale is not a no-op on these weights."""
    adapter = QwenImageAdapter(qwen)
    u, c = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    plain = u + 4.0 * (c - u)
    guided = adapter.guide(u, c, 4.0)
    assert (guided - plain).abs().max() > 0.1
    tokens = _packed(guided).norm(dim=-1)
    torch.testing.assert_close(tokens, _packed(c).norm(dim=-1))  # each token has v_c's norm


def test_img2img_equals_the_img2img_pipeline(qwen):
    reference = QwenImageImg2ImgPipeline(**qwen.components)
    reference.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (H * 8, W * 8, 3), dtype=np.uint8))
    kwargs = dict(strength=0.6, num_inference_steps=5, output_type="latent")
    expected = reference(
        prompt="a lake",
        negative_prompt="",
        true_cfg_scale=3.0,
        image=image,
        height=H * 8,
        width=W * 8,
        generator=torch.Generator().manual_seed(5),
        max_sequence_length=TEXT,
        **kwargs,
    ).images
    got = _md(qwen).img2img(image, "a lake", guidance_scale=3.0, generator=torch.Generator().manual_seed(5), **kwargs)
    diff = (got.images - _unpacked(expected)).abs().max()
    assert diff <= 1e-4, diff
    assert got.stats.evaluations == 2 * 3  # strength 0.6 of 5 steps, two branches


def test_the_decode_equals_the_pipeline(qwen):
    x = _latents(2)
    expected = qwen(
        prompt="a lake",
        height=H * 8,
        width=W * 8,
        num_inference_steps=2,
        latents=_packed(x),
        output_type="np",
        max_sequence_length=TEXT,
    ).images
    got = (
        _md(qwen)
        .panorama(
            "a lake", height=H * 8, width=W * 8, num_inference_steps=2, latents=x, guidance_scale=1.0, output_type="np"
        )
        .images
    )
    assert got.shape == expected.shape == (1, H * 8, W * 8, 3)
    assert np.abs(got - expected).max() <= 1e-4


def test_the_schedule_shift_comes_from_the_view_not_the_canvas(qwen):
    seen = []
    _md(qwen).panorama(
        "a lake",
        height=H * 8,
        width=4 * W * 8,
        window=H,
        stride=W // 2,
        num_inference_steps=STEPS,
        guidance_scale=1.0,
        output_type="latent",
        callback_on_step_end=lambda md, i, t, kw: seen.append(float(t)),
    )
    _reference(qwen, _latents(), prompt="a lake")  # the pipeline at the view's size
    assert seen == pytest.approx(qwen.scheduler.timesteps.tolist(), abs=1e-4)
    canvas = type(qwen.scheduler).from_config(qwen.scheduler.config)
    QwenImageAdapter(qwen).set_timesteps(canvas, STEPS, "cpu", (H, 4 * W))  # what the whole canvas would get
    assert canvas.timesteps[1] > seen[1] + 0.1 and calculate_shift(64) < calculate_shift(256)


def test_one_step_is_refused_where_the_terminal_stretch_gives_nan_timesteps(qwen):
    """Qwen-Image's scheduler stretches the schedule to end at shift_terminal: at one step that divides
    by zero (QwenImagePipeline runs on NaN timesteps); here it is a one-line refusal."""
    with pytest.raises(ValueError, match=r"num_inference_steps: 1 steps give .*use 2 or more"):
        _md(qwen).panorama("a lake", height=H * 8, width=W * 8, num_inference_steps=1, output_type="latent")


def test_a_panorama_twice_the_width_and_a_region_layout_give_images(qwen):
    md = _md(qwen)
    kwargs = dict(height=H * 8, width=2 * W * 8, window=H, stride=W // 2, num_inference_steps=2)
    out = md.panorama("a lake", output_type="np", **kwargs)
    assert out.images.shape == (1, H * 8, 2 * W * 8, 3) and np.isfinite(out.images).all()
    assert out.stats.jobs == 2 * 3  # 3 views of 16 at stride 8 across 32, each step
    regions = [Region("a red ball", box=(0.0, 0.0, 0.5, 1.0))]
    out = md.regions(background="a beach", regions=regions, output_type="np", **kwargs)
    assert out.images.shape == (1, H * 8, 2 * W * 8, 3) and np.isfinite(out.images).all()
    assert out.stats.jobs > 2 * 3  # the region's views run besides the background's


def test_canvas_positions_place_each_view_on_the_canvas(qwen):
    x = _latents(3, w=2 * W)
    kwargs = dict(height=H * 8, width=2 * W * 8, window=H, stride=W // 2, num_inference_steps=2, output_type="latent")
    local = _md(qwen).panorama("a lake", latents=x, **kwargs)
    md = _md(qwen, positions="canvas")
    placed = md.panorama("a lake", latents=x, **kwargs)
    assert placed.parameters["positions"] == "canvas" and local.parameters["positions"] == "view"
    assert (placed.images - local.images).abs().max() > 1e-3
    assert placed.stats.model_calls == 2 * 3  # one transformer call per view position and step
    assert placed.stats.evaluations == local.stats.evaluations
    assert "forward" not in vars(qwen.transformer.pos_embed)  # the wrapper is gone after the call
    one = dict(kwargs, width=W * 8)  # one view covering the canvas: the same positions either way
    torch.testing.assert_close(
        md.panorama("a lake", latents=_latents(), **one).images,
        _md(qwen).panorama("a lake", latents=_latents(), **one).images,
        rtol=0,
        atol=1e-5,
    )


def test_the_family_is_recognised_with_its_defaults(qwen):
    md = _md(qwen)
    assert isinstance(md.adapter, QwenImageAdapter) and md.family == "qwenimage"
    assert md.adapter.sampling_defaults == (50, 4.0)
    assert md.adapter.native_latent_size == (H, W)
    assert md.adapter.parameters() == {"positions": "view", "max_sequence_length": TEXT}
    with pytest.raises(ValueError, match="max_sequence_length"):
        MultiDiffusion(qwen, max_sequence_length=0)
    with pytest.raises(ValueError, match="true_cfg_scale applies to"):
        MultiDiffusion(qwen, true_cfg_scale=2.0)  # another family's option


def test_other_tasks_and_the_png_round_trip(qwen, tmp_path, capsys):
    """Inpainting, outpainting, upscaling and the fast mode run through the same contract; a panorama
    saved by the command line from a Qwen-Image folder is made again from its PNG with the same pixels."""
    the_other_tasks_run(_md(qwen), H, W, 16)
    folder = tmp_path / "tiny-qwen-image"
    qwen.save_pretrained(folder)
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    args = ["--model", folder, "--width", 256, "--height", 128, "--seed", 3, "-q", "--steps", 2]
    args += ["--max-sequence-length", TEXT, "--positions", "canvas"]
    code, _, err = run_cli(["panorama", "a lake at dawn", *args, "-o", first], capsys)
    assert code == 0, err
    stored = read_settings(first, "panorama")
    assert stored.model_options == {"positions": "canvas", "max_sequence_length": TEXT}
    assert stored.values["guidance_scale"] == 4.0
    code, _, err = run_cli(["panorama", "--from", first, "--model", folder, "-q", "-o", again], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))


def test_the_causal_vae_decodes_and_encodes_in_tiles(qwen):
    """The VAE has no GroupNorm (RMS norms per pixel), so tiles need no canvas statistics: the exact and
    fast statistics give the same tiles; tiled and whole decodes differ only near the seams (the
    middle attention and the convolutions' reach past the overlap)."""
    from multidiffusion.vae.codec import decode_latents, encode_images

    adapter = QwenImageAdapter(qwen)
    z = _latents(5, w=2 * W)
    whole = decode_latents(adapter.vae, z, latent_format=adapter.latent_format)
    exact, fast = (
        decode_latents(adapter.vae, z, latent_format=adapter.latent_format, tile=H, overlap=4, norm_stats=mode)
        for mode in ("exact", "fast")
    )
    assert exact.shape == whole.shape == (1, 3, H * 8, 2 * W * 8) and torch.isfinite(exact).all()
    assert torch.equal(exact, fast)
    assert 0 < (exact - whole).abs().mean() < 0.05
    tiled = encode_images(adapter.vae, whole, latent_format=adapter.latent_format, tile=H, overlap=4)
    one = encode_images(adapter.vae, whole, latent_format=adapter.latent_format)
    assert tiled.shape == one.shape == z.shape and (tiled - one).abs().mean() < 0.05 * one.abs().mean()
