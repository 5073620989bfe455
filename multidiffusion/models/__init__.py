"""Model adapters: one per model family, all driving the same engine."""

from __future__ import annotations

from typing import Any

from multidiffusion.engine.adapter import ModelAdapter, PromptEmbeddings
from multidiffusion.models.families import FAMILY_OPTIONS
from multidiffusion.models.sd import StableDiffusionAdapter
from multidiffusion.models.sdxl import StableDiffusionXLAdapter

__all__ = [
    "FAMILIES",
    "ModelAdapter",
    "PromptEmbeddings",
    "StableDiffusionAdapter",
    "StableDiffusionXLAdapter",
    "adapter_for",
    "model_family",
]

FAMILIES = {
    "sd": "Stable Diffusion 1.x / 2.x (UNet2DConditionModel)",
    "sdxl": "Stable Diffusion XL (UNet2DConditionModel with text-time conditioning)",
    "sd3": "Stable Diffusion 3 / 3.5 (SD3Transformer2DModel)",
    "flux": "FLUX.1 dev / schnell (FluxTransformer2DModel)",
}
"""The families the engine drives: name -> what it is."""

TRANSFORMERS = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}
"""Diffusion transformer classes -> their family."""


def _names(families: tuple[str, ...]) -> str:
    return ", ".join(f.upper() for f in families)


def supported_families() -> str:
    """The supported families in words, for error messages."""
    return "; ".join(FAMILIES.values())


def _transformer_family(pipe: Any) -> str:
    """'flux' or 'sd3' for a pipeline with a diffusion transformer; ValueError naming the supported
    families for any other transformer, and for FLUX transformers with extra input channels (Fill,
    Control, Kontext)."""
    transformer = pipe.transformer
    name = type(transformer).__name__
    family = TRANSFORMERS.get(name)
    if family is None:
        raise ValueError(
            f"{type(pipe).__name__} with a {name} is not supported; the supported families are: {supported_families()}"
        )
    for component in ("vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        if getattr(pipe, component, None) is None:
            raise ValueError(
                f"pipe must have a {component!r} for this {family.upper()} model; {type(pipe).__name__} has none"
            )
    latent = pipe.vae.config.latent_channels
    channels = transformer.config.in_channels
    expected = 4 * latent if family == "flux" else latent
    if channels != expected:
        raise ValueError(
            f"the {name} takes {channels} input channels but {family.upper()} text-to-image takes {expected} "
            f"(the VAE's {latent} latent channels{' in 2x2 patches' if family == 'flux' else ''}): Fill, Control, "
            "Kontext and other image-conditioned variants need another input; use the text-to-image model"
        )
    return family


def model_family(pipe: Any) -> str:
    """'flux' or 'sd3' for pipelines with those diffusion transformers; for UNets 'sdxl' with SDXL's
    text-and-time added conditioning, else 'sd' (SD 1.x / 2.x).

    Raises ``ValueError`` naming the supported families (:data:`FAMILIES`) for pipelines the engine
    can't drive: other transformers, missing components, other added conditionings, or UNets whose
    input is neither the VAE's latent alone nor an inpainting UNet's (latent, mask and masked-image
    latent: ``2 * latent + 1`` channels, as diffusers' inpainting pipelines check); depth and
    upscaling UNets take other extra inputs; UNets with a guidance embedding (``time_cond_proj_dim``:
    LCM models) are refused by name until they are supported.
    """
    if getattr(pipe, "transformer", None) is not None and getattr(pipe, "unet", None) is None:
        return _transformer_family(pipe)
    for name in ("unet", "vae", "scheduler"):
        if getattr(pipe, name, None) is None:
            raise ValueError(
                f"{type(pipe).__name__} has no {name!r}, so it is no pipeline this library drives; the supported "
                f"families are: {supported_families()}"
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
    if unet_config.get("time_cond_proj_dim") is not None:
        raise ValueError(
            f"the UNet has a guidance embedding (time_cond_proj_dim={unet_config.get('time_cond_proj_dim')}): it is a "
            "latent consistency (LCM) model, distilled to take the guidance scale as an input, which is not "
            "supported yet (it would run as plain classifier-free guidance and give a wrong image); use the model "
            "it was distilled from"
        )
    added = unet_config.get("addition_embed_type")
    if added == "text_time":
        required = ("text_encoder_2", "tokenizer_2")
        family = "sdxl"
    elif added is None:
        required = ("text_encoder", "tokenizer")
        family = "sd"
    else:
        raise ValueError(
            f"UNets with addition_embed_type={added!r} are not supported; the supported families are: "
            f"{supported_families()}"
        )
    for name in required:
        if getattr(pipe, name, None) is None:
            raise ValueError(
                f"pipe must have a {name!r} for this {family.upper()} UNet; {type(pipe).__name__} has none"
            )
    return family


def adapter_for(pipe: Any, **options: Any) -> ModelAdapter:
    """The adapter for a diffusers pipeline (text-to-image, img2img or inpainting; their components
    are shared).

    ``options``: ``clip_skip`` (SD, SDXL, SD 3); ``crops_coords_top_left`` and ``original_size`` for
    SDXL (see :mod:`multidiffusion.models.sdxl`); ``positions`` and ``true_cfg_scale`` for FLUX
    (:mod:`multidiffusion.models.flux`); ``max_sequence_length`` for SD 3 and FLUX; skip-layer guidance
    (``skip_guidance_layers``, ``skip_layer_guidance_scale`` / ``_start`` / ``_stop``) for SD 3. A ``None``
    option takes the adapter's default; an option the family does not take is a ``ValueError``.
    """
    options = {k: v for k, v in options.items() if v is not None}
    family = model_family(pipe)
    for name in options:
        takes = FAMILY_OPTIONS.get(name)
        if takes is None:
            raise ValueError(f"unknown model option {name!r}; the options are {', '.join(FAMILY_OPTIONS)}")
        if family not in takes:
            what = "is SDXL's micro-conditioning" if takes == ("sdxl",) else f"applies to {_names(takes)} models"
            raise ValueError(f"{name} {what}; this model is {FAMILIES[family]}, which takes no {name}")
    if family == "sdxl":
        return StableDiffusionXLAdapter(pipe, **options)
    if family == "sd3":
        from multidiffusion.models.sd3 import StableDiffusion3Adapter

        return StableDiffusion3Adapter(pipe, **options)
    if family == "flux":
        from multidiffusion.models.flux import FluxAdapter

        return FluxAdapter(pipe, **options)
    return StableDiffusionAdapter(pipe, **options)
