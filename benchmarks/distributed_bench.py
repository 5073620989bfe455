"""The ``distributed`` suite: one panorama's views sharded across processes
(:mod:`multidiffusion.engine.distributed`), measured on the CPU with gloo, and a model of the
speed-up on 2-8 GPUs built from what it measures.

Measured, on the same components (SD 2-base-shaped UNet at 1/10 width, random weights) and latents:

- sampling (``output_type="latent"``): 1 process x 2 threads, 1 process x 1 thread, and 2 processes
  x 1 thread (gloo), medians of ``repeats``, in wall time and in processor time (``process_time``:
  what a busy shared machine does not inflate; for 2 processes, the busier rank's); the payload
  all-reduced per step; the largest difference between the 2-process latents and the 1-process ones;
- one all-reduce of a step's numerator (float64, the canvas's size) on gloo, median of 20;
- the tiled decode (SD-shaped VAE at 1/16 width, exact GroupNorm statistics), 1 process x 2 threads
  against 2 processes x 1 thread (tiles split across the ranks).

The model of a sampling step on N ranks: the rank with the most views evaluates ceil(V / N) of the
V views (views cost the same), then one ring all-reduce of the numerator,

    t_N = ceil(V / N) * t_view + 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency,
    speed-up(N) = V * t_view / t_N.

On the CPU, t_view is the 1-thread run's time per view (both guidance branches) and the all-reduce
term is the measured gloo all-reduce; the model's prediction is set beside the measured speed-up.
For GPUs, t_view and the links are estimates (no GPU figures measured yet; the ``gpu`` suite
measures t_view on one GPU): see :data:`GPU_MODELS` and :data:`LINKS`.
"""

from __future__ import annotations

import math
import multiprocessing
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from .common import GUIDANCE, PROMPT, noise
from .measure import measure, median_of

CPU = torch.device("cpu")
VAE_DIVISOR = 16
"""The decode's VAE: SD's architecture at 1/16 width (random weights)."""

__all__ = [
    "GPU_MODELS",
    "LINKS",
    "distributed_rows",
    "free_port",
    "model_rows",
    "numerator_bytes",
    "step_speedup",
]

GPU_MODELS = {
    # name: (canvas in pixels (h, w), latent factor, window latents, views exact / fast, t_view seconds)
    "SD 2-base 512 x 4608": ((512, 4608), 8, 64, 65, 11, 0.040),
    "SDXL 1024 x 8192": ((1024, 8192), 8, 128, 57, 10, 0.150),
}
"""Estimates per model: one view under guidance (2 UNet rows) at float16 on an A100-class GPU, from
the usual rates of those pipelines (SD 2-base at 512 px: 15-25 steps/s with guidance, 40-65 ms a
view, batched views at the fast end; SDXL at 1024 px: 6-8 steps/s, 125-170 ms). Views: the grid's
(stride window / 8) and the fast mode's (``placement="shifted"``, coverage about 1.2). The model
leaves out that a GPU given fewer views per call may run each a little slower (smaller batches)."""

LINKS = {"NVLink (~100 GB/s bus, 10 us)": (100e9, 10e-6), "PCIe 4.0 (~10 GB/s bus, 20 us)": (10e9, 20e-6)}
"""Estimated NCCL all-reduce bus bandwidth and per-hop latency for MB-sized messages."""


def step_speedup(views: int, t_view: float, ranks: int, allreduce_seconds: float) -> float:
    """Speed-up of a sampling step on ``ranks`` ranks (see the module docstring)."""
    return views * t_view / (math.ceil(views / ranks) * t_view + allreduce_seconds)


def ring_allreduce_seconds(nbytes: int, ranks: int, bandwidth: float, latency: float) -> float:
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def numerator_bytes(height: int, width: int, factor: int = 8, channels: int = 4, images: int = 1) -> int:
    """The Eq. 5 numerator of a step (float64) plus the ranks' failure flags (a few bytes)."""
    return images * channels * (height // factor) * (width // factor) * 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _components(width: int) -> tuple[Any, Any, torch.Tensor]:
    from devtools.components import sd_shaped_pipeline
    from multidiffusion import MultiDiffusion

    pipe = sd_shaped_pipeline(divisor=10)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    return pipe, md, noise((1, 4, 64, width // 8))


def _panorama(md: Any, latents: torch.Tensor, width: int, steps: int) -> torch.Tensor:
    return md.panorama(
        PROMPT,
        height=512,
        width=width,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        latents=latents.clone(),
        output_type="latent",
    )


def _worker(rank: int, world: int, port: int, folder: str, width: int, steps: int, repeats: int) -> None:
    """One rank: warm-up, ``repeats`` timed panoramas, an all-reduce micro-benchmark, a decode."""
    import torch.distributed as dist

    from devtools.components import sd_shaped_vae
    from multidiffusion.engine import distributed
    from multidiffusion.vae.codec import decode_to_uint8

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(minutes=10)
    )
    _, md, latents = _components(width)
    _panorama(md, latents, width, 1)  # warm-up
    seconds, cpu, out = [], [], None
    for _ in range(repeats):
        dist.barrier()
        start, start_cpu = time.perf_counter(), time.process_time()
        out = _panorama(md, latents, width, steps)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    shard = distributed.active()
    buffer = torch.zeros(numerator_bytes(512, width) // 8 + world, dtype=torch.float64)
    reduce_times = []
    for _ in range(20):
        dist.barrier()
        start = time.perf_counter()
        shard.all_reduce(buffer, "benchmark")
        reduce_times.append(time.perf_counter() - start)
    vae = sd_shaped_vae(VAE_DIVISOR)
    dist.barrier()
    start, start_cpu = time.perf_counter(), time.process_time()
    decode_to_uint8(vae, out.images, share=shard)
    decode, decode_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    cpu_all: list[Any] = [None] * world
    dist.all_gather_object(cpu_all, (statistics.median(cpu), decode_cpu))
    if rank == 0:
        torch.save(
            {
                "seconds": seconds,
                "cpu_seconds": [c for c, _ in cpu_all],
                "decode_cpu_seconds": [d for _, d in cpu_all],
                "latents": out.images,
                "stats": out.stats,
                "allreduce_seconds": statistics.median(reduce_times),
                "decode_seconds": decode,
            },
            Path(folder) / "rank0.pt",
        )
    dist.destroy_process_group()


def _two_processes(width: int, steps: int, repeats: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        procs = [context.Process(target=_worker, args=(r, 2, port, folder, width, steps, repeats)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            raise RuntimeError(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
        return torch.load(Path(folder) / "rank0.pt", weights_only=False)


def distributed_rows(quick: bool, steps: int, repeats: int) -> list[dict]:
    """The measured rows, then the model's rows (CPU check and GPU projections)."""
    import os

    from devtools.components import sd_shaped_vae
    from multidiffusion.vae.codec import decode_to_uint8

    width = 1024 if quick else 2048
    threads = torch.get_num_threads()
    pipe, md, latents = _components(width)
    single: dict[int, Any] = {}
    for n in (2, 1):
        torch.set_num_threads(n)
        _panorama(md, latents, width, 1)  # warm-up
        runs = []
        for _ in range(repeats):
            start_cpu = time.process_time()
            out, m = measure(lambda: _panorama(md, latents, width, steps), pipe.unet, CPU)
            m.extra["cpu_seconds"] = time.process_time() - start_cpu
            runs.append((out, m))
        single[n] = (runs[-1][0], median_of([m for _, m in runs]))
    torch.set_num_threads(2)
    vae = sd_shaped_vae(VAE_DIVISOR)
    start, start_cpu = time.perf_counter(), time.process_time()
    decode_to_uint8(vae, single[2][0].images)
    decode_single, decode_single_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    shared = _two_processes(width, steps, repeats)
    load_after = os.getloadavg()

    _, m2 = single[2]
    out1, m1 = single[1]
    views = out1.stats.jobs // max(out1.stats.steps, 1)
    seconds2p = statistics.median(shared["seconds"])
    stats = shared["stats"]
    diff = float((shared["latents"] - out1.images).abs().max())
    t_view = m1.model_seconds / (views * steps)  # one view, both branches, 1 thread
    predicted = step_speedup(views, t_view, 2, shared["allreduce_seconds"])
    cpu1 = m1.extra["cpu_seconds"]
    cpu_speedup = cpu1 / max(shared["cpu_seconds"])  # the busiest rank's processor time: load-proof
    config = f"panorama 512 x {width}, {views} windows, {steps} steps"
    common = {
        "suite": "distributed",
        "steps": steps,
        "load_average": {"before_two_processes": load_before, "after": load_after},
    }
    rows = [
        {
            **common,
            "config": f"{config}: 2 processes x 1 thread (gloo)",
            "peer": "1 process x 2 threads",
            "seconds": {"peer": m2.seconds, "ours": seconds2p},
            "ratio": seconds2p / m2.seconds,
            "all_seconds": {"peer": m2.extra.get("all_seconds"), "ours": shared["seconds"]},
            "cpu_seconds": {"peer": m2.extra["cpu_seconds"], "ours_per_rank": shared["cpu_seconds"]},
            "notes": f"max |latents diff| against 1 process = {diff:.1e}",
            "max_abs_diff": diff,
        },
        {
            **common,
            "config": f"{config}: 2 processes x 1 thread (gloo)",
            "peer": "1 process x 1 thread",
            "seconds": {"peer": m1.seconds, "ours": seconds2p},
            "ratio": seconds2p / m1.seconds,
            "speedup": m1.seconds / seconds2p,
            "notes": f"speed-up {m1.seconds / seconds2p:.2f}x in wall time, {cpu_speedup:.2f}x in the busiest "
            f"rank's processor time; the model predicts {predicted:.2f}x (t_view {t_view * 1e3:.0f} ms, all-reduce "
            f"{shared['allreduce_seconds'] * 1e3:.2f} ms)",
            "predicted_speedup": predicted,
            "cpu_seconds": {"peer": cpu1, "ours_per_rank": shared["cpu_seconds"]},
            "cpu_speedup": cpu_speedup,
            "t_view_seconds": t_view,
            "rank_latent_pixels": stats.rank_latent_pixels,
        },
        {
            **common,
            "config": f"all-reduce of a step's Eq. 5 numerator (float64, 512 x {width} canvas), gloo, 2 ranks",
            "peer": "",
            "seconds": {"peer": None, "ours": shared["allreduce_seconds"]},
            "ratio": None,
            "bytes_per_step": stats.bytes_all_reduced_per_step,
            "notes": f"{stats.bytes_all_reduced_per_step / 2**20:.2f} MiB per step "
            f"({stats.bytes_all_reduced_per_step:.0f} bytes), median of 20: "
            f"{shared['allreduce_seconds'] * 1e3:.2f} ms",
        },
        {
            **common,
            "config": f"tiled decode 512 x {width} (SD-shaped VAE, 1/{VAE_DIVISOR} width, exact statistics): "
            "2 processes x 1 thread",
            "peer": "1 process x 2 threads",
            "seconds": {"peer": decode_single, "ours": shared["decode_seconds"]},
            "ratio": shared["decode_seconds"] / decode_single,
            "cpu_seconds": {"peer": decode_single_cpu, "ours_per_rank": shared["decode_cpu_seconds"]},
            "notes": "tiles split across the ranks, the latent stage on each; one run each; processor time "
            f"{decode_single_cpu:.1f} s (2 threads together) against {max(shared['decode_cpu_seconds']):.1f} s "
            "(the busier rank)",
        },
    ]
    return rows + model_rows()


def model_rows() -> list[dict]:
    """Projected speed-ups of a sampling step on 2, 4 and 8 GPUs (estimates: see the module docstring)."""
    rows = []
    for name, (size, factor, _window, exact, fast, t_view) in GPU_MODELS.items():
        nbytes = numerator_bytes(*size, factor)
        for mode, views in (("exact", exact), ("fast", fast)):
            for link, (bandwidth, latency) in LINKS.items():
                speedups = {
                    n: step_speedup(views, t_view, n, ring_allreduce_seconds(nbytes, n, bandwidth, latency))
                    for n in (2, 4, 8)
                }
                rows.append(
                    {
                        "suite": "distributed-model",
                        "config": f"{name}, {mode} ({views} views), {link}",
                        "peer": "1 GPU (estimate)",
                        "speedup": speedups,
                        "bytes_per_step": nbytes,
                        "t_view_seconds": t_view,
                        "notes": ", ".join(f"{n} GPUs: {s:.2f}x" for n, s in speedups.items())
                        + f"; {nbytes / 2**20:.1f} MiB all-reduced per step, t_view {t_view * 1e3:.0f} ms (estimate)",
                    }
                )
    return rows
