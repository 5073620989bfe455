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

Unknown fields and wrong types are errors that name the field (``scene.toml: regions[1].box ...``);
the settings are checked by :mod:`multidiffusion.options`, as everywhere else.

**Images in.** ``task`` names the task a scene runs (default "regions"; also "img2img", "upscale",
"inpaint", "outpaint" and "panorama", with the fields of their options, named as in the Python
API). ``image`` (and an inpainting's ``mask``) is a file relative to the scene file, or a PNG data
URI; a region layout with an ``image`` re-works that image from ``strength``::

    task = "inpaint"                   # run with `multidiffusion inpaint --scene inpaint.toml`
    image = "photo.png"                # relative to the scene file
    mask = "photo-mask.png"            # white: repaint
    prompt = "a red house"
    strength = 1.0                     # also: mask_blur; upscale: scale, upscaler (a filter name
                                       #   or a model file), noise_inversion, inversion_steps;
                                       #   outpaint: left, right, top, bottom, overlap

An input may also be the record a PNG stores (``image = { path = "photo.png", sha256 = "..." }``):
the file must still have that SHA-256. A scene can't set ``allow_pickle`` (a pickle upscaler can
run code): the caller allows it (``parse_scene(..., allow_pickle=True)``, ``--allow-pickle``).

**ControlNet.** ``controlnet`` (a folder or ``.safetensors`` file relative to the scene, or a repo
id; a list for several) loads with the model; ``control_image`` (a file relative to the scene, or a
list, one per ControlNet; an upscale's ``"input"`` is its resized input, the Tile ControlNet's
convention), ``controlnet_conditioning_scale``, ``control_guidance_start``, ``control_guidance_end``,
``guess_mode`` and ``control_preprocessor`` are the options'. A region table may carry its own
``control_image``, ``controlnet_conditioning_scale``, ``controlnet`` (an index) and ``loras`` (a
table of adapter name = weight, naming LoRAs of the scene's own ``loras`` table or loaded with
``md.load_lora(..., adapter_name=...)``). The scene's ``loras`` load with the model: ``name = "file"``
acts on the whole image (weight 1), ``name = { file = "...", weight = 0 }`` only in the regions that
name it::

    controlnet = "controlnets/canny"   # relative to the scene file, or a repo id
    loras = { watercolor = { file = "loras/watercolor.safetensors", weight = 0 } }
    control_image = "edges.png"
    controlnet_conditioning_scale = 0.8
    control_preprocessor = "none"      # or "canny", "tile", "tile-grey"
    [[regions]]
    prompt = "a dancer"
    box = [0.3, 0.1, 0.7, 1.0]
    control_image = "pose.png"         # conditions this region's prompt only
    loras = { "watercolor" = 0.8 }     # adapters loaded with md.load_lora(..., adapter_name=...)

**Files a scene may read**: masks, maps, input and control images, upscaler, ControlNet and LoRA models
under the scene file's own folder (symbolic links are resolved first), unless the caller allows
more (``allow_outside=True``; the command line's ``--allow-outside-files``). A name outside is refused
before anything is opened, with the same message whether it exists or not.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multidiffusion.io.budget import check_embedded
from multidiffusion.io.messages import shown
from multidiffusion.io.trust import Origin, RecordedFile, Trust, TypedPath, is_pickle_path, pickle_allowed
from multidiffusion.options import (
    CONTROL_INPUT,
    TASK_OPTIONS,
    UPSCALE_FILTERS,
    Limits,
    SamplingOptions,
    build_options,
    option_names,
)
from multidiffusion.regions.layout import Region

__all__ = [
    "INPUT_FIELDS",
    "REGION_FIELDS",
    "SCENE_ONLY",
    "Scene",
    "load_scene",
    "parse_region",
    "parse_scene",
    "read_scene_file",
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
INPUT_FIELDS = ("image", "mask", "control_image")
"""Task options that are input images: files relative to the scene file (or PNG data URIs)."""
REGION_FIELDS: dict[str, str] = {
    "prompt": "a string",
    "negative_prompt": "a string",
    "mask": "a string (image file or PNG data URI)",
    "box": "a list of 4 numbers",
    "feather": "a number",
    "weight": "a number",
    "guidance_scale": "a number",
    "control_image": "a string (image file or PNG data URI) or a stored record",
    "controlnet_conditioning_scale": "a number",
    "controlnet": "an integer (the index of a ControlNet)",
    "loras": "a table of adapter name = weight",
}
SEGMENTATION_FIELDS: dict[str, str] = {"map": "a string (image file)", "colors": "a table of colour = prompt"}
METADATA_ONLY = ("mode", "multidiffusion_version", "image_index", "lora_files")
"""Keys of the parameters we store in PNGs that are not scene settings (ignored when read back)."""


@dataclass
class Scene:
    """A parsed scene: the checked ``options`` of its task (regions unless the scene says
    otherwise), the ``model`` to run it with (None: unset) and its ``controlnet`` models (files as
    absolute paths, repo ids as given; None: unset)."""

    options: SamplingOptions
    model: str | None = None
    controlnet: list[str] | None = None
    loras: list[tuple[str, str, float]] | None = None

    @property
    def task(self) -> str:
        return self.options.task

    @property
    def arguments(self) -> dict[str, Any]:
        """The options as keyword arguments of the task's method (e.g. :meth:`MultiDiffusion.regions`)."""
        return {k: v for k, v in self.options.settings().items() if k != "seed"}

    @property
    def seed(self) -> int | None:
        return self.options.seed


def _kind_ok(kind: str, value: Any) -> bool:
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


def _input(value: Any, origin: Origin, where: str) -> Any:
    """An input image field: a file name or a stored record (what the ``origin`` may open:
    :class:`~multidiffusion.io.trust.Origin`), a PNG data URI, or an object the caller put there
    (an image, a ``Path`` the user typed), which passes as given for the options to check."""
    again = "give the image again (embedded, or as a file on the command line)"
    if isinstance(value, Mapping):
        return origin.recorded(value, where, again)
    return origin.file_name(value, where, again)


def _upscaler(value: Any, origin: Origin, where: str) -> Any:
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
    _check_fields(table, REGION_FIELDS, where, lambda key: f"{where}.{key}")
    if not table.get("prompt"):
        raise ValueError(f"{where} needs a prompt")
    values = {k: v for k, v in table.items() if v is not None}
    if "mask" in values:
        values["mask"] = origin.file_name(values["mask"], f"{where}.mask", "give the mask again (embedded, or a file)")
    if "control_image" in values:
        values["control_image"] = _input(values["control_image"], origin, f"{where}.control_image")
    try:
        return Region(**values)
    except ValueError as exc:
        raise ValueError(f"{where}.{exc}") from None


def _segmentation_regions(table: Any, where: str, origin: Origin) -> list[Region]:
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
    source = origin.file_name(table["map"], f"{where}.map", "give the map again (--segmentation MAP)")
    try:
        return Region.from_segmentation(source, colors)
    except ValueError as exc:
        text = str(exc)
        raise ValueError(text if text.startswith(where) else f"{where}: {text}") from None


def scene_origin(base: str | os.PathLike | None = None, source: str = "", allow_outside: bool = False) -> Origin:
    """The origin of a scene's values: a file under ``base`` when given, else typed by the user."""
    return Origin.file(base, source, allow_outside) if base is not None else Origin.typed(source)


def parse_scene(
    data: Mapping[str, Any],
    *,
    base: str | os.PathLike | None = None,
    source: str = "scene",
    limits: Limits | None = None,
    allow_outside: bool = False,
    allow_pickle: bool = False,
    origin: Origin | None = None,
) -> Scene:
    """Validate a scene (a mapping of its task's options, ``task``, ``model`` and, for regions,
    ``regions`` and ``segmentation``) and build its :class:`Scene`.

    ``origin`` says what its names may open (:class:`~multidiffusion.io.trust.Origin`): by default
    a scene file under ``base`` (confined to it unless ``allow_outside``), or typed by the user when
    there is no ``base``; stored settings and web requests pass ``Origin.stored()``. ``source``
    prefixes error messages. ``allow_pickle`` (the command line's ``--allow-pickle``) covers only
    an upscaler file the user typed (a :class:`~multidiffusion.io.trust.TypedPath`), never a name
    the scene holds."""
    if not isinstance(data, Mapping):
        raise ValueError(_at(source, f"a scene must be a table, got {type(data).__name__}"))
    origin = origin or scene_origin(base, source, allow_outside)
    check_embedded(data, _at(source, "the settings"))  # before a pixel is decoded
    values = {k: v for k, v in data.items() if k not in METADATA_ONLY}
    for key, kind in SCENE_ONLY.items():
        if values.get(key) is not None and not _kind_ok(kind, values[key]):
            raise ValueError(_at(source, f"{key} must be {kind}, got {shown(values[key])}"))
    mode = data.get("mode")  # stored parameters name the task "mode"
    task = values.pop("task", None) or (mode if isinstance(mode, str) else None) or "regions"
    if task not in TASK_OPTIONS:
        raise ValueError(_at(source, f"task must be one of {', '.join(map(repr, TASK_OPTIONS))}, got {shown(task)}"))
    model = values.pop("model", None)
    if model is not None:
        model = origin.weights(model, _at(source, "model"), "pass --model again")
    if task == "regions":
        regions = [
            table if isinstance(table, Region) else parse_region(table, _at(source, f"regions[{i}]"), origin)
            for i, table in enumerate(values.pop("regions", None) or [])
        ]
        if values.get("segmentation") is not None:
            regions += _segmentation_regions(values.pop("segmentation"), _at(source, "segmentation"), origin)
        values.pop("segmentation", None)
        values["regions"] = regions
    else:
        for key in ("regions", "segmentation"):
            if values.pop(key, None) is not None:
                raise ValueError(_at(source, f'{key} is for region layouts (task = "regions"), not for {task}'))
    for key in INPUT_FIELDS:
        value = values.get(key)
        if value is None:
            continue
        if key == "control_image":
            many = isinstance(value, list)
            items = [
                item
                if item == CONTROL_INPUT and TASK_OPTIONS[task].input_control
                else _input(item, origin, _at(source, f"{key}[{i}]" if many else key))
                for i, item in enumerate(value if many else [value])
            ]
            values[key] = items if many else items[0]
        else:
            values[key] = _input(value, origin, _at(source, key))
    controlnet = values.pop("controlnet", None)
    if controlnet is not None:
        specs = [controlnet] if isinstance(controlnet, str) else controlnet
        controlnet = [
            _weights(spec, origin, _at(source, "controlnet" if len(specs) == 1 else f"controlnet[{i}]"), "--controlnet")
            for i, spec in enumerate(specs)
        ]
    loras = _loras(values.pop("loras", None), origin, source)
    if values.get("upscaler") is not None:
        values["upscaler"] = _upscaler(values["upscaler"], origin, _at(source, "upscaler"))
    if "allow_pickle" in values:
        raise ValueError(
            _at(
                source,
                "allow_pickle can't be set by a scene (a pickle can run code when opened): the caller allows "
                "it (--allow-pickle, or parse_scene(..., allow_pickle=True))",
            )
        )
    if "allow_pickle" in option_names(task):
        _check_pickle_grant(values.get("upscaler"), allow_pickle, _at(source, "upscaler"))
        values["allow_pickle"] = pickle_allowed(values.get("upscaler"), allow_pickle)
    try:
        options = build_options(task, values, limits)
    except ValueError as exc:
        raise ValueError(_at(source, str(exc))) from None
    return Scene(options, model, controlnet, loras)


def _check_pickle_grant(upscaler: Any, allow_pickle: bool, where: str) -> None:
    """A pickle upscaler a scene names, refused even with --allow-pickle, which covers only the
    files typed on that command line (a scene or a PNG may come from someone else)."""
    if allow_pickle and isinstance(upscaler, str) and is_pickle_path(upscaler):  # a TypedPath is no str
        raise ValueError(
            f"{where}: {Path(upscaler).name!r} is a pickle named by the settings, not typed: --allow-pickle "
            "covers only files typed on the command line; pass --upscaler FILE --allow-pickle"
        )


def _weights(spec: Any, origin: Origin, where: str, flag: str) -> str:
    """Weights a scene names (a ControlNet, a LoRA): as its ``origin`` may (a file under its folder,
    a hub repo id). Stored settings name none at all, not even a repo id: the flag gives it again."""
    if origin.trust == Trust.STORED:
        raise ValueError(
            f"{where}: settings stored in a PNG or sent in a request name no ControlNet or LoRA; pass {flag}"
        )
    return origin.weights(spec, where, f"pass {flag} again")


def _loras(table: Any, origin: Origin, source: str) -> list[tuple[str, str, float]] | None:
    """A scene's ``loras``: name = file (weight 1: the whole image) or name = { file, weight } (weight
    0: only the regions naming it), files confined to the scene's folder like ControlNets."""
    if table is None:
        return None
    loras = []
    for name, entry in table.items():
        where = _at(source, f"loras.{name}")
        bad = f"{where} must be a file name or a table {{ file = ..., weight = ... }}, got {shown(entry)}"
        if isinstance(entry, Mapping):
            if set(entry) - {"file", "weight"} or not isinstance(entry.get("file"), str):
                raise ValueError(bad)
            spec, weight = entry["file"], entry.get("weight", 1.0)
        elif isinstance(entry, str):
            spec, weight = entry, 1.0
        else:
            raise ValueError(bad)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not -10 <= weight <= 10:
            raise ValueError(f"{where}.weight must be a number from -10 to 10, got {shown(weight)}")
        loras.append((str(name), _weights(spec, origin, where, f"--lora {name}=FILE"), float(weight)))
    return loras


def _at(source: str, message: str) -> str:
    """``message`` prefixed with where it came from (a scene file's name), if anywhere."""
    return f"{source}: {message}" if source else message


def read_scene_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw contents of a TOML or JSON scene file (a table), read by the one bounded reader of
    settings files (:func:`multidiffusion.io.text.read_scene_file`: a regular file of at most 16 MB,
    UTF-8, limited nesting and integer length; a ValueError naming the file otherwise)."""
    from multidiffusion.io import text

    return text.read_scene_file(path)


def load_scene(
    path: str | os.PathLike, *, limits: Limits | None = None, allow_outside: bool = False, allow_pickle: bool = False
) -> Scene:
    """Read and validate a scene file; file names in it (masks, maps, input images, an upscaler
    model) are relative to the file's folder and, unless ``allow_outside``, under it."""
    path = Path(path).expanduser()
    return parse_scene(
        read_scene_file(path),
        base=path.parent,
        source=path.name,
        limits=limits,
        allow_outside=allow_outside,
        allow_pickle=allow_pickle,
    )
