"""Single-file checkpoints (A1111 / CompVis / sgm layout) of SD 1.x, SD 2.x and SDXL; single-file
diffusion transformers (FLUX.1, SD 3 / 3.5, Chroma, Z-Image, ..., GGUF files among them) go to
:mod:`multidiffusion.models.transformer_file`.

The family is read from the tensor names (and a few shapes), never guessed from the file name:

    conditioner.embedders.1.model.*   SDXL base (and fine-tunes)     -> StableDiffusionXLPipeline
    cond_stage_model.model.*          SD 2.x (OpenCLIP text encoder) -> StableDiffusionPipeline
    cond_stage_model.transformer.*    SD 1.x (OpenAI CLIP)           -> StableDiffusionPipeline

Building a pipeline from one file needs the family's configuration (layer sizes, scheduler,
tokenizers): ``config`` names a diffusers folder (works offline) or repo id of the same
architecture, e.g. the base model the checkpoint was fine-tuned from. Without it the official
base repo of the family is used, from the Hugging Face cache or downloaded.

SD 2.x comes as 768-v (v-prediction, 96x96 latents) and 512-base (epsilon, 64x64) with identical
tensor names and shapes, so the file can't tell which it is. The rule, first match wins:
``prediction_type=`` if given; else the ``config``'s scheduler and UNet; else the file name:
"512" or "base" in it means stabilityai/stable-diffusion-2-1-base, anything else
stabilityai/stable-diffusion-2-1 (768-v), as the official files are named (v2-1_512-ema-pruned,
v2-1_768-ema-pruned, 768-v-ema).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from multidiffusion.models.files import ModelNotFoundError, is_gguf_path, is_pickle_path
from multidiffusion.models.transformer_file import dit_family, gguf_shapes, load_transformer_file, transformer_kinds

__all__ = ["DEFAULT_CONFIGS", "checkpoint_family", "load_single_file", "read_shapes"]

DEFAULT_CONFIGS = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",  # 768-v
    "sd2-base": "stabilityai/stable-diffusion-2-1-base",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
_UNET = "model.diffusion_model."
_CROSS_ATTENTION = re.compile(re.escape(_UNET) + r".*\.attn2\.to_k\.weight$")


def read_shapes(path: str | Path, *, allow_pickle: bool = False) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape. For .safetensors and .gguf only the header is read; any other file is a
    pickle, loaded (which can run code) only with ``allow_pickle=True`` and otherwise never opened."""

    path = Path(path)
    if is_gguf_path(path):
        return gguf_shapes(path)
    if path.suffix == ".safetensors" and not is_pickle_path(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:  # safetensors raises its own error types
            raise ModelNotFoundError(f"{path.name} is not a readable .safetensors file: {exc}") from None
    if not allow_pickle:
        raise ModelNotFoundError(
            f"{path.name} is not a .safetensors file; pickle checkpoints can run arbitrary code when loaded, pass "
            "allow_pickle=True (--allow-pickle) if you trust the source"
        )
    state = torch.load(str(path), map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def checkpoint_family(
    path_or_shapes: str | Path | dict[str, tuple[int, ...]], name: str | None = None, *, allow_pickle: bool = False
) -> str:
    """'sdxl', 'sd2' or 'sd1' from the tensor names of an original-format checkpoint (a path, or the
    name -> shape map of :func:`read_shapes`; a pickle path is read only with ``allow_pickle=True``).

    ``ModelNotFoundError`` for checkpoints the engine can't drive: no text encoder, SDXL refiners,
    inpainting / depth models (extra UNet input channels).
    """
    if isinstance(path_or_shapes, dict):
        shapes, name = path_or_shapes, name or "the checkpoint"
    else:
        shapes, name = read_shapes(path_or_shapes, allow_pickle=allow_pickle), name or Path(path_or_shapes).name
    keys = shapes.keys()
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        family = "sdxl"
    elif any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise ModelNotFoundError(
            f"{name} is an SDXL refiner, which only refines images at low noise levels; use an SDXL base model"
        )
    elif any(k.startswith("cond_stage_model.model.") for k in keys):
        family = "sd2"
    elif any(k.startswith("cond_stage_model.transformer.") for k in keys):
        family = "sd1"
    else:
        raise ModelNotFoundError(
            f"{name} is not a Stable Diffusion checkpoint with a text encoder "
            f"(expected cond_stage_model.* or conditioner.embedders.* tensors), nor {transformer_kinds()}"
        )
    conv_in = shapes.get(_UNET + "input_blocks.0.0.weight")
    if conv_in is not None and conv_in[1] != 4:
        raise ModelNotFoundError(
            f"{name} is an inpainting or depth {FAMILY_NAMES[family]} model ({conv_in[1]} UNet input channels); "
            "use the text-to-image model it was made from"
        )
    return family


def _cross_attention_dim(shapes: dict[str, tuple[int, ...]]) -> int | None:
    for key, shape in shapes.items():
        if _CROSS_ATTENTION.match(key):
            return shape[1]
    return None


def _config_family(folder: Path) -> tuple[str, dict[str, Any]]:
    """('sdxl' or 'sd', unet config) of a local diffusers folder."""
    unet_config = folder / "unet" / "config.json"
    if not (folder / "model_index.json").is_file() or not unet_config.is_file():
        raise ModelNotFoundError(
            f"config {str(folder)!r} is not a diffusers model folder (it needs model_index.json and unet/config.json)"
        )
    unet = json.loads(unet_config.read_text())
    return ("sdxl" if unet.get("addition_embed_type") == "text_time" else "sd"), unet


def check_config(name: str, family: str, shapes: dict[str, tuple[int, ...]], config: Path) -> None:
    """Refuse a local ``config`` folder of another architecture than the checkpoint, up front."""
    config_family, unet = _config_family(config)
    if (family == "sdxl") != (config_family == "sdxl"):
        theirs = "SDXL" if config_family == "sdxl" else "SD 1.x/2.x"
        raise ModelNotFoundError(
            f"{name} is an {FAMILY_NAMES[family]} checkpoint but config {str(config)!r} is an {theirs} model; "
            "pass the diffusers folder of a model of the same architecture"
        )
    dim, expected = _cross_attention_dim(shapes), unet.get("cross_attention_dim")
    expected = expected[0] if isinstance(expected, (list, tuple)) else expected
    if dim is not None and expected is not None and dim != expected:
        raise ModelNotFoundError(
            f"{name} does not match config {str(config)!r}: its UNet's cross-attention width is {dim}, the "
            f"config's {expected} (SD 1.x: 768, SD 2.x: 1024, SDXL: 2048); pass the diffusers folder of a model "
            "of the same architecture"
        )


def _cached_folder(repo: str) -> Path | None:
    """The cached snapshot folder of a repo id when its configuration is in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        index = try_to_load_from_cache(repo, "model_index.json")
        unet = try_to_load_from_cache(repo, "unet/config.json")
    except Exception:  # not a repo id: diffusers reports it below
        return None
    if isinstance(index, str) and isinstance(unet, str) and Path(index).parent == Path(unet).parent.parent:
        return Path(index).parent
    return None


# the tensor-name prefixes of each component in an original-format checkpoint
_COMPONENT_PREFIXES = {
    "unet": (_UNET,),
    "vae": ("first_stage_model.",),
    "text_encoder": ("cond_stage_model.", "conditioner.embedders.0."),
    "text_encoder_2": ("conditioner.embedders.1.",),
}


def _refuse_pickles_from_config(name: str, shapes: dict[str, tuple[int, ...]], config: Path) -> None:
    """A component missing from the checkpoint is loaded from the ``config`` folder (diffusers falls back
    to ``from_pretrained`` there, which reads a .bin if that is all it finds): refuse that without
    allow_pickle, before anything is opened."""

    for component, prefixes in _COMPONENT_PREFIXES.items():
        sub = config / component
        if any(k.startswith(prefixes) for k in shapes) or not (sub / "config.json").is_file():
            continue
        if not any(sub.glob("*.safetensors")) and any(is_pickle_path(f) for f in sub.iterdir() if f.is_file()):
            raise ModelNotFoundError(
                f"{name} has no {component} weights, so they would come from config {str(config)!r}, whose "
                f"{component}/ holds pickle weights only (.bin), which can run arbitrary code when loaded; convert "
                "them to .safetensors or pass allow_pickle=True (--allow-pickle) if you trust the source"
            )


def default_config(family: str, path: Path) -> str:
    """The official base repo whose configuration builds a ``family`` checkpoint (see module doc)."""
    if family == "sd2" and re.search(r"512|base", path.name.lower()):
        return DEFAULT_CONFIGS["sd2-base"]
    return DEFAULT_CONFIGS[family]


def load_single_file(
    path: Path,
    config: str | None,
    allow_pickle: bool = False,
    ask_hub: Callable[[str, Callable[[str], str]], None] | None = None,
    **kwargs: Any,
):
    """A StableDiffusion(XL)Pipeline from an original-format checkpoint (see the module doc), or a
    transformer family's pipeline around a single-file (or GGUF) transformer; a pickle checkpoint only with
    ``allow_pickle=True``. ``ask_hub(repo, message)``: asked before a configuration repo that is not
    cached is downloaded (the loader's bounded question to the hub, raising ``message(reason)``)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    shapes = read_shapes(path, allow_pickle=allow_pickle)
    transformer = dit_family(shapes)
    if transformer is not None:  # FLUX.1, SD 3, Z-Image, ...: the transformer from the file, the rest from config
        return load_transformer_file(path, transformer, shapes, config, ask_hub=ask_hub, **kwargs)
    if is_gguf_path(path):
        raise ModelNotFoundError(f"{path.name} is a GGUF file but not {transformer_kinds()}, the ones read from GGUF")
    family = checkpoint_family(shapes, path.name)
    local = Path(config).expanduser() if config is not None else None
    cached: Path | None = None
    if local is not None and local.is_dir():
        check_config(path.name, family, shapes, local)
        source = str(local)
    else:
        local = None
        source = config or default_config(family, path)
        cached = _cached_folder(source)
        if cached is not None:
            check_config(path.name, family, shapes, cached)
        elif ask_hub is not None:  # the hub must answer within the loader's bound before diffusers asks it

            def message(reason: str) -> str:
                return _config_unavailable(path.name, family, source, reason)

            ask_hub(source, message)
    folder = local if local is not None else cached
    if folder is not None and not allow_pickle:
        _refuse_pickles_from_config(path.name, shapes, folder)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    try:
        return cls.from_single_file(str(path), config=source, **kwargs)
    except SingleFileComponentError as exc:  # a component neither in the file nor in the configuration
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"{path.name} lacks the weights of a component and config {source!r} can't supply them ({detail[:200]})"
        ) from None
    except OSError as exc:
        if local is None:  # a repo id: its configuration is neither cached nor downloadable
            raise ModelNotFoundError(_config_unavailable(path.name, family, source)) from None
        raise _mismatch(path.name, source, exc) from None
    except (ValueError, KeyError, RuntimeError) as exc:  # shapes or names that don't fit the configuration
        raise _mismatch(path.name, source, exc) from None


def _config_unavailable(name: str, family: str, repo: str, reason: str | None = None) -> str:
    why = f" ({reason})" if reason else ""
    return (
        f"{name} is a single-file {FAMILY_NAMES[family]} checkpoint; building it needs the configuration of "
        f"{repo}, which is not in the local Hugging Face cache and could not be downloaded{why}. Pass config= (a "
        "diffusers folder of the same architecture, e.g. the base model it was fine-tuned from; --config on the "
        "command line)"
    )


def _mismatch(name: str, config: str, exc: Exception) -> ModelNotFoundError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelNotFoundError(
        f"{name} does not fit the architecture of config {config!r} ({detail[:200]}); pass the diffusers folder "
        "of a model of the same architecture"
    )
