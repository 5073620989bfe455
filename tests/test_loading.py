"""Finding and loading models, offline: folders, repo ids, pickle refusal, wrapping pipelines."""

import json
import shutil

import pytest
import torch

from multidiffusion import ModelNotFoundError, MultiDiffusion
from multidiffusion.models.loading import default_dtype


def test_from_pretrained_folder(tiny_model_dir):
    md = MultiDiffusion.from_pretrained(tiny_model_dir, device="cpu")
    assert md.dtype == torch.float32 and md.device.type == "cpu"
    assert md.default_size == (128, 512)  # native 16 latents x 8, and 4x that wide
    assert type(md.pipe.scheduler).__name__ == "DDIMScheduler"  # the paper's sampler by default
    md.set_progress_bar_config(disable=True)
    out = md.panorama("x", width=256, num_inference_steps=1, output_type="np")
    assert out.images.shape == (1, 128, 256, 3)
    assert out.parameters["model"] == tiny_model_dir.name  # a name, never a path on this machine


def test_repo_not_in_cache_gives_one_clear_error():
    with pytest.raises(ModelNotFoundError) as info:
        MultiDiffusion.from_pretrained("nobody/no-such-model", device="cpu")
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message and "hf download nobody/no-such-model" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["./missing", "/no/such/dir", "model.safetensors"])
def test_missing_path(name):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        MultiDiffusion.from_pretrained(name, device="cpu")


def test_not_a_repo_id():
    with pytest.raises(ModelNotFoundError, match="neither 'demo', an existing folder or file, nor a Hugging Face"):
        MultiDiffusion.from_pretrained("not a valid id!!", device="cpu")


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt", ".pth"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ModelNotFoundError, match=r"pickle checkpoint.*allow_pickle=True"):
        MultiDiffusion.from_pretrained(path, device="cpu")


def test_pickle_only_folder_is_refused(sd16, tmp_path):
    folder = tmp_path / "bin-only"
    sd16.save_pretrained(folder, safe_serialization=False)
    # diffusers writes .bin; transformers 5 writes .safetensors whatever it is asked
    assert not any(folder.glob("unet/*.safetensors")) and any(folder.glob("unet/*.bin"))
    with pytest.raises(ModelNotFoundError, match=r"pickle weights only \(\.bin\) for .*unet"):
        MultiDiffusion.from_pretrained(folder, device="cpu")
    md = MultiDiffusion.from_pretrained(folder, device="cpu", allow_pickle=True)
    assert torch.equal(md.pipe.unet.conv_in.weight, sd16.unet.conv_in.weight)


def test_folder_without_weights(tiny_model_dir, tmp_path):
    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, folder)
    for f in folder.glob("unet/*.safetensors"):
        f.unlink()
    with pytest.raises(
        ModelNotFoundError, match=r"has no weights for unet \(no \.safetensors or pickle file in unet/\)"
    ):
        MultiDiffusion.from_pretrained(folder, device="cpu")


def test_other_pipeline_families_are_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "hunyuan"
    shutil.copytree(tiny_model_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "HunyuanDiTPipeline"}))
    with pytest.raises(
        ModelNotFoundError,
        match=r"HunyuanDiTPipeline; multidiffusion supports Stable Diffusion 1\.x "
        r".*\(StableDiffusionPipeline, .*FluxPipeline[^)]*\)",
    ):
        MultiDiffusion.from_pretrained(folder, device="cpu")


def test_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"no model_index\.json"):
        MultiDiffusion.from_pretrained(tmp_path, device="cpu")


def test_wrapping_a_sibling_pipeline_shares_its_components(sd16):
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline(**sd16.components)
    md = MultiDiffusion(img2img)
    assert md.pipe.unet is sd16.unet and md.pipe.text_encoder is sd16.text_encoder
    assert md.scheduler is img2img.scheduler  # the user's scheduler is kept


def test_wrapping_requires_the_components():
    with pytest.raises(ValueError, match="has no 'unet'"):
        MultiDiffusion(object())


def test_default_dtypes():
    assert default_dtype("cpu") == torch.float32
    assert default_dtype("cuda") == torch.float16


def _cached(repo):
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "model_index.json"), str)


@pytest.mark.real_model
@pytest.mark.parametrize("repo", ["stabilityai/stable-diffusion-2-base", "stable-diffusion-v1-5/stable-diffusion-v1-5"])
def test_real_checkpoint_panorama(repo):
    if not _cached(repo):
        pytest.skip(f"{repo} is not in the local Hugging Face cache")
    md = MultiDiffusion.from_pretrained(repo)
    out = md.panorama("a photo of the dolomites", width=1024, num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 512, 1024, 3)
