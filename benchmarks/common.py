"""What the benchmark suites share: the run context and result rows, repeated and calibrated
measurements, the components, the peers' setup (diffusers' panorama pipeline, ours), the machine's
description and the JSON file. Suites import from here and from :mod:`.measure`, never from each
other."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .measure import Measurement, measure, median_of

__all__ = [
    "GUIDANCE",
    "PROMPT",
    "Context",
    "Row",
    "build_components",
    "calibrate",
    "diffusers_panorama",
    "machine",
    "median_seconds",
    "noise",
    "ours_panorama",
    "repeat",
    "write_results",
]

PROMPT = "a photo of the dolomites"
GUIDANCE = 7.5


@dataclass
class Context:
    pipe: Any
    md: Any
    device: torch.device
    steps: int
    repeats: int
    quick: bool
    batches: dict[str, int] = field(default_factory=dict)  # best view_batch_size found, per runner
    cache: dict[str, Measurement] = field(default_factory=dict)

    @property
    def window(self) -> tuple[int, int]:
        """The model's native window, in latent pixels (64 x 64 for SD 2-base)."""
        return tuple(self.md.adapter.native_latent_size)  # type: ignore[return-value]


@dataclass
class Row:
    suite: str
    config: str
    peer: str
    peer_m: Measurement | None
    ours_m: Measurement | None
    canvas: int  # latent pixels
    steps: int
    branches: int = 2
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        def side(m: Measurement | None) -> dict[str, Any] | None:
            if m is None:
                return None
            return {
                **m.as_dict(),
                "coverage": m.coverage(self.canvas, self.steps, self.branches) if self.canvas else None,
            }

        ratio = self.ours_m.seconds / self.peer_m.seconds if self.peer_m and self.ours_m else None
        return {
            "suite": self.suite,
            "config": self.config,
            "peer": self.peer,
            "steps": self.steps,
            "ratio": ratio,
            "peer_measured": side(self.peer_m),
            "ours": side(self.ours_m),
            "notes": self.notes,
            **self.extra,
        }


# -- measuring ------------------------------------------------------------------------------------


def noise(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def repeat(
    ctx: Context, runs: dict[str, Any], unets: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Measurement]]:
    """Each runner ``ctx.repeats`` times, interleaved (so load changes hit all alike); medians.
    ``unets`` names the UNet each runner uses when it is not the shared one (None: no hooks)."""
    unets = unets or {}
    results: dict[str, Any] = {}
    measured: dict[str, list[Measurement]] = {name: [] for name in runs}
    for _ in range(ctx.repeats):
        for name, run in runs.items():
            results[name], m = measure(run, unets.get(name, ctx.pipe.unet), ctx.device)
            measured[name].append(m)
    return results, {name: median_of(ms) for name, ms in measured.items()}


def calibrate(ctx: Context, name: str, run, latents: torch.Tensor, views: int) -> int:
    """The fastest view_batch_size of ``run`` among a few candidates, by one-step runs."""
    if name in ctx.batches:
        return ctx.batches[name]
    candidates = sorted({b for b in (1, 4, 8, views) if b <= views})
    if ctx.quick:
        candidates = [min(4, views)]
    times = {}
    for b in candidates:
        _, m = measure(lambda b=b: run(latents, b, num_inference_steps=1), ctx.pipe.unet, ctx.device)
        times[b] = m.seconds
    best = min(times, key=times.get)
    ctx.batches[name] = best
    ctx.batches[name + "_times"] = {str(k): round(v, 3) for k, v in times.items()}  # type: ignore[assignment]
    return best


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn`` (no hooks, no memory polling)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- components and peers -------------------------------------------------------------------------


def build_components(model: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """(diffusers pipeline, MultiDiffusion) on the same components: ``reduced`` (SD 2-base's
    architecture at 1/10 width, random weights), ``full`` (the whole architecture, random weights)
    or a model id / folder (real weights)."""
    from devtools.components import sd_shaped_pipeline
    from multidiffusion import MultiDiffusion

    if model in ("reduced", "full"):
        pipe = sd_shaped_pipeline(divisor=10 if model == "reduced" else 1)
        pipe = pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        md = MultiDiffusion(pipe)
    else:
        md = MultiDiffusion.from_pretrained(model, torch_dtype=dtype, device=device)
    md.set_progress_bar_config(disable=True)
    return md.pipe, md


def diffusers_panorama(pipe: Any, prompt: str, height: int, width: int, steps: int, guidance: float):
    """diffusers' ``StableDiffusionPanoramaPipeline`` (window 64, stride 8 latents, per-view DDIM
    steps averaged): ``run(latents, view_batch_size) -> latents``."""
    from diffusers import StableDiffusionPanoramaPipeline

    pano = StableDiffusionPanoramaPipeline.from_pipe(pipe)
    pano.set_progress_bar_config(disable=True)

    def run(latents: torch.Tensor, view_batch_size: int, num_inference_steps: int = steps) -> torch.Tensor:
        return pano(
            prompt,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance,
            latents=latents.clone(),
            output_type="latent",
            view_batch_size=view_batch_size,
        ).images

    return run


def ours_panorama(md: Any, prompt: str, height: int, width: int, steps: int, guidance: float, **options: Any):
    """``MultiDiffusion.panorama`` with ``options`` (placement=, weights=, stride=, ...):
    ``run(latents, view_batch_size) -> latents``."""

    def run(latents: torch.Tensor, view_batch_size: int | None, num_inference_steps: int = steps) -> torch.Tensor:
        return md.panorama(
            prompt,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance,
            latents=latents.clone(),
            output_type="latent",
            view_batch_size=view_batch_size,
            generator=torch.Generator().manual_seed(0),
            **options,
        ).images

    return run


# -- the record -----------------------------------------------------------------------------------


def machine(device: torch.device) -> dict[str, Any]:
    """Where and with what the figures were measured."""
    info: dict[str, Any] = {
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


def write_results(path: str | Path, info: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """The machine and the rows as JSON (``benchmarks/results/<device>.json`` by default)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "rows": rows}, indent=2, default=str))
    return out
