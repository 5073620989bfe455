"""Noise inversion for upscaling: the NOISE from which ComfyUI's sampler redraws the input latent.

An upscale re-works the resized image's latents z_0 from a partial sigma σ_0 (img2img). Fresh noise
starts it at z_0 + σ_0 ε with a random ε, so the model redraws whatever the noise suggests; noise
inversion starts it at the DDIM inversion of z_0 up to σ_0 instead, an x_T that DDIM sampling
carries back to (nearly) z_0 itself, so the re-worked image keeps the input's structure and the
model adds detail (the library's ``noise_inversion=True``, :mod:`multidiffusion.tasks.upscale`).

**Why a NOISE node, not a sampler.** The node takes the sampler's own GUIDER (the model, its prompts,
cfg), its SIGMAS and the LATENT, runs our inversion (:func:`multidiffusion.engine.inversion.ddim_invert`,
or :func:`~multidiffusion.engine.inversion.flow_invert` for flow models: SD 3, FLUX) and outputs a
NOISE for ``SamplerCustomAdvanced``. ComfyUI's samplers, schedulers and guiders stay unchanged and
any of them can start from it; the inversion is computed once, when the node runs (a SAMPLER would
have to re-implement sampling around the inversion, and would tie it to one sampler). The sampler
then turns the NOISE into its start exactly as it turns fresh noise: x_T = z_0 + σ_0 ε̃ (for flow
models (1 − σ_0) z_0 + σ_0 ε̃), so ε̃ is solved from the inverted x_T.

**The denoiser is the guider's**: ComfyUI's model function with the positive and negative prompts and
cfg, the model's patches included. Through the MultiDiffusion patch (``MultiDiffusionTiled``) every
inversion step is the fused prediction of the paper's Eq. 5 over the tiled patch's windows, the same
windows as the sampling step it mirrors (the inversion runs with the sampler's ``sample_sigmas``, so
the shifted placement's per-step offsets match too), and a ControlNet on the conditioning acts as it
does when sampling. Guided, as the library inverts (see the upscale task's docstring): an unguided
inversion leaves a mismatch with a guided sampler, which reconstructed the input clearly worse on the
demo model, while an upscale's short path (denoise ~0.3-0.5) keeps a guided inversion accurate.

The inversion climbs the sampler's own sigmas in reverse (σ_{n−1}, ..., σ_0, the model asked at the
higher level, at the lower level's sample), so a deterministic first-order sampler (``euler``, which
on these models is DDIM η = 0, or ``ddim``) retraces it step for step; other samplers start from a
structured noise. In ComfyUI's units (x = x_VP / √ᾱ, σ = √((1 − ᾱ)/ᾱ)) the model's denoised x̂_0
gives ε = (x − x̂_0)/σ; for flow models the velocity is (x − x̂_0)/σ.
"""

from __future__ import annotations

from typing import Any

import comfy.model_sampling
import comfy.sample
import comfy.samplers
import torch

from multidiffusion.engine.fusion import FusionPlan, Job
from multidiffusion.engine.inversion import ddim_invert, flow_invert, implied_flow_noise, implied_noise
from multidiffusion.engine.views import View

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "InvertedNoise", "MultiDiffusionNoiseInversion"]


class InvertedNoise:
    """A ComfyUI NOISE holding the inverted noise of one latent (``generate_noise`` gives it back).

    ``seed`` seeds what a stochastic sampler draws on top (ancestral / SDE samplers)."""

    def __init__(self, noise: torch.Tensor, seed: int = 0):
        self.noise, self.seed = noise, seed

    def generate_noise(self, input_latent: dict[str, Any]) -> torch.Tensor:
        shape = tuple(input_latent["samples"].shape)
        if shape != tuple(self.noise.shape):
            raise ValueError(
                f"latent_image: the inverted noise is for a latent of shape {tuple(self.noise.shape)}, the sampler "
                f"got {shape}; give the sampler the latent the inversion was computed from"
            )
        return self.noise.clone()


class _Inversion(comfy.samplers.Sampler):
    """A ComfyUI sampler object that, instead of sampling, inverts the (processed) latent up the
    sigmas and keeps the implied noise in :attr:`noise`. Run through ``guider.sample`` so the guided
    model is prepared (conditions, patches, ``sample_sigmas``) exactly as for sampling."""

    noise: torch.Tensor | None = None

    def sample(
        self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False
    ):
        z0 = latent_image.float()
        run = sigmas[:-1].float()  # the sigmas the sampler asks the model at, descending
        run = run[run > 0]
        levels = run.flip(0)  # the inversion climbs them: σ_{n-1}, ..., σ_0
        canvas = (z0.shape[-2], z0.shape[-1])
        whole = FusionPlan([Job(View(0, 0, *canvas), 0)], canvas)  # the patch fuses the windows inside the model
        sampling = model_wrap.inner_model.model_sampling

        def denoised(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s = sigma.reshape(1).to(x.device).expand(x.shape[0])
            return model_wrap(x.to(latent_image.dtype), s, **extra_args).float()

        if isinstance(sampling, comfy.model_sampling.CONST):  # flow matching: Euler on the velocity

            def velocity(x: torch.Tensor, sigma: torch.Tensor, jobs) -> torch.Tensor:
                return (x - denoised(x, sigma)) / sigma

            inverted = flow_invert(velocity, z0, levels, levels.double(), lambda k: whole)
            self.noise = implied_flow_noise(z0, inverted, float(levels[-1]))
        else:
            alphas = 1.0 / (1.0 + levels.double() ** 2)  # ᾱ of each σ

            def epsilon(x_vp: torch.Tensor, sigma: torch.Tensor, jobs) -> torch.Tensor:
                x = x_vp * (1 + sigma**2) ** 0.5  # ComfyUI's x = x_VP / √ᾱ
                return (x - denoised(x, sigma)) / sigma

            inverted = ddim_invert(epsilon, z0, levels, alphas, lambda k: whole)
            self.noise = implied_noise(z0, inverted, float(alphas[-1]))
            if self.max_denoise(model_wrap, sigmas):  # the sampler scales that noise by √(1 + σ²), not σ
                top = float(levels[-1])
                self.noise = self.noise * (top / (1 + top**2) ** 0.5)
        return latent_image


def invert(guider: Any, sigmas: torch.Tensor, latent: dict[str, Any]) -> torch.Tensor:
    """The noise ε̃ that ``guider`` sampling down ``sigmas`` would turn back into ``latent``'s samples
    (up to DDIM's linearisation), shaped as them (float32, on the CPU)."""
    if sigmas.dim() != 1 or len(sigmas) < 2 or not bool((sigmas[:-1] > 0).any()):
        raise ValueError(f"sigmas: need at least one sampling step (two or more sigmas), got {sigmas.tolist()}")
    if bool((sigmas[1:] > sigmas[:-1]).any()):
        raise ValueError("sigmas must descend (the sampler's schedule, e.g. from BasicScheduler)")
    samples = comfy.sample.fix_empty_latent_channels(guider.model_patcher, latent["samples"])
    inversion = _Inversion()
    guider.sample(torch.zeros_like(samples), samples, inversion, sigmas, disable_pbar=True, seed=0)
    return inversion.noise.to("cpu", torch.float32)


class MultiDiffusionNoiseInversion:
    """Node: the inverted noise of a latent, for SamplerCustomAdvanced (upscaling with noise inversion)."""

    CATEGORY = "sampling/multidiffusion"
    RETURN_TYPES = ("NOISE",)
    OUTPUT_TOOLTIPS = (
        "The noise from which the sampler redraws the latent (DDIM inversion): plug it into SamplerCustomAdvanced "
        "with the same guider, sigmas and latent.",
    )
    FUNCTION = "invert"
    DESCRIPTION = (
        "Noise inversion for upscaling (A1111 Tiled Diffusion's 'Noise Inversion', over MultiDiffusion's fused "
        "windows): the latent is carried up the sampler's sigmas by DDIM inversion (Euler for flow models) with "
        "the guider's own model, prompts and cfg, so sampling from this noise redraws the input with new detail "
        "instead of re-imagining it. Use a deterministic sampler (euler, ddim) and a partial schedule (denoise "
        "0.3-0.6); the model may carry the MultiDiffusion patch, whose windows the inversion then uses."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "guider": (
                    "GUIDER",
                    {
                        "tooltip": "The guider the sampler uses (e.g. CFGGuider over the MultiDiffusion-patched model "
                        "with the positive / negative prompts and cfg): the inversion asks the same guided model."
                    },
                ),
                "sigmas": (
                    "SIGMAS",
                    {
                        "tooltip": "The sampler's sigmas (e.g. BasicScheduler with denoise < 1): the inversion climbs "
                        "them in reverse, up to the first sigma the sampler runs."
                    },
                ),
                "latent_image": (
                    "LATENT",
                    {"tooltip": "The latent to invert (the upscaled image, encoded): the sampler's latent_image too."},
                ),
                "noise_seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFFFFFFFFFF,
                        "control_after_generate": True,
                        "tooltip": "Seed of the extra noise a stochastic sampler (ancestral, SDE) draws while "
                        "sampling; the inverted noise itself does not depend on it.",
                    },
                ),
            }
        }

    def invert(self, guider: Any, sigmas: torch.Tensor, latent_image: dict[str, Any], noise_seed: int) -> tuple[Any]:
        return (InvertedNoise(invert(guider, sigmas, latent_image), noise_seed),)


NODE_CLASS_MAPPINGS = {"MultiDiffusionNoiseInversion": MultiDiffusionNoiseInversion}
NODE_DISPLAY_NAME_MAPPINGS = {"MultiDiffusionNoiseInversion": "MultiDiffusion Noise Inversion (upscale)"}
