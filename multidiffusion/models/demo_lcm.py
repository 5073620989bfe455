"""The few-step demo, ``"demo-lcm"``: the shipped demo with its LCM-LoRA fused in and LCMScheduler.

``multidiffusion/demo/lcm/`` holds a LoRA distilled from the demo by latent consistency distillation
(``python -m devtools.demo.distill``; LCM-LoRA, Luo et al. 2023) in diffusers' peft key format
(``unet.<module>.lora_A.weight`` / ``lora_B.weight``, alpha = rank so the scale is 1) and the
LCMScheduler config it was distilled for. Loading fuses it, ``W <- W + B A`` (a convolution's ``A`` is
``(r, in, k, k)``, its ``B`` ``(out, r, 1, 1)``, so ``B A`` is a ``(out, in, k, k)`` kernel), which is what
``load_lora_weights`` + ``fuse_lora`` do, without needing peft at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from multidiffusion.models.files import ModelNotFoundError

__all__ = ["DEMO_LCM_DIR", "LORA_FILE", "fuse_lora", "make_demo_lcm"]

DEMO_LCM_DIR = Path(__file__).parents[1] / "demo" / "lcm"
LORA_FILE = "pytorch_lora_weights.safetensors"


def fuse_lora(unet: torch.nn.Module, state: dict[str, torch.Tensor], scale: float = 1.0) -> int:
    """Add ``scale * B @ A`` to each adapted weight of ``unet``; returns how many were fused.
    ``state``: peft-format keys with or without the ``unet.`` prefix."""
    pairs = {}
    for key, value in state.items():
        name = key.removeprefix("unet.")
        for part in (".lora_A.weight", ".lora_B.weight"):
            if name.endswith(part):
                pairs.setdefault(name.removesuffix(part), {})[part[6]] = value
    for name, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(f"the LoRA has no lora_A / lora_B pair for {name}")
        weight = unet.get_submodule(name).weight
        a, b = pair["A"].to(torch.float32), pair["B"].to(torch.float32)
        delta = (b.flatten(1) @ a.flatten(1)).reshape(weight.shape)
        with torch.no_grad():
            weight += (scale * delta).to(device=weight.device, dtype=weight.dtype)
    return len(pairs)


def make_demo_lcm(pipe: Any, folder: Path = DEMO_LCM_DIR, keep_scheduler: bool = False) -> Any:
    """Turn the loaded demo ``pipe`` into demo-lcm in place: fuse the LoRA, set LCMScheduler."""
    from diffusers import LCMScheduler
    from safetensors.torch import load_file

    weights = folder / LORA_FILE
    if not weights.is_file():
        raise ModelNotFoundError(
            f"the few-step demo's LoRA is missing from {folder}; reinstall multidiffusion or distil it with "
            "`python -m devtools.demo.distill`"
        )
    fuse_lora(pipe.unet, load_file(str(weights)))
    if not keep_scheduler:
        pipe.scheduler = LCMScheduler.from_pretrained(str(folder / "scheduler"))
    return pipe
