"""LoRA loading with one clear error when a LoRA was trained for another model family.

LoRAs are diffusers' (``pipe.load_lora_weights``, which needs the ``peft`` package); MultiDiffusion
only adds the check that the LoRA fits: an SD 1.5 LoRA on SDXL fails inside diffusers with a
many-line "size mismatch" report (its cross-attention layers are 768 wide, SDXL's 2048), and a LoRA
whose layer names match nothing in the model loads silently as a no-op. Both become one ValueError.
LoRAs loaded on a pipeline before wrapping it in ``MultiDiffusion(pipe)`` apply as well; scales are
set with diffusers' ``pipe.set_adapters``.

Where diffusers makes a newly loaded LoRA the only active one, :func:`load_lora` adds it to those
already active at its ``weight`` (A1111's and ComfyUI's stacking), or loads it inactive with weight
0: a LoRA for the regions that name it (``Region(loras=...)``) and nowhere else.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from multidiffusion.io.ranges import check_lora_weight
from multidiffusion.io.trust import RepoId
from multidiffusion.models.files import ModelNotFoundError, refused_pickle
from multidiffusion.models.hub import HUB_TIMEOUT_S, hub_folder, hub_offline, within_timeout

__all__ = ["check_lora_source", "load_lora"]

LORA_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
"""Pipeline components a LoRA file may put layers into."""


def _peft_backend() -> bool:
    """Whether diffusers can load LoRAs here (it needs peft)."""
    from diffusers.utils import USE_PEFT_BACKEND

    return bool(USE_PEFT_BACKEND)


def _family(pipe: Any) -> str:
    """The pipeline's family in a few words, for messages."""
    from multidiffusion.models import family_of

    return family_of(pipe).label


def _lora_layers(pipe: Any) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    modules = [getattr(pipe, name, None) for name in LORA_COMPONENTS]
    return [m for c in modules if c is not None for m in c.modules() if isinstance(m, BaseTunerLayer)]


def check_lora_source(spec: str | os.PathLike, allow_pickle: bool = False, name: str = "lora") -> None:
    """What :func:`load_lora` needs of a file or folder, checked before any model loads: it exists,
    is .safetensors (a pickle only when allowed) or a folder holding one; a repo id passes."""
    if isinstance(spec, RepoId):
        return  # the hub's: fetched (safetensors only) when loaded
    path = Path(spec).expanduser()
    pickles = (".bin", ".ckpt", ".pt", ".pth")
    if path.is_file():
        if path.suffix in pickles and not allow_pickle:
            raise ValueError(
                f"{name}: {path.name} is a pickle, which can run code when loaded; use a .safetensors LoRA, or pass "
                "allow_pickle (--allow-pickle) if you trust its source"
            )
        if path.suffix != ".safetensors" and path.suffix not in pickles:
            raise ValueError(f"{name}: a LoRA file must be .safetensors, got {path.name}")
    elif path.is_dir():
        if not any(path.glob("*.safetensors")):
            raise ValueError(f"{name}: {path} holds no .safetensors LoRA file")
    elif str(spec).startswith((".", "/", "~")) or path.suffix in (".safetensors", *pickles):
        raise ValueError(f"{name}: no such file or folder {str(spec)!r}")


def load_lora(
    pipe: Any, lora: str | os.PathLike | dict, adapter_name: str | None = None, weight: float = 1.0, **kwargs: Any
) -> str:
    """Load ``lora`` (a .safetensors file, a folder or repo id with one, or a state dict) into ``pipe``
    and return its adapter name.

    It joins the adapters already active at ``weight`` (0: loaded for the regions that name it only).
    ``kwargs`` go to diffusers' ``load_lora_weights`` (e.g. ``weight_name``). Raises ``ValueError``
    when peft is missing, ``weight`` is not a number from -10 to 10, or the LoRA does not fit the
    model's architecture.
    """
    weight = check_lora_weight("weight", weight)
    source = "the LoRA state dict" if isinstance(lora, dict) else f"LoRA {str(lora)!r}"
    if isinstance(lora, RepoId):  # named by a scene: the hub's snapshot, never a folder here
        lora = str(hub_folder(lora, source))
    if not _peft_backend():
        raise ValueError("loading LoRAs needs the peft package: pip install peft")
    existing = {name for names in pipe.get_list_adapters().values() for name in names}
    name = adapter_name or f"lora_{len(existing)}"
    if name in existing:
        raise ValueError(f"adapter_name {name!r} is already loaded; choose another name")
    family = _family(pipe)
    if isinstance(lora, (str, os.PathLike)) and kwargs.get("weight_name") is None:
        weight_name = _hub_weight_name(os.fspath(lora))
        if weight_name is not None:
            kwargs["weight_name"] = weight_name
    before = {id(m): (list(m.active_adapters), dict(m.scaling)) for m in _lora_layers(pipe)}
    try:
        pipe.load_lora_weights(dict(lora) if isinstance(lora, dict) else lora, adapter_name=name, **kwargs)
    except OSError as exc:  # a pickle torch's safe loader refused: diffusers' message names the file twice
        refused = refused_pickle(exc, "lora")
        if refused is None:
            raise
        raise refused from None
    except (RuntimeError, ValueError, KeyError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next((line for line in lines if "size mismatch" in line), lines[0] if lines else type(exc).__name__)
        if "not found in the base model" in detail:  # peft lists every missing module: say it short
            detail = "none of the layers it targets exist in this model"
        hint = _shape_hint(detail)
        raise ValueError(
            f"{source} does not fit this {family} model{hint}: a LoRA only works on the architecture it was "
            f"trained for (SD 1.x, SD 2.x or SDXL). diffusers said: {detail[:300]}"
        ) from None
    loaded = {n for names in pipe.get_list_adapters().values() for n in names}
    if name not in loaded:
        raise ValueError(
            f"{source} has no layer that matches this {family} model, so it would change nothing; "
            "it was probably trained for another model family"
        )
    for module in _lora_layers(pipe):  # diffusers left only the new LoRA active: add it to the others
        active, scaling = before.get(id(module), ([], {}))
        module.scaling.update(scaling)
        has = name in module.scaling
        module.set_adapter([*active, name] if has and weight != 0 else active)
        if has:
            module.set_scale(name, float(weight))
    return name


def _hub_weight_name(spec: str) -> str | None:
    """For a repo id (not a local file or folder) while online, the file diffusers would load from it
    (its guess among the repo's .safetensors files), asked of the hub within ``HUB_TIMEOUT_S``: diffusers'
    own question has no time limit, so a hub that accepts connections and never answers hung it. With
    the name given, diffusers asks nothing more but for the file (the hub client's download limits)."""
    if os.path.exists(spec) or hub_offline():
        return None  # local, or offline: diffusers asks no hub
    from diffusers.loaders.lora_base import _best_guess_weight_name

    def message(reason: str) -> str:
        return (
            f"lora: {spec!r} is neither a local file or folder nor a LoRA the hub could give ({reason}); pass the "
            f"path of a .safetensors LoRA, or download it first (`hf download {spec}`)"
        )

    def guess() -> str | None:
        try:
            return _best_guess_weight_name(spec)
        except Exception as exc:  # the hub client's errors: missing repo, network, bad id
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            raise ModelNotFoundError(message(reason)) from None

    return within_timeout(time.monotonic() + HUB_TIMEOUT_S, guess, spec, message)


def _shape_hint(detail: str) -> str:
    """' (its layers are 768 wide where the model's are 2048)' from a torch size-mismatch line."""
    m = re.search(r"shape torch\.Size\(\[(\d+), (\d+)\]\) from checkpoint.*torch\.Size\(\[(\d+), (\d+)\]\)", detail)
    if not m or m[2] == m[4]:
        return ""
    return f" (its layers take inputs {m[2]} wide where the model's take {m[4]})"
