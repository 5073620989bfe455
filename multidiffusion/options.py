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

import dataclasses
import difflib
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

from multidiffusion.engine.schedulers import SCHEDULERS, scheduler_name
from multidiffusion.engine.views import WEIGHTS
from multidiffusion.engine.windows import PLACEMENTS
from multidiffusion.regions.layout import MAX_REGIONS, Region, as_regions

__all__ = [
    "MAX_IMAGES",
    "MAX_SEED",
    "MAX_SIDE",
    "MAX_STEPS",
    "MIN_SIDE",
    "OUTPUT_TYPES",
    "PLACEMENTS",
    "SCHEDULER_NAMES",
    "TASK_OPTIONS",
    "WEIGHTS",
    "Limits",
    "PanoramaOptions",
    "RegionsOptions",
    "SamplingOptions",
    "build_options",
    "check_choice",
    "check_int",
    "check_negative",
    "check_number",
    "check_seed",
    "check_side",
    "check_text",
    "pair",
    "random_seed",
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
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)


# -- single values ---------------------------------------------------------------------------------
def check_int(name: str, value: Any, lo: int, hi: int | None = None, note: str = "") -> int:
    """``value`` as an int in [lo, hi] (integral floats accepted); ValueError naming ``name`` otherwise."""
    allowed = f"an integer ≥ {lo}" if hi is None else f"an integer from {lo} to {hi}"
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {allowed}, got {value}{note}")
    return value


def check_number(name: str, value: Any, lo: float, hi: float | None = None) -> float:
    """``value`` as a finite float in [lo, hi]; ValueError naming ``name`` otherwise."""
    allowed = f"a number ≥ {lo}" if hi is None else f"a number from {lo} to {hi}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return float(value)


def check_side(name: str, value: Any, multiple: int = 8, max_side: int = MAX_SIDE, note: str = "") -> int:
    """A canvas side in pixels: a multiple of ``multiple`` from MIN_SIDE to ``max_side``."""
    allowed = f"a multiple of {multiple} from {MIN_SIDE} to {max_side}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be {allowed} (pixels), got {value!r}")
    if value % multiple or not MIN_SIDE <= value <= max_side:
        raise ValueError(f"{name} must be {allowed} (pixels), got {value}{note if value > max_side else ''}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_text(name: str, value: Any, required: bool = True) -> str | None:
    """A prompt: text that is not only white space (None allowed when not ``required``) and can be
    encoded as UTF-8 (a command line in another encoding gives lone surrogates)."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty prompt{'' if required else ' or None'}, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be valid UTF-8 text, got {value!r}") from None
    return value


def check_seed(name: str, value: Any) -> int | None:
    """A seed: an integer from 0 to 2**64 - 1, or -1 / None for a random one (returns None)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be -1 (random) or an integer from 0 to {MAX_SEED}, got {value!r}")
    return None if value == -1 else value


def random_seed() -> int:
    """A fresh random seed (what -1 and an unset seed mean), below :data:`RANDOM_SEEDS`."""
    return secrets.randbelow(RANDOM_SEEDS)


def pair(name: str, value: Any) -> tuple[Any, Any]:
    """An int or a (rows, columns) pair as a pair."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an integer or a (height, width) pair, got {value!r}")
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
class SamplingOptions:
    """What every task shares. ``window`` and ``stride`` are latent pixels (an int or (rows, columns));
    None means the model's native window and the task's default stride. ``seed`` is what the shells
    turn into a generator (None or -1: random); the API takes ``generator`` instead."""

    task: ClassVar[str] = ""

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
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
        self.num_inference_steps = check_int("num_inference_steps", self.num_inference_steps, 1, lim.max_steps, note)
        self.guidance_scale = check_number("guidance_scale", self.guidance_scale, 0)
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

    def settings(self) -> dict[str, Any]:
        """The options as a mapping of API names (what ``build_options`` takes back)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


def check_negative(name: str, value: Any, count: int | None = None) -> None:
    """A negative prompt: None, a string ("" is none), or with ``count`` a list of that many strings."""
    items = value if count is not None and isinstance(value, (list, tuple)) else [value]
    if value is None or (len(items) == (count or 1) and all(isinstance(v, str) for v in items)):
        for v in items if value is not None else []:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{name} must be valid UTF-8 text, got {v!r}") from None
        return
    many = f" or a list of {count} strings (one per prompt)" if count is not None else ""
    raise ValueError(f"{name} must be a string{many} or None, got {value!r}")


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

    prompt: str | list[str] | None = None
    placement: str = "grid"
    weights: str | None = None

    def __post_init__(self, limits: Limits | None) -> None:
        if isinstance(self.prompt, (list, tuple)) and self.prompt:
            self.prompt = [check_text(f"prompt[{i}]", p) for i, p in enumerate(self.prompt)]
        else:
            check_text("prompt", self.prompt)
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
    steps, the paper's 20 of 50; 0: off) denoise each region over a random plain colour first."""

    task: ClassVar[str] = "regions"

    background: str | None = None
    regions: Sequence[Region | Mapping[str, Any]] = ()
    bootstrap_steps: int | None = None

    def __post_init__(self, limits: Limits | None) -> None:
        super().__post_init__(limits)
        self.background = check_text("background", self.background, required=False)
        check_negative("negative_prompt", self.negative_prompt)
        self.regions = as_regions(self.regions, self.checked_against.max_regions, self.checked_against.suffix())
        steps = self.num_inference_steps
        if self.bootstrap_steps is None:
            self.bootstrap_steps = int(0.4 * steps + 0.5)
        self.bootstrap_steps = check_int("bootstrap_steps", self.bootstrap_steps, 0, steps)
        if not self.regions and self.background is None:
            raise ValueError("regions: give at least one region or a background prompt")


TASK_OPTIONS: dict[str, type[SamplingOptions]] = {"panorama": PanoramaOptions, "regions": RegionsOptions}
"""Task name -> its options class. A new task registers its class here."""


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
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown setting {key!r}{hint}; {task} takes: {', '.join(names)}")
        if value is not None:
            kwargs[key] = tuple(value) if key in ("window", "stride") and isinstance(value, list) else value
    return TASK_OPTIONS[task](**kwargs, limits=limits)
