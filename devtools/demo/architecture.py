"""The demo model's architecture and how it is saved as a diffusers Stable Diffusion folder.

Shapes (64 px images, 16 x 16 x 4 latents):

- VAE: ``AutoencoderKL`` with block_out_channels (32, 64, 64), one layer per block (down-sampling 4);
- UNet: ``UNet2DConditionModel`` with block_out_channels (64, 128, 128), one layer per block,
  cross-attention (dimension 64) at the 8 x 8 and 4 x 4 levels and in the middle, about 6.6M
  parameters; epsilon prediction;
- text encoder: a 2-layer ``CLIPTextModel`` with hidden size 64 over the word-level tokenizer of
  :mod:`.tokenizer`;
- noise schedule: Stable Diffusion's (scaled_linear, beta 0.00085 .. 0.012, 1000 steps), so the usual
  diffusers schedulers (DDIM, Euler, DPM++, UniPC) sample it; the folder ships a DDIMScheduler.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from devtools.demo.tokenizer import BOS, EOS, MODEL_MAX_LENGTH, build_vocab_and_merges, write_tokenizer

__all__ = [
    "DEFAULT_MODEL_DIR",
    "SCHEDULER_CONFIG",
    "build_text_encoder",
    "build_unet",
    "build_vae",
    "count_parameters",
    "prefix_text_encoder_keys",
    "save_pipeline",
]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "multidiffusion" / "demo" / "model"
IMAGE_SIZE = 64
LATENT_SIZE = 16

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def build_vae() -> AutoencoderKL:
    """A small KL autoencoder, 64 px -> 16 x 16 x 4 latents."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=IMAGE_SIZE,
        scaling_factor=1.0,
    )


def build_unet() -> UNet2DConditionModel:
    """The 6.6M-parameter denoiser over 16 x 16 x 4 latents, conditioned on 64-d text states."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=4,  # diffusers' legacy name: 4 heads per attention layer
        norm_num_groups=32,
    )


def build_text_encoder(vocab_size: int | None = None) -> CLIPTextModel:
    """A 2-layer CLIP text transformer (hidden size 64) over the demo tokenizer's vocabulary."""
    vocab, _ = build_vocab_and_merges()
    config = CLIPTextConfig(
        vocab_size=vocab_size or len(vocab),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        projection_dim=64,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )
    return CLIPTextModel(config)


def train_scheduler() -> DDPMScheduler:
    """The training noise schedule (same betas as :data:`SCHEDULER_CONFIG`)."""
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "clip_sample")
    return DDPMScheduler(**{k: SCHEDULER_CONFIG[k] for k in keys})


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def prefix_text_encoder_keys(path: str | Path) -> None:
    """Rename a CLIPTextModel's tensors to ``text_model.*`` in place, as SD checkpoints on the Hub
    and transformers 4.x write them. transformers 5 saves them without the prefix, which 4.x does
    not load (it silently initialises a random text encoder); 5.x loads both."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    renamed = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in tensors.items()}
    if renamed.keys() != tensors.keys():
        save_file(renamed, str(path), metadata={"format": "pt"})


def save_pipeline(
    folder: str | Path, vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel
) -> Path:
    """Write a StableDiffusionPipeline folder: float16 .safetensors, tokenizer, DDIM scheduler."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    write_tokenizer(tmp / "tokenizer")
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).half(),
        text_encoder=copy.deepcopy(text_encoder).half(),
        tokenizer=CLIPTokenizer.from_pretrained(tmp / "tokenizer"),
        unet=copy.deepcopy(unet).half(),
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(tmp, safe_serialization=True)
    prefix_text_encoder_keys(tmp / "text_encoder" / "model.safetensors")
    shutil.rmtree(tmp / "tokenizer")
    write_tokenizer(tmp / "tokenizer")  # only vocab.json + merges.txt + configs: loads in any version
    index = json.loads((tmp / "model_index.json").read_text())
    index["safety_checker"] = [None, None]
    index["feature_extractor"] = [None, None]
    index["requires_safety_checker"] = False
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
