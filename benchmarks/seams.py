"""Seam score of the fast mode against the exact mode, on the shipped demo model.

Seam score (from issue 3): the mean absolute horizontal gradient of the image on the columns where
tiles meet, over the same mean elsewhere; 1.0 means the borders are invisible. "Elsewhere" is the
other columns at the same phase of the VAE's grid (multiples of its factor f): window borders
always fall on latent-pixel boundaries, where a VAE's decode has its own faint periodic pattern,
so comparing with every other column would score the VAE rather than the tiling.

Where do tiles meet? For the exact mode and for fixed tiles (``placement="grid", stride=window``,
what independent tiles do) the borders are the multiples of the window. The fast mode moves its
borders every step, so we score it on the window multiples (as the others), and on the borders of
its last step (read back from its layout: the freshest, where a seam would show most), scoring the
exact mode's image on those same columns for comparison. Scores are averaged over seeds.
"""

from __future__ import annotations

import numpy as np
import torch

from multidiffusion.engine.windows import Windows, default_stride

__all__ = ["seam_rows", "seam_score"]


def column_gradients(image) -> torch.Tensor:
    """Mean |I(x) - I(x-1)| per column boundary x = 1..W-1 of an (H, W, 3) uint8 image."""
    x = torch.from_numpy(np.array(image, dtype=np.float32))  # a copy: PIL's array is read-only
    return (x[:, 1:] - x[:, :-1]).abs().mean(dim=(0, 2))  # index x-1 is the step into column x


def seam_score(image, columns: set[int], period: int = 1) -> float:
    """Mean gradient into the given columns over the mean into the other columns that are
    multiples of ``period`` (the VAE's factor: borders are always at such columns)."""
    g = column_gradients(image)
    index = torch.arange(1, g.numel() + 1)  # the column each gradient steps into
    on = torch.zeros_like(g, dtype=torch.bool)
    for c in columns:
        if 0 < c < g.numel() + 1:
            on[c - 1] = True
    off = ~on & (index % period == 0)
    return (g[on].mean() / g[off].mean()).item()


def border_columns(layout: Windows, steps: range, f: int) -> set[int]:
    """Pixel columns where a window started or ended in the given steps (canvas edges excluded)."""
    width = layout.canvas[1]
    cols: set[int] = set()
    for i in steps:
        for v in layout.views(i):
            for c in (v.left, v.left + v.width):
                if 0 < c < width:
                    cols.add(c * f)
    return cols


def seam_rows(quick: bool = False, device=None) -> list[dict]:
    from multidiffusion import MultiDiffusion

    try:
        md = MultiDiffusion.from_pretrained("demo", device=device)
    except Exception as exc:  # the demo model is not in this version
        return [{"suite": "seams", "config": "seam score, demo model", "peer": "exact mode",
                 "notes": f"not measured: {type(exc).__name__}: {exc}"}]  # fmt: skip
    md.set_progress_bar_config(disable=True)
    f = md.adapter.vae_scale_factor
    win = md.adapter.native_latent_size[1]
    height, width = win * f, 9 * win * f  # the 512 x 4608 panorama's 1:9, at the demo's native size
    steps = 10 if quick else 25
    seeds = [0] if quick else list(range(16))  # the score varies a lot from seed to seed
    prompt = "a wide mountain valley under a blue sky"
    window_cols = {k * win * f for k in range(1, 9)}
    modes = {
        "exact (grid, stride window/8)": {},
        "fixed tiles (grid, stride = window)": {"stride": win},
        "fast (shifted, uniform, no overlap)": {"placement": "shifted", "weights": "uniform", "stride": win},
        "fast (shifted, gaussian, no overlap)": {"placement": "shifted", "weights": "gaussian", "stride": win},
        "fast (shifted, defaults: gaussian, windows overlap by 1/8)": {"placement": "shifted"},
    }
    scores: dict[str, dict[str, list[float]]] = {
        m: {"window": [], "moving": [], "exact_moving": [], "columns": []} for m in modes
    }
    for seed in seeds:
        images = {}
        for name, options in modes.items():
            out = md.panorama(prompt, height=height, width=width, num_inference_steps=steps,
                              generator=torch.Generator().manual_seed(seed), **options)  # fmt: skip
            images[name] = out.images[0]
            scores[name]["window"].append(seam_score(images[name], window_cols, f))
        for name, options in modes.items():
            if options.get("placement") == "shifted":
                canvas = (height // f, width // f)
                stride = options.get("stride", default_stride((win, win), "shifted"))
                stride = (stride, stride) if isinstance(stride, int) else stride
                layout = Windows(canvas, (win, win), stride, "shifted", seed=seed)
                cols = border_columns(layout, range(steps - 1, steps), f)
                scores[name]["columns"].append(len(cols))
                scores[name]["moving"].append(seam_score(images[name], cols, f))
                scores[name]["exact_moving"].append(seam_score(images["exact (grid, stride window/8)"], cols, f))

    def mean(v: list[float]) -> float | None:
        return sum(v) / len(v) if v else None

    exact = mean(scores["exact (grid, stride window/8)"]["window"])
    rows = []
    for name in modes:
        s = scores[name]
        row = {
            "suite": "seams",
            "config": f"seam score, demo model {height}x{width}, {steps} steps, {len(seeds)} seeds: {name}",
            "peer": "exact mode",
            "seam_window_columns": mean(s["window"]),
            "seam_exact_window_columns": exact,
            "seam_last_step_borders": mean(s["moving"]),
            "seam_exact_last_step_borders": mean(s["exact_moving"]),
        }
        notes = f"at window multiples: {row['seam_window_columns']:.3f} (exact {exact:.3f})"
        if s["moving"]:
            notes += (
                f"; at its last step's ~{mean(s['columns']):.0f} border columns: "
                f"{row['seam_last_step_borders']:.3f} (exact {row['seam_exact_last_step_borders']:.3f})"
            )
            row["ratio"] = row["seam_last_step_borders"] / row["seam_exact_last_step_borders"]
            row["ratio_window_columns"] = row["seam_window_columns"] / exact
        row["notes"] = notes
        rows.append(row)
    return rows
