"""What the verbs that take an input image share (``img2img``, ``upscale``, ``inpaint``,
``outpaint``): their flags, where the settings come from and the run.

Settings come from one of three places, with the flags on top: the flags alone, a scene file
(``--scene FILE``, whose ``task`` must be the verb's; its file names are relative to it and
confined to its folder) or a PNG we wrote (``--from PNG``: the input files it recorded are never
read from it, the user gives them again; see :mod:`multidiffusion.io.trust`). All three go through
:func:`~multidiffusion.files.scene.parse_scene`, so a bad value gets the options layer's message,
with the flag that gave it or the file that held it.
"""

from __future__ import annotations

import argparse
from typing import Any

from multidiffusion.cli.common import (
    add_model_options,
    add_sampling_options,
    fail,
    flag_values,
    in_context,
    load_model,
    preflight,
    report,
    scene_file,
    typed_file,
    window_type,
)
from multidiffusion.cli.sources import (
    control_net_choice,
    lora_choice,
    model_choice,
    same_input,
    stored_data,
    stored_settings,
)
from multidiffusion.conditionings import image_fields
from multidiffusion.io.trust import Origin
from multidiffusion.options import PLACEMENTS, UPSCALE_FILTERS, WEIGHTS, input_fields

__all__ = [
    "DERIVED_SIZE",
    "INPUTS",
    "add_common_options",
    "add_image_options",
    "add_scene_options",
    "add_window_options",
    "image_parser",
    "run_image_task",
]

INPUTS = tuple(k for k in input_fields() if k not in image_fields())  # the tasks' own: image, mask
"""Flags (and API names) that are input image files."""
DERIVED_SIZE = ("upscale", "outpaint")
"""Tasks whose canvas follows from the input and their settings (a stored size is not reused)."""


def image_parser(p: argparse.ArgumentParser, task: str) -> None:
    """The verb's parser runs ``task`` (a scene file or --from PNG of another task is refused)."""
    p.set_defaults(task=task)


def add_image_options(p: argparse.ArgumentParser, strength: float, strength_help: str = "") -> argparse._ArgumentGroup:
    """-i/--image and --strength (and the group, for the task's own input flags)."""
    g = p.add_argument_group("input")
    g.add_argument(
        "-i",
        "--image",
        metavar="FILE",
        help="the input image (PNG, JPEG, WebP, BMP, TIFF, GIF); the result's PNG records its name and SHA-256 (--from "
        "asks for it again: a PNG's settings never read a file)",
    )
    g.add_argument(
        "--strength",
        type=float,
        metavar="S",
        help=strength_help
        or f"how much of the image is re-worked, in (0, 1]: the fraction of the steps that run (default {strength:g})",
    )
    return g


def add_window_options(g: argparse._ArgumentGroup, resize: bool) -> None:
    """--width/--height (when the canvas may resize the input), --window, --stride, --circular,
    --placement, --weights: the panorama's windows over the input's canvas."""
    if resize:
        g.add_argument(
            "--width",
            type=int,
            help="resize the input to this width, a multiple of 8 (default: the image's, rounded down)",
        )
        g.add_argument(
            "--height",
            type=int,
            help="resize the input to this height, a multiple of 8 (default: the image's, rounded down)",
        )
    g.add_argument("--window", type=window_type, help="window in latent pixels, N or HxW (default: the model's native)")
    g.add_argument(
        "--stride",
        type=window_type,
        help="window stride in latent pixels (default: window / 8 on the grid, 7/8 window when shifted)",
    )
    g.add_argument(
        "--circular", action="store_true", default=None, help="wrap around the horizontal edge (360 degrees)"
    )
    g.add_argument(
        "--placement",
        choices=PLACEMENTS,
        help="grid: the paper's sliding windows (default); shifted: the fast mode, windows overlapping by 1/8 at a "
        "fresh seeded offset every step (~1.2 model evaluations per pixel instead of ~7)",
    )
    g.add_argument(
        "--weights",
        choices=WEIGHTS,
        help="window weights: uniform (the paper's; the grid's default) or gaussian (the shifted placement's default)",
    )


def add_scene_options(p: argparse.ArgumentParser, task: str) -> None:
    g = p.add_argument_group("scene file")
    g.add_argument(
        "--scene",
        metavar="FILE",
        help=f'a scene file (.toml or .json) with task = "{task}": settings by their Python API names, input files '
        "relative to it; flags override it",
    )
    g.add_argument(
        "--allow-outside-files",
        action="store_true",
        help="let the scene file read files outside its own folder (refused by default)",
    )


def add_common_options(p: argparse.ArgumentParser) -> None:
    """The sampling and model flags every verb has."""
    add_sampling_options(p)
    add_model_options(p)


def _typed(given: dict[str, Any]) -> dict[str, Any]:
    """Typed file names as absolute paths (see :func:`~multidiffusion.cli.common.typed_file`); an
    upscaler that is not a filter name is a file too."""
    for key in INPUTS:
        if key in given:
            given[key] = typed_file(given[key])
    upscaler = given.get("upscaler")
    if isinstance(upscaler, str) and upscaler.lower() not in UPSCALE_FILTERS:
        given["upscaler"] = typed_file(upscaler)
    return given


def run_image_task(args: argparse.Namespace, flags: dict[str, str], inputs: tuple[str, ...] = ("image",)) -> None:
    """Build the task's options from the flags, --scene or --from, load the model, run and save."""
    from multidiffusion.files.metadata import check_output_path
    from multidiffusion.files.scene import parse_scene
    from multidiffusion.generation import run_and_save

    task: str = args.task
    output = check_output_path(args.output, "--output")
    if args.scene and args.from_png:
        fail("give --scene FILE or --from PNG, not both")
    stored = stored_settings(args, task)
    given = _typed(flag_values(args, flags))
    data: dict[str, Any] = {"task": task}
    base, source = None, ""
    if args.scene:
        data, base, source = scene_file(args.scene, task)
    elif stored is not None:
        data = {"task": task, **stored_data(args, stored, given)}
        source = f"--from {args.from_png}"
        if task in DERIVED_SIZE or not same_input(
            stored, "image", given.get("image")
        ):  # the canvas follows a new input
            data.pop("height", None)
            data.pop("width", None)
        for key, name in stored.files.items():
            if key not in given:
                fail(
                    f"{source}: the image was made with the {key} {name!r}, a file; pass --{key} FILE to use it "
                    "(settings stored in a PNG never name files to load)"
                )
    values = {**data, **given}
    for key in inputs:
        if values.get(key) is None:
            fail(f"an input {key} is required: --{key} FILE (or --scene FILE, or --from an image we wrote)")
    if task != "upscale" and not values.get("prompt"):
        fail("a prompt is required (or --scene FILE, or --from an image we wrote)")
    origin = (
        Origin.file(base, "", bool(getattr(args, "allow_outside_files", False)))
        if base is not None
        else Origin.stored(source)
        if stored is not None
        else Origin.typed()
    )
    try:  # every check that needs no model (input files read and checked), before minutes of loading
        scene = parse_scene(values, source="", allow_pickle=bool(args.allow_pickle), origin=origin)
    except ValueError as exc:
        fail(in_context(str(exc), flags, given, source))
    needs_image = not scene.options.input_control  # an upscale's Tile ControlNet takes its input
    nets = control_net_choice(args, scene.options.control_image, source, scene=scene, needs_image=needs_image)
    lora_choice(args, stored, scene.options, scene)
    model, allow_pickle, model_options = model_choice(args, stored, scene)
    md = load_model(model, args, allow_pickle, nets, **model_options)
    preflight(md, scene.options, args)
    report(run_and_save(md, scene.options, output))
