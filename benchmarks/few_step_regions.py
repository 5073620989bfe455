"""Do regions hold at few steps, and do StreamMultiDiffusion's fixes help? Region fidelity (the fraction
of pixels of the region prompt's colour class inside its box, :func:`devtools.demo.checker.colour_fractions`)
on the shipped demo model, 64 x 64, the cases of :mod:`benchmarks.bootstrap_demo`, mean over seeds, at 4
steps of a few-step scheduler (the demo is not distilled: the plain demo with ``euler_trailing``) with
and without each fix (latent pre-averaging, mask-centring bootstrapping, quantized masks, all three),
and at 25 steps for reference. Bootstrapping at its default (40 % of the steps).

``python -m benchmarks.few_step_regions [--seeds 16] [--scheduler euler_trailing] [--feather 4]`` (``--feather``:
soft region edges, where pre-averaging and quantized masks act); results in
docs/demo-model.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.bootstrap_demo import CASES
from devtools.demo.checker import colour_fractions
from multidiffusion import MultiDiffusion, Region

FIXES = {
    "none": {},
    "pre_average": {"pre_average": True},
    "centring": {"bootstrap_centre": True},
    "quantized": {"mask_schedule": "quantized"},
    "all": {"pre_average": True, "bootstrap_centre": True, "mask_schedule": "quantized"},
}
"""Column name -> the options that turn the fix on."""


def fidelity(
    md: MultiDiffusion, steps: int, scheduler: str, fix: dict, seeds: range, feather: float = 0.0
) -> list[float]:
    """Per case, the mean over ``seeds`` of the region colour's fraction inside its box (``feather``:
    the region's soft edge in pixels; the box measured is the box as given)."""
    means = []
    for background, prompt, colour, box in CASES:
        mask = np.zeros((64, 64), bool)
        mask[box[1] : box[3], box[0] : box[2]] = True
        fractions = []
        for seed in seeds:
            out = md.regions(
                height=64, width=64, background=background, regions=[Region(prompt, box=box, feather=feather)],
                scheduler=scheduler, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **fix,
            )  # fmt: skip
            fractions.append(colour_fractions(np.asarray(out.images[0]), mask).get(colour, 0.0))
        means.append(float(np.mean(fractions)))
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--scheduler", default="euler_trailing")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reference-steps", type=int, default=25, help="0: no reference column")
    parser.add_argument("--feather", type=float, default=0.0, help="soft region edges, pixels (default 0)")
    parser.add_argument("--fixes", default=",".join(FIXES), help=f"comma-separated, of {', '.join(FIXES)}")
    args = parser.parse_args()
    md = MultiDiffusion.from_pretrained("demo", device="cpu")
    md.set_progress_bar_config(disable=True)
    seeds = range(args.seeds)
    columns: dict[str, list[float]] = {}
    started = time.perf_counter()
    for name in filter(None, args.fixes.split(",")):
        fix = FIXES[name]
        columns[f"{args.steps} steps, {name}"] = fidelity(md, args.steps, args.scheduler, fix, seeds, args.feather)
    if args.reference_steps:
        columns[f"{args.reference_steps} steps, none"] = fidelity(
            md, args.reference_steps, args.scheduler, {}, seeds, args.feather
        )
    elapsed = time.perf_counter() - started
    print(f"| region prompt | colour | {' | '.join(columns)} |")
    print("|---|---|" + "---|" * len(columns))
    for i, (_, prompt, colour, _) in enumerate(CASES):
        print(f"| {prompt} | {colour} | " + " | ".join(f"{c[i]:.2f}" for c in columns.values()) + " |")
    print("| **mean** | | " + " | ".join(f"**{np.mean(c):.3f}**" for c in columns.values()) + " |")
    print(f"\n{args.seeds} seeds, scheduler {args.scheduler}, feather {args.feather:g}, {elapsed:.0f} s wall")


if __name__ == "__main__":
    main()
