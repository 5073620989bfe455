"""Three regions and a background on a wide canvas: ours against the paper's per-view region loop
(:func:`devtools.reference.paper_regions`), same components, latents, windows and masks,
DDIM, no bootstrapping (it adds the same background encodes to both)."""

from __future__ import annotations

import torch

from devtools.reference import paper_regions
from multidiffusion import Region, region_layout
from multidiffusion.engine.views import grid_views
from multidiffusion.engine.windows import default_stride

from .common import GUIDANCE, Context, Row, calibrate, noise, repeat
from .measure import measure

BACKGROUND = "a green meadow under a blue sky"
REGIONS = [
    Region("a red hot-air balloon", box=(0.04, 0.05, 0.22, 0.6)),
    Region("a stone castle", box=(0.40, 0.15, 0.62, 1.0)),
    Region("a black horse", box=(0.74, 0.45, 0.96, 1.0)),
]


def regions_rows(ctx: Context, width: int = 2048, height: int = 512) -> list[Row]:
    """Three region prompts and a background: ours against the paper's per-view region loop."""
    f = ctx.md.adapter.vae_scale_factor
    h, w = height // f, width // f
    layout = region_layout(REGIONS, height, width, f, BACKGROUND)
    views = grid_views(h, w, ctx.window, default_stride(ctx.window, "grid"))
    latents = noise((1, 4, h, w), seed=1).to(ctx.device, ctx.pipe.unet.dtype)
    jobs = len(layout.jobs(views))

    def ours(lat: torch.Tensor, view_batch_size: int | None, num_inference_steps: int = ctx.steps) -> torch.Tensor:
        return ctx.md.regions(
            height=height,
            width=width,
            background=BACKGROUND,
            regions=REGIONS,
            bootstrap_steps=0,
            num_inference_steps=num_inference_steps,
            guidance_scale=GUIDANCE,
            latents=lat.clone(),
            view_batch_size=view_batch_size,
            output_type="latent",
        ).images

    def paper() -> torch.Tensor:
        return paper_regions(
            ctx.pipe,
            layout.prompts,
            layout.masks.to(ctx.device),
            latents.clone(),
            num_inference_steps=ctx.steps,
            guidance_scale=GUIDANCE,
            views=views,
        )

    b = calibrate(ctx, "ours-regions", ours, latents, jobs)
    out, m = repeat(ctx, {"paper": paper, "ours": lambda: ours(latents, b)})
    diff = (out["paper"].float() - out["ours"].float()).abs().max().item()
    # the same layout at view_batch_size=1: one job per call, to separate skipping from batching
    _, single = measure(lambda: ours(latents, 1), ctx.pipe.unet, ctx.device)
    prompts = len(layout.prompts)
    return [
        Row(
            "regions",
            f"3 regions + background on {height}x{width}, {len(views)} windows",
            f"paper's per-view region loop ({len(views)} windows x {prompts} prompts per step)",
            m["paper"],
            m["ours"],
            h * w,
            ctx.steps,
            notes=f"UNet evaluations (batch rows, both guidance branches) {m['paper'].evaluations} / "
            f"{m['ours'].evaluations}: {m['paper'].evaluations / m['ours'].evaluations:.2f}x fewer; "
            f"ours view_batch_size={b}: {jobs} of {len(views) * prompts} (window, prompt) jobs per step; "
            f"at view_batch_size=1 {single.model_calls} calls, {single.seconds:.1f} s; max |latents diff| = {diff:.1e}",
            extra={
                "jobs_per_step": {"peer": len(views) * prompts, "ours": jobs},
                "evaluations": {"peer": m["paper"].evaluations, "ours": m["ours"].evaluations},
                "ours_batch1": single.as_dict(),
                "max_abs_diff": diff,
            },
        )
    ]
