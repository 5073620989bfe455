"""``multidiffusion regions``: an image whose regions follow their own prompts (scene files, boxes,
masks, segmentation maps)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from multidiffusion.cli.common import (
    SAMPLING_FLAGS,
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
from multidiffusion.cli.sources import control_net_choice, lora_choice, model_choice, stored_data, stored_settings
from multidiffusion.files.metadata import StoredSettings
from multidiffusion.files.scene import Scene, parse_region, parse_scene, read_scene_file
from multidiffusion.io.trust import Origin

HELP = """\
Generate an image from a region layout: each region gets its own prompt, the background prompt takes
the rest (MultiDiffusion, Bar-Tal et al. 2023, Sec. 4.2). Give a scene file (TOML or JSON, fields
named as in the Python API: see examples/regions/), or quick flags; flags override the scene.

examples:
  multidiffusion regions examples/demo/boxes.toml -o boxes.png --preview
  multidiffusion regions --model demo --background "a snowy field at sunset" --region "a yellow sun" \\
      --box 0.6,0.05,0.8,0.3 --region "a red house" --mask examples/demo/masks/house.png --feather 2 \\
      --width 128 --height 64 -o house.png
  multidiffusion regions --model demo --segmentation examples/demo/masks/lake.png --width 256 --height 64 \\
      --colors \\
      "#87ceeb=an orange sunset sky;#808080=snowy mountains;#228b22=a green meadow;#1e90ff=a calm lake" -o lake.png
  multidiffusion regions --from boxes.png --seed 2 -o again.png   # rerun a stored scene with changes
  multidiffusion regions examples/demo/masks.toml -i examples/demo/images/mountains.png --strength 0.8 -o night.png
"""

FLAGS = {
    "background": "background",
    "bootstrap_steps": "bootstrap_steps",
    "bootstrap_centre": "bootstrap_centre",
    "mask_schedule": "mask_schedule",
    **SAMPLING_FLAGS,
    "image": "image",
    "strength": "strength",
}
"""Command-line flag (argparse dest) -> scene field (the API's argument name)."""
REGION_FLAGS = {"--region": "prompt", "--box": "box", "--mask": "mask", "--feather": "feather"}


class RegionAction(argparse.Action):
    """--region PROMPT starts a region; --box, --mask and --feather that follow it belong to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        specs = list(getattr(namespace, self.dest) or [])
        key = REGION_FLAGS[option_string]
        if key == "prompt":
            specs.append({"prompt": values})
        elif not specs:
            parser.error(f"{option_string} must follow a --region PROMPT")
        elif key in specs[-1]:
            parser.error(f"--region {specs[-1]['prompt']!r} has two {option_string} options")
        else:
            specs[-1][key] = values
        setattr(namespace, self.dest, specs)


def box_type(text: str) -> list[int] | list[float]:
    """'x0,y0,x1,y1': integers are pixels, anything with a '.' fractions of the canvas."""
    parts = text.split(",")
    try:
        if len(parts) != 4:
            raise ValueError
        return [float(p) for p in parts] if "." in text else [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected x0,y0,x1,y1 (pixels as integers, or fractions like 0.1,0.5,0.4,0.9), got {text!r}"
        ) from None


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("scene", nargs="?", help="scene file (.toml or .json); flags override its settings")
    _layout_flags(p.add_argument_group("layout"))
    g = p.add_argument_group("input image (optional)")
    g.add_argument(
        "-i",
        "--image",
        metavar="FILE",
        help="re-work this image under the layout instead of starting from noise (the canvas defaults to its size); "
        "the result's PNG records its path and SHA-256",
    )
    g.add_argument(
        "--strength",
        type=float,
        metavar="S",
        help="with --image: how much of it is re-worked, in (0, 1]: the fraction of the steps that run (default 0.75)",
    )
    g = p.add_argument_group("canvas")
    g.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    g.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    g.add_argument("--window", type=window_type, help="window in latent pixels, N or HxW (default: the model's native)")
    g.add_argument("--stride", type=window_type, help="window stride in latent pixels (default: window / 8)")
    g.add_argument("--circular", action="store_true", default=None, help="wrap around the horizontal edge")
    add_sampling_options(p)
    add_model_options(p)
    p.set_defaults(run=run, region_specs=None)


def _layout_flags(g: argparse._ArgumentGroup) -> None:
    """The layout's flags: the background, the regions (--region and what follows it), a colour map,
    bootstrapping and the preview."""
    g.add_argument("--background", help="prompt for everything outside the regions")
    g.add_argument("--region", dest="region_specs", action=RegionAction, metavar="PROMPT", help="a region's prompt")
    g.add_argument(
        "--box",
        dest="region_specs",
        action=RegionAction,
        type=box_type,
        metavar="X0,Y0,X1,Y1",
        help="the last --region's box: pixels (integers) or fractions of the canvas (0.1,0.5,0.4,0.9)",
    )
    g.add_argument(
        "--mask",
        dest="region_specs",
        action=RegionAction,
        metavar="FILE",
        help="the last --region's mask image (white: the region), canvas size or aspect ratio",
    )
    g.add_argument(
        "--feather",
        dest="region_specs",
        action=RegionAction,
        type=float,
        metavar="PX",
        help="soften the last --region's edges by about PX pixels",
    )
    g.add_argument("--segmentation", metavar="MAP", help="colour-coded layout image, one prompt per colour")
    g.add_argument(
        "--colors",
        metavar="TABLE",
        help="the map's colours: a .toml/.json file or '#ff0000=a red car;#00ff00=grass' "
        "(an empty prompt leaves a colour to the background)",
    )
    g.add_argument(
        "--bootstrap-steps",
        type=int,
        metavar="N",
        help="steps that denoise each region over a random plain background (default 40%% of the steps)",
    )
    g.add_argument(
        "--bootstrap-centre",
        action="store_true",
        default=None,
        help="while bootstrapping, draw each region at its view's centre and move it back (few steps)",
    )
    g.add_argument(
        "--mask-schedule",
        choices=("soft", "quantized"),
        help="quantized: threshold the region masks at each step's noise level (few steps; default soft)",
    )
    g.add_argument(
        "--preview",
        action="store_true",
        help="also write the layout as OUTPUT-layout.png, before the model loads (--preview-only: without generating)",
    )
    g.add_argument("--preview-only", action="store_true", help="write only the layout preview; load no model")
    g.add_argument(
        "--allow-outside-files",
        action="store_true",
        help="let a scene file read masks, maps and images outside its own folder (refused by default)",
    )


def _colour_table(text: str) -> dict[str, Any]:
    if Path(text).suffix.lower() in (".toml", ".json"):
        return read_scene_file(text)
    table = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        colour, sep, prompt = item.partition("=")
        if not sep:
            raise ValueError(f"--colors: expected COLOR=PROMPT items separated by ';', got {item!r}")
        table[colour.strip()] = prompt.strip()
    return table


def _scene(args: argparse.Namespace) -> tuple[Scene, StoredSettings | None]:
    """The scene as given (file, --from PNG or flags alone) with the flags on top."""
    if args.scene and args.from_png:
        fail("give a scene file or --from PNG, not both")
    data: dict[str, Any] = {}
    base, source = None, ""
    stored = stored_settings(args, "regions")
    if args.scene:
        data, base, source = scene_file(args.scene, "regions")
    given = flag_values(args, FLAGS)
    if "image" in given:
        given["image"] = typed_file(given["image"])  # the user's own file, read as given
    if not args.scene and stored is not None:
        data, source = stored_data(args, stored, given), f"--from {args.from_png}"
    data.update(given)
    if args.segmentation or args.colors:
        if not (args.segmentation and args.colors):
            fail("--segmentation MAP and --colors TABLE go together")
        data["segmentation"] = {"map": typed_file(args.segmentation), "colors": _colour_table(args.colors)}
    flag_regions = [
        parse_region(spec, f"--region {spec['prompt']!r}") for spec in (args.region_specs or [])
    ]  # typed paths: the user's own, read as given
    if flag_regions:
        data["regions"] = [*(data.get("regions") or []), *flag_regions]
    nothing = not data.get("regions") and not data.get("background") and not data.get("segmentation")
    origin = (
        Origin.file(base, "", args.allow_outside_files)
        if base is not None
        else Origin.stored(source)
        if stored is not None
        else Origin.typed()
    )
    empty = "nothing to draw: give a scene file, --from PNG, or --background and --region PROMPT --box/--mask"
    try:  # with nothing to draw, still read the scene first: a misspelled field is the likelier story
        scene = parse_scene(data, source="", origin=origin)
    except ValueError as exc:
        fail(in_context(str(exc), FLAGS, given, source) if not nothing or "unknown setting" in str(exc) else empty)
    if nothing:
        fail(empty)
    return scene, stored


def _check_layout(scene: Scene) -> None:
    """Each region on the canvas, before minutes of loading (masks load once: Region caches them)."""
    o = scene.options
    if o.height and o.width:
        for i, region in enumerate(o.regions):
            region.pixel_mask(o.height, o.width, f"regions[{i}]")


def run(args: argparse.Namespace) -> None:
    from multidiffusion.files.metadata import check_output_path, save_png
    from multidiffusion.generation import run_and_save
    from multidiffusion.regions.layout import layout_preview

    output = check_output_path(args.output, "--output")
    preview = output.with_name(f"{output.stem}-layout.png") if args.preview or args.preview_only else None
    if preview is not None:
        check_output_path(preview, "--preview")
    scene, stored = _scene(args)
    options = scene.options
    _check_layout(scene)
    count = f"{len(options.regions)} region{'s' if len(options.regions) != 1 else ''}"
    sized = bool(options.height and options.width)
    if args.preview_only:
        if not sized:
            fail("--preview-only needs the canvas size (--width and --height, or in the scene)")
        save_png(layout_preview(options.regions, options.height, options.width, options.background), preview)
        print(f"wrote {preview} ({options.width}x{options.height} layout of {count})")
        return
    regional = any(r.control_image is not None for r in options.regions)
    source = args.scene or (f"--from {args.from_png}" if stored else "")
    nets = control_net_choice(args, options.control_image, source, regional, scene, needs_image=True)
    lora_choice(args, stored, options, scene)
    model, allow_pickle, model_options = model_choice(args, stored, scene)
    if preview is not None and sized:  # every check passed: before loading, so the layout can be checked
        save_png(layout_preview(options.regions, options.height, options.width, options.background), preview)
        print(f"wrote {preview} (layout of {count}; loading the model...)", flush=True)
    md = load_model(model, args, allow_pickle, nets, **model_options)
    layout = md.region_layout(options.height, options.width, options.background, options.regions)
    if preview is not None:  # again on the model's own latent grid (and its canvas, when none was given)
        save_png(layout.preview(), preview)
        if not sized:
            print(f"wrote {preview} (layout of {count}; generating...)")
    preflight(md, options, args, layout=layout)
    report(run_and_save(md, options, output, layout=layout), [preview] if preview is not None else [])
