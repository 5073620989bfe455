"""Decode memory and fidelity, one size per process: ``python -m benchmarks.decode --size 4096``.

Prints one JSON line. With ``--vae sd`` (default) the latents are smooth random fields
(bicubic-upsampled Gaussian noise, unit variance) and the VAE an SD-shaped random-weight one at
``1/divisor`` of SD's width (``--divisor 1``: the real size); with ``--vae demo`` the shipped demo
model's trained VAE decodes the latents of a rendered procedural scene (encoded whole). Memory mode
decodes to 8-bit pixels as ``output_type="pil"`` does. ``--psnr`` instead compares the tiled decode
(exact and fast GroupNorm statistics) with a whole decode (float images in [-1, 1]).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from .measure import RssPoller


def smooth_latents(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.interpolate(torch.randn(1, 4, max(1, h // 4), max(1, w // 4), generator=g), size=(h, w), mode="bicubic")
    return z / z.std()


def decode_rows(quick: bool, device: torch.device, vae_divisor: int | None = None) -> list[dict]:
    """The decode suite, run from ``python -m benchmarks``: each decode in its own process (this
    module's :func:`main`), so its peak memory is its own."""
    cuda = device.type == "cuda"
    divisor = vae_divisor or (1 if cuda else 16)
    dtype = "float16" if cuda else "float32"
    rows = []

    def run(*extra: str) -> dict:
        cmd = [sys.executable, "-m", "benchmarks.decode", "--device", str(device), "--dtype", dtype, *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    sizes = [512, 1024] if quick else [1024, 4096]
    key = "cuda_peak_mb" if cuda else "peak_rss_mb"
    delta = "cuda_delta_mb" if cuda else "decode_rss_delta_mb"
    for cache, kept in ((None, "activations kept (default budget)"), (0, "nothing kept (cache_mb=0)")):
        extra = () if cache is None else ("--cache-mb", str(cache))
        mem = {size: run("--size", str(size), "--divisor", str(divisor), *extra) for size in sizes}
        small, large = mem[sizes[0]], mem[sizes[-1]]
        rows.append(
            {
                "suite": "decode",
                "config": f"decode {sizes[-1]}x{sizes[-1]} vs {sizes[0]}x{sizes[0]}, SD-shaped VAE 1/{divisor} "
                f"width, tile 64, exact statistics, {kept}, to 8-bit pixels",
                "peer": f"ours at {sizes[0]}x{sizes[0]}",
                "peak_mb": {"peer": small[key], "ours": large[key]},
                "memory_ratio": large[key] / small[key],
                "delta_ratio": large[delta] / max(small[delta], 1e-9),
                "live_peak_mb": {"peer": small.get("live_peak_mb"), "ours": large.get("live_peak_mb")},
                "seconds": {"peer": small["seconds"], "ours": large["seconds"]},
                "detail": mem,
            }
        )
    size = 512 if quick else 1024
    cases = [("sd", d) for d in sorted({divisor, 8} if not cuda else {divisor})] + [("demo", 1)]
    for vae, div in cases:
        r = run("--size", str(size), "--divisor", str(div), "--vae", vae, "--psnr")
        name = f"SD-shaped random VAE 1/{div} width" if vae == "sd" else "the demo's trained VAE, a rendered scene"
        rows.append(
            {
                "suite": "decode",
                "config": f"tiled vs whole decode {size}x{size}, {name}, default tiles",
                "peer": "whole decode",
                "psnr_db": r["psnr_db_exact"],
                "psnr_db_fast": r["psnr_db_fast"],
                "seconds": {"peer": r["whole_seconds"], "ours": r["tiled_seconds_exact"]},
                "seconds_exact_nothing_kept": r["tiled_seconds_exact_nocache"],
                "seconds_fast": r["tiled_seconds_fast"],
            }
        )
    return rows


def main() -> None:
    from devtools.components import sd_shaped_vae
    from multidiffusion.vae.codec import decode_latents, decode_to_uint8

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=1024, help="image side in pixels")
    p.add_argument("--divisor", type=int, default=8, help="VAE width as a fraction of SD's")
    p.add_argument("--tile", type=int, default=None, help="tile in latent pixels (default: the VAE's native 64)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--vae", choices=["sd", "demo"], default="sd")
    p.add_argument("--norm-stats", choices=["exact", "fast"], default="exact")
    p.add_argument("--psnr", action="store_true", help="tiled vs whole decode instead of memory")
    p.add_argument(
        "--cache-mb", type=float, default=None, help="activations the exact statistics keep (default: automatic)"
    )
    args = p.parse_args()

    device = torch.device(args.device)
    if args.vae == "demo":
        import numpy as np

        from devtools.demo.scenes import render_scene, sample_scene
        from multidiffusion import MultiDiffusion
        from multidiffusion.vae.codec import encode_images

        vae = MultiDiffusion.from_pretrained("demo", device=device).pipe.vae
        pixels = render_scene(sample_scene(np.random.default_rng(0)), height=args.size, width=args.size)
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().to(device) / 127.5 - 1
        with torch.no_grad():
            z = encode_images(vae, image, tile=args.size)
    else:
        vae = sd_shaped_vae(args.divisor).to(device=device, dtype=getattr(torch, args.dtype))
        z = smooth_latents(args.size // 8, args.size // 8).to(device, vae.dtype)
    result = {"size": args.size, "vae": args.vae, "divisor": args.divisor, "tile": args.tile, "device": args.device}
    result["cache_mb"] = args.cache_mb
    with torch.no_grad():
        if args.psnr:
            start = time.perf_counter()
            whole = vae.decode(z / vae.config.scaling_factor).sample.float()
            result["whole_seconds"] = time.perf_counter() - start
            # exact, resuming from kept activations (default); exact from the start (cache 0); fast
            for name, stats, cache in (("exact", "exact", None), ("exact_nocache", "exact", 0), ("fast", "fast", 0)):
                start = time.perf_counter()
                tiled = decode_latents(vae, z, tile=args.tile, norm_stats=stats, cache_mb=cache).float()
                result[f"tiled_seconds_{name}"] = time.perf_counter() - start
                result[f"psnr_db_{name}"] = (10 * torch.log10(4 / ((tiled - whole) ** 2).mean())).item()
        else:
            cuda = device.type == "cuda"
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base_cuda = torch.cuda.memory_allocated()
            with RssPoller() as rss:
                start_rss = rss.peak
                start = time.perf_counter()
                image = decode_to_uint8(vae, z, tile=args.tile, norm_stats=args.norm_stats, cache_mb=args.cache_mb)
                if cuda:
                    torch.cuda.synchronize()
                result["seconds"] = time.perf_counter() - start
            result["image"] = list(image.shape)
            result["rss_before_mb"] = start_rss / 2**20
            # the poller's peak: ru_maxrss would include the parent's peak, kept across fork and exec
            result["peak_rss_mb"] = rss.peak / 2**20
            result["decode_rss_delta_mb"] = (rss.peak - start_rss) / 2**20
            # RSS less the freed memory malloc keeps, which varies run to run (measure.live_heap_bytes)
            result["live_peak_mb"] = rss.live_peak / 2**20 if rss.live_peak is not None else None
            if cuda:
                result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
                result["cuda_delta_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    print(json.dumps(result))


if __name__ == "__main__":
    main()
