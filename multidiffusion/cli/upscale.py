"""``multidiffusion upscale``: an image made larger, then re-worked by MultiDiffusion at low strength."""

from __future__ import annotations

import argparse

from multidiffusion.cli.common import SAMPLING_FLAGS
from multidiffusion.cli.images import (
    add_common_options,
    add_image_options,
    add_scene_options,
    add_window_options,
    image_parser,
    run_image_task,
)
from multidiffusion.options import MAX_SCALE, UPSCALE_FILTERS

HELP = f"""\
Upscale an image: resized --scale times (1 to {MAX_SCALE:g}) by --upscaler (a resampling filter, or an
ESRGAN-family model file read by spandrel), then re-worked from --strength (default 0.35) over
MultiDiffusion's windows, encoded and decoded in tiles: memory follows the window, not the image.
The prompt is optional; --placement shifted (the fast mode) pays most here.

examples:
  multidiffusion upscale --model demo -i examples/demo/images/mountains.png --scale 2 \\
      "snowy mountains above a green meadow" --steps 20 -o big.png
  multidiffusion upscale -i photo.png --scale 4 --upscaler 4x-UltraSharp.safetensors --placement shifted \\
      --model stabilityai/stable-diffusion-2-base -o photo-4x.png
  multidiffusion upscale --from big.png -i examples/demo/images/mountains.png \\
      --noise-inversion -o again.png   # its settings; the input given again
"""

FLAGS = {
    "prompt": "prompt",
    **SAMPLING_FLAGS,
    "placement": "placement",
    "weights": "weights",
    "image": "image",
    "strength": "strength",
    "scale": "scale",
    "upscaler": "upscaler",
    "noise_inversion": "noise_inversion",
    "inversion_steps": "inversion_steps",
}
"""Command-line flag (argparse dest) -> API argument (and key in the PNG's stored parameters)."""


def register(p: argparse.ArgumentParser) -> None:
    image_parser(p, "upscale")
    p.add_argument("prompt", nargs="?", help="what the image shows (optional)")
    g = add_image_options(p, strength=0.35)
    g.add_argument("--scale", type=float, help=f"how many times larger, 1 to {MAX_SCALE:g} (default 2)")
    g.add_argument(
        "--upscaler",
        metavar="NAME|FILE",
        help=f"{', '.join(UPSCALE_FILTERS)} (default lanczos), or an upscaler model file (.safetensors; .pth "
        "only with --allow-pickle)",
    )
    g.add_argument(
        "--noise-inversion",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start from a DDIM inversion of the resized image instead of fresh noise (keeps more detail; costs "
        "--inversion-steps more model steps)",
    )
    g.add_argument("--inversion-steps", type=int, metavar="N", help="inversion steps (default: the steps that run)")
    add_window_options(p.add_argument_group("canvas"), resize=False)
    add_scene_options(p, "upscale")
    add_common_options(p)
    for action in p._actions:
        if action.dest == "allow_pickle":
            action.help = "allow pickle weights (.ckpt/.bin/.pt/.pth) for --model and --upscaler: they can run code"
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    run_image_task(args, FLAGS)
