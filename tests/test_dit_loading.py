"""Loading diffusion transformers: diffusers folders (their own flow-matching scheduler), single-file
FLUX.1 / SD 3 transformers and quantization configs passed through to diffusers, up to the download."""

import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from safetensors.torch import save_file

from multidiffusion import MultiDiffusion
from multidiffusion.models.files import ModelNotFoundError
from multidiffusion.models.transformer_file import default_dit_config, dit_family


@pytest.fixture(scope="module")
def flux_dir(flux16, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-flux")
    flux16.save_pretrained(folder)
    return folder


def test_transformer_folders_load_with_their_own_scheduler(flux_dir):
    md = MultiDiffusion.from_pretrained(flux_dir, max_sequence_length=16)
    assert md.family == "flux"
    assert type(md.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"


def test_quantization_configs_pass_through_to_diffusers(flux_dir, flux16, monkeypatch):
    seen = {}

    def from_pretrained(cls, folder, **kwargs):
        seen.update(kwargs)
        return flux16

    monkeypatch.setattr(FluxPipeline, "from_pretrained", classmethod(from_pretrained))
    marker = object()  # stands for a PipelineQuantizationConfig: not inspected here, only handed on
    MultiDiffusion.from_pretrained(flux_dir, quantization_config=marker, max_sequence_length=16)
    assert seen["quantization_config"] is marker


def _shapes(*names):
    return {name: (2, 2) for name in names}


def test_single_file_transformers_are_recognised_by_their_tensor_names():
    dev = _shapes("double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight")
    assert dit_family(dev) == "flux" and default_dit_config("flux", dev) == "black-forest-labs/FLUX.1-dev"
    schnell = _shapes("model.diffusion_model.double_blocks.0.img_attn.qkv.weight")
    assert default_dit_config("flux", schnell) == "black-forest-labs/FLUX.1-schnell"
    large = _shapes(*(f"joint_blocks.{i}.x_block.attn.qkv.weight" for i in range(38)))
    assert dit_family(large) == "sd3" and default_dit_config("sd3", large).endswith("stable-diffusion-3.5-large")
    medium = _shapes("joint_blocks.0.x_block.attn2.qkv.weight")
    assert default_dit_config("sd3", medium).endswith("stable-diffusion-3.5-medium")
    assert dit_family(_shapes("model.diffusion_model.input_blocks.0.0.weight")) is None


@pytest.fixture
def flux_file(tmp_path):
    path = tmp_path / "my-flux-finetune.safetensors"
    save_file(
        {"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2), "guidance_in.in_layer.weight": torch.zeros(2)}, path
    )
    return path


def test_a_single_file_transformer_without_its_configuration_says_how_to_get_it(flux_file):
    with pytest.raises(
        ModelNotFoundError, match=r"single-file FLUX\.1 transformer.*black-forest-labs/FLUX\.1-dev.*config="
    ):
        MultiDiffusion.from_pretrained(flux_file, device="cpu")


def test_a_single_file_transformer_that_does_not_fit_its_configuration(flux_file, flux_dir):
    with pytest.raises(ModelNotFoundError, match="does not fit the architecture of config"):
        MultiDiffusion.from_pretrained(flux_file, device="cpu", config=str(flux_dir))


def test_single_file_transformers_go_through_diffusers(flux_file, flux_dir, flux16, monkeypatch):
    """The transformer from the file (with the quantization config), the rest from the config."""
    calls = {}

    def transformer_from_file(cls, path, **kwargs):
        calls["transformer"] = (path, kwargs)
        return flux16.transformer

    def pipeline_from_pretrained(cls, source, **kwargs):
        calls["pipeline"] = (source, kwargs)
        return flux16

    monkeypatch.setattr(FluxTransformer2DModel, "from_single_file", classmethod(transformer_from_file))
    monkeypatch.setattr(FluxPipeline, "from_pretrained", classmethod(pipeline_from_pretrained))
    marker = object()
    md = MultiDiffusion.from_pretrained(flux_file, config=str(flux_dir), quantization_config=marker, device="cpu")
    assert md.family == "flux"
    path, kwargs = calls["transformer"]
    assert path == str(flux_file) and kwargs["config"] == str(flux_dir) and kwargs["subfolder"] == "transformer"
    assert kwargs["quantization_config"] is marker and kwargs["dtype"] == torch.float32
    source, kwargs = calls["pipeline"]
    assert source == str(flux_dir) and kwargs["transformer"] is flux16.transformer
    assert "quantization_config" not in kwargs
