"""The model options each family takes (``from_pretrained`` keywords recorded in a result's
parameters): one list that the adapters' checks, the PNG reader and the command line derive from.
A leaf module: the settings reader imports it without importing the models."""

from __future__ import annotations

__all__ = ["FAMILY_OPTIONS"]

FAMILY_OPTIONS = {
    "crops_coords_top_left": ("sdxl",),
    "original_size": ("sdxl",),
    "clip_skip": ("sd", "sdxl", "sd3"),
    "positions": ("flux",),
    "true_cfg_scale": ("flux",),
    "max_sequence_length": ("sd3", "flux"),
    "skip_guidance_layers": ("sd3",),
    "skip_layer_guidance_scale": ("sd3",),
    "skip_layer_guidance_start": ("sd3",),
    "skip_layer_guidance_stop": ("sd3",),
}
"""Option -> the families that take it."""
