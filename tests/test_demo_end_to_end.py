"""End-to-end checks with the shipped demo model: it draws what prompts say, as a single image, as a
panorama, and region by region. Each picture is read by the rule-based checker of
:mod:`devtools.demo.checker`, which knows nothing of the model.

These run the real sampling loop (DDIM, 20 steps) on real trained weights, so a regression that
still produces finite, well-shaped noise (wrong guidance, a broken fused step, a bad decode) fails
here even though the tiny random-weight tests pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devtools.demo.checker import agreement, agreement_score, classify
from multidiffusion import MultiDiffusion, Region

STEPS = 20

# Captions that cover the sky, ground, celestial and mountain attributes; each is drawn with two seeds.
PROMPTS = (
    "snowy mountains under a starry night sky",
    "a desert under an orange sunset sky",
    "a sea under a blue sky with a yellow sun",
    "a green meadow under an overcast sky",
)


@pytest.fixture(scope="module")
def demo() -> MultiDiffusion:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    md = MultiDiffusion.from_pretrained("demo", device="cpu")
    md.set_progress_bar_config(disable=True)
    return md


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_native_images_follow_their_prompts(demo: MultiDiffusion) -> None:
    """One view at the native size: the checker agrees with the prompt on (almost) every attribute,
    and much less with a contrasting prompt drawn from the same seed."""
    size = demo.adapter.native_latent_size[0] * demo.adapter.vae_scale_factor
    scores, controls = [], []
    for i, prompt in enumerate(PROMPTS):
        other = PROMPTS[(i + 2) % len(PROMPTS)]
        for seed in (0, 1):
            image = demo.panorama(prompt, height=size, width=size, num_inference_steps=STEPS, generator=_gen(seed))
            scores.append(agreement_score(image.images[0], prompt))
            controls.append(agreement_score(image.images[0], other))
    assert np.mean(scores) >= 0.85, scores
    assert sum(s == 1.0 for s in scores) >= 6, scores
    assert np.mean(controls) <= np.mean(scores) - 0.4, (scores, controls)


def test_demo_panorama_is_wide_varied_and_on_prompt(demo: MultiDiffusion) -> None:
    prompt = "snowy mountains under a starry night sky"
    out = demo.panorama(prompt, width=512, num_inference_steps=STEPS, generator=_gen(3), output_type="np")
    image = out.images[0]
    assert image.shape == (64, 512, 3)
    assert np.isfinite(image).all() and image.std() > 0.05
    columns = image.mean(axis=(0, 2))
    assert columns.std() > 0.005  # not one column repeated
    pixels = (image * 255).round().astype(np.uint8)
    checks = agreement(pixels, prompt)
    assert sum(checks.values()) >= len(checks) - 1, checks
    # and each quarter of the panorama is a picture of the prompt, not only the whole
    quarters = [agreement(pixels[:, q * 128 : (q + 1) * 128], prompt) for q in range(4)]
    assert sum(c["sky"] for c in quarters) >= 3, quarters


def test_two_region_layout_follows_each_prompt(demo: MultiDiffusion) -> None:
    """Left half a night sky, right half a sunset sky, over one desert: each half of the image reads
    as its own prompt (the checker on each 64 x 64 half)."""
    regions = [
        Region("a desert under a starry night sky", box=(0, 0, 64, 64)),
        Region("a desert under an orange sunset sky", box=(64, 0, 128, 64)),
    ]
    hits = 0
    for seed in (0, 1):
        out = demo.regions(
            height=64, width=128, background="a desert", regions=regions, num_inference_steps=STEPS,
            generator=_gen(seed), output_type="np",
        )  # fmt: skip
        pixels = (out.images[0] * 255).round().astype(np.uint8)
        left, right = classify(pixels[:, :64]), classify(pixels[:, 64:])
        hits += (left["sky"] == "night") + (right["sky"] == "sunset")
        assert left["sky"] != right["sky"], (left, right)
    assert hits >= 3
