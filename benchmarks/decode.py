"""Decode memory and fidelity, one size per process: ``python -m benchmarks.decode --size 4096``.

Prints one JSON line. Latents are smooth random fields (bicubic-upsampled Gaussian noise, unit
variance), decoded to 8-bit pixels as ``output_type="pil"`` does, by an SD-shaped random-weight VAE
at ``1/divisor`` of SD's width (``--divisor 1``: the real size). ``--psnr`` instead compares the
tiled decode with a whole decode (float images in [-1, 1]).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from .measure import _RssPoller


def smooth_latents(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.interpolate(torch.randn(1, 4, max(1, h // 4), max(1, w // 4), generator=g), size=(h, w), mode="bicubic")
    return z / z.std()


def main() -> None:
    from multidiffusion.testing import sd_shaped_vae
    from multidiffusion.vae import decode_latents, decode_to_uint8

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=1024, help="image side in pixels")
    p.add_argument("--divisor", type=int, default=8, help="VAE width as a fraction of SD's")
    p.add_argument("--tile", type=int, default=None, help="tile in latent pixels (default: the VAE's native 64)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--psnr", action="store_true", help="tiled vs whole decode instead of memory")
    args = p.parse_args()

    device = torch.device(args.device)
    vae = sd_shaped_vae(args.divisor).to(device=device, dtype=getattr(torch, args.dtype))
    z = smooth_latents(args.size // 8, args.size // 8).to(device, vae.dtype)
    result = {"size": args.size, "divisor": args.divisor, "tile": args.tile or 64, "device": args.device}
    with torch.no_grad():
        if args.psnr:
            start = time.perf_counter()
            whole = vae.decode(z / vae.config.scaling_factor).sample.float()
            result["whole_seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            tiled = decode_latents(vae, z, tile=args.tile).float()
            result["tiled_seconds"] = time.perf_counter() - start
            result["psnr_db"] = (10 * torch.log10(4 / ((tiled - whole) ** 2).mean())).item()
        else:
            cuda = device.type == "cuda"
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base_cuda = torch.cuda.memory_allocated()
            with _RssPoller() as rss:
                start_rss = rss.peak
                start = time.perf_counter()
                image = decode_to_uint8(vae, z, tile=args.tile)
                if cuda:
                    torch.cuda.synchronize()
                result["seconds"] = time.perf_counter() - start
            result["image"] = list(image.shape)
            result["rss_before_mb"] = start_rss / 2**20
            # the poller's peak: ru_maxrss would include the parent's peak, kept across fork and exec
            result["peak_rss_mb"] = rss.peak / 2**20
            result["decode_rss_delta_mb"] = (rss.peak - start_rss) / 2**20
            if cuda:
                result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
                result["cuda_delta_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    print(json.dumps(result))


if __name__ == "__main__":
    main()
