"""The page's settings by API name: what a form sends, what a PNG brings back.

A form's values arrive as a dict keyed by ``MultiDiffusion`` argument names (plus ``seed`` and
``model``); :func:`panorama_request` checks them against the server's limits and turns them into
API arguments, and :func:`values_from_png` turns a PNG's stored parameters back into form values.
Optional panorama arguments (fast tiling, window weights) are one line each in
:data:`PANORAMA_CHOICES`; the page shows a line's control only when ``MultiDiffusion.panorama``
accepts its argument.
"""

from __future__ import annotations

import inspect
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multidiffusion.app.layout import layout_from_regions, page_regions
from multidiffusion.app.limits import Limits
from multidiffusion.app.models import ModelPool
from multidiffusion.engine.schedulers import SCHEDULERS, scheduler_name
from multidiffusion.engine.views import WEIGHTS
from multidiffusion.engine.windows import TILINGS
from multidiffusion.metadata import read_parameters
from multidiffusion.options import check_int, check_number

__all__ = [
    "PANORAMA_CHOICES",
    "PANORAMA_KEYS",
    "Choice",
    "Request",
    "available_choices",
    "format_window",
    "panorama_request",
    "parse_window",
    "random_seed",
    "regions_request",
    "values_from_png",
]

MAX_SEED = 2**32 - 1
SCHEDULER_NAMES = tuple(SCHEDULERS)


@dataclass(frozen=True)
class Choice:
    """An optional API argument shown as a drop-down when the API has it."""

    key: str
    label: str
    choices: tuple[str, ...]
    info: str = ""


# One line per optional panorama argument (the first choice is the default).
PANORAMA_CHOICES: tuple[Choice, ...] = (
    Choice("tiling", "Tiling", TILINGS, "shifted: fewer windows per step, much faster"),
    Choice("weights", "Window weights", WEIGHTS, "gaussian hides seams at large strides"),
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


def available_choices(method: Any, choices: tuple[Choice, ...] = PANORAMA_CHOICES) -> tuple[Choice, ...]:
    """The optional arguments ``method`` (e.g. ``MultiDiffusion.panorama``) accepts."""
    params = inspect.signature(method).parameters
    return tuple(c for c in choices if c.key in params)


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


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
    """A checked form: the model to use, the seed, and the API arguments."""

    model: str
    seed: int
    kwargs: dict[str, Any]


def _seed(value: object) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None or value == "" or value == -1:
        return random_seed()
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"seed must be -1 (random) or a whole number from 0 to {MAX_SEED}, got {value!r}")
    return value


def _text(name: str, value: object, required: bool = False) -> str | None:
    text = (value or "").strip() if isinstance(value, str) or value is None else None
    if text is None:
        raise ValueError(f"{name} must be text, got {value!r}")
    if required and not text:
        raise ValueError(f"enter a {name} first: what the image should show")
    return text or None


def _sampling(values: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """The settings both tabs share, checked against the server's limits."""
    return {
        "negative_prompt": _text("negative prompt", values.get("negative_prompt")),
        "width": limits.check_side("width", values.get("width")),
        "height": limits.check_side("height", values.get("height")),
        "num_inference_steps": limits.check_steps(values.get("num_inference_steps")),
        "guidance_scale": check_number("guidance", values.get("guidance_scale"), 0, 100),
        "scheduler": scheduler_name(values.get("scheduler") or "ddim"),
        "circular": bool(values.get("circular")),
        "window": parse_window("window", values.get("window")),
        "stride": parse_window("stride", values.get("stride")),
    }


def panorama_request(
    values: Mapping[str, Any], limits: Limits, pool: ModelPool, choices: tuple[Choice, ...] = ()
) -> Request:
    """Check a panorama form against the server's limits; ValueError with a message for the page."""
    kwargs: dict[str, Any] = {"prompt": _text("prompt", values.get("prompt"), required=True)}
    kwargs.update(_sampling(values, limits))
    for choice in choices:
        value = values.get(choice.key) or choice.choices[0]
        if value not in choice.choices:
            raise ValueError(f"{choice.label.lower()} must be one of {', '.join(choice.choices)}, got {value!r}")
        kwargs[choice.key] = value
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return Request(pool.check(values.get("model")), _seed(values.get("seed")), kwargs)


def regions_request(values: Mapping[str, Any], limits: Limits, pool: ModelPool) -> Request:
    """Check a regions form: the shared settings plus the background prompt, bootstrapping steps and
    the regions of the layout (colour map and colour table) and of the boxes table."""
    kwargs = _sampling(values, limits)
    kwargs["background"] = _text("background prompt", values.get("background"))
    bootstrap = values.get("bootstrap_steps")
    if isinstance(bootstrap, float) and bootstrap.is_integer():
        bootstrap = int(bootstrap)
    if bootstrap not in (None, "", -1):
        kwargs["bootstrap_steps"] = check_int("bootstrap steps", bootstrap, 0, kwargs["num_inference_steps"])
    kwargs["regions"] = page_regions(
        values.get("layout"),
        values.get("colours"),
        values.get("boxes"),
        limits.max_side,
        canvas=(kwargs["width"], kwargs["height"]),
    )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return Request(pool.check(values.get("model")), _seed(values.get("seed")), kwargs)


def values_from_png(path: str | os.PathLike, limits: Limits, pool: ModelPool) -> tuple[str, dict[str, Any], list[str]]:
    """(mode, form values by key, notes) from a PNG this tool wrote; ValueError if it holds none.

    Settings this server can't honour are adjusted and explained in the notes (a model it doesn't
    offer, a size above its limits); the form is never given a path to load.
    """
    limits.check_upload("the PNG", os.path.getsize(path))
    try:
        params = read_parameters(path)
    except OSError as exc:
        raise ValueError(f"can't read the image: {exc}") from None
    mode = params.get("mode")
    if mode not in ("panorama", "regions"):
        raise ValueError(f"the image's settings are for {mode!r}, which this page can't load")
    notes: list[str] = []
    values: dict[str, Any] = {}
    for key in (*PANORAMA_KEYS, *(c.key for c in PANORAMA_CHOICES), "background", "bootstrap_steps"):
        if key in params:
            values[key] = params[key]
    for key in ("window", "stride"):
        if key in values:
            values[key] = format_window(values[key])
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
    if mode == "regions":
        width, height = values.get("width"), values.get("height")
        if not (isinstance(width, int) and isinstance(height, int)):
            raise ValueError("the image's region settings have no canvas size")
        try:
            layout, colours, boxes, more = layout_from_regions(params.get("regions") or [], width, height)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"the image's regions can't be read: {exc}") from None
        values.update(layout=layout, colours=colours, boxes=boxes)
        notes += more
    return mode, values, notes
