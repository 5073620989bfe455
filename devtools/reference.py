"""The paper's region loop, written out directly: a peer for tests and benchmarks, not used by the
library.

This follows the authors' ``region_based.py`` (omerbt/MultiDiffusion): at every step, for every
view, all prompts go through the UNet together (both guidance branches), a DDIM step is taken *per
view and prompt*, and the canvas becomes the mask-weighted average of the stepped views,

    x_{t-1} = Σ_{view, k} F⁻¹(M_k ⊙ step(ε_k, t, x_k)) / Σ_{view, k} F⁻¹(M_k),

where, during the first ``bootstrap_steps`` steps, a foreground prompt's input (and the sample it
steps from) is its region over a noised constant-colour background,
x_k = M_k ⊙ x + (1 − M_k) ⊙ add_noise(bg, ε, t); otherwise x_k = x. Prompts are evaluated in every
view, masks zero or not (no skipping). The library instead fuses predictions and steps the canvas
once (:mod:`multidiffusion.engine.fusion`); for DDIM with binary masks the two agree.

DDIM only (η = 0): a scheduler step per view is only well defined for a scheduler without history.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DDIMScheduler

from multidiffusion.engine.views import View, crop, paste_add
from multidiffusion.regions.bootstrap import BootstrapBackgrounds

__all__ = ["paper_regions"]


@torch.no_grad()
def paper_regions(
    pipe: Any,
    prompts: Sequence[str],
    masks: torch.Tensor,
    latents: torch.Tensor,
    *,
    num_inference_steps: int,
    guidance_scale: float | Sequence[float] = 7.5,
    negative_prompts: Sequence[str] | None = None,
    views: Sequence[View] | None = None,
    background: bool = True,
    bootstrap_steps: int = 0,
    backgrounds: BootstrapBackgrounds | None = None,
) -> torch.Tensor:
    """Denoise ``latents`` (B, C, h, w; the initial noise) with the paper's per-view region loop.

    ``masks`` (P, h, w) are the prompts' masks on the latent grid (slot 0 the background when
    ``background``: it is never bootstrapped); ``views`` default to one covering the canvas;
    ``backgrounds`` give the bootstrap backgrounds of (step, view index, region) (see
    :func:`multidiffusion.regions.bootstrap.draw_backgrounds`). Returns the final latents.
    """
    unet, device = pipe.unet, latents.device
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    n_prompts, batch = len(prompts), latents.shape[0]
    height, width = latents.shape[-2:]
    views = list(views) if views is not None else [View(0, 0, height, width)]
    first_foreground = 1 if background else 0

    positive, negative = pipe.encode_prompt(
        list(prompts), device, batch, True, negative_prompt=list(negative_prompts or [""] * n_prompts)
    )
    embeddings = torch.cat([negative, positive])  # prompt-major: prompt 0 x B, prompt 1 x B, ...
    scales = torch.as_tensor(guidance_scale, dtype=latents.dtype, device=device).expand(n_prompts)
    scales = scales.repeat_interleave(batch).view(-1, 1, 1, 1)
    noise = latents  # DDIM's initial noise sigma is 1: x_T is the noise itself
    x = latents.clone()

    for i, t in enumerate(scheduler.timesteps):
        value = torch.zeros_like(x)
        count = torch.zeros((1, 1, height, width), dtype=x.dtype, device=device)
        for v, view in enumerate(views):
            m = crop(masks, view).to(x.dtype)  # (P, h, w)
            inputs = crop(x, view).repeat(n_prompts, 1, 1, 1)
            if i < bootstrap_steps:
                for k in range(first_foreground, n_prompts):
                    bg = backgrounds.get(i, v, k - first_foreground, view.size).to(x.dtype)
                    bg = scheduler.add_noise(bg, crop(noise, view), t)
                    rows = slice(k * batch, (k + 1) * batch)
                    inputs[rows] = m[k] * inputs[rows] + (1 - m[k]) * bg
            out = unet(torch.cat([inputs, inputs]), t, encoder_hidden_states=embeddings).sample
            uncond, cond = out.chunk(2)
            eps = uncond + scales * (cond - uncond)
            stepped = scheduler.step(eps, t, inputs).prev_sample
            stepped = stepped.view(n_prompts, batch, *stepped.shape[1:])
            paste_add(value, view, (stepped * m[:, None, None]).sum(0))
            paste_add(count, view, m.sum(0))
        x = torch.where(count > 0, value / count, value)
    return x
