"""Model adapters: one per model family, all driving the same engine."""

from __future__ import annotations

from typing import Any

from multidiffusion.engine.adapter import Conditioning, ModelAdapter
from multidiffusion.models.sd import StableDiffusionAdapter
from multidiffusion.models.sdxl import StableDiffusionXLAdapter

__all__ = ["Conditioning", "ModelAdapter", "StableDiffusionAdapter", "StableDiffusionXLAdapter", "adapter_for"]

SDXL_OPTIONS = ("crops_coords_top_left", "original_size")


def model_family(pipe: Any) -> str:
    """'sdxl' for UNets with SDXL's text-and-time added conditioning, else 'sd' (SD 1.x / 2.x).

    Raises ``ValueError`` for pipelines the engine can't drive: missing components, other added
    conditionings, or UNets whose input is neither the VAE's latent alone nor an inpainting UNet's
    (latent, mask and masked-image latent: ``2 * latent + 1`` channels, as diffusers' inpainting
    pipelines check); depth and upscaling UNets take other extra inputs.
    """
    for name in ("unet", "vae", "scheduler"):
        if getattr(pipe, name, None) is None:
            raise ValueError(
                f"pipe must be a Stable Diffusion (1.x, 2.x or XL) pipeline; {type(pipe).__name__} has no {name!r}"
            )
    unet_config, vae_config = pipe.unet.config, pipe.vae.config
    latent = vae_config.latent_channels
    if unet_config.in_channels not in (latent, 2 * latent + 1):
        raise ValueError(
            f"the UNet takes {unet_config.in_channels} input channels but the VAE's latents have {latent}: "
            f"only text-to-image UNets ({latent} channels) and inpainting UNets ({2 * latent + 1}: latents, mask and "
            "masked image) are supported; depth and upscaling UNets need another image input, use the base "
            "model they were made from"
        )
    added = unet_config.get("addition_embed_type")
    if added == "text_time":
        required = ("text_encoder_2", "tokenizer_2")
        family = "sdxl"
    elif added is None:
        required = ("text_encoder", "tokenizer")
        family = "sd"
    else:
        raise ValueError(f"UNets with addition_embed_type={added!r} are not supported (only SD 1.x, 2.x and SDXL)")
    for name in required:
        if getattr(pipe, name, None) is None:
            raise ValueError(
                f"pipe must have a {name!r} for this {family.upper()} UNet; {type(pipe).__name__} has none"
            )
    return family


def adapter_for(pipe: Any, **options: Any) -> ModelAdapter:
    """The adapter for a diffusers pipeline (text-to-image, img2img or inpainting; their components
    are shared).

    ``options``: ``clip_skip`` for every family; ``crops_coords_top_left`` and ``original_size`` for
    SDXL (see :mod:`multidiffusion.models.sdxl`). A ``None`` option takes the adapter's default.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if model_family(pipe) == "sdxl":
        return StableDiffusionXLAdapter(pipe, **options)
    for name in SDXL_OPTIONS:
        if name in options:
            raise ValueError(f"{name} is SDXL's micro-conditioning; this model is SD 1.x/2.x, which has none")
    return StableDiffusionAdapter(pipe, **options)
