"""Diffusion transformers (FLUX.1, SD 3): MultiDiffusion's panorama against what a user would write
without it, and peak memory against the canvas width.

- **Time and evaluations**: ours (the paper's grid, then the fast mode) against diffusers' own
  pipeline (``FluxPipeline`` / ``StableDiffusion3Pipeline``) run on every window of the same grid
  from the canvas noise under it, the resulting latents averaged where windows overlap (prompt
  embeddings computed once and passed, as a careful user would). Both evaluate every window at
  every step; ours fuses the windows' velocities at each step (paper Eq. 5), the peer only averages
  finished windows, so its windows never agree (visible seams). Same components, same noise, same
  process, interleaved repeats.
- **Memory**: ``md.panorama`` at 2-3 canvas widths, each in its own process (``python -m
  benchmarks.dit_bench --memory``), peak RSS on the CPU (``torch.cuda.max_memory_allocated`` on a
  GPU) and what the measured call added to the process after a warm-up call. Views go through the
  transformer :data:`VIEW_BATCH` at a time, so what a call holds beyond the model is one batch's
  activations plus the canvas and Eq. 5's numerator (with the default, width-dependent
  ``view_batch_size`` the batch, and so the peak, grows until a canvas has that many windows).

On the CPU both families are shaped like the real models but reduced: FLUX.1's head width (128)
and rotary axes (16, 56, 56) with 1 head instead of 24 and (2, 4) blocks instead of (19, 38); SD
3's heads of 64 with 2 heads instead of 38 and 4 blocks instead of 38; T5 and CLIP stand-ins of
width 128 and 64 tokens; native window 32 latents (256 px, 256 tokens) instead of 128 (1024 px).
Model evaluations, coverage and time ratios carry over; absolute times don't.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from typing import Any

import torch

from multidiffusion.engine.views import grid_views
from multidiffusion.engine.windows import default_stride

from .common import PROMPT, Row, calibrate, noise, ours_panorama, repeat
from .measure import measure

__all__ = ["dit_rows", "memory_rows", "reduced_pipeline"]

NATIVE = 32  # latent pixels: the reduced models' window (256 px)
VIEW_BATCH = 8  # views per transformer call in the memory measurement
TEXT = 64  # T5 tokens
GUIDANCE = {"flux": 3.5, "sd3": 5.0}  # FLUX.1-dev's distilled guidance (no CFG); SD 3's CFG
LABEL = {"flux": "FLUX.1-dev-shaped", "sd3": "SD 3.5-shaped"}
PIPELINE = {"flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline"}


def reduced_pipeline(family: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The family's reduced random-weight pipeline (module docstring)."""
    from devtools.dit_components import tiny_flux_pipeline, tiny_sd3_pipeline

    if family == "flux":
        pipe = tiny_flux_pipeline(
            sample_size=NATIVE,
            width=128,
            head=128,
            axes=(16, 56, 56),
            layers=(2, 4),
            text_width=128,
            text_length=TEXT,
        )
    else:
        pipe = tiny_sd3_pipeline(sample_size=NATIVE, heads=2, head=64, layers=4, text_width=128, text_length=TEXT)
    return pipe.to(device=device, dtype=dtype)


def _md(pipe: Any) -> Any:
    from multidiffusion import MultiDiffusion

    md = MultiDiffusion(pipe, max_sequence_length=TEXT)
    md.set_progress_bar_config(disable=True)
    return md


def per_view_peer(pipe: Any, family: str, height: int, width: int, steps: int):
    """diffusers' pipeline on every window of the paper's grid (window 32, stride 4 latents), from
    the canvas noise under it; finished windows averaged: ``run(latents) -> latents``."""
    from multidiffusion.models.flux import pack_latents, unpack_latents

    h, w = height // 8, width // 8
    views = grid_views(h, w, (NATIVE, NATIVE), default_stride((NATIVE, NATIVE), "grid", 2))
    guidance = GUIDANCE[family]
    if family == "flux":
        embeds, pooled, _ = pipe.encode_prompt(PROMPT, None, max_sequence_length=TEXT)
        text = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    else:
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        encoded = pipe.encode_prompt(PROMPT, None, None, do_classifier_free_guidance=True, max_sequence_length=TEXT)
        text = dict(zip(names, encoded))

    def run(latents: torch.Tensor) -> torch.Tensor:
        num = torch.zeros_like(latents)
        den = torch.zeros((1, 1, h, w), dtype=latents.dtype, device=latents.device)
        for v in views:
            rows, cols = slice(v.top, v.top + v.height), slice(v.left, v.left + v.width)
            crop = latents[..., rows, cols]
            out = pipe(
                height=v.height * 8,
                width=v.width * 8,
                num_inference_steps=steps,
                guidance_scale=guidance,
                latents=pack_latents(crop) if family == "flux" else crop.clone(),
                output_type="latent",
                max_sequence_length=TEXT,
                **text,
            ).images
            num[..., rows, cols] += unpack_latents(out, v.height, v.width) if family == "flux" else out
            den[..., rows, cols] += 1
        return num / den

    return run, len(views)


def dit_rows(quick: bool, device: torch.device, steps: int, repeats: int) -> list[Row]:
    """Per family: ours (grid, then shifted) against the per-view peer on a 256 x 1024 canvas (quick:
    256 x 512)."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    height, width = 256, 512 if quick else 1024
    rows: list[Row] = []
    for family in ("flux", "sd3"):
        pipe = reduced_pipeline(family, device, dtype)
        pipe.set_progress_bar_config(disable=True)
        md = _md(pipe)
        peer, views = per_view_peer(pipe, family, height, width, steps)
        h, w = height // 8, width // 8
        latents = noise((1, 16, h, w)).to(device, dtype)
        guidance = GUIDANCE[family]

        ctx = _Ctx(device, repeats, quick, pipe.transformer)
        grid = ours_panorama(md, PROMPT, height, width, steps, guidance)
        fast = ours_panorama(md, PROMPT, height, width, steps, guidance, placement="shifted")
        batch = calibrate(ctx, f"{family}-grid", grid, latents, views)  # ours at its best view_batch_size
        runs = {
            "peer": lambda peer=peer, latents=latents: peer(latents),
            "grid": lambda grid=grid, latents=latents, batch=batch: grid(latents, batch),
            "fast": lambda fast=fast, latents=latents, batch=batch: fast(latents, batch),
        }
        _, m = repeat(ctx, runs)
        branches = 1 if family == "flux" else 2
        for name, config in (("grid", "exact (grid)"), ("fast", "fast mode (shifted)")):
            rows.append(
                Row(
                    "dit",
                    f"{LABEL[family]} panorama {height}x{width}, {views} windows of 256 px, ours {config}",
                    f"diffusers {PIPELINE[family]} on each window, averaged",
                    m["peer"],
                    m[name],
                    h * w,
                    steps,
                    branches=branches,
                    notes=f"{'no CFG (guidance embedded)' if family == 'flux' else 'CFG'}; "
                    f"evaluations peer {m['peer'].evaluations} / ours {m[name].evaluations}; ours "
                    f"view_batch_size={batch} (calibrated: {ctx.batches.get(f'{family}-grid_times')})",
                    extra={"family": family, "placement": name, "view_batch_size": batch},
                )
            )
    return rows


class _Ctx:
    """What :func:`benchmarks.common.repeat` and ``calibrate`` read from their context: the
    transformer stands where they look for a UNet."""

    def __init__(self, device: torch.device, repeats: int, quick: bool, transformer: Any):
        self.device, self.repeats, self.quick = device, repeats, quick
        self.pipe = types.SimpleNamespace(unet=transformer)
        self.batches: dict[str, Any] = {}


def memory_rows(quick: bool, device: torch.device, steps: int) -> list[dict]:
    """Peak memory of ``md.panorama`` at 2-3 widths per family, one process per width (:func:`main`)."""
    widths = (512, 1024) if quick else (512, 1024, 2048)
    rows = []
    for family in ("flux", "sd3"):

        def run(width: int, family: str = family) -> dict:
            cmd = [sys.executable, "-m", "benchmarks.dit_bench", "--memory", "--family", family, "--width", str(width)]
            cmd += ["--device", str(device), "--steps", str(steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            return json.loads(out.strip().splitlines()[-1])

        detail = {str(width): run(width) for width in widths}
        first, last = detail[str(widths[0])], detail[str(widths[-1])]
        rows.append(
            {
                "suite": "dit-memory",
                "config": f"{LABEL[family]} panorama 256 x {' / '.join(map(str, widths))}, {steps} steps, "
                f"view_batch_size {VIEW_BATCH}, one process per width",
                "peer": f"ours at width {widths[0]}",
                "peak_mb": {"peer": first["peak_mb"], "ours": last["peak_mb"]},
                "memory_ratio": last["peak_mb"] / first["peak_mb"],
                "delta_ratio": last["call_mb"] / max(first["call_mb"], 1e-9),
                "seconds": {"peer": first["seconds"], "ours": last["seconds"]},
                "coverage": {"peer": first["coverage"], "ours": last["coverage"]},
                "detail": detail,
                "notes": "; ".join(
                    f"{w}: peak {d['peak_mb']:.0f} MiB, added by the call {d['call_mb']:.1f} MiB, canvas "
                    f"{d['canvas_mb']:.2f} MiB, {d['views']} windows"
                    for w, d in detail.items()
                ),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    """One memory measurement in a fresh process: prints one JSON line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.dit_bench")
    p.add_argument("--memory", action="store_true", required=True)
    p.add_argument("--family", choices=("flux", "sd3"), required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    md = _md(reduced_pipeline(args.family, device, dtype))
    h, w = 256 // 8, args.width // 8
    latents = noise((1, 16, h, w)).to(device, dtype)

    run = ours_panorama(md, PROMPT, 256, args.width, args.steps, GUIDANCE[args.family])
    run(latents, VIEW_BATCH)  # warm-up: lazy initialisations and allocator pools are not the canvas's
    import psutil

    before = psutil.Process().memory_info().rss / 2**20
    _, m = measure(lambda: run(latents, VIEW_BATCH), md.adapter.unet, device)
    views = len(grid_views(h, w, (NATIVE, NATIVE), default_stride((NATIVE, NATIVE), "grid", 2)))
    print(
        json.dumps(
            {
                "family": args.family,
                "width": args.width,
                "peak_mb": m.peak_mb,
                "call_mb": m.peak_mb - before if device.type == "cpu" else m.peak_mb,
                "canvas_mb": latents.numel() * latents.element_size() / 2**20,
                "seconds": m.seconds,
                "views": views,
                "coverage": m.coverage(h * w, args.steps, 1 if args.family == "flux" else 2),
                "evaluations": m.evaluations,
            }
        )
    )


if __name__ == "__main__":
    main()
