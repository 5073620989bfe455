"""Shared fixtures: tiny random-weight Stable Diffusion pipelines, built in-process (no downloads)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach the hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest
import torch

from devtools.components import tiny_sd_pipeline, tiny_sdxl_pipeline
from multidiffusion import MultiDiffusion

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def sd16():
    """Native latent size 16 (128 px): small windows, fast panoramas."""
    return tiny_sd_pipeline(sample_size=16)


@pytest.fixture(scope="session")
def sd64():
    """Native latent size 64 (512 px), the window diffusers' panorama pipeline hard-codes."""
    return tiny_sd_pipeline(sample_size=64)


@pytest.fixture(scope="session")
def md16(sd16):
    md = MultiDiffusion(sd16)
    md.set_progress_bar_config(disable=True)
    return md


@pytest.fixture(scope="session")
def tiny_model_dir(sd16, tmp_path_factory):
    """sd16 saved as a diffusers folder (safetensors), for loading and command-line tests."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    sd16.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def controlnet_dir(sd16, tmp_path_factory):
    """A tiny ControlNet for sd16 (its zeroed outputs re-randomised, so it matters) saved as a folder."""
    from .test_controlnet import _controlnet

    folder = tmp_path_factory.mktemp("tiny-controlnet")
    _controlnet(sd16.unet, 1).save_pretrained(folder)
    return folder


def noise(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A tiny random SDXL (native latent size 16) saved as a diffusers folder."""
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    tiny_sdxl_pipeline(sample_size=16).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _pil_pixel_cap():
    """The web app's launch() lowers PIL's process-wide decode cap to its --max-side; a test that
    launches it must not change what later tests decode. Nor the formats it makes PIL forget
    (:func:`multidiffusion.io.image_loader.restrict_decoders`)."""
    from PIL import Image

    Image.init()
    cap, formats, openers = Image.MAX_IMAGE_PIXELS, list(Image.ID), dict(Image.OPEN)
    yield
    Image.MAX_IMAGE_PIXELS = cap
    Image.ID[:] = formats
    Image.OPEN.clear()
    Image.OPEN.update(openers)


# -- diffusion transformers (FLUX.1, SD 3): tiny random pipelines, native window 16 latents ---------
@pytest.fixture(scope="session")
def flux16():
    """A tiny FLUX.1-dev-like pipeline (guidance embedding, dynamically shifted schedule)."""
    from devtools.dit_components import tiny_flux_pipeline

    return tiny_flux_pipeline(sample_size=16)


@pytest.fixture(scope="session")
def sd3_16():
    """A tiny SD 3-like pipeline (CLIP-L, CLIP-G, T5; fixed shift 3)."""
    from devtools.dit_components import tiny_sd3_pipeline

    return tiny_sd3_pipeline(sample_size=16)


@pytest.fixture(scope="session")
def dit_models(flux16, sd3_16):
    """MultiDiffusion around each tiny transformer, by family (T5 sequences of 16 tokens)."""
    out = {}
    for family, pipe in (("flux", flux16), ("sd3", sd3_16)):
        md = MultiDiffusion(pipe, max_sequence_length=16)
        md.set_progress_bar_config(disable=True)
        out[family] = md
    return out
