"""Do regions hold at few steps, and do StreamMultiDiffusion's fixes help? Region fidelity (the fraction
of pixels of the region prompt's colour class inside its box, :func:`devtools.demo.checker.colour_fractions`)
at 64 x 64, the cases of :mod:`benchmarks.bootstrap_demo`, mean over seeds, at few steps with and without
each fix (latent pre-averaging, mask-centring bootstrapping, quantized masks, all three), and a reference
column. Bootstrapping at its default (40 % of the steps).

- ``--model demo`` (default): the plain demo with a few-step scheduler (``euler_trailing``); the
  reference is the same at 25 steps.
- ``--model demo-lcm``: the distilled few-step demo with its LCMScheduler at guidance 1 (one evaluation a
  step, as LCM-LoRAs run); the reference is the base demo at 25 DDIM steps, guidance 7.5 (what it was
  distilled from).

``python -m benchmarks.few_step_regions [--model demo-lcm] [--steps 1,2,4] [--seeds 16] [--feather 4]
[--json FILE]`` (``--feather``: soft region edges, where pre-averaging and quantized masks act); results
in docs/demo-model.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

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
    md: MultiDiffusion,
    steps: int,
    scheduler: str | None,
    fix: dict,
    seeds: range,
    feather: float = 0.0,
    cache: Path | None = None,
) -> list[float]:
    """Per case, the mean over ``seeds`` of the region colour's fraction inside its box (``feather``:
    the region's soft edge in pixels; the box measured is the box as given). The final latents are kept
    in ``cache`` (a .pt file, reused when it exists) and decoded here with the model's VAE as it is now,
    so a column can be sampled early and decoded with the VAE of the measurement."""
    from multidiffusion.vae.codec import decode_to_uint8

    if cache is not None and cache.is_file():
        latents = torch.load(cache)
    else:
        latents = {}
        for i, (background, prompt, _, box) in enumerate(CASES):
            for seed in seeds:
                out = md.regions(
                    height=64, width=64, background=background, regions=[Region(prompt, box=box, feather=feather)],
                    **({"scheduler": scheduler} if scheduler else {}), num_inference_steps=steps,
                    generator=torch.Generator().manual_seed(seed), output_type="latent", **fix,
                )  # fmt: skip
                latents[(i, seed)] = out.images[:1].detach().clone()
        if cache is not None:
            torch.save(latents, cache)
    means = []
    for i, (_, _, colour, box) in enumerate(CASES):
        mask = np.zeros((64, 64), bool)
        mask[box[1] : box[3], box[0] : box[2]] = True
        fractions = []
        for seed in seeds:
            image = decode_to_uint8(md.pipe.vae, latents[(i, seed)])[0].numpy()
            fractions.append(colour_fractions(image, mask).get(colour, 0.0))
        means.append(float(np.mean(fractions)))
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", choices=("demo", "demo-lcm"))
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--scheduler", default=None, help="default: euler_trailing (demo), lcm (demo-lcm)")
    parser.add_argument("--guidance", type=float, default=None, help="default: 7.5 (demo), 1 (demo-lcm)")
    parser.add_argument("--steps", default="4", help="comma-separated step counts, e.g. 1,2,4")
    parser.add_argument("--reference-steps", type=int, default=25, help="0: no reference column")
    parser.add_argument("--feather", type=float, default=0.0, help="soft region edges, pixels (default 0)")
    parser.add_argument("--fixes", default=",".join(FIXES), help=f"comma-separated, of {', '.join(FIXES)}")
    parser.add_argument("--json", help="also write the table (and the run's settings) to this JSON file")
    parser.add_argument("--cache", help="a folder keeping each column's final latents (reused when there)")
    args = parser.parse_args()
    lcm = args.model == "demo-lcm"
    scheduler = args.scheduler or ("lcm" if lcm else "euler_trailing")
    guidance = args.guidance if args.guidance is not None else (1.0 if lcm else 7.5)
    md = MultiDiffusion.from_pretrained(args.model, device="cpu")
    md.set_progress_bar_config(disable=True)
    seeds = range(args.seeds)
    columns: dict[str, list[float]] = {}
    started = time.perf_counter()
    load = [os.getloadavg()]
    cache = Path(args.cache) if args.cache else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)

    def kept(label: str) -> Path | None:
        slug = f"{args.model}-{label}-{args.seeds}-{args.feather:g}".replace(" ", "").replace(",", "-")
        return cache / f"{slug}.pt" if cache is not None else None

    for steps in (int(n) for n in filter(None, args.steps.split(","))):
        for name in filter(None, args.fixes.split(",")):
            fix = {**FIXES[name], "guidance_scale": guidance}
            label = f"{steps} steps, {name}"
            columns[label] = fidelity(md, steps, scheduler, fix, seeds, args.feather, kept(label))
    if args.reference_steps:
        ref, ref_scheduler = (MultiDiffusion.from_pretrained("demo", device="cpu"), "ddim") if lcm else (md, scheduler)
        ref.set_progress_bar_config(disable=True)
        fix = {"guidance_scale": 7.5}
        label = (
            f"base demo {args.reference_steps} {ref_scheduler} steps" if lcm else f"{args.reference_steps} steps, none"
        )
        columns[label] = fidelity(ref, args.reference_steps, ref_scheduler, fix, seeds, args.feather, kept(label))
    elapsed = time.perf_counter() - started
    load.append(os.getloadavg())
    print(f"| region prompt | colour | {' | '.join(columns)} |")
    print("|---|---|" + "---|" * len(columns))
    for i, (_, prompt, colour, _) in enumerate(CASES):
        print(f"| {prompt} | {colour} | " + " | ".join(f"{c[i]:.2f}" for c in columns.values()) + " |")
    print("| **mean** | | " + " | ".join(f"**{np.mean(c):.3f}**" for c in columns.values()) + " |")
    print(
        f"\n{args.model}, {args.seeds} seeds, scheduler {scheduler}, guidance {guidance:g}, feather {args.feather:g}, "
        f"{elapsed:.0f} s wall, load {load[0][0]:.2f} -> {load[1][0]:.2f}"
    )
    if args.json:
        record = {
            "model": args.model, "scheduler": scheduler, "guidance_scale": guidance, "seeds": args.seeds,
            "feather": args.feather, "cases": [c[1] for c in CASES], "wall_s": round(elapsed, 1),
            "load_average": load, "fidelity": {k: [round(v, 4) for v in c] for k, c in columns.items()},
            "mean": {k: round(float(np.mean(c)), 4) for k, c in columns.items()},
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
