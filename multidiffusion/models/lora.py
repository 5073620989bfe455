"""LoRA loading with one clear error when a LoRA was trained for another model family.

LoRAs are diffusers' (``pipe.load_lora_weights``, which needs the ``peft`` package); MultiDiffusion
only adds the check that the LoRA fits: an SD 1.5 LoRA on SDXL fails inside diffusers with a
many-line "size mismatch" report (its cross-attention layers are 768 wide, SDXL's 2048), and a LoRA
whose layer names match nothing in the model loads silently as a no-op. Both become one ValueError.
LoRAs loaded on a pipeline before wrapping it in ``MultiDiffusion(pipe)`` apply as well; scales are
set with diffusers' ``pipe.set_adapters``.
"""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["load_lora"]


def _peft_backend() -> bool:
    """Whether diffusers can load LoRAs here (it needs peft)."""
    from diffusers.utils import USE_PEFT_BACKEND

    return bool(USE_PEFT_BACKEND)


def _family(pipe: Any) -> str:
    return "SDXL" if getattr(pipe, "text_encoder_2", None) is not None else "SD 1.x/2.x"


def load_lora(pipe: Any, lora: str | os.PathLike | dict, adapter_name: str | None = None, **kwargs: Any) -> str:
    """Load ``lora`` (a .safetensors file, a folder or repo id with one, or a state dict) into ``pipe``.

    Returns the adapter name. ``kwargs`` go to diffusers' ``load_lora_weights`` (e.g. ``weight_name``).
    Raises ``ValueError`` when peft is missing or the LoRA does not fit the model's architecture.
    """
    source = "the LoRA state dict" if isinstance(lora, dict) else f"LoRA {str(lora)!r}"
    if not _peft_backend():
        raise ValueError("loading LoRAs needs the peft package: pip install peft")
    existing = {name for names in pipe.get_list_adapters().values() for name in names}
    name = adapter_name or f"lora_{len(existing)}"
    if name in existing:
        raise ValueError(f"adapter_name {name!r} is already loaded; choose another name")
    family = _family(pipe)
    try:
        pipe.load_lora_weights(dict(lora) if isinstance(lora, dict) else lora, adapter_name=name, **kwargs)
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
    return name


def _shape_hint(detail: str) -> str:
    """' (its layers are 768 wide where the model's are 2048)' from a torch size-mismatch line."""
    m = re.search(r"shape torch\.Size\(\[(\d+), (\d+)\]\) from checkpoint.*torch\.Size\(\[(\d+), (\d+)\]\)", detail)
    if not m or m[2] == m[4]:
        return ""
    return f" (its layers take inputs {m[2]} wide where the model's take {m[4]})"
