"""Frames per second of live region painting (issue 29, item 5): one 3-region layout (a background and
three boxes) rendered again and again, decode included (a PIL image out), median of ``repeats``, at
1, 2 and 4 steps of a few-step scheduler (``euler_trailing``) against the base step count in the same
run (the ratio). Two paths: a plain ``md.regions`` call, and :class:`~multidiffusion.live.LiveRegions`
(``push`` then ``wait``: the loop's thread hand-off, kept noise and prompt cache), so the loop's
overhead (or saving) shows.

- CPU (``python -m benchmarks --suites live-fps``): the shipped demo model at its size, 128 x 64 px,
  against 25 steps. ``--model`` names another model; ``--model demo-lcm`` (the distilled few-step demo)
  runs it with its LCMScheduler at guidance 1 against the base demo's 25 steps in the same run.
- GPU (an item of ``--suites gpu``, :func:`gpu_live_rows`): 512 x 512 on SD-Turbo-shaped random weights
  (SD 2.1-base's UNet, random), no guidance as SD-Turbo runs, against the 50-step grid with classifier-free
  guidance 7.5 (the base model's usual setting, two evaluations a step).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from multidiffusion import Region

__all__ = ["DEMO_LAYOUT", "FEW_STEPS", "gpu_live_rows", "gpu_skip_row", "live_fps_rows", "table", "turbo_layout"]

FEW_STEPS = (1, 2, 4)
SCHEDULER = "euler_trailing"
DEMO_LAYOUT: dict[str, Any] = {
    "background": "a clear blue sky over a green meadow",
    "regions": [
        Region("a yellow sun", box=(8, 4, 32, 24)),
        Region("a red house", box=(44, 28, 84, 60)),
        Region("a green tree", box=(96, 16, 120, 60)),
    ],
    "height": 64,
    "width": 128,
}
"""The demo's live canvas (128 x 64 px, as docs/regions.md's live example): a background and three boxes,
in pixels."""


def turbo_layout(size: int = 512) -> dict[str, Any]:
    """:data:`DEMO_LAYOUT`'s three boxes on a ``size`` x ``size`` canvas (fractions of it)."""
    boxes = [(0.06, 0.06, 0.3, 0.38), (0.35, 0.45, 0.65, 0.95), (0.72, 0.25, 0.94, 0.95)]
    regions = [Region(r.prompt, box=b) for r, b in zip(DEMO_LAYOUT["regions"], boxes, strict=True)]
    return {"background": DEMO_LAYOUT["background"], "regions": regions, "height": size, "width": size}


def _seconds(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def _measure(md: Any, layout: dict[str, Any], settings: list[dict[str, Any]], repeats: int, seed: int) -> list[dict]:
    """For each of ``settings`` (``md.regions`` arguments over ``layout``): the median seconds of a
    plain call and of a LiveRegions push + wait, each after one warm-up render."""
    from multidiffusion.live import LiveRegions

    cuda = md.device.type == "cuda" if hasattr(md, "device") else False
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out = []
    with LiveRegions(md, seed=seed) as live:
        for s in settings:
            args = {**layout, **s}

            def plain(args=args) -> Any:
                return md.regions(**args, generator=torch.Generator().manual_seed(seed)).images[0]

            def loop(args=args) -> Any:
                frame = live.wait(live.push(**args, seed=seed))
                if frame is None:
                    raise RuntimeError("live-fps: a push was replaced, nothing else pushes here")
                return frame.image

            plain(), loop()  # warm-up: weights paged in, prompts encoded, the loop's noise drawn
            times = {"plain": _seconds(plain, repeats, sync), "live": _seconds(loop, repeats, sync)}
            for path, ts in times.items():
                med = statistics.median(ts)
                out.append({**s, "path": path, "seconds": med, "fps": 1 / med, "times": [round(t, 4) for t in ts]})
    return out


def _rows(name: str, measured: list[dict], base_steps: int, notes: str) -> list[dict]:
    """Rows of the suite: each few-step measurement with its ratio to the base of the same path."""
    base = {m["path"]: m["seconds"] for m in measured if m["num_inference_steps"] == base_steps}
    rows = []
    for m in measured:
        rows.append({
            "suite": "live-fps", "config": f"{name}, {m['num_inference_steps']} steps", "peer": "",
            "path": m["path"], "steps": m["num_inference_steps"], "seconds": m["seconds"], "fps": m["fps"],
            "speedup_vs_base": base[m["path"]] / m["seconds"], "base_steps": base_steps, "times": m["times"],
            "guidance_scale": m.get("guidance_scale"), "notes": notes,
        })  # fmt: skip
    return rows


def live_fps_rows(model: str | None = None, quick: bool = False, repeats: int = 10, seed: int = 1) -> list[dict]:
    """The CPU suite: :data:`DEMO_LAYOUT` on ``model`` (default the shipped demo) at :data:`FEW_STEPS` of
    ``euler_trailing`` and at 25 steps (``quick``: 1 step against 2, one repeat). ``"demo-lcm"`` (the
    distilled few-step demo): its own LCMScheduler at guidance 1 (one evaluation a view and step, as
    LCM-LoRAs run), against the base demo's 25 ``euler_trailing`` steps at its default guidance, in the
    same run."""
    from multidiffusion import MultiDiffusion

    lcm = model == "demo-lcm"
    md = MultiDiffusion.from_pretrained(model or "demo", device="cpu")
    md.set_progress_bar_config(disable=True)
    steps, base = ((1,), 2) if quick else (FEW_STEPS, 25)
    few: dict[str, Any] = {"guidance_scale": 1.0} if lcm else {"scheduler": SCHEDULER}
    settings = [{"num_inference_steps": n, **few} for n in steps]
    base_settings = [{"num_inference_steps": base, "scheduler": SCHEDULER}]
    n = 1 if quick else repeats
    if lcm:
        base_md = MultiDiffusion.from_pretrained("demo", device="cpu")
        base_md.set_progress_bar_config(disable=True)
        measured = _measure(md, DEMO_LAYOUT, settings, n, seed) + _measure(base_md, DEMO_LAYOUT, base_settings, n, seed)
        notes = (
            "demo-lcm (the demo distilled into an LCM-LoRA) with its LCMScheduler at guidance 1, against the base "
            f"demo at {base} {SCHEDULER} steps, guidance 7.5; bootstrapping at its default (40 % of the steps)"
        )
    else:
        measured = _measure(md, DEMO_LAYOUT, settings + base_settings, n, seed)
        notes = (
            f"{'the given model ' + model if model else 'the plain demo'} with {SCHEDULER}, guidance at its "
            "default; bootstrapping at its default (40 % of the steps)"
        )
    return _rows(f"{model or 'demo'} 3 regions 128 x 64", measured, base, notes)


def gpu_live_rows(md: Any, size: int = 512, repeats: int = 10, base_steps: int = 50, seed: int = 1) -> list[dict]:
    """The GPU item: :func:`turbo_layout` at ``size`` on ``md`` (an SD 2.1-base-shaped model standing for
    SD-Turbo) at :data:`FEW_STEPS` without guidance (SD-Turbo's setting) and at ``base_steps`` with
    guidance 7.5. Refuses to run off a GPU (the suite skips it there with a note)."""
    if md.device.type != "cuda":
        raise ValueError(f"gpu_live_rows: md must be on a CUDA device, got {md.device}")
    settings: list[dict[str, Any]] = [
        {"num_inference_steps": n, "scheduler": SCHEDULER, "guidance_scale": 0.0} for n in FEW_STEPS
    ]
    settings.append({"num_inference_steps": base_steps, "scheduler": SCHEDULER, "guidance_scale": 7.5})
    measured = _measure(md, turbo_layout(size), settings, repeats, seed)
    notes = (f"SD-Turbo-shaped random weights (SD 2.1-base UNet), float16; few steps unguided, the {base_steps}-step "
             "base with guidance 7.5; decode included")  # fmt: skip
    rows = _rows(f"SD-Turbo-shaped 3 regions {size} x {size}", measured, base_steps, notes)
    return [{**r, "suite": "gpu", "notes": f"{r['path']}: {r['fps']:.2f} frames/s ({r['seconds']:.3f} s), "
             f"{r['speedup_vs_base']:.1f}x the {base_steps}-step base; {notes}"} for r in rows]  # fmt: skip


def gpu_skip_row(device: torch.device) -> dict:
    """The row the gpu suite leaves where the live item cannot run (not on a CPU)."""
    return {"suite": "gpu", "config": "SD-Turbo-shaped 3 regions 512 x 512: live fps", "peer": "",
            "notes": f"skipped: runs on a CUDA GPU only (device here: {device})"}  # fmt: skip


def table(rows: Sequence[dict]) -> str:
    """A Markdown table of the suite's rows."""
    lines = [
        "| configuration | path | median time | frames / s | speed-up vs base | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "fps" not in r:
            lines.append(f"| {r['config']} | | | | | {r.get('notes', '')} |")
            continue
        lines.append(
            f"| {r['config']} | {r['path']} | {r['seconds']:.3f} s | {r['fps']:.2f} | "
            f"{r['speedup_vs_base']:.1f}x ({r['base_steps']} steps) | {r['notes']} |"
        )
    return "\n".join(lines)
