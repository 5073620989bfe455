"""ControlNet's declarations: its options (diffusers' names), a region's own control image, the
command line's flags and the checks (the kind: :mod:`.controlnet`; the run: :mod:`.controlnet_run`).

Options (every task): ``control_image`` (one image or a list, one per ControlNet; an upscale may
name its resized input with :data:`CONTROL_INPUT`), ``controlnet_conditioning_scale``,
``control_guidance_start`` / ``end`` (each a number or one per control image), ``guess_mode``,
``control_preprocessor`` (make the map from the image: canny edges, tile blur) and ``control_mode``
(a Union ControlNet's mode per image). Regions: ``control_image``, ``controlnet_conditioning_scale``,
``controlnet`` (which of the model's ControlNets).

**Tile ControlNet**: a task whose options set ``input_control`` (the upscale) conditions each of
the model's ControlNets on its canvas-sized input when no ``control_image`` is given, and records
that as ``"control_image": ["input", ...]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict

from multidiffusion.conditionings.base import Flag
from multidiffusion.io.checks import check_choice, check_int, check_number
from multidiffusion.io.messages import shown
from multidiffusion.preprocessors import PREPROCESSORS

__all__ = [
    "CONTROL_INPUT",
    "FLAGS",
    "MAX_CONTROL_SCALE",
    "ControlNetArgs",
    "ControlNetOptions",
    "ControlNetRegionFields",
    "check_controls",
    "check_region",
    "control_settings",
    "region_record",
]

CONTROL_INPUT = "input"
"""``control_image`` entry of tasks that take the canvas-sized input as a control image (an upscale's
resized input: the Tile ControlNet convention); recorded as such in the stored settings."""

MAX_CONTROL_SCALE = 10.0
"""Largest ControlNet conditioning scale (diffusers uses 0-2 in practice; beyond 10 is a typo)."""


@dataclass(kw_only=True)
class ControlNetOptions:
    """ControlNet's option fields (see the module docstring)."""

    input_control: ClassVar[bool] = False  # whether control_image may be CONTROL_INPUT (the task's input)

    control_image: Any = None
    controlnet_conditioning_scale: float | list[float] = 1.0
    control_guidance_start: float | list[float] = 0.0
    control_guidance_end: float | list[float] = 1.0
    guess_mode: bool = False
    control_preprocessor: str | list[str] = "none"
    control_mode: int | list[int] | None = None


class ControlNetArgs(TypedDict, total=False):
    """ControlNet's keyword arguments of every task method."""

    control_image: Any
    controlnet_conditioning_scale: float | list[float]
    control_guidance_start: float | list[float]
    control_guidance_end: float | list[float]
    guess_mode: bool
    control_preprocessor: str | list[str]
    control_mode: int | list[int] | None


@dataclass(kw_only=True)
class ControlNetRegionFields:
    """A region's own control image, run through the model's ControlNet number ``controlnet`` (0: the
    first) at ``controlnet_conditioning_scale`` for this region's prompt only; the other prompts'
    views don't get it. It acts over the call's control_guidance_start/end (of the first control)."""

    control_image: Any = None
    controlnet_conditioning_scale: float = 1.0
    controlnet: int = 0


def _per_control(name: str, value: Any, count: int, lo: float, hi: float) -> list[float]:
    """A number, or a list of one number per control image, as a list of ``count`` numbers."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(
                f"{name} must be a number or a list of {count} numbers (one per control image), got {shown(value)}"
            )
        return [check_number(f"{name}[{i}]", v, lo, hi) for i, v in enumerate(value)]
    return [check_number(name, value, lo, hi)] * count


def check_controls(options: Any) -> None:
    """ControlNet settings as diffusers names them: ``control_image`` (one image or a list, one per
    ControlNet) becomes a list of checked input images; the scales, starts and ends lists of as many
    numbers; each start below its end. Whether the model has as many ControlNets is checked when
    the model is known."""
    if not isinstance(options.guess_mode, bool):
        raise ValueError(f"guess_mode must be True or False, got {shown(options.guess_mode)}")
    if options.control_image is None:
        _check_without_image(options)
        return
    from multidiffusion.io.image_loader import input_image

    images = options.control_image
    many = isinstance(images, (list, tuple))
    images = list(images) if many else [images]
    if not images:
        raise ValueError("control_image must be an image or a non-empty list of images")
    takes_input = getattr(options, "input_control", False)
    options.control_image = [
        image
        if takes_input and isinstance(image, str) and image == CONTROL_INPUT
        else input_image(image, f"control_image[{i}]" if many else "control_image")
        for i, image in enumerate(images)
    ]
    n = len(images)
    scales = _per_control(
        "controlnet_conditioning_scale", options.controlnet_conditioning_scale, n, 0, MAX_CONTROL_SCALE
    )
    starts = _per_control("control_guidance_start", options.control_guidance_start, n, 0, 1)
    ends = _per_control("control_guidance_end", options.control_guidance_end, n, 0, 1)
    for i, (start, end) in enumerate(zip(starts, ends)):
        if start >= end:
            which = f"[{i}]" if n > 1 else ""
            raise ValueError(
                f"control_guidance_start{which} must be below control_guidance_end{which}, got {start} and {end}"
            )
    chosen = options.control_preprocessor
    chosen = list(chosen) if isinstance(chosen, (list, tuple)) else [chosen] * n
    if len(chosen) != n:
        raise ValueError(
            f"control_preprocessor must be a name or a list of {n} names (one per control image), "
            f"got {shown(options.control_preprocessor)}"
        )
    for i, name in enumerate(chosen):
        check_choice(f"control_preprocessor[{i}]" if n > 1 else "control_preprocessor", name, tuple(PREPROCESSORS))
    options.control_preprocessor = chosen if n > 1 else chosen[0]
    options.control_mode = _modes(options.control_mode, n)
    options.controlnet_conditioning_scale = scales if n > 1 else scales[0]
    options.control_guidance_start = starts if n > 1 else starts[0]
    options.control_guidance_end = ends if n > 1 else ends[0]


def _check_without_image(options: Any) -> None:
    """Without a control image, the settings that apply to one must keep their defaults."""
    for key, default in (
        ("controlnet_conditioning_scale", 1.0),
        ("control_guidance_start", 0.0),
        ("control_guidance_end", 1.0),
    ):
        if getattr(options, key) != default:
            also = ' (control_image="input": the resized input)' if options.input_control else ""
            raise ValueError(f"{key} applies to a control image: give control_image too{also}")
    if options.control_mode is not None:
        raise ValueError("control_mode applies to control images (a Union ControlNet's): give control_image too")


def _modes(modes: Any, n: int) -> int | list[int] | None:
    """A Union ControlNet's ``control_mode``: None, or an integer ≥ 0 per control image (one: the integer)."""
    if modes is None:
        return None
    listed = list(modes) if isinstance(modes, (list, tuple)) else [modes]
    if len(listed) != n:
        raise ValueError(
            f"control_mode must be an integer or a list of {n} integers (a Union ControlNet's mode for each "
            f"control image), got {shown(modes)}"
        )
    listed = [check_int(f"control_mode[{i}]" if n > 1 else "control_mode", m, 0) for i, m in enumerate(listed)]
    return listed if n > 1 else listed[0]


def control_settings(options: Any) -> list[tuple[Any, float, float, float, str]]:
    """(input image, scale, start, end, preprocessor) per control image of checked options; empty
    without any."""
    images = options.control_image or []

    def listed(value: Any) -> list[Any]:
        return list(value) if isinstance(value, list) else [value] * len(images)

    return list(
        zip(
            images,
            listed(options.controlnet_conditioning_scale),
            listed(options.control_guidance_start),
            listed(options.control_guidance_end),
            listed(options.control_preprocessor),
        )
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_region(region: Any) -> None:
    """A region's control image (an input image), scale (0 to 10) and ControlNet index."""
    if region.control_image is not None:
        from multidiffusion.io.image_loader import input_image

        region.control_image = input_image(region.control_image, "control_image")
    scale = region.controlnet_conditioning_scale
    if not _is_number(scale) or not 0 <= scale <= MAX_CONTROL_SCALE:
        raise ValueError(f"controlnet_conditioning_scale must be a number from 0 to 10, got {shown(scale)}")
    if isinstance(region.controlnet, bool) or not isinstance(region.controlnet, int) or region.controlnet < 0:
        raise ValueError(
            "controlnet must be the index of one of the model's ControlNets (0, 1, ...), "
            f"got {shown(region.controlnet)}"
        )


def region_record(region: Any) -> dict[str, Any]:
    if region.control_image is None:
        return {}
    return {
        "control_image": region.control_image.record(),
        "controlnet_conditioning_scale": region.controlnet_conditioning_scale,
        "controlnet": region.controlnet,
    }


FLAGS = (
    Flag(
        "--control-image",
        "control_image",
        dict(
            action="append",
            metavar="FILE",
            help="the control image over the whole canvas (same aspect ratio), each view conditioned on its crop; "
            "repeat: one per --controlnet. upscale: without one, the resized input (Tile ControlNet)",
        ),
    ),
    Flag(
        "--control-scale",
        "controlnet_conditioning_scale",
        dict(type=float, action="append", metavar="S", help="ControlNet strength (default 1; repeatable)"),
    ),
    Flag(
        "--control-start",
        "control_guidance_start",
        dict(
            type=float,
            action="append",
            metavar="F",
            help="fraction of the steps where the ControlNet starts acting (default 0; repeatable)",
        ),
    ),
    Flag(
        "--control-end",
        "control_guidance_end",
        dict(
            type=float,
            action="append",
            metavar="F",
            help="fraction of the steps where it stops (default 1; repeatable)",
        ),
    ),
    Flag(
        "--guess-mode",
        "guess_mode",
        dict(
            action="store_true",
            default=None,
            help="the ControlNet sees only the conditional branch (as diffusers' guess_mode)",
        ),
    ),
    Flag(
        "--control-preprocessor",
        "control_preprocessor",
        dict(
            action="append",
            choices=tuple(PREPROCESSORS),
            help="make the control map from the control image: none (default; it is the map), canny edges, tile "
            "(blurred), tile-grey (repeatable)",
        ),
    ),
    Flag(
        "--control-mode",
        "control_mode",
        dict(
            type=int,
            action="append",
            metavar="N",
            help="a Union ControlNet's mode for each --control-image (e.g. ControlNet-Union SDXL: 0 openpose, "
            "1 depth, 2 hed/scribble, 3 canny/lineart, 4 normal, 5 segment, 6 tile, 7 repaint; repeatable)",
        ),
    ),
)
"""The command line's ControlNet flags; each but --guess-mode is given once per ControlNet (in the
order of --controlnet) or once for all."""
