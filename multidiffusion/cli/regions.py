"""``multidiffusion regions``: an image whose regions follow their own prompts (scene files, boxes,
masks, segmentation maps)."""

from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path
from typing import Any

from multidiffusion.cli.common import (
    add_model_options,
    add_sampling_options,
    fail,
    load_model,
    numbered_outputs,
    stored_settings,
    window_type,
)

HELP = """\
Generate an image from a region layout: each region gets its own prompt, the background prompt takes
the rest (MultiDiffusion, Bar-Tal et al. 2023, Sec. 4.2). Give a scene file (TOML or JSON, fields
named as in the Python API: see examples/regions/), or quick flags; flags override the scene.

examples:
  multidiffusion regions examples/regions/beach.toml -o beach.png --preview
  multidiffusion regions --background "a beach at sunset" --region "a red ball" --box 0.1,0.5,0.4,0.9 \\
      --region "a palm tree" --mask palm.png --feather 16 -o beach.png
  multidiffusion regions --segmentation layout.png --colors "#ff0000=a red car;#000000=a street" -o car.png
  multidiffusion regions --from beach.png --seed 2 -o again.png   # rerun a stored scene with changes
"""

# command-line flag -> scene field (the API's argument name)
FLAGS = {
    "background": "background",
    "negative": "negative_prompt",
    "width": "width",
    "height": "height",
    "window": "window",
    "stride": "stride",
    "circular": "circular",
    "bootstrap_steps": "bootstrap_steps",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "seed": "seed",
    "scheduler": "scheduler",
    "batch_size": "view_batch_size",
    "num_images": "num_images_per_prompt",
    "model": "model",
}
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "regions",
        help="generate an image whose regions follow their own prompts",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scene", nargs="?", help="scene file (.toml or .json); flags override its settings")
    g = p.add_argument_group("layout")
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
    g.add_argument("--preview", action="store_true", help="also write the layout as OUTPUT-layout.png")
    g.add_argument("--preview-only", action="store_true", help="write only the layout preview; load no model")
    g = p.add_argument_group("canvas")
    g.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    g.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    g.add_argument("--window", type=window_type, help="window in latent pixels, N or HxW (default: the model's native)")
    g.add_argument("--stride", type=window_type, help="window stride in latent pixels (default: window / 8)")
    g.add_argument("--circular", action="store_true", default=None, help="wrap around the horizontal edge")
    add_sampling_options(p)
    add_model_options(p)
    p.set_defaults(run=run, region_specs=None)


def _colour_table(text: str) -> dict[str, Any]:
    from multidiffusion.regions.scene import read_scene_file

    if Path(text).suffix.lower() in (".toml", ".json"):
        return read_scene_file(text)
    table = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        colour, sep, prompt = item.partition("=")
        if not sep:
            raise ValueError(f"--colors: expected COLOR=PROMPT items separated by ';', got {item!r}")
        table[colour.strip()] = prompt.strip()
    return table


def _scene_data(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None, str, dict[str, str]]:
    """The scene as given (file or --from PNG) with the flags on top, its folder, name and flag names."""
    from multidiffusion.regions.scene import read_scene_file

    if args.scene and args.from_png:
        fail("give a scene file or --from PNG, not both")
    data: dict[str, Any] = {}
    base, source = None, "scene"
    if args.scene:
        data, base, source = read_scene_file(args.scene), Path(args.scene).expanduser().parent, Path(args.scene).name
    elif args.from_png:
        data, source = stored_settings(args, "regions"), f"--from {args.from_png}"
    names = {}
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            data[key] = list(value) if isinstance(value, tuple) else value
            names[key] = "--" + flag.replace("_", "-")
    if args.segmentation or args.colors:
        if not (args.segmentation and args.colors):
            fail("--segmentation MAP and --colors TABLE go together")
        data["segmentation"] = {"map": str(Path(args.segmentation).resolve()), "colors": _colour_table(args.colors)}
    return data, base, source, names


def _flag_regions(args: argparse.Namespace) -> list:
    from multidiffusion.regions.scene import parse_region

    regions = []
    for spec in args.region_specs or []:
        if "mask" in spec:
            spec = {**spec, "mask": str(Path(spec["mask"]).expanduser().resolve())}
        regions.append(parse_region(spec, f"--region {spec['prompt']!r}"))
    return regions


def run(args: argparse.Namespace) -> None:
    import torch

    from multidiffusion.metadata import check_output_path, save_png
    from multidiffusion.regions.preview import layout_preview
    from multidiffusion.regions.scene import parse_scene

    output = check_output_path(args.output, "--output")
    preview = output.with_name(f"{output.stem}-layout.png") if args.preview or args.preview_only else None
    if preview is not None:
        check_output_path(preview, "--preview")
    data, base, source, names = _scene_data(args)
    scene = parse_scene(data, base=base, source=source, names=names)
    scene.arguments["regions"] += _flag_regions(args)
    kwargs = scene.arguments
    if not kwargs["regions"] and not kwargs.get("background"):
        fail("nothing to draw: give a scene file, --from PNG, or --background and --region PROMPT --box/--mask")
    height, width = kwargs.get("height"), kwargs.get("width")
    if height and width:  # the layout's errors before minutes of loading (latent grid of SD, f = 8)
        try:
            image = layout_preview(kwargs["regions"], height, width, kwargs.get("background"))
        except ValueError as exc:
            fail(f"{source}: {exc}" if args.scene else str(exc))
    if args.preview_only:
        if not (height and width):
            fail("--preview-only needs the canvas size (--width and --height, or in the scene)")
        save_png(image, preview)  # no parameters: a preview is not an image to re-run
        print(f"wrote {preview} ({width}x{height} layout of {len(kwargs['regions'])} regions)")
        return
    seed = secrets.randbelow(2**32) if scene.seed is None else scene.seed
    md = load_model(scene.model, args)
    start = time.perf_counter()
    out = md.regions(generator=torch.Generator("cpu").manual_seed(seed), **kwargs)
    elapsed = time.perf_counter() - start
    paths = numbered_outputs(output, len(out.images))
    for path in paths[1:]:
        check_output_path(path, "--output")
    for i, (image, path) in enumerate(zip(out.images, paths)):
        save_png(image, path, {**out.parameters, "image_index": i})
    written = [str(p) for p in paths]
    if preview is not None:
        layout = md.region_layout(
            out.parameters["height"], out.parameters["width"], kwargs.get("background"), kwargs["regions"]
        )
        save_png(layout.preview(), preview)
        written.append(str(preview))
    w, h = out.images[0].size
    print(f"wrote {', '.join(written)} ({w}x{h}, {elapsed:.1f} s, {out.stats.model_calls} model calls)")
