"""Does bootstrapping (paper Sec. 4.2) keep a tight box's content inside it? Measured on the shipped
demo model: the fraction of pixels of the region prompt's colour class inside its box, with and
without bootstrapping, mean over seeds (``python -m benchmarks.bootstrap_demo``; about 2 minutes on
2 CPU cores). Results are in docs/demo-model.md."""

from __future__ import annotations

import numpy as np
import torch

from devtools.demo.checker import colour_fractions
from multidiffusion import MultiDiffusion, Region

# (background, region prompt, its colour class, box x0, y0, x1, y1 in pixels of a 64 x 64 image)
CASES = [
    ("a clear blue sky over a green meadow", "a yellow sun", "yellow", (8, 6, 24, 22)),
    ("a dark night sky over a snowfield", "a full moon", "white", (36, 6, 52, 22)),
    ("a clear blue sky over a desert", "a red house", "red", (20, 36, 44, 58)),
    ("an overcast sky over a snowfield", "a green tree", "green", (24, 30, 40, 58)),
    ("a green meadow under a blue sky", "an orange sunset sky", "orange", (16, 0, 48, 16)),
    ("a desert under a blue sky", "a starry night sky", "dark", (8, 0, 40, 16)),
    ("a snowfield under an overcast sky", "a blue lake", "blue", (8, 44, 56, 60)),
]
SEEDS = range(6)
STEPS = 25


def main() -> None:
    md = MultiDiffusion.from_pretrained("demo", device="cpu")
    md.set_progress_bar_config(disable=True)
    print("| region prompt (background) | colour | inside the box, no bootstrapping | with 10 of 25 steps |")
    print("|---|---|---|---|")
    for background, prompt, colour, box in CASES:
        mask = np.zeros((64, 64), bool)
        mask[box[1] : box[3], box[0] : box[2]] = True
        means = []
        for boot in (0, 10):
            fractions = []
            for seed in SEEDS:
                out = md.regions(
                    height=64, width=64, background=background, regions=[Region(prompt, box=box)],
                    bootstrap_steps=boot, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed),
                )  # fmt: skip
                fractions.append(colour_fractions(np.asarray(out.images[0]), mask).get(colour, 0.0))
            means.append(float(np.mean(fractions)))
        print(f"| {prompt} ({background}) | {colour} | {means[0]:.2f} | {means[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
