"""``multidiffusion edit``: edit an image of any size as a prompt instructs, with an editing model
(Qwen-Image-Edit), each window given its crop of the image as the model's reference."""

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
Edit an image as the prompt instructs, with an editing model (Qwen-Image-Edit): the canvas is the
image's size and MultiDiffusion's windows cover it, each window given its crop of the image as the
model's reference, so an image larger than the model's native size (a 4K photo) is edited tile by
tile. The prompt is encoded once with the whole image. --whole-reference also shows every window
the whole image at the model's reference size. --strength below 1 starts from the image noised.

examples:
  multidiffusion edit -i photo.png "make the sky a sunset" --model Qwen/Qwen-Image-Edit -o sunset.png
  multidiffusion edit -i photo.png "turn the cars red" --model Qwen/Qwen-Image-Edit --whole-reference \\
      --placement shifted -o red.png
  multidiffusion edit --from sunset.png -i photo.png -o again.png   # its settings; the input given again
"""

FLAGS = {
    "prompt": "prompt",
    **SAMPLING_FLAGS,
    "placement": "placement",
    "weights": "weights",
    "image": "image",
    "strength": "strength",
    "whole_reference": "whole_reference",
}
"""Command-line flag (argparse dest) -> API argument (and key in the PNG's stored parameters)."""


def register(p: argparse.ArgumentParser) -> None:
    image_parser(p, "edit")
    p.add_argument("prompt", nargs="?", help="the edit instruction")
    g = add_image_options(
        p, strength=1.0, strength_help="below 1: start from the image noised to that step (default 1: from noise)"
    )
    g.add_argument(
        "--whole-reference",
        action="store_true",
        default=None,
        help="also give every window the whole image, at the model's reference size, as a second reference",
    )
    add_window_options(p.add_argument_group("canvas"), resize=True)
    add_scene_options(p, "edit")
    add_common_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    run_image_task(args, FLAGS)
