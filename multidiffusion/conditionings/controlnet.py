"""ControlNet as a conditioning kind: every view's model call gets the control image's crop at that
view's place (:mod:`.controlnet_run`), for the canvas's control images and each region's own.

Its option fields, region fields, flags and checks are declared in :mod:`.controlnet_options`; the
ControlNets of a call are built from checked options in :mod:`.controlnet_build`.
"""

from __future__ import annotations

from typing import Any

from multidiffusion.conditionings.base import ConditioningKind, Context
from multidiffusion.conditionings.controlnet_build import build_controls
from multidiffusion.conditionings.controlnet_options import (
    CONTROL_INPUT,
    FLAGS,
    MAX_CONTROL_SCALE,
    ControlNetArgs,
    ControlNetOptions,
    ControlNetRegionFields,
    check_controls,
    check_region,
    control_settings,
    region_record,
)
from multidiffusion.engine.conditioning import Conditioning

__all__ = [
    "CONTROLNET",
    "CONTROL_INPUT",
    "MAX_CONTROL_SCALE",
    "ControlNetArgs",
    "ControlNetOptions",
    "ControlNetRegionFields",
    "control_settings",
]


def prepare(context: Context, options: Any, task: Any) -> Conditioning | None:
    """The call's ControlNets (:class:`~.controlnet_run.ControlNetConditioning`), or None when it
    has no control image (the Tile ControlNet convention supplies one for tasks with an input)."""
    return build_controls(options, context.adapter, task)


CONTROLNET = ConditioningKind(
    name="controlnet",
    Options=ControlNetOptions,
    Args=ControlNetArgs,
    RegionFields=ControlNetRegionFields,
    flags=FLAGS,
    flag_group="ControlNet (with --controlnet MODEL)",
    image_fields=("control_image",),
    image_lists=("control_image",),
    region_image_fields=("control_image",),
    check=check_controls,
    check_region=check_region,
    region_record=region_record,
    prepare=prepare,
)
