"""The demo ControlNets shipped in ``multidiffusion`` as ComfyUI CONTROL_NETs: the layout one
(``demo``) and the Tile one (``demo-tile``: its control image is the image itself, an upscale's
resized input; trained by ``python -m devtools.demo.train_controlnet --control tile``).

A diffusers ``ControlNetModel`` is the UNet's encoder half plus three things of its own: a small
convolutional encoder of the control image (``controlnet_cond_embedding``), a zero-initialised 1x1
convolution after each encoder block (``controlnet_down_blocks``) and one after the middle block.
ComfyUI's ``cldm.ControlNet`` holds the same layers under LDM names (``input_hint_block``,
``zero_convs``, ``middle_block_out``), but its image encoder is SD's fixed one (16, 32, 96, 256
channels, downsampling by 8); the demo's has 16, 32, 64 channels and downsamples by 4, like its
VAE. So the ControlNet is built from the demo UNet's configuration and its image encoder replaced by
one of the demo's shape, with the same layout (a convolution at each even index, SiLU between), so
ComfyUI's stock Apply ControlNet nodes drive it unchanged: they resize the control image to the
latent size times ``compression_ratio`` (4 here).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management
import comfy.ops
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential
from safetensors.torch import load_file

from multidiffusion.models.controlnet import DEMO_CONTROLNETS

from .loaders import DTYPE, demo_unet_config, unet_to_ldm

__all__ = [
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "MultiDiffusionDemoControlNetLoader",
    "MultiDiffusionDemoTileControlNetLoader",
    "load_demo_controlnet",
]


def _hint_encoder(channels: list[int], hint_channels: int, model_channels: int) -> TimestepEmbedSequential:
    """diffusers' ControlNetConditioningEmbedding in LDM layout: conv_in, then per width step a 3x3
    convolution and a strided one to the next width, then conv_out to the UNet's width; SiLU after
    every convolution but the last."""
    convs = [torch.nn.Conv2d(hint_channels, channels[0], 3, padding=1)]
    for a, b in itertools.pairwise(channels):
        convs += [torch.nn.Conv2d(a, a, 3, padding=1), torch.nn.Conv2d(a, b, 3, padding=1, stride=2)]
    convs.append(torch.nn.Conv2d(channels[-1], model_channels, 3, padding=1))
    layers: list[torch.nn.Module] = []
    for conv in convs:
        layers += [conv, torch.nn.SiLU()]
    return TimestepEmbedSequential(*layers[:-1])


def _controlnet_names(state: dict[str, torch.Tensor], blocks: int) -> dict[str, str]:
    """diffusers name -> LDM name of the ControlNet's own layers (those the UNet map does not know)."""
    names = {}
    for kind in ("weight", "bias"):
        names[f"controlnet_mid_block.{kind}"] = f"middle_block_out.0.{kind}"
        names[f"controlnet_cond_embedding.conv_in.{kind}"] = f"input_hint_block.0.{kind}"
        for i in range(blocks):
            names[f"controlnet_cond_embedding.blocks.{i}.{kind}"] = f"input_hint_block.{2 * (i + 1)}.{kind}"
        names[f"controlnet_cond_embedding.conv_out.{kind}"] = f"input_hint_block.{2 * (blocks + 1)}.{kind}"
        i = 0
        while f"controlnet_down_blocks.{i}.{kind}" in state:
            names[f"controlnet_down_blocks.{i}.{kind}"] = f"zero_convs.{i}.0.{kind}"
            i += 1
    return names


def load_demo_controlnet(name: str = "demo") -> comfy.controlnet.ControlNet:
    """A shipped demo ControlNet as a ComfyUI CONTROL_NET: ``"demo"`` (trained on colour-coded layouts
    of the demo scenes) or ``"demo-tile"`` (on the scenes themselves, down- and up-sampled)."""
    if name not in DEMO_CONTROLNETS:
        raise ValueError(f"name must be one of {', '.join(DEMO_CONTROLNETS)}, got {name!r}")
    folder: Path = DEMO_CONTROLNETS[name]
    config: dict[str, Any] = json.loads((folder / "config.json").read_text())
    channels = config["conditioning_embedding_out_channels"]
    # a ControlNet has no decoder half: its up path mirrors the down path only to fill in the config
    up = [kind.replace("Down", "Up") for kind in reversed(config["down_block_types"])]
    unet_config = demo_unet_config({**config, "sample_size": 16, "out_channels": 4, "up_block_types": up})
    unet_config.pop("out_channels")
    weights = {k: v.to(DTYPE) for k, v in load_file(folder / "diffusion_pytorch_model.safetensors").items()}
    state = unet_to_ldm(weights, unet_config, _controlnet_names(weights, 2 * (len(channels) - 1)))
    model = comfy.cldm.cldm.ControlNet(
        **unet_config,
        hint_channels=config["conditioning_channels"],
        dtype=DTYPE,
        device=torch.device("cpu"),
        operations=comfy.ops.disable_weight_init,
    )
    model.input_hint_block = _hint_encoder(channels, config["conditioning_channels"], unet_config["model_channels"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{name} controlnet: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return comfy.controlnet.ControlNet(
        model,
        compression_ratio=2 ** (len(channels) - 1),
        load_device=comfy.model_management.get_torch_device(),
        manual_cast_dtype=None,
    )


class MultiDiffusionDemoControlNetLoader:
    """The demo ControlNet shipped with multidiffusion, for ComfyUI's Apply ControlNet nodes."""

    DESCRIPTION = (
        "Loads the tiny layout ControlNet shipped in the multidiffusion package (no download), for the demo model "
        "of Load Demo Model (MultiDiffusion). Its control image is a colour-coded scene layout (sky, sea, land, ... "
        "in the palette of multidiffusion's demo scenes)."
    )
    CATEGORY = "multidiffusion/loaders"
    RETURN_TYPES = ("CONTROL_NET",)
    RETURN_NAMES = ("control_net",)
    OUTPUT_TOOLTIPS = ("The demo ControlNet, for Apply ControlNet with the demo model.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict]:
        return {"required": {}}

    def load(self) -> tuple[Any]:
        return (load_demo_controlnet(),)


class MultiDiffusionDemoTileControlNetLoader(MultiDiffusionDemoControlNetLoader):
    """The demo Tile ControlNet shipped with multidiffusion, for upscaling with the demo model."""

    DESCRIPTION = (
        "Loads the tiny Tile ControlNet shipped in the multidiffusion package (no download), for the demo model of "
        "Load Demo Model (MultiDiffusion). Its control image is the image itself, as blurry as an upscaler leaves "
        "it (the upscaled input of a tiled upscale): it keeps the result on the input's layout and colours while "
        "the model adds detail, as the SD 1.5 / SDXL Tile ControlNets do."
    )
    OUTPUT_TOOLTIPS = (
        "The demo Tile ControlNet, for Apply ControlNet with the demo model (image: the upscaled input).",
    )

    def load(self) -> tuple[Any]:
        return (load_demo_controlnet("demo-tile"),)


NODE_CLASS_MAPPINGS = {
    "MultiDiffusionDemoControlNetLoader": MultiDiffusionDemoControlNetLoader,
    "MultiDiffusionDemoTileControlNetLoader": MultiDiffusionDemoTileControlNetLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MultiDiffusionDemoControlNetLoader": "Load Demo ControlNet (MultiDiffusion)",
    "MultiDiffusionDemoTileControlNetLoader": "Load Demo Tile ControlNet (MultiDiffusion)",
}
