"""The VAE: tiled encode and decode with canvas-wide GroupNorm statistics (:mod:`.codec`), the
encoder's and decoder's stages (:mod:`.stages`), the tiles (:mod:`.tiles`) and their statistics
(:mod:`.norms`), and how a family's latents map to the VAE's (:mod:`.latents`)."""

from multidiffusion.vae.codec import decode_latents, decode_to_uint8, encode_images, vae_scale_factor
from multidiffusion.vae.latents import LatentFormat, ScaledLatents

__all__ = ["LatentFormat", "ScaledLatents", "decode_latents", "decode_to_uint8", "encode_images", "vae_scale_factor"]
