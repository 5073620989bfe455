"""Every task's arguments, checked here and nowhere else.

The Python API (``md.panorama(...)``), the command line, scene files, the settings stored in a PNG
and the web app all build these dataclasses, so the same bad value gets the same message from each
of them: a ``ValueError`` that names the parameter (by its API name), the value given and what is
allowed. Shells add only where the value came from (``scene.toml: ...``).

- :mod:`.limits`: :class:`Limits`, what one call may ask (sides, steps, images, regions, model
  evaluations). The library's own limits are the widest; a server passes stricter ones. The
  ranges themselves and the checks of single values are at the bottom of the package
  (:mod:`multidiffusion.io.ranges`, :mod:`multidiffusion.io.checks`), re-exported here.
- :mod:`.sampling`: :class:`SamplingOptions`, what every task shares (steps, guidance, windows,
  scheduler, seed, and every conditioning kind's fields: it inherits
  :class:`~multidiffusion.conditionings.ConditioningOptions` and runs every kind's check), and
  :class:`PanoramaOptions`.
- :mod:`.image_tasks` (img2img, upscale, inpaint, outpaint: the input image, strength and canvas
  checked once), :mod:`.regions`, :mod:`.upscaler`.
- :mod:`.registry`: :data:`TASK_OPTIONS` by task name; :func:`build_options` builds one from a
  mapping of API names (a scene file, stored PNG settings, a form), refusing unknown keys.
- :mod:`.arguments`: the same settings as the task methods' typed keyword arguments.

Defaults that depend on the model (canvas size, window) stay ``None`` here and are resolved by the
task once the model is known; everything that can be checked without a model is checked here, so a
shell fails before minutes of loading.
"""

from multidiffusion.conditionings.controlnet import CONTROL_INPUT, MAX_CONTROL_SCALE, control_settings
from multidiffusion.engine.views import WEIGHTS
from multidiffusion.engine.windows import PLACEMENTS
from multidiffusion.io.checks import check_choice, check_int, check_number, check_same_aspect
from multidiffusion.io.messages import shown
from multidiffusion.io.ranges import *  # noqa: F403 (the ranges and their checks, listed in __all__)
from multidiffusion.io.ranges import __all__ as _ranges
from multidiffusion.options.image_tasks import (
    INPUT,
    MASK_INPUT,
    EditOptions,
    Img2ImgOptions,
    InpaintOptions,
    OutpaintOptions,
    UpscaleOptions,
)
from multidiffusion.options.limits import LIBRARY_LIMITS, Limits
from multidiffusion.options.regions import RegionsOptions
from multidiffusion.options.registry import (
    SAMPLING_FLAG_NAMES,
    TASK_OPTIONS,
    build_options,
    input_fields,
    option_names,
)
from multidiffusion.options.sampling import OUTPUT_TYPES, SCHEDULER_NAMES, PanoramaOptions, SamplingOptions
from multidiffusion.options.upscaler import MAX_SCALE, UPSCALE_FILTERS, check_upscaler

__all__ = [
    *_ranges,
    "CONTROL_INPUT",
    "INPUT",
    "LIBRARY_LIMITS",
    "MASK_INPUT",
    "MAX_CONTROL_SCALE",
    "MAX_SCALE",
    "OUTPUT_TYPES",
    "PLACEMENTS",
    "SAMPLING_FLAG_NAMES",
    "SCHEDULER_NAMES",
    "TASK_OPTIONS",
    "UPSCALE_FILTERS",
    "WEIGHTS",
    "EditOptions",
    "Img2ImgOptions",
    "InpaintOptions",
    "Limits",
    "OutpaintOptions",
    "PanoramaOptions",
    "RegionsOptions",
    "SamplingOptions",
    "UpscaleOptions",
    "build_options",
    "check_choice",
    "check_int",
    "check_number",
    "check_same_aspect",
    "check_upscaler",
    "control_settings",
    "input_fields",
    "option_names",
    "shown",
]
