"""``python -m benchmarks``: speed and memory of multidiffusion against its peers; prints a Markdown
table and writes the figures as JSON. ``--suites dit``: the diffusion transformers (FLUX.1, SD 3) on
reduced random-weight models of their shapes (:mod:`benchmarks.dit_bench`); ``--suites memory-width``:
peak memory at 1x, 2x, 4x the native width for every family of 2026 (:mod:`benchmarks.memory_width`).

On a CPU it uses an SD 2-base-shaped random-weight UNet at 1/10 of SD's width (``--model reduced``)
and few steps: model calls, coverage and time ratios carry over to the real model, absolute times
don't. With CUDA it defaults to the full SD 2-base architecture (random weights, float16); a Hugging
Face id or folder (``--model stabilityai/stable-diffusion-2-base``) benchmarks real weights.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SUITES = (
    "exact",
    "fast",
    "regions",
    "seams",
    "decode",
    "compile",
    "precision",
    "controlnet",
    "outpaint",
    "upscale-memory",
    "upscale-peer",
    "upscale-quality",
    "dit",
    "step-cache",
    "memory-width",
    "demo",
    "demo-bootstrap",
    "demo-controlnet",
    "distributed",
    "live-fps",
    "demo-border",
    "gpu",
)
DEFAULT_SUITES = SUITES[:8]
"""What runs without --suites: the speed suites; the demo-quality and upscale suites take long on a
CPU and are asked for by name."""


def fmt(v, spec=".2f", unit="") -> str:
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def table(rows: list[dict]) -> str:
    head = (
        "| configuration | peer | peer time | our time | ratio | model calls (peer / ours) | coverage (peer / ours)"
        " | peak memory MiB (peer / ours) | in model calls (peer / ours) | notes |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if r["suite"] in ("distributed", "distributed-model"):
            sec = r.get("seconds") or {}
            cells = [r["config"], r["peer"], fmt(sec.get("peer"), ".2f", " s"), fmt(sec.get("ours"), ".2f", " s")]
            cells += [fmt(r.get("ratio"), ".2f", "x"), "", "", "", "", r.get("notes", "")]
        elif r["suite"] in ("seams", "outpaint", "demo"):
            cells = [
                r["config"],
                r["peer"],
                "",
                r.get("ours", ""),
                fmt(r.get("ratio"), ".2f", "x"),
                "",
                "",
                "",
                "",
                r.get("notes", ""),
            ]
        elif r["suite"] in ("upscale-memory", "dit-memory", "memory-width"):
            cells = [
                r["config"],
                r["peer"],
                fmt(r["seconds"]["peer"], ".1f", " s"),
                fmt(r["seconds"]["ours"], ".1f", " s"),
                "",
                "",
                f"{r['coverage']['peer']:.2f} / {r['coverage']['ours']:.2f}",
                f"{r['peak_mb']['peer']:.0f} / {r['peak_mb']['ours']:.0f}",
                "",
                f"peak ratio {r['memory_ratio']:.2f}x (added by the call: {r['delta_ratio']:.2f}x)",
            ]
        elif r["suite"] == "live-fps":
            cells = [r["config"], r["path"], "", fmt(r["seconds"], ".3f", " s"), fmt(r["speedup_vs_base"], ".1f", "x")]
            cells += ["", "", "", "", f"{r['fps']:.2f} frames/s, ratio to {r['base_steps']} steps; {r['notes']}"]
        elif r["suite"] == "upscale-quality":
            cells = [r["config"], r["peer"], "", fmt(r["seconds"], ".1f", " s"), "", "", "", "", "", r["notes"]]
        elif r["suite"] == "decode":
            if "psnr_db" in r:
                cells = [
                    r["config"],
                    r["peer"],
                    fmt(r["seconds"]["peer"], ".1f", " s"),
                    fmt(r["seconds"]["ours"], ".1f", " s"),
                    "",
                    "",
                    "",
                    "",
                    "",
                    f"PSNR {r['psnr_db']:.1f} dB",
                ]
            else:
                cells = [
                    r["config"],
                    r["peer"],
                    fmt(r["seconds"]["peer"], ".1f", " s"),
                    fmt(r["seconds"]["ours"], ".1f", " s"),
                    "",
                    "",
                    "",
                    f"{r['peak_mb']['peer']:.0f} / {r['peak_mb']['ours']:.0f}",
                    "",
                    f"peak ratio {r['memory_ratio']:.2f}x (added by the decode: {r['delta_ratio']:.2f}x)",
                ]
        else:
            p, o = r.get("peer_measured") or {}, r.get("ours") or {}
            cells = [
                r["config"],
                r["peer"],
                fmt(p.get("seconds"), ".1f", " s"),
                fmt(o.get("seconds"), ".1f", " s"),
                fmt(r.get("ratio"), ".2f", "x"),
                f"{p.get('model_calls', 'n/a')} / {o.get('model_calls', 'n/a')}",
                f"{fmt(p.get('coverage'))} / {fmt(o.get('coverage'))}",
                f"{fmt(p.get('peak_mb'), '.0f')} / {fmt(o.get('peak_mb'), '.0f')}",
                f"{fmt(p.get('in_model', 0) * 100 if p else None, '.1f', '%')} / "
                f"{fmt(o.get('in_model', 0) * 100 if o else None, '.1f', '%')}",
                r.get("notes", ""),
            ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--suites",
        default=",".join(DEFAULT_SUITES),
        help=f"comma-separated subset of {','.join(SUITES)} (default: {','.join(DEFAULT_SUITES)})",
    )
    p.add_argument("--model", default=None, help="reduced (CPU default), full (CUDA default), or a model id/folder")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 3 on CPU, 20 on CUDA)")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    p.add_argument("--vae-divisor", type=int, default=None, help="VAE width 1/N of SD's for decode (CPU 16, CUDA 1)")
    p.add_argument("--quick", action="store_true", help="smoke test: one step, one repeat, small decodes")
    p.add_argument("--json", default=None, help="where to write the figures (default benchmarks/results/<device>.json)")
    args = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        p.error(f"--suites: unknown {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    if "gpu" in suites and not torch.cuda.is_available():
        from .gpu_suite import no_cuda_message

        print(f"error: {no_cuda_message()}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    args.model = args.model or ("full" if cuda else "reduced")
    steps = args.steps or (1 if args.quick else 20 if cuda else 3)
    repeats = 1 if args.quick else args.repeats
    dtype = torch.float16 if cuda else torch.float32

    from . import suites as S
    from .common import Context, build_components, machine, write_results
    from .decode import decode_rows
    from .outpaint_demo import outpaint_rows
    from .regions_bench import regions_rows
    from .seams import seam_rows

    info = machine(device)
    info.update(model=args.model, steps=steps, repeats=repeats, dtype=str(dtype))
    print(
        f"# {info['date']} {info.get('gpu') or info.get('cpu', '')}, {info['threads']} threads, "
        f"load {info['load_average'][0]:.2f}; model {args.model}, {steps} steps, median of {repeats}",
        flush=True,
    )
    rows: list[dict] = []
    ctx = None
    if any(s in suites for s in ("exact", "fast", "regions", "compile", "precision", "controlnet")):
        pipe, md = build_components(args.model, device, dtype)
        ctx = Context(pipe, md, device, steps, repeats, args.quick)

    def add(new_rows) -> None:
        for row in new_rows:
            rows.append(row if isinstance(row, dict) else row.as_dict())
        print(table(rows[-len(new_rows) :]), flush=True)

    if "exact" in suites:
        add(S.panorama_exact(ctx, 1024 if args.quick else 2048))
        if not args.quick:
            add(S.panorama_exact(ctx, 4608))
    if "fast" in suites:
        add(S.fast_mode(ctx, 2048 if args.quick else 4608))
    if "regions" in suites:
        add(regions_rows(ctx, 1024 if args.quick else 2048))
    if "seams" in suites:
        add(seam_rows(quick=args.quick, device=device))
    if "outpaint" in suites:
        add(outpaint_rows(quick=args.quick, device=device))
    if "compile" in suites:
        add(S.compile_unet(ctx, 1024 if not args.quick else 512))
    if "precision" in suites:
        add(S.precision(ctx, torch.bfloat16 if not cuda else torch.float16, 1024 if not args.quick else 512))
    if "decode" in suites:
        add(decode_rows(args.quick, device, args.vae_divisor))
    if "controlnet" in suites:
        from .controlnet_bench import controlnet_rows

        add(controlnet_rows(ctx, 768 if args.quick else 1024))
    if "upscale-memory" in suites:
        add(S.upscale_memory(args.quick, device))
    if "upscale-peer" in suites:
        add(S.upscale_peer(args.quick, device, repeats))
    if "upscale-quality" in suites:
        add(S.upscale_quality(args.quick, device))
    if "dit" in suites:
        from .dit_bench import dit_rows, memory_rows

        add(dit_rows(args.quick, device, steps, repeats))
        add(memory_rows(args.quick, device, steps))
    if "memory-width" in suites:
        from .memory_width import memory_width_rows

        add(memory_width_rows(args.quick, device, 2))
    if "step-cache" in suites:
        from .step_cache_bench import step_cache_rows
        from .step_cache_bench import table as step_cache_table

        new = step_cache_rows(args.quick, device, args.steps or (4 if args.quick else 20), repeats)
        print(step_cache_table(new), flush=True)
        rows += new
    demo_parts = [part for part in ("bootstrap", "controlnet") if "demo" in suites or f"demo-{part}" in suites]
    if demo_parts:
        from .demo_quality import demo_rows

        add(demo_rows(args.model if args.model not in ("reduced", "full") else None, args.quick, demo_parts))
    if "live-fps" in suites:
        from .live_fps import live_fps_rows
        from .live_fps import table as live_fps_table

        demo_model = args.model if args.model not in ("reduced", "full") else None
        new = live_fps_rows(demo_model, args.quick, max(args.repeats, 10))
        info["live_fps"] = {"model": demo_model or "demo", "repeats": 1 if args.quick else max(args.repeats, 10)}
        print(live_fps_table(new), flush=True)
        rows += new
    if "demo-border" in suites:
        from .demo_border import table as border_table

        new = S.demo_border(args.quick, args.model if args.model not in ("reduced", "full") else None)
        print(border_table(new), flush=True)
        rows += new
    if "gpu" in suites:
        from .gpu_suite import gpu_rows

        rows += gpu_rows(device=device, report=lambda new: print(table(new), flush=True))
    if "distributed" in suites:
        from .distributed_bench import distributed_rows

        add(distributed_rows(args.quick, steps, repeats))

    info["load_average_end"] = os.getloadavg()
    if ctx is not None:
        info["view_batch_size_calibration"] = ctx.batches
    print()
    print(table(rows))
    out = write_results(
        Path(args.json or f"benchmarks/results/{'quick-' if args.quick else ''}{device.type}.json"), info, rows
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
