"""The edit task (``md.edit``): at one view equal to diffusers' QwenImageEditPipeline (max abs diff <=
1e-4), and on a canvas 3x the native size each view edits its own crop of the reference; the
command line's ``edit`` verb and its --from round trip. Tiny random components built in-process
(devtools/qwen_components.py: Qwen2.5-VL with a vision tower and its processor, nothing downloaded)."""

import json

import numpy as np
import pytest
import torch
from diffusers import QwenImageEditPipeline
from PIL import Image

from devtools.qwen_components import tiny_qwenimage_edit_pipeline, tiny_qwenimage_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.files.metadata import read_settings

from .test_scene import run_cli

N = 16  # the tiny model's native window, latent pixels (128 px)


@pytest.fixture(scope="module")
def edit_pipe():
    return tiny_qwenimage_edit_pipeline()


def _md(pipe, **options):
    md = MultiDiffusion(pipe, **options)
    md.set_progress_bar_config(disable=True)
    return md


def _image(h, w, seed=4):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_one_view_equals_the_edit_pipeline(edit_pipe, monkeypatch):
    """At the pipeline's reference size and one window covering the canvas, the view's crop of the
    reference is the pipeline's whole reference: the same latents. The pipeline's ~1 MP reference
    area is brought down to 256 x 256 on both sides (its calculate_dimensions, our reference_area)
    to keep the test small; the sizes the two compute at the real area are compared separately."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as module

    md = _md(edit_pipe)
    assert md.adapter.reference_area == 1024 * 1024
    for h, w in ((768, 1360), (1024, 1024), (4000, 3000)):
        width, height, _ = module.calculate_dimensions(1024 * 1024, w / h)
        assert md.adapter.reference_size((h, w)) == (height, width)
    real = module.calculate_dimensions
    monkeypatch.setattr(module, "calculate_dimensions", lambda area, ratio: real(256 * 256, ratio))
    md.adapter.reference_area = 256 * 256
    image, size = _image(256, 256), 256 // 8
    noise = torch.randn((1, 16, size, size), generator=torch.Generator().manual_seed(0))
    packed = QwenImageEditPipeline._pack_latents(noise, 1, 16, size, size)
    for negative, scale in ((" ", 4.0), (None, 1.0)):
        kwargs = dict(num_inference_steps=2, output_type="latent")
        expected = edit_pipe(
            image=image, prompt="make it red", negative_prompt=negative, true_cfg_scale=scale, latents=packed, **kwargs
        ).images
        expected = QwenImageEditPipeline._unpack_latents(expected, 256, 256, 8)[:, :, 0]
        md.set_vae_tiling(tile=size)  # the pipeline encodes the reference whole
        got = md.edit(
            image, "make it red", negative_prompt=negative, guidance_scale=scale, window=size, latents=noise, **kwargs
        )
        diff = float((got.images - expected).abs().max())
        assert got.images.shape == (1, 16, size, size)
        assert diff <= 1e-4, diff
        assert (got.images - noise).abs().max() > 0.1  # it did denoise
        assert got.stats.jobs == 2 and got.stats.evaluations == (4 if scale > 1 else 2)  # one view, 2 steps


def test_a_canvas_three_times_native_edits_each_view_with_its_crop(edit_pipe):
    md = _md(edit_pipe)
    md.adapter.reference_area = 128 * 128  # the whole-image reference at the tiny model's size
    image = _image(N * 8, 3 * N * 8)
    kwargs = dict(num_inference_steps=2, window=N, stride=N // 2, guidance_scale=1.0, generator=None)
    out = md.edit(image, "make it red", output_type="np", **{**kwargs, "generator": torch.Generator().manual_seed(1)})
    assert out.images.shape == (1, N * 8, 3 * N * 8, 3) and np.isfinite(out.images).all()
    assert out.stats.jobs == 2 * 5  # 5 windows of 16 at stride 8 across 48, each step
    assert out.parameters["task"] == "edit" and out.parameters["whole_reference"] is False
    x = torch.randn((1, 16, N, 3 * N), generator=torch.Generator().manual_seed(2))
    crops = md.edit(image, "make it red", output_type="latent", latents=x, **kwargs).images
    other = md.edit(_image(N * 8, 3 * N * 8, seed=9), "make it red", output_type="latent", latents=x, **kwargs)
    assert (crops - other.images).abs().max() > 1e-3  # the reference matters
    whole = md.edit(image, "make it red", output_type="latent", latents=x, whole_reference=True, **kwargs)
    assert whole.images.shape == (1, 16, N, 3 * N) and torch.isfinite(whole.images).all()
    assert (whole.images - crops).abs().max() > 1e-4  # the second reference changes the result


def test_several_prompts_each_read_the_image(edit_pipe):
    """Prompts of different lengths, each encoded with the image (one VL pass per text), padded."""
    prompts = ["make it red", "turn the whole scene into a watercolour"]
    out = _md(edit_pipe).edit(
        _image(N * 8, N * 8), prompts, num_inference_steps=2, guidance_scale=2.0, output_type="latent"
    )
    assert out.images.shape == (2, 16, N, N) and (out.images[0] - out.images[1]).abs().max() > 1e-4


def test_released_text_encoders_keep_the_prompt_of_one_image_only():
    """After release_text_encoders the kept embeddings serve the same prompt with the same image; the
    encoder read the image, so another image is refused in one line, not served stale embeddings."""
    md = _md(tiny_qwenimage_edit_pipeline())
    kwargs = dict(num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    image = _image(N * 8, N * 8)
    first = md.edit(image, "make it red", generator=torch.Generator().manual_seed(1), **kwargs)
    md.release_text_encoders()
    again = md.edit(image, "make it red", generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(first.images, again.images)
    with pytest.raises(ValueError, match="an edit's image"):
        md.edit(_image(N * 8, N * 8, seed=9), "make it red", **kwargs)


def test_editing_needs_an_editing_model():
    md = _md(tiny_qwenimage_pipeline())
    with pytest.raises(ValueError, match="editing needs a Qwen-Image-Edit model"):
        md.edit(_image(N * 8, N * 8), "make it red", num_inference_steps=1)
    with pytest.raises(ValueError, match="whole_reference must be True or False"):
        md.edit(_image(N * 8, N * 8), "make it red", whole_reference="yes")


def test_the_edit_verb_and_its_png_round_trip(edit_pipe, tmp_path, capsys, monkeypatch):
    """A folder naming QwenImageEditPipeline loads as the Edit model (its processor can't be saved
    here: transformers' Qwen2-VL video processor needs torchvision, so diffusers' loading is stubbed
    to hand back the in-memory pipeline after our folder checks)."""
    folder = tmp_path / "tiny-qwen-image-edit"
    tiny_qwenimage_pipeline().save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "QwenImageEditPipeline"}))
    monkeypatch.setattr(QwenImageEditPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: edit_pipe))
    source = tmp_path / "photo.png"
    _image(N * 8, 2 * N * 8).save(source)
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    args = ["--model", folder, "--seed", 3, "-q", "--steps", 2, "--guidance", 1.0, "--stride", 8]
    code, _, err = run_cli(["edit", "make it red", "-i", source, *args, "-o", first], capsys)
    assert code == 0, err
    stored = read_settings(first, "edit")
    assert stored.values["strength"] == 1.0 and stored.values["whole_reference"] is False
    assert Image.open(first).size == (2 * N * 8, N * 8)
    code, _, err = run_cli(["edit", "--from", first, "-i", source, "--model", folder, "-q", "-o", again], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
    code, _, err = run_cli(["edit", "make it red", "--model", folder, "-o", tmp_path / "x.png"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "--image" in err  # one line: the input is missing
