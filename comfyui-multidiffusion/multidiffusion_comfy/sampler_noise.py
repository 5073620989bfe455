"""The sampler's initial noise, for bootstrapping: ComfyUI's ``outer_sample`` is handed it, the model
function wrapper is not.

The library's bootstrapping noises each region's plain-colour background with the canvas's *initial*
noise under the view (as the paper's code; :mod:`multidiffusion.regions.bootstrap`). ComfyUI gives a
``model_function_wrapper`` only the model call's input, sigma and conditioning; the unit-variance
noise the sampler starts from (KSampler's seeded noise, or SamplerCustomAdvanced's NOISE input, e.g.
the pack's noise inversion) is an argument of the guider's ``outer_sample``, whose wrappers a MODEL
patch may add. :class:`SamplerNoise` keeps it for the duration of the sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["KEY", "SamplerNoise"]

KEY = "multidiffusion_sampler_noise"


class SamplerNoise:
    """The current sampling's initial noise (None outside a sampling run of the patched model)."""

    def __init__(self) -> None:
        self.noise: torch.Tensor | None = None

    def install(self, patched: Any) -> None:
        import comfy.patcher_extension as ext

        patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, KEY, self._outer_sample)

    def _outer_sample(self, executor: Callable, noise: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.noise = noise
        try:
            return executor(noise, *args, **kwargs)
        finally:
            self.noise = None

    def get(self, shape: Sequence[int], device: torch.device) -> torch.Tensor | None:
        """The noise, if a sampling is running and its noise has ``shape``; else None."""
        if self.noise is None or tuple(self.noise.shape) != tuple(shape):
            return None
        return self.noise.to(device)
