"""Single-file diffusion-transformer checkpoints (FLUX.1, SD 3 / 3.5, Chroma, Z-Image, and any family
that declares them), passed through to diffusers; GGUF files among them.

The files people share for these families hold the transformer alone (BFL's ``flux1-dev.safetensors``
and its fine-tunes: ``double_blocks.*``; Stability's ``sd3.5_large.safetensors``: ``joint_blocks.*``;
Z-Image's and Chroma's, in their makers' names or diffusers', possibly under ``model.diffusion_model.``
as ComfyUI saves them; city96's and others' ``.gguf`` quantizations of all of them). The text
encoders, VAE, tokenizers and scheduler come from a diffusers folder or repo id of the same
architecture (``config``). The transformer is read by diffusers' ``from_single_file`` (its key
conversion, its ``quantization_config``), the rest by ``from_pretrained``: nothing is reimplemented.

**The contract.** A family reads single files by declaring, on its adapter
(:class:`~multidiffusion.models.base.FamilyAdapter`):

- ``checkpoint_blocks``: a tensor-name prefix, or a tuple of them, that only its transformer files
  carry (bare or after ``model.diffusion_model.``; families are tried in registry order, so one whose
  files also carry another's prefix is registered first: Chroma before FLUX.1);
- ``single_file_config(shapes)``: the repo id whose configuration and other components build the
  file when no ``config`` is given, chosen from the tensors' names and shapes (dev or schnell, ...).

The transformer class is the family's first ``network_classes`` (it must be one diffusers'
``from_single_file`` knows); the pipeline class is the one the configuration's ``model_index.json``
names (a local folder or a cached repo) when a registered family with that transformer class drives
it (so one family may declare the files of its variants: FLUX.2 [dev] and [klein]), else the
family's ``pipeline_class``.

**GGUF.** A ``.gguf`` file's tensor names are read from its header (the ``gguf`` package:
``pip install multidiffusion[gguf]``); the transformer is loaded with diffusers'
``GGUFQuantizationConfig`` whose compute dtype is the load's dtype (the weights stay quantized in
memory, each layer dequantized as it runs), unless a ``quantization_config`` is given.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from multidiffusion.models.files import ModelNotFoundError, has_tensors, is_gguf_path

__all__ = ["default_dit_config", "dit_family", "gguf_shapes", "load_transformer_file", "transformer_kinds"]


def _transformer_families() -> dict[str, Any]:
    """The registered families whose single-file transformer checkpoints are read, by name."""
    from multidiffusion.models import ADAPTERS

    return {adapter.family: adapter for adapter in ADAPTERS if adapter.checkpoint_blocks is not None}


def _prefixes(adapter: Any) -> tuple[str, ...]:
    blocks = adapter.checkpoint_blocks
    return (blocks,) if isinstance(blocks, str) else tuple(blocks)


def dit_family(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The family of a transformer checkpoint ('flux', 'sd3', ...) from its tensor names (each
    family's :attr:`~multidiffusion.models.base.FamilyAdapter.checkpoint_blocks`), None for anything else."""
    for family, adapter in _transformer_families().items():
        if has_tensors(shapes, _prefixes(adapter)):
            return family
    return None


def transformer_kinds() -> str:
    """The single-file transformers read, in words for messages: "a transformer of FLUX.1 (double_blocks.*), ..."."""
    kinds = [
        f"{adapter.label} ({' or '.join(p + '*' for p in _prefixes(adapter))})"
        for adapter in _transformer_families().values()
    ]
    return f"a transformer of {', '.join(kinds)}" if kinds else "a diffusion transformer"


def default_dit_config(family: str, shapes: dict[str, tuple[int, ...]]) -> str:
    """The official repo whose configuration builds this checkpoint (the family's
    :meth:`~multidiffusion.models.base.FamilyAdapter.single_file_config`)."""
    return _transformer_families()[family].single_file_config(shapes)


def gguf_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape (torch's order) of a GGUF file, from its header: no tensor is read."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelNotFoundError(
            f"{path.name} is a GGUF file; reading one needs the gguf package: pip install 'multidiffusion[gguf]'"
        ) from None
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError, struct errors, ... for a file that is no GGUF
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"{path.name} is not a readable GGUF file: {detail[:200]}") from None
    return {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}


def _pipeline_class(adapter: Any, source: str) -> Any:
    """The pipeline class for the configuration ``source``: the one its ``model_index.json`` names when
    a registered family with the same transformer class drives it (FLUX.2 [dev] or [klein], Qwen-Image
    or its Edit), else the family's ``pipeline_class``."""
    import diffusers

    from multidiffusion.models import ADAPTERS

    network = adapter.network_classes[0]
    known = {name for other in ADAPTERS if network in other.network_classes for name in other.pipelines}

    index = Path(source).expanduser() / "model_index.json"
    if not index.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "model_index.json")
        except Exception:  # not a repo id: from_pretrained reports it
            cached = None
        index = Path(cached) if isinstance(cached, str) else index
    try:
        named = json.loads(index.read_text(encoding="utf-8")).get("_class_name") if index.is_file() else None
    except (OSError, ValueError, AttributeError):
        named = None
    name = named if named in known else adapter.pipeline_class
    return getattr(diffusers, name)


def _transformer_kwargs(path: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What the transformer's ``from_single_file`` takes of the load's keywords: the dtype and the
    quantization config; for a GGUF file without one, ``GGUFQuantizationConfig`` computing in the dtype."""
    shared = {k: kwargs[k] for k in ("dtype", "torch_dtype", "quantization_config") if k in kwargs}
    if is_gguf_path(path) and shared.get("quantization_config") is None:
        import torch
        from diffusers import GGUFQuantizationConfig

        dtype = shared.get("dtype", shared.get("torch_dtype")) or torch.float32
        shared["quantization_config"] = GGUFQuantizationConfig(compute_dtype=dtype)
    return shared


_COMFY_PREFIX = "model.diffusion_model."


def _unprefixed(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any] | None:
    """The file's tensors without ComfyUI's ``model.diffusion_model.`` when every name carries it (as
    ComfyUI saves a transformer), None for any other file. Bare, the names are what diffusers reads:
    its own (which it would otherwise run through its converter for the makers' names) or the
    makers' (FLUX.2's converter reads block numbers from bare names only)."""
    if not shapes or not all(name.startswith(_COMFY_PREFIX) for name in shapes):
        return None
    if is_gguf_path(path):
        from diffusers.models.model_loading_utils import load_gguf_checkpoint

        state = load_gguf_checkpoint(str(path))
    else:
        from safetensors.torch import load_file

        state = load_file(str(path))
    return {name[len(_COMFY_PREFIX) :]: tensor for name, tensor in state.items()}


def _check_quantization(config: Any) -> None:
    """A model ``quantization_config`` (bitsandbytes, torchao, GGUF, ...) checked as diffusers checks
    it before loading (its package installed, a GPU where it needs one), in one line: its refusal is
    not a sign that the file doesn't fit its configuration."""
    if config is None or not hasattr(config, "quant_method"):  # a pipeline's config: diffusers checks it
        return
    from diffusers.quantizers.auto import DiffusersAutoQuantizer

    try:
        DiffusersAutoQuantizer.from_config(config).validate_environment()
    except (RuntimeError, ImportError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        method = getattr(config.quant_method, "value", config.quant_method)
        raise ModelNotFoundError(
            f"quantization_config: diffusers can't quantize with {method} here ({detail[:200]})"
        ) from None


def _unavailable(name: str, label: str, source: str, reason: str | None = None) -> str:
    why = f" ({reason})" if reason else ""
    return (
        f"{name} is a single-file {label} transformer; the rest of the model (text encoders, VAE, scheduler) and "
        f"its configuration come from {source}, which is not in the local Hugging Face cache and could not be "
        f"downloaded{why}. Pass config= (a diffusers folder of the same architecture; --config on the command line)"
    )


def _ask_before_download(source: str, ask_hub: Callable[..., None] | None, message: Callable[[str], str]) -> None:
    """A configuration repo neither local nor cached: the hub must answer within the loader's bound
    (``ask_hub``) before diffusers asks it without one."""
    if ask_hub is None or Path(source).expanduser().is_dir():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "model_index.json")
    except Exception:  # not a repo id: from_single_file reports it
        return
    if not isinstance(cached, str):
        ask_hub(source, message)


def load_transformer_file(
    path: Path,
    family: str,
    shapes: dict[str, tuple[int, ...]],
    config: str | None,
    ask_hub: Callable[..., None] | None = None,
    **kwargs: Any,
) -> Any:
    """The family's pipeline (``FluxPipeline``, ``ZImagePipeline``, ...) whose transformer is read
    from ``path`` (``.safetensors`` or ``.gguf``) and whose other components come from ``config``
    (default: :func:`default_dit_config`). ``kwargs`` go to ``from_pretrained``; ``quantization_config``
    and the dtype also (the quantization config only) to the transformer's ``from_single_file``.
    ``ask_hub(repo, message)``: asked before a configuration repo that is not cached is downloaded."""
    import diffusers

    adapter = _transformer_families()[family]
    model_cls = getattr(diffusers, adapter.network_classes[0])
    if not hasattr(model_cls, "from_single_file"):
        raise ModelNotFoundError(
            f"{path.name} is a single-file {adapter.label} transformer, which diffusers {diffusers.__version__} can't "
            f"read ({model_cls.__name__} has no from_single_file); use the model's diffusers folder or repo id"
        )
    _check_quantization(kwargs.get("quantization_config"))
    source = config if config is not None else default_dit_config(family, shapes)
    rest = {k: v for k, v in kwargs.items() if k != "quantization_config"}
    _ask_before_download(source, ask_hub, lambda reason: _unavailable(path.name, adapter.label, source, reason))
    try:
        weights = _unprefixed(path, shapes)
        transformer = model_cls.from_single_file(
            str(path) if weights is None else weights,
            config=source,
            subfolder="transformer",
            **_transformer_kwargs(path, kwargs),
        )
        return _pipeline_class(adapter, source).from_pretrained(source, transformer=transformer, **rest)
    except OSError:
        raise ModelNotFoundError(_unavailable(path.name, adapter.label, source)) from None
    except (ValueError, KeyError, IndexError, RuntimeError) as exc:  # names or shapes that don't fit
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"{path.name} does not fit the architecture of config {source!r} ({detail[:200]}); pass the diffusers "
            "folder of a model of the same architecture"
        ) from None
