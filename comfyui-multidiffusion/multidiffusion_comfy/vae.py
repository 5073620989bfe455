"""Tiled VAE decode and encode with canvas-wide GroupNorm statistics, over ComfyUI's VAE objects.

ComfyUI's own tiled VAE normalises every tile by that tile's GroupNorm statistics, so tones shift
from tile to tile. Ours (:mod:`multidiffusion.vae`) measures the statistics over the whole canvas
first (exactly, layer by layer, or in one pass with ``norm_stats="fast"``), runs the mid block and
its attention whole, and blends the tiles: a tiled decode matches a whole one up to the tiles'
borders, with memory bounded by the tile. ``circular`` decodes the left and right edges as
neighbours (360-degree panoramas).

Our tiling drives a diffusers ``AutoencoderKL`` (it splits the decoder at its latent resolution by
the diffusers module names). ComfyUI's VAE of the SD family (SD 1.x/2.x, SDXL, SD 3.5, FLUX.1:
``first_stage_model`` with the original ldm ``Encoder``/``Decoder``) has the same layers under the
original names. For each decode or encode, ComfyUI's model management loads its VAE to the VAE's
device (``load_models_gpu``, fully, as its own decode does), and a diffusers ``AutoencoderKL`` is
built around *the same tensors*: made on the meta device (no memory), its parameters then assigned
the loaded module's own weights under diffusers' names (diffusers' ldm-to-diffusers key map; the
attention's 1x1 convolutions become linear weights as views). No second copy of the weights exists
(about 335 MB for SDXL's VAE in float32 before); the view is dropped after the call, so ComfyUI
stays free to move or unload its VAE. Other VAEs (video, TAESD, Stable Cascade) are refused by name.
ComfyUI's LATENT holds the VAE's own latents (the model's scaling is undone after sampling), so the
latents go to the VAE as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from multidiffusion.vae.codec import decode_latents, encode_images
from multidiffusion.vae.latents import ScaledLatents
from multidiffusion.vae.norms import NORM_STATS

__all__ = [
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "MultiDiffusionVAEDecode",
    "MultiDiffusionVAEEncode",
    "diffusers_vae",
    "loaded_vae",
]

RAW_LATENTS = ScaledLatents(1.0)
"""ComfyUI's LATENT is in the VAE's own units: no scaling either way."""


def _count(sd: dict[str, torch.Tensor], pattern: str) -> int:
    n = 0
    while pattern.format(n) in sd:
        n += 1
    return n


def _diffusers_config(sd: dict[str, torch.Tensor], name: str) -> dict[str, Any]:
    """The diffusers ``AutoencoderKL`` config of an ldm VAE's state dict (shapes only)."""
    needed = (
        "encoder.conv_in.weight",
        "decoder.conv_in.weight",
        "decoder.conv_out.weight",
        "encoder.mid.attn_1.q.weight",
    )
    if any(k not in sd for k in needed) or "decoder.mid.block_1.mix_factor" in sd:
        raise ValueError(
            f"{name}: the exact tiled VAE needs a Stable Diffusion-style AutoencoderKL (SD 1.x/2.x, SDXL, SD 3.5, "
            "FLUX.1); this VAE is another kind: use ComfyUI's VAE Decode (Tiled)"
        )
    levels = _count(sd, "encoder.down.{}.block.0.conv1.weight")
    blocks = [sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in range(levels)]
    return {
        "in_channels": sd["encoder.conv_in.weight"].shape[1],
        "out_channels": sd["decoder.conv_out.weight"].shape[0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": blocks,
        "layers_per_block": _count(sd, "encoder.down.0.block.{}.conv1.weight"),
        "latent_channels": sd["decoder.conv_in.weight"].shape[1],
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 1.0,
        "use_quant_conv": "quant_conv.weight" in sd,
        "use_post_quant_conv": "post_quant_conv.weight" in sd,
    }


def diffusers_vae(vae: Any, name: str = "vae") -> torch.nn.Module:
    """ComfyUI's VAE object as a diffusers ``AutoencoderKL`` whose parameters are the VAE module's own
    tensors (shared storage, wherever ComfyUI has put them now): no weights are copied."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    model = getattr(vae, "first_stage_model", None)
    if model is None:
        raise ValueError(f"{name} must be a ComfyUI VAE (with a first_stage_model), got {type(vae).__name__}")
    sd = model.state_dict()  # detached tensors sharing the module's storage
    config = _diffusers_config(sd, name)
    converted = convert_ldm_vae_checkpoint(sd, config)
    with torch.device("meta"):
        out = AutoencoderKL(**config)
    missing = out.load_state_dict(converted, strict=False, assign=True).missing_keys
    if missing:
        raise ValueError(f"{name}: this VAE's layers don't map onto an AutoencoderKL (missing {sorted(missing)[:4]})")
    return out.eval().requires_grad_(False)


@contextlib.contextmanager
def loaded_vae(vae: Any, name: str = "vae") -> Iterator[torch.nn.Module]:
    """:func:`diffusers_vae` of the VAE as ComfyUI's model management loaded it for this call (all of
    it, on the VAE's device, as ComfyUI's own decode loads it)."""
    patcher = getattr(vae, "patcher", None)
    if patcher is not None and getattr(vae, "first_stage_model", None) is not None:
        import comfy.model_management

        comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    view = diffusers_vae(vae, name)
    try:
        yield view
    finally:
        del view


def _tiles(vae: torch.nn.Module, tile_size: int, overlap: int) -> tuple[int, int]:
    """Pixels to latent pixels (the VAE's factor); overlap clipped below the tile."""
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    tile = max(8, tile_size // f)
    return tile, min(max(0, overlap // f), tile - 1)


_TILE = {"default": 512, "min": 64, "max": 8192, "step": 64}
_OVERLAP = {"default": 128, "min": 0, "max": 4096, "step": 32}
_NORMS = (list(NORM_STATS), {"default": "exact", "tooltip": "GroupNorm statistics of the tiles: exact (measured over "
          "the whole canvas layer by layer: tiles agree in tone with a whole decode) or fast (one measuring "
          "pass, a little less exact)."})  # fmt: skip


class MultiDiffusionVAEDecode:
    """Node: LATENT -> IMAGE in tiles with canvas-wide GroupNorm statistics (and circular wrap)."""

    CATEGORY = "latent/multidiffusion"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The decoded image, without tone shifts between tiles.",)
    FUNCTION = "decode"
    DESCRIPTION = (
        "Decodes a latent of any size in tiles whose GroupNorm statistics are the whole canvas's, so the tiles "
        "agree in tone (ComfyUI's tiled decode normalises each tile alone). Memory depends on the tile size."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "The latent to decode (e.g. a MultiDiffusion panorama)."}),
                "vae": ("VAE", {"tooltip": "An SD-style VAE (SD 1.x/2.x, SDXL, SD 3.5, FLUX.1)."}),
                "tile_size": ("INT", {**_TILE, "tooltip": "Tile side in pixels: smaller uses less memory."}),
                "overlap": ("INT", {**_OVERLAP, "tooltip": "Overlap of neighbouring tiles in pixels (blended)."}),
                "circular": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "360-degree panorama: decode the left and right edges as "
                        "neighbours, so the seam at 0/360 degrees is invisible.",
                    },
                ),
                "norm_stats": _NORMS,
            }
        }

    def decode(
        self, samples: dict, vae: Any, tile_size: int, overlap: int, circular: bool, norm_stats: str
    ) -> tuple[torch.Tensor]:
        z = samples["samples"]
        if z.dim() == 5:  # a single-frame video latent
            z = z[:, :, 0]
        with loaded_vae(vae) as model:
            tile, lap = _tiles(model, tile_size, overlap)
            image = decode_latents(
                model, z.to(device=model.device, dtype=model.dtype), circular=circular, tile=tile, overlap=lap,
                norm_stats=norm_stats, latent_format=RAW_LATENTS,
            )  # fmt: skip
        image = ((image.float() + 1) / 2).clamp(0, 1).movedim(1, -1)
        return (image.to(getattr(vae, "output_device", "cpu")),)


class MultiDiffusionVAEEncode:
    """Node: IMAGE -> LATENT in tiles with canvas-wide GroupNorm statistics."""

    CATEGORY = "latent/multidiffusion"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The latent of the image (the posterior's mean).",)
    FUNCTION = "encode"
    DESCRIPTION = (
        "Encodes an image of any size in tiles whose GroupNorm statistics are the whole image's (the decode's "
        "mirror image): for upscaling large images without tone shifts between tiles."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pixels": ("IMAGE", {"tooltip": "The image to encode; cropped to a multiple of 8 pixels."}),
                "vae": ("VAE", {"tooltip": "An SD-style VAE (SD 1.x/2.x, SDXL, SD 3.5, FLUX.1)."}),
                "tile_size": ("INT", {**_TILE, "tooltip": "Tile side in pixels: smaller uses less memory."}),
                "overlap": ("INT", {**_OVERLAP, "tooltip": "Overlap of neighbouring tiles in pixels (blended)."}),
                "norm_stats": _NORMS,
            }
        }

    def encode(self, pixels: torch.Tensor, vae: Any, tile_size: int, overlap: int, norm_stats: str) -> tuple[dict]:
        with loaded_vae(vae) as model:
            tile, lap = _tiles(model, tile_size, overlap)
            f = 2 ** (len(model.config.block_out_channels) - 1)
            h, w = pixels.shape[1] // f * f, pixels.shape[2] // f * f
            if not h or not w:
                raise ValueError(f"pixels must be at least {f} x {f}, got {pixels.shape[2]} x {pixels.shape[1]}")
            images = pixels[:, :h, :w, :3].movedim(-1, 1) * 2 - 1
            z = encode_images(
                model, images.to(device=model.device, dtype=model.dtype), tile=tile, overlap=lap,
                norm_stats=norm_stats, latent_format=RAW_LATENTS,
            )  # fmt: skip
        return ({"samples": z.float().to(getattr(vae, "output_device", "cpu"))},)


NODE_CLASS_MAPPINGS = {
    "MultiDiffusionVAEDecode": MultiDiffusionVAEDecode,
    "MultiDiffusionVAEEncode": MultiDiffusionVAEEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MultiDiffusionVAEDecode": "MultiDiffusion VAE Decode (tiled, exact)",
    "MultiDiffusionVAEEncode": "MultiDiffusion VAE Encode (tiled, exact)",
}
