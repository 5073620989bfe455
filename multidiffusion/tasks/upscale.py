"""Upscaling: the input resized ``scale`` times (:mod:`multidiffusion.upscalers`), then re-worked by
MultiDiffusion from ``strength`` (img2img over windows), so the model adds the detail a filter
cannot while every window is fused with its neighbours at every step (no tile seams, unlike
independent tiles each img2img'd on its own).

The canvas is the input's size times ``scale``, rounded down to multiples of 8; the encode and the
decode are tiled, so memory follows the VAE tile and the window, not the image. The fast mode
(``placement="shifted"``) matters most here: an upscale's canvas is large in both directions, where
the paper's grid (stride window/8 both ways) pushes each latent pixel through the model 20 (SD at
1024 px) to 50 (4096 px) times per step, shifted windows ~1.5 times ((8/7)² plus the windows
pinned to the edges).

**Noise inversion** (``noise_inversion=True``): instead of adding fresh noise to the resized image's
latents z_0, sampling starts from a DDIM inversion of z_0 (for flow-matching models, SD 3 and FLUX,
the Euler inversion of their velocity) up to the first timestep that runs
(:mod:`multidiffusion.engine.inversion`), computed with the same fused MultiDiffusion prediction
over the canvas. The start then encodes the image's own structure rather than random noise, so
the re-worked image keeps more of the input (measured in ``benchmarks/results/``).

The inversion uses **the sampler's own guided model**: the prompt at ``guidance_scale`` (A1111's
Tiled Diffusion "Noise Inversion" conditions its inversion on the prompt too), with the same
windows as the sampling step it mirrors and the call's conditionings (a Tile ControlNet, an
IP-Adapter image) acting as they do at that step. DDIM sampling then retraces the inversion step
for step, up to DDIM's linearisation. The alternative, inverting at guidance 1 (as null-text inversion does,
because guided inversion drifts over a full path to pure noise), leaves a mismatch between the
inverted path and a guided sampler; on the demo model it reconstructed the input clearly worse at
every strength tried, while an upscale's path (strength ~0.35) is short enough for guided inversion
to stay accurate. With the default empty prompt and no negative, guidance is a no-op that the
runner skips, so the inversion costs one UNet row per window. Its cost, ``inversion_steps`` x the
jobs of a step (a job being one window under the prompt), is what
:meth:`UpscaleTask.extra_evaluations` reports to the compute bound; the run's ``stats`` count its
model calls, jobs and evaluations (not its latent pixels, so ``coverage`` stays per sampling step).

**Tile ControlNet**: on a model with ControlNets, an upscale without ``control_image`` conditions
each ControlNet on the resized input (the canvas-sized image the upscaler made), each view on its
crop, as the Tile ControlNet expects; ``control_image="input"`` says so explicitly (and may sit in a
list beside other control images), and the settings record it as ``"control_image": ["input"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from multidiffusion.engine.inversion import (
    alphas_at,
    ddim_invert,
    flow_invert,
    implied_flow_noise,
    implied_noise,
    inversion_levels,
    sigmas_at,
)
from multidiffusion.engine.noising import is_flow_matching, noise_to
from multidiffusion.engine.sampler import GuidedModel, SamplingStats
from multidiffusion.engine.task import Start
from multidiffusion.io.ranges import steps_that_run
from multidiffusion.options import UPSCALE_FILTERS, UpscaleOptions
from multidiffusion.tasks.img2img import Img2ImgTask
from multidiffusion.upscalers import require_spandrel, upscale_image, upscaler_record

__all__ = ["UpscaleTask"]


class UpscaleTask(Img2ImgTask):
    """Img2img over the panorama's windows, on the input resized by the upscaler; optionally from a
    DDIM inversion of the resized image instead of fresh noise."""

    name = "upscale"
    options: UpscaleOptions

    def __init__(self, options: UpscaleOptions, adapter: Any):
        super().__init__(options, adapter)
        self.resized: Any = None  # the input resized to the canvas, after prepare
        self.inversion_stats = SamplingStats()  # what the inversion cost (also added to the run's)
        up = options.upscaler
        if isinstance(up, str) and up not in UPSCALE_FILTERS:
            require_spandrel()  # fail before any work when the model file cannot be read here

    # -- before the noise: resize, then encode ------------------------------------------------------
    def prepare(self, generator: Any, images: int, vae_tiling: dict[str, Any]) -> None:
        o = self.options
        resized = upscale_image(
            o.image.image, size=self.size, upscaler=o.upscaler, allow_pickle=o.allow_pickle, device=self.adapter.device
        )
        self.resized = resized  # the canvas input a conditioning may take (the Tile ControlNet's control image)
        self.input.encode(generator, images, vae_tiling, pixels=_pixels(resized))

    def canvas_input(self) -> Any:
        return self.resized

    # -- the start: noised as img2img, or inverted --------------------------------------------------
    @property
    def inversion_steps(self) -> int:
        """Inversion steps: the option's, else as many as sampling runs (diffusers' count for the
        strength: :func:`~multidiffusion.io.ranges.steps_that_run`)."""
        o = self.options
        return o.inversion_steps or steps_that_run(o.num_inference_steps, o.strength)

    def extra_evaluations(self, jobs_per_step: int) -> int:
        return self.inversion_steps * jobs_per_step if self.options.noise_inversion else 0

    def start_latents(self, start: Start) -> torch.Tensor:
        if not self.options.noise_inversion or start.timesteps is None or not len(start.timesteps):
            return self.input.noised(start)
        z0 = self.input.latents
        if z0 is None:
            raise RuntimeError("encode the input (prepare) before inverting it")
        model = self._inversion_model(start.model)
        levels = inversion_levels(start.timesteps, self.inversion_steps)
        runs = len(start.timesteps)
        mirror = len(levels) == runs  # step k retraces sampling step runs-1-k: use its windows

        def plan_for_level(k: int):
            # conditionings act as at the sampling step this level mirrors (a ControlNet's range, ...)
            model.at_step(runs - 1 - (k if mirror else k * runs // len(levels)), runs)
            return start.plan_for_step(runs - 1 - k if mirror else runs + k)

        with model.attached():
            if is_flow_matching(start.scheduler):  # SD 3, FLUX: Euler on the velocity, upwards
                sigmas = sigmas_at(start.scheduler, levels)
                inverted = flow_invert(model, z0, levels, sigmas, plan_for_level, start.batch_size)
                noise = implied_flow_noise(z0, inverted, float(sigmas[-1]))
            else:
                alphas = alphas_at(start.scheduler, levels)
                inverted = ddim_invert(
                    model, z0, levels, alphas, plan_for_level, start.batch_size, self.adapter.prediction_type
                )
                noise = implied_noise(z0, inverted, float(alphas[-1]))
        main = start.model.stats
        for key in ("model_calls", "jobs", "evaluations"):
            setattr(main, key, getattr(main, key) + getattr(self.inversion_stats, key))
        return noise_to(start.scheduler, z0, noise, start.timesteps[:1].repeat(z0.shape[0]))

    def _inversion_model(self, guided: GuidedModel) -> GuidedModel:
        """The run's guided model (same prompts, guidance, switches and conditionings), counting into
        :attr:`inversion_stats` so the sampling's coverage stays its own."""
        return GuidedModel(
            guided.adapter,
            guided.cond,
            guided.guidance,
            guided.canvas,
            self.inversion_stats,
            share_prefix=guided.prefix is not None,
            share_unconditional=guided.share_unconditional,
            conditionings=guided.conditionings,  # the same model the sampling steps retrace
        )

    def parameters(self) -> dict[str, Any]:
        o = self.options
        return {
            **super().parameters(),
            "scale": o.scale,
            "upscaler": upscaler_record(o.upscaler),
            "noise_inversion": o.noise_inversion,
            "inversion_steps": self.inversion_steps if o.noise_inversion else o.inversion_steps,
        }


def _pixels(image: Any) -> torch.Tensor:
    """An RGB PIL image as (1, 3, H, W) float32 in [-1, 1], computed as diffusers' image processor
    does (x / 255, then 2x - 1: the same values) but in place, so a 4096 x 4096 input costs one float
    copy (201 MB), not three."""
    rgb = np.array(image)
    # (1, H, W, 3) -> (1, 3, H, W) with diffusers' strides too: convolutions pick their kernels by
    # memory layout, so another layout of the same values encodes to latents ~1e-7 apart
    x = torch.from_numpy(rgb.reshape(1, *rgb.shape)).permute(0, 3, 1, 2).float()
    return x.div_(255.0).mul_(2.0).sub_(1.0)
