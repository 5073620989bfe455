"""Upscaling: memory against size, cost against independent tiles, quality on the demo model.

Three suites (``python -m benchmarks --suites upscale-memory|upscale-peer|upscale-quality``):

- **memory** (:func:`memory_rows`): ``md.upscale`` to 4096 x 4096 and to 1024 x 1024 (2x from 2048
  and 512 px procedural scenes), each in its own process (``python -m benchmarks.upscale --size N``,
  :func:`main`), on an SD 2-base-shaped random-weight model at reduced width (UNet 1/10, VAE 1/16:
  CPU minutes, the same tiling as the real model), fast mode (shifted windows), a prompt (both
  guidance branches). Peak RSS polled during the call; the claim to check: the 4096 peak is at most
  2x the 1024 peak (memory follows the VAE tile and the window, plus the image itself in 8 bits and
  one float copy of the resized input).
- **peer** (:func:`peer_rows`): the upscale users run today in A1111, "SD upscale": the image resized
  (Lanczos), cut into native-size tiles overlapping by 1/8 (64 px for 512 px tiles), each tile
  img2img'd on its own with diffusers' ``StableDiffusionImg2ImgPipeline`` (the same seed for every
  tile, as A1111 does), pasted back with a linear feather over the overlap, no fusion
  (:func:`sd_upscale_tiles`). Against ours, fast mode and the paper's exact grid, same components,
  input and process: time, UNet evaluations, and UNet latent pixels per output latent pixel over
  the whole call (1.0: every latent pixel through the model once, both guidance branches counted).
- **quality** (:func:`quality_rows`): demo panoramas (``MultiDiffusion.from_pretrained("demo")``)
  upscaled 2x by Lanczos, independent tiles, ours (exact and fast), each of ours also with noise
  inversion, and the Lanczos image through the VAE and back (what any latent method loses before
  it changes anything); a few seeds. Per result: PSNR of the result downscaled back (box filter) against the
  input; high-frequency energy (mean squared Laplacian of the luminance) over Lanczos's; the seam
  score (:func:`benchmarks.seams.seam_score`) on the columns and rows where the independent tiles'
  feathered bands lie (1.0: no trace of them).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from typing import Any

import numpy as np
import psutil
import torch
from PIL import Image

from .common import Context, Row, repeat
from .measure import live_heap_bytes, measure
from .seams import seam_score

__all__ = [
    "PROMPT",
    "hf_energy",
    "main",
    "memory_rows",
    "peer_rows",
    "psnr_back",
    "quality_rows",
    "scene",
    "sd_upscale_tiles",
    "tile_layout",
]

PROMPT = "a photo of mountains above a lake, highly detailed"


def scene(height: int, width: int, seed: int = 0) -> Image.Image:
    """A procedural landscape (the demo model's training scenes) of any size."""
    from devtools.demo.scenes import render_scene, sample_scene

    return Image.fromarray(render_scene(sample_scene(np.random.default_rng(seed)), height=height, width=width))


# -- the peer: A1111's "SD upscale" -----------------------------------------------------------------
def tile_layout(size: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one side, as A1111's ``split_grid``: ceil((size - overlap) / (tile - overlap))
    tiles spread evenly from 0 to size - tile (so neighbours overlap by at least ``overlap``)."""
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    step = (size - tile) / (n - 1)
    return [min(int(i * step), size - tile) for i in range(n)]


def _feather(tile: Image.Image, overlap: int, axis: int) -> Image.Image:
    """A mask rising linearly from 0 to 1 over the first ``overlap`` pixels along ``axis`` (0: x)."""
    ramp = (np.arange(overlap, dtype=np.float32) * 255 / overlap).astype(np.uint8)
    w, h = tile.size
    mask = np.full((h, w), 255, np.uint8)
    if axis == 0:
        mask[:, :overlap] = ramp[None, :]
    else:
        mask[:overlap, :] = ramp[:, None]
    return Image.fromarray(mask, "L")


def sd_upscale_tiles(
    pipe: Any,
    image: Image.Image,
    scale: float,
    prompt: str,
    *,
    tile: int,
    overlap: int,
    strength: float,
    steps: int,
    guidance: float,
    seed: int = 0,
) -> tuple[Image.Image, int]:
    """A1111's "SD upscale" script, done honestly with diffusers: resize (Lanczos) to the target,
    cut into ``tile`` px tiles placed by :func:`tile_layout`, img2img each tile alone (diffusers'
    ``StableDiffusionImg2ImgPipeline`` on ``pipe``'s components, the same seed for every tile, as
    A1111), then paste row by row: each tile over its left neighbour with a linear feather over the
    first ``overlap`` px, each row over the one above likewise. Returns the image and the tile count."""
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    width, height = round(image.width * scale) // 8 * 8, round(image.height * scale) // 8 * 8
    big = image.resize((width, height), Image.Resampling.LANCZOS)
    tops, lefts = tile_layout(height, tile, overlap), tile_layout(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    out = Image.new("RGB", (width, height))
    for top in tops:
        row = Image.new("RGB", (width, th))
        for left in lefts:
            crop = big.crop((left, top, left + tw, top + th))
            done = img2img(
                prompt,
                image=crop,
                strength=strength,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed),
            ).images[0]
            row.paste(done, (left, 0), mask=_feather(done, overlap, 0) if left else None)
        out.paste(row, (0, top), mask=_feather(row, overlap, 1) if top else None)
    return out, len(tops) * len(lefts)


# -- image measures --------------------------------------------------------------------------------
def psnr_back(result: Image.Image, source: Image.Image) -> float:
    """PSNR (dB, 8-bit) of ``result`` downscaled to ``source``'s size (box filter: the mean of each
    block) against ``source``: how much of the input the upscale kept."""
    back = np.asarray(result.resize(source.size, Image.Resampling.BOX), np.float64)
    mse = ((back - np.asarray(source, np.float64)) ** 2).mean()
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def hf_energy(image: Image.Image) -> float:
    """Mean squared 4-neighbour Laplacian of the luminance (0-255), edges excluded: the energy in the
    highest frequencies, i.e. the fine detail an upscale adds (or the noise it leaves)."""
    y = np.asarray(image.convert("L"), np.float64)
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float((lap**2).mean())


def _vae_round_trip(md: Any, image: Image.Image) -> Image.Image:
    """``image`` encoded (posterior mean) and decoded by the model's VAE, tiled as an upscale does:
    what a latent method keeps of an image it does not change at all."""
    from multidiffusion.vae.codec import decode_to_uint8, encode_images

    pixels = torch.from_numpy(np.array(image)[None]).permute(0, 3, 1, 2).float().div_(127.5).sub_(1)
    latents = encode_images(md.pipe.vae, pixels.to(md.device))
    return Image.fromarray(decode_to_uint8(md.pipe.vae, latents)[0].numpy())


def band_lines(starts: list[int], overlap: int, period: int) -> set[int]:
    """The lines (columns or rows) of the feathered bands where independent tiles meet, at multiples
    of ``period`` (the VAE's factor, as :func:`~benchmarks.seams.seam_score` compares like with like)."""
    return {c for s in starts[1:] for c in range(s, s + overlap + 1) if c % period == 0}


def _seams(image: Image.Image, rows: set[int], cols: set[int], period: int) -> float:
    transposed = Image.fromarray(np.ascontiguousarray(np.asarray(image).transpose(1, 0, 2)))
    scores = []
    if cols:
        scores.append(seam_score(image, cols, period))
    if rows:
        scores.append(seam_score(transposed, rows, period))
    return float(np.mean(scores)) if scores else float("nan")


# -- memory: one size per process ----------------------------------------------------------------------
def _sd_components(vae_divisor: int, device: torch.device) -> Any:
    from devtools.components import sd_shaped_pipeline
    from multidiffusion import MultiDiffusion

    pipe = sd_shaped_pipeline(divisor=10, vae_divisor=vae_divisor).to(device)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    return pipe, md


def main(argv: list[str] | None = None) -> None:
    """One upscale to ``--size`` in this process; prints one JSON line (peak RSS, time, cost)."""
    p = argparse.ArgumentParser(description="one upscale, its peak memory (run by the upscale-memory suite)")
    p.add_argument("--size", type=int, default=1024, help="output side in pixels (input: size / scale)")
    p.add_argument("--scale", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=6, help="num_inference_steps (strength 0.35: 2 of 6 run)")
    p.add_argument("--strength", type=float, default=0.35)
    p.add_argument("--vae-divisor", type=int, default=16, help="VAE width as a fraction of SD's")
    p.add_argument("--placement", default="shifted")
    p.add_argument("--noise-inversion", action="store_true")
    p.add_argument("--norm-stats", choices=["exact", "fast"], default="exact", help="VAE tiling's GroupNorm statistics")
    p.add_argument("--cache-mb", type=float, default=None, help="activations the exact statistics keep (default: auto)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    _, md = _sd_components(args.vae_divisor, device)
    source = scene(round(args.size / args.scale), round(args.size / args.scale))
    if args.norm_stats != "exact" or args.cache_mb is not None:
        md.set_vae_tiling(norm_stats=args.norm_stats, cache_mb=args.cache_mb)
    before = psutil.Process().memory_info().rss
    live_before = live_heap_bytes()
    out, m = measure(
        lambda: md.upscale(
            source,
            scale=args.scale,
            prompt=PROMPT,
            strength=args.strength,
            num_inference_steps=args.steps,
            placement=args.placement,
            noise_inversion=args.noise_inversion,
            generator=torch.Generator().manual_seed(0),
        ),
        md.pipe.unet,
        device,
    )
    image = out.images[0]
    result = {
        "size": args.size,
        "input": list(source.size),
        "output": list(image.size),
        "seconds": m.seconds,
        "unet_seconds": m.model_seconds,  # the rest: resize, tiled encode and decode, fusion
        "rss_before_mb": before / 2**20,
        "peak_mb": m.peak_mb,  # CPU: the poller's peak RSS (ru_maxrss would carry the parent's); CUDA: allocated
        "call_rss_delta_mb": m.peak_mb - before / 2**20 if device.type != "cuda" else None,
        # RSS less the freed memory malloc keeps, which varies run to run (benchmarks.measure.live_heap_bytes)
        "live_before_mb": live_before / 2**20 if live_before is not None else None,
        "live_peak_mb": m.live_peak_mb,
        "model_calls": out.stats.model_calls,
        "evaluations": out.stats.evaluations,
        "coverage": out.stats.coverage,
        "steps_run": out.stats.steps,
        "placement": args.placement,
        "vae_divisor": args.vae_divisor,
        "norm_stats": args.norm_stats,
        "cache_mb": args.cache_mb,
    }
    print(json.dumps(result))


def memory_rows(quick: bool = False, device: torch.device | None = None) -> list[dict]:
    """``md.upscale`` to the large and the small size, each in its own process (:func:`main`)."""
    device = device or torch.device("cpu")
    sizes = (512, 1024) if quick else (1024, 4096)

    def run(size: int, extra: tuple[str, ...]) -> dict:
        cmd = [sys.executable, "-m", "benchmarks.upscale", "--size", str(size), "--device", str(device), *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    rows = []
    for extra, kept in (((), "VAE activations kept (default budget)"), (("--cache-mb", "0"), "nothing kept")):
        small, large = (run(s, extra) for s in sizes)
        key = "peak_mb"
        ratio = large[key] / small[key]
        delta = small["call_rss_delta_mb"] or 0.0, large["call_rss_delta_mb"] or 0.0
        rows.append(
            {
                "suite": "upscale-memory",
                "config": f"upscale 2x to {sizes[1]}x{sizes[1]} vs to {sizes[0]}x{sizes[0]}, SD-shaped UNet 1/10 and "
                f"VAE 1/16 width, fast mode, {large['steps_run']} steps run, prompt + guidance, {kept}",
                "peer": f"ours to {sizes[0]}x{sizes[0]}",
                "peak_mb": {"peer": small[key], "ours": large[key]},
                "memory_ratio": ratio,
                "delta_ratio": delta[1] / max(delta[0], 1e-9),
                "claim_at_most_2x": ratio <= 2.0,
                "live_peak_mb": {"peer": small["live_peak_mb"], "ours": large["live_peak_mb"]},
                "live_ratio": large["live_peak_mb"] / small["live_peak_mb"] if small["live_peak_mb"] else None,
                "seconds": {"peer": small["seconds"], "ours": large["seconds"]},
                "coverage": {"peer": small["coverage"], "ours": large["coverage"]},
                "detail": {str(sizes[0]): small, str(sizes[1]): large},
                "notes": f"peak {small[key]:.0f} -> {large[key]:.0f} MiB ({ratio:.2f}x for "
                f"{(sizes[1] / sizes[0]) ** 2:.0f}x the pixels); added by the call {delta[0]:.0f} -> {delta[1]:.0f} "
                f"MiB; {small['seconds']:.0f} s / {large['seconds']:.0f} s; coverage {small['coverage']:.2f} / "
                f"{large['coverage']:.2f}; live heap peak {small['live_peak_mb'] or 0:.0f} -> "
                f"{large['live_peak_mb'] or 0:.0f} MiB",
            }
        )
    return rows


# -- against independent tiles -----------------------------------------------------------------------
def peer_rows(quick: bool = False, device: torch.device | None = None, repeats: int = 1) -> list[Row]:
    """Ours (fast and exact) against A1111's SD upscale (:func:`sd_upscale_tiles`), same components,
    input, steps, strength and guidance, measured in this process (UNet hooks count both alike)."""
    device = device or torch.device("cpu")
    pipe, md = _sd_components(8, device)
    steps, strength, size = (6, 0.35, 768) if quick else (20, 0.35, 1024)
    source = scene(size // 2, size // 2, seed=1)
    ctx = Context(pipe, md, device, steps, repeats, quick)
    f = md.adapter.vae_scale_factor
    tile = md.adapter.native_latent_size[0] * f  # 512 px
    overlap = tile // 8  # A1111's default: 64 px

    def ours(**options: Any):
        return lambda: md.upscale(
            source,
            scale=2,
            prompt=PROMPT,
            strength=strength,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            **options,
        ).images[0]

    def peer():
        return sd_upscale_tiles(
            pipe, source, 2, PROMPT, tile=tile, overlap=overlap, strength=strength, steps=steps, guidance=7.5
        )[0]

    runs = {"peer": peer, "fast": ours(placement="shifted"), "exact": ours()}
    _, m = repeat(ctx, runs)
    canvas = (size // f) ** 2
    run_steps = int(steps * strength)
    tiles = len(tile_layout(size, tile, overlap)) ** 2
    rows = []
    for name, label in (("fast", "fast mode (shifted windows)"), ("exact", "exact mode (the paper's grid)")):
        per_px = {k: m[k].latent_pixels / canvas for k in ("peer", name)}
        rows.append(
            Row(
                "upscale-peer",
                f"upscale 2x {size // 2} -> {size}, {steps} steps at strength {strength} ({run_steps} run), guidance "
                f"7.5: ours, {label}",
                f"A1111 SD upscale: {tiles} independent {tile} px tiles, {overlap} px feather (diffusers img2img)",
                m["peer"],
                m[name],
                canvas,
                run_steps,
                notes=f"UNet latent pixels per output latent pixel over the call {per_px['peer']:.1f} / "
                f"{per_px[name]:.1f}; UNet evaluations {m['peer'].evaluations} / {m[name].evaluations}",
                extra={
                    "unet_latent_pixels_per_output_latent_pixel": per_px,
                    "unet_latent_pixels_per_output_pixel": {k: v / f**2 for k, v in per_px.items()},
                    "tiles": tiles,
                },
            )
        )
    return rows


# -- quality on the demo model -------------------------------------------------------------------------
def quality_rows(quick: bool = False, device: torch.device | None = None) -> list[dict]:
    """Demo panoramas upscaled 2x every way; the image measures averaged over seeds."""
    from multidiffusion import MultiDiffusion

    md = MultiDiffusion.from_pretrained("demo", device=device or "cpu")
    md.set_progress_bar_config(disable=True)
    f = md.adapter.vae_scale_factor
    tile = md.adapter.native_latent_size[0] * f  # 64 px
    overlap = tile // 8  # A1111's 1/8
    seeds = [0] if quick else [0, 1, 2, 3]
    steps, strength = (10, 0.35) if quick else (25, 0.35)
    prompt = "snowy mountains above a calm lake under a blue sky"
    height, width = tile, 4 * tile  # a 64 x 256 demo panorama -> 128 x 512
    ways = {
        "lanczos": None,
        "lanczos, VAE round trip (the ceiling of any latent method)": "vae",
        "independent tiles (A1111 SD upscale)": "peer",
        "ours, exact": {},
        "ours, exact, noise inversion": {"noise_inversion": True},
        "ours, fast": {"placement": "shifted"},
        "ours, fast, noise inversion": {"placement": "shifted", "noise_inversion": True},
    }
    measures: dict[str, dict[str, list[float]]] = {w: {"psnr": [], "hf": [], "seam": [], "s": []} for w in ways}
    rows_at = band_lines(tile_layout(2 * height, tile, overlap), overlap, f)
    cols_at = band_lines(tile_layout(2 * width, tile, overlap), overlap, f)
    for seed in seeds:
        source = md.panorama(
            prompt, height=height, width=width, num_inference_steps=25, generator=torch.Generator().manual_seed(seed)
        ).images[0]
        results = {}
        for name, how in ways.items():
            start = time.perf_counter()
            if how is None:
                results[name] = source.resize((2 * width, 2 * height), Image.Resampling.LANCZOS)
            elif how == "vae":
                results[name] = _vae_round_trip(md, source.resize((2 * width, 2 * height), Image.Resampling.LANCZOS))
            elif how == "peer":
                results[name] = sd_upscale_tiles(
                    md.pipe, source, 2, prompt, tile=tile, overlap=overlap, strength=strength, steps=steps,
                    guidance=7.5, seed=seed,
                )[0]  # fmt: skip
            else:
                results[name] = md.upscale(
                    source, scale=2, prompt=prompt, strength=strength, num_inference_steps=steps,
                    generator=torch.Generator().manual_seed(seed), **how,
                ).images[0]  # fmt: skip
            measures[name]["s"].append(time.perf_counter() - start)
        base = hf_energy(results["lanczos"])
        for name, image in results.items():
            measures[name]["psnr"].append(psnr_back(image, source))
            measures[name]["hf"].append(hf_energy(image) / base)
            measures[name]["seam"].append(_seams(image, rows_at, cols_at, f))
    rows = []
    for name, v in measures.items():
        mean = {k: float(np.mean(x)) for k, x in v.items()}
        rows.append(
            {
                "suite": "upscale-quality",
                "config": f"demo panorama {height}x{width} -> {2 * height}x{2 * width}, {steps} steps at strength "
                f"{strength}, {len(seeds)} seeds: {name}",
                "peer": "lanczos",
                "psnr_back_db": mean["psnr"],
                "hf_energy_vs_lanczos": mean["hf"],
                "seam_score_tile_bands": mean["seam"],
                "seconds": mean["s"],
                "per_seed": {k: [round(x, 4) for x in v[k]] for k in ("psnr", "hf", "seam")},
                "notes": f"PSNR back {mean['psnr']:.2f} dB; HF energy {mean['hf']:.2f}x Lanczos; seam score at the "
                f"tiles' bands {mean['seam']:.3f}; {mean['s']:.1f} s",
            }
        )
    return rows


if __name__ == "__main__":
    main()
