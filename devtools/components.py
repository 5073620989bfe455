"""Tiny random-weight Stable Diffusion components, built in-process (no downloads).

Used by the tests and the CPU benchmarks. Shapes follow the real models where it matters: the VAE
down-samples by 8 like SD's, so pixel and latent sizes relate as in real checkpoints; the UNet
accepts any latent size; the tokenizer is a real ``CLIPTokenizer`` over a character vocabulary.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "char_tokenizer",
    "sd_shaped_pipeline",
    "sd_shaped_vae",
    "sdxl_shaped_pipeline",
    "tiny_sd_inpaint_pipeline",
    "tiny_sd_pipeline",
    "tiny_sdxl_inpaint_pipeline",
    "tiny_sdxl_pipeline",
    "write_char_tokenizer",
]

_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins for bytes used by CLIP's (and GPT-2's) byte-level BPE."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def write_char_tokenizer(folder: str | Path, max_length: int = 32) -> Path:
    """Write vocab.json and merges.txt of a character-level CLIP BPE (no merges) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + _SPECIAL
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": max_length, "pad_token": "<|endoftext|>"})
    )
    return folder


def char_tokenizer(max_length: int = 32):
    from transformers import CLIPTokenizer

    folder = write_char_tokenizer(tempfile.mkdtemp(prefix="md-tokenizer-"), max_length)
    return CLIPTokenizer.from_pretrained(str(folder))


def _text_encoder(tokenizer, hidden: int = 32, projection: int | None = None, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection or hidden,
        hidden_act="gelu",
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def _vae(channels: int = 32, seed: int = 0, sample_size: int = 256, latent_channels: int = 4, **config: Any):
    """A VAE that down-samples by 8 (four blocks of ``channels``); ``config``: AutoencoderKL's other
    settings (e.g. shift and scaling factors)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[channels] * 4,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=min(32, channels),
        sample_size=sample_size,
        **config,
    ).eval()


# Stable Diffusion 2-base, as in its config.json: widths, blocks, heads (num_attention_heads per level)
SD2_UNET_CHANNELS = (320, 640, 1280, 1280)
SD2_HEADS = (5, 10, 20, 20)
SD2_VAE_CHANNELS = (128, 256, 512, 512)


def sd_shaped_vae(divisor: int = 4, seed: int = 0, sample_size: int = 512, scaling_factor: float = 0.18215) -> Any:
    """An ``AutoencoderKL`` with Stable Diffusion's architecture (four blocks of two layers, channels
    (128, 256, 512, 512), mid-block attention, 32 GroupNorm groups, native 512 px) at ``1/divisor`` of
    its width, random weights. ``divisor=1`` is the real size; SDXL's VAE is the same architecture
    (``sample_size=1024, scaling_factor=0.13025``)."""
    from diffusers import AutoencoderKL

    channels = [c // divisor for c in SD2_VAE_CHANNELS]
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=channels,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=min(32, channels[0]),
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    ).eval()


def sd_shaped_pipeline(
    divisor: int = 10,
    vae_divisor: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Any:
    """A random-weight ``StableDiffusionPipeline`` shaped like Stable Diffusion 2-base: UNet with four
    levels of two layers (cross-attention in the first three, linear projections), native 64x64
    latents, 77-token prompts, a VAE that down-samples by 8; every width is ``1/divisor`` of SD's
    (``divisor=1``: the real architecture, 865M UNet parameters; the text encoder has 2 layers of its
    width). Used by the benchmarks: model calls, coverage and time ratios carry over to the real
    model, absolute times don't. ``device``: where the weights are made (a GPU makes them fastest)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = char_tokenizer(max_length=77)
    hidden = max(32, 1024 // divisor // 32 * 32)
    channels = [c // divisor for c in SD2_UNET_CHANNELS]
    with torch.device(device or "cpu"):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=channels,
            layers_per_block=2,
            sample_size=64,
            in_channels=4,
            out_channels=4,
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            cross_attention_dim=hidden,
            attention_head_dim=[max(1, h // divisor) for h in SD2_HEADS],
            use_linear_projection=True,
            norm_num_groups=min(32, channels[0]),
        ).eval()
        pipe = StableDiffusionPipeline(
            unet=unet,
            vae=sd_shaped_vae(vae_divisor, seed),
            text_encoder=_text_encoder(tokenizer, hidden=hidden, seed=seed),
            tokenizer=tokenizer,
            scheduler=_ddim(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


# SDXL 1.0 base, as in its config.json
SDXL_UNET_CHANNELS = (320, 640, 1280)
SDXL_HEADS = (5, 10, 20)
SDXL_TRANSFORMER_LAYERS = (1, 2, 10)


def sdxl_shaped_pipeline(
    divisor: int = 1,
    vae_divisor: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Any:
    """A random-weight ``StableDiffusionXLPipeline`` shaped like SDXL 1.0 base at ``1/divisor`` of its
    width (``divisor=1``: the real UNet, 2.6B parameters: three levels, (1, 2, 10) transformer layers,
    cross-attention 2048 from two text encoders of widths 768 and 1280, "text_time" embeddings; native
    128x128 latents), the VAE at ``1/vae_divisor``. The text encoders have their widths but 2 layers
    each (prompts are encoded once per call: they don't weigh in a panorama's time). DDIM, as the
    paper. ``device``: where the weights are made (a GPU makes them fastest)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer, tokenizer_2 = char_tokenizer(max_length=77), char_tokenizer(max_length=77)
    widths = (max(32, 768 // divisor // 32 * 32), max(64, 1280 // divisor // 32 * 32))
    channels = [c // divisor for c in SDXL_UNET_CHANNELS]
    time_dim = max(8, 256 // divisor)
    with torch.device(device or "cpu"):
        text_encoder = _text_encoder(tokenizer, hidden=widths[0], seed=seed)
        text_encoder_2 = _text_encoder(tokenizer_2, hidden=widths[1], projection=widths[1], seed=seed + 1)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=channels,
            layers_per_block=2,
            sample_size=128,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=[max(1, h // divisor) for h in SDXL_HEADS],
            transformer_layers_per_block=SDXL_TRANSFORMER_LAYERS,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + widths[1],
            cross_attention_dim=sum(widths),
            norm_num_groups=min(32, channels[0]),
        ).eval()
        vae = sd_shaped_vae(vae_divisor, seed, sample_size=1024, scaling_factor=0.13025)
        pipe = StableDiffusionXLPipeline(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            scheduler=_ddim(),
            add_watermarker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def _ddim(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def tiny_sd_pipeline(
    sample_size: int = 32,
    channels: tuple[int, ...] = (32, 64),
    prediction_type: str = "epsilon",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A random-weight ``StableDiffusionPipeline``: UNet (32, 64) with cross-attention 32, a VAE
    that down-samples by 8, a 2-layer CLIP text encoder of width 32, a character tokenizer.

    ``sample_size`` is the UNet's native latent size (the default window)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=channels,
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (len(channels) - 1),
        up_block_types=["CrossAttnUpBlock2D"] * (len(channels) - 1) + ["UpBlock2D"],
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=min(32, channels[0]),
    ).eval()
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=_vae(seed=seed, sample_size=sample_size * 8),
        text_encoder=_text_encoder(tokenizer, seed=seed),
        tokenizer=tokenizer,
        scheduler=_ddim(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def tiny_sdxl_pipeline(sample_size: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A random-weight ``StableDiffusionXLPipeline`` (two text encoders, pooled embeds, time ids)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = char_tokenizer()
    tokenizer_2 = char_tokenizer()
    text_encoder = _text_encoder(tokenizer, seed=seed)
    # the second encoder is wider than the first, as in SDXL (768 and 1280): single-file loading tells
    # the two apart by their widths
    text_encoder_2 = _text_encoder(tokenizer_2, hidden=48, projection=32, seed=seed + 1)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + 32 (pooled projection)
        cross_attention_dim=80,  # 32 + 48 from the two encoders
        norm_num_groups=32,
    ).eval()
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=_vae(seed=seed, sample_size=sample_size * 8),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def _with_unet_inputs(unet: Any, in_channels: int, seed: int) -> Any:
    """The same UNet architecture taking ``in_channels`` input channels, fresh random weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config({**unet.config, "in_channels": in_channels}).eval()


def tiny_sd_inpaint_pipeline(
    sample_size: int = 32, in_channels: int = 9, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Any:
    """A random-weight ``StableDiffusionInpaintPipeline``: :func:`tiny_sd_pipeline`'s components with a
    UNet of ``in_channels`` inputs (9: an inpainting UNet, 4 latents + mask + 4 masked-image latents,
    as SD 1.5/2 inpainting; 4: a text-to-image UNet, which the pipeline drives by latent blending)."""
    from diffusers import StableDiffusionInpaintPipeline

    components = dict(tiny_sd_pipeline(sample_size, seed=seed).components)
    if in_channels != 4:
        components["unet"] = _with_unet_inputs(components["unet"], in_channels, seed)
    pipe = StableDiffusionInpaintPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def tiny_sdxl_inpaint_pipeline(
    sample_size: int = 32, in_channels: int = 9, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Any:
    """A random-weight ``StableDiffusionXLInpaintPipeline`` (as SDXL 1.0 inpainting 0.1: six time ids,
    no aesthetic score): :func:`tiny_sdxl_pipeline`'s components with a UNet of ``in_channels`` inputs."""
    from diffusers import StableDiffusionXLInpaintPipeline

    components = dict(tiny_sdxl_pipeline(sample_size, seed=seed).components)
    if in_channels != 4:
        components["unet"] = _with_unet_inputs(components["unet"], in_channels, seed)
    pipe = StableDiffusionXLInpaintPipeline(**components, requires_aesthetics_score=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
