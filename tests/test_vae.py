"""Tiled, blended and wrap-around decoding."""

import torch
import torch.nn.functional as F

from multidiffusion.vae import decode_latents


def smooth_latents(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(1, 4, max(1, h // 4), max(1, w // 4), generator=g), size=(h, w), mode="bilinear")


def psnr(a, b):
    return (10 * torch.log10(4 / ((a - b) ** 2).mean())).item()  # images in [-1, 1]


@torch.no_grad()
def test_one_tile_is_the_plain_decode(sd16):
    vae = sd16.vae
    z = smooth_latents(16, 16)
    expected = vae.decode(z / vae.config.scaling_factor).sample
    assert torch.equal(decode_latents(vae, z), expected)


@torch.no_grad()
def test_tiled_decode_is_close_to_whole_and_beats_per_tile_norms(sd16):
    vae = sd16.vae
    z = smooth_latents(32, 64)
    whole = vae.decode(z / vae.config.scaling_factor).sample
    tiled = decode_latents(vae, z, tile=16, overlap=8)
    assert tiled.shape == whole.shape
    ours = psnr(tiled, whole)
    # diffusers' own tiling normalises each tile by its own statistics
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = 128, 16, 0.5
    try:
        per_tile = psnr(vae.decode(z / vae.config.scaling_factor).sample, whole)
    finally:
        vae.disable_tiling()
    assert ours > per_tile + 3, (ours, per_tile)
    assert ours > 20


@torch.no_grad()
def test_circular_decode_has_no_seam(sd16):
    vae = sd16.vae
    z = smooth_latents(16, 64, seed=1)
    z = torch.cat([z, z[..., :8].flip(-1)], dim=-1)  # not periodic by itself
    for tile in (16, 64):  # tiled and whole
        image = decode_latents(vae, z, circular=True, tile=tile)
        plain = decode_latents(vae, z, circular=False, tile=tile)
        assert image.shape == plain.shape == (1, 3, 128, 72 * 8)

        def seam(img):  # step across the 360-degree seam vs typical neighbour steps
            across = (img[..., 0] - img[..., -1]).abs().mean()
            inside = (img[..., 1:] - img[..., :-1]).abs().mean()
            return (across / inside).item()

        assert seam(image) < 1.0, seam(image)  # no larger than an ordinary step between columns
        assert seam(image) < seam(plain) / 2, (seam(image), seam(plain))
