"""Step caching per batch of views (issue 27, item 6): diffusers' first-block cache and TaylorSeer
on a panorama, per family and cache kind, against the same panorama uncached.

``python -m benchmarks --suites step-cache`` or ``python -m benchmarks.step_cache_bench`` (writes
``benchmarks/results/cpu-step-cache.json`` and prints the table of docs/benchmarks.md, "Step
caching"). ``--model PATH`` runs one real model (a diffusers folder or repo id in the local cache)
instead of the reduced ones: random weights show what the mechanism does (evaluations skipped, time
saved, that each view batch keeps its cache) but not what it does to a real image, since a random
model's residuals change between steps in no way a trained one's do.

What one row is: the family's panorama, native height and 3x native width (quick: 2x), the paper's
grid (default stride), default ``view_batch_size``, from the same noise, uncached and then cached
(``step_cache=...``), timed on the same warm model (after a one-step warm-up) in pairs, a cached
run then an uncached one, so that both see the same load (medians of ``--repeats`` pairs).
Reported: evaluations (transformer rows) computed and skipped (``stats.step_cache_skipped``: rows
whose last block was not run), the speed-up (uncached / cached seconds), max |diff| of the latents,
and max |diff| and PSNR of the decoded images (pixels in [0, 1]) against the uncached result, the
cached state's peak (MiB) and contexts (view batches with a cache).
A family and kind that diffusers 0.42 cannot cache is a row saying why (the one-line refusal).

The reduced models are those of the memory benchmark (:func:`devtools.family_components.reduced_families`,
SD 3 from :func:`benchmarks.dit_bench.reduced_pipeline`): each family's block structure, heads of
128, a native window of 32 latents, 64 text tokens.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from .common import PROMPT, machine, noise, write_results

__all__ = ["SETTINGS", "step_cache_rows", "table"]

SETTINGS: tuple[dict[str, Any], ...] = (
    {"step_cache": "first_block", "step_cache_threshold": 0.05},  # diffusers' default
    {"step_cache": "first_block", "step_cache_threshold": 0.5},  # far above a real model's: random weights
    {"step_cache": "taylorseer", "step_cache_interval": 5},  # diffusers' default
)
NATIVE = 32  # latent pixels: the reduced models' window
TEXT = 64


def _families() -> dict[str, Callable[[], Any]]:
    from devtools.family_components import reduced_families

    from .dit_bench import reduced_pipeline

    builders: dict[str, Callable[[], Any]] = {
        label: (lambda build=build: build(NATIVE, TEXT)) for label, build in reduced_families().items()
    }
    builders["SD 3.5"] = lambda: reduced_pipeline("sd3", torch.device("cpu"), torch.float32)
    return builders


def _label(setting: dict[str, Any]) -> str:
    kind = setting["step_cache"]
    value = setting.get("step_cache_threshold", setting.get("step_cache_interval"))
    return f"{kind} ({'threshold' if kind == 'first_block' else 'interval'} {value})"


def _decoded(md: Any, latents: torch.Tensor) -> torch.Tensor:
    from multidiffusion.vae.codec import decode_latents

    adapter = md.adapter
    image = decode_latents(adapter.vae, latents, latent_format=adapter.latent_format)
    return ((image.float() + 1) / 2).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (inf when equal)."""
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _paired(md: Any, args: dict[str, Any], setting: dict[str, Any], repeats: int) -> tuple[Any, float, float]:
    """(the cached result, median cached seconds, median uncached seconds): ``repeats`` pairs of a
    cached then an uncached run."""
    cached, plain, out = [], [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = md.panorama(PROMPT, **args, **setting)
        cached.append(time.perf_counter() - start)
        start = time.perf_counter()
        md.panorama(PROMPT, **args)
        plain.append(time.perf_counter() - start)
    return out, sorted(cached)[len(cached) // 2], sorted(plain)[len(plain) // 2]


def family_rows(label: str, md: Any, steps: int, repeats: int, widths: int, device: torch.device) -> list[dict]:
    """The rows of one family: its uncached panorama, then each setting of :data:`SETTINGS`."""
    h, w = md.adapter.native_latent_size
    x = noise((1, md.adapter.latent_channels, h, widths * w)).to(device=device, dtype=md.dtype)
    args = dict(height=h * 8, width=widths * w * 8, num_inference_steps=steps, latents=x, output_type="latent")
    md.panorama(PROMPT, **{**args, "num_inference_steps": 2})  # warm-up: first-call costs out of the timings
    plain = md.panorama(PROMPT, **args)
    reference = _decoded(md, plain.images)
    rows = []
    for setting in SETTINGS:
        row: dict[str, Any] = {
            "suite": "step-cache",
            "family": label,
            "config": f"{label}, {_label(setting)}",
            "peer": "uncached",
            "settings": setting,
            "canvas_px": [h * 8, widths * w * 8],
            "steps": steps,
        }
        try:  # cached and uncached runs in pairs, so that both see the same load
            out, seconds, plain_s = _paired(md, args, setting, repeats)
        except ValueError as error:
            rows.append({**row, "refused": str(error), "notes": f"refused: {error}"})
            print(f"  {row['config']}: {error}", flush=True)
            continue
        s = out.stats
        image = _decoded(md, out.images)
        row.update(
            evaluations=s.evaluations,
            skipped=s.step_cache_skipped,
            skipped_fraction=s.step_cache_skipped / s.evaluations,
            seconds_uncached=plain_s,
            seconds_cached=seconds,
            speedup=plain_s / seconds,
            latent_max_diff=float((out.images - plain.images).abs().max()),
            image_max_diff=float((image - reference).abs().max()),
            psnr_db=psnr(image, reference),
            cache_peak_mb=s.step_cache_peak_mb,
            contexts=s.step_cache_contexts,
        )
        notes = f"skipped {row['skipped']}/{row['evaluations']}, PSNR {row['psnr_db']:.1f} dB"
        row.update(ratio=row["speedup"], notes=notes)
        rows.append(row)
        print(f"  {row['config']}: {row['skipped']}/{row['evaluations']} skipped, {row['speedup']:.2f}x", flush=True)
    return rows


def step_cache_rows(
    quick: bool, device: torch.device, steps: int, repeats: int, model: str | None = None, widths: int | None = None
) -> list[dict]:
    """Every family's rows (``model``: one real model instead, by path or repo id), on a canvas
    ``widths`` x the native width (default 3, quick 2)."""
    from multidiffusion import MultiDiffusion

    widths = widths or (2 if quick else 3)
    if model is not None:
        dtype = torch.bfloat16 if device.type == "cuda" else None  # a real model in bfloat16 on a GPU
        builders = {model: lambda: MultiDiffusion.from_pretrained(model, device=device, torch_dtype=dtype)}
    else:
        builders = {
            k: lambda b=b: MultiDiffusion(b().to(device), max_sequence_length=TEXT) for k, b in _families().items()
        }
    rows: list[dict] = []
    for label, build in builders.items():
        md = build()
        md.set_progress_bar_config(disable=True)
        rows += family_rows(label, md, steps, repeats, widths, device)
        del md
    return rows


def table(rows: list[dict]) -> str:
    """The Markdown table of docs/benchmarks.md."""
    head = (
        "| family | cache | evaluations skipped | speed-up | max \\|diff\\| latents | max \\|diff\\| image | PSNR"
        " | cache peak (contexts) |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        cache = _label(r["settings"])
        if "refused" in r:
            why = r["refused"].removeprefix("step_cache: ")
            lines.append(f"| {r['family']} | {cache} | refused: {why} | | | | | |")
            continue
        skipped = f"{r['skipped']} / {r['evaluations']} ({100 * r['skipped_fraction']:.0f}%)"
        lines.append(
            f"| {r['family']} | {cache} | {skipped} | {r['speedup']:.2f}x | {r['latent_max_diff']:.3g} "
            f"| {r['image_max_diff']:.3g} | {r['psnr_db']:.1f} dB | {r['cache_peak_mb']:.1f} MiB ({r['contexts']}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_cache_bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="2x native width, 4 steps, one repeat")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 20; quick 4)")
    p.add_argument("--repeats", type=int, default=1, help="runs per timing, the median reported")
    p.add_argument("--model", default=None, help="a real model (folder or repo id) instead of the reduced ones")
    p.add_argument("--widths", type=int, default=None, help="canvas width in native widths (default 3; quick 2)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: on shared cores more are slower)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--json", default=None, help="default benchmarks/results/<device>-step-cache.json")
    args = p.parse_args(argv)
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads)
    steps = args.steps or (4 if args.quick else 20)
    info = machine(device)
    info.update(steps=steps, repeats=args.repeats, model=args.model or "reduced", widths=args.widths or 3)
    rows = step_cache_rows(args.quick, device, steps, args.repeats, args.model, args.widths)
    info["load_average_end"] = os.getloadavg()
    print(table(rows))
    name = f"{'quick-' if args.quick else ''}{device.type}-step-cache.json"
    print(f"wrote {write_results(args.json or f'benchmarks/results/{name}', info, rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
