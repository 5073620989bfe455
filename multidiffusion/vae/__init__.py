"""The VAE: tiled encode and decode with canvas-wide GroupNorm statistics (:mod:`.codec`), the
encoder's and decoder's stages (:mod:`.stages`) and the tiles and statistics themselves (:mod:`.tiles`)."""

from multidiffusion.vae.codec import decode_latents, decode_to_uint8, encode_images, vae_scale_factor

__all__ = ["decode_latents", "decode_to_uint8", "encode_images", "vae_scale_factor"]
