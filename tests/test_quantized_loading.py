"""Loading what users have, on a tiny random Z-Image built in-process (nothing downloaded): single-file
transformers in diffusers' names and in the makers' / ComfyUI's, a GGUF quantization of one (written
here with the ``gguf`` package's writer and quantizer), torchao and bitsandbytes configurations,
quantized transformers passed to ``from_pretrained`` and ``MultiDiffusion(pipe)``, and diffusers'
model and group offloading. Each loaded model runs a one-view panorama compared with the model it
was made from, or with ZImagePipeline around the same quantized transformer."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ZImagePipeline, ZImageTransformer2DModel
from safetensors.torch import save_file

from multidiffusion import ModelNotFoundError, MultiDiffusion

from .test_loading_errors import online_env, silent_hub  # noqa: F401  (silent_hub: a fixture)
from .test_scene import run_cli
from .test_zimage import tiny_zimage_pipeline

H = W = 16  # latent pixels: the tiny model's native window (128 px)
STEPS = 2
PROMPT = "a lighthouse"


@pytest.fixture(scope="module")
def zimage():
    return tiny_zimage_pipeline()


@pytest.fixture(scope="module")
def zimage_dir(zimage, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-z-image")
    zimage.save_pretrained(folder)
    return folder


def _latents(w=W):
    return torch.randn((1, 16, H, w), generator=torch.Generator().manual_seed(0))


def _panorama(md, w=W, output_type="latent"):
    """A panorama of windows W wide, side by side (w = 2 W: two views)."""
    md.set_progress_bar_config(disable=True)
    out = md.panorama(
        PROMPT,
        height=H * 8,
        width=w * 8,
        stride=W,
        num_inference_steps=STEPS,
        latents=_latents(w),
        output_type=output_type,
    )
    return out.images


def _ours(pipe, w=W, output_type="latent"):
    return _panorama(MultiDiffusion(pipe, max_sequence_length=64), w, output_type)


def _pipeline(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=PROMPT,
        height=H * 8,
        width=W * 8,
        num_inference_steps=STEPS,
        latents=_latents(),
        output_type="latent",
        max_sequence_length=64,
    ).images


@pytest.fixture(scope="module")
def reference(zimage):
    return _ours(zimage)


def _with_transformer(pipe, transformer):
    out = ZImagePipeline(**{**pipe.components, "transformer": transformer})
    out.default_sample_size = H
    return out


# -- single-file transformers ------------------------------------------------------------------------

# diffusers' names -> Tongyi's / ComfyUI's: convert_z_image_transformer_checkpoint_to_diffusers undone
_ORIGINAL_NAMES = {
    "all_final_layer.2-1.": "final_layer.",
    "all_x_embedder.2-1.": "x_embedder.",
    ".attention.to_out.0.": ".attention.out.",
    ".attention.norm_k.": ".attention.k_norm.",
    ".attention.norm_q.": ".attention.q_norm.",
}


def original_state_dict(transformer, prefix="model.diffusion_model."):
    """The transformer's weights as the makers' files name them: fused q/k/v, their own names, under
    ComfyUI's ``model.diffusion_model.``, with the final norm diffusers drops."""
    state = {}
    for name, tensor in transformer.state_dict().items():
        if ".attention.to_k." in name or ".attention.to_v." in name:
            continue
        if ".attention.to_q." in name:
            parts = [transformer.state_dict()[name.replace("to_q", p)] for p in ("to_q", "to_k", "to_v")]
            name, tensor = name.replace("to_q", "qkv"), torch.cat(parts)
        for ours, theirs in _ORIGINAL_NAMES.items():
            name = name.replace(ours, theirs)
        state[prefix + name] = tensor.clone().contiguous()
    state[prefix + "norm_final.weight"] = torch.ones(transformer.config.dim)
    return state


@pytest.mark.parametrize("names", ["diffusers", "diffusers under ComfyUI's prefix", "original"])
def test_z_image_single_file_transformers_load_through_diffusers(names, zimage, zimage_dir, reference, tmp_path):
    """The file's transformer read by ZImageTransformer2DModel.from_single_file (its converter for the
    makers' names; diffusers' names as they are, under ComfyUI's prefix too), the rest from the
    folder: the same model, the same result."""
    path = tmp_path / "z-image.safetensors"
    state = zimage.transformer.state_dict()
    if names == "original":
        state = original_state_dict(zimage.transformer)
    elif names != "diffusers":
        state = {"model.diffusion_model." + k: v for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    md = MultiDiffusion.from_pretrained(path, config=str(zimage_dir), device="cpu", max_sequence_length=64)
    assert md.family == "zimage" and type(md.pipe).__name__ == "ZImagePipeline"
    assert (_panorama(md) - reference).abs().max().item() == 0.0


def test_a_z_image_file_without_its_configuration_names_turbo_and_config(zimage, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "z_image_turbo_bf16.safetensors"
    save_file({"model.diffusion_model.x_pad_token": torch.zeros(1, 64)}, path)
    with pytest.raises(ModelNotFoundError, match=r"single-file Z-Image transformer.*Tongyi-MAI/Z-Image-Turbo.*config="):
        MultiDiffusion.from_pretrained(path, device="cpu")


_TRANSFORMER_FILE_ON_A_SILENT_HUB = """
import json, sys, time
from diffusers import DiffusionPipeline  # imported first (seconds): the bound is on waiting for the hub
from safetensors.torch import save_file
import torch
from multidiffusion import ModelNotFoundError, MultiDiffusion
from multidiffusion.models import hub

hub.HUB_TIMEOUT_S = 2.0
save_file({"x_pad_token": torch.zeros(1, 64)}, sys.argv[1])  # a Z-Image file; its configuration is not cached
start = time.monotonic()
try:
    MultiDiffusion.from_pretrained(sys.argv[1], device="cpu")
    error = None
except ModelNotFoundError as exc:
    error = str(exc)
print(json.dumps({"elapsed": time.monotonic() - start, "error": error}))
"""


def test_a_transformer_files_configuration_is_asked_of_the_hub_within_the_bound(silent_hub, tmp_path):  # noqa: F811
    """Without config= the configuration repo is downloaded; the hub must answer within the loader's
    bound first (before: diffusers asked it with no limit, as for the SD checkpoints' configurations)."""
    import json
    import subprocess

    url, accepted = silent_hub
    args = [sys.executable, "-c", _TRANSFORMER_FILE_ON_A_SILENT_HUB, str(tmp_path / "z-image.safetensors")]
    env = online_env(url, tmp_path / "hf-home")
    try:
        run = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("still waiting for the silent hub after 120 s")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert accepted, "the hub was never asked"
    message = result["error"]
    assert message is not None and "\n" not in message
    assert "single-file Z-Image transformer" in message and "Tongyi-MAI/Z-Image-Turbo" in message
    assert f"{url} did not answer within 2 s" in message and "config=" in message
    assert result["elapsed"] < 2 + 5


# -- GGUF ----------------------------------------------------------------------------------------------


def write_gguf(state: dict[str, torch.Tensor], path, quant: str = "Q8_0") -> None:
    """A GGUF file as the GGUF converters write one: the linear layers' weights quantized (``quant``),
    everything else (norms, biases, pad tokens) in float32."""
    gguf = pytest.importorskip("gguf")
    kind = gguf.GGMLQuantizationType[quant]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    writer = gguf.GGUFWriter(str(path), arch="z_image")
    for name, tensor in state.items():
        array = tensor.float().numpy()
        if name.endswith(".weight") and array.ndim == 2 and array.shape[-1] % block == 0:
            packed = gguf.quantize(array, kind)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=kind)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def gguf_file(zimage, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "z-image-turbo-Q8_0.gguf"
    write_gguf(original_state_dict(zimage.transformer, prefix=""), path)
    return path


@pytest.fixture(scope="module")
def gguf_md(gguf_file, zimage_dir):
    return MultiDiffusion.from_pretrained(gguf_file, config=str(zimage_dir), device="cpu", max_sequence_length=64)


def _quantized(transformer) -> list[str]:
    return [n for n, p in transformer.named_parameters() if type(p).__name__ == "GGUFParameter"]


def _bytes(transformer) -> int:
    return sum(p.numel() * p.element_size() for p in transformer.parameters())


def test_a_gguf_transformer_stays_quantized_and_runs_as_its_pipeline(gguf_md, zimage, reference):
    """Weights kept as Q8_0 blocks (uint8), dequantized layer by layer in the compute dtype: the result
    equals ZImagePipeline around the same transformer, and is near the float32 model's."""
    transformer = gguf_md.pipe.transformer
    quantized = _quantized(transformer)
    assert "layers.0.attention.to_q.weight" in quantized and "all_x_embedder.2-1.weight" in quantized
    assert all(p.dtype == torch.uint8 for n, p in transformer.named_parameters() if n in quantized)
    assert _bytes(transformer) < 0.5 * _bytes(zimage.transformer)
    assert gguf_md.dtype == torch.float32  # the compute dtype, not the stored uint8
    ours = _panorama(gguf_md)
    assert (ours - _pipeline(_with_transformer(zimage, transformer))).abs().max().item() <= 1e-4
    assert 0 < (ours - reference).abs().max().item() < 0.1  # Q8_0's rounding, not another model


def test_a_gguf_transformer_computes_in_the_dtype_asked_for(gguf_file, zimage_dir):
    md = MultiDiffusion.from_pretrained(
        gguf_file, config=str(zimage_dir), device="cpu", torch_dtype=torch.bfloat16, max_sequence_length=64
    )
    assert md.dtype == torch.bfloat16 and _quantized(md.pipe.transformer)
    assert md.pipe.transformer.all_x_embedder["2-1"].weight.quant_type.name == "Q8_0"
    assert torch.isfinite(_panorama(md).float()).all()


def test_a_gguf_model_file_on_the_command_line(gguf_file, zimage_dir, tmp_path, capsys):
    out = tmp_path / "pano.png"
    args = ["--model", gguf_file, "--config", zimage_dir, "--width", W * 16, "--height", H * 8, "--stride", W]
    args += ["--steps", STEPS]
    code, _, err = run_cli(["panorama", PROMPT, *args, "--max-sequence-length", 64, "-q", "-o", out], capsys)
    assert code == 0, err
    from PIL import Image

    assert Image.open(out).size == (W * 16, H * 8)


def test_gguf_files_that_are_no_transformer_read_here_are_refused_by_name(tmp_path):
    pytest.importorskip("gguf")
    unet = tmp_path / "sd15-unet-Q4_0.gguf"
    write_gguf({"input_blocks.0.0.weight": torch.zeros(4, 32)}, unet)
    with pytest.raises(ModelNotFoundError, match=r"sd15-unet-Q4_0\.gguf is a GGUF file but not a transformer of"):
        MultiDiffusion.from_pretrained(unet, device="cpu")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelNotFoundError, match=r"broken\.gguf is not a readable GGUF file"):
        MultiDiffusion.from_pretrained(broken, device="cpu")


def test_gguf_model_files_follow_the_trust_rules_of_weights(tmp_path):
    """A .gguf model is weights: a scene names one under its own folder only, stored settings never."""
    from multidiffusion.io.trust import Origin, RepoId, typed_weights

    scene = Origin.file(tmp_path, "scene.toml")
    assert scene.weights("models/z.gguf", "model") == str(tmp_path / "models" / "z.gguf")
    assert not isinstance(scene.weights("models/z.gguf", "model"), RepoId)  # a file, never a repo id
    with pytest.raises(ValueError, match=r"model '\.\./z\.gguf' is outside the scene's folder"):
        scene.weights("../z.gguf", "model")
    with pytest.raises(ValueError, match="settings stored in a PNG or sent in a request name no files"):
        Origin.stored().weights("z.gguf", "model")
    assert str(typed_weights("z.gguf")) == str(Path.cwd() / "z.gguf")  # typed: a path here, not a repo


def test_a_gguf_file_without_the_gguf_package_says_what_to_install(gguf_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    with pytest.raises(ModelNotFoundError, match=r"needs the gguf package: pip install 'multidiffusion\[gguf\]'"):
        MultiDiffusion.from_pretrained(gguf_file, device="cpu")


# -- quantized transformers passed in ----------------------------------------------------------------


def test_a_quantized_transformer_passed_to_from_pretrained_is_used_as_given(gguf_md, zimage_dir, zimage):
    transformer = gguf_md.pipe.transformer
    md = MultiDiffusion.from_pretrained(zimage_dir, transformer=transformer, device="cpu", max_sequence_length=64)
    assert md.pipe.transformer is transformer and _quantized(md.pipe.transformer)
    assert (_panorama(md) - _pipeline(_with_transformer(zimage, transformer))).abs().max().item() <= 1e-4


def test_a_torchao_quantized_transformer_runs_as_its_pipeline(zimage_dir, zimage):
    """torchao's int8 weight-only quantization works on the CPU: MultiDiffusion(pipe) around it equals
    ZImagePipeline around it."""
    pytest.importorskip("torchao")
    from diffusers import TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    transformer = ZImageTransformer2DModel.from_pretrained(
        zimage_dir,
        subfolder="transformer",
        quantization_config=TorchAoConfig(Int8WeightOnlyConfig()),
        dtype=torch.float32,  # torchao computes in it (it warns that bfloat16 is what it supports)
    )
    assert type(transformer.layers[0].attention.to_q.weight).__module__.startswith("torchao")
    pipe = _with_transformer(zimage, transformer)
    assert (_ours(pipe) - _pipeline(pipe)).abs().max().item() <= 1e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU bitsandbytes loads; this checks the CPU refusal")
def test_a_bitsandbytes_config_reaches_diffusers_which_needs_a_gpu(zimage, zimage_dir, tmp_path):
    """bitsandbytes: the configuration reaches diffusers, which (0.42) refuses it without a GPU before
    bitsandbytes is imported, in one line rather than as a file that doesn't fit its configuration."""
    from diffusers import BitsAndBytesConfig

    path = tmp_path / "z-image.safetensors"
    save_file(zimage.transformer.state_dict(), path)
    config = BitsAndBytesConfig(load_in_8bit=True)  # 4-bit's config wants bitsandbytes installed to be made
    with pytest.raises(ModelNotFoundError, match=r"^quantization_config: .*bitsandbytes.*\(No GPU found"):
        MultiDiffusion.from_pretrained(path, config=str(zimage_dir), device="cpu", quantization_config=config)


def test_layerwise_casting_stores_in_float8_and_the_engine_computes_in_the_compute_dtype(zimage_dir, zimage):
    """diffusers' layerwise casting (weights stored in float8, each layer cast up as it runs): the
    engine's dtype is the compute dtype, and the result is ZImagePipeline's around the same model."""
    transformer = ZImageTransformer2DModel.from_pretrained(zimage_dir, subfolder="transformer")
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert transformer.layers[0].attention.to_q.weight.dtype == torch.float8_e4m3fn
    pipe = _with_transformer(zimage, transformer)
    md = MultiDiffusion(pipe, max_sequence_length=64)
    assert md.dtype == torch.float32
    assert (_panorama(md) - _pipeline(pipe)).abs().max().item() <= 1e-4


# -- offloading ------------------------------------------------------------------------------------------


def _moves_by_us(monkeypatch, pipe) -> list[str]:
    """Records every ``.to()`` of one of ``pipe``'s models that multidiffusion's own code calls (the
    offload hooks move them; the engine must not)."""
    models = {id(m): name for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    moves: list[str] = []
    original = torch.nn.Module.to

    def to(self, *args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if id(self) in models and "/multidiffusion/" in caller.replace("\\", "/"):
            moves.append(f"{models[id(self)]} from {caller}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    return moves


@pytest.fixture(scope="module")
def full_panorama(zimage):
    return _ours(zimage, w=2 * W, output_type="np")


@pytest.mark.parametrize("offload", ["model", "group"])
def test_diffusers_offloading_keeps_working(offload, zimage_dir, full_panorama, monkeypatch):
    """With diffusers' model offloading (accelerate's hooks, here with the CPU as the execution
    device) or group offloading (block by block), a 2-view panorama equals the plain run, the engine
    works on the pipeline's execution device and never moves a model itself."""
    pipe = ZImagePipeline.from_pretrained(zimage_dir)
    pipe.default_sample_size = H
    if offload == "model":
        pipe.enable_model_cpu_offload(device="cpu")
        assert type(pipe.transformer._hf_hook).__name__ == "CpuOffload"
    else:
        cpu = torch.device("cpu")
        pipe.enable_group_offload(
            onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1
        )
    md = MultiDiffusion(pipe, max_sequence_length=64)
    assert md.device == pipe._execution_device  # cpu:0 under accelerate's hooks, not the transformer's cpu
    moves = _moves_by_us(monkeypatch, pipe)
    images = _panorama(md, w=2 * W, output_type="np")
    assert moves == []
    np.testing.assert_allclose(images, full_panorama, atol=1e-5)


def test_a_unet_family_works_on_the_execution_device_under_offloading():
    """SD's adapter too: the device the engine builds its tensors on is where the hooks run the UNet."""
    from devtools.components import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    pipe.enable_model_cpu_offload(device="cpu")
    assert MultiDiffusion(pipe).device == pipe._execution_device == torch.device("cpu", 0)
