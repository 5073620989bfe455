"""The benchmark configurations. Each suite returns rows: a configuration, a peer and ours, measured
in the same process on the same components and latents (see ``measure.py`` for what is counted)."""

from __future__ import annotations

from typing import Any

import torch

from multidiffusion.engine.views import grid_views
from multidiffusion.engine.windows import default_stride

from . import upscale
from .common import GUIDANCE, PROMPT, Context, Row, calibrate, diffusers_panorama, noise, ours_panorama, repeat
from .measure import measure


def panorama_exact(ctx: Context, width: int, height: int = 512) -> list[Row]:
    """Ours (exact mode) against diffusers' panorama pipeline, each at its best view_batch_size."""
    h, w = height // 8, width // 8
    views = len(grid_views(h, w, ctx.window, default_stride(ctx.window, "grid")))
    latents = noise((1, 4, h, w)).to(ctx.device, ctx.pipe.unet.dtype)
    peer = diffusers_panorama(ctx.pipe, PROMPT, height, width, ctx.steps, GUIDANCE)
    ours = ours_panorama(ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE)
    b_peer = calibrate(ctx, "diffusers", peer, latents, views)
    b_ours = calibrate(ctx, "ours", ours, latents, views)
    out, m = repeat(ctx, {"peer": lambda: peer(latents, b_peer), "ours": lambda: ours(latents, b_ours)})
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
    win = ctx.window
    overlap = default_stride(win, "shifted")  # placement="shifted"'s default: windows overlap by 1/8
    options = {
        f"shifted (defaults: Gaussian weights, stride {overlap[1]}, windows overlap by 1/8)": {},
        f"shifted, uniform, stride {win[1]} (no overlap)": {"weights": "uniform", "stride": win},
        f"shifted, Gaussian, stride {win[1]} (no overlap)": {"weights": "gaussian", "stride": win},
    }
    runs = {
        name: ours_panorama(ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE, placement="shifted", **o)
        for name, o in options.items()
    }
    runs["grid, Gaussian, stride 32"] = ours_panorama(
        ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE, placement="grid", weights="gaussian", stride=32
    )
    if f"exact-{width}" not in ctx.cache:
        exact = ours_panorama(ctx.md, PROMPT, height, width, ctx.steps, GUIDANCE)
        runs = {"exact": exact, **runs}
    _, m = repeat(ctx, {name: (lambda run=run: run(latents, b_ours)) for name, run in runs.items()})
    exact_m = ctx.cache.get(f"exact-{width}") or m.pop("exact")
    return [
        Row(
            "fast",
            f"panorama {height}x{width}, {name}",
            "ours, exact mode (grid, stride window/8, uniform weights)",
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
    views = len(grid_views(h, w, ctx.window, default_stride(ctx.window, "grid")))
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
    out, m = repeat(
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
    views = len(grid_views(h, w, ctx.window, default_stride(ctx.window, "grid")))
    latents = noise((1, 4, h, w)).to(ctx.device)
    (pipe32, md32), (pipe_low, md_low) = variant(torch.float32), variant(dtype)
    base = ours_panorama(md32, PROMPT, height, width, ctx.steps, GUIDANCE)
    low = ours_panorama(md_low, PROMPT, height, width, ctx.steps, GUIDANCE)
    name = str(dtype).replace("torch.", "")
    out, m = repeat(
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


def upscale_memory(quick: bool, device: torch.device) -> list[dict]:
    """Peak memory of ``md.upscale`` to 4096 x 4096 against 1024 x 1024, one process per size
    (:func:`benchmarks.upscale.memory_rows`)."""
    return upscale.memory_rows(quick, device)


def upscale_peer(quick: bool, device: torch.device, repeats: int) -> list[Row]:
    """Ours (fast and exact) against A1111's SD upscale, independent tiles
    (:func:`benchmarks.upscale.peer_rows`)."""
    return upscale.peer_rows(quick, device, repeats)


def upscale_quality(quick: bool, device: torch.device) -> list[dict]:
    """Lanczos, independent tiles and ours on demo panoramas: PSNR back, detail, seams
    (:func:`benchmarks.upscale.quality_rows`)."""
    return upscale.quality_rows(quick, device)


def demo_border(quick: bool, model: str | None = None) -> list[dict]:
    """The demo's frame: edge-to-inside ratios per cause, shipped decoder (``demo-border``,
    :func:`benchmarks.demo_border.border_rows`; ``python -m benchmarks.demo_border`` also decodes
    with a baseline VAE)."""
    from .demo_border import border_rows

    return border_rows(quick, model)
