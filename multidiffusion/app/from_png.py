"""Load settings: a PNG this tool wrote, back as the page's form values.

The PNG's settings are read by the library's one reader
(:func:`multidiffusion.files.metadata.read_settings`: masks embedded, never a path), adjusted to
what this server offers (its models, upscalers, limits; each adjustment noted), checked as a run
would check them, and returned by the form's keys (:mod:`.settings`). An image task's input image
and mask are never read back: the user uploads them again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from PIL import Image

from multidiffusion.app.layout import layout_from_regions
from multidiffusion.app.limits import ServerLimits
from multidiffusion.app.models import ModelPool
from multidiffusion.app.settings import PANORAMA_CHOICES, PANORAMA_KEYS, TASK_KEYS, format_window
from multidiffusion.app.upscalers import Upscalers
from multidiffusion.conditionings import image_fields
from multidiffusion.files.metadata import StoredSettings, read_settings
from multidiffusion.files.scene import parse_scene
from multidiffusion.io.trust import Origin
from multidiffusion.options import SCHEDULER_NAMES, input_fields

__all__ = ["IMAGE_INPUTS", "values_from_png"]

IMAGE_INPUTS = tuple(k for k in input_fields() if k not in image_fields())  # the tasks' own: image, mask
"""Stored settings the page never reads back: the inputs are uploaded again (the PNG records only
their names and SHA-256, and the server opens no file a PNG names)."""


def values_from_png(
    path: str | os.PathLike, limits: ServerLimits, pool: ModelPool, upscalers: Upscalers | None = None
) -> tuple[str, dict[str, Any], list[str]]:
    """(task, form values by key, notes) from a PNG this tool wrote; ValueError if it holds none.

    Settings this server can't honour are adjusted and explained in the notes (a model or an
    upscaler it doesn't offer, a size above its limits); the form is never given a path to load, and
    an image task's input image and mask are left for the user to upload again.
    """
    limits.check_upload("the PNG", os.path.getsize(path))
    stored = read_settings(path)
    task = stored.task
    values = _form_values(stored)
    notes = _adjust(values, limits, pool)
    adjusted = ("scheduler", "width", "height", "num_inference_steps")
    check = {**stored.values, **{k: values[k] for k in adjusted if k in values}}
    if task in TASK_KEYS:
        values["task"] = task
        check = _image_placeholders(task, check)
        notes += _image_task(task, values, upscalers or Upscalers())
    try:  # the same checks as a run, once this server's adjustments (noted above) are made, by the one
        # reader of settings as stored ones: they name no file (masks embedded; records never opened)
        parse_scene({**check, "task": task}, source="", origin=Origin.stored())
    except ValueError as exc:
        raise ValueError(f"the image's settings can't be used: {exc}") from None
    if task == "regions":
        notes += _regions(values, stored.values.get("regions") or [])
    return task, values, notes


def _form_values(stored: StoredSettings) -> dict[str, Any]:
    """The stored settings the task's form has (windows as text). An upscaler file is kept apart by
    name (never loaded from a PNG): the form maps it to the operator's upscaler of that name."""
    params = {**stored.values, **stored.files, "model": stored.model}
    keys = TASK_KEYS.get(stored.task, (*PANORAMA_KEYS, "background", "bootstrap_steps"))
    values = {key: params[key] for key in (*keys, *(c.key for c in PANORAMA_CHOICES)) if params.get(key) is not None}
    for key in ("window", "stride"):
        if key in values:
            values[key] = format_window(values[key])
    return values


def _adjust(values: dict[str, Any], limits: ServerLimits, pool: ModelPool) -> list[str]:
    """Fit ``values`` to this server (its models, sides, steps, schedulers); the notes saying how."""
    notes = []
    model = values.get("model")
    if model is not None and model not in pool.names:
        notes.append(f"model {model!r} is not offered by this server; using {pool.default!r}")
        values["model"] = pool.default
    for key in ("width", "height"):
        if isinstance(values.get(key), int) and values[key] > limits.max_side:
            notes.append(f"{key} {values[key]} is above this server's limit; set to {limits.max_side}")
            values[key] = limits.max_side
    steps = values.get("num_inference_steps")
    if isinstance(steps, int) and steps > limits.max_steps:
        notes.append(f"steps {steps} is above this server's limit; set to {limits.max_steps}")
        values["num_inference_steps"] = limits.max_steps
    if values.get("scheduler") not in (None, *SCHEDULER_NAMES):
        notes.append(f"scheduler {values['scheduler']!r} is not in the list; using ddim")
        values["scheduler"] = "ddim"
    return notes


def _image_task(task: str, values: dict[str, Any], upscalers: Upscalers) -> list[str]:
    """An image task's upscaler mapped to the operator's of that name; the notes (upload again)."""
    notes = []
    if "upscaler" in values:
        name = upscalers.name_of(values["upscaler"])
        if name is None:
            given = values["upscaler"]
            shown = given.get("path") if isinstance(given, Mapping) else given  # a file's record
            notes.append(f"upscaler {shown!r} is not offered by this server; using 'lanczos'")
            name = "lanczos"
        values["upscaler"] = name  # the operator's: checked when it runs, not with the PNG's settings
    mask = " and paint its mask" if task == "inpaint" else ""
    return [*notes, f"the input image is not stored in the PNG: upload it again{mask}"]


def _regions(values: dict[str, Any], regions: list[Any]) -> list[str]:
    """The stored regions as the Regions tab's layout, colour table and boxes; the notes."""
    width, height = values.get("width"), values.get("height")
    if not (isinstance(width, int) and isinstance(height, int)):
        raise ValueError("the image's region settings have no canvas size")
    try:
        layout, colours, boxes, notes = layout_from_regions(regions, width, height)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"the image's regions can't be read: {exc}") from None
    values.update(layout=layout, colours=colours, boxes=boxes)
    return notes


def _image_placeholders(mode: str, stored: Mapping[str, Any]) -> dict[str, Any]:
    """``stored`` as an image task's settings are checked here: blank images stand for the inputs
    (nothing the PNG names is opened), without the stored canvas size (the upload's gives it) or a
    pickle's permission."""
    dropped = ("height", "width", "allow_pickle", *IMAGE_INPUTS)
    out = {k: v for k, v in stored.items() if k not in dropped}
    out["image"] = Image.new("RGB", (64, 64))
    if mode == "inpaint":
        out["mask"] = Image.new("L", (64, 64), 255)
    return out
