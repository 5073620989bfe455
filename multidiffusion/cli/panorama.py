"""``multidiffusion panorama``: a panorama of any size from one prompt."""

from __future__ import annotations

import argparse
import secrets
import time
from typing import Any

from multidiffusion.cli.common import (
    add_model_options,
    add_sampling_options,
    fail,
    load_model,
    numbered_outputs,
    settings_from,
    window_type,
)

HELP = """\
Generate a panorama: the canvas is denoised as many overlapping windows of the model's native size
whose predictions are averaged every step (MultiDiffusion, Bar-Tal et al. 2023).

examples:
  multidiffusion panorama --model demo "snowy mountains at sunset" --width 1024 -o pano.png
  multidiffusion panorama "a photo of the dolomites" --model stabilityai/stable-diffusion-2-base \\
      --width 4608 --seed 1 -o dolomites.png
  multidiffusion panorama --from dolomites.png --steps 30 -o again.png   # rerun with changes
  multidiffusion panorama --model demo "a wide valley" --width 4608 --tiling shifted -o fast.png
"""

# command-line flag -> API argument (and key in the PNG's stored parameters)
FLAGS = {
    "prompt": "prompt",
    "negative": "negative_prompt",
    "width": "width",
    "height": "height",
    "window": "window",
    "stride": "stride",
    "circular": "circular",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "seed": "seed",
    "scheduler": "scheduler",
    "batch_size": "view_batch_size",
    "num_images": "num_images_per_prompt",
    "model": "model",
    "tiling": "tiling",
    "weights": "weights",
    "crops_coords": "crops_coords_top_left",  # SDXL micro-conditioning, model options
    "original_size": "original_size",
}
MODEL_OPTIONS = {"crops_coords": "crops_coords_top_left", "original_size": "original_size"}


def _model_options(settings: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """SDXL options from flags, or from --from's PNG unless --model names another model (they may
    not apply to it: an SD 1.x model refuses them)."""
    options = {}
    for flag, key in MODEL_OPTIONS.items():
        value = settings.pop(key)
        if value is not None and (getattr(args, flag) is not None or args.model is None):
            options[key] = tuple(value) if isinstance(value, list) else value
    return options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "panorama",
        help="generate a panorama of any width or height",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", help="what the panorama shows")
    g = p.add_argument_group("canvas")
    g.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: 4x the model's native size)")
    g.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    g.add_argument("--window", type=window_type, help="window in latent pixels, N or HxW (default: the model's native)")
    g.add_argument("--stride", type=window_type, help="window stride in latent pixels (default: window / 8)")
    g.add_argument("--circular", action="store_true", default=None, help="360-degree panorama that wraps around")
    g.add_argument(
        "--tiling",
        choices=["grid", "shifted"],
        help="grid: the paper's sliding windows (default, ~7 model evaluations per pixel per step); shifted: "
        "the fast mode, non-overlapping windows at a fresh seeded offset every step (~1 per pixel)",
    )
    g.add_argument(
        "--weights",
        choices=["uniform", "gaussian"],
        help="window weights in the average: uniform (the paper's, default) or gaussian (Mixture of Diffusers)",
    )
    add_sampling_options(p)
    add_model_options(p)
    p.set_defaults(run=run)


def precheck(settings: dict[str, Any]) -> None:
    """Checks that need no model, so bad input fails before minutes of loading."""
    from multidiffusion.engine.schedulers import scheduler_name
    from multidiffusion.options import MAX_STEPS, check_int, check_number, check_side, pair

    flag = {v: "--" + k.replace("_", "-") for k, v in FLAGS.items()}
    checks = {
        "width": lambda n, v: check_side(n, v),
        "height": lambda n, v: check_side(n, v),
        "num_inference_steps": lambda n, v: check_int(n, v, 1, MAX_STEPS),
        "guidance_scale": lambda n, v: check_number(n, v, 0),
        "view_batch_size": lambda n, v: check_int(n, v, 1),
        "num_images_per_prompt": lambda n, v: check_int(n, v, 1, 64),
        "scheduler": lambda n, v: scheduler_name(v),
    }
    for key, check in checks.items():
        if settings.get(key) is not None:
            check(flag[key], settings[key])
    window = settings.get("window")
    for w in pair("--window", window) if window is not None else ():
        check_int("--window", w, 8)
    stride = settings.get("stride")
    if stride is not None:
        limits = pair("--window", window) if window is not None else (None, None)
        for s, w in zip(pair("--stride", stride), limits):
            check_int("--stride", s, 1, w)


def run(args: argparse.Namespace) -> None:
    import torch

    from multidiffusion.metadata import check_output_path, save_png

    settings = settings_from(args, FLAGS, "panorama")
    if not settings.get("prompt"):
        fail("a prompt is required (or --from an image we wrote)")
    output = check_output_path(args.output, "--output")
    precheck(settings)
    seed = settings.pop("seed")
    seed = secrets.randbelow(2**32) if seed is None else seed
    md = load_model(settings.pop("model"), args, **_model_options(settings, args))
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if v is not None}
    start = time.perf_counter()
    out = md.panorama(generator=torch.Generator("cpu").manual_seed(seed), **kwargs)
    elapsed = time.perf_counter() - start
    paths = numbered_outputs(output, len(out.images))
    for path in paths[1:]:
        check_output_path(path, "--output")
    for i, (image, path) in enumerate(zip(out.images, paths)):
        save_png(image, path, {**out.parameters, "image_index": i})
    w, h = out.images[0].size
    print(f"wrote {', '.join(map(str, paths))} ({w}x{h}, {elapsed:.1f} s, {out.stats.model_calls} model calls)")
