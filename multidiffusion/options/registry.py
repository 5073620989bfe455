"""The tasks' options by name (:data:`TASK_OPTIONS`), built from a mapping of API names
(:func:`build_options`: a scene file, stored settings, a form), and the lists derived from them:
the settings a task takes, the options that hold input images, the command line's names."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from multidiffusion.conditionings import KINDS, image_fields
from multidiffusion.io.messages import shown
from multidiffusion.options.image_tasks import (
    EditOptions,
    Img2ImgOptions,
    InpaintOptions,
    OutpaintOptions,
    UpscaleOptions,
)
from multidiffusion.options.limits import Limits
from multidiffusion.options.regions import RegionsOptions
from multidiffusion.options.sampling import PanoramaOptions, SamplingOptions

__all__ = ["SAMPLING_FLAG_NAMES", "TASK_OPTIONS", "build_options", "input_fields", "option_names"]


TASK_OPTIONS: dict[str, type[SamplingOptions]] = {
    "panorama": PanoramaOptions,
    "regions": RegionsOptions,
    "img2img": Img2ImgOptions,
    "upscale": UpscaleOptions,
    "inpaint": InpaintOptions,
    "outpaint": OutpaintOptions,
    "edit": EditOptions,
}
"""Task name -> its options class. A new task registers its class here."""


SAMPLING_FLAG_NAMES = {
    "negative": "negative_prompt",
    "width": "width",
    "height": "height",
    "window": "window",
    "stride": "stride",
    "circular": "circular",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "seed": "seed",
    "scheduler": "scheduler",
    "batch_size": "view_batch_size",
    "num_images": "num_images_per_prompt",
    "pre_average": "pre_average",
    **{name: name for name in ("step_cache", "step_cache_threshold", "step_cache_interval", "step_cache_mb")},
    **{flag.flag.lstrip("-").replace("-", "_"): flag.field for kind in KINDS for flag in kind.flags},
}
"""The command line's flags (argparse dest) for the settings every task shares -> their API names,
which scene files, stored settings and the API use: a scene that says ``steps`` is told its name.
The conditioning kinds' flags are derived from their declarations."""


def option_names(task: str) -> tuple[str, ...]:
    """The settings a task takes, by API name."""
    return tuple(f.name for f in dataclasses.fields(TASK_OPTIONS[task]) if f.init)


def input_fields(task: str | None = None) -> tuple[str, ...]:
    """The options that hold input images, by API name: those marked ``field(metadata=INPUT)`` in
    ``task``'s options (any task's when None) and every conditioning kind's ``image_fields``."""
    classes = TASK_OPTIONS.values() if task is None else (TASK_OPTIONS[task],)
    marked = dict.fromkeys(f.name for cls in classes for f in dataclasses.fields(cls) if "input" in f.metadata)
    return (*marked, *image_fields())


def build_options(task: str, values: Mapping[str, Any], limits: Limits | None = None) -> SamplingOptions:
    """The options of ``task`` from a mapping of API names (scene file, stored settings, a form).

    Unknown keys are errors with a suggestion; None values mean "the default"; lists become
    tuples for ``window`` and ``stride``."""
    if task not in TASK_OPTIONS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASK_OPTIONS))}, got {shown(task)}")
    if not isinstance(values, Mapping):
        raise ValueError(f"{task} settings must be a table (mapping), got {type(values).__name__}")
    names = option_names(task)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            if SAMPLING_FLAG_NAMES.get(key) in names:  # the command line's name for it
                close = [SAMPLING_FLAG_NAMES[key]]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown setting {key!r}{hint}; {task} takes: {', '.join(names)}")
        if value is not None:
            kwargs[key] = tuple(value) if key in ("window", "stride") and isinstance(value, list) else value
    return TASK_OPTIONS[task](**kwargs, limits=limits)
