"""The task methods' shared keyword arguments, once: typed dictionaries for ``**kwargs: Unpack[...]``
(so IDEs and type checkers see every argument of ``md.upscale``) and the signature ``help()`` shows,
built from them and the task's options dataclass (its defaults).

Each key of :class:`SamplingArgs` is a field of :class:`~multidiffusion.options.SamplingOptions` of
the same type, except the three objects of a call (``generator``, ``latents``,
``callback_on_step_end``), which are not settings; ``tests/test_arguments.py`` checks that the two
lists agree for every task, so a field added to the options without its argument (or the other way
round) fails there.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

import torch

from multidiffusion.conditionings import ConditioningArgs

__all__ = ["CALL_ARGUMENTS", "PlacementArgs", "SamplingArgs", "task_method"]

Generator = torch.Generator | list[torch.Generator] | None


class CallArgs(TypedDict, total=False):
    """The objects of one call, not settings (results record the seed they lead to)."""

    generator: Generator
    latents: torch.Tensor | None
    callback_on_step_end: Callable[..., dict | None] | None


CALL_ARGUMENTS: tuple[str, ...] = tuple(CallArgs.__annotations__)


class SamplingArgs(CallArgs, ConditioningArgs, total=False):
    """What every task method takes as keywords (see :meth:`MultiDiffusion.panorama`); every
    conditioning kind's too."""

    num_inference_steps: int | None
    guidance_scale: float | None
    negative_prompt: str | list[str] | None
    window: int | tuple[int, int] | None
    stride: int | tuple[int, int] | None
    circular: bool
    view_batch_size: int | None
    num_images_per_prompt: int
    output_type: str
    scheduler: Any
    eta: float
    step_cache: str | None
    step_cache_threshold: float | None
    step_cache_interval: int | None
    step_cache_mb: float | None
    pre_average: bool


class PlacementArgs(SamplingArgs, total=False):
    """Every task's keywords but the region layout's: where windows go and how they weigh."""

    placement: str
    weights: str | None


Method = TypeVar("Method", bound=Callable[..., Any])


def task_method(options: type, keywords: type) -> Callable[[Method], Method]:
    """A task method of :class:`~multidiffusion.MultiDiffusion` run under ``torch.no_grad``, whose
    signature (``help()``, ``inspect.signature``) lists its own parameters, then every key of the
    typed dictionary ``keywords`` as keyword-only, with ``options``' defaults (None for the objects
    of the call). Keywords that are not in ``keywords`` are a ``TypeError``, as for any function."""

    def decorate(method: Method) -> Method:
        own = inspect.signature(method)
        kept = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        defaults = {f.name: f.default for f in dataclasses.fields(options) if f.init}
        written = {name: getattr(t, "__forward_arg__", t) for name, t in keywords.__annotations__.items()}
        names = sorted(written, key=lambda name: name in CALL_ARGUMENTS)  # the call's objects last
        shared = [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(name), annotation=written[name]
            )
            for name in names
        ]
        allowed = set(written)

        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            unknown = sorted(set(kwargs) - allowed - set(own.parameters))
            if unknown:
                raise TypeError(f"{method.__name__}() got an unexpected keyword argument {unknown[0]!r}")
            with torch.no_grad():
                return method(self, *args, **kwargs)

        wrapper.__signature__ = own.replace(parameters=[*kept, *shared])  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
