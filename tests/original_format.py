"""Write diffusers components as an original-format (CompVis / A1111 / sgm) single-file checkpoint.

Test helper only: it turns the tiny random components into the ``.safetensors`` layout that
fine-tunes are shared in, so the single-file loading path can be tested without downloads.

Adapted from diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py`` and
``scripts/convert_diffusers_to_original_sdxl.py`` (Copyright The HuggingFace Team, Apache-2.0).
Those scripts hard-code the block and layer counts of the real models; here the UNet and VAE
mappings are computed from the config, so they also hold for the tiny test models.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

_RESNET = [  # (diffusers, original)
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL
    "add_embedding.linear_2.": "label_emb.0.2.",
}


def unet_to_original(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel weights under the LDM ``openaimodel.UNetModel`` names."""
    per = config.layers_per_block + 1  # input blocks per level: resnets (+ attention) and a downsampler
    up_has_attention = ["CrossAttn" in t for t in config.up_block_types]
    out = {}
    for key, value in state.items():
        new = None
        for prefix, original in _UNET_TOP.items():
            if key.startswith(prefix):
                new = original + key[len(prefix) :]
        if new is None:
            new = _unet_block_key(key, per, up_has_attention)
        if ".resnets." in key:
            for hf, sd in _RESNET:
                new = new.replace(f".{hf}.", f".{sd}.")
        out["model.diffusion_model." + new] = value
    return out


def _unet_block_key(key: str, per: int, up_has_attention: list[bool]) -> str:
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks.{1 + i * per + j}.{0 if kind == 'resnets' else 1}.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{m[2]}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{i * per + j}.{0 if kind == 'resnets' else 1}.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        i = int(m[1])
        return f"output_blocks.{i * per + per - 1}.{2 if up_has_attention[i] else 1}.{m[2]}"
    raise KeyError(f"no original name for UNet weight {key}")


def vae_to_original(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """AutoencoderKL weights under the LDM ``AutoencoderKL`` names (attention as 1x1 convolutions)."""
    levels = len(config.block_out_channels)
    out = {}
    for key, value in state.items():
        new = key
        subs = [
            (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
            (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
            (
                r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.",
            ),
            (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample."),
            (r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        ]
        for pattern, repl in subs:
            new = re.sub(pattern, repl, new)
        new = new.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for hf, sd in [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                           ("to_out.0.", "proj_out.")]:  # fmt: skip
                new = new.replace(hf, sd)
            if value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)
        out["first_stage_model." + new] = value
    return out


def clip_to_original(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI CLIP text encoder (SD 1.x, SDXL's first encoder): transformers' names under ``prefix``."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


_OPEN_CLIP = [  # (diffusers, original)
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    (".fc1.", ".c_fc."),
    (".fc2.", ".c_proj."),
    (".self_attn", ".attn"),
    ("text_model.final_layer_norm.", "ln_final."),
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
]


def open_clip_to_original(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP text encoder (SD 2.x, SDXL's second encoder): fused q/k/v ``in_proj`` weights and a
    transposed ``text_projection``."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key if key.startswith(("text_model.", "text_projection")) else "text_model." + key
        if m := re.match(r"(.*\.self_attn)\.([qkv])_proj\.(weight|bias)$", key):
            qkv.setdefault(f"{m[1]}.in_proj_{m[3]}", {})[m[2]] = value
            continue
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
            continue
        for hf, sd in _OPEN_CLIP:
            key = key.replace(hf, sd)
        out[prefix + key] = value
    for key, parts in qkv.items():
        for hf, sd in _OPEN_CLIP:
            key = key.replace(hf, sd)
        out[prefix + key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def original_state_dict(pipe: Any, family: str) -> dict[str, torch.Tensor]:
    """The single-file state dict of a pipeline: ``family`` is 'sd1', 'sd2' or 'sdxl'."""
    state = {
        **unet_to_original(pipe.unet.state_dict(), pipe.unet.config),
        **vae_to_original(pipe.vae.state_dict(), pipe.vae.config),
    }
    te = pipe.text_encoder.state_dict()
    if family == "sd1":
        state.update(clip_to_original(te, "cond_stage_model.transformer."))
    elif family == "sd2":
        state.update(open_clip_to_original(te, "cond_stage_model.model."))
    elif family == "sdxl":
        state.update(clip_to_original(te, "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_original(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    else:
        raise ValueError(f"family must be 'sd1', 'sd2' or 'sdxl', got {family!r}")
    return {k: v.detach().contiguous() for k, v in state.items() if not k.endswith("position_ids")}


def write_original_checkpoint(pipe: Any, path: str | Path, family: str) -> Path:
    """Save ``pipe`` as an original-format ``.safetensors`` checkpoint of ``family``."""
    path = Path(path)
    save_file(original_state_dict(pipe, family), str(path))
    return path
