"""``multidiffusion outpaint``: extend an image beyond its borders."""

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

HELP = """\
Outpaint: extend the image by --left, --right, --top and --bottom pixels (multiples of 8) under the
prompt. The image is kept; its last --overlap pixels towards each new side are repainted so the seam
blends. With --circular the canvas wraps around: a photo extended left and right becomes a seamless
360-degree panorama.

examples:
  multidiffusion outpaint --model demo -i examples/demo/images/mountains.png --left 32 --right 32 \\
      "snowy mountains above a green meadow under a clear blue sky" --steps 20 -o wide.png
  multidiffusion outpaint -i photo.png --right 1024 "a photo of the dolomites" \\
      --model stabilityai/stable-diffusion-2-base --placement shifted -o wider.png
  multidiffusion outpaint --from wide.png -i examples/demo/images/mountains.png \\
      --right 64 -o wider.png   # its settings; the input given again
"""

FLAGS = {
    "prompt": "prompt",
    **SAMPLING_FLAGS,
    "placement": "placement",
    "weights": "weights",
    "image": "image",
    "strength": "strength",
    "left": "left",
    "right": "right",
    "top": "top",
    "bottom": "bottom",
    "overlap": "overlap",
    "mask_blur": "mask_blur",
}
"""Command-line flag (argparse dest) -> API argument (and key in the PNG's stored parameters)."""


def register(p: argparse.ArgumentParser) -> None:
    image_parser(p, "outpaint")
    p.add_argument("prompt", nargs="?", help="what the extended image shows")
    g = add_image_options(p, strength=1.0)
    for side in ("left", "right", "top", "bottom"):
        g.add_argument(f"--{side}", type=int, metavar="PX", help=f"pixels to add on the {side}, a multiple of 8")
    g.add_argument(
        "--overlap",
        type=int,
        metavar="PX",
        help="pixels of the image along each new side repainted to blend (default 16)",
    )
    g.add_argument("--mask-blur", type=int, metavar="PX", help="feather the repainted area's edge (default 8)")
    add_window_options(p.add_argument_group("canvas"), resize=False)
    add_scene_options(p, "outpaint")
    add_common_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    run_image_task(args, FLAGS)
