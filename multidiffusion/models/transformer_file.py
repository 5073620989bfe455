"""Single-file diffusion-transformer checkpoints (FLUX.1, SD 3 / 3.5), passed through to diffusers.

The files people share for these families hold the transformer (BFL's ``flux1-dev.safetensors`` and
its fine-tunes: ``double_blocks.*``; Stability's ``sd3.5_large.safetensors``: ``joint_blocks.*``,
both possibly under ``model.diffusion_model.``); the text encoders, VAE, tokenizers and scheduler
come from a diffusers folder or repo id of the same architecture (``config``). The transformer is
read by diffusers' ``from_single_file`` (its key conversion, its ``quantization_config``: e.g.
bitsandbytes or torchao), the rest by ``from_pretrained``: nothing is reimplemented here.

Without ``config`` the official repo of the variant is used (from the Hugging Face cache, else
downloaded), as the family's adapter says (``single_file_config``): FLUX.1-dev when the file has
a guidance embedding (``guidance_in.*``), else FLUX.1-schnell; SD 3.5 large for 38 joint blocks,
SD 3.5 medium for MMDiT-X blocks (``attn2``), else SD 3 medium. GGUF files are not read here
(their tensor names need the ``gguf`` package): build the transformer with
``FluxTransformer2DModel.from_single_file(path, quantization_config=GGUFQuantizationConfig(...))``
and pass the pipeline to ``MultiDiffusion``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multidiffusion.models.files import ModelNotFoundError, has_tensors

__all__ = ["default_dit_config", "dit_family", "load_transformer_file"]


def _transformer_families() -> dict[str, Any]:
    """The registered families whose single-file transformer checkpoints are read, by name."""
    from multidiffusion.models import ADAPTERS

    return {adapter.family: adapter for adapter in ADAPTERS if adapter.checkpoint_blocks is not None}


def dit_family(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The family of a transformer checkpoint ('flux', 'sd3', ...) from its tensor names (each
    family's :attr:`~multidiffusion.models.base.FamilyAdapter.checkpoint_blocks`), None for anything else."""
    for family, adapter in _transformer_families().items():
        if has_tensors(shapes, adapter.checkpoint_blocks):
            return family
    return None


def default_dit_config(family: str, shapes: dict[str, tuple[int, ...]]) -> str:
    """The official repo whose configuration builds this checkpoint (the family's
    :meth:`~multidiffusion.models.base.FamilyAdapter.single_file_config`)."""
    return _transformer_families()[family].single_file_config(shapes)


def load_transformer_file(
    path: Path, family: str, shapes: dict[str, tuple[int, ...]], config: str | None, **kwargs: Any
) -> Any:
    """The family's pipeline (``FluxPipeline``, ``StableDiffusion3Pipeline``, ...) whose
    transformer is read from ``path`` and whose other components come from ``config`` (default:
    :func:`default_dit_config`). ``kwargs`` go to ``from_pretrained``; ``quantization_config`` and
    the dtype also to the transformer's ``from_single_file``."""
    import diffusers

    adapter = _transformer_families()[family]
    model_cls = getattr(diffusers, adapter.network_classes[0])
    pipeline_cls = getattr(diffusers, adapter.pipeline_class)
    source = config if config is not None else default_dit_config(family, shapes)
    shared = {k: kwargs[k] for k in ("dtype", "torch_dtype", "quantization_config") if k in kwargs}
    rest = {k: v for k, v in kwargs.items() if k != "quantization_config"}
    try:
        transformer = model_cls.from_single_file(str(path), config=source, subfolder="transformer", **shared)
        return pipeline_cls.from_pretrained(source, transformer=transformer, **rest)
    except OSError:
        raise ModelNotFoundError(
            f"{path.name} is a single-file {adapter.label} transformer; the rest of the model (text encoders, VAE, "
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
