"""The exact tiled VAE nodes over ComfyUI's own VAE object (tiny weights).

A tiny diffusers ``AutoencoderKL`` (four blocks of 32 channels, factor 8 as SD's) is loaded into
ComfyUI's ``comfy.sd.VAE`` (ComfyUI renames it to the original ldm layout); the nodes view ComfyUI's
loaded module as a diffusers one (its own tensors, no copy) and tile it with our codec. Their output
equals our library's tiled decode / encode of the original diffusers VAE on the same latents, and a
single-tile decode equals ComfyUI's own decode.

Run with the ComfyUI environment: ``/work/comfy-venv/bin/python -m pytest -q tests/comfyui/test_vae.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import comfy_tiny as tiny

from multidiffusion.vae.codec import decode_latents, encode_images
from multidiffusion.vae.latents import ScaledLatents

RAW = ScaledLatents(1.0)


@pytest.fixture(scope="module")
def comfy():
    return tiny.import_comfy()


@pytest.fixture(scope="module")
def vaes(comfy):
    """(the diffusers VAE, ComfyUI's VAE object with the same weights)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    ours = AutoencoderKL(
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    ).eval()
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}  # fmt: skip
    theirs = comfy.sd.VAE(sd=ours.state_dict(), config={"params": {"embed_dim": 4, "ddconfig": ddconfig}})
    return ours, theirs


@pytest.fixture(scope="module")
def nodes(comfy):
    return tiny.node_module("vae")


def _latents(h: int = 8, w: int = 24) -> torch.Tensor:
    return torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(5))


def _as_image(x: torch.Tensor) -> torch.Tensor:
    """Our decode's [-1, 1] (B, 3, H, W) as ComfyUI's IMAGE: [0, 1] (B, H, W, 3)."""
    return ((x + 1) / 2).clamp(0, 1).movedim(1, -1)


def test_one_tile_decode_equals_comfyuis_decode(vaes, nodes):
    theirs = vaes[1]
    z = _latents(8, 8)
    want = theirs.decode(z)
    got = nodes.MultiDiffusionVAEDecode().decode({"samples": z}, theirs, 512, 128, False, "exact")[0]
    diff = (got - want).abs().max().item()
    print(f"one tile: node vs ComfyUI's VAE decode: max|diff| = {diff:.3g}")
    assert got.shape == want.shape == (1, 64, 64, 3)
    assert diff <= 1e-5


@pytest.mark.parametrize("circular", [False, True])
def test_tiled_decode_equals_the_librarys(vaes, nodes, circular):
    ours, theirs = vaes
    z = _latents()  # 64 x 192 px in tiles of 128 px (16 latents), overlap 32 px
    got = nodes.MultiDiffusionVAEDecode().decode({"samples": z}, theirs, 128, 32, circular, "exact")[0]
    want = _as_image(decode_latents(ours, z, tile=16, overlap=4, circular=circular, latent_format=RAW))
    diff = (got - want).abs().max().item()
    print(f"tiled decode circular={circular}: node vs library max|diff| = {diff:.3g}")
    assert got.shape == (1, 64, 192, 3)
    assert diff <= 1e-5
    if circular:  # the wrap changes the edges: the check can fail
        plain = _as_image(decode_latents(ours, z, tile=16, overlap=4, latent_format=RAW))
        assert (got - plain).abs().max() > 1e-3
    else:  # tones: ours stays closer to a whole decode than ComfyUI's own tiled decode (same tiles)
        whole = theirs.decode(z)
        comfy_tiled = theirs.decode_tiled(z, tile_x=16, tile_y=16, overlap=4)
        ours_off, comfy_off = (got - whole).abs().mean().item(), (comfy_tiled - whole).abs().mean().item()
        print(f"  mean |tiled - whole decode|: ours {ours_off:.3g}, ComfyUI's VAE Decode (Tiled) {comfy_off:.3g}")
        assert ours_off < comfy_off


def test_tiled_encode_equals_the_librarys(vaes, nodes):
    ours, theirs = vaes
    pixels = torch.rand(1, 64, 204, 3, generator=torch.Generator().manual_seed(6))  # cropped to 64 x 200
    got = nodes.MultiDiffusionVAEEncode().encode(pixels, theirs, 128, 32, "exact")[0]["samples"]
    images = pixels[:, :, :200].movedim(-1, 1) * 2 - 1
    want = encode_images(ours, images, tile=16, overlap=4, latent_format=RAW)
    diff = (got - want).abs().max().item()
    print(f"tiled encode: node vs library max|diff| = {diff:.3g} (|z| max {want.abs().max():.3g})")
    assert got.shape == (1, 4, 8, 25)
    assert diff <= 1e-5


def test_other_vaes_are_refused_by_name(nodes):
    class Odd:
        first_stage_model = torch.nn.Conv2d(3, 3, 1)

    with pytest.raises(ValueError, match="VAE Decode \\(Tiled\\)"):
        nodes.diffusers_vae(Odd())


def test_no_second_copy_of_the_weights(comfy, vaes, nodes):
    """The diffusers view holds the ComfyUI module's own tensors (the same storage), ComfyUI's model
    management loaded the VAE for the call, and nothing is kept on the VAE object afterwards."""
    theirs = vaes[1]
    module = theirs.first_stage_model
    storages = {p.untyped_storage().data_ptr() for p in module.parameters()}
    with nodes.loaded_vae(theirs) as view:
        params = list(view.parameters())
        assert params and all(p.untyped_storage().data_ptr() in storages for p in params)
        assert sum(p.numel() for p in params) == sum(p.numel() for p in module.parameters())
        assert not any(p.is_meta for p in params) and not any(b.is_meta for b in view.buffers())
        assert any(m.model is theirs.patcher for m in comfy.model_management.current_loaded_models)
    assert not any(isinstance(v, torch.nn.Module) for k, v in vars(theirs).items() if k != "first_stage_model")
