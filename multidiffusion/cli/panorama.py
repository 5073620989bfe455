"""``multidiffusion panorama``: a panorama of any size from one prompt."""

from __future__ import annotations

import argparse

from multidiffusion.cli.common import (
    SAMPLING_FLAGS,
    add_model_options,
    add_sampling_options,
    fail,
    flag_values,
    load_model,
    preflight,
    report,
    window_type,
    with_flag,
)
from multidiffusion.cli.sources import control_net_choice, lora_choice, model_choice, stored_data, stored_settings
from multidiffusion.io.trust import Origin
from multidiffusion.options import PLACEMENTS, WEIGHTS

HELP = """\
Generate a panorama: the canvas is denoised as many overlapping windows of the model's native size
whose predictions are averaged every step (MultiDiffusion, Bar-Tal et al. 2023).

examples:
  multidiffusion panorama --model demo "snowy mountains at sunset" --width 1024 -o pano.png
  multidiffusion panorama "a photo of the dolomites" --model stabilityai/stable-diffusion-2-base \\
      --width 4608 --seed 1 -o dolomites.png
  multidiffusion panorama --from dolomites.png --steps 30 -o again.png   # rerun with changes
  multidiffusion panorama --model demo "rolling hills under an overcast sky" --width 4608 --placement shifted \\
      --steps 25 -o fast.png
"""

FLAGS = {"prompt": "prompt", **SAMPLING_FLAGS, "placement": "placement", "weights": "weights"}
"""Command-line flag (argparse dest) -> API argument (and key in the PNG's stored parameters)."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", help="what the panorama shows")
    g = p.add_argument_group("canvas")
    g.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: 4x the model's native size)")
    g.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    g.add_argument("--window", type=window_type, help="window in latent pixels, N or HxW (default: the model's native)")
    g.add_argument(
        "--stride",
        type=window_type,
        help="window stride in latent pixels (default: window / 8 on the grid, 7/8 window when shifted)",
    )
    g.add_argument("--circular", action="store_true", default=None, help="360-degree panorama that wraps around")
    g.add_argument(
        "--placement",
        choices=PLACEMENTS,
        help="grid: the paper's sliding windows (default, ~7 model evaluations per pixel per step); shifted: "
        "the fast mode, windows overlapping by 1/8 at a fresh seeded offset every step (~1.2 per pixel)",
    )
    g.add_argument(
        "--weights",
        choices=WEIGHTS,
        help="window weights in the average: uniform (the paper's; the grid's default) or gaussian (Mixture of "
        "Diffusers; the shifted placement's default)",
    )
    add_sampling_options(p)
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from multidiffusion.files.metadata import check_output_path
    from multidiffusion.files.scene import parse_scene
    from multidiffusion.generation import run_and_save

    output = check_output_path(args.output, "--output")
    stored = stored_settings(args, "panorama")
    given = flag_values(args, FLAGS)
    values = {**(stored_data(args, stored, given) if stored else {}), **given}
    if not values.get("prompt"):
        fail("a prompt is required (or --from an image we wrote)")
    origin = Origin.stored(f"--from {args.from_png}") if stored else Origin.typed()
    try:  # every check that needs no model, before minutes of loading; a PNG's settings name no file
        options = parse_scene({**values, "task": "panorama"}, source="", origin=origin).options
    except ValueError as exc:
        fail(with_flag(str(exc), FLAGS, given))
    nets = control_net_choice(
        args, options.control_image, f"--from {args.from_png}" if stored else "", needs_image=True
    )
    lora_choice(args, stored, options)
    model, allow_pickle, model_options = model_choice(args, stored)
    md = load_model(model, args, allow_pickle, nets, **model_options)
    preflight(md, options, args)
    report(run_and_save(md, options, output))
