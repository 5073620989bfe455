"""The fields of a settings file (a scene, stored settings) and how each kind of value is read:
which fields exist and what they hold, input images and model files as the origin may open them,
regions, segmentation maps, LoRA tables. :mod:`.scene` puts them together."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from typing import Any

from multidiffusion.conditionings import ConditioningRegionFields, recorded_only, region_image_fields
from multidiffusion.io.messages import shown
from multidiffusion.io.ranges import check_lora_weight
from multidiffusion.io.trust import Origin, RecordedFile, Trust, TypedPath
from multidiffusion.options import UPSCALE_FILTERS
from multidiffusion.regions.layout import Region

__all__ = [
    "METADATA_ONLY",
    "REGION_FIELDS",
    "SCENE_ONLY",
    "SEGMENTATION_FIELDS",
    "at",
    "check_fields",
    "input_value",
    "kind_ok",
    "loras_table",
    "parse_region",
    "segmentation_regions",
    "upscaler_value",
    "weights_value",
]

SCENE_ONLY: dict[str, str] = {
    "model": "a string",
    "controlnet": "a string or a list of strings (ControlNet folders, files or repo ids)",
    "loras": "a table of name = file, or name = { file = ..., weight = ... }",
    "task": "a string",
    "regions": "a list of region tables",
    "segmentation": "a table with map and colors",
}
"""Scene fields that are not task options: every other field is one of the task's
:func:`~multidiffusion.options.option_names`."""
IMAGE_VALUE = "a string (image file or PNG data URI) or a stored record"


def _kind_of(field: dataclasses.Field) -> str:
    """What a conditioning kind's region field holds, from its type (images: :data:`IMAGE_VALUE`)."""
    if field.name in region_image_fields():
        return IMAGE_VALUE
    written = str(field.type)
    if written.startswith("Mapping"):
        return "a table of adapter name = weight" if field.name == "loras" else "a table"
    return {"float": "a number", "int": "an integer", "bool": "a boolean"}.get(written, "a string")


REGION_FIELDS: dict[str, str] = {
    "prompt": "a string",
    "negative_prompt": "a string",
    "mask": "a string (image file or PNG data URI)",
    "box": "a list of 4 numbers",
    "feather": "a number",
    "weight": "a number",
    "guidance_scale": "a number",
    **{f.name: _kind_of(f) for f in dataclasses.fields(ConditioningRegionFields)},
}
"""A region table's fields: Region's own, then every conditioning kind's (derived from their types)."""
SEGMENTATION_FIELDS: dict[str, str] = {"map": "a string (image file)", "colors": "a table of colour = prompt"}
METADATA_ONLY = ("mode", "multidiffusion_version", "image_index", "lora_files", *recorded_only())
"""Keys of the parameters we store in PNGs that are not scene settings (ignored when read back;
"mode" is what older PNGs called the task)."""


def kind_ok(kind: str, value: Any) -> bool:
    if kind.startswith("a string or a list"):
        return isinstance(value, str) or (
            isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)
        )
    if kind.startswith("a string (image file or PNG data URI) or"):
        return isinstance(value, (str, Mapping))
    if kind.startswith("a string"):  # a file the user typed travels as a TypedPath
        return isinstance(value, str) or ("file" in kind and isinstance(value, TypedPath))
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
        return isinstance(value, list) and len(value) == 4 and all(kind_ok("a number", v) for v in value)
    if kind.startswith("a list"):
        return isinstance(value, list)
    return isinstance(value, Mapping)  # tables


def check_fields(data: Any, fields: Mapping[str, str], where: str, label: Any) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a table, got {shown(data)}")
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where} has an unknown field {key!r}{hint}; allowed: {', '.join(fields)}")
        if value is not None and not kind_ok(fields[key], value):
            raise ValueError(f"{label(key)} must be {fields[key]}, got {shown(value)}")


def input_value(value: Any, origin: Origin, where: str) -> Any:
    """An input image field: a file name or a stored record (what the ``origin`` may open:
    :class:`~multidiffusion.io.trust.Origin`), a PNG data URI, or an object the caller put there
    (an image, a ``Path`` the user typed), which passes as given for the options to check."""
    again = "give the image again (embedded, or as a file on the command line)"
    if isinstance(value, Mapping):
        return origin.recorded(value, where, again)
    return origin.file_name(value, where, again)


def upscaler_value(value: Any, origin: Origin, where: str) -> Any:
    """A filter name as is; any other text is a model file (resolved as the ``origin`` may), a
    record is the file and its SHA-256 (likewise)."""
    again = "pass --upscaler FILE"
    if isinstance(value, Mapping):
        found = origin.recorded(value, where, again)
        return found.record() if isinstance(found, RecordedFile) else found
    if not isinstance(value, str) or value.lower() in UPSCALE_FILTERS:
        return value
    return origin.file_name(value, where, again)


def parse_region(table: Any, where: str, origin: Origin | None = None) -> Region:
    """A region table (``REGION_FIELDS``) as a :class:`Region`; its files are read as ``origin``
    (default: typed by the user) may. Errors start with ``where`` (e.g. 'scene.toml: regions[1]')."""
    origin = origin or Origin.typed()
    check_fields(table, REGION_FIELDS, where, lambda key: f"{where}.{key}")
    if not table.get("prompt"):
        raise ValueError(f"{where} needs a prompt")
    values = {k: v for k, v in table.items() if v is not None}
    if "mask" in values:
        values["mask"] = origin.file_name(values["mask"], f"{where}.mask", "give the mask again (embedded, or a file)")
    for key in region_image_fields():
        if key in values:
            values[key] = input_value(values[key], origin, f"{where}.{key}")
    try:
        return Region(**values)
    except ValueError as exc:
        raise ValueError(f"{where}.{exc}") from None


def segmentation_regions(table: Any, where: str, origin: Origin) -> list[Region]:
    check_fields(table, SEGMENTATION_FIELDS, where, lambda key: f"{where}.{key}")
    for key in SEGMENTATION_FIELDS:
        if table.get(key) is None:
            raise ValueError(f"{where} needs {key} ({SEGMENTATION_FIELDS[key]})")
    colors: dict[str, Any] = {}
    for colour, value in table["colors"].items():
        name = f"{where}.colors[{colour!r}]"
        if isinstance(value, Mapping):
            fields = {k: v for k, v in REGION_FIELDS.items() if k not in ("mask", "box")}
            check_fields(value, fields, name, lambda key, name=name: f"{name}.{key}")
        elif not isinstance(value, str):
            raise ValueError(f"{name} must be a prompt or a table of region fields, got {shown(value)}")
        colors[colour] = value
    source = origin.file_name(table["map"], f"{where}.map", "give the map again (--segmentation MAP)")
    try:
        return Region.from_segmentation(source, colors)
    except ValueError as exc:
        text = str(exc)
        raise ValueError(text if text.startswith(where) else f"{where}: {text}") from None


def weights_value(spec: Any, origin: Origin, where: str, flag: str, shipped: tuple[str, ...] = ("demo",)) -> str:
    """Weights a scene names (a ControlNet, a LoRA): as its ``origin`` may (a file under its folder,
    a hub repo id, one of the ``shipped`` names). Stored settings name none at all, not even a repo id:
    the flag gives it again."""
    if origin.trust == Trust.STORED:
        raise ValueError(
            f"{where}: settings stored in a PNG or sent in a request name no ControlNet or LoRA; pass {flag}"
        )
    return origin.weights(spec, where, f"pass {flag} again", shipped=shipped)


def loras_table(table: Any, origin: Origin, source: str) -> list[tuple[str, str, float]] | None:
    """A scene's ``loras``: name = file (weight 1: the whole image) or name = { file, weight } (weight
    0: only the regions naming it), files confined to the scene's folder like ControlNets."""
    if table is None:
        return None
    loras = []
    for name, entry in table.items():
        where = at(source, f"loras.{name}")
        bad = f"{where} must be a file name or a table {{ file = ..., weight = ... }}, got {shown(entry)}"
        if isinstance(entry, Mapping):
            if set(entry) - {"file", "weight"} or not isinstance(entry.get("file"), str):
                raise ValueError(bad)
            spec, weight = entry["file"], entry.get("weight", 1.0)
        elif isinstance(entry, str):
            spec, weight = entry, 1.0
        else:
            raise ValueError(bad)
        weight = check_lora_weight(f"{where}.weight", weight)
        loras.append((str(name), weights_value(spec, origin, where, f"--lora {name}=FILE"), weight))
    return loras


def at(source: str, message: str) -> str:
    """``message`` prefixed with where it came from (a scene file's name), if anywhere."""
    return f"{source}: {message}" if source else message
