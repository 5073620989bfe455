"""The page's settings by API name: what a form sends, what a PNG brings back.

A form's values arrive as a dict keyed by ``MultiDiffusion`` argument names (plus ``seed`` and
``model``, and ``task`` on the tabs that run two tasks); :func:`panorama_request`,
:func:`regions_request`, :func:`upscale_request` and :func:`inpaint_request` build the task's
options from them with the server's limits (:mod:`multidiffusion.options`: the same checks and
messages as the API, the command line and scene files), and :func:`values_from_png` turns a PNG's
stored settings, read by the library's one reader (:func:`multidiffusion.files.metadata.read_settings`),
back into form values.
Optional panorama arguments (fast tiling, window weights) are one line each in
:data:`PANORAMA_CHOICES`; the page shows a line's control only when ``MultiDiffusion.panorama``
accepts its argument.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multidiffusion.app.inputs import mask_from_editor, read_upload
from multidiffusion.app.layout import page_regions
from multidiffusion.app.limits import ServerLimits
from multidiffusion.app.models import ModelPool
from multidiffusion.app.upscalers import Upscalers
from multidiffusion.io import ranges
from multidiffusion.options import (
    PLACEMENTS,
    TASK_OPTIONS,
    WEIGHTS,
    SamplingOptions,
    build_options,
    check_choice,
    random_seed,
)
from multidiffusion.options import Limits as TaskLimits

__all__ = [
    "IMAGE_KEYS",
    "INPAINT_TASKS",
    "PANORAMA_CHOICES",
    "PANORAMA_KEYS",
    "TASK_KEYS",
    "UPSCALE_TASKS",
    "Choice",
    "Request",
    "available_choices",
    "default_of",
    "format_window",
    "inpaint_request",
    "panorama_request",
    "parse_window",
    "random_seed",
    "regions_request",
    "steps_that_run",
    "upscale_request",
]


@dataclass(frozen=True)
class Choice:
    """An optional API argument shown as a drop-down when the API has it."""

    key: str
    label: str
    choices: tuple[str, ...]
    info: str = ""


# One line per optional panorama argument (the first choice is the default).
PANORAMA_CHOICES: tuple[Choice, ...] = (
    Choice("placement", "Window placement", PLACEMENTS, "shifted: fewer windows per step, much faster"),
    Choice("weights", "Window weights", ("auto", *WEIGHTS), "auto: uniform on the grid, gaussian when shifted"),
)

PANORAMA_KEYS: tuple[str, ...] = (
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "scheduler",
    "circular",
    "window",
    "stride",
    "model",
)


IMAGE_KEYS: tuple[str, ...] = (
    "prompt",
    "negative_prompt",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "scheduler",
    "circular",
    "window",
    "stride",
    "model",
)
"""What the image tabs share: the panorama's settings without the canvas size (the input's gives it)."""

UPSCALE_TASKS = ("upscale", "img2img")
"""The Upscale tab's tasks: upscale, or re-work the image at its size (img2img)."""
INPAINT_TASKS = ("inpaint", "outpaint")
"""The Inpaint / Outpaint tab's tasks."""

TASK_KEYS: dict[str, tuple[str, ...]] = {
    "upscale": (*IMAGE_KEYS, "strength", "scale", "upscaler", "noise_inversion"),
    "img2img": (*IMAGE_KEYS, "strength"),
    "inpaint": (*IMAGE_KEYS, "strength", "mask_blur"),
    "outpaint": (*IMAGE_KEYS, "strength", "left", "right", "top", "bottom", "overlap", "mask_blur"),
}
"""The settings each image task's form sends, by API name (besides the image, the mask and ``task``)."""


def default_of(task: str, key: str) -> Any:
    """The API's default of a task's setting (what the form shows for it)."""
    return TASK_OPTIONS[task].__dataclass_fields__[key].default


def available_choices(method: Any, choices: tuple[Choice, ...] = PANORAMA_CHOICES) -> tuple[Choice, ...]:
    """The optional arguments ``method`` (e.g. ``MultiDiffusion.panorama``) accepts."""
    params = inspect.signature(method).parameters
    return tuple(c for c in choices if c.key in params)


def parse_window(name: str, text: object) -> int | tuple[int, int] | None:
    """'' -> None (the model's default), '16' -> 16, '16x32' -> (16, 32) (rows x columns, latents)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool) and float(text).is_integer():
        return int(text)
    try:
        values = [int(part) for part in str(text).lower().replace(" ", "").split("x")]
    except ValueError:
        values = []
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise ValueError(f"{name} must be empty (default), a number of latent pixels or ROWSxCOLUMNS, got {text!r}")


def format_window(value: object) -> str:
    """The stored window or stride (int or [rows, columns]) as the form shows it."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return str(value)


@dataclass
class Request:
    """A checked form: the model to use and the task's options (seed resolved)."""

    model: str
    options: SamplingOptions

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of the task's ``MultiDiffusion`` method."""
        return {k: v for k, v in self.options.settings().items() if k != "seed" and v is not None}


def task_limits(limits: ServerLimits) -> TaskLimits:
    """The server's caps as the options layer's limits (one image per request)."""
    return TaskLimits(
        max_side=limits.max_side,
        max_steps=limits.max_steps,
        max_images=1,
        max_evaluations=limits.max_evaluations,
        note="this server's limit; the operator sets it with `multidiffusion serve --max-side/--max-steps/"
        "--max-evaluations`",
    )


def _values(values: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The form's values for ``keys``: empty text is "the default", windows parsed from text."""
    out: dict[str, Any] = {}
    for key in keys:
        value = values.get(key)
        if isinstance(value, str) and not value.strip() and key not in ("prompt",):
            value = None
        if key in ("window", "stride"):
            value = parse_window(key, value)
        if key == "weights" and value == "auto":
            value = None
        if key == "seed" and value in ("", -1, -1.0, None):
            value = random_seed()
        out[key] = value
    return out


def steps_that_run(options: Any) -> int:
    """The denoising steps a run takes: all of them, or the last ``int(steps * strength)`` for a task
    that starts from an image (diffusers' rule, as :func:`multidiffusion.runner.denoising_timesteps`)."""
    return ranges.steps_that_run(options.num_inference_steps, getattr(options, "strength", None))


def _build(task: str, values: dict[str, Any], limits: ServerLimits, pool: ModelPool) -> Request:
    model = pool.check(values.pop("model", None))
    values["seed"] = ranges.drawn_seed(values.get("seed"))
    options = build_options(task, values, task_limits(limits))  # refuses a strength that runs no step
    return Request(model, options)


def panorama_request(
    values: Mapping[str, Any], limits: ServerLimits, pool: ModelPool, choices: tuple[Choice, ...] = ()
) -> Request:
    """Check a panorama form against the server's limits; ValueError with a message for the page."""
    keys = (*PANORAMA_KEYS, *(c.key for c in choices))
    return _build("panorama", _control(values, _values(values, keys), limits), limits, pool)


def _control(values: Mapping[str, Any], form: dict[str, Any], limits: ServerLimits) -> dict[str, Any]:
    """The form's control image (an upload, read as every upload is) and its preprocessor, when the
    page has one; without an image the form has no control settings (an upscale on a model with a
    ControlNet then conditions on its resized input)."""
    upload = values.get("control_image")
    if upload is None or upload == "":
        return form
    form["control_image"] = _upload(upload, "control_image", limits)
    form["control_preprocessor"] = values.get("control_preprocessor") or "none"
    return form


def regions_request(values: Mapping[str, Any], limits: ServerLimits, pool: ModelPool) -> Request:
    """Check a regions form: the shared settings plus the background prompt, bootstrapping steps and
    the regions of the layout (colour map and colour table) and of the boxes table."""
    keys = (*[k for k in PANORAMA_KEYS if k != "prompt"], "background", "bootstrap_steps")
    form = _values(values, keys)
    if form.get("bootstrap_steps") in (-1, -1.0):
        form["bootstrap_steps"] = None
    width, height = form.get("width"), form.get("height")
    form["regions"] = page_regions(
        values.get("layout"),
        values.get("colours"),
        values.get("boxes"),
        limits.max_side,
        canvas=(width, height),
    )
    return _build("regions", form, limits, pool)


def _task(values: Mapping[str, Any], tasks: tuple[str, ...]) -> str:
    return check_choice("task", values.get("task") or tasks[0], tasks)


def upscale_request(
    values: Mapping[str, Any],
    limits: ServerLimits,
    pool: ModelPool,
    upscalers: Upscalers | None = None,
    choices: tuple[Choice, ...] = (),
) -> Request:
    """Check the Upscale tab's form: ``task`` "upscale" (``scale``, ``upscaler`` by the name this
    server lists, ``noise_inversion``) or "img2img" (the image re-worked at its size); ``image`` is
    the uploaded file, read by :func:`~.inputs.read_upload`."""
    task = _task(values, UPSCALE_TASKS)
    form = _values(values, (*TASK_KEYS[task], *(c.key for c in choices)))
    if task == "upscale":
        form["upscaler"], form["allow_pickle"] = (upscalers or Upscalers()).resolve(form.get("upscaler"))
    form["image"] = _upload(values.get("image"), "image", limits)
    return _build(task, _control(values, form, limits), limits, pool)


def inpaint_request(
    values: Mapping[str, Any], limits: ServerLimits, pool: ModelPool, choices: tuple[Choice, ...] = ()
) -> Request:
    """Check the Inpaint / Outpaint tab's form: ``image`` is the uploaded file (the tab keeps its path
    on the server), ``mask`` the image editor's value (white strokes: repaint), used by "inpaint";
    "outpaint" takes ``left``, ``right``, ``top``, ``bottom`` instead."""
    task = _task(values, INPAINT_TASKS)
    form = _values(values, (*TASK_KEYS[task], *(c.key for c in choices)))
    form["image"] = _upload(values.get("image"), "image", limits)
    if task == "inpaint":
        form["mask"] = mask_from_editor(values.get("mask"), limits)
        if form["mask"] is None:
            raise ValueError("mask: paint over the part of the image to repaint (white strokes), or upload a mask")
    return _build(task, form, limits, pool)


def _upload(value: Any, name: str, limits: ServerLimits) -> Any:
    if value is None or value == "":
        raise ValueError(f"{name} is required: upload an image")
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name}: expected an uploaded file, got {type(value).__name__}")
    return read_upload(value, name, limits)
