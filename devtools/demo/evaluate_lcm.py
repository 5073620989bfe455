"""Caption agreement of the few-step demo against the base demo: ``python -m devtools.demo.evaluate_lcm``.

The checker of :mod:`devtools.demo.evaluate` on the same captions and the same initial noise (all
captions in one batch, so that LCMScheduler's noise between steps cannot shift the next batch's start):
``demo-lcm`` (the demo with its LCM-LoRA fused, LCMScheduler, guidance 1: one evaluation a step) at 1, 2
and 4 steps, and the base demo at 25 DDIM steps with guidance 7.5 (the setting it was distilled from and
is measured at). Writes ``multidiffusion/demo/lcm/evaluation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devtools.demo.architecture import DEFAULT_MODEL_DIR
from devtools.demo.evaluate import evaluate, load_pipeline, sample_captions

DEFAULT_LCM_DIR = DEFAULT_MODEL_DIR.parent / "lcm"


def _commit(path: Path) -> str:
    """The commit that last touched ``path`` (the VAE the figures decoded with)."""
    out = subprocess.run(["git", "log", "-1", "--format=%h %cI", "--", str(path)], capture_output=True, text=True)
    return out.stdout.strip()


class _Kept:
    """A stand-in pipeline for :func:`evaluate`: samples the final latents with ``pipe`` once (kept in
    ``cache``, reused when there) and decodes them with ``pipe``'s VAE as it is now, so that the 25-step
    base can be sampled while the LoRA trains and decoded with the VAE of the measurement."""

    def __init__(self, pipe: Any, cache: Path | None) -> None:
        self.pipe, self.cache, self.scheduler = pipe, cache, pipe.scheduler

    def __call__(self, captions: list[str], **kwargs: Any) -> Any:
        kwargs["output_type"] = "latent"
        if self.cache is not None and self.cache.is_file():
            latents = torch.load(self.cache)
        else:
            latents = self.pipe(captions, **kwargs).images
            if self.cache is not None:
                torch.save(latents, self.cache)
        with torch.no_grad():
            vae = self.pipe.vae
            images = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        out = self.pipe.image_processor.postprocess(images, output_type="np", do_denormalize=[True] * len(images))
        return type("Output", (), {"images": np.asarray(out)})


def run(args: argparse.Namespace) -> dict[str, Any]:
    from multidiffusion.models.demo_lcm import make_demo_lcm

    torch.set_num_threads(args.threads)
    captions = sample_captions(args.num_images, args.caption_seed)
    load = [os.getloadavg()]
    rows = []
    cache = Path(args.cache) if args.cache else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)

    def kept(name: str) -> Path | None:
        return cache / f"{name}-{args.num_images}-{args.caption_seed}-{args.seed}.pt" if cache is not None else None

    lcm = make_demo_lcm(load_pipeline(args.model), Path(args.lcm))
    for steps in args.steps:
        kept_lcm = _Kept(lcm, kept(f"lcm-{steps}-{args.guidance:g}") if args.cache_lcm else None)
        r = evaluate(kept_lcm, captions, steps, args.guidance, args.seed, batch=len(captions))
        print(f"demo-lcm {steps} steps: overall {r['overall']:.1%}, all right {r['all_attributes_correct']:.1%}")
        rows.append({"model": "demo-lcm", **r})
    if args.base_steps:
        base = _Kept(load_pipeline(args.model, "ddim"), kept(f"base-{args.base_steps}"))
        r = evaluate(base, captions, args.base_steps, 7.5, args.seed, batch=len(captions))
        print(
            f"demo {args.base_steps} DDIM steps: overall {r['overall']:.1%}, "
            f"all right {r['all_attributes_correct']:.1%}"
        )
        rows.append({"model": "demo", **r})
    load.append(os.getloadavg())
    return {
        "command": "python -m devtools.demo.evaluate_lcm " + " ".join(args.argv),
        "captions": {"n": args.num_images, "caption_seed": args.caption_seed, "noise_seed": args.seed},
        "vae_commit": _commit(Path(args.model) / "vae"),
        "lora_commit": _commit(Path(args.lcm)),
        "threads": args.threads,
        "load_average": load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "results": rows,
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m devtools.demo.evaluate_lcm``."""
    p = argparse.ArgumentParser(prog="python -m devtools.demo.evaluate_lcm", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="the base demo folder")
    p.add_argument("--lcm", default=str(DEFAULT_LCM_DIR), help="the folder of the LCM-LoRA")
    p.add_argument("-n", "--num-images", type=int, default=200)
    p.add_argument("--steps", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--guidance", type=float, default=1.0, help="demo-lcm's guidance (1: no unconditional branch)")
    p.add_argument("--base-steps", type=int, default=25, help="the base demo's DDIM steps; 0: not measured")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    p.add_argument("--caption-seed", type=int, default=1234, help="seed of the caption draw")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(DEFAULT_LCM_DIR / "evaluation.json"))
    p.add_argument("--cache", help="a folder keeping the base demo's final latents (reused when there)")
    p.add_argument("--cache-lcm", action="store_true", help="keep (and reuse) demo-lcm's latents there too")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    record = run(args)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
