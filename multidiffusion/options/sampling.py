"""What every task shares (:class:`SamplingOptions`: steps, guidance, windows, scheduler, seed and
every conditioning kind's fields), and the panorama's options, which the image tasks extend."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

from multidiffusion.conditionings import ConditioningOptions
from multidiffusion.conditionings import check_options as check_conditionings
from multidiffusion.engine.schedulers import FLOW_SCHEDULERS, SCHEDULERS, scheduler_name
from multidiffusion.engine.views import WEIGHTS
from multidiffusion.engine.windows import PLACEMENTS
from multidiffusion.io.checks import check_choice, check_int, check_number
from multidiffusion.io.messages import shown
from multidiffusion.io.ranges import (
    check_guidance,
    check_negative,
    check_seed,
    check_side,
    check_strength,
    check_text,
    pair,
)
from multidiffusion.options.limits import LIBRARY_LIMITS, Limits

__all__ = ["OUTPUT_TYPES", "SCHEDULER_NAMES", "STEP_CACHES", "PanoramaOptions", "SamplingOptions"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
STEP_CACHES = ("first_block", "taylorseer")
"""diffusers' cache hooks a call may put on a diffusion transformer, per batch of views
(:mod:`multidiffusion.runner.step_cache`): first-block cache (its ``threshold``) and TaylorSeer
(its ``cache_interval``)."""
SCHEDULER_NAMES: tuple[str, ...] = (*SCHEDULERS, *FLOW_SCHEDULERS)


def _window(name: str, value: Any, lo: int, his: tuple[int | None, int | None] = (None, None)) -> Any:
    """A window or stride: an int, or a (rows, columns) pair; kept as given (int or tuple)."""
    if value is None:
        return None
    rows, cols = pair(name, value)
    rows, cols = check_int(name, rows, lo, his[0]), check_int(name, cols, lo, his[1])
    return (rows, cols) if isinstance(value, (list, tuple)) else rows


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
    step_cache: str | None = None  # None: every evaluation computed; else one of STEP_CACHES
    step_cache_threshold: float | None = None  # first_block's residual threshold (None: diffusers' 0.05)
    step_cache_interval: int | None = None  # taylorseer's steps between full computations (None: diffusers' 5)
    step_cache_mb: float | None = None  # bound on the cached state of all view batches (None: step_cache's default)
    pre_average: bool = False  # fuse views' own denoised estimates (engine.pre_average): bootstrapped soft masks
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
            raise ValueError(f"circular must be True or False, got {shown(self.circular)}")
        if not isinstance(self.pre_average, bool):
            raise ValueError(f"pre_average must be True or False, got {shown(self.pre_average)}")
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
        self._check_step_cache()
        check_conditionings(self)  # every conditioning kind's fields (ControlNet's, ...)

    def _check_step_cache(self) -> None:
        """``step_cache`` a known kind (or None); a kind's own setting only with that kind."""
        if self.step_cache is not None:
            check_choice("step_cache", self.step_cache, STEP_CACHES)
        own = {"step_cache_threshold": "first_block", "step_cache_interval": "taylorseer"}
        for name, kind in own.items():
            if getattr(self, name) is not None and self.step_cache != kind:
                raise ValueError(f"{name} applies to step_cache={kind!r} only, got step_cache={shown(self.step_cache)}")
        if self.step_cache_threshold is not None:
            self.step_cache_threshold = check_number("step_cache_threshold", self.step_cache_threshold, 0)
        if self.step_cache_interval is not None:
            self.step_cache_interval = check_int("step_cache_interval", self.step_cache_interval, 1, 1000)
        if self.step_cache_mb is not None:
            self.step_cache_mb = check_number("step_cache_mb", self.step_cache_mb, 0, 2**30)  # up to 1 PiB

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


@dataclass
class PanoramaOptions(SamplingOptions):
    """A panorama (paper Sec. 4.1): one prompt (or one per image) over sliding windows.

    ``placement``: "grid", the paper's fixed sliding windows, or "shifted", the fast mode (windows
    at a fresh seeded offset every step, SpotDiffusion). ``weights``: "uniform" (the paper's W_i = 1)
    or "gaussian" (Mixture of Diffusers); None picks the placement's default: uniform for the grid,
    Gaussian for shifted windows, whose default stride makes them overlap by 1/8 (the setting
    measured to hide the moving seams; see docs/benchmarks.md, "Speed and memory").
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
