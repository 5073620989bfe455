"""Single-file diffusion-transformer checkpoints (FLUX.1, SD 3 / 3.5), passed through to diffusers.

The files people share for these families hold the transformer (BFL's ``flux1-dev.safetensors`` and
its fine-tunes: ``double_blocks.*``; Stability's ``sd3.5_large.safetensors``: ``joint_blocks.*``,
both possibly under ``model.diffusion_model.``); the text encoders, VAE, tokenizers and scheduler
come from a diffusers folder or repo id of the same architecture (``config``). The transformer is
read by diffusers' ``from_single_file`` (its key conversion, its ``quantization_config``: e.g.
bitsandbytes or torchao), the rest by ``from_pretrained``: nothing is reimplemented here.

Without ``config`` the official repo of the variant is used (from the Hugging Face cache, else
downloaded): FLUX.1-dev when the file has a guidance embedding (``guidance_in.*``), else
FLUX.1-schnell; SD 3.5 large for 38 joint blocks, SD 3.5 medium for MMDiT-X blocks (``attn2``),
else SD 3 medium. GGUF files are not read here (their tensor names need the ``gguf`` package):
build the transformer with ``FluxTransformer2DModel.from_single_file(path,
quantization_config=GGUFQuantizationConfig(...))`` and pass the pipeline to ``MultiDiffusion``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from multidiffusion.models.files import ModelNotFoundError

__all__ = ["DIT_CONFIGS", "default_dit_config", "dit_family", "load_transformer_file"]

DIT_CONFIGS = {
    "flux-dev": "black-forest-labs/FLUX.1-dev",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
    "sd3.5-large": "stabilityai/stable-diffusion-3.5-large",
    "sd3.5-medium": "stabilityai/stable-diffusion-3.5-medium",
    "sd3-medium": "stabilityai/stable-diffusion-3-medium-diffusers",
}
NAMES = {"flux": "FLUX.1", "sd3": "SD 3 / 3.5"}
_PREFIXES = ("", "model.diffusion_model.")
_JOINT_BLOCK = re.compile(r"^(?:model\.diffusion_model\.)?joint_blocks\.(\d+)\.")


def _has(keys: Any, name: str) -> bool:
    return any(k.startswith(tuple(p + name for p in _PREFIXES)) for k in keys)


def dit_family(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """'flux' or 'sd3' from a checkpoint's tensor names, None for anything else."""
    if _has(shapes, "double_blocks."):
        return "flux"
    if _has(shapes, "joint_blocks."):
        return "sd3"
    return None


def default_dit_config(family: str, shapes: dict[str, tuple[int, ...]]) -> str:
    """The official repo whose configuration builds this checkpoint (module docstring)."""
    if family == "flux":
        return DIT_CONFIGS["flux-dev" if _has(shapes, "guidance_in.") else "flux-schnell"]
    blocks = {int(m.group(1)) for k in shapes if (m := _JOINT_BLOCK.match(k))}
    if len(blocks) >= 38:
        return DIT_CONFIGS["sd3.5-large"]
    if any(".x_block.attn2." in k for k in shapes):
        return DIT_CONFIGS["sd3.5-medium"]
    return DIT_CONFIGS["sd3-medium"]


def load_transformer_file(
    path: Path, family: str, shapes: dict[str, tuple[int, ...]], config: str | None, **kwargs: Any
) -> Any:
    """A ``FluxPipeline`` or ``StableDiffusion3Pipeline`` whose transformer is read from ``path``
    and whose other components come from ``config`` (default: :func:`default_dit_config`).
    ``kwargs`` go to ``from_pretrained``; ``quantization_config`` and the dtype also to the
    transformer's ``from_single_file``."""
    from diffusers import FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline

    model_cls, pipeline_cls = (
        (FluxTransformer2DModel, FluxPipeline)
        if family == "flux"
        else (SD3Transformer2DModel, StableDiffusion3Pipeline)
    )
    source = config if config is not None else default_dit_config(family, shapes)
    shared = {k: kwargs[k] for k in ("dtype", "torch_dtype", "quantization_config") if k in kwargs}
    rest = {k: v for k, v in kwargs.items() if k != "quantization_config"}
    try:
        transformer = model_cls.from_single_file(str(path), config=source, subfolder="transformer", **shared)
        return pipeline_cls.from_pretrained(source, transformer=transformer, **rest)
    except OSError:
        raise ModelNotFoundError(
            f"{path.name} is a single-file {NAMES[family]} transformer; the rest of the model (text encoders, VAE, "
            f"scheduler) and its configuration come from {source}, which is not in the local Hugging Face cache "
            "and could not be downloaded. Pass config= (a diffusers folder of the same architecture; --config on "
            "the command line)"
        ) from None
    except (ValueError, KeyError, IndexError, RuntimeError) as exc:  # names or shapes that don't fit
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"{path.name} does not fit the architecture of config {source!r} ({detail[:200]}); pass the diffusers "
            "folder of a model of the same architecture"
        ) from None
