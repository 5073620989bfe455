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

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multidiffusion.conditionings import image_fields
from multidiffusion.conditionings.controlnet import CONTROL_INPUT
from multidiffusion.files.scene_fields import (
    METADATA_ONLY,
    REGION_FIELDS,
    SCENE_ONLY,
    at,
    input_value,
    kind_ok,
    loras_table,
    parse_region,
    segmentation_regions,
    upscaler_value,
    weights_value,
)
from multidiffusion.io.budget import check_embedded
from multidiffusion.io.messages import shown
from multidiffusion.io.trust import SHIPPED_CONTROLNETS, SHIPPED_MODELS, Origin, is_pickle_path, pickle_allowed
from multidiffusion.models import take_model_options
from multidiffusion.options import TASK_OPTIONS, Limits, SamplingOptions, build_options, input_fields, option_names
from multidiffusion.regions.layout import Region

__all__ = [
    "REGION_FIELDS",
    "SCENE_ONLY",
    "Scene",
    "load_scene",
    "parse_region",
    "parse_scene",
    "read_scene_file",
    "stored_task",
]


@dataclass
class Scene:
    """A parsed scene: the checked ``options`` of its task (regions unless the scene says
    otherwise), the ``model`` to run it with (None: unset), its ``controlnet`` models (files as
    absolute paths, repo ids as given; None: unset) and its ``model_options`` (the families'
    options, e.g. ``clip_skip``: what ``from_pretrained`` takes with the model, not the task)."""

    options: SamplingOptions
    model: str | None = None
    controlnet: list[str] | None = None
    loras: list[tuple[str, str, float]] | None = None
    model_options: dict[str, Any] = field(default_factory=dict)

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


def stored_task(data: Mapping[str, Any]) -> str | None:
    """The task a scene or stored settings name: ``task`` (older PNGs stored it as ``mode``)."""
    task = data.get("task")
    task = task if task is not None else data.get("mode")
    return task if isinstance(task, str) and task else None


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
        raise ValueError(at(source, f"a scene must be a table, got {type(data).__name__}"))
    origin = origin or scene_origin(base, source, allow_outside)
    check_embedded(data, at(source, "the settings"))  # before a pixel is decoded
    values = {k: v for k, v in data.items() if k not in METADATA_ONLY}
    for key, kind in SCENE_ONLY.items():
        if values.get(key) is not None and not kind_ok(kind, values[key]):
            raise ValueError(at(source, f"{key} must be {kind}, got {shown(values[key])}"))
    task = stored_task(data) or "regions"
    values.pop("task", None)
    if task not in TASK_OPTIONS:
        raise ValueError(at(source, f"task must be one of {', '.join(map(repr, TASK_OPTIONS))}, got {shown(task)}"))
    model = values.pop("model", None)
    model_options = take_model_options(values)  # checked by the family when the model loads
    if model is not None:
        model = origin.weights(model, at(source, "model"), "pass --model again", shipped=SHIPPED_MODELS)
    if task == "regions":
        regions = [
            table if isinstance(table, Region) else parse_region(table, at(source, f"regions[{i}]"), origin)
            for i, table in enumerate(values.pop("regions", None) or [])
        ]
        if values.get("segmentation") is not None:
            regions += segmentation_regions(values.pop("segmentation"), at(source, "segmentation"), origin)
        values.pop("segmentation", None)
        values["regions"] = regions
    else:
        for key in ("regions", "segmentation"):
            if values.pop(key, None) is not None:
                raise ValueError(at(source, f'{key} is for region layouts (task = "regions"), not for {task}'))
    takes_input = getattr(TASK_OPTIONS[task], "input_control", False)
    for key in input_fields(task):
        value = values.get(key)
        if value is None:
            continue
        many = key in image_fields(lists=True) and isinstance(value, list)
        items = [
            item
            if item == CONTROL_INPUT and takes_input
            else input_value(item, origin, at(source, f"{key}[{i}]" if many else key))
            for i, item in enumerate(value if many else [value])
        ]
        values[key] = items if many else items[0]
    controlnet = values.pop("controlnet", None)
    if controlnet is not None:
        specs = [controlnet] if isinstance(controlnet, str) else controlnet
        controlnet = [
            weights_value(
                spec,
                origin,
                at(source, "controlnet" if len(specs) == 1 else f"controlnet[{i}]"),
                "--controlnet",
                shipped=SHIPPED_CONTROLNETS,
            )
            for i, spec in enumerate(specs)
        ]
    loras = loras_table(values.pop("loras", None), origin, source)
    if values.get("upscaler") is not None:
        values["upscaler"] = upscaler_value(values["upscaler"], origin, at(source, "upscaler"))
    if "allow_pickle" in values:
        raise ValueError(
            at(
                source,
                "allow_pickle can't be set by a scene (a pickle can run code when opened): the caller allows "
                "it (--allow-pickle, or parse_scene(..., allow_pickle=True))",
            )
        )
    if "allow_pickle" in option_names(task):
        _check_pickle_grant(values.get("upscaler"), allow_pickle, at(source, "upscaler"))
        values["allow_pickle"] = pickle_allowed(values.get("upscaler"), allow_pickle)
    try:
        options = build_options(task, values, limits)
    except ValueError as exc:
        raise ValueError(at(source, str(exc))) from None
    return Scene(options, model, controlnet, loras, model_options)


def _check_pickle_grant(upscaler: Any, allow_pickle: bool, where: str) -> None:
    """A pickle upscaler a scene names, refused even with --allow-pickle, which covers only the
    files typed on that command line (a scene or a PNG may come from someone else)."""
    if allow_pickle and isinstance(upscaler, str) and is_pickle_path(upscaler):  # a TypedPath is no str
        raise ValueError(
            f"{where}: {Path(upscaler).name!r} is a pickle named by the settings, not typed: --allow-pickle "
            "covers only files typed on the command line; pass --upscaler FILE --allow-pickle"
        )


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
