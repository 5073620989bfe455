"""The ``gpu`` suite: what to run when a CUDA machine is at hand, in one command of at most about
five minutes on one GPU:

    python -m benchmarks --suites gpu --json benchmarks/results/gpu.json

Full-size random-weight architectures (SD 2-base: 865M UNet parameters; SDXL base: 2.6B; their
VAEs; text encoders of their widths but 2 layers, see :mod:`devtools.components`), float16, DDIM:

1. SD 2-base, exact panorama 512 x 2048 against diffusers' ``StableDiffusionPanoramaPipeline`` (each
   at its best ``view_batch_size``), same latents: time, peak memory, model calls, largest difference;
2. SD 2-base 512 x 4608: exact against the fast mode (``placement="shifted"``);
3. SDXL 1024 x 4096: exact against the fast mode;
4. bfloat16 against float16 (SD 2-base 512 x 2048; SDXL fast);
5. the tiled decode of each model's panorama (exact GroupNorm statistics): time, peak memory;
6. with more than one GPU visible: SD 2-base 512 x 4608 exact on 1..N GPUs (NCCL, views sharded),
   and the time of one all-reduce of a step's numerator;
7. ``md.compile()`` against eager (SD 2-base 512 x 2048; the first call's compilation timed);
8. live regions (:mod:`benchmarks.live_fps`): a 512 x 512 3-region layout on the SD 2-base-shaped model
   standing for SD-Turbo (SD 2.1-base's UNet), frames per second at 1, 2, 4 steps against 50 (CUDA only).

Each item runs only while the budget (:data:`BUDGET_SECONDS`) allows; one that fails or is skipped
leaves a row saying so, and the JSON is written whatever happens. Installs nothing; without CUDA the
command stops at once with a message. The per-view times measured here (``t_view_seconds``) are what
the ``distributed`` suite's GPU model needs (README, "Several GPUs").
"""

from __future__ import annotations

import copy
import multiprocessing
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from .common import GUIDANCE, PROMPT, Context, Row, noise, ours_panorama, repeat
from .distributed_bench import free_port, numerator_bytes, step_speedup
from .measure import measure
from .suites import compile_unet, panorama_exact

__all__ = ["BUDGET_SECONDS", "DRY_RUN", "FULL", "Plan", "dry_run_rows", "gpu_rows", "no_cuda_message"]

BUDGET_SECONDS = 300.0


@dataclass(frozen=True)
class Plan:
    """Sizes, steps and widths of the suite; :data:`DRY_RUN` shrinks them to check the code on a CPU."""

    sd_steps: int = 20
    sdxl_steps: int = 10
    repeats: int = 2
    sd_divisor: int = 1
    sdxl_divisor: int = 1
    vae_divisor: int = 1
    sd_width: int = 2048
    sd_wide: int = 4608
    sdxl_size: tuple[int, int] = (1024, 4096)
    compile: bool = True
    budget: float = BUDGET_SECONDS


FULL = Plan()
DRY_RUN = Plan(
    sd_steps=1,
    sdxl_steps=1,
    repeats=1,
    sd_divisor=20,
    sdxl_divisor=20,
    vae_divisor=32,
    sd_width=1024,
    sd_wide=1024,
    sdxl_size=(1024, 1024),
    compile=False,
    budget=float("inf"),
)


def no_cuda_message() -> str:
    return (
        f"the gpu suite needs a CUDA GPU, and torch.cuda.is_available() is False here (torch {torch.__version__}, "
        f"CUDA build {torch.version.cuda or 'none'}); on a CPU run the other suites, e.g. "
        "python -m benchmarks --suites distributed --json PATH"
    )


class _Runner:
    """Runs the suite's items in order while the budget lasts; a failure or a skip is a row."""

    def __init__(self, plan: Plan, report: Callable[[list[dict]], None]):
        self.plan, self.report = plan, report
        self.started = time.perf_counter()
        self.rows: list[dict] = []

    def left(self) -> float:
        return self.plan.budget - (time.perf_counter() - self.started)

    def item(self, name: str, needs: float, fn: Callable[[], list[Any]]) -> None:
        """Run ``fn`` (rows) unless less than ``needs`` seconds of the budget are left."""
        if self.left() < needs:
            new = [{"suite": "gpu", "config": name, "peer": "", "notes": f"skipped: {self.left():.0f} s of the "
                    f"{self.plan.budget:.0f} s budget left, about {needs:.0f} s needed"}]  # fmt: skip
        else:
            try:
                new = [r if isinstance(r, dict) else {**r.as_dict(), "suite": "gpu"} for r in fn()]
            except Exception as exc:  # a row says what failed; the other items still run
                last = traceback.format_exc().strip().splitlines()[-1]
                new = [{"suite": "gpu", "config": name, "peer": "", "notes": f"failed: {last}", "error": repr(exc)}]
        self.rows += new
        self.report(new)


def _context(pipe: Any, device: torch.device, steps: int, repeats: int) -> Context:
    from multidiffusion import MultiDiffusion

    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    return Context(pipe, md, device, steps, repeats, quick=False)


def _t_view(m: Any, views: int, steps: int) -> float:
    """Seconds inside the UNet per view and step (both guidance branches)."""
    return m.model_seconds / (views * steps) if views and steps else 0.0


def _sd_exact(ctx: Context, width: int) -> list[Row]:
    """The exact suite's row (ours against diffusers' panorama pipeline), with the time per view."""
    from multidiffusion.engine.views import grid_views
    from multidiffusion.engine.windows import default_stride

    (row,) = panorama_exact(ctx, width)
    views = len(grid_views(64, width // 8, ctx.window, default_stride(ctx.window, "grid")))
    t_view = _t_view(row.ours_m, views, ctx.steps)
    row.config = f"SD 2-base {row.config}, {ctx.pipe.unet.dtype}"
    row.notes += f"; t_view {t_view * 1e3:.1f} ms"
    row.extra.update(t_view_seconds=t_view, views=views, model="sd2-base")
    return [row]


def _exact_and_fast(ctx: Context, name: str, height: int, width: int) -> list[Row]:
    """Ours exact against ours fast (the shifted placement's defaults) on one canvas."""
    h, w = height // 8, width // 8
    latents = noise((1, 4, h, w)).to(ctx.device, ctx.pipe.unet.dtype)
    exact = ours_panorama(ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE)
    fast = ours_panorama(ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE, placement="shifted")
    _, m = repeat(ctx, {"exact": lambda: exact(latents, None), "fast": lambda: fast(latents, None)})
    evaluations = m["exact"].evaluations // 2 // ctx.steps  # views per step (both branches in a row pair)
    t_view = _t_view(m["exact"], evaluations, ctx.steps)
    return [
        Row(
            "gpu",
            f"{name} panorama {height} x {width}, fast (placement='shifted'), {ctx.pipe.unet.dtype}",
            "ours, exact mode",
            m["exact"],
            m["fast"],
            h * w,
            ctx.steps,
            notes=f"exact: {evaluations} views per step, t_view {t_view * 1e3:.1f} ms",
            extra={"t_view_seconds": t_view, "views": evaluations, "model": name},
        )
    ]


def _precision(ctx: Context, name: str, height: int, width: int, placement: str = "grid") -> list[Row]:
    """bfloat16 against the context's float16, same latents."""
    from multidiffusion import MultiDiffusion

    pipe = copy.copy(ctx.pipe)
    pipe.unet = copy.deepcopy(ctx.pipe.unet).to(torch.bfloat16)
    pipe.vae = copy.deepcopy(ctx.pipe.vae).to(torch.bfloat16)
    for key in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, key, None) is not None:
            setattr(pipe, key, copy.deepcopy(getattr(ctx.pipe, key)).to(torch.bfloat16))
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    h, w = height // 8, width // 8
    latents = noise((1, 4, h, w)).to(ctx.device)
    base = ours_panorama(ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE, placement=placement)
    low = ours_panorama(md, PROMPT, height, width, ctx.steps, GUIDANCE, placement=placement)
    out, m = repeat(
        ctx,
        {"fp16": lambda: base(latents.to(ctx.pipe.unet.dtype), None), "bf16": lambda: low(latents.bfloat16(), None)},
        {"fp16": ctx.pipe.unet, "bf16": pipe.unet},
    )
    rel = ((out["fp16"].float() - out["bf16"].float()).norm() / out["fp16"].float().norm()).item()
    del pipe, md
    return [
        Row(
            "gpu",
            f"{name} panorama {height} x {width} ({placement}), bfloat16",
            f"ours, {ctx.pipe.unet.dtype}",
            m["fp16"],
            m["bf16"],
            h * w,
            ctx.steps,
            notes=f"relative latents difference {rel:.1e}",
            extra={"relative_diff": rel},
        )
    ]


def _decode(ctx: Context, name: str, height: int, width: int) -> list[dict]:
    """The tiled decode (exact GroupNorm statistics) of a canvas, against nothing: time and memory."""
    from multidiffusion.vae.codec import decode_to_uint8

    latents = noise((1, 4, height // 8, width // 8)).to(ctx.device, ctx.pipe.vae.dtype)
    _, m = measure(lambda: decode_to_uint8(ctx.pipe.vae, latents), None, ctx.device)
    return [
        {
            "suite": "gpu",
            "config": f"{name} tiled decode {height} x {width} (exact statistics)",
            "peer": "",
            "ours": {"seconds": m.seconds, "peak_mb": m.peak_mb},
            "notes": f"{m.seconds:.2f} s, peak {m.peak_mb:.0f} MiB",
        }
    ]


def _scaling_worker(rank: int, world: int, port: int, folder: str, plan: Plan) -> None:
    """One GPU of the scaling run: SD 2-base 512 x wide, exact, views sharded over ``world`` GPUs."""
    import torch.distributed as dist

    from devtools.components import sd_shaped_pipeline
    from multidiffusion import MultiDiffusion
    from multidiffusion.engine import distributed

    torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(minutes=5)
    )
    device = torch.device("cuda", rank)
    pipe = sd_shaped_pipeline(plan.sd_divisor, plan.vae_divisor, dtype=torch.float16, device=device)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    latents = noise((1, 4, 64, plan.sd_wide // 8)).to(device, torch.float16)
    run = ours_panorama(md, PROMPT, 512, plan.sd_wide, plan.sd_steps, GUIDANCE)
    run(latents, None, num_inference_steps=1)  # warm-up
    dist.barrier()
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = md.panorama(
        PROMPT, height=512, width=plan.sd_wide, num_inference_steps=plan.sd_steps, latents=latents.clone(),
        output_type="latent",
    )  # fmt: skip
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    shard = distributed.active()
    buffer = torch.zeros(numerator_bytes(512, plan.sd_wide) // 8 + world, dtype=torch.float64, device=device)
    times = []
    for _ in range(20):
        torch.cuda.synchronize()
        t = time.perf_counter()
        shard.all_reduce(buffer, "benchmark")
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    if rank == 0:
        torch.save(
            {"seconds": seconds, "stats": out.stats, "allreduce_seconds": sorted(times)[len(times) // 2]},
            Path(folder) / "rank0.pt",
        )
    dist.destroy_process_group()


def _scaling(plan: Plan, gpus: int, single_seconds: float | None, t_view: float | None, views: int) -> list[dict]:
    context = multiprocessing.get_context("spawn")
    rows = []
    for world in sorted({2, gpus} if gpus > 2 else {2}):
        with tempfile.TemporaryDirectory() as folder:
            port = free_port()
            procs = [context.Process(target=_scaling_worker, args=(r, world, port, folder, plan)) for r in range(world)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(timeout=240)
            for p in procs:
                if p.is_alive():
                    p.kill()
            if any(p.exitcode for p in procs):
                raise RuntimeError(f"a rank failed or hung: exit codes {[p.exitcode for p in procs]}")
            got = torch.load(Path(folder) / "rank0.pt", weights_only=False)
        stats = got["stats"]
        measured = single_seconds / got["seconds"] if single_seconds else None
        predicted = step_speedup(views, t_view, world, got["allreduce_seconds"]) if t_view else None
        rows.append(
            {
                "suite": "gpu",
                "config": f"SD 2-base panorama 512 x {plan.sd_wide}, exact, {world} GPUs (NCCL, views sharded)",
                "peer": "1 GPU",
                "seconds": {"peer": single_seconds, "ours": got["seconds"]},
                "speedup": measured,
                "predicted_speedup": predicted,
                "allreduce_seconds": got["allreduce_seconds"],
                "bytes_per_step": stats.bytes_all_reduced_per_step,
                "rank_latent_pixels": stats.rank_latent_pixels,
                "notes": f"speed-up {measured or float('nan'):.2f}x (model: {predicted or float('nan'):.2f}x); "
                f"all-reduce {got['allreduce_seconds'] * 1e3:.2f} ms of "
                f"{stats.bytes_all_reduced_per_step / 2**20:.2f} MiB",
            }
        )
    return rows


def gpu_rows(
    plan: Plan = FULL, device: torch.device | None = None, report: Callable[[list[dict]], None] = lambda rows: None
) -> list[dict]:
    """Run the suite (see the module docstring) and return its rows; ``report(rows)`` after each item."""
    from devtools.components import sd_shaped_pipeline, sdxl_shaped_pipeline

    if device is None:
        if not torch.cuda.is_available():
            raise SystemExit(f"error: {no_cuda_message()}")
        device = torch.device("cuda")
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    runner = _Runner(plan, report)
    found: dict[str, Any] = {}

    def build(key: str, name: str, make: Callable[..., Any], divisor: int, steps: int) -> Callable[[], list[dict]]:
        def run() -> list[dict]:
            start = time.perf_counter()
            pipe = make(divisor, plan.vae_divisor, dtype=dtype, device=device)
            found[key] = _context(pipe, device, steps, plan.repeats)
            return [{"suite": "gpu", "config": f"{name} built", "peer": "",
                     "notes": f"{time.perf_counter() - start:.1f} s on {device}"}]  # fmt: skip

        return run

    def sd_exact() -> list[Row]:
        rows = _sd_exact(found["sd"], plan.sd_width)
        found["sd_exact"] = rows[0]
        return rows

    def sd_wide() -> list[Row]:
        rows = _exact_and_fast(found["sd"], "SD 2-base", 512, plan.sd_wide)
        found["sd_wide"] = rows[0]
        return rows

    runner.item("SD 2-base: build", 30, build("sd", "SD 2-base-shaped pipeline", sd_shaped_pipeline, plan.sd_divisor,
                                              plan.sd_steps))  # fmt: skip
    if "sd" in found:
        runner.item(f"SD 2-base exact 512 x {plan.sd_width} against diffusers", 30, sd_exact)
        runner.item(f"SD 2-base 512 x {plan.sd_wide}: exact against fast", 40, sd_wide)
        runner.item("SD 2-base: bfloat16", 30, lambda: _precision(found["sd"], "SD 2-base", 512, plan.sd_width))
        runner.item("SD 2-base: decode", 15, lambda: _decode(found["sd"], "SD 2-base", 512, plan.sd_wide))
        gpus = torch.cuda.device_count() if cuda else 0
        if gpus > 1 and "sd_wide" in found:
            wide = found["sd_wide"]
            t_view, views = wide.extra["t_view_seconds"], wide.extra["views"]
            runner.item(
                f"SD 2-base 512 x {plan.sd_wide} on 2..{gpus} GPUs",
                60,
                lambda: _scaling(plan, gpus, wide.peer_m.seconds, t_view, views),
            )
        if cuda:
            from .live_fps import gpu_live_rows

            runner.item("SD-Turbo-shaped 3 regions 512 x 512: live fps", 30,
                        lambda: gpu_live_rows(found["sd"].md, repeats=10))  # fmt: skip
        else:
            from .live_fps import gpu_skip_row

            runner.rows.append(gpu_skip_row(device))
            runner.report(runner.rows[-1:])
        sd = found.pop("sd")
        if plan.compile:
            runner.item("SD 2-base: torch.compile", 120, lambda: compile_unet(sd, plan.sd_width))
        del sd
        if cuda:
            torch.cuda.empty_cache()

    height, width = plan.sdxl_size
    make_sdxl = build("sdxl", "SDXL-shaped pipeline", sdxl_shaped_pipeline, plan.sdxl_divisor, plan.sdxl_steps)
    runner.item("SDXL: build", 40, make_sdxl)
    if "sdxl" in found:
        xl = found["sdxl"]
        name = f"SDXL {height} x {width}: exact against fast"
        runner.item(name, 40, lambda: _exact_and_fast(xl, "SDXL", height, width))
        runner.item("SDXL: bfloat16 (fast)", 20, lambda: _precision(xl, "SDXL", height, width, "shifted"))
        runner.item("SDXL: decode", 15, lambda: _decode(xl, "SDXL", height, width))
    return runner.rows


def dry_run_rows() -> list[dict]:
    """The suite's code on the CPU with tiny widths and sizes (a check, not a measurement)."""
    return gpu_rows(DRY_RUN, torch.device("cpu"))
