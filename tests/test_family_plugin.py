"""Adding a model family is one module and one registry line: a throwaway family registered in
process (SD's adapter under a new name, with one declared option) is then recognised, takes its
option, records it in results, and the PNG reader and the command line's flags know it, with no
other edit. (docs/adding-a-family.md)"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest
import torch

import multidiffusion.models as models
from multidiffusion import MultiDiffusion
from multidiffusion.files.metadata import settings_from_parameters
from multidiffusion.models.options import non_negative, option
from multidiffusion.models.sd import StableDiffusionAdapter, StableDiffusionOptions
from multidiffusion.vae.codec import decode_latents, encode_images
from multidiffusion.vae.latents import ScaledLatents


@dataclass(frozen=True)
class SharpOptions(StableDiffusionOptions):
    sharpness: float = option(1.0, check=non_negative, parse=float, help="how sharp (a test's option)")


class SharpAdapter(StableDiffusionAdapter):
    """SD under another name, for pipelines marked ``sharp``; its latents are scaled twice as much."""

    family = "sharp"
    label = "Sharp"
    description = "a throwaway test family (SD's UNet, marked sharp)"
    Options = SharpOptions

    @classmethod
    def claims(cls, pipe):
        return super().claims(pipe) and getattr(pipe, "sharp", False)

    @property
    def latent_format(self):
        plain = ScaledLatents.of(self.vae)
        return ScaledLatents(2 * plain.scaling_factor, plain.shift_factor)


@pytest.fixture
def sharp(monkeypatch, sd16):
    monkeypatch.setattr(models, "ADAPTERS", list(models.ADAPTERS))
    assert models.register_family(SharpAdapter) is SharpAdapter
    monkeypatch.setattr(sd16, "sharp", True, raising=False)
    return sd16


def test_the_registry_line_is_all_a_family_needs(sharp):
    adapter = models.adapter_for(sharp, sharpness=2.5)
    assert type(adapter) is SharpAdapter and adapter.sharpness == 2.5 and adapter.clip_skip is None
    assert adapter.parameters() == {"sharpness": 2.5}
    assert models.adapter_for(sharp).sharpness == 1.0  # the declared default
    assert models.family_options()["sharpness"] == ("sharp",)
    assert models.families()["sharp"] == SharpAdapter.description
    with pytest.raises(ValueError, match="sharpness must be a number ≥ 0, got -1"):
        models.adapter_for(sharp, sharpness=-1)
    sharp.sharp = False  # the same components unmarked: plain SD, which takes no sharpness
    assert type(models.adapter_for(sharp)) is StableDiffusionAdapter
    with pytest.raises(ValueError, match="sharpness applies to Sharp models; this model is Stable Diffusion 1"):
        models.adapter_for(sharp, sharpness=2.0)


def test_the_api_the_png_reader_and_the_flags_take_the_new_option(sharp, tiny_model_dir, monkeypatch):
    md = MultiDiffusion(sharp, sharpness=2.0)
    assert md.family == "sharp" and md.adapter.sharpness == 2.0
    with pytest.raises(ValueError, match="sharpness must be a number ≥ 0"):
        MultiDiffusion(sharp, sharpness=-2.0)
    options, rest = models.split_model_options({"sharpness": 2.0, "torch_dtype": torch.float32})
    assert options == {"sharpness": 2.0} and rest == {"torch_dtype": torch.float32}
    monkeypatch.setattr("diffusers.StableDiffusionPipeline.sharp", True, raising=False)  # every SD pipeline is
    loaded = MultiDiffusion.from_pretrained(tiny_model_dir, sharpness=3.0)  # the option, not a diffusers keyword
    assert loaded.family == "sharp" and loaded.adapter.sharpness == 3.0
    fields = {"prompt": "a lake", "sharpness": 2.0, "clip_skip": None}
    assert models.take_model_options(fields) == {"sharpness": 2.0} and fields == {"prompt": "a lake"}  # scene files
    stored = settings_from_parameters({"task": "panorama", "prompt": "a lake", "sharpness": 2.0}, "panorama")
    assert stored.model_options == {"sharpness": 2.0} and "sharpness" not in stored.values
    flags = {flag: (name, kwargs) for flag, name, kwargs in models.model_flags()}
    name, kwargs = flags["--sharpness"]
    assert name == "sharpness" and kwargs["help"].startswith("Sharp: how sharp")
    parser = argparse.ArgumentParser()
    for flag, _, kwargs in models.model_flags():
        parser.add_argument(flag, **kwargs)
    assert parser.parse_args(["--sharpness", "0.5"]).sharpness == 0.5
    assert parser.parse_args([]).sharpness is None  # unset: the family's default applies


@torch.no_grad()
def test_the_codec_maps_latents_as_the_family_says(sharp):
    adapter = models.adapter_for(sharp)
    vae = adapter.vae
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    plain = encode_images(vae, pixels)
    own = encode_images(vae, pixels, latent_format=adapter.latent_format)
    torch.testing.assert_close(own, 2 * plain)
    torch.testing.assert_close(
        decode_latents(vae, own, latent_format=adapter.latent_format), decode_latents(vae, plain)
    )
