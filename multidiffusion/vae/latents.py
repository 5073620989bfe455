"""How a model family's latents map to its VAE's own: the part of the latents -> pixels path that
belongs to the family. Its adapter says which (``adapter.latent_format``); :mod:`.codec` applies it
around every encode and decode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

__all__ = ["LatentFormat", "ScaledLatents"]


class LatentFormat(Protocol):
    """How a model family's latents (the canvas the engine denoises) map to its VAE's own latents
    and back: the family's adapter gives one (``adapter.latent_format``) and every encode and decode
    here goes through it. A family whose latents are packed or normalised otherwise supplies its own."""

    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion latents (B, C, h, w) to what the VAE's decoder takes."""

    def from_vae(self, z: torch.Tensor) -> torch.Tensor:
        """The VAE encoder's latents (B, C', h, w) to diffusion latents."""


@dataclass(frozen=True)
class ScaledLatents:
    """Latents as the Stable Diffusion families and FLUX.1 scale them (from the VAE's config):
    x = (z − shift) · scaling_factor, shift the ``shift_factor`` (SD 3, FLUX.1) or 0; or, with the
    per-channel ``latents_mean`` / ``latents_std`` of a VAE that has them, x = (z − mean) ·
    scaling_factor / std."""

    scaling_factor: float
    shift_factor: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def of(cls, vae: nn.Module) -> ScaledLatents:
        """The format the VAE's config describes."""
        config = vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        stats = mean is not None and std is not None
        return cls(
            float(config.scaling_factor),
            getattr(config, "shift_factor", None),
            tuple(mean) if stats else None,
            tuple(std) if stats else None,
        )

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, len(self.mean or ()), 1, 1)
        return (
            torch.tensor(self.mean, device=like.device, dtype=like.dtype).view(shape),
            torch.tensor(self.std, device=like.device, dtype=like.dtype).view(shape),
        )

    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            mean, std = self._stats(latents)
            return latents * std / self.scaling_factor + mean
        if self.shift_factor is not None:
            return latents / self.scaling_factor + self.shift_factor
        return latents / self.scaling_factor

    def from_vae(self, z: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            mean, std = self._stats(z)
            return (z - mean) * self.scaling_factor / std
        if self.shift_factor is not None:
            return (z - self.shift_factor) * self.scaling_factor
        return z * self.scaling_factor
