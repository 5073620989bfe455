"""Qwen-Image's causal 3D VAE (``AutoencoderKLQwenImage``, Wan's) seen as an image VAE.

The VAE encodes videos (B, 3, T, H, W) to latents (B, 16, T', H/8, W/8); an image is one frame,
and on one frame the causal convolutions see only zero padding in time, so the VAE is an image
VAE with a frame axis of 1. :class:`ImageVae` is that view: images (B, 3, H, W) and latents
(B, 16, H/8, W/8) in and out (exactly what the pipeline computes, with the frame axis added and
removed around each call), with the config keys the package's tiled codec reads
(``latent_channels``, ``block_out_channels`` for the factor 8, ``sample_size``, ``out_channels``,
``scaling_factor`` 1 with the VAE's per-channel ``latents_mean`` / ``latents_std``: the
pipeline's x = (z − mean) / std is :class:`~multidiffusion.vae.latents.ScaledLatents`).

**What tiling means for this VAE.** Its normalisations are RMS norms over the channels of each
pixel (``QwenImageRMS_norm``), not GroupNorms: nothing in it takes statistics over the image
except the one self-attention block at latent resolution in the middle of the encoder and of the
decoder. So a tile needs no canvas-wide statistics (the codec's exact GroupNorm passes find no
GroupNorm and cost nothing); a large canvas is decoded as the codec decodes any VAE that is not an
``AutoencoderKL``: the whole decoder in overlapping tiles (the VAE's native size by default, a
quarter overlap) blended by linear ramps. Within a tile everything is as the whole decode except
that the middle attention sees the tile, not the canvas; the convolutions' reach is covered by the
overlap. A canvas of one tile is decoded whole, exactly as the pipeline.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from torch import nn

__all__ = ["ImageVae"]


class _Moments(nn.Module):
    """Images (B, 3, H, W) to the posterior's mean and log-variance (B, 2C, H/8, W/8): the VAE's
    encoder and quant conv on one frame (``AutoencoderKLQwenImage._encode``)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae._encode(x.unsqueeze(2))[:, :, 0]


class ImageVae(nn.Module):
    """``AutoencoderKLQwenImage`` on single frames, with an ``AutoencoderKL``-shaped interface."""

    def __init__(self, vae: nn.Module, sample_size: int = 1024):
        super().__init__()
        self.video = vae
        self.encoder = _Moments(vae)
        self.quant_conv = None
        config = vae.config
        factor = 2 ** len(config.temperal_downsample)
        self.config = FrozenDict(
            latent_channels=config.z_dim,
            block_out_channels=[config.base_dim * m for m in config.dim_mult][: len(config.temperal_downsample) + 1],
            sample_size=sample_size,
            out_channels=config.input_channels,
            scaling_factor=1.0,
            shift_factor=None,
            latents_mean=list(config.latents_mean),
            latents_std=list(config.latents_std),
            force_upcast=False,
        )
        assert 2 ** (len(self.config.block_out_channels) - 1) == factor

    @property
    def decoder(self) -> nn.Module:
        return self.video.decoder

    @property
    def dtype(self) -> torch.dtype:
        return self.video.dtype

    @property
    def device(self) -> torch.device:
        return self.video.device

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> Any:
        posterior = DiagonalGaussianDistribution(self.encoder(x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> Any:
        """Latents (B, C, h, w) of the VAE (mean and std applied already) to images (B, 3, 8h, 8w)."""
        image = self.video.decode(z.unsqueeze(2), return_dict=False)[0][:, :, 0]
        return DecoderOutput(sample=image) if return_dict else (image,)
