"""FLUX.2 reference-image editing (``md.edit``): at one view equal to diffusers' Flux2Pipeline and
Flux2KleinPipeline with ``image=`` (max abs diff <= 1e-4), on a canvas 3x the native size each view
edits with its own crop of the reference (and optionally the whole image), and the command line's
``edit`` verb from a FLUX.2 folder regenerates from its PNG with ``--from``. Tiny random components
built in-process (:mod:`devtools.flux2_components`; nothing downloaded)."""

import numpy as np
import pytest
import torch
from PIL import Image

from devtools.flux2_components import tiny_flux2_klein_pipeline, tiny_flux2_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.files.metadata import read_settings
from multidiffusion.models.flux2 import patchify, unpatchify

from .test_scene import run_cli

N = 16  # the tiny model's native window, latent pixels (128 px)
TOKENS = 64  # text tokens, chat template included
STEPS = 2


@pytest.fixture(scope="module")
def flux2():
    return tiny_flux2_pipeline()


@pytest.fixture(scope="module")
def klein():
    return tiny_flux2_klein_pipeline()


def _md(pipe, **options):
    md = MultiDiffusion(pipe, max_sequence_length=TOKENS, **options)
    md.set_progress_bar_config(disable=True)
    return md


def _image(h, w, seed=4):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _noise(seed=0, h=N, w=N):
    return torch.randn((1, 32, h, w), generator=torch.Generator().manual_seed(seed))


def _one_view(pipe, image, noise, **kwargs):
    """Ours at one window over the image's canvas (the reference encoded whole, as the pipeline)."""
    md = _md(pipe)
    md.set_vae_tiling(tile=noise.shape[-1])
    out = md.edit(
        image,
        "make it red",
        window=noise.shape[-1],
        latents=noise,
        output_type="latent",
        num_inference_steps=STEPS,
        **kwargs,
    )
    return out, md.adapter.latent_format


def test_reference_size_is_the_pipelines(flux2):
    """Flux2Pipeline keeps a reference up to 1 MP, brings a larger one to 1 MP with its image
    processor, then floors each side to a multiple of 16: the size ours computes."""
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

    adapter = _md(flux2).adapter
    assert adapter.reference_area == 1024 * 1024
    for h, w in ((128, 200), (4000, 3000), (1024, 1024), (777, 1500)):
        image = Image.new("L", (w, h))
        if w * h > 1024 * 1024:
            image = Flux2ImageProcessor._resize_to_target_area(image, 1024 * 1024)
        width, height = image.size
        assert adapter.reference_size((h, w)) == (height // 16 * 16, width // 16 * 16)
    assert adapter.reference_size((4000, 3000)) == (1168, 880)


def test_dev_at_one_view_equals_the_pipeline_with_image(flux2):
    image, x = _image(N * 8, N * 8), _noise()
    tokens = flux2(
        image=image,
        prompt="make it red",
        latents=patchify(x),
        output_type="latent",
        num_inference_steps=STEPS,
        guidance_scale=2.5,
        max_sequence_length=TOKENS,
    ).images
    expected = unpatchify(tokens.transpose(1, 2).reshape(1, 128, N // 2, N // 2))
    got, _ = _one_view(flux2, image, x, guidance_scale=2.5)
    diff = float((got.images - expected).abs().max())
    print(f"FLUX.2 [dev] edit, one view vs Flux2Pipeline(image=): max|diff| = {diff:.2e}")
    assert got.images.shape == (1, 32, N, N) and diff <= 1e-4, diff
    assert (got.images - x).abs().max() > 0.1 and got.stats.evaluations == STEPS
    plain = _md(flux2).img2img(
        image,
        "make it red",
        strength=1.0,
        latents=x,
        output_type="latent",
        num_inference_steps=STEPS,
        guidance_scale=2.5,
    )
    assert (plain.images - got.images).abs().max() > 1e-3  # the reference tokens matter


@pytest.mark.parametrize("scale", [3.0, 1.0])
def test_klein_at_one_view_equals_the_pipeline_with_image(klein, scale):
    image, x = _image(N * 8, N * 8, seed=5), _noise(1)
    expected = klein(
        image=image,
        prompt="make it red",
        latents=patchify(x),
        output_type="latent",
        num_inference_steps=STEPS,
        guidance_scale=scale,
        max_sequence_length=TOKENS,
    ).images  # the VAE's own latents
    got, latent_format = _one_view(klein, image, x, guidance_scale=scale)
    diff = float((latent_format.to_vae(got.images) - expected).abs().max())
    print(f"FLUX.2 [klein] edit (guidance {scale}), one view vs Flux2KleinPipeline(image=): max|diff| = {diff:.2e}")
    assert diff <= 1e-4, diff
    assert got.stats.evaluations == (2 if scale > 1 else 1) * STEPS


@pytest.mark.parametrize("positions", ["view", "canvas"])
def test_a_canvas_three_times_native_edits_each_view_with_its_crop(flux2, positions):
    md = _md(flux2, positions=positions)
    md.adapter.reference_area = 128 * 128  # the whole-image reference at the tiny model's size
    image = _image(N * 8, 3 * N * 8)
    kwargs = dict(num_inference_steps=STEPS, window=N, stride=N // 2)
    out = md.edit(image, "make it red", output_type="np", generator=torch.Generator().manual_seed(1), **kwargs)
    assert out.images.shape == (1, N * 8, 3 * N * 8, 3) and np.isfinite(out.images).all()
    assert out.stats.jobs == STEPS * 5  # 5 windows of 16 at stride 8 across 48, each step
    assert out.parameters["task"] == "edit" and out.parameters["whole_reference"] is False
    x = _noise(2, N, 3 * N)
    crops = md.edit(image, "make it red", output_type="latent", latents=x, **kwargs).images
    other = md.edit(_image(N * 8, 3 * N * 8, seed=9), "make it red", output_type="latent", latents=x, **kwargs)
    assert (crops - other.images).abs().max() > 1e-3  # the reference matters
    whole = md.edit(image, "make it red", output_type="latent", latents=x, whole_reference=True, **kwargs)
    assert whole.images.shape == (1, 32, N, 3 * N) and torch.isfinite(whole.images).all()
    assert (whole.images - crops).abs().max() > 1e-4  # the second reference changes the result


def test_the_edit_verb_and_its_png_round_trip(flux2, tmp_path, capsys):
    folder = tmp_path / "tiny-flux2"
    flux2.save_pretrained(folder)
    source = tmp_path / "photo.png"
    _image(N * 8, 2 * N * 8).save(source)
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    args = ["--model", folder, "--seed", 3, "-q", "--steps", 2, "--stride", 8, "--max-sequence-length", TOKENS]
    code, _, err = run_cli(["edit", "make it red", "-i", source, *args, "-o", first], capsys)
    assert code == 0, err
    stored = read_settings(first, "edit")
    assert stored.values["strength"] == 1.0 and stored.values["guidance_scale"] == 4.0
    assert Image.open(first).size == (2 * N * 8, N * 8)
    code, _, err = run_cli(["edit", "--from", first, "-i", source, "--model", folder, "-q", "-o", again], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
