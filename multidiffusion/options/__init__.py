"""Every task's arguments, checked here and nowhere else.

The Python API (``md.panorama(...)``), the command line, scene files, the settings stored in a PNG
and the web app all build these dataclasses, so the same bad value gets the same message from each
of them: a ``ValueError`` that names the parameter (by its API name), the value given and what is
allowed. Shells add only where the value came from (``scene.toml: ...``).

- :class:`Limits`: what one call may ask (sides, steps, images, regions, model evaluations). The
  library's own limits are the widest; a server passes stricter ones.
- :class:`SamplingOptions`: what every task shares (steps, guidance, windows, scheduler, seed, ...).
- :class:`PanoramaOptions`, :class:`RegionsOptions`: one dataclass per task, registered in
  :data:`TASK_OPTIONS` by task name. :func:`build_options` builds one from a mapping of API names
  (a scene file, stored PNG settings, a form), refusing unknown keys.

Defaults that depend on the model (canvas size, window) stay ``None`` here and are resolved by the
task once the model is known; everything that can be checked without a model is checked here, so a
shell fails before minutes of loading.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

from multidiffusion.conditionings import ConditioningOptions
from multidiffusion.conditionings import check_options as check_conditionings
from multidiffusion.conditionings.controlnet import CONTROL_INPUT, MAX_CONTROL_SCALE, control_settings
from multidiffusion.engine.schedulers import FLOW_SCHEDULERS, SCHEDULERS, scheduler_name
from multidiffusion.engine.views import WEIGHTS
from multidiffusion.engine.windows import PLACEMENTS
from multidiffusion.io.checks import check_choice, check_int, check_number, check_same_aspect
from multidiffusion.io.messages import shown
from multidiffusion.regions.layout import MAX_REGIONS, Region, as_regions

__all__ = [
    "CONTROL_INPUT",
    "MAX_CONTROL_SCALE",
    "MAX_GUIDANCE",
    "MAX_IMAGES",
    "MAX_PROMPT_CHARS",
    "MAX_SCALE",
    "MAX_SEED",
    "MAX_SIDE",
    "MAX_STEPS",
    "MIN_SIDE",
    "OUTPUT_TYPES",
    "PLACEMENTS",
    "SAMPLING_FLAG_NAMES",
    "SCHEDULER_NAMES",
    "TASK_OPTIONS",
    "UPSCALE_FILTERS",
    "WEIGHTS",
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
    "check_guidance",
    "check_int",
    "check_negative",
    "check_number",
    "check_same_aspect",
    "check_seed",
    "check_side",
    "check_strength",
    "check_text",
    "control_settings",
    "pair",
    "random_seed",
    "shown",
]

MIN_SIDE = 64
"""Smallest canvas side in pixels."""
MAX_SIDE = 16384
"""Largest canvas side in pixels (a 512 x 16384 panorama is 32 SD windows wide)."""
MAX_STEPS = 1000
"""Most inference steps (the schedulers' training steps)."""
MAX_IMAGES = 64
"""Most images per call (``num_images_per_prompt``)."""
MAX_SEED = 2**64 - 1
"""Largest seed: torch generators take 64-bit seeds. -1 asks for a random one."""
RANDOM_SEEDS = 2**32
"""Random seeds are drawn below this, so they stay short enough to read and type."""
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
SCHEDULER_NAMES: tuple[str, ...] = (*SCHEDULERS, *FLOW_SCHEDULERS)
MAX_PROMPT_CHARS = 10_000
"""Longest prompt (and negative or region prompt) in characters. The text encoders read only the first
77 tokens (CLIP) or 512 (T5, FLUX and SD3), about 300 and 2,000 characters of English and fewer of
scripts with more tokens per character; the rest is cut off after tokenising, which is the whole
cost of a longer text (a 10 MB prompt tokenised for 88 s at +4.4 GB). 10,000 is five times T5's
reach: no prompt a model reads is refused."""
MAX_GUIDANCE = 100.0
"""Largest guidance scale (classifier-free guidance, per region too). Models are used at 1-20;
past a few hundred the guided noise estimate leaves the range the scheduler can step from, and
at 1e308 it overflows to inf and every pixel comes out black."""


def check_guidance(name: str, value: Any) -> float:
    """A guidance scale: a number from 0 to :data:`MAX_GUIDANCE`."""
    value = check_number(name, value, 0)
    if value > MAX_GUIDANCE:
        raise ValueError(
            f"{name} must be at most {MAX_GUIDANCE:g} (models are used at 1-20; larger scales overflow), "
            f"got {shown(value)}"
        )
    return value


def check_side(name: str, value: Any, multiple: int = 8, max_side: int = MAX_SIDE, note: str = "") -> int:
    """A canvas side in pixels: a multiple of ``multiple`` from MIN_SIDE to ``max_side``."""
    allowed = f"a multiple of {multiple} from {MIN_SIDE} to {max_side}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be {allowed} (pixels), got {shown(value)}")
    if value % multiple or not MIN_SIDE <= value <= max_side:
        raise ValueError(f"{name} must be {allowed} (pixels), got {shown(value)}{note if value > max_side else ''}")
    return value


def check_text(name: str, value: Any, required: bool = True) -> str | None:
    """A prompt: text that is not only white space (None allowed when not ``required``), at most
    :data:`MAX_PROMPT_CHARS` long, that can be encoded as UTF-8 (a command line in another encoding
    gives lone surrogates)."""
    if value is None and not required:
        return None
    if isinstance(value, str):
        check_prompt_length(name, value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty prompt{'' if required else ' or None'}, got {shown(value)}")
    _check_utf8(name, value)
    return value


def check_prompt_length(name: str, value: str) -> None:
    """At most :data:`MAX_PROMPT_CHARS` characters; the message gives the length, not the text."""
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"{name} is {len(value):,} characters long; at most {MAX_PROMPT_CHARS:,} are allowed (the text "
            "encoders read only the first 77 or 512 tokens)"
        )


def _check_utf8(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be valid UTF-8 text, got {shown(value)}") from None


def check_seed(name: str, value: Any) -> int | None:
    """A seed: an integer from 0 to 2**64 - 1, or -1 / None for a random one (returns None)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be -1 (random) or an integer from 0 to {MAX_SEED}, got {shown(value)}")
    return None if value == -1 else value


def random_seed() -> int:
    """A fresh random seed (what -1 and an unset seed mean), below :data:`RANDOM_SEEDS`."""
    return secrets.randbelow(RANDOM_SEEDS)


def pair(name: str, value: Any) -> tuple[Any, Any]:
    """An int or a (rows, columns) pair as a pair."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an integer or a (height, width) pair, got {shown(value)}")
        return value[0], value[1]
    return value, value


def _window(name: str, value: Any, lo: int, his: tuple[int | None, int | None] = (None, None)) -> Any:
    """A window or stride: an int, or a (rows, columns) pair; kept as given (int or tuple)."""
    if value is None:
        return None
    rows, cols = pair(name, value)
    rows, cols = check_int(name, rows, lo, his[0]), check_int(name, cols, lo, his[1])
    return (rows, cols) if isinstance(value, (list, tuple)) else rows


# -- limits ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """What one call may ask. The defaults are the library's own; a server passes stricter ones, and
    ``note`` (e.g. "this server's limit, set with `multidiffusion serve --max-side`") is added to the
    message when a value is above one of them.

    ``max_evaluations`` bounds compute, not sizes: window evaluations over the whole call (jobs per
    step, a job being one view under one prompt, x steps x images), checked once the model's window
    is known. On the demo model a 4096 x 64 panorama with window 8 and stride 1 at 150 steps costs
    152,550 of them; with the defaults (50 steps) 25,250.
    """

    max_side: int = MAX_SIDE
    max_steps: int = MAX_STEPS
    max_images: int = MAX_IMAGES
    max_regions: int = MAX_REGIONS
    max_evaluations: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        check_int("max_side", self.max_side, MIN_SIDE, MAX_SIDE)
        check_int("max_steps", self.max_steps, 1, MAX_STEPS)
        check_int("max_images", self.max_images, 1, MAX_IMAGES)
        check_int("max_regions", self.max_regions, 0, MAX_REGIONS)
        if self.max_evaluations is not None:
            check_int("max_evaluations", self.max_evaluations, 1)

    def suffix(self) -> str:
        return f" ({self.note})" if self.note else ""


LIBRARY_LIMITS = Limits()


# -- task options ------------------------------------------------------------------------------------
@dataclass
class SamplingOptions(ConditioningOptions):
    """What every task shares. ``window`` and ``stride`` are latent pixels (an int or (rows, columns));
    None means the model's native window and the task's default stride. ``seed`` is what the shells
    turn into a generator (None or -1: random); the API takes ``generator`` instead."""

    task: ClassVar[str] = ""

    num_inference_steps: int | None = None  # None: the model family's (MultiDiffusion.sampling_defaults)
    guidance_scale: float | None = None
    negative_prompt: str | list[str] | None = None
    height: int | None = None
    width: int | None = None
    window: int | tuple[int, int] | None = None
    stride: int | tuple[int, int] | None = None
    circular: bool = False
    view_batch_size: int | None = None
    num_images_per_prompt: int = 1
    output_type: str = "pil"
    scheduler: Any = None
    eta: float = 0.0
    seed: int | None = None
    limits: InitVar[Limits | None] = None
    checked_against: Limits = field(default=LIBRARY_LIMITS, init=False, repr=False, compare=False)

    def __post_init__(self, limits: Limits | None) -> None:
        lim = self.checked_against = limits if limits is not None else LIBRARY_LIMITS
        note = lim.suffix()
        if self.num_inference_steps is not None:
            steps = check_int("num_inference_steps", self.num_inference_steps, 1, lim.max_steps, note)
            self.num_inference_steps = steps
        if self.guidance_scale is not None:
            self.guidance_scale = check_guidance("guidance_scale", self.guidance_scale)
        for key in ("height", "width"):
            if getattr(self, key) is not None:
                setattr(self, key, check_side(key, getattr(self, key), 8, lim.max_side, note))
        self.window = _window("window", self.window, 8)
        his = pair("window", self.window) if self.window is not None else (None, None)
        self.stride = _window("stride", self.stride, 1, his)
        if not isinstance(self.circular, bool):
            raise ValueError(f"circular must be True or False, got {self.circular!r}")
        if self.view_batch_size is not None:
            self.view_batch_size = check_int("view_batch_size", self.view_batch_size, 1)
        n = check_int("num_images_per_prompt", self.num_images_per_prompt, 1, lim.max_images, note)
        self.num_images_per_prompt = n
        check_choice("output_type", self.output_type, OUTPUT_TYPES)
        if self.scheduler is not None and isinstance(self.scheduler, str):
            self.scheduler = scheduler_name(self.scheduler)
        elif self.scheduler is not None and not callable(getattr(self.scheduler, "step", None)):
            raise ValueError(
                f"scheduler must be a name ({', '.join(SCHEDULER_NAMES)}) or a diffusers scheduler, "
                f"got {type(self.scheduler).__name__}"
            )
        self.eta = check_number("eta", self.eta, 0, 1)
        self.seed = check_seed("seed", self.seed)
        check_conditionings(self)  # every conditioning kind's fields (ControlNet's, ...)

    def settings(self) -> dict[str, Any]:
        """The options as a mapping of API names (what ``build_options`` takes back)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def with_defaults(self, steps: int, guidance: float) -> SamplingOptions:
        """These options with an unset ``num_inference_steps`` / ``guidance_scale`` taken from a model
        family's defaults (a copy; self when both are set), and what depends on the steps checked."""
        if self.num_inference_steps is not None and self.guidance_scale is not None:
            return self
        done = copy.copy(self)
        if done.num_inference_steps is None:
            lim = self.checked_against
            done.num_inference_steps = check_int("num_inference_steps", steps, 1, lim.max_steps, lim.suffix())
        if done.guidance_scale is None:
            done.guidance_scale = check_guidance("guidance_scale", guidance)
        done.check_steps()
        return done

    def check_steps(self) -> None:
        """Checks that need the number of steps (run again once a model's default sets it): an
        image task's strength must run at least one of them."""
        if getattr(self, "strength", None) is not None and self.num_inference_steps is not None:
            self.strength = check_strength(self.strength, steps=self.num_inference_steps)


def check_negative(name: str, value: Any, count: int | None = None) -> None:
    """A negative prompt: None, a string ("" is none), or with ``count`` a list of that many strings."""
    items = value if count is not None and isinstance(value, (list, tuple)) else [value]
    if value is None or (len(items) == (count or 1) and all(isinstance(v, str) for v in items)):
        for i, v in enumerate(items if value is not None else []):
            check_prompt_length(name if len(items) == 1 else f"{name}[{i}]", v)
            _check_utf8(name, v)
        return
    many = f" or a list of {count} strings (one per prompt)" if count is not None else ""
    raise ValueError(f"{name} must be a string{many} or None, got {shown(value)}")


@dataclass
class PanoramaOptions(SamplingOptions):
    """A panorama (paper Sec. 4.1): one prompt (or one per image) over sliding windows.

    ``placement``: "grid", the paper's fixed sliding windows, or "shifted", the fast mode (windows
    at a fresh seeded offset every step, SpotDiffusion). ``weights``: "uniform" (the paper's W_i = 1)
    or "gaussian" (Mixture of Diffusers); None picks the placement's default: uniform for the grid,
    Gaussian for shifted windows, whose default stride makes them overlap by 1/8 (the setting
    measured to hide the moving seams; see the README's "Speed and memory").
    """

    task: ClassVar[str] = "panorama"
    prompt_required: ClassVar[bool] = True

    prompt: str | list[str] | None = None
    placement: str = "grid"
    weights: str | None = None

    def __post_init__(self, limits: Limits | None) -> None:
        if isinstance(self.prompt, (list, tuple)) and self.prompt:
            self.prompt = [check_text(f"prompt[{i}]", p) for i, p in enumerate(self.prompt)]
        elif self.prompt_required or self.prompt not in (None, ""):
            check_text("prompt", self.prompt)
        else:
            self.prompt = ""
        super().__post_init__(limits)
        check_negative("negative_prompt", self.negative_prompt, len(self.prompts))
        check_choice("placement", self.placement, PLACEMENTS)
        if self.weights is not None:
            check_choice("weights", self.weights, WEIGHTS)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt or [])

    @property
    def window_weights(self) -> str:
        return self.weights or ("gaussian" if self.placement == "shifted" else "uniform")


@dataclass
class RegionsOptions(SamplingOptions):
    """Region prompts (paper Sec. 4.2): each :class:`~multidiffusion.regions.Region` gets its own
    prompt, ``background`` the complement of their union. ``bootstrap_steps`` (None: 40 % of the
    steps, the paper's 20 of 50; 0: off) denoise each region over a random plain colour first.
    With ``image`` the layout re-works that image from ``strength`` (None: 0.75), as img2img does."""

    task: ClassVar[str] = "regions"

    background: str | None = None
    regions: Sequence[Region | Mapping[str, Any]] = ()
    bootstrap_steps: int | None = None
    image: Any = None
    strength: float | None = None

    def __post_init__(self, limits: Limits | None) -> None:
        super().__post_init__(limits)
        self.background = check_text("background", self.background, required=False)
        check_negative("negative_prompt", self.negative_prompt)
        self.regions = as_regions(self.regions, self.checked_against.max_regions, self.checked_against.suffix())
        _check_region_numbers(self.regions)
        self.check_steps()
        if not self.regions and self.background is None:
            raise ValueError("regions: give at least one region or a background prompt")
        if self.image is None:
            if self.strength is not None:
                raise ValueError("strength applies to an input image: give image= too, or leave strength unset")
        else:
            self.image = _input_image(self, "image")
            self.strength = check_strength(
                0.75 if self.strength is None else self.strength, steps=self.num_inference_steps
            )
            _image_canvas(self, self.image.size, "the input image's size")

    def check_steps(self) -> None:
        """bootstrap_steps defaults to the paper's 40% of the steps (20 of 50) and is at most all of them."""
        super().check_steps()
        steps = self.num_inference_steps
        if steps is None:
            if self.bootstrap_steps is not None:
                self.bootstrap_steps = check_int("bootstrap_steps", self.bootstrap_steps, 0)
            return
        if self.bootstrap_steps is None:
            self.bootstrap_steps = int(0.4 * steps + 0.5)
        self.bootstrap_steps = check_int("bootstrap_steps", self.bootstrap_steps, 0, steps)


MAX_REGION_WEIGHT = 1000.0
"""Largest region weight (a multiplier of its mask in Eq. 5's weights; 1 is the paper's)."""


def _check_region_numbers(regions: Sequence[Region]) -> None:
    """What the regions module leaves open: prompt lengths, and finite bounds on the numbers that
    multiply noise estimates (a guidance scale or weight of 1e308 overflows to a black image)."""
    for i, region in enumerate(regions):
        name = f"regions[{i}]"
        check_prompt_length(f"{name}.prompt", region.prompt)
        if region.negative_prompt is not None:
            check_prompt_length(f"{name}.negative_prompt", region.negative_prompt)
        if region.guidance_scale is not None:
            check_guidance(f"{name}.guidance_scale", region.guidance_scale)
        if region.weight > MAX_REGION_WEIGHT:
            raise ValueError(
                f"{name}.weight must be a number > 0 up to {MAX_REGION_WEIGHT:g}, got {shown(region.weight)}"
            )


# -- images in -----------------------------------------------------------------------------------------
MAX_SCALE = 8.0
"""Largest upscaling factor: 8x takes a 512 px image to 4096 px; larger jumps give the model too
little to work from in one pass (upscale twice instead)."""
UPSCALE_FILTERS = ("lanczos", "bicubic", "bilinear", "nearest")
MAX_UPSCALER_BYTES = 2 * 1024**3
"""Largest upscaler model file (ESRGAN-family networks are 1-100 MB; some are larger)."""
"""Resampling filters an upscale can use by name (PIL's); a model file or a callable also works."""


def check_strength(value: Any, name: str = "strength", steps: int | None = None) -> float:
    """diffusers' ``strength``: the fraction of the schedule that runs, in (0, 1]; with ``steps``, also
    enough for at least one of them to run (``int(steps * strength)`` of them run below 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(
            f"{name} must be a number in (0, 1] (the fraction of the steps that re-work the image), got {shown(value)}"
        )
    if steps is not None and value < 1 and int(steps * value) < 1:
        fewest = math.ceil(1 / value)
        fewest += int(fewest * value) < 1  # rounding: 1 / 0.35 -> 3, 3 x 0.35 = 1.05
        more = f" or at least {fewest} steps (num_inference_steps)" if fewest <= MAX_STEPS else ""
        raise ValueError(
            f"{name} {value:g} runs none of the {steps} steps (int({steps} x {value:g}) = 0): give a {name} of at "
            f"least {math.ceil(100 / steps) / 100:g}{more}"
        )
    return float(value)


def _input_image(options: SamplingOptions, name: str, mode: str = "RGB") -> Any:
    from multidiffusion.images import input_image

    return input_image(getattr(options, name), name, mode=mode)


def _image_canvas(options: Img2ImgOptions, size: tuple[int, int], what: str) -> None:
    """Height and width from the input's size (rounded down to multiples of 8) when not given."""
    lim = options.checked_against
    note = f" ({what}; give height and width to resize it)"
    for key, value in zip(("height", "width"), size):
        if getattr(options, key) is None:
            if value - value % 8 < MIN_SIDE:  # say what the user gave, not the derived side ("got 0")
                h, w = options.image.size
                raise ValueError(
                    f"image is {w}x{h} px, which makes a canvas {value} px in {key} ({what}); a canvas side must be "
                    f"at least {MIN_SIDE} px: give a larger image"
                    + (" or height and width" if options.task in ("img2img", "inpaint", "regions") else "")
                )
            setattr(options, key, check_side(key, value - value % 8, 8, lim.max_side, lim.suffix() or note))


@dataclass
class Img2ImgOptions(PanoramaOptions):
    """Image-to-image on a canvas of any size: ``image`` (a file, PIL image, array or tensor) is
    encoded, noised to the step ``strength`` says (diffusers' convention: 0.75 runs the last 75 % of
    the steps) and denoised with the panorama's windows. The canvas is the image's size (rounded
    down to multiples of 8) unless ``height`` and ``width`` resize it."""

    task: ClassVar[str] = "img2img"

    image: Any = None
    strength: float = 0.75

    def __post_init__(self, limits: Limits | None) -> None:
        super().__post_init__(limits)
        self.strength = check_strength(self.strength, steps=self.num_inference_steps)
        self.image = _input_image(self, "image")
        _image_canvas(self, self.image.size, "the input image's size")


@dataclass
class UpscaleOptions(Img2ImgOptions):
    """Upscaling: ``image`` resized ``scale`` times by ``upscaler`` ("lanczos" and PIL's other
    filters, an ESRGAN-family model file read by spandrel, or a callable PIL -> PIL), then re-worked
    from ``strength`` (default 0.35) over windows. The prompt may be empty. ``noise_inversion``
    starts from a DDIM inversion of the resized image's latents instead of fresh noise
    (``inversion_steps`` of them, default the steps that run); ``allow_pickle`` lets a ``.pth``
    upscaler file be unpickled (only for files you trust)."""

    task: ClassVar[str] = "upscale"
    prompt_required: ClassVar[bool] = False
    input_control: ClassVar[bool] = True  # control_image="input": the resized input (Tile ControlNet)

    strength: float = 0.35
    scale: float = 2.0
    upscaler: Any = "lanczos"
    noise_inversion: bool = False
    inversion_steps: int | None = None
    allow_pickle: bool = False

    def __post_init__(self, limits: Limits | None) -> None:
        given = self.height, self.width
        self.height = self.width = None
        self.scale = check_number("scale", self.scale, 1, MAX_SCALE)
        self.upscaler = check_upscaler(self.upscaler, self.allow_pickle)
        for key in ("noise_inversion", "allow_pickle"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be True or False, got {getattr(self, key)!r}")
        if self.inversion_steps is not None:
            self.inversion_steps = check_int("inversion_steps", self.inversion_steps, 1, MAX_STEPS)
        PanoramaOptions.__post_init__(self, limits)
        self.strength = check_strength(self.strength, steps=self.num_inference_steps)
        self.image = _input_image(self, "image")
        h, w = self.image.size
        what = f"the input's {w}x{h} times scale {self.scale:g}"
        _image_canvas(self, (round(h * self.scale), round(w * self.scale)), what)
        _derived_size(self, given, "an upscale's size is the image's times scale; give scale instead")


def check_upscaler(value: Any, allow_pickle: bool = False) -> Any:
    """A filter name (:data:`UPSCALE_FILTERS`), a callable, or an upscaler model file that exists
    and, when it is a pickle (.pth, .pt, .ckpt, .bin: opening one can run code), ``allow_pickle``."""
    if isinstance(value, str) and value.lower() in UPSCALE_FILTERS:
        return value.lower()
    if callable(value):
        return value
    if isinstance(value, Mapping):  # a result's stored record: the file must still be the one used
        return _recorded_upscaler(value, allow_pickle)
    if value == "callable":
        raise ValueError(
            "upscaler: these settings were made with a callable upscaler, which cannot be stored; give upscaler= "
            "(a filter name, a model file or the callable) again"
        )
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(
            f"upscaler must be one of {', '.join(map(repr, UPSCALE_FILTERS))}, an upscaler model file "
            f"(.safetensors, .pth) or a callable, got {type(value).__name__}"
        )
    from multidiffusion.images import ImageLimits, check_file
    from multidiffusion.models.files import is_pickle_path

    path = check_file(value, "upscaler", ImageLimits(max_bytes=MAX_UPSCALER_BYTES))
    if is_pickle_path(path) and allow_pickle is not True:
        raise ValueError(
            f"upscaler: {str(value)!r} is a pickle file, which can run code when opened; convert it to "
            ".safetensors, or pass allow_pickle=True (--allow-pickle) if you trust its source"
        )
    return str(value)


def _recorded_upscaler(value: Mapping, allow_pickle: bool) -> str:
    """The upscaler file a stored ``{"path": ..., "sha256": ...}`` names, if its bytes still hash to
    the recorded SHA-256 (so a record can only name content its author has, as for input images)."""
    from multidiffusion.models.files import sha256_file

    path, digest = value.get("path"), value.get("sha256")
    if set(value) != {"path", "sha256"} or not isinstance(path, str) or not isinstance(digest, str):
        raise ValueError(f"upscaler: a stored model file must be {{'path': ..., 'sha256': ...}}, got {dict(value)!r}")
    checked = check_upscaler(path, allow_pickle)
    if checked in UPSCALE_FILTERS:
        raise ValueError(f"upscaler: a stored model file must name a file, got the filter {path!r}")
    found = sha256_file(checked)
    if found != digest.lower():
        raise ValueError(
            f"upscaler: the model file {path!r} has changed since these settings were recorded (SHA-256 "
            f"{found[:12]}... instead of {digest[:12]}...); give the upscaler again"
        )
    return checked


def _derived_size(options: SamplingOptions, given: tuple[Any, Any], why: str) -> None:
    """Height and width given to a task that derives them must equal the derived ones (stored
    settings carry them)."""
    for key, value in zip(("height", "width"), given):
        if value is not None and value != getattr(options, key):
            raise ValueError(f"{key}: {why} ({getattr(options, key)} here), got {value!r}")


@dataclass
class InpaintOptions(Img2ImgOptions):
    """Inpainting: ``mask`` (white = repaint, black = keep; a file, PIL image or array of the image's
    size or aspect ratio) is feathered by ``mask_blur`` pixels; everything outside it is kept by
    blending the known image back after every step (any model) or, with a 9-channel inpainting
    UNet, by the model itself. ``strength`` 1 (the default) repaints the masked area from noise."""

    task: ClassVar[str] = "inpaint"

    strength: float = 1.0
    mask: Any = None
    mask_blur: int = 4

    def __post_init__(self, limits: Limits | None) -> None:
        super().__post_init__(limits)
        self.mask_blur = check_int("mask_blur", self.mask_blur, 0, 256)
        self.mask = _input_image(self, "mask", mode="L")
        check_same_aspect("mask", self.mask.size, "image", self.image.size)


@dataclass
class OutpaintOptions(Img2ImgOptions):
    """Outpainting: the canvas is the image extended by ``left``, ``right``, ``top`` and ``bottom``
    pixels (multiples of 8), painted under the prompt; the image is kept, its last ``overlap``
    pixels towards each new side repainted so the seam blends (``mask_blur`` feathers it). With
    ``circular=True`` the canvas wraps around: the showcase is a photo extended to 360 degrees."""

    task: ClassVar[str] = "outpaint"

    strength: float = 1.0
    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0
    overlap: int = 16
    mask_blur: int = 8

    def __post_init__(self, limits: Limits | None) -> None:
        given = self.height, self.width
        self.height = self.width = None
        lim = limits if limits is not None else LIBRARY_LIMITS
        for key in ("left", "right", "top", "bottom"):
            setattr(self, key, check_int(key, getattr(self, key), 0, lim.max_side))
            if getattr(self, key) % 8:
                raise ValueError(f"{key} must be a multiple of 8 (pixels), got {getattr(self, key)}")
        if not (self.left or self.right or self.top or self.bottom):
            raise ValueError("outpaint: give at least one of left, right, top, bottom (pixels to add)")
        self.overlap = check_int("overlap", self.overlap, 0, 512)
        self.mask_blur = check_int("mask_blur", self.mask_blur, 0, 256)
        PanoramaOptions.__post_init__(self, limits)
        self.strength = check_strength(self.strength, steps=self.num_inference_steps)
        self.image = _input_image(self, "image")
        h, w = self.image.size
        h, w = h - h % 8, w - w % 8
        size = (h + self.top + self.bottom, w + self.left + self.right)
        _image_canvas(self, size, f"the input's {w}x{h} plus the added sides")
        _derived_size(self, given, "an outpaint's size is the image's plus left, right, top and bottom")


TASK_OPTIONS: dict[str, type[SamplingOptions]] = {
    "panorama": PanoramaOptions,
    "regions": RegionsOptions,
    "img2img": Img2ImgOptions,
    "upscale": UpscaleOptions,
    "inpaint": InpaintOptions,
    "outpaint": OutpaintOptions,
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
    "control_image": "control_image",
    "control_scale": "controlnet_conditioning_scale",
    "control_start": "control_guidance_start",
    "control_end": "control_guidance_end",
    "guess_mode": "guess_mode",
    "control_preprocessor": "control_preprocessor",
    "control_mode": "control_mode",
}
"""The command line's flags (argparse dest) for the settings every task shares -> their API names,
which scene files, stored settings and the API use: a scene that says ``steps`` is told its name."""


def option_names(task: str) -> tuple[str, ...]:
    """The settings a task takes, by API name."""
    return tuple(f.name for f in dataclasses.fields(TASK_OPTIONS[task]) if f.init)


def build_options(task: str, values: Mapping[str, Any], limits: Limits | None = None) -> SamplingOptions:
    """The options of ``task`` from a mapping of API names (scene file, stored settings, a form).

    Unknown keys are errors with a suggestion; None values mean "the default"; lists become
    tuples for ``window`` and ``stride``."""
    if task not in TASK_OPTIONS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASK_OPTIONS))}, got {task!r}")
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
