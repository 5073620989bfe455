"""Single-file checkpoints of SD 1.x, 2.x and SDXL, written by the test in the original layout; a Chroma
transformer file read by diffusers' from_single_file (Z-Image's and GGUF files: test_quantized_loading.py)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from devtools.components import tiny_sd_pipeline, tiny_sdxl_pipeline
from multidiffusion import ModelNotFoundError, MultiDiffusion
from multidiffusion.models.single_file import checkpoint_family, default_config
from multidiffusion.options import PanoramaOptions
from multidiffusion.tasks.common import window_and_stride

from .conftest import noise
from .original_format import write_original_checkpoint


@pytest.fixture(scope="module")
def xl_config_dir(tiny_sdxl_dir):
    """The configuration for single-file SDXL checkpoints."""
    return tiny_sdxl_dir


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Original-format checkpoints of models with other weights (seeds) than the config folders."""
    folder = tmp_path_factory.mktemp("checkpoints")
    pipes = {
        "sd1": tiny_sd_pipeline(sample_size=16, seed=5),
        "sd2": tiny_sd_pipeline(sample_size=16, seed=6, prediction_type="v_prediction"),
        "sdxl": tiny_sdxl_pipeline(sample_size=16, seed=5),
    }
    paths = {
        family: write_original_checkpoint(pipe, folder / f"{family}.safetensors", family)
        for family, pipe in pipes.items()
    }
    return pipes, paths


def _same_output(loaded: MultiDiffusion, original, **kwargs):
    reference = MultiDiffusion(original, scheduler="ddim")
    latents = noise((1, 4, 16, 32), seed=7)
    args = dict(height=128, width=256, num_inference_steps=2, output_type="latent", **kwargs)
    for md in (loaded, reference):
        md.set_progress_bar_config(disable=True)
    expected = reference.panorama("a red barn", latents=latents.clone(), **args).images
    got = loaded.panorama("a red barn", latents=latents.clone(), **args).images
    torch.testing.assert_close(
        got, expected, rtol=0, atol=2e-5
    )  # float rounding: the shared guidance prefix runs at half batch


def test_sd1_single_file(files, tiny_model_dir, sd16):
    pipes, paths = files
    md = MultiDiffusion.from_pretrained(paths["sd1"], config=str(tiny_model_dir), device="cpu")
    assert md.family == "sd" and type(md.pipe.scheduler).__name__ == "DDIMScheduler"
    # the weights are the file's, not the config folder's
    assert torch.equal(md.pipe.unet.conv_in.weight, pipes["sd1"].unet.conv_in.weight)
    assert not torch.equal(md.pipe.unet.conv_in.weight, sd16.unet.conv_in.weight)
    _same_output(md, pipes["sd1"])


def test_sdxl_single_file(files, xl_config_dir):
    pipes, paths = files
    md = MultiDiffusion.from_pretrained(paths["sdxl"], config=str(xl_config_dir), device="cpu")
    assert md.family == "sdxl" and type(md.pipe).__name__ == "StableDiffusionXLPipeline"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        loaded, original = getattr(md.pipe, name).state_dict(), getattr(pipes["sdxl"], name).state_dict()
        assert loaded.keys() == original.keys()
        assert all(torch.equal(loaded[k], original[k]) for k in original), name
    _same_output(md, pipes["sdxl"])


def test_sd2_single_file_takes_prediction_type_from_config_or_override(files, tiny_model_dir):
    pipes, paths = files
    md = MultiDiffusion.from_pretrained(paths["sd2"], config=str(tiny_model_dir), device="cpu")
    assert md.adapter.prediction_type == "epsilon"  # the config's: the file can't tell
    md = MultiDiffusion.from_pretrained(
        paths["sd2"], config=str(tiny_model_dir), device="cpu", prediction_type="v_prediction"
    )
    assert md.adapter.prediction_type == "v_prediction"
    assert md.pipe.text_encoder.state_dict().keys() == pipes["sd2"].text_encoder.state_dict().keys()
    _same_output(md, pipes["sd2"])


def test_prediction_type_override_on_a_folder(tiny_model_dir):
    md = MultiDiffusion.from_pretrained(tiny_model_dir, device="cpu", prediction_type="v_prediction")
    assert md.pipe.scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type must be one of epsilon, v_prediction, sample, got 'v'"):
        MultiDiffusion.from_pretrained(tiny_model_dir, device="cpu", prediction_type="v")


def test_sdxl_diffusers_folder(xl_config_dir):
    md = MultiDiffusion.from_pretrained(xl_config_dir, device="cpu")
    assert md.family == "sdxl" and md.default_size == (128, 512)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("v2-1_512-ema-pruned.safetensors", "stabilityai/stable-diffusion-2-1-base"),
        ("512-base-ema.safetensors", "stabilityai/stable-diffusion-2-1-base"),
        ("v2-1_768-ema-pruned.safetensors", "stabilityai/stable-diffusion-2-1"),
        ("768-v-ema.safetensors", "stabilityai/stable-diffusion-2-1"),
        ("my-finetune.safetensors", "stabilityai/stable-diffusion-2-1"),
    ],
)
def test_sd2_default_config_rule(name, expected):
    assert default_config("sd2", Path(name)) == expected


@pytest.mark.parametrize(
    ("family", "repo"), [("sd1", "stable-diffusion-v1-5/stable-diffusion-v1-5"), ("sdxl", "stable-diffusion-xl-base")]
)
def test_single_file_without_config_offline_is_one_clear_error(files, family, repo):
    _, paths = files
    with pytest.raises(ModelNotFoundError) as info:
        MultiDiffusion.from_pretrained(paths[family], device="cpu")
    message = str(info.value)
    assert repo in message and "config=" in message and "\n" not in message


def test_sdxl_checkpoint_with_an_sd_config_is_refused(files, tiny_model_dir):
    _, paths = files
    with pytest.raises(ModelNotFoundError, match=r"is an SDXL checkpoint but config .* is an SD 1\.x/2\.x model"):
        MultiDiffusion.from_pretrained(paths["sdxl"], config=str(tiny_model_dir), device="cpu")


def test_sd_checkpoint_with_an_sdxl_config_is_refused(files, xl_config_dir):
    _, paths = files
    with pytest.raises(ModelNotFoundError, match=r"is an SD 1\.x checkpoint but config .* is an SDXL model"):
        MultiDiffusion.from_pretrained(paths["sd1"], config=str(xl_config_dir), device="cpu")


def _edited_config(source, target, **unet_changes):
    shutil.copytree(source, target)
    path = target / "unet" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **unet_changes}))
    return target


def test_cross_attention_width_mismatch_is_refused_up_front(files, tiny_model_dir, tmp_path):
    _, paths = files
    config = _edited_config(tiny_model_dir, tmp_path / "wide", cross_attention_dim=64)
    with pytest.raises(ModelNotFoundError, match="cross-attention width is 32, the config's 64"):
        MultiDiffusion.from_pretrained(paths["sd1"], config=str(config), device="cpu")


def test_other_shape_mismatch_is_one_clear_error(files, tiny_model_dir, tmp_path):
    _, paths = files
    config = _edited_config(tiny_model_dir, tmp_path / "narrow", block_out_channels=[32, 32])
    with pytest.raises(ModelNotFoundError) as info:
        MultiDiffusion.from_pretrained(paths["sd1"], config=str(config), device="cpu")
    message = str(info.value)
    assert "does not fit the architecture of config" in message and "\n" not in message


def test_pickle_checkpoint_loads_when_allowed(files, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    pipes, paths = files
    path = tmp_path / "sd1.ckpt"
    torch.save({"state_dict": load_file(paths["sd1"])}, path)
    with pytest.raises(ModelNotFoundError, match="pickle checkpoint"):
        MultiDiffusion.from_pretrained(path, config=str(tiny_model_dir), device="cpu")
    md = MultiDiffusion.from_pretrained(path, config=str(tiny_model_dir), device="cpu", allow_pickle=True)
    assert torch.equal(md.pipe.unet.conv_in.weight, pipes["sd1"].unet.conv_in.weight)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ({"conditioner.embedders.0.model.text_projection": (1280, 1280)}, "SDXL refiner"),
        (
            {
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
                "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3),
            },
            "inpainting or depth SD 1.x model",
        ),
        ({"model.diffusion_model.out.2.weight": (4, 320, 3, 3)}, "not a Stable Diffusion checkpoint"),
    ],
)
def test_checkpoints_the_engine_cannot_drive(shapes, match):
    with pytest.raises(ModelNotFoundError, match=match):
        checkpoint_family(shapes)


def test_family_from_tensor_names(files):
    _, paths = files
    assert {family: checkpoint_family(path) for family, path in paths.items()} == {
        "sd1": "sd1",
        "sd2": "sd2",
        "sdxl": "sdxl",
    }


def test_corrupt_safetensors_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelNotFoundError, match=r"broken\.safetensors is not a readable \.safetensors file"):
        MultiDiffusion.from_pretrained(path, device="cpu")


def test_sd2_768_v_shaped_model_windows_follow_sample_size():
    # SD 2.x 768-v: v-prediction and 96x96 native latents; here 24x24, the same ratio to SD's 64 as 96 is
    pipe = tiny_sd_pipeline(sample_size=24, prediction_type="v_prediction", seed=4)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    assert md.default_size == (192, 768)
    assert window_and_stride(PanoramaOptions(prompt="x"), md.adapter) == ((24, 24), (3, 3))
    latents = noise((1, 4, 24, 24), seed=8)
    expected = pipe("a tree", num_inference_steps=2, latents=latents.clone(), output_type="latent").images
    got = md.panorama(
        "a tree", height=192, width=192, num_inference_steps=2, latents=latents.clone(), output_type="latent"
    ).images
    torch.testing.assert_close(
        got, expected, rtol=0, atol=2e-5
    )  # float rounding: the shared guidance prefix runs at half batch


def _fake_cache(monkeypatch, tmp_path, repo, folder):
    """``folder`` as the cached snapshot of ``repo`` in a Hugging Face cache under tmp_path."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    entry = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, entry / "snapshots" / "0123abc")
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


def test_single_file_uses_the_cached_base_config_offline(files, tiny_sdxl_dir, monkeypatch, tmp_path):
    pipes, paths = files
    _fake_cache(monkeypatch, tmp_path, "stabilityai/stable-diffusion-xl-base-1.0", tiny_sdxl_dir)
    md = MultiDiffusion.from_pretrained(paths["sdxl"], device="cpu")
    assert md.family == "sdxl"
    assert torch.equal(md.pipe.unet.conv_in.weight, pipes["sdxl"].unet.conv_in.weight)


def test_cached_base_config_of_another_architecture_is_refused(files, tiny_model_dir, monkeypatch, tmp_path):
    _, paths = files
    _fake_cache(monkeypatch, tmp_path, "stabilityai/stable-diffusion-xl-base-1.0", tiny_model_dir)
    with pytest.raises(ModelNotFoundError, match=r"is an SDXL checkpoint but config .* is an SD 1\.x/2\.x model"):
        MultiDiffusion.from_pretrained(paths["sdxl"], device="cpu")


class _Payload:
    """Unpickling this creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_component_missing_from_the_file_is_not_unpickled_from_the_config(tiny_sdxl_dir, tmp_path):
    """An SDXL file without its first text encoder (conditioner.embedders.0.*): diffusers would load it
    from the config folder, and there it is a pickle; refused without allow_pickle, and not unpickled."""
    from safetensors.torch import load_file, save_file

    path = write_original_checkpoint(tiny_sdxl_pipeline(sample_size=16, seed=5), tmp_path / "xl.safetensors", "sdxl")
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("conditioner.embedders.0.")}
    save_file(state, str(path))
    config, marker = tmp_path / "config", tmp_path / "marker"
    shutil.copytree(tiny_sdxl_dir, config)
    for f in config.glob("text_encoder/*.safetensors"):
        f.unlink()
    torch.save({"weights": _Payload(marker)}, config / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(ModelNotFoundError, match=r"has no text_encoder weights, so they would come from config .*"):
        MultiDiffusion.from_pretrained(path, config=str(config), device="cpu")
    assert not marker.exists()


def test_chroma_single_file_transformers_load_through_diffusers(tmp_path):
    """A Chroma transformer file (here in diffusers' names, told from FLUX.1's by its approximator) is
    read by ChromaTransformer2DModel.from_single_file itself, the rest from the folder: the same model."""
    from safetensors.torch import save_file

    from .test_chroma import TEXT, tiny_chroma_pipeline

    chroma = tiny_chroma_pipeline()
    folder = tmp_path / "tiny-chroma"
    chroma.save_pretrained(folder)
    path = tmp_path / "chroma-unlocked.safetensors"
    save_file({k: v.contiguous() for k, v in chroma.transformer.state_dict().items()}, path)
    loaded = MultiDiffusion.from_pretrained(path, config=str(folder), device="cpu", max_sequence_length=TEXT)
    assert loaded.family == "chroma" and type(loaded.pipe.transformer).__name__ == "ChromaTransformer2DModel"
    reference = MultiDiffusion(chroma, max_sequence_length=TEXT)
    latents = noise((1, 16, 16, 16), seed=3)
    args = dict(height=128, width=128, num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    for md in (loaded, reference):
        md.set_progress_bar_config(disable=True)
    got = loaded.panorama("a red barn", latents=latents.clone(), **args).images
    assert torch.equal(got, reference.panorama("a red barn", latents=latents.clone(), **args).images)


def test_a_model_file_that_is_no_regular_file_is_refused_unopened(tmp_path):
    import os

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    with pytest.raises(ModelNotFoundError, match=r"model file model\.safetensors is not a regular file"):
        MultiDiffusion.from_pretrained(fifo, device="cpu")
