"""The demo's frame: how much the outermost pixel rows and columns jump against the inside.

``python -m benchmarks.demo_border`` (or ``python -m benchmarks --suites demo-border``) measures the
edge-to-inside ratio (:func:`devtools.demo.border.edge_to_inside`; per side: the mean |difference|
between the outermost row (column) and its neighbour, over the mean |difference| between adjacent
rows (columns) that touch neither outermost one; 8-bit grey levels, means over every image, channel
and pixel of the batch before the ratio) on the shipped demo model, the same seeds for every case:

- **latents** (the UNet's output, is it framed already?): diffusers' pipeline 64 x 64 (16 x 16
  latents), our 64 x 256 panorama (16 x 64), and the encoder's posterior means of real scenes (what
  the UNet learnt to produce);
- **images**: diffusers' ``StableDiffusionPipeline`` 64 x 64; ours at one view (``md.panorama`` at
  64 x 64, the same latents); our 64 x 256 panorama with uniform (the paper's) and Gaussian window
  weights; a 2x upscale (``md.upscale`` of 64 x 64 procedural scenes to 128 x 128); the VAE alone
  on real scenes (encode, decode: its own share, no UNet), beside the scenes themselves (the
  truth's ratio, well under 1: skies are flat at the top);
- **decode alone**: the panorama's latents decoded whole against in tiles (``tile=8`` latent pixels,
  so the canvas edges lie in tiles), and the max |difference| between the two.

Every image case is decoded by the shipped VAE and, with ``baseline_vae`` (a VAE folder, e.g. the
decoder before ``devtools.demo.border``), by that one too, from the same latents: the decoder's
before and after in one run. DDIM, ``steps`` steps (default 10: the frame is set by the last steps
and the decode), guidance 7.5, 16 seeds over four prompts (the four skies).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devtools.demo.border import edge_to_inside
from multidiffusion.vae.edges import EDGE_PAD

__all__ = ["PROMPTS", "border_rows", "main"]

PROMPTS = (
    "snowy mountains under a starry night sky",
    "a red house in a green meadow under a clear blue sky",
    "a desert under an orange sunset sky",
    "a calm lake below green hills on a cloudy day",
)
RESULTS = Path(__file__).resolve().parent / "results" / "cpu-demo-border.json"


def _levels(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> 8-bit levels as diffusers rounds them, float (B, 3, H, W)."""
    return ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round()


def _row(case: str, kind: str, ratios: dict[str, dict[str, float]], **extra: Any) -> dict[str, Any]:
    notes = ", ".join(f"{s} {v['edge']:.2f}/{v['inside']:.2f} = {v['ratio']:.2f}" for s, v in ratios.items())
    return {"suite": "demo-border", "config": case, "peer": kind, "sides": ratios, "notes": notes, **extra}


def _noise(seeds: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.cat([torch.randn((1, *shape), generator=torch.Generator().manual_seed(s)) for s in seeds])


def border_rows(
    quick: bool = False, model: str | None = None, baseline_vae: str | None = None, steps: int | None = None
) -> list[dict[str, Any]]:
    """The rows described in the module docstring (``quick``: 4 seeds, 4 steps)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from devtools.demo.architecture import DEFAULT_MODEL_DIR
    from devtools.demo.data import to_tensor
    from devtools.demo.scenes import generate
    from multidiffusion import MultiDiffusion
    from multidiffusion.vae.codec import decode_latents

    folder = str(model or DEFAULT_MODEL_DIR)
    steps = steps or (4 if quick else 10)
    seeds = list(range(4 if quick else 16))
    prompts = [PROMPTS[s % len(PROMPTS)] for s in seeds]
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    md = MultiDiffusion.from_pretrained(folder)
    md.set_progress_bar_config(disable=True)
    vaes = {"shipped VAE": pipe.vae}
    if baseline_vae:
        vaes["baseline VAE"] = AutoencoderKL.from_pretrained(baseline_vae, torch_dtype=torch.float32).eval()
    sf = pipe.vae.config.scaling_factor
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    common = dict(num_inference_steps=steps, guidance_scale=7.5, output_type="latent")

    def images(case: str, latents: torch.Tensor, **extra: Any) -> None:
        for name, vae in vaes.items():
            for pad in (0, EDGE_PAD):
                with torch.no_grad():
                    pixels = decode_latents(vae, latents, edge_pad=pad)
                what = f"image, {name}, edge_pad {pad}"
                rows.append(_row(case, what, edge_to_inside(_levels(pixels)), edge_pad=pad, vae=name, **extra))

    t0 = time.time()
    z1 = _noise(seeds, (4, 16, 16))
    peer = pipe(prompts, latents=z1.clone(), **common).images
    timings["diffusers_64"] = time.time() - t0
    t0 = time.time()
    ours = md.panorama(prompts, height=64, width=64, latents=z1.clone(), **common).images
    timings["ours_64"] = time.time() - t0
    rows.append(_row("diffusers 64x64", "latents 16x16", edge_to_inside(peer)))
    for name, vae in vaes.items():  # diffusers' own decode: vae.decode of the whole canvas
        with torch.no_grad():
            pixels = vae.decode(peer / sf).sample
        rows.append(_row("diffusers 64x64", f"image, {name}", edge_to_inside(_levels(pixels)), vae=name))
    images("ours one view 64x64", ours, max_abs_latent_diff_vs_diffusers=float((ours - peer).abs().max()))

    z4 = _noise(seeds, (4, 16, 64))
    for label, options in (("uniform weights", {}), ("gaussian weights", {"weights": "gaussian"})):
        t0 = time.time()
        pano = md.panorama(prompts, height=64, width=256, latents=z4.clone(), **common, **options).images
        timings[f"panorama_{options.get('weights', 'uniform')}"] = time.time() - t0
        case = f"ours 64x256 panorama, {label}"
        rows.append(_row(case, "latents 16x64", edge_to_inside(pano)))
        images(case, pano)
        if not options:
            for name, vae in vaes.items():
                for pad in (0, EDGE_PAD):
                    with torch.no_grad():
                        whole = decode_latents(vae, pano, edge_pad=pad)
                        tiled = decode_latents(vae, pano, tile=8, overlap=2, edge_pad=pad)
                    diff = float((_levels(whole) - _levels(tiled)).abs().max())
                    case = "ours 64x256 panorama, decoded in tiles of 8 latents (overlap 2)"
                    what = f"image, {name}, edge_pad {pad}"
                    extra = dict(edge_pad=pad, vae=name, max_levels_vs_whole=diff)
                    rows.append(_row(case, what, edge_to_inside(_levels(tiled)), **extra))

    scenes, captions, _ = generate(np.random.default_rng(1234), len(seeds), 64)
    real = to_tensor(scenes)
    rows.append(_row("real scenes (the truth)", "image", edge_to_inside((real + 1) * 127.5)))
    with torch.no_grad():
        posterior = pipe.vae.encode(real).latent_dist.mean
    rows.append(_row("real scenes encoded", "latents 16x16 (posterior means)", edge_to_inside(posterior)))
    for name, vae in vaes.items():
        with torch.no_grad():
            pixels = vae.decode(posterior).sample
        err = (pixels.clamp(-1, 1) - real).abs()
        inside = float(err[..., 3:-3, 3:-3].mean())
        rows.append(
            _row(
                "VAE alone: real scenes encoded and decoded",
                f"image, {name}",
                edge_to_inside(_levels(pixels)),
                vae=name,
                l1=float(err.mean()),
                l1_inside=inside,
            )
        )

    t0 = time.time()
    up = torch.cat(
        [
            md.upscale(_pil(x), scale=2.0, prompt=c, generator=torch.Generator().manual_seed(s), **common).images
            for x, c, s in zip(real, captions, seeds, strict=True)
        ]
    )
    timings["upscale_2x"] = time.time() - t0
    rows.append(_row("ours 2x upscale of real scenes (128x128)", "latents 32x32", edge_to_inside(up)))
    images("ours 2x upscale of real scenes (128x128)", up)
    for r in rows:
        r["steps"], r["seeds"] = steps, len(seeds)
    rows.append({"suite": "demo-border", "config": "timings", "peer": "", "notes": "", "seconds": timings})
    return rows


def _pil(x: torch.Tensor):
    from PIL import Image

    return Image.fromarray(_levels(x[None])[0].permute(1, 2, 0).numpy().astype(np.uint8))


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one line per case, the four sides' edge / inside = ratio."""
    lines = ["| case | what | top | bottom | left | right |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "sides" not in r:
            continue
        cells = [f"{v['edge']:.2f} / {v['inside']:.2f} = **{v['ratio']:.2f}**" for v in r["sides"].values()]
        lines.append("| " + " | ".join([r["config"], r["peer"], *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.demo_border [--quick] [--baseline-vae DIR] [--json PATH]``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.demo_border", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="4 seeds, 4 steps")
    p.add_argument("--model", default=None, help="pipeline folder (default: the shipped demo)")
    p.add_argument("--baseline-vae", default=None, help="a VAE folder to decode the same latents with too")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(RESULTS))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import os

    load, t0 = os.getloadavg(), time.time()
    rows = border_rows(a.quick, a.model, a.baseline_vae, a.steps)
    info = {"threads": a.threads, "load_average_start": load, "load_average_end": os.getloadavg()}
    info.update(wall_s=round(time.time() - t0, 1), torch=torch.__version__, baseline_vae=a.baseline_vae)
    print(table(rows))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
