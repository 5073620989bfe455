"""``multidiffusion img2img``: re-work an image of any size under a prompt (SDEdit over windows)."""

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
Re-work an image under a prompt: the image is encoded, noised to the step --strength says (0.75 runs
the last 75 % of the steps) and denoised with MultiDiffusion's windows, so it may be any size. The
canvas is the image's size (rounded down to multiples of 8) unless --width/--height resize it.

examples:
  multidiffusion img2img --model demo -i examples/demo/images/mountains.png "snowy mountains under an overcast sky" \\
      --strength 0.8 --steps 20 -o snowy.png
  multidiffusion img2img -i photo.png "a watercolour painting" --model stabilityai/stable-diffusion-2-base \\
      --strength 0.5 --placement shifted -o painting.png
  multidiffusion img2img --from snowy.png -i examples/demo/images/mountains.png \\
      --strength 0.9 -o again.png   # its settings; the input given again
"""

FLAGS = {
    "prompt": "prompt",
    **SAMPLING_FLAGS,
    "placement": "placement",
    "weights": "weights",
    "image": "image",
    "strength": "strength",
}
"""Command-line flag (argparse dest) -> API argument (and key in the PNG's stored parameters)."""


def register(p: argparse.ArgumentParser) -> None:
    image_parser(p, "img2img")
    p.add_argument("prompt", nargs="?", help="what the image should show")
    add_image_options(p, strength=0.75)
    add_window_options(p.add_argument_group("canvas"), resize=True)
    add_scene_options(p, "img2img")
    add_common_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    run_image_task(args, FLAGS)
