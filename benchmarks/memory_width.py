"""Memory against the canvas width, for every diffusion-transformer family of 2026 (issue 27, item 5):
the peak of ``md.panorama`` at 1x, 2x and 4x the family's native width, with the text encoders kept
and released (``md.release_text_encoders()``), each measurement in its own fresh process.

``python -m benchmarks --suites memory-width`` (or ``python -m benchmarks.memory_width``, which
writes ``benchmarks/results/cpu-memory-width.json`` and prints the table of docs/benchmarks.md).

**The models.** Random weights with each family's layer structure (heads of 128 or Z-Image's width,
the family's rotary axes, its kind of text encoder), reduced to one head, a few blocks and a native
window of 32 latents (256 px) with 64 text tokens, the text encoder sized so its parameters stand to
the transformer's as the real ones do (:func:`devtools.family_components.reduced_families`; FLUX.2
and Qwen-Image are their devtools modules' tiny models as they stand). Height is the native one;
the widths are 256, 512 and 1024 px (1, 9 and 25 windows at the default stride of 4 latents).

**What one measurement is.** A fresh process imports the libraries, builds the model, runs a warm-up
call at the native width (it encodes the prompt, and in the "released" runs frees the
text encoders right after encoding: ``release_text_encoders=True``), then the measured call: the
panorama at the width, the same prompt, 2 steps (every step holds the same; Qwen-Image's adapter
fails at one), ``output_type="latent"``,
default ``view_batch_size`` (the runner's :func:`~multidiffusion.runner.estimate.auto_batch`). One
CPU thread (``OMP_NUM_THREADS=1``): on the 2 shared cores, two threads made each model call about 10x
slower under load. Reported, in MiB:

- ``peak_mb``: the process's resident memory at its highest during the measured call (polled every
  2 ms; on CUDA ``torch.cuda.max_memory_allocated``), less what it held once the model was built
  besides the model's own bytes (the interpreter, the libraries, what building left: about 500 MiB
  here, which would hide any growth): the model, what the call holds and allocator slack, the CPU's
  counterpart of the accelerator's allocated memory;
- ``live_mb``: the same from glibc's heap counters (bytes handed out and not freed, so freed memory
  malloc keeps is left out; :func:`benchmarks.measure.live_heap_bytes`);
- ``weights_mb``: the parameters and buffers held during the call (transformer, VAE, text encoders
  unless released).

The ratio is ``peak_mb`` at the width over ``peak_mb`` at 1x; the bound is 1.25x. The decode is left
out (its memory follows the VAE's tile and cache budget, not the canvas: "Memory" in
docs/benchmarks.md); so is what a real model's proportions would change: here one view's
activations weigh 20-40% of the reduced weights, on FLUX.1-dev at 1024 px about 3% of its 34 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["FACTORS", "NATIVE", "memory_width_rows", "table"]

NATIVE = 32  # latent pixels: the reduced models' native window (256 px)
TEXT = 64  # text-encoder tokens
FACTORS = (1, 2, 4)  # widths, in native widths
PROMPT = "a photo of the dolomites"
BOUND = 1.25


def _mib(n: float) -> float:
    return round(n / 2**20, 2)


def measure(family: str, factor: int, release: bool, steps: int, device: torch.device) -> dict[str, Any]:
    """One measurement (module docstring), in this process: call it in a fresh one."""
    import psutil

    from benchmarks.measure import RssPoller, live_heap_bytes
    from devtools.family_components import parameter_bytes, reduced_families
    from multidiffusion import MultiDiffusion
    from multidiffusion.runner.estimate import auto_batch, view_activation_bytes
    from multidiffusion.runner.text_encoders import TEXT_ENCODERS

    cuda = device.type == "cuda"
    torch.set_num_threads(1)
    dtype = torch.bfloat16 if cuda else torch.float32
    pipe = reduced_families()[family](NATIVE, TEXT).to(device=device, dtype=dtype)
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    built = sum(parameter_bytes(m) for m in modules)
    libraries = psutil.Process().memory_info().rss - (0 if cuda else built)  # what is not the model
    live_libraries = live_heap_bytes()
    live_libraries = None if live_libraries is None else live_libraries - built
    md = MultiDiffusion(pipe, max_sequence_length=TEXT, release_text_encoders=release)
    md.set_progress_bar_config(disable=True)
    height = NATIVE * md.adapter.vae_scale_factor

    def call(width: int, num_inference_steps: int) -> Any:
        generator = torch.Generator().manual_seed(0)
        return md.panorama(
            PROMPT,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            output_type="latent",
            generator=generator,
        )

    text_mb = _mib(sum(parameter_bytes(getattr(pipe, n, None)) for n in TEXT_ENCODERS))
    call(height, steps)  # warm-up at the native width: encodes the prompt (and frees the encoders when released)
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    weights = sum(parameter_bytes(m) for m in modules)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with RssPoller() as rss:
        out = call(height * factor, steps)
    peak = torch.cuda.max_memory_allocated() if cuda else rss.peak - libraries
    live = None if rss.live_peak is None or live_libraries is None else rss.live_peak - live_libraries
    return {
        "family": family,
        "factor": factor,
        "width": height * factor,
        "height": height,
        "text_encoders": "released" if release else "kept",
        "peak_mb": _mib(peak),
        "live_mb": None if live is None else _mib(live),
        "rss_mb": _mib(rss.peak),
        "libraries_mb": _mib(libraries),
        "weights_mb": _mib(weights),
        "text_encoders_mb": text_mb,
        "view_batch_size": auto_batch(md.adapter),
        "view_activation_mb": _mib(view_activation_bytes(md.adapter)),
        "views": out.stats.jobs // max(steps, 1),
        "model_calls": out.stats.model_calls,
        "seconds": round(out.stats.seconds, 2),
        "steps": steps,
    }


def _child(family: str, factor: int, release: bool, steps: int, device: torch.device) -> dict[str, Any]:
    """:func:`measure` in a fresh process: its JSON line."""
    cmd = [sys.executable, "-m", "benchmarks.memory_width", "--measure", family, "--factor", str(factor)]
    cmd += ["--steps", str(steps), "--device", str(device)] + (["--release"] if release else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # one thread: see the module docstring
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise RuntimeError(f"{family} at {factor}x: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_width_rows(
    quick: bool, device: torch.device, steps: int, families: list[str] | None = None
) -> list[dict[str, Any]]:
    """One row per family and text-encoder setting: the peaks at 1x, 2x, 4x (quick: 1x, 2x) and
    their ratios to 1x, in the shape of the suite runner's memory rows (peer: the 1x run)."""
    from devtools.family_components import reduced_families

    factors = FACTORS[:2] if quick else FACTORS
    rows = []
    for family in families or list(reduced_families()):
        for release in (False, True):
            setting = "text encoders released" if release else "text encoders kept"
            row: dict[str, Any] = {
                "suite": "memory-width",
                "family": family,
                "text_encoders": "released" if release else "kept",
                "config": f"{family}-shaped panorama, {setting}, widths {'/'.join(f'{f}x' for f in factors)}",
                "peer": "ours at 1x",
            }
            try:
                detail = {f: _child(family, f, release, steps, device) for f in factors}
            except RuntimeError as e:  # a family whose builder or adapter is still being written
                rows.append({**row, "error": str(e)})
                continue
            first, last = detail[factors[0]], detail[factors[-1]]
            ratios = {f"{f}x": round(d["peak_mb"] / first["peak_mb"], 3) for f, d in detail.items()}
            live = [d["live_mb"] for d in detail.values()]
            rows.append(
                {
                    **row,
                    "peak_mb": {"peer": first["peak_mb"], "ours": last["peak_mb"]},
                    "memory_ratio": last["peak_mb"] / first["peak_mb"],
                    "delta_ratio": last["peak_mb"] / first["peak_mb"],
                    "ratios": ratios,
                    "live_ratios": None
                    if None in live
                    else {f"{f}x": round(v / live[0], 3) for f, v in zip(factors, live)},
                    "within_bound": max(ratios.values()) <= BOUND,
                    "seconds": {"peer": first["seconds"], "ours": last["seconds"]},
                    "coverage": {"peer": 1.0, "ours": 1.0},
                    "detail": {f"{f}x": d for f, d in detail.items()},
                    "notes": "; ".join(
                        f"{f}x: {d['peak_mb']:.1f} MiB ({d['views']} views, batch {d['view_batch_size']})"
                        for f, d in detail.items()
                    ),
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of docs/benchmarks.md: family x widths, peak MiB and ratio to 1x, with the
    text encoders kept and released."""
    measured = [r for r in rows if "detail" in r]
    factors = list(measured[0]["detail"]) if measured else []
    head = "| family | text encoders | weights MiB (of them text encoders) | " + " | ".join(factors) + " | max ratio |"
    lines = [head, "|" + "---|" * (4 + len(factors))]
    for r in rows:
        if "detail" not in r:
            lines.append(f"| {r['family']} | {r['text_encoders']} | failed: {r['error']} |")
            continue
        d1 = r["detail"][factors[0]]
        cells = [r["family"], r["text_encoders"], f"{d1['weights_mb']:.1f} ({d1['text_encoders_mb']:.1f})"]
        cells[2] = (
            f"{d1['weights_mb']:.1f} (0, {d1['text_encoders_mb']:.1f} freed)"
            if r["text_encoders"] == "released"
            else cells[2]
        )
        cells += [f"{r['detail'][f]['peak_mb']:.1f} MiB ({r['ratios'][f]:.2f}x)" for f in factors]
        cells.append(f"{max(r['ratios'].values()):.2f}x" + ("" if r["within_bound"] else " (over 1.25x)"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory_width", description=__doc__.split("\n\n")[0])
    p.add_argument("--measure", default=None, help="one measurement of this family, in this process (JSON line)")
    p.add_argument("--factor", type=int, default=1)
    p.add_argument("--release", action="store_true")
    p.add_argument("--families", default=None, help="comma-separated labels (default: every family present)")
    p.add_argument("--steps", type=int, default=2, help="denoising steps of each call (each step holds the same)")
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true", help="1x and 2x only")
    p.add_argument("--json", default=None, help="default benchmarks/results/<device>-memory-width.json")
    args = p.parse_args(argv)
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    steps = args.steps
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.factor, args.release, steps, device)))
        return 0
    from .common import machine, write_results

    info = machine(device)
    families = args.families.split(",") if args.families else None
    rows = memory_width_rows(args.quick, device, steps, families)
    info["load_average_end"] = os.getloadavg()
    print(table(rows))
    default = f"benchmarks/results/{'quick-' if args.quick else ''}{device.type}-memory-width.json"
    print(f"\nwrote {write_results(Path(args.json or default), info, rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
