"""Seams of a diffusion transformer's panorama with each view's rotary positions local (``positions=
"view"``) against canvas-global (``"canvas"``), on any model: ``python -m benchmarks.positions_seams
--model black-forest-labs/FLUX.1-dev`` (a repo id, a diffusers folder or a single file; a family's
``positions`` option decides the ids, :mod:`multidiffusion.models.options`).

Each family's default is reasoned from how it was trained (its module's docstring); random weights
can't judge seams, so this is the measurement to run on real weights. The score is
:func:`benchmarks.seams.seam_score`: the mean horizontal gradient into the columns where views
start or end (a grid at half a window's stride) over the mean into the other columns at the same
phase of the VAE-and-patch grid (1.0: borders invisible), averaged over seeds, for the same prompt,
noise and windows in both modes.
``--model tiny:<family>`` runs the plumbing on the tests' tiny random models (scores meaningless).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from benchmarks.seams import seam_score
from multidiffusion.engine.windows import Windows

__all__ = ["positions_seam_rows"]

PROMPT = "a wide mountain valley under a blue sky, photograph"


def _tiny(family: str) -> Any:
    """The tests' tiny random pipeline of ``family`` (plumbing only)."""
    if family == "flux":
        from devtools.dit_components import tiny_flux_pipeline

        return tiny_flux_pipeline(sample_size=16)
    if family == "zimage":
        from devtools.zimage_components import tiny_zimage_pipeline

        return tiny_zimage_pipeline()
    if family == "qwenimage":
        from devtools.qwen_components import tiny_qwenimage_pipeline

        return tiny_qwenimage_pipeline(seed=0)
    if family == "flux2":
        from devtools.flux2_components import tiny_flux2_pipeline

        return tiny_flux2_pipeline(seed=0)
    raise ValueError(f"--model tiny:{family}: tiny models are flux, flux2, qwenimage, zimage")


def _model(name: str, device: str | None, options: dict[str, Any]) -> Any:
    from multidiffusion import MultiDiffusion

    if name.startswith("tiny:"):
        md = MultiDiffusion(_tiny(name[5:]), **options)
    else:
        kwargs = {"torch_dtype": torch.bfloat16} if device == "cuda" else {}
        md = MultiDiffusion.from_pretrained(name, device=device, **kwargs, **options)
    md.set_progress_bar_config(disable=True)
    return md


def positions_seam_rows(
    model: str, seeds: int = 4, steps: int | None = None, views_wide: int = 3, device: str | None = None
) -> list[dict]:
    """One row per positions mode: the seam score at the views' borders of a panorama ``views_wide``
    native windows wide (the paper's grid at a stride of half a window), mean over ``seeds`` seeds."""
    options = {"max_sequence_length": 16} if model.startswith("tiny:") else {}
    md = _model(model, device, options)
    f = md.adapter.vae_scale_factor
    win_h, win_w = md.adapter.native_latent_size
    height, width = win_h * f, views_wide * win_w * f
    steps = steps or md.adapter.sampling_defaults[0]
    stride = max(2, win_w // 4 * 2)  # half a window, in whole tokens: few borders, each shared by 2 views
    views = Windows((win_h, views_wide * win_w), (win_h, win_w), (win_h, stride), "grid", multiple=2).views(0)
    borders = {c * f for v in views for c in (v.left, v.left + v.width) if 0 < c < views_wide * win_w}
    rows, scores = [], {}
    for positions in ("view", "canvas"):
        md.adapter.positions = positions
        values = []
        for seed in range(seeds):
            out = md.panorama(PROMPT, height=height, width=width, num_inference_steps=steps, stride=stride,
                              generator=torch.Generator().manual_seed(seed))  # fmt: skip
            values.append(seam_score(out.images[0], borders, 2 * f))  # tokens are 2 x 2 latent pixels
        scores[positions] = sum(values) / len(values)
        rows.append({
            "suite": "positions-seams", "config": f"{model} panorama {height}x{width}, {steps} steps, "
            f"{seeds} seeds: positions={positions}", "peer": 'positions="view"', "seam": scores[positions],
        })  # fmt: skip
    rows[-1]["ratio"] = scores["canvas"] / scores["view"]
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.positions_seams")
    p.add_argument("--model", required=True, help="a repo id, folder or file; tiny:<family> for the plumbing")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="default: the family's")
    p.add_argument("--views-wide", type=int, default=3)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    for row in positions_seam_rows(args.model, args.seeds, args.steps, args.views_wide, args.device):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
