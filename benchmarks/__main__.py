"""``python -m benchmarks``: speed and memory of multidiffusion against its peers; prints a Markdown
table and writes the figures as JSON.

On a CPU it uses an SD 2-base-shaped random-weight UNet at 1/10 of SD's width (``--model reduced``)
and few steps: model calls, coverage and time ratios carry over to the real model, absolute times
don't. With CUDA it defaults to the full SD 2-base architecture (random weights, float16); a Hugging
Face id or folder (``--model stabilityai/stable-diffusion-2-base``) benchmarks real weights.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

SUITES = ("exact", "fast", "regions", "seams", "decode", "compile", "precision")


def machine(device) -> dict:
    import torch

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "device": str(device),
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def build(args, device, dtype):
    from devtools.components import sd_shaped_pipeline
    from multidiffusion import MultiDiffusion

    if args.model == "reduced":
        pipe = sd_shaped_pipeline(divisor=10)
    elif args.model == "full":
        pipe = sd_shaped_pipeline(divisor=1)
    else:
        md = MultiDiffusion.from_pretrained(args.model, torch_dtype=dtype, device=device)
        md.set_progress_bar_config(disable=True)
        return md.pipe, md
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    return pipe, md


def decode_rows(args, device) -> list[dict]:
    """Each decode in its own process, so its peak memory is its own."""
    cuda = device.type == "cuda"
    divisor = args.vae_divisor or (1 if cuda else 16)
    dtype = "float16" if cuda else "float32"
    rows = []

    def run(*extra: str) -> dict:
        cmd = [sys.executable, "-m", "benchmarks.decode", "--device", str(device), "--dtype", dtype, *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    sizes = [512, 1024] if args.quick else [1024, 4096]
    mem = {size: run("--size", str(size), "--divisor", str(divisor)) for size in sizes}
    small, large = mem[sizes[0]], mem[sizes[-1]]
    key = "cuda_peak_mb" if cuda else "peak_rss_mb"
    delta = "cuda_delta_mb" if cuda else "decode_rss_delta_mb"
    rows.append(
        {
            "suite": "decode",
            "config": f"decode {sizes[-1]}x{sizes[-1]} vs {sizes[0]}x{sizes[0]}, SD-shaped VAE 1/{divisor} width, "
            "tile 64, exact statistics, to 8-bit pixels",
            "peer": f"ours at {sizes[0]}x{sizes[0]}",
            "peak_mb": {"peer": small[key], "ours": large[key]},
            "memory_ratio": large[key] / small[key],
            "delta_ratio": large[delta] / max(small[delta], 1e-9),
            "seconds": {"peer": small["seconds"], "ours": large["seconds"]},
            "detail": mem,
        }
    )
    size = 512 if args.quick else 1024
    cases = [("sd", d) for d in sorted({divisor, 8} if not cuda else {divisor})] + [("demo", 1)]
    for vae, div in cases:
        r = run("--size", str(size), "--divisor", str(div), "--vae", vae, "--psnr")
        name = f"SD-shaped random VAE 1/{div} width" if vae == "sd" else "the demo's trained VAE, a rendered scene"
        rows.append(
            {
                "suite": "decode",
                "config": f"tiled vs whole decode {size}x{size}, {name}, default tiles",
                "peer": "whole decode",
                "psnr_db": r["psnr_db_exact"],
                "psnr_db_fast": r["psnr_db_fast"],
                "seconds": {"peer": r["whole_seconds"], "ours": r["tiled_seconds_exact"]},
                "seconds_fast": r["tiled_seconds_fast"],
            }
        )
    return rows


def fmt(v, spec=".2f", unit="") -> str:
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def table(rows: list[dict]) -> str:
    head = (
        "| configuration | peer | peer time | our time | ratio | model calls (peer / ours) | coverage (peer / ours)"
        " | peak memory MiB (peer / ours) | in model calls (peer / ours) | notes |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if r["suite"] == "seams":
            cells = [
                r["config"],
                r["peer"],
                "",
                "",
                fmt(r.get("ratio"), ".2f", "x"),
                "",
                "",
                "",
                "",
                r.get("notes", ""),
            ]
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
    p.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}")
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
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    args.model = args.model or ("full" if cuda else "reduced")
    steps = args.steps or (1 if args.quick else 20 if cuda else 3)
    repeats = 1 if args.quick else args.repeats
    dtype = torch.float16 if cuda else torch.float32

    from . import suites as S

    info = machine(device)
    info.update(model=args.model, steps=steps, repeats=repeats, dtype=str(dtype))
    print(
        f"# {info['date']} {info.get('gpu') or info.get('cpu', '')}, {info['threads']} threads, "
        f"load {info['load_average'][0]:.2f}; model {args.model}, {steps} steps, median of {repeats}",
        flush=True,
    )
    rows: list[dict] = []
    ctx = None
    if any(s in suites for s in ("exact", "fast", "regions", "compile", "precision")):
        pipe, md = build(args, device, dtype)
        ctx = S.Context(pipe, md, device, steps, repeats, args.quick)

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
        add(S.regions(ctx, 1024 if args.quick else 2048))
    if "seams" in suites:
        from .seams import seam_rows

        add(seam_rows(quick=args.quick, device=device))
    if "compile" in suites:
        add(S.compile_unet(ctx, 1024 if not args.quick else 512))
    if "precision" in suites:
        add(S.precision(ctx, torch.bfloat16 if not cuda else torch.float16, 1024 if not args.quick else 512))
    if "decode" in suites:
        add(decode_rows(args, device))

    info["load_average_end"] = os.getloadavg()
    if ctx is not None:
        info["view_batch_size_calibration"] = ctx.batches
    print()
    print(table(rows))
    out = Path(args.json or f"benchmarks/results/{'quick-' if args.quick else ''}{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "rows": rows}, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
