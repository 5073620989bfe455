"""Tiny IP-Adapters for the tests, built in-process in diffusers' file format (no downloads).

An IP-Adapter (Ye et al. 2023) is an image encoder (CLIP vision with projection), a projection of its
image embedding into ``num_tokens`` extra context tokens (``image_proj``), and a key and a value
projection per cross-attention layer that attend to those tokens (``ip_adapter``): each
cross-attention's output becomes attention(q, k, v) + scale * attention(q, k_ip, v_ip).

:func:`write_ip_adapter` lays out a folder as the hub's ``h94/IP-Adapter`` does (``models/``,
``sdxl_models/``): ``<subfolder>/<weight_name>`` with the ``image_proj.*`` and ``ip_adapter.<id>.*``
tensors that ``load_ip_adapter`` reads, and ``<subfolder>/image_encoder`` with the CLIP vision model
it loads when the pipeline has none. Random weights, sized for the UNet it is made for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "EMBED_DIM",
    "NUM_TOKENS",
    "ip_adapter_state_dict",
    "reference_image",
    "tiny_image_encoder",
    "write_ip_adapter",
]

EMBED_DIM = 16  # the image encoder's projection: the image embedding's width
NUM_TOKENS = 4  # context tokens of a plain IP-Adapter (diffusers' ImageProjection)
IMAGE_SIZE = 32  # the tiny CLIP vision model's input side


def tiny_image_encoder(seed: int = 0) -> Any:
    """A random ``CLIPVisionModelWithProjection``: 32 px images, 8 px patches, width 32, 2 layers."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        projection_dim=EMBED_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )
    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(config).eval()


def _cross_attention_widths(unet: Any) -> list[int]:
    """The hidden size of each cross-attention layer, in ``unet.attn_processors`` order (the order
    diffusers numbers an IP-Adapter's layers in: ``_convert_ip_adapter_attn_to_diffusers``)."""
    channels = list(unet.config.block_out_channels)
    widths = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            widths.append(channels[-1])
        elif name.startswith("up_blocks"):
            widths.append(channels[::-1][int(name[len("up_blocks.")])])
        else:
            widths.append(channels[int(name[len("down_blocks.")])])
    return widths


def ip_adapter_state_dict(unet: Any, seed: int = 0, std: float = 0.5) -> dict[str, torch.Tensor]:
    """A plain IP-Adapter's tensors for ``unet``, random (``std``: large enough that the image moves
    the output), flat keys as in the hub's ``.safetensors`` files: ``image_proj.proj.weight``
    (tokens * cross-attention width, embedding width), ``image_proj.norm.*``, and for the i-th
    cross-attention layer ``ip_adapter.<2i+1>.to_k_ip.weight`` / ``to_v_ip.weight`` (width, cross
    width)."""
    cross = unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    state = {
        "image_proj.proj.weight": randn(NUM_TOKENS * cross, EMBED_DIM),
        "image_proj.proj.bias": randn(NUM_TOKENS * cross),
        "image_proj.norm.weight": 1 + randn(cross) * 0.1,
        "image_proj.norm.bias": randn(cross) * 0.1,
    }
    for i, width in enumerate(_cross_attention_widths(unet)):
        state[f"ip_adapter.{2 * i + 1}.to_k_ip.weight"] = randn(width, cross)
        state[f"ip_adapter.{2 * i + 1}.to_v_ip.weight"] = randn(width, cross)
    return state


def write_ip_adapter(
    folder: str | Path,
    unet: Any,
    subfolder: str = "models",
    weight_name: str = "ip-adapter.safetensors",
    seed: int = 0,
) -> Path:
    """Write a tiny IP-Adapter for ``unet`` under ``folder`` (the hub repo's layout): the weights at
    ``folder/subfolder/weight_name`` and the image encoder in ``folder/subfolder/image_encoder``.
    Returns ``folder``; load it with ``load_ip_adapter(folder, subfolder=..., weight_name=...)``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    target = folder / subfolder
    target.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in ip_adapter_state_dict(unet, seed).items()}
    if weight_name.endswith(".safetensors"):
        save_file(state, str(target / weight_name))
    else:  # the .bin layout: {"image_proj": {...}, "ip_adapter": {...}}
        nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            nested[head][rest] = value
        torch.save(nested, target / weight_name)
    tiny_image_encoder(seed).save_pretrained(target / "image_encoder")
    return folder


def reference_image(seed: int = 0, size: int = 48) -> Image.Image:
    """A random RGB picture to condition on (any size: the feature extractor resizes it)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
