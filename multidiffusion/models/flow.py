"""What diffusion transformers trained with flow matching (SD 3 / 3.5, FLUX.1) share.

- **The canvas stays a latent image** (B, C, H, W); the adapter turns each batch of views into the
  transformer's input in :meth:`~multidiffusion.engine.adapter.ModelAdapter.predict` and its output
  back. Views, strides and window offsets are multiples of the patch size (2 latent pixels), so
  every view starts and ends on the token grid.
- **The fused quantity is the velocity** v = ε − z_0 the model predicts. The flow-matching Euler
  step x_{σ'} = x_σ + (σ' − σ) · v is affine in v with coefficients shared by all views, so fusing
  the velocities by Eq. 5 and stepping the canvas once equals stepping every view and averaging,
  as for DDIM (see :mod:`multidiffusion.engine.fusion`).
- **The schedule** is the scheduler's sigmas, shifted for the image size when the scheduler says
  ``use_dynamic_shifting`` (FLUX.1-dev; diffusers' ``calculate_shift``):

      μ = base_shift + (max_shift − base_shift) · (n − base_seq_len) / (max_seq_len − base_seq_len)

  with n the number of image tokens. Here n is the token count of a *view* (what the model sees),
  not of the canvas: a 1024 x 4096 panorama of 1024 px windows gets the 1024 px schedule the model
  was trained with, not the much stronger shift of an image four times as large.
- **Classifier-free guidance** is the engine's (both branches in one batched call); shared-prefix
  hooks are UNet-only and stay off.
- **ControlNets** (FLUX's ``FluxControlNetModel``, SD 3's ``SD3ControlNetModel``) take the control
  image as their pipelines do, encoded by the VAE (:meth:`FlowMatchingAdapter.control_input`). The
  canvas-sized control image is encoded once per call and each view's ControlNet gets the crop of
  those latents at the view's latent offset (wrapping around on circular canvases), exactly as the
  view's own latents are a crop of the canvas. The alternative, encoding each view's pixel crop,
  equals it at one view covering the canvas and differs only near view edges (the VAE's receptive
  field); it would cost a VAE encode per view (per step with shifted windows) and give one canvas
  place different control latents in different views. The encode takes the posterior's mean, where
  the pipelines draw a sample (FLUX from the call's generator, SD 3 from torch's global one, one
  per guidance branch); with a VAE whose posterior spread is nil the two agree, which is how the
  tests compare with diffusers (``tests/test_dit_controlnet.py``).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from multidiffusion.engine.noising import is_flow_matching
from multidiffusion.models.base import FamilyAdapter
from multidiffusion.vae.codec import encode_images

__all__ = ["FlowMatchingAdapter", "calculate_shift"]


def calculate_shift(
    tokens: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """μ for ``tokens`` image tokens: linear from ``base_shift`` at ``base_seq_len`` tokens to
    ``max_shift`` at ``max_seq_len`` (diffusers' ``calculate_shift``, the same numbers)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return tokens * m + (base_shift - m * base_seq_len)


class FlowMatchingAdapter(FamilyAdapter):
    """Base of the transformer adapters: ``pipe.transformer`` as the model, flow-matching schedules
    shifted by the window's token count, no UNet-only optimisations."""

    network = "transformer"
    components = ("vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    tokens_per_patch = 1
    """Latent patches the transformer reads per input channel group: its ``in_channels`` are the
    VAE's latent channels times this (4 for FLUX.1, which packs 2x2 patches before its input layer;
    1 for SD 3, which patchifies inside)."""
    max_sequence_length: int
    patch_size = 2
    shares_prefix = False
    explicit_sigmas = False
    """Whether the pipeline passes sigmas linspace(1, 1/n, n) to the scheduler (FLUX) or lets it
    make its own (SD 3)."""
    max_shift_default = 1.15
    """``calculate_shift``'s max_shift when the scheduler config has none (FLUX 1.15, SD 3 1.16)."""

    controlnet_guess_mode = False

    @classmethod
    def check_network(cls, pipe: Any) -> None:
        """A text-to-image transformer: its input is the VAE's latents (packed by
        :attr:`tokens_per_patch`), not also an image's (Fill, Control, Kontext)."""
        latent = pipe.vae.config.latent_channels
        channels = pipe.transformer.config.in_channels
        expected = cls.tokens_per_patch * latent
        if channels != expected:
            packed = " in 2x2 patches" if cls.tokens_per_patch > 1 else ""
            raise ValueError(
                f"the {type(pipe.transformer).__name__} takes {channels} input channels but {cls.family.upper()} "
                f"text-to-image takes {expected} (the VAE's {latent} latent channels{packed}): Fill, Control, "
                "Kontext and other image-conditioned variants need another input; use the text-to-image model"
            )

    @property
    def unet(self) -> torch.nn.Module:
        """The denoising network: the pipeline's transformer (the engine's name for it is ``unet``)."""
        return self.pipe.transformer

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def device(self) -> torch.device:
        return getattr(self.pipe, "_execution_device", None) or self.transformer.device

    @property
    def extra_channels(self) -> int:
        return 0

    @property
    def prediction_type(self) -> str:
        return "flow_prediction"

    def tokens(self, view: tuple[int, int]) -> int:
        """Image tokens of a view of (rows, columns) latent pixels."""
        return (view[0] // self.patch_size) * (view[1] // self.patch_size)

    def set_timesteps(self, scheduler: Any, steps: int, device: Any, view: tuple[int, int]) -> None:
        """The pipeline's schedule for an image of the view's size: sigmas as the pipeline passes
        them, and μ (:func:`calculate_shift`) from the view's token count when the scheduler shifts
        by resolution."""
        if not is_flow_matching(scheduler):
            raise ValueError(
                f"scheduler: {type(scheduler).__name__} is a DDPM-family scheduler, but this {self.family.upper()} "
                "model was trained with flow matching; use its own scheduler (the pipeline's "
                "FlowMatchEulerDiscreteScheduler, the default) or another flow-matching one"
            )
        params = inspect.signature(scheduler.set_timesteps).parameters
        config = scheduler.config
        kwargs: dict[str, Any] = {}
        if self.explicit_sigmas and "sigmas" in params and not config.get("use_flow_sigmas", False):
            kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
        if "mu" in params and config.get("use_dynamic_shifting", False):
            kwargs["mu"] = self.shift_mu(self.tokens(view), steps, config)
        scheduler.set_timesteps(steps, device=device, **kwargs)
        if torch.isnan(torch.as_tensor(scheduler.timesteps, dtype=torch.float32)).any():
            raise ValueError(  # Qwen-Image's shift_terminal stretch divides by zero at one step
                f"num_inference_steps: {steps} steps give {type(scheduler).__name__} with this configuration "
                "NaN timesteps (its shift_terminal stretch needs at least 2 steps); use 2 or more"
            )

    def shift_mu(self, tokens: int, steps: int, config: Any) -> float:
        """μ of the resolution shift for an image of ``tokens`` tokens sampled in ``steps`` steps, as
        the family's pipeline computes it: :func:`calculate_shift` from the scheduler's ``config``
        (FLUX.1, SD 3, Z-Image); FLUX.2 overrides it with its empirical μ, which also depends on ``steps``."""
        return calculate_shift(
            tokens,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", self.max_shift_default),
        )

    def adopt_controlnet(self, net: Any, name: str) -> Any:
        """A family that runs no ControlNet yet refuses one in a line (FLUX.1 and SD 3 run theirs)."""
        raise ValueError(f"{name}: ControlNets are not supported for {self.label} models yet")

    def control_latents(self, pixels: torch.Tensor, shift: bool = True) -> torch.Tensor:
        """The canvas's control image ``pixels`` (1, 3, H, W) in [0, 1] as its pipeline prepares it
        for the ControlNet: to [-1, 1], encoded (in tiles for large canvases; the posterior's mean),
        (z - shift_factor) * scaling_factor, or z * scaling_factor without ``shift``."""
        latents = encode_images(self.vae, 2 * pixels - 1, latent_format=self.latent_format)
        if not shift and getattr(self.vae.config, "shift_factor", None) is not None:
            latents = latents + self.vae.config.shift_factor * self.vae.config.scaling_factor
        return latents.to(self.device, self.dtype)
