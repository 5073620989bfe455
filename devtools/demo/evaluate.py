"""Measure how often the demo model draws what its captions say: ``python -m devtools.demo.evaluate``.

Captions are drawn from the scene generator (with a seed the training set did not use), images are
sampled at the native size with StableDiffusionPipeline, and :func:`checker.agreement` compares each
image with its caption. Prints agreement per attribute, overall (over all checked attributes) and the
fraction of images whose every attribute agrees; ``--json`` writes the same numbers to a file.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devtools.demo.architecture import DEFAULT_MODEL_DIR
from devtools.demo.captions import caption_scene
from devtools.demo.checker import agreement, classify, object_present, parse_caption
from devtools.demo.scenes import sample_scene

__all__ = ["SCHEDULERS", "evaluate", "load_pipeline", "sample_captions"]

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def sample_captions(n: int, seed: int = 1234) -> list[str]:
    """``n`` non-empty captions from the scene generator."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        caption = caption_scene(sample_scene(rng), rng)
        if caption:
            out.append(caption)
    return out


def load_pipeline(model: str | Path = DEFAULT_MODEL_DIR, scheduler: str = "ddim") -> Any:
    """The demo model as a float32 StableDiffusionPipeline with the named scheduler."""
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(model), torch_dtype=torch.float32)
    cls = getattr(diffusers, SCHEDULERS[scheduler])
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate(
    pipe: Any,
    captions: list[str],
    steps: int = 25,
    guidance: float = 7.5,
    seed: int = 0,
    batch: int = 25,
    keep_images: bool = False,
) -> dict[str, Any]:
    """Sample one image per caption and score it; returns agreement figures (and images if asked)."""
    agree, total = Counter(), Counter()
    obj_agree, obj_total = Counter(), Counter()
    perfect = 0
    images: list[np.ndarray] = []
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for i in range(0, len(captions), batch):
        chunk = captions[i : i + batch]
        out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="np")
        for image, caption in zip(out.images, captions[i : i + batch], strict=True):
            arr = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
            checks = agreement(arr, caption)
            for key, ok in checks.items():
                total[key] += 1
                agree[key] += int(ok)
            perfect += int(all(checks.values()))
            if "objects" in checks:  # each named object on its own: "green tree", "red house", ...
                found = classify(arr)
                for kind, colour in parse_caption(caption)["objects"]:
                    obj_total[f"{colour} {kind}"] += 1
                    obj_agree[f"{colour} {kind}"] += int(object_present(kind, colour, found))
            if keep_images:
                images.append(arr)
    result: dict[str, Any] = {
        "n": len(captions),
        "steps": steps,
        "guidance": guidance,
        "scheduler": type(pipe.scheduler).__name__,
        "seed": seed,
        "overall": sum(agree.values()) / max(1, sum(total.values())),
        "all_attributes_correct": perfect / max(1, len(captions)),
        "per_attribute": {k: {"agree": agree[k] / total[k], "checked": total[k]} for k in sorted(total)},
        "per_object": {k: {"agree": obj_agree[k] / obj_total[k], "checked": obj_total[k]} for k in sorted(obj_total)},
        "seconds": round(time.time() - t0, 1),
    }
    if keep_images:
        result["images"] = images
    return result


def _report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['scheduler']}, {r['steps']} steps, guidance {r['guidance']}, {r['n']} images ({r['seconds']}s):",
        f"  overall agreement {r['overall']:.1%}; images with every attribute right {r['all_attributes_correct']:.1%}",
    ]
    lines += [f"  {k:<10} {v['agree']:.1%}  ({v['checked']} checked)" for k, v in r["per_attribute"].items()]
    return "\n".join(lines)


def _save_grid(images: list[np.ndarray], path: str, cols: int = 10) -> None:
    from PIL import Image

    rows = (len(images) + cols - 1) // cols
    h, w = images[0].shape[:2]
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, im in enumerate(images):
        grid[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w] = im
    Image.fromarray(grid).save(path)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m devtools.demo.evaluate``."""
    p = argparse.ArgumentParser(prog="python -m devtools.demo.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("-n", "--num-images", type=int, default=200)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, nargs="+", default=[7.5], help="one or more guidance scales")
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddim")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    p.add_argument("--caption-seed", type=int, default=1234, help="seed of the caption draw")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--grid", help="save the sampled images as a PNG grid (first guidance only)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    pipe = load_pipeline(a.model, a.scheduler)
    captions = sample_captions(a.num_images, a.caption_seed)
    results = []
    for i, g in enumerate(a.guidance):
        r = evaluate(pipe, captions, a.steps, g, a.seed, a.batch, keep_images=bool(a.grid) and i == 0)
        if "images" in r:
            _save_grid(r.pop("images"), a.grid)
        print(_report(r), flush=True)
        results.append(r)
    if a.json:
        Path(a.json).write_text(json.dumps(results if len(results) > 1 else results[0], indent=2) + "\n")


if __name__ == "__main__":
    main()
