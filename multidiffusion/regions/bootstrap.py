"""Bootstrapping (paper Sec. 4.2): for the first steps, each foreground region is denoised as if it
stood alone over a random constant-colour background, which makes objects fill tight masks.

For a foreground job (view F_i, region k) at step t < bootstrap_steps, the model input is

    x_k = M_k ⊙ F_i(x_t) + (1 − M_k) ⊙ noise(enc(c), t),     c a random colour

where enc(c) is the VAE latent of a constant image of colour c and noise(z, t) is
``scheduler.add_noise(z, ε, t)`` (``scale_noise`` for flow matching) with ε the canvas's *initial*
noise under the view (as the paper's code). Only the model's input changes, never the canvas: with
binary masks M_k ⊙ x_k = M_k ⊙ x_t, so for DDIM this equals the paper's per-view stepping exactly.

Backgrounds, as the paper's script: a pool of random colours (uniform RGB, one per bootstrapping
step, at most :data:`MAX_COLOURS`) is encoded once per call, and every (step, view, region, image)
picks one at random. All picks are drawn up front (:func:`draw_backgrounds`), so the result does not
depend on view batching or on which jobs are skipped, and a peer implementation can draw the same.

Encoding: one batched VAE call (in chunks of :data:`ENCODE_BATCH`) of window-sized constant images,
which is what the paper does (it encodes 512 x 512 images for its 64 x 64 windows); every view has
the window's size, so the latents are used as they are (cropped if a view is smaller). We take the
posterior's mean where the paper samples it: SD's VAE posterior is narrow, the draw is drowned by the
noise added next, and the mean keeps the generator's draws to the colours and picks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from multidiffusion.engine.fusion import InputComposer, Job
from multidiffusion.engine.noising import noise_to, scale_input
from multidiffusion.engine.views import View, crop
from multidiffusion.regions.layout import RegionLayout
from multidiffusion.vae.codec import encode_constant
from multidiffusion.vae.latents import LatentFormat

__all__ = ["ENCODE_BATCH", "MAX_COLOURS", "BootstrapBackgrounds", "bootstrap_composer", "draw_backgrounds"]

MAX_COLOURS = 20
"""Size of the colour pool: the paper draws one colour per bootstrapping step (20 of 50)."""
ENCODE_BATCH = 4
"""Constant-colour images per VAE encoder call."""


@dataclass
class BootstrapBackgrounds:
    """Encoded constant-colour backgrounds and which one each (step, view, region, image) uses.

    ``latents``: (N, C, h, w) diffusion latents (scaled) of the ``colours`` (N, 3) in [0, 1];
    ``picks``: (steps, views, regions, images) indices into them.
    """

    colours: torch.Tensor
    latents: torch.Tensor
    picks: torch.Tensor

    @property
    def steps(self) -> int:
        return self.picks.shape[0]

    def get(self, step: int, view: int, region: int, size: tuple[int, int]) -> torch.Tensor:
        """The (images, C, h, w) un-noised background latents of a job, cropped to the view size."""
        z = self.latents[self.picks[step, view, region]]
        return z[..., : size[0], : size[1]]


def draw_backgrounds(
    vae: torch.nn.Module,
    *,
    steps: int,
    views: int,
    regions: int,
    images: int,
    size: tuple[int, int],
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    dtype: torch.dtype | None = None,
    latent_format: LatentFormat | None = None,
) -> BootstrapBackgrounds:
    """Draw the colour pool (min(steps, MAX_COLOURS) colours, uniform RGB) then every pick, from
    ``generator`` (its first one if a list; torch's global generator if None), and encode the pool.
    ``size`` is the views' size in latent pixels; ``latent_format``: the model's (its adapter's)."""
    gen = generator[0] if isinstance(generator, Sequence) else generator
    device = gen.device if gen is not None else torch.device("cpu")
    count = max(1, min(steps, MAX_COLOURS))
    colours = torch.rand((count, 3), generator=gen, device=device).cpu()
    picks = torch.randint(count, (steps, views, regions, images), generator=gen, device=device)
    latents = encode_constant(vae, colours, size, batch=ENCODE_BATCH, latent_format=latent_format)
    if dtype is not None:
        latents = latents.to(dtype)
    return BootstrapBackgrounds(colours, latents, picks.to(latents.device))


def bootstrap_composer(
    layout: RegionLayout,
    views: Sequence[View],
    backgrounds: BootstrapBackgrounds,
    noise: torch.Tensor,
    scheduler,
    around: Callable | None = None,
) -> Callable[[int, torch.Tensor], InputComposer | None]:
    """``composer_for_step(i, t)`` for :func:`~multidiffusion.engine.sampler.sample`: during the first
    ``backgrounds.steps`` steps, a composer that puts each foreground job's region over its noised
    background; None afterwards. ``noise`` is the canvas's initial noise (B, C, H, W), unscaled.
    ``around``: wraps the model while the composer runs (mask-centring, :mod:`.few_step`); the
    sampler reads it as the composer's ``around`` attribute."""
    index = {view: i for i, view in enumerate(views)}
    masks = layout.masks.to(device=noise.device, dtype=noise.dtype)

    def for_step(step: int, t: torch.Tensor) -> InputComposer | None:
        if step >= backgrounds.steps:
            return None

        def compose(crops: torch.Tensor, jobs: Sequence[Job]) -> torch.Tensor:
            n = noise.shape[0]
            out = crops.clone()
            for j, job in enumerate(jobs):
                region = layout.region_index(job.prompt)
                if region is None:
                    continue
                bg = backgrounds.get(step, index[job.view], region, job.view.size).to(crops.dtype)
                timesteps = t.reshape(1).expand(n).to(crops.device)
                noised = noise_to(scheduler, bg, crop(noise, job.view).to(crops.dtype), timesteps)
                noised = scale_input(scheduler, noised, t)  # the crops are already scaled
                m = crop(masks[job.prompt], job.view)
                out[j * n : (j + 1) * n] = m * crops[j * n : (j + 1) * n] + (1 - m) * noised
            return out

        if around is not None:
            compose.around = around  # type: ignore[attr-defined]
        return compose

    return for_step
