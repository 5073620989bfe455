"""Does outpainting continue the horizon across the old borders? Measured on the shipped demo model.

For each prompt and seed: a demo panorama of ``width`` pixels (the original); its middle half is
cropped and outpainted left and right back to the full width (``md.outpaint``, default settings).
The horizon of a column is the row of its strongest vertical luminance gradient (the sky/ground or
skyline edge of the demo's landscapes, in rows 0..63); the **horizon jump** at an old border x is
|mean horizon row of the ``band`` columns left of x − mean of the ``band`` columns right of x|, in
pixels, averaged over both borders. Compared with:

- the baseline: the same middle pasted into a fresh panorama of the same prompt generated
  independently (another seed), i.e. new areas that know nothing of the image;
- the original panorama, continuous by construction: the jump the landscape itself has there.

Also reported: how much of the kept middle changed (mean |Δ| of 8-bit pixels outside the repainted
overlap). ``python -m benchmarks.outpaint_demo`` (``--quick``: a small run that checks it works)
writes ``benchmarks/results/outpaint_demo.json``; ``python -m benchmarks --suites outpaint`` adds the
rows to the main table.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["horizon_jump", "horizon_rows", "main", "outpaint_rows"]

PROMPTS = (
    "snowy mountains under a clear blue sky",
    "green hills under an orange sunset sky",
    "a desert under a blue sky",
)
BASELINE_SEED_OFFSET = 1000


def horizon_rows(image: Any) -> np.ndarray:
    """Per column of an (H, W, 3) image: the row (between r and r + 1, as r + 0.5) of the strongest
    vertical luminance gradient |Y(r + 1) − Y(r)|, Y = 0.299 R + 0.587 G + 0.114 B."""
    rgb = np.asarray(image, dtype=np.float32)
    y = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gradient = np.abs(np.diff(y, axis=0))
    return gradient.argmax(axis=0).astype(np.float64) + 0.5


def horizon_jump(image: Any, borders: list[int], band: int) -> float:
    """Mean over ``borders`` of |mean horizon row of the ``band`` columns left of the border − that of
    the ``band`` columns right of it| (pixels)."""
    rows = horizon_rows(image)
    return float(np.mean([abs(rows[x - band : x].mean() - rows[x : x + band].mean()) for x in borders]))


def _measure(md: Any, width: int, steps: int, seeds: list[int], band: int) -> dict[str, Any]:
    f = md.adapter.vae_scale_factor
    height = md.adapter.native_latent_size[0] * f
    side = width // 4 // 8 * 8  # outpaint sides are multiples of 8 pixels
    middle = (side, width - side)
    borders = list(middle)
    overlap = 16  # md.outpaint's default: that much of the middle is repainted along each border
    jumps: dict[str, list[float]] = {"outpaint": [], "baseline": [], "original": []}
    kept: list[float] = []

    def panorama(prompt: str, seed: int) -> np.ndarray:
        out = md.panorama(prompt, height=height, width=width, num_inference_steps=steps,
                          generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return np.array(out.images[0])

    for prompt in PROMPTS:
        for seed in seeds:
            original = panorama(prompt, seed)
            crop = original[:, middle[0] : middle[1]]
            out = md.outpaint(
                crop, prompt, left=side, right=side, num_inference_steps=steps,
                generator=torch.Generator().manual_seed(seed + 1),
            )  # fmt: skip
            outpainted = np.asarray(out.images[0])
            baseline = panorama(prompt, seed + BASELINE_SEED_OFFSET)
            baseline[:, middle[0] : middle[1]] = crop
            for name, image in (("outpaint", outpainted), ("baseline", baseline), ("original", original)):
                jumps[name].append(horizon_jump(image, borders, band))
            inner = slice(middle[0] + overlap + 8, middle[1] - overlap - 8)  # past the overlap and its feather
            kept.append(float(np.abs(outpainted[:, inner].astype(np.float32) - original[:, inner]).mean()))
    return {
        "height": height,
        "width": width,
        "side": side,
        "steps": steps,
        "seeds": seeds,
        "prompts": list(PROMPTS),
        "band": band,
        "horizon_jump_px": {k: statistics.mean(v) for k, v in jumps.items()},
        "horizon_jump_px_median": {k: statistics.median(v) for k, v in jumps.items()},
        "horizon_jump_px_all": jumps,
        "kept_middle_mean_abs_8bit": statistics.mean(kept),
    }


def outpaint_rows(quick: bool = False, device: Any = None, **settings: Any) -> list[dict[str, Any]]:
    """The measurement as result rows (``suite`` "outpaint"): one for outpainting against the
    baseline, with the original's figure alongside."""
    from multidiffusion import MultiDiffusion

    md = MultiDiffusion.from_pretrained("demo", device=device or "cpu")
    md.set_progress_bar_config(disable=True)
    width = settings.get("width") or (256 if quick else 512)
    steps = settings.get("steps") or (10 if quick else 25)
    seeds = list(range(settings.get("seeds") or (2 if quick else 6)))
    band = settings.get("band") or 8
    r = _measure(md, width, steps, seeds, band)
    j = r["horizon_jump_px"]
    config = (
        f"outpaint demo {r['height']}x{r['width'] // 2} -> {r['width']} (sides {r['side']} px), {steps} steps, "
        f"{len(PROMPTS)} prompts x {len(seeds)} seeds"
    )
    notes = (
        f"horizon jump at the old borders (band {band} px): outpaint {j['outpaint']:.2f} px, fresh panorama "
        f"{j['baseline']:.2f} px, original {j['original']:.2f} px; kept middle changed by "
        f"{r['kept_middle_mean_abs_8bit']:.1f}/255"
    )
    ratio = j["outpaint"] / j["baseline"] if j["baseline"] else None
    return [{"suite": "outpaint", "config": config, "peer": "fresh panorama around the crop", "ratio": ratio,
             "notes": notes, **r}]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.outpaint_demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true", help="a small run: 256 px wide, 10 steps, 2 seeds")
    p.add_argument("--width", type=int, default=None, help="panorama width in pixels (default 512)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 25)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per prompt (default 6)")
    p.add_argument("--band", type=int, default=None, help="columns each side of a border (default 8)")
    p.add_argument("--json", default="benchmarks/results/outpaint_demo.json", help="where to write the figures")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .common import machine, write_results

    info = machine(torch.device("cpu"))
    rows = outpaint_rows(args.quick, width=args.width, steps=args.steps, seeds=args.seeds, band=args.band)
    info["load_average_end"] = os.getloadavg()
    for row in rows:
        print(f"{row['config']}: {row['notes']}")
    print(f"wrote {write_results(Path(args.json), info, rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
