"""Tiled, blended and wrap-around decoding."""

import pytest
import torch
import torch.nn.functional as F

from multidiffusion.vae.codec import decode_latents


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
    z = smooth_latents(16, 48)  # 1 x 3 tiles of 16, overlapping by 8
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
    z = smooth_latents(16, 32, seed=1)
    z = torch.cat([z, z[..., :8].flip(-1)], dim=-1)  # not periodic by itself
    for tile in (16, 40):  # tiled and whole
        image = decode_latents(vae, z, circular=True, tile=tile)
        plain = decode_latents(vae, z, circular=False, tile=tile)
        assert image.shape == plain.shape == (1, 3, 128, 40 * 8)

        def seam(img):  # step across the 360-degree seam vs typical neighbour steps
            across = (img[..., 0] - img[..., -1]).abs().mean()
            inside = (img[..., 1:] - img[..., :-1]).abs().mean()
            return (across / inside).item()

        assert seam(image) < 1.0, seam(image)  # no larger than an ordinary step between columns
        assert seam(image) < seam(plain) / 2, (seam(image), seam(plain))


@torch.no_grad()
def test_tiled_decode_of_an_sd_shaped_vae_is_within_40_db_of_whole():
    from devtools.components import sd_shaped_vae

    vae = sd_shaped_vae(16)  # SD's VAE architecture at 1/16 width, random weights
    g = torch.Generator().manual_seed(0)  # as the benchmark's latents (benchmarks/decode.py)
    z = F.interpolate(torch.randn(1, 4, 24, 24, generator=g), size=(96, 96), mode="bicubic")
    z = z / z.std()  # 768 x 768 px: 2 x 2 tiles of the native 64 latents
    whole = vae.decode(z / vae.config.scaling_factor).sample
    tiled = decode_latents(vae, z)
    assert psnr(tiled, whole) >= 40


@torch.no_grad()
def test_uint8_decode_matches_the_float_decode_and_works_in_bands(sd16, monkeypatch):
    import multidiffusion.vae.tiles as tiling
    from multidiffusion.vae.codec import decode_to_uint8

    bands = []
    original = tiling.run_tiled

    def spy(fn, x, canvas, tile, overlap, in_scale, out_scale, write, norms=None, share=None):
        def record(row, rows):
            bands.append(rows.shape[-2])
            write(row, rows)

        return original(fn, x, canvas, tile, overlap, in_scale, out_scale, record, norms, share)

    monkeypatch.setattr("multidiffusion.vae.codec.run_tiled", spy)
    z = smooth_latents(40, 24, seed=2)
    pixels = decode_to_uint8(sd16.vae, z, tile=16, overlap=4)
    image = decode_latents(sd16.vae, z, tile=16, overlap=4)
    expected = ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert pixels.shape == (1, 320, 192, 3) and pixels.dtype == torch.uint8
    assert (pixels.int() - expected.int()).abs().max() <= 1
    assert sum(bands) == 2 * 320 and max(bands) <= 16 * 8  # rows handed over a tile row at a time


@torch.no_grad()
def test_tiled_encode_is_close_to_whole_encode():
    from devtools.components import sd_shaped_vae
    from multidiffusion.vae.codec import encode_images

    vae = sd_shaped_vae(16)
    image = vae.decode(smooth_latents(96, 96, seed=3) / vae.config.scaling_factor).sample.clamp(-1, 1)
    whole = encode_images(vae, image, tile=96)
    tiled = encode_images(vae, image)
    assert tiled.shape == whole.shape == (1, 4, 96, 96)
    assert ((tiled - whole).norm() / whole.norm()).item() < 0.05
    with pytest.raises(ValueError, match="multiples of 8"):
        encode_images(vae, image[..., :-4])


@torch.no_grad()
def test_exact_statistics_make_the_trained_demo_vae_tile_invisibly():
    import numpy as np

    from devtools.demo.scenes import render_scene, sample_scene
    from multidiffusion import MultiDiffusion
    from multidiffusion.vae.codec import encode_images

    vae = MultiDiffusion.from_pretrained("demo", device="cpu").pipe.vae
    pixels = render_scene(sample_scene(np.random.default_rng(0)), height=192, width=192)
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
    z = encode_images(vae, image, tile=48)  # whole: 48 x 48 latents
    whole = vae.decode(z / vae.config.scaling_factor).sample
    exact = decode_latents(vae, z, tile=24)  # 3 x 3 tiles
    fast = decode_latents(vae, z, tile=24, norm_stats="fast")
    assert psnr(exact, whole) > 45 > psnr(fast, whole) + 10
    assert ((encode_images(vae, image, tile=32) - z).norm() / z.norm()).item() < 0.01
    with pytest.raises(ValueError, match=r"norm_stats must be one of 'exact', 'fast', got 'slow'"):
        decode_latents(vae, z, tile=32, norm_stats="slow")


@torch.no_grad()
def test_kept_activations_resume_the_exact_passes_without_changing_a_bit(sd16):
    """Exact statistics re-run each tile up to every GroupNorm; keeping the tiles' activations where
    a pass stops (within ``cache_mb``) lets the next passes resume there: the same bits, less work."""
    from multidiffusion.vae.codec import encode_images

    vae = sd16.vae
    runs = []
    hooks = [
        m.register_forward_hook(lambda *_: runs.append(1)) for m in vae.modules() if type(m).__name__ == "ResnetBlock2D"
    ]
    try:
        z = smooth_latents(16, 48, seed=4)  # 1 x 5 tiles of 16, overlapping by 8
        decoded, work = {}, {}
        for cache_mb in (0, 0.8, None):  # from the start; the low-resolution boundaries fit; all fit
            runs.clear()
            decoded[cache_mb] = decode_latents(vae, z, tile=16, overlap=8, cache_mb=cache_mb)
            work[cache_mb] = len(runs)
        image = decoded[0].clamp(-1, 1)
        encoded = {mb: encode_images(vae, image, tile=16, overlap=8, cache_mb=mb) for mb in (0, None)}
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(decoded[0], decoded[None]) and torch.equal(decoded[0], decoded[0.8])
    assert torch.equal(encoded[0], encoded[None])
    assert work[None] < work[0.8] < work[0], work
    assert work[None] * 3 < work[0], work
    with pytest.raises(ValueError, match="cache_mb must be a number of MiB ≥ 0"):
        decode_latents(vae, z, tile=16, cache_mb=-1)


def test_giving_back_freed_memory_lowers_the_resident_memory():
    """glibc keeps chunks freed inside its heap resident; ``give_back_freed`` returns their pages."""
    psutil = pytest.importorskip("psutil")
    from multidiffusion.vae import heap

    if heap._TRIM is None:
        pytest.skip("not glibc")
    process = psutil.Process()
    big = torch.ones(4 * 2**20)  # 16 MiB, mapped and unmapped: glibc's mmap threshold rises above 1 MiB
    del big
    chunks = [torch.ones(2**18) for _ in range(160)]  # 1 MiB each, now inside the heap
    last = chunks[-1]  # in use above the others: the heap's top can't shrink past it
    del chunks
    before = process.memory_info().rss
    heap.give_back_freed(torch.device("meta"))  # not the CPU: nothing
    heap.give_back_freed(torch.device("cpu"))
    after = process.memory_info().rss
    assert before - after > 80 * 2**20, (before / 2**20, after / 2**20)
    assert last.sum() == 2**18


@torch.no_grad()
def test_the_least_memory_decode_gives_freed_memory_back_after_each_tile(sd16, monkeypatch):
    """``cache_mb=0`` (nothing kept) also returns the heap's free pages after every tile, in the
    statistics' passes and the blended one; with a budget (the speed setting) it does not."""
    from multidiffusion.vae import norms, tiles

    calls = []
    for module in (tiles, norms):  # the blended pass and the statistics' passes
        monkeypatch.setattr(module, "give_back_freed", lambda device: calls.append(device.type))
    z = smooth_latents(16, 48, seed=4)  # 1 x 5 tiles
    decode_latents(sd16.vae, z, tile=16, overlap=8, cache_mb=None)
    assert calls == []
    decode_latents(sd16.vae, z, tile=16, overlap=8, cache_mb=0)
    passes = len(calls) // 5
    assert len(calls) == 5 * passes and passes > 2 and set(calls) == {"cpu"}, calls


@torch.no_grad()
def test_tiled_paths_call_the_offload_hook_as_vae_encode_and_decode_do(sd16):
    """Under model CPU offloading the VAE waits on the CPU until its accelerate hook's pre_forward
    moves it (diffusers calls it in vae.encode/decode); the tiled paths run the VAE's submodules, so
    they must call it themselves, once per encode or decode, before any submodule runs."""
    from multidiffusion.vae.codec import encode_images

    vae = sd16.vae
    calls = []

    class Hook:
        def pre_forward(self, module):
            calls.append(module)
            return (), {}

    vae._hf_hook = Hook()
    try:
        z = smooth_latents(16, 48)  # 1 x 3 tiles: the tiled path, not vae.decode
        image = decode_latents(vae, z, tile=16, overlap=8)
        assert len(calls) == 1 and calls[0] is vae, len(calls)
        encode_images(vae, image.clamp(-1, 1), tile=16, overlap=8)
        assert len(calls) == 2 and calls[1] is vae, len(calls)
    finally:
        del vae._hf_hook
