"""FLUX.2 [klein] at one view equals diffusers' Flux2KleinPipeline (max abs diff <= 1e-4) with true
classifier-free guidance (base) and without (step-distilled), and the tasks run, on tiny random
components built in-process (:mod:`devtools.flux2_components`: a 27-layer Qwen3 16 wide over a small
vocabulary with Qwen's chat template, the same tiny Flux2Transformer2DModel without a guidance
embedding, an AutoencoderKLFlux2 with random batch-norm statistics).

The pipeline's ``latents`` are patchified (B, 128, h/2, w/2); its ``output_type="latent"`` is the
VAE's own latents (B, 32, h, w), denormalised: compared with our canvas mapped by the latent format."""

import numpy as np
import pytest
import torch
from PIL import Image

from devtools.flux2_components import tiny_flux2_klein_pipeline
from multidiffusion import MultiDiffusion, Region
from multidiffusion.files.metadata import read_settings
from multidiffusion.models.flux2 import Flux2Adapter, patchify
from multidiffusion.models.flux2_klein import Flux2KleinAdapter
from multidiffusion.vae.codec import encode_images

from .family_checks import the_other_tasks_run
from .test_scene import run_cli

STEPS = 3
H = W = 16  # latent pixels: 128 px, the tiny model's native window
TOKENS = 64  # Qwen3 tokens, chat template included


@pytest.fixture(scope="module")
def klein():
    return tiny_flux2_klein_pipeline()


@pytest.fixture(scope="module")
def klein_distilled():
    return tiny_flux2_klein_pipeline(seed=1, distilled=True)


def _md(pipe, **options):
    md = MultiDiffusion(pipe, max_sequence_length=TOKENS, **options)
    md.set_progress_bar_config(disable=True)
    return md


def _latents(seed=0, h=H, w=W):
    return torch.randn((1, 32, h, w), generator=torch.Generator().manual_seed(seed))


def _reference(pipe, latents, **kwargs):
    """Flux2KleinPipeline from our canvas ``latents``: the VAE's latents it returns."""
    return pipe(
        height=latents.shape[-2] * 8,
        width=latents.shape[-1] * 8,
        latents=patchify(latents),
        output_type="latent",
        max_sequence_length=TOKENS,
        **kwargs,
    ).images


def _ours(pipe, latents, prompt, **kwargs):
    md = _md(pipe)
    out = md.panorama(prompt, height=H * 8, width=W * 8, latents=latents, output_type="latent", **kwargs)
    return out, md.adapter.latent_format.to_vae(out.images)


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_base_with_true_cfg_equals_the_pipeline(klein, negative):
    """v_u + g (v_c - v_u) with the empty negative, as the pipeline; a negative prompt given replaces
    it (the pipeline takes it as ``negative_prompt_embeds``)."""
    x = _latents()
    extra = {}
    if negative is not None:
        extra["negative_prompt_embeds"] = klein.encode_prompt(negative, max_sequence_length=TOKENS)[0]
    expected = _reference(klein, x, prompt="a red ball", num_inference_steps=STEPS, guidance_scale=3.0, **extra)
    got, vae_latents = _ours(
        klein, x, "a red ball", num_inference_steps=STEPS, guidance_scale=3.0, negative_prompt=negative
    )
    assert got.images.shape == (1, 32, H, W)
    assert (vae_latents - expected).abs().max() <= 1e-4
    assert got.stats.evaluations == 2 * STEPS and got.stats.model_calls == STEPS  # both branches, one call


def test_base_without_guidance_and_the_distilled_model_equal_the_pipeline(klein, klein_distilled):
    x = _latents(1)
    expected = _reference(klein, x, prompt="a lake", num_inference_steps=STEPS, guidance_scale=1.0)
    got, vae_latents = _ours(klein, x, "a lake", num_inference_steps=STEPS, guidance_scale=1.0)
    assert (vae_latents - expected).abs().max() <= 1e-4 and got.stats.evaluations == STEPS
    expected = _reference(klein_distilled, x, prompt="a lake", num_inference_steps=STEPS, guidance_scale=4.0)
    got, vae_latents = _ours(klein_distilled, x, "a lake", num_inference_steps=STEPS, guidance_scale=4.0)
    assert (vae_latents - expected).abs().max() <= 1e-4
    assert got.stats.evaluations == STEPS  # distilled: the scale is ignored, as the pipeline ignores it


def test_img2img_equals_the_pipeline_from_the_same_noised_start(klein):
    """No FLUX.2 img2img pipeline in diffusers 0.42 (Flux2KleinInpaintPipeline also conditions on the
    image as a reference): Flux2KleinPipeline from the same noised start on the same truncated
    schedule, as ``tests/test_flux2.py`` explains."""
    steps, strength = 5, 0.6
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (H * 8, W * 8, 3), dtype=np.uint8))
    noise = _latents(5)
    md = _md(klein)
    kwargs = dict(strength=strength, num_inference_steps=steps, latents=noise, guidance_scale=3.0)
    got = md.img2img(image, "a lake", generator=torch.Generator().manual_seed(5), output_type="latent", **kwargs)
    assert got.stats.evaluations == 2 * 3  # strength 0.6 of 5 steps, guided
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    fmt = md.adapter.latent_format
    z0 = encode_images(klein.vae, pixels, generator=torch.Generator().manual_seed(5), sample=True, latent_format=fmt)
    scheduler = type(klein.scheduler).from_config(klein.scheduler.config)
    md.adapter.set_timesteps(scheduler, steps, "cpu", (H, W))
    start = steps - 3
    x_start = scheduler.scale_noise(z0, scheduler.timesteps[start : start + 1], noise)
    sigmas = np.linspace(1.0, 1 / steps, steps)[start:]
    expected = _reference(klein, x_start, prompt="a lake", num_inference_steps=steps, sigmas=sigmas, guidance_scale=3.0)
    assert (fmt.to_vae(got.images) - expected).abs().max() <= 1e-4


def test_the_family_is_told_from_dev_with_its_defaults(klein, klein_distilled):
    md = _md(klein)
    assert type(md.adapter) is Flux2KleinAdapter and md.family == "flux2_klein"
    assert not Flux2Adapter.claims(klein) and Flux2KleinAdapter.claims(klein)
    assert md.adapter.sampling_defaults == (50, 4.0)
    assert _md(klein_distilled).adapter.sampling_defaults == (4, 1.0)
    assert md.adapter.parameters() == {"positions": "view", "max_sequence_length": TOKENS}
    with pytest.raises(ValueError, match="max_sequence_length"):
        MultiDiffusion(klein, max_sequence_length=513)


def test_panorama_regions_other_tasks_and_the_png_round_trip(klein_distilled, tmp_path, capsys):
    """A 2x panorama and a region layout give finite images of the canvas's size; inpainting,
    outpainting, upscaling and the fast mode run; a panorama saved by the command line from a
    distilled [klein] folder (its 4 steps by default) is made again from its PNG with the same pixels."""
    md = _md(klein_distilled)
    kwargs = dict(height=H * 8, width=2 * W * 8, window=H, stride=W // 2, num_inference_steps=2)
    pano = md.panorama("a lake", **kwargs)
    assert pano.images[0].size == (2 * W * 8, H * 8) and np.isfinite(np.asarray(pano.images[0])).all()
    layout = md.regions(background="a beach", regions=[Region("a red ball", box=(0.0, 0.0, 0.5, 1.0))], **kwargs)
    assert layout.images[0].size == (2 * W * 8, H * 8) and layout.stats.jobs > 2 * 3
    the_other_tasks_run(md, H, W, 32)
    folder = tmp_path / "tiny-flux2-klein"
    klein_distilled.save_pretrained(folder)
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    args = ["--model", folder, "--width", 256, "--height", 128, "--seed", 3, "-q", "--max-sequence-length", TOKENS]
    code, _, err = run_cli(["panorama", "a lake at dawn", *args, "-o", first], capsys)
    assert code == 0, err
    stored = read_settings(first, "panorama")
    assert stored.model_options == {"positions": "view", "max_sequence_length": TOKENS}
    assert stored.values["num_inference_steps"] == 4  # the distilled model's default
    code, _, err = run_cli(["panorama", "--from", first, "--model", folder, "-q", "-o", again], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))


def test_a_sibling_pipeline_runs_as_the_text_to_image_one(klein_distilled):
    """Flux2KleinInpaintPipeline's components are driven as Flux2KleinPipeline (``from_pipe``), the
    distilled flag kept."""
    from diffusers import Flux2KleinInpaintPipeline

    md = MultiDiffusion(Flux2KleinInpaintPipeline(**klein_distilled.components, is_distilled=True))
    assert type(md.pipe).__name__ == "Flux2KleinPipeline" and md.family == "flux2_klein"
    assert md.adapter.distilled and md.adapter.transformer is klein_distilled.transformer
