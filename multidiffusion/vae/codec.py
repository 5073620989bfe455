"""Latents to images and back with bounded memory: tiled, blended and (for 360-degree panoramas)
wrapping.

A canvas larger than the VAE's native size is decoded (or encoded) in overlapping tiles blended with
linear ramps, with canvas-wide GroupNorm statistics from a first pass over the tiles, so tiles agree
in tone (see :mod:`multidiffusion.vae.norms`). Peak memory depends on the tile size, not the
canvas size. The mid block and its attention run whole up to ``latent_tile`` latent pixels a side
and in windows beyond, so no full-image attention matrix of a large canvas is ever formed (see
:mod:`multidiffusion.vae.stages`). :func:`decode_to_uint8` converts each finished band of rows to 8
bits at once, so an image costs its 8-bit size plus one tile row. Measured memory and fidelity:
docs/benchmarks.md, "Speed and memory", and ``benchmarks/results/``.

A canvas that fits in one tile is decoded whole, exactly as diffusers does. Circular canvases are
padded with their own opposite edge before decoding and cropped after, so the 0/360-degree seam is
decoded with real neighbours on both sides.

Region bootstrapping encodes small constant-colour images (:func:`encode_constant`, whole);
:func:`encode_images` encodes images of any size in tiles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from multidiffusion.vae.edges import resolve_edge_pad
from multidiffusion.vae.latents import LatentFormat, ScaledLatents
from multidiffusion.vae.norms import NORM_STATS, Collective, GroupNormStats
from multidiffusion.vae.stages import decoder_stages, encoder_stages, run_latent_stage
from multidiffusion.vae.tiles import run_tiled

__all__ = [
    "cache_bytes",
    "check_cache_mb",
    "decode_latents",
    "decode_to_uint8",
    "default_tile",
    "encode_constant",
    "encode_images",
    "vae_scale_factor",
]


def vae_scale_factor(vae: nn.Module) -> int:
    """Pixels per latent pixel: 2 ** (number of down-sampling blocks)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


MIN_TILE = 64
"""Smallest default tile, latent pixels: a small VAE (the demo's, native 16) gets larger tiles, since
a tile's borders cost accuracy and its memory is small anyway."""


def default_tile(vae: nn.Module) -> int:
    """Tile side in latent pixels: the VAE's native sample size (64 for SD 1.x/2.x, 128 for SDXL),
    at least :data:`MIN_TILE`."""
    sample = vae.config.sample_size
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return max(MIN_TILE, int(sample) // vae_scale_factor(vae))


@contextlib.contextmanager
def _upcast_if_needed(vae: nn.Module) -> Iterator[torch.dtype]:
    """SDXL's VAE overflows in float16 (``force_upcast``): decode in float32, as diffusers does."""
    dtype = vae.dtype
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)
        try:
            yield torch.float32
        finally:
            vae.to(dtype)
    else:
        yield dtype


def _onload(vae: nn.Module) -> None:
    """Under diffusers' model CPU offloading the VAE rests on the CPU and its accelerate hook moves it
    to the execution device when ``vae.encode``/``vae.decode`` are called (diffusers'
    ``apply_forward_hook``). The tiled paths call the VAE's submodules, past that hook: call it here
    first, as those methods do."""
    hook = getattr(vae, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(vae)


CACHE_MB = 2048
"""Most memory (MiB) the exact statistics keep by default to resume their passes (see
:class:`~multidiffusion.vae.norms.GroupNormStats`), and at most a quarter of what is free."""


def _free_bytes(device: torch.device) -> int | None:
    """Free memory of ``device``: the accelerator's, or the system's available RAM (Linux)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_cache_mb(cache_mb: float | None) -> None:
    """``cache_mb`` is None (automatic) or a number of MiB ≥ 0, or a ValueError says so."""
    if cache_mb is not None and (
        isinstance(cache_mb, bool) or not isinstance(cache_mb, (int, float)) or not 0 <= cache_mb < float("inf")
    ):
        raise ValueError(f"cache_mb must be a number of MiB ≥ 0 (or None: automatic), got {cache_mb!r}")


def cache_bytes(cache_mb: float | None, device: torch.device) -> int:
    """The budget of the exact statistics' kept activations: ``cache_mb`` MiB, or by default
    :data:`CACHE_MB` capped at a quarter of ``device``'s free memory."""
    check_cache_mb(cache_mb)
    if cache_mb is not None:
        return int(cache_mb * 2**20)
    free = _free_bytes(device)
    return CACHE_MB * 2**20 if free is None else min(CACHE_MB * 2**20, free // 4)


def _pixel_norms(cache: int, norm_stats: str, *modules: nn.Module) -> GroupNormStats:
    """The tiled pixel stage's statistics: within the ``cache`` budget, and with nothing kept (the
    least memory) the heap's free pages given back after each tile (:mod:`~multidiffusion.vae.heap`)."""
    return GroupNormStats(*modules, mode=norm_stats, cache_bytes=cache, give_back=cache == 0)


def _check_tiles(vae: nn.Module, tile: int | None, overlap: int | None, norm_stats: str) -> tuple[int, int]:
    if norm_stats not in NORM_STATS:
        raise ValueError(f"norm_stats must be one of {', '.join(map(repr, NORM_STATS))}, got {norm_stats!r}")
    tile = tile or default_tile(vae)
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 8:
        raise ValueError(f"tile must be an integer ≥ 8 (latent pixels), got {tile!r}")
    overlap = tile // 4 if overlap is None else overlap
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
    return tile, overlap


def _decode(
    vae: nn.Module,
    latents: torch.Tensor,
    circular: bool,
    tile: int | None,
    overlap: int | None,
    write: Callable[[int, torch.Tensor], None],
    latent_tile: int | None = None,
    norm_stats: str = "exact",
    share: Collective | None = None,
    cache_mb: float | None = None,
    latent_format: LatentFormat | None = None,
    edge_pad: int | str = 0,
) -> None:
    """Decode into ``write(first_row, rows)``: bands of image rows, full width, wrap padding removed;
    with ``share``, the ranks split the pixel stage's tiles (:func:`~multidiffusion.vae.tiles.run_tiled`)
    and each runs the latent stage itself."""
    tile, overlap = _check_tiles(vae, tile, overlap, norm_stats)
    cache = cache_bytes(cache_mb, latents.device)
    f = vae_scale_factor(vae)
    _onload(vae)
    with _upcast_if_needed(vae) as dtype:
        z = (latent_format or ScaledLatents.of(vae)).to_vae(latents).to(dtype)
        height = z.shape[-2] * f
        pad = min(max(overlap, 8), z.shape[-1]) if circular else 0
        if pad:
            z = torch.cat([z[..., -pad:], z, z[..., :pad]], dim=-1)
        edge = resolve_edge_pad(vae, edge_pad, latents.shape)
        if edge:  # the canvas' own edges, replicated (circular canvases already have real neighbours)
            z = torch.nn.functional.pad(z, (0 if pad else edge, 0 if pad else edge, edge, edge), mode="replicate")
            pad = pad or edge
        cols = slice(pad * f, (z.shape[-1] - pad) * f)
        top = edge * f
        h, w = z.shape[-2:]

        def emit(row: int, rows: torch.Tensor) -> None:
            lo, hi = max(row, top), min(row + rows.shape[-2], top + height)
            if hi > lo:
                write(lo - top, rows[..., lo - row : hi - row, cols])

        stages = decoder_stages(vae)
        if h <= tile and w <= tile:
            emit(0, vae.decode(z, return_dict=False)[0])
        elif stages is None:  # not an AutoencoderKL: tile the whole decoder
            decode = lambda c: vae.decode(c, return_dict=False)[0]  # noqa: E731
            norms = _pixel_norms(cache, norm_stats, vae.decoder)
            run_tiled(decode, z, (h, w), tile, overlap, 1, f, emit, norms, share)
        else:
            features = run_latent_stage(stages.latent, stages.latent_norms, z, latent_tile or 2 * tile, norm_stats)
            norms = _pixel_norms(cache, norm_stats, *stages.pixel_norms)
            run_tiled(stages.pixel_segments, features, (h, w), tile, overlap, 1, f, emit, norms, share)


@torch.no_grad()
def decode_latents(
    vae: nn.Module,
    latents: torch.Tensor,
    *,
    circular: bool = False,
    tile: int | None = None,
    overlap: int | None = None,
    latent_tile: int | None = None,
    norm_stats: str = "exact",
    share: Collective | None = None,
    cache_mb: float | None = None,
    latent_format: LatentFormat | None = None,
    edge_pad: int | str = 0,
) -> torch.Tensor:
    """Decode diffusion latents (B, C, h, w) to images (B, 3, h*f, w*f) in [-1, 1].

    ``tile`` and ``overlap`` are in latent pixels (defaults: the VAE's native size and a quarter of
    it). The decoder's latent-resolution stage (its mid block and attention) runs whole on canvases
    up to ``latent_tile`` (default 2 * tile) latent pixels a side and in windows beyond; its
    pixel-resolution stage runs in tiles (see :mod:`multidiffusion.vae.stages`) normalised with
    canvas-wide GroupNorm statistics, measured layer by layer (``norm_stats="exact"``) or in one
    pass (``"fast"``, see :mod:`multidiffusion.vae.tiles`). The exact passes resume from the tiles'
    activations kept within ``cache_mb`` MiB (:func:`cache_bytes`; 0: every pass from the start,
    the least memory, several times slower, the heap's free pages given back to the system after
    each tile (:mod:`~multidiffusion.vae.heap`): docs/benchmarks.md "Speed and memory"). With ``circular``,
    the canvas wraps horizontally: the left and right edges are decoded as neighbours. A canvas that
    fits in one tile is decoded whole, exactly as diffusers does. ``share``: processes that split the
    tiles, each getting the whole image (:mod:`multidiffusion.vae.tiles`). ``latent_format``: how
    the model's latents map to the VAE's (its adapter's; default: :class:`ScaledLatents` of the VAE).
    ``edge_pad``: latent pixels replicated beyond the canvas' edges before decoding and cropped after
    (0, the default: the decoder's zero padding, as diffusers; "auto": a few on canvases larger than
    the VAE's native size), which keeps a decoder's frame out of the image (:mod:`multidiffusion.vae.edges`).
    """
    f = vae_scale_factor(vae)
    shape = (latents.shape[0], vae.config.out_channels, latents.shape[-2] * f, latents.shape[-1] * f)
    image = torch.empty(shape, dtype=_output_dtype(vae), device=latents.device)

    def write(row: int, rows: torch.Tensor) -> None:
        image[..., row : row + rows.shape[-2], :] = rows

    _decode(
        vae, latents, circular, tile, overlap, write, latent_tile, norm_stats, share, cache_mb, latent_format, edge_pad
    )
    return image


@torch.no_grad()
def decode_to_uint8(
    vae: nn.Module,
    latents: torch.Tensor,
    *,
    circular: bool = False,
    tile: int | None = None,
    overlap: int | None = None,
    latent_tile: int | None = None,
    norm_stats: str = "exact",
    share: Collective | None = None,
    cache_mb: float | None = None,
    latent_format: LatentFormat | None = None,
    edge_pad: int | str = 0,
) -> torch.Tensor:
    """Like :func:`decode_latents`, but straight to 8-bit images (B, H, W, 3) on the CPU, converted
    one band of rows at a time (as diffusers' ``numpy_to_pil`` rounds), so no float copy of the
    whole image is ever made: the result is the largest thing a 4096 x 4096 decode holds."""
    f = vae_scale_factor(vae)
    shape = (latents.shape[0], latents.shape[-2] * f, latents.shape[-1] * f, vae.config.out_channels)
    image = torch.empty(shape, dtype=torch.uint8)

    def write(row: int, rows: torch.Tensor) -> None:  # rows are finished: convert them in place
        rows = rows.float().mul_(0.5).add_(0.5).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        image[:, row : row + rows.shape[-2]] = rows.permute(0, 2, 3, 1).cpu()

    _decode(
        vae, latents, circular, tile, overlap, write, latent_tile, norm_stats, share, cache_mb, latent_format, edge_pad
    )
    return image


def _output_dtype(vae: nn.Module) -> torch.dtype:
    dtype = vae.dtype
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return torch.float32
    return dtype


@torch.no_grad()
def encode_images(
    vae: nn.Module,
    images: torch.Tensor,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    latent_tile: int | None = None,
    norm_stats: str = "exact",
    generator: torch.Generator | list[torch.Generator] | None = None,
    sample: bool = False,
    share: Collective | None = None,
    cache_mb: float | None = None,
    latent_format: LatentFormat | None = None,
) -> torch.Tensor:
    """Encode images (B, 3, H, W) in [-1, 1] to diffusion latents (B, C, H/f, W/f), scaled.

    Images larger than one tile (``tile`` latent pixels, i.e. ``tile * f`` image pixels; default
    the VAE's native size) are encoded like the decode in reverse: the pixel-resolution stage in
    blended tiles with canvas-wide GroupNorm statistics, the mid block whole up to ``latent_tile``
    (default 2 * tile). Memory depends on the tile, not the image. Returns the posterior's mean, or
    a sample drawn with ``generator`` when ``sample`` (as diffusers' ``latent_dist.sample``; a list
    of generators gives one sample of the first image per generator, as diffusers' image-to-image
    pipelines draw them). ``share``: processes that split the pixel stage's tiles, as the decode;
    ``latent_format`` as :func:`decode_latents`'s.
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    tile, overlap = _check_tiles(vae, tile, overlap, norm_stats)
    _onload(vae)
    cache = cache_bytes(cache_mb, vae.device)
    f = vae_scale_factor(vae)
    if images.shape[-2] % f or images.shape[-1] % f:
        raise ValueError(f"images must have sides that are multiples of {f}, got {tuple(images.shape[-2:])}")
    h, w = images.shape[-2] // f, images.shape[-1] // f
    with _upcast_if_needed(vae) as dtype:
        x = images.to(device=vae.device, dtype=dtype)
        stages = encoder_stages(vae)
        if h <= tile and w <= tile:
            moments = _encode_moments(vae, x)
        else:
            out: torch.Tensor | None = None

            def write(row: int, rows: torch.Tensor) -> None:
                nonlocal out
                if out is None:
                    out = torch.empty((*rows.shape[:2], h, w), dtype=dtype, device=rows.device)
                out[..., row : row + rows.shape[-2], :] = rows

            if stages is None:  # not an AutoencoderKL: tile the whole encoder
                norms = _pixel_norms(cache, norm_stats, vae)
                run_tiled(lambda c: _encode_moments(vae, c), x, (h, w), tile, overlap, f, 1, write, norms, share)
                moments = out
            else:
                norms = _pixel_norms(cache, norm_stats, *stages.pixel_norms)
                run_tiled(stages.pixel_segments, x, (h, w), tile, overlap, f, 1, write, norms, share)
                moments = run_latent_stage(stages.latent, stages.latent_norms, out, latent_tile or 2 * tile, norm_stats)
        dist = DiagonalGaussianDistribution(moments.float())
        if sample and isinstance(generator, list):
            z = torch.cat([DiagonalGaussianDistribution(moments[:1].float()).sample(g) for g in generator])
        else:
            z = dist.sample(generator) if sample else dist.mode()
    return (latent_format or ScaledLatents.of(vae)).from_vae(z.to(vae.dtype))


@torch.no_grad()
def encode_constant(
    vae: nn.Module,
    colours: torch.Tensor,
    size: tuple[int, int],
    batch: int = 4,
    latent_format: LatentFormat | None = None,
) -> torch.Tensor:
    """Diffusion latents (N, C, *size) of constant images of ``colours`` (N, 3) in [0, 1].

    Each image is ``size`` latent pixels (times the VAE's factor) and encoded whole, ``batch`` per
    call, edges included; the posterior's mean is used, mapped like any diffusion latent
    (``latent_format``, as :func:`decode_latents`'s).
    """
    f = vae_scale_factor(vae)
    out = []
    with _upcast_if_needed(vae) as dtype:
        for chunk in colours.split(batch):
            images = (2 * chunk - 1).to(device=vae.device, dtype=dtype)[:, :, None, None]
            images = images.expand(-1, -1, size[0] * f, size[1] * f).contiguous()
            out.append(vae.encode(images).latent_dist.mean)
    return (latent_format or ScaledLatents.of(vae)).from_vae(torch.cat(out))


def _encode_moments(vae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean and log-variance (B, 2C, h, w) of the VAE's posterior, as ``AutoencoderKL._encode``."""
    moments = vae.encoder(x)
    if getattr(vae, "quant_conv", None) is not None:
        moments = vae.quant_conv(moments)
    return moments
