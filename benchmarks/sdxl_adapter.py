"""What the SDXL adapter costs on top of the UNet, on tiny random components (CPU-friendly).

1. One view covering the canvas: MultiDiffusion vs StableDiffusionXLPipeline on the same
   components and latents (same work: the ratio is the engine's overhead).
2. A 1:4 panorama: model calls, coverage, and the time spent building the UNet's keyword
   arguments (embeddings gathered per prompt slot, time ids per view) against the UNet's own time.

    OMP_NUM_THREADS=1 python -m benchmarks.sdxl_adapter [--repeats 5]

Ratios carry over to real models only as upper bounds: the tiny UNet is ~1000x cheaper than
SDXL's, while the adapter's per-call work does not depend on the UNet's width.
"""

from __future__ import annotations

import argparse
import time

import torch

from devtools.components import tiny_sdxl_pipeline
from multidiffusion import MultiDiffusion

from .common import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe = tiny_sdxl_pipeline(sample_size=32)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    common = dict(num_inference_steps=args.steps, guidance_scale=7.5, output_type="latent")

    with torch.no_grad():
        plain = median_seconds(
            lambda: pipe("a boat", height=256, width=256, latents=latents.clone(), **common), args.repeats
        )
        ours = median_seconds(
            lambda: md.panorama("a boat", height=256, width=256, latents=latents.clone(), **common), 3
        )
    print(f"one view, {args.steps} steps: diffusers {plain * 1e3:.0f} ms, multidiffusion {ours * 1e3:.0f} ms, "
          f"ratio {ours / plain:.3f}")  # fmt: skip

    spent = {"kwargs": 0.0}
    original = md.adapter.unet_kwargs

    def timed_kwargs(*a, **k):
        start = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            spent["kwargs"] += time.perf_counter() - start

    md.adapter.unet_kwargs = timed_kwargs
    for crops in ("zero", "offset"):
        md.adapter.crops_coords_top_left = crops
        spent["kwargs"] = 0.0
        start = time.perf_counter()
        out = md.panorama("a harbour at dusk", height=256, width=1024, view_batch_size=4, **common)
        total = time.perf_counter() - start
        s = out.stats
        print(
            f"panorama 256x1024 px ({crops}): {s.model_calls} UNet calls, {s.jobs} views, coverage "
            f"{s.coverage:.2f}, {total:.2f} s, of which UNet kwargs {spent['kwargs'] * 1e3:.1f} ms "
            f"({100 * spent['kwargs'] / total:.2f} %)"
        )


if __name__ == "__main__":
    main()
