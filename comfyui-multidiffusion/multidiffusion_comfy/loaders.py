"""Loader nodes: the demo model shipped in ``multidiffusion`` as ComfyUI MODEL, CLIP and VAE objects.

The demo is a tiny SD-1-style model (three UNet levels of 64/128/128 channels, a 64-wide CLIP text
encoder with its own 723-token vocabulary, a VAE that downsamples by 4) stored in diffusers' layout.
ComfyUI's checkpoint detection only recognises the real model families, so the loader builds the
objects from ComfyUI's own pieces with the demo's configuration spelled out:

- UNet: the diffusers weights renamed to the LDM ``openaimodel.UNetModel`` layout with ComfyUI's own
  config-driven map (``comfy.utils.unet_to_diffusers``), loaded into an SD 1.5 model configuration
  whose UNet shape, latent scale factor and beta schedule are the demo's;
- CLIP: ComfyUI's SD 1 text encoder and tokenizer classes given the demo's transformer config,
  tokenizer files, special tokens and 32-token context;
- VAE: ComfyUI's ``AutoencoderKL`` with the demo's channel widths, downscale ratio 4.

Everything stays in float32: the model is small, and it keeps the loaded model's predictions equal to
the library's (tests/comfyui/test_loaders.py). Nothing is downloaded and no file is written.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import comfy.diffusers_convert
import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils
import torch
from safetensors.torch import load_file

from multidiffusion.models.loading import DEMO_MODEL_DIR

__all__ = [
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "MultiDiffusionDemoModelLoader",
    "demo_unet_config",
    "load_demo_clip",
    "load_demo_model",
    "load_demo_vae",
]

DTYPE = torch.float32
_CLIP_VOCABULARY = 49408  # comfy.clip_model.CLIPEmbeddings' fixed vocabulary size
_LATENT_UPSCALE_NOTE = (
    "The demo VAE downsamples by 4, not 8: ComfyUI's Empty Latent Image divides by 8, so ask it for twice "
    "the image size you want (512 x 128 gives a 256 x 64 image)."
)


def _config(component: str) -> dict[str, Any]:
    return json.loads((DEMO_MODEL_DIR / component / "config.json").read_text())


def _context_length() -> int:
    """Tokens per prompt, start and end tokens included (the demo's tokenizer: 32)."""
    return json.loads((DEMO_MODEL_DIR / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"]


def _weights(component: str, name: str = "diffusion_pytorch_model.safetensors") -> dict[str, torch.Tensor]:
    return {k: v.to(DTYPE) for k, v in load_file(DEMO_MODEL_DIR / component / name).items()}


def demo_unet_config(unet: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's ``UNetModel`` keyword arguments for a diffusers ``UNet2DConditionModel`` config.

    Per level: ``layers_per_block`` resnets going down and one more going up, each followed by
    ``transformer_layers_per_block`` transformer blocks where the level's block type has
    cross-attention. ComfyUI lists the up path's depths from the top level down, like the down path.
    diffusers' legacy ``attention_head_dim`` is the number of heads (as in SD 1.x's config).
    """
    width = unet["block_out_channels"]
    per = unet["layers_per_block"]
    depth = unet["transformer_layers_per_block"]
    if not isinstance(depth, int) or not isinstance(per, int):
        raise ValueError("unet config: per-level layers_per_block / transformer_layers_per_block are not supported")
    down = [depth if kind.startswith("CrossAttn") else 0 for kind in unet["down_block_types"]]
    up = [depth if kind.startswith("CrossAttn") else 0 for kind in reversed(unet["up_block_types"])]
    heads = unet["num_attention_heads"] or unet["attention_head_dim"]
    return {
        "image_size": unet["sample_size"],
        "in_channels": unet["in_channels"],
        "out_channels": unet["out_channels"],
        "model_channels": width[0],
        "num_res_blocks": [per] * len(width),
        "channel_mult": [w // width[0] for w in width],
        "transformer_depth": [d for d in down for _ in range(per)],
        "transformer_depth_output": [d for d in up for _ in range(per + 1)],
        "transformer_depth_middle": depth,
        "context_dim": unet["cross_attention_dim"],
        "use_linear_in_transformer": unet["use_linear_projection"],
        "num_heads": heads,
        "num_head_channels": -1,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "use_checkpoint": False,
    }


def unet_to_ldm(
    state: dict[str, torch.Tensor], unet_config: dict[str, Any], extra_names: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """diffusers UNet weights under LDM names, with ComfyUI's map for this config (and ``extra_names``,
    diffusers name -> LDM name, for a ControlNet's own layers); a weight the map does not name is an
    error (the config and the weights disagree)."""
    names = {**comfy.utils.unet_to_diffusers(unet_config), **(extra_names or {})}
    missing = sorted(set(state) - set(names))
    if missing:
        raise ValueError(f"unet weights without an LDM name for this config: {missing[:5]}")
    return {names[k]: v for k, v in state.items()}


class _DemoSD1(comfy.supported_models.SD15):
    """SD 1.5's model configuration with the demo's UNet: matched by nothing in ComfyUI's detection,
    used only through this loader."""

    unet_config: ClassVar[dict[str, Any]] = {}
    unet_extra_config: ClassVar[dict[str, Any]] = {}  # SD 1.5's would set 8 heads over the demo's 4
    supported_inference_dtypes: ClassVar[list[torch.dtype]] = [DTYPE]


def load_demo_model() -> comfy.model_patcher.ModelPatcher:
    """The demo UNet as a ComfyUI MODEL: epsilon prediction, the demo scheduler's scaled-linear betas
    (ComfyUI's ``linear`` schedule is the same sqrt-spaced one) and the VAE's latent scale factor."""
    unet = _config("unet")
    scheduler = json.loads((DEMO_MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())
    if scheduler["prediction_type"] != "epsilon" or scheduler["beta_schedule"] != "scaled_linear":
        raise ValueError("demo scheduler: only epsilon prediction with scaled_linear betas is supported")
    unet_config = demo_unet_config(unet)
    model_config = _DemoSD1(unet_config)
    vae = _config("vae")
    model_config.latent_format = comfy.latent_formats.SD15(scale_factor=vae["scaling_factor"])
    # pixels per latent pixel, where nodes that size windows in pixels look (the pack's tiled node;
    # later ComfyUI versions name it so): 4 for the demo, not SD's 8
    model_config.latent_format.spacial_downscale_ratio = 2 ** (len(vae["block_out_channels"]) - 1)
    model_config.sampling_settings = {
        "beta_schedule": "linear",
        "linear_start": scheduler["beta_start"],
        "linear_end": scheduler["beta_end"],
        "timesteps": scheduler["num_train_timesteps"],
    }
    model_config.set_inference_dtype(DTYPE, None)
    prefix = "model.diffusion_model."
    state = {prefix + k: v for k, v in unet_to_ldm(_weights("unet"), unet_config).items()}
    names = {k[len(prefix) :] for k in state}  # before loading: ComfyUI pops what it loads
    model = model_config.get_model(state, prefix, device=torch.device("cpu"))
    model.load_model_weights(state, prefix)
    _check_loaded(model.diffusion_model, names, "unet")
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def _check_loaded(module: torch.nn.Module, names: set[str], what: str, unused: frozenset[str] = frozenset()) -> None:
    """Every parameter of ``module`` came from the demo's weights (ComfyUI only logs misses), except
    the ``unused`` ones."""
    missing = sorted(set(module.state_dict()) - names - unused)
    if missing:
        raise ValueError(f"demo {what}: no weights for {missing[:5]}")


class _DemoTokenizer(comfy.sd1_clip.SDTokenizer):
    """The demo's CLIP BPE tokenizer (its own files) padded with end tokens to its 32-token context."""

    def __init__(self, embedding_directory: str | None = None, tokenizer_data: dict | None = None) -> None:
        super().__init__(
            tokenizer_path=str(DEMO_MODEL_DIR / "tokenizer"),
            max_length=_context_length(),
            embedding_directory=embedding_directory,
            embedding_size=_config("text_encoder")["hidden_size"],
            tokenizer_data=tokenizer_data or {},
        )


class _DemoTextModel(comfy.sd1_clip.SDClipModel):
    """ComfyUI's CLIP text transformer with the demo's config; the prompt embedding is the last
    layer's normalised hidden states, as in the library's SD 1 pipeline."""

    def __init__(
        self, device: Any = "cpu", dtype: torch.dtype | None = None, model_options: dict | None = None
    ) -> None:
        config = _config("text_encoder")
        super().__init__(
            device=device,
            max_length=_context_length(),
            textmodel_json_config=config,
            dtype=dtype,
            special_tokens={
                "start": config["bos_token_id"],
                "end": config["eos_token_id"],
                "pad": config["pad_token_id"],
            },
            return_projected_pooled=False,
            model_options=model_options or {},
        )


class _DemoClipTokenizer(comfy.sd1_clip.SD1Tokenizer):
    def __init__(self, embedding_directory: str | None = None, tokenizer_data: dict | None = None) -> None:
        super().__init__(
            embedding_directory=embedding_directory, tokenizer_data=tokenizer_data or {}, tokenizer=_DemoTokenizer
        )


class _DemoClipModel(comfy.sd1_clip.SD1ClipModel):
    def __init__(
        self, device: Any = "cpu", dtype: torch.dtype | None = None, model_options: dict | None = None
    ) -> None:
        super().__init__(device=device, dtype=dtype, model_options=model_options or {}, clip_model=_DemoTextModel)


def load_demo_clip() -> comfy.sd.CLIP:
    """The demo text encoder and tokenizer as a ComfyUI CLIP."""
    state = {"clip_l.transformer." + k: v for k, v in _weights("text_encoder", "model.safetensors").items()}
    # ComfyUI's CLIP embeddings have OpenAI CLIP's vocabulary size whatever the config says: the demo's
    # 723 token rows come first, the rest stay zero (its tokenizer never produces those ids)
    key = "clip_l.transformer.text_model.embeddings.token_embedding.weight"
    rows = torch.zeros(_CLIP_VOCABULARY, state[key].shape[1], dtype=DTYPE)
    rows[: state[key].shape[0]] = state[key]
    state[key] = rows
    target = comfy.supported_models_base.ClipTarget(_DemoClipTokenizer, _DemoClipModel)
    names = {k[len("clip_l.transformer.") :] for k in state}
    clip = comfy.sd.CLIP(
        target, state_dict=state, parameters=comfy.utils.calculate_parameters(state), model_options={"dtype": DTYPE}
    )
    # the projection feeds only the pooled output, which SD 1 conditioning does not use
    _check_loaded(clip.cond_stage_model.clip_l.transformer, names, "clip", frozenset({"text_projection.weight"}))
    return clip


def _vae_to_ldm(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers VAE weights under LDM names: ComfyUI's converter, written for four levels, numbers
    the decoder's up blocks ``3 - i``; with ``levels`` levels they are ``levels - 1 - i``."""
    out = {}
    shift = 4 - levels
    for key, value in comfy.diffusers_convert.convert_vae_state_dict(state).items():
        if key.startswith("decoder.up."):
            index, rest = key[len("decoder.up.") :].split(".", 1)
            key = f"decoder.up.{int(index) - shift}.{rest}"
        out[key] = value
    return out


def load_demo_vae() -> comfy.sd.VAE:
    """The demo VAE as a ComfyUI VAE (``AutoencoderKL``, latents at a quarter of the image size)."""
    config = _config("vae")
    width = config["block_out_channels"]
    levels = len(width)
    ddconfig = {
        "double_z": True,
        "z_channels": config["latent_channels"],
        "resolution": config["sample_size"],
        "in_channels": config["in_channels"],
        "out_ch": config["out_channels"],
        "ch": width[0],
        "ch_mult": [w // width[0] for w in width],
        "num_res_blocks": config["layers_per_block"],
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    state = _vae_to_ldm(_weights("vae"), levels)
    names = {
        k.replace("encoder.quant_conv.", "quant_conv.").replace("decoder.post_quant_conv.", "post_quant_conv.")
        for k in state
    }
    vae = comfy.sd.VAE(
        sd=state, config={"params": {"ddconfig": ddconfig, "embed_dim": config["latent_channels"]}}, dtype=DTYPE
    )
    _check_loaded(vae.first_stage_model, names, "vae")
    vae.downscale_ratio = vae.upscale_ratio = 2 ** (levels - 1)
    return vae


class MultiDiffusionDemoModelLoader:
    """The tiny demo model shipped with multidiffusion: every example workflow runs offline on a CPU."""

    DESCRIPTION = (
        "Loads the tiny demo model shipped in the multidiffusion package (no download). " + _LATENT_UPSCALE_NOTE
    )
    CATEGORY = "multidiffusion/loaders"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("model", "clip", "vae")
    OUTPUT_TOOLTIPS = (
        "The demo UNet (SD 1 style, epsilon prediction) for KSampler or the MultiDiffusion nodes.",
        "The demo text encoder (32-token context) for CLIP Text Encode.",
        "The demo VAE: latents are a quarter of the image size.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict]:
        return {"required": {}}

    def load(self) -> tuple[Any, Any, Any]:
        return load_demo_model(), load_demo_clip(), load_demo_vae()


NODE_CLASS_MAPPINGS = {"MultiDiffusionDemoModelLoader": MultiDiffusionDemoModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"MultiDiffusionDemoModelLoader": "Load Demo Model (MultiDiffusion)"}
