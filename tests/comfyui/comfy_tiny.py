"""ComfyUI's own model objects on tiny random weights, for the in-process tests of the node pack.

ComfyUI is found through ``COMFYUI_PATH`` or ``../shared/vendor/ComfyUI`` next to the repository and
imported in CPU mode; where it can't be imported (our main venv has no torchvision that loads), the
tests that use :func:`import_comfy` are skipped with the reason. Nothing downloads: the UNet is
ComfyUI's ``UNetModel`` built from a small SD 1.x-shaped config (two levels of 32 and 64 channels,
cross-attention width 32) inside ComfyUI's ``BaseModel`` and ``ModelPatcher``, its weights drawn
from a seeded generator.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / "comfyui-multidiffusion"
CONTEXT = 32  # cross-attention width of the tiny UNet


def comfyui_path() -> Path:
    return Path(os.environ.get("COMFYUI_PATH") or REPO.parent / "shared" / "vendor" / "ComfyUI").resolve()


def import_comfy() -> SimpleNamespace:
    """ComfyUI's modules the tests use (CPU mode), and the pack's node modules; or skip the test."""
    path = comfyui_path()
    if not (path / "comfy").is_dir():
        pytest.skip(f"ComfyUI not found at {path} (set COMFYUI_PATH)")
    added = [p for p in (str(path), str(PACK)) if p not in sys.path]
    sys.path[:0] = added
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        names = ("model_management", "model_base", "supported_models", "model_patcher", "sample", "samplers", "sd")
        modules = {name: importlib.import_module(f"comfy.{name}") for name in names}
    except Exception as exc:  # ComfyUI's imports fail in our main venv (torchvision): skip, saying why
        for p in added:  # ComfyUI's top-level packages (utils, app, ...) must not shadow anything else
            sys.path.remove(p)
        for name, module in list(sys.modules.items()):  # nor its half-imported modules
            if str(getattr(module, "__file__", None) or "").startswith(str(path)):
                del sys.modules[name]
        pytest.skip(
            f"ComfyUI at {path} can't be imported here ({type(exc).__name__}: {exc}); run these tests "
            "with the ComfyUI environment (devtools/comfyui_env.sh)"
        )
    return SimpleNamespace(**modules)


def node_module(name: str):
    """The pack's node module ``name`` (after :func:`import_comfy`)."""
    return importlib.import_module(f"multidiffusion_comfy.{name}")


def _init(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """ComfyUI's layers are made without initialising their weights: draw them, seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight") or (".norm" in name and name.endswith("weight")):
                p.copy_(1 + scale * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def tiny_unet_config() -> dict:
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "dtype": torch.float32,
        "in_channels": 4,
        "model_channels": 32,
        "num_res_blocks": [1, 1],
        "transformer_depth": [1, 1],
        "channel_mult": [1, 2],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": False,
        "context_dim": CONTEXT,
        "transformer_depth_output": [1, 1, 1, 1],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


def tiny_model(comfy: SimpleNamespace, seed: int = 0):
    """A ModelPatcher around ComfyUI's SD 1.x ``BaseModel`` (eps prediction) with a tiny UNet."""
    config = comfy.supported_models.SD15(tiny_unet_config())
    config.unet_config["num_heads"] = 2
    model = config.get_model({})
    _init(model.diffusion_model, seed)
    model.eval()
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def conditioning(seed: int, tokens: int = 8) -> list:
    """A ComfyUI CONDITIONING: [[embedding (1, tokens, CONTEXT), {}]], random, seeded."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, CONTEXT, generator=g), {}]]
