"""``multidiffusion inpaint``: repaint the masked part of an image of any size."""

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
Inpaint: repaint the white part of --mask in the image under the prompt and keep the rest (with any
model the known image is blended back after every step; a 9-channel inpainting UNet also sees the
mask in every window). The image may be any size; the mask must have its size or aspect ratio.

examples:
  multidiffusion inpaint --model demo -i examples/demo/images/mountains.png --mask examples/demo/images/sky.png \\
      "a starry night sky" --steps 20 -o night.png
  multidiffusion inpaint --scene examples/demo/inpaint.toml -o sunset.png   # image, mask and prompt in a file
  multidiffusion inpaint -i room.png --mask sofa.png "a green velvet sofa" \\
      --model stabilityai/stable-diffusion-2-inpainting -o sofa.png
  multidiffusion inpaint --from night.png -i examples/demo/images/mountains.png --mask examples/demo/images/sky.png \\
      --seed 2 -o again.png   # its settings; a PNG's settings never read a file: the inputs are given again
"""

FLAGS = {
    "prompt": "prompt",
    **SAMPLING_FLAGS,
    "placement": "placement",
    "weights": "weights",
    "image": "image",
    "strength": "strength",
    "mask": "mask",
    "mask_blur": "mask_blur",
}
"""Command-line flag (argparse dest) -> API argument (and key in the PNG's stored parameters)."""


def register(p: argparse.ArgumentParser) -> None:
    image_parser(p, "inpaint")
    p.add_argument("prompt", nargs="?", help="what the masked part should show")
    g = add_image_options(p, strength=1.0)
    g.add_argument(
        "--mask", metavar="FILE", help="white: repaint, black: keep; the image's size or at least its aspect ratio"
    )
    g.add_argument("--mask-blur", type=int, metavar="PX", help="feather the mask's edge by PX pixels (default 4)")
    add_window_options(p.add_argument_group("canvas"), resize=True)
    add_scene_options(p, "inpaint")
    add_common_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    run_image_task(args, FLAGS, inputs=("image", "mask"))
