"""The benchmark configurations. Each suite returns rows: a configuration, a peer and ours, measured
in the same process on the same components and latents (see ``measure.py`` for what is counted)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .measure import Measurement, measure, median_of
from .peers import diffusers_panorama, ours_panorama

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


def noise(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _repeat(
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


def _calibrate(ctx: Context, name: str, run, latents: torch.Tensor, views: int) -> int:
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


def panorama_exact(ctx: Context, width: int, height: int = 512) -> list[Row]:
    """Ours (exact mode) against diffusers' panorama pipeline, each at its best view_batch_size."""
    h, w = height // 8, width // 8
    views = ((h - 64) // 8 + 1) * ((w - 64) // 8 + 1)
    latents = noise((1, 4, h, w)).to(ctx.device, ctx.pipe.unet.dtype)
    peer = diffusers_panorama(ctx.pipe, PROMPT, height, width, ctx.steps, GUIDANCE)
    ours = ours_panorama(ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE)
    b_peer = _calibrate(ctx, "diffusers", peer, latents, views)
    b_ours = _calibrate(ctx, "ours", ours, latents, views)
    out, m = _repeat(ctx, {"peer": lambda: peer(latents, b_peer), "ours": lambda: ours(latents, b_ours)})
    diff = (out["peer"].float() - out["ours"].float()).abs().max().item()
    ctx.cache[f"exact-{width}"] = m["ours"]
    return [
        Row(
            "exact",
            f"panorama {height}x{width}, {views} windows",
            f"diffusers StableDiffusionPanoramaPipeline (view_batch_size={b_peer})",
            m["peer"],
            m["ours"],
            h * w,
            ctx.steps,
            notes=f"ours view_batch_size={b_ours}; max |latents diff| = {diff:.1e}",
            extra={"max_abs_diff": diff, "view_batch_size": {"peer": b_peer, "ours": b_ours}},
        )
    ]


def fast_mode(ctx: Context, width: int = 4608, height: int = 512) -> list[Row]:
    """The fast mode against our exact mode on the same canvas and latents."""
    h, w = height // 8, width // 8
    latents = noise((1, 4, h, w)).to(ctx.device, ctx.pipe.unet.dtype)
    b_ours = ctx.batches.get("ours") or 4
    runs = {
        "shifted, uniform": ours_panorama(ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE, placement="shifted"),
        "shifted, gaussian": ours_panorama(
            ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE, placement="shifted", weights="gaussian"
        ),
        "shifted, gaussian, stride 56 (windows overlap by 1/8)": ours_panorama(
            ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE, placement="shifted", weights="gaussian", stride=(64, 56)
        ),
        "grid, gaussian, stride 32": ours_panorama(
            ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE, weights="gaussian", stride=32
        ),
    }
    if f"exact-{width}" not in ctx.cache:
        exact = ours_panorama(ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE)
        runs = {"exact": exact, **runs}
    _, m = _repeat(ctx, {name: (lambda run=run: run(latents, b_ours)) for name, run in runs.items()})
    exact_m = ctx.cache.get(f"exact-{width}") or m.pop("exact")
    return [
        Row(
            "fast",
            f"panorama {height}x{width}, {name}",
            "ours, exact mode (grid, stride 8)",
            exact_m,
            m[name],
            h * w,
            ctx.steps,
            notes=f"view_batch_size={b_ours}",
        )
        for name in runs
        if name != "exact"
    ]


def compile_unet(ctx: Context, width: int = 1024, height: int = 512) -> list[Row]:
    """``MultiDiffusion.compile()`` (torch.compile of the UNet) against eager, same process."""
    from multidiffusion import MultiDiffusion

    h, w = height // 8, width // 8
    views = (w - 64) // 8 + 1
    latents = noise((1, 4, h, w)).to(ctx.device, ctx.pipe.unet.dtype)
    eager = ours_panorama(ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE)
    import copy

    pipe = copy.copy(ctx.pipe)
    pipe.unet = copy.deepcopy(ctx.pipe.unet)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    md.compile()
    compiled = ours_panorama(md, PROMPT, height, width, ctx.steps, GUIDANCE)
    # no hooks on the compiled UNet (they would break its graph); it makes the same calls as eager
    _, m_first = measure(lambda: compiled(latents, views), None, ctx.device)  # includes compilation
    out, m = _repeat(
        ctx,
        {"eager": lambda: eager(latents, views), "compiled": lambda: compiled(latents, views)},
        {"compiled": None},
    )
    diff = (out["eager"].float() - out["compiled"].float()).abs().max().item()
    return [
        Row(
            "compile",
            f"panorama {height}x{width}, torch.compile(UNet), after warm-up",
            "ours, eager UNet",
            m["eager"],
            m["compiled"],
            h * w,
            ctx.steps,
            notes=f"first call (compiles) {m_first.seconds:.0f} s; max |latents diff| = {diff:.1e}",
            extra={"first_call_seconds": m_first.seconds, "max_abs_diff": diff},
        )
    ]


def precision(ctx: Context, dtype: torch.dtype, width: int = 1024, height: int = 512) -> list[Row]:
    """A ``dtype`` copy of the pipeline against a float32 one: time and output difference."""
    import copy

    from multidiffusion import MultiDiffusion

    def variant(d: torch.dtype) -> Any:
        if ctx.pipe.unet.dtype == d:
            return ctx.pipe, ctx.md
        pipe = copy.deepcopy(ctx.pipe).to(dtype=d)
        md = MultiDiffusion(pipe)
        md.set_progress_bar_config(disable=True)
        return pipe, md

    h, w = height // 8, width // 8
    views = (w - 64) // 8 + 1
    latents = noise((1, 4, h, w)).to(ctx.device)
    (pipe32, md32), (pipe_low, md_low) = variant(torch.float32), variant(dtype)
    base = ours_panorama(md32, PROMPT, height, width, ctx.steps, GUIDANCE)
    low = ours_panorama(md_low, PROMPT, height, width, ctx.steps, GUIDANCE)
    name = str(dtype).replace("torch.", "")
    out, m = _repeat(
        ctx,
        {"float32": lambda: base(latents, views), name: lambda: low(latents.to(dtype), views)},
        {"float32": pipe32.unet, name: pipe_low.unet},
    )
    rel = ((out["float32"].float() - out[name].float()).norm() / out["float32"].float().norm()).item()
    image = md_low.panorama(PROMPT, height=height, width=width, num_inference_steps=1, output_type="np").images
    return [
        Row(
            "precision",
            f"panorama {height}x{width}, {name} UNet and VAE",
            "ours, float32",
            m["float32"],
            m[name],
            h * w,
            ctx.steps,
            notes=f"relative latents difference {rel:.1e}; decode to {image.shape[2]}x{image.shape[1]} ok",
            extra={"relative_diff": rel},
        )
    ]


def regions(ctx: Context, width: int = 2048, height: int = 512) -> list[Row]:
    """Three region prompts and a background: ours against the paper's per-view region loop."""
    try:
        from .regions_bench import regions_rows
    except ImportError as exc:  # the reference loop or the regions API is not in this version
        return [
            Row(
                "regions",
                f"three regions on {height}x{width}",
                "paper's per-view region loop",
                None,
                None,
                0,
                ctx.steps,
                notes=f"not measured: {exc}",
            )
        ]
    return regions_rows(ctx, width, height)
