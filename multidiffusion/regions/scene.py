"""Scene files: a region layout with its canvas, model and sampling settings, in TOML or JSON, so a
layout can be versioned and re-run (``multidiffusion regions scene.toml -o out.png``).

Fields use the Python API's names (those of :meth:`MultiDiffusion.regions`), and the parameters we
store in a PNG are a scene too (masks inlined as PNG data URIs), so ``--from out.png`` re-runs it::

    model = "demo"                     # optional: 'demo', a repo id, a folder or a .safetensors file
    width = 512                        # canvas in pixels (default: the model's native size)
    height = 512
    background = "a photo of a beach at sunset"
    negative_prompt = "blurry"         # the background's, and the regions' default
    num_inference_steps = 50           # also: guidance_scale, bootstrap_steps, window, stride,
    seed = 1                           #   circular, view_batch_size, num_images_per_prompt,
                                       #   scheduler, eta
    [[regions]]
    prompt = "a red ball"
    mask = "masks/ball.png"            # relative to the scene file
    [[regions]]
    prompt = "a golden retriever"
    box = [0.1, 0.5, 0.5, 0.95]        # floats: fractions of the canvas; integers: pixels
    feather = 16                       # also: negative_prompt, weight, guidance_scale

    [segmentation]                     # optional: a colour-coded map, one prompt per colour
    map = "masks/layout.png"
    colors = { "#ff0000" = "a red car", "#000000" = "" }   # "" leaves a colour to the background

Unknown fields and wrong types are errors that name the field (``scene.toml: regions[1].box ...``).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multidiffusion.options import MAX_STEPS, check_int, check_number, check_side, pair
from multidiffusion.regions.layout import MAX_REGIONS, Region

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["REGION_FIELDS", "SCENE_FIELDS", "Scene", "load_scene", "parse_region", "parse_scene", "read_scene_file"]

SCENE_FIELDS: dict[str, str] = {
    "model": "a string",
    "width": "an integer (pixels)",
    "height": "an integer (pixels)",
    "background": "a string",
    "negative_prompt": "a string",
    "regions": "a list of region tables",
    "segmentation": "a table with map and colors",
    "bootstrap_steps": "an integer",
    "num_inference_steps": "an integer",
    "guidance_scale": "a number",
    "window": "an integer or [rows, columns]",
    "stride": "an integer or [rows, columns]",
    "circular": "a boolean",
    "view_batch_size": "an integer",
    "num_images_per_prompt": "an integer",
    "seed": "an integer",
    "scheduler": "a string",
    "eta": "a number",
}
REGION_FIELDS: dict[str, str] = {
    "prompt": "a string",
    "negative_prompt": "a string",
    "mask": "a string (image file or PNG data URI)",
    "box": "a list of 4 numbers",
    "feather": "a number",
    "weight": "a number",
    "guidance_scale": "a number",
}
SEGMENTATION_FIELDS: dict[str, str] = {"map": "a string (image file)", "colors": "a table of colour = prompt"}
METADATA_ONLY = ("mode", "multidiffusion_version", "image_index")
"""Keys of the parameters we store in PNGs that are not scene settings (ignored when read back)."""


@dataclass
class Scene:
    """A parsed scene: ``arguments`` for :meth:`MultiDiffusion.regions` (regions as :class:`Region`),
    and the ``model`` and ``seed`` to run it with (None: unset)."""

    arguments: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    seed: int | None = None


def _kind_ok(kind: str, value: Any) -> bool:
    if kind.startswith("a string"):
        return isinstance(value, str)
    if kind.startswith("an integer or"):
        if isinstance(value, list):
            return len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return isinstance(value, int) and not isinstance(value, bool)
    if kind.startswith("an integer"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "a number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "a boolean":
        return isinstance(value, bool)
    if kind.startswith("a list of 4"):
        return isinstance(value, list) and len(value) == 4 and all(_kind_ok("a number", v) for v in value)
    if kind.startswith("a list"):
        return isinstance(value, list)
    return isinstance(value, Mapping)  # tables


def _check_fields(data: Any, fields: Mapping[str, str], where: str, label: Any) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a table, got {data!r}")
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where} has an unknown field {key!r}{hint}; allowed: {', '.join(fields)}")
        if value is not None and not _kind_ok(fields[key], value):
            raise ValueError(f"{label(key)} must be {fields[key]}, got {value!r}")


def _resolve(path: str, base: Path | None) -> str:
    if path.startswith("data:") or base is None or Path(path).expanduser().is_absolute():
        return path
    return str(base / path)


def parse_region(table: Any, where: str, base: Path | None = None) -> Region:
    """A region table (``REGION_FIELDS``) as a :class:`Region`; mask paths are relative to ``base``.
    Errors start with ``where`` (e.g. 'scene.toml: regions[1]')."""
    _check_fields(table, REGION_FIELDS, where, lambda key: f"{where}.{key}")
    if not table.get("prompt"):
        raise ValueError(f"{where} needs a prompt")
    values = {k: v for k, v in table.items() if v is not None}
    if "mask" in values:
        values["mask"] = _resolve(values["mask"], base)
    try:
        return Region(**values)
    except ValueError as exc:
        raise ValueError(f"{where}.{exc}") from None


def _segmentation_regions(table: Any, where: str, base: Path | None) -> list[Region]:
    _check_fields(table, SEGMENTATION_FIELDS, where, lambda key: f"{where}.{key}")
    for key in SEGMENTATION_FIELDS:
        if table.get(key) is None:
            raise ValueError(f"{where} needs {key} ({SEGMENTATION_FIELDS[key]})")
    colors: dict[str, Any] = {}
    for colour, value in table["colors"].items():
        name = f"{where}.colors[{colour!r}]"
        if isinstance(value, Mapping):
            fields = {k: v for k, v in REGION_FIELDS.items() if k not in ("mask", "box")}
            _check_fields(value, fields, name, lambda key, name=name: f"{name}.{key}")
        elif not isinstance(value, str):
            raise ValueError(f"{name} must be a prompt or a table of region fields, got {value!r}")
        colors[colour] = value
    try:
        return Region.from_segmentation(_resolve(table["map"], base), colors)
    except ValueError as exc:
        raise ValueError(f"{where}.{exc}") from None


def parse_scene(
    data: Mapping[str, Any],
    *,
    base: str | os.PathLike | None = None,
    source: str = "scene",
    names: Mapping[str, str] | None = None,
) -> Scene:
    """Validate a scene (a mapping of ``SCENE_FIELDS``) and build its :class:`Scene`.

    ``base``: the folder mask paths are relative to; ``source`` prefixes error messages; ``names``
    renames fields in errors (the command line names its flags).
    """
    names = names or {}
    base_dir = Path(base) if base is not None else None

    def label(key: str) -> str:
        return names.get(key) or f"{source}: {key}"

    data = {k: v for k, v in data.items() if k not in METADATA_ONLY}
    _check_fields(data, SCENE_FIELDS, source, label)
    values = {k: v for k, v in data.items() if v is not None}

    for key in ("width", "height"):
        if key in values:
            check_side(label(key), values[key])
    if "num_inference_steps" in values:
        check_int(label("num_inference_steps"), values["num_inference_steps"], 1, MAX_STEPS)
    if "bootstrap_steps" in values:
        check_int(label("bootstrap_steps"), values["bootstrap_steps"], 0, values.get("num_inference_steps", MAX_STEPS))
    if "guidance_scale" in values:
        check_number(label("guidance_scale"), values["guidance_scale"], 0)
    if "eta" in values:
        check_number(label("eta"), values["eta"], 0, 1)
    if "view_batch_size" in values:
        check_int(label("view_batch_size"), values["view_batch_size"], 1)
    if "num_images_per_prompt" in values:
        check_int(label("num_images_per_prompt"), values["num_images_per_prompt"], 1, 64)
    if "seed" in values:
        check_int(label("seed"), values["seed"], 0, 2**64 - 1)
    window = values.get("window")
    for w in pair(label("window"), window) if window is not None else ():
        check_int(label("window"), w, 8)
    if "stride" in values:
        limits = pair(label("window"), window) if window is not None else (None, None)
        for s, w in zip(pair(label("stride"), values["stride"]), limits):
            check_int(label("stride"), s, 1, w)
    if "scheduler" in values:
        from multidiffusion.engine.schedulers import scheduler_name

        try:
            scheduler_name(values["scheduler"])
        except ValueError as exc:
            raise ValueError(f"{label('scheduler')}: {exc}") from None
    for key in ("background", "negative_prompt"):
        if key in values and not values[key].strip():
            raise ValueError(f"{label(key)} must not be empty (leave it out instead)")

    regions = [
        parse_region(table, f"{source}: regions[{i}]", base_dir) for i, table in enumerate(values.pop("regions", []))
    ]
    if "segmentation" in values:
        regions += _segmentation_regions(values.pop("segmentation"), f"{source}: segmentation", base_dir)
    if len(regions) > MAX_REGIONS:
        raise ValueError(f"{source}: at most {MAX_REGIONS} regions per scene, got {len(regions)}")
    model, seed = values.pop("model", None), values.pop("seed", None)
    for key in ("window", "stride"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    return Scene(arguments={**values, "regions": regions}, model=model, seed=seed)


def read_scene_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw contents of a TOML or JSON scene file (a table)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"scene file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            with path.open("rb") as f:
                data = tomllib.load(f)
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise ValueError(f"scene file {str(path)!r} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name}: not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a scene must be a table (JSON object), got {type(data).__name__}")
    return data


def load_scene(path: str | os.PathLike) -> Scene:
    """Read and validate a scene file; mask and map paths are relative to the file's folder."""
    path = Path(path).expanduser()
    return parse_scene(read_scene_file(path), base=path.parent, source=path.name)
