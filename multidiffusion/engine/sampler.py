"""The sampling loop: any diffusers scheduler, one step per canvas on the fused prediction.

    for t in scheduler.timesteps:
        x = scheduler.step(fused_prediction(model, scale(x), t, plan), t, x)

Guidance lives in :class:`GuidedModel` (both branches of every view in one UNet call); views and
weights in the :class:`~multidiffusion.engine.fusion.FusionPlan` of each step; everything model-specific in
the adapter. The scheduler keeps its own duties: ``init_noise_sigma``, ``scale_model_input``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from multidiffusion.engine.adapter import ModelAdapter, PromptEmbeddings, select_rows
from multidiffusion.engine.conditioning import Conditioning, ModelCall
from multidiffusion.engine.fusion import Denoiser, FusionPlan, InputComposer, Job, fused_prediction
from multidiffusion.engine.noising import scale_input
from multidiffusion.engine.pre_average import input_rate, pre_averaged
from multidiffusion.engine.shared_prefix import SharedPrefix

__all__ = ["GuidedModel", "SamplingStats", "sample"]


@dataclass
class SamplingStats:
    """What a run cost: UNet calls, jobs (views x prompts) evaluated, latent pixels through the UNet."""

    model_calls: int = 0
    jobs: int = 0
    evaluations: int = 0  # UNet batch rows: crops under a prompt, plus the unconditional ones
    latent_pixels: int = 0
    steps: int = 0
    canvas_pixels: int = 0
    seconds: float = 0.0  # wall time of the whole call, decode included
    ranks: int = 1  # processes the views were sharded across (engine.distributed); counts above: all ranks'
    bytes_all_reduced: int = 0  # payload of the sampling steps' all-reduces (Eq. 5 numerators), this rank
    vae_bytes: int = 0  # payload the tiled VAE exchanged between ranks (tiles and GroupNorm moments), this rank
    rank_latent_pixels: list[int] = field(default_factory=list)  # each rank's share, when sharded
    counts: dict[str, float] = field(default_factory=dict)
    """What the call's conditionings counted, by name (:meth:`Conditioning.stats`), also readable as
    attributes (``stats.lora_switches``)."""

    def __getattr__(self, name: str) -> float:
        counts = self.__dict__.get("counts", {})
        if name in counts:
            return counts[name]
        raise AttributeError(
            f"{type(self).__name__} has no {name!r} (this call's conditionings counted: {sorted(counts)})"
        )

    @property
    def coverage(self) -> float:
        """Latent pixels through the UNet per canvas latent pixel per step, per guidance branch."""
        if not self.steps or not self.canvas_pixels:
            return 0.0
        return self.latent_pixels / (self.steps * self.canvas_pixels)

    @property
    def bytes_all_reduced_per_step(self) -> float:
        """Payload all-reduced per sampling step (0 in a single process)."""
        return self.bytes_all_reduced / self.steps if self.steps else 0.0


class GuidedModel:
    """Φ(x | y) with classifier-free guidance, ε_u + s (ε_c − ε_u), for a batch of jobs.

    The crops of all jobs and both guidance branches go through the model in one call
    (:meth:`~multidiffusion.engine.adapter.ModelAdapter.predict`); a UNet's layers before the first
    cross-attention run once for both branches (:mod:`~multidiffusion.engine.shared_prefix`;
    ``share_prefix=False`` turns that off). ``guidance`` holds one scale per prompt slot (regions may
    set their own).

    ``conditionings`` (:class:`~multidiffusion.engine.conditioning.Conditioning`: ControlNets, LoRA
    sets, skip-layer guidance, ...) act where they say they are active: each merges its model inputs
    into the call's keyword arguments, and may add a term to the guided prediction (skip-layer
    guidance: s_l (ε_c − ε_skip)). The model names none of them.

    Shared unconditional branch: jobs of one call that see the same view with bit-identical crops
    and the same negative conditioning (the prompts of a region layout in one window, outside
    bootstrapping) have the same ε_u, so it is evaluated once for them: a window under P prompts
    costs P + 1 UNet rows instead of 2P. The output is unchanged (``share_unconditional=False``
    turns it off; so does an active conditioning that gives jobs over one crop different inputs);
    the paper's loop and diffusers evaluate ε_u once per prompt.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        cond: PromptEmbeddings,
        guidance: Sequence[float],
        canvas: tuple[int, int],
        stats: SamplingStats | None = None,
        share_prefix: bool = True,
        share_unconditional: bool = True,
        conditionings: Sequence[Conditioning] = (),
    ):
        self.adapter = adapter
        self.conditionings = list(conditionings)
        self._step = (0, 1)
        self.share_unconditional = share_unconditional
        self._same_negative: dict[tuple[int, int], bool] = {}
        prefix = share_prefix and adapter.shares_prefix and cond.negative is not None
        self.prefix = SharedPrefix(adapter.unet) if prefix else None
        self.cond = cond
        self.canvas = canvas
        self.stats = stats if stats is not None else SamplingStats()
        self.guidance = list(guidance)
        self._uniform = self.guidance[0] if len(set(self.guidance)) == 1 else None
        self._scales: dict[tuple[int, ...], torch.Tensor] = {}

    def at_step(self, step: int, steps: int) -> None:
        """The sampler tells the model which step of how many runs next (conditionings act in a range)."""
        self._step = (step, steps)

    def __call__(self, crops: torch.Tensor, t: torch.Tensor, jobs: Sequence[Job]) -> torch.Tensor:
        guided = self.cond.negative is not None
        step, steps = self._step
        kwargs = self.adapter.unet_kwargs(self.cond, jobs, self.canvas)
        n, per = crops.shape[0], crops.shape[0] // len(jobs)
        active = [c for c in self.conditionings if c.active(step, steps)]
        share = guided and self.share_unconditional and all(c.shares_unconditional for c in active)
        groups = self._unconditional_groups(crops, jobs, per) if share else None
        if not guided:
            x, context = crops, contextlib.nullcontext()
        elif groups is None:
            x = torch.cat([crops, crops])
            context = self.prefix.halves(n, crops.device) if self.prefix is not None else contextlib.nullcontext()
        else:  # one unconditional row set per group, then every job's conditional rows
            shared_rows = _job_rows(groups[0], per, crops.device)
            x = torch.cat([crops.index_select(0, shared_rows), crops])
            everything = torch.arange(n, device=crops.device)
            kwargs = select_rows(kwargs, 2 * n, torch.cat([shared_rows, everything + n]))
            context = (
                self.prefix.rows(shared_rows.numel(), torch.cat([shared_rows, everything]))
                if self.prefix is not None
                else contextlib.nullcontext()
            )
        for conditioning in active:
            extra = conditioning.model_inputs(ModelCall(self.adapter, x, t, jobs, kwargs, guided, step, steps))
            if extra:
                kwargs = {**kwargs, **extra}
        with context:
            out = self._predict(x, t, kwargs)
        self.stats.jobs += len(jobs)
        self.stats.latent_pixels += sum(job.view.height * job.view.width for job in jobs)
        if not guided:
            return out
        if groups is None:
            uncond, cond = out.chunk(2)
        else:
            shared, cond = out[: x.shape[0] - n], out[x.shape[0] - n :]
            uncond = shared.index_select(0, _job_rows(groups[1], per, out.device))
        guided_out = self.adapter.guide(uncond, cond, self._scale(jobs, per))
        terms = [c for c in active if c.adds_guidance]
        if not terms:
            return guided_out
        cond_rows = torch.arange(x.shape[0] - n, x.shape[0], device=crops.device)
        call = ModelCall(self.adapter, crops, t, jobs, select_rows(kwargs, x.shape[0], cond_rows), True, step, steps)

        def predict(rows: torch.Tensor, call_kwargs: dict[str, Any]) -> torch.Tensor:
            return self._predict(rows, t, call_kwargs)

        for conditioning in terms:
            term = conditioning.guidance_term(call, cond, predict)
            if term is not None:
                guided_out = guided_out + term
        return guided_out

    def _predict(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """The model's output for rows ``x``, counted in the stats."""
        out = self.adapter.predict(x, t, kwargs)
        self.stats.model_calls += self.adapter.network_calls(kwargs)
        self.stats.evaluations += x.shape[0]
        return out

    def _unconditional_groups(
        self, crops: torch.Tensor, jobs: Sequence[Job], per: int
    ) -> tuple[list[int], list[int]] | None:
        """Jobs whose ε_u is the same: (a representative job per group, each job's group), or None
        when every job is its own group. Same view, same negative conditioning, equal crops."""
        representatives: list[int] = []
        inverse: list[int] = []
        by_view: dict[Any, list[int]] = {}
        for j, job in enumerate(jobs):
            for g in by_view.setdefault(job.view, []):
                r = representatives[g]
                if self._negatives_equal(jobs[r].prompt, job.prompt) and torch.equal(
                    crops[r * per : (r + 1) * per], crops[j * per : (j + 1) * per]
                ):
                    inverse.append(g)
                    break
            else:
                by_view[job.view].append(len(representatives))
                inverse.append(len(representatives))
                representatives.append(j)
        return None if len(representatives) == len(jobs) else (representatives, inverse)

    def _negatives_equal(self, p: int, q: int) -> bool:
        if p == q:
            return True
        key = (min(p, q), max(p, q))
        if key not in self._same_negative:
            negative = self.cond.negative or {}
            self._same_negative[key] = all(torch.equal(v[p], v[q]) for v in negative.values())
        return self._same_negative[key]

    def attached(self) -> contextlib.AbstractContextManager:
        """Context for a sampling run: installs the shared-prefix hooks and every conditioning's
        (LoRA sets restored after, ...); undone when the run ends."""
        stack = contextlib.ExitStack()
        if self.prefix is not None:
            stack.enter_context(self.prefix.attached())
        for conditioning in self.conditionings:
            stack.enter_context(conditioning.attached(self.adapter))
        return stack

    def counts(self) -> dict[str, float]:
        """What the conditionings counted, summed by name (:meth:`Conditioning.stats`)."""
        counts: dict[str, float] = {}
        for conditioning in self.conditionings:
            for name, value in conditioning.stats().items():
                counts[name] = counts.get(name, 0) + value
        return counts

    def _scale(self, jobs: Sequence[Job], batch: int) -> float | torch.Tensor:
        if self._uniform is not None:
            return self._uniform
        key = tuple(job.prompt for job in jobs)
        if key not in self._scales:
            scales = torch.tensor([self.guidance[p] for p in key], device=self.adapter.device)
            self._scales[key] = scales.repeat_interleave(batch).to(self.adapter.dtype).view(-1, 1, 1, 1)
        return self._scales[key]


def _job_rows(jobs: Sequence[int], per: int, device: torch.device) -> torch.Tensor:
    """Batch rows of the given job indices, ``per`` rows (images) each."""
    index = torch.tensor(jobs, device=device).repeat_interleave(per) * per
    return index + torch.arange(per, device=device).repeat(len(jobs))


StepCallback = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]
"""(step index, timestep, latents) -> optionally replaced latents."""


def _step_kwargs(scheduler, generator, eta: float) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def sample(
    model: Denoiser,
    scheduler,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    plan_for_step: Callable[[int], FusionPlan],
    *,
    batch_size: int | None = None,
    composer_for_step: Callable[[int, torch.Tensor], InputComposer | None] | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    eta: float = 0.0,
    callback: StepCallback | None = None,
    progress: dict | None = None,
    pre_average: bool = False,
) -> torch.Tensor:
    """Run the MultiDiffusion process Ψ over ``timesteps`` from ``latents`` (in the scheduler's units:
    noise times ``init_noise_sigma`` for text-to-image, a noised image for image-to-image) to clean
    latents. The scheduler's timesteps (and, for image-to-image, its begin index) are set already.

    ``model`` is any denoiser ``model(crops, t, jobs) -> prediction`` (a
    :class:`~multidiffusion.engine.fusion.Denoiser`: a :class:`GuidedModel`, or a plain function,
    k-diffusion style); one that has ``at_step(i, n)`` is told each step first, one with ``stats``
    (:class:`SamplingStats`) gets the steps and canvas counted.

    ``plan_for_step(i)`` gives the views, prompts and weights of step i (fixed for the paper's grid,
    fresh for the shifted fast mode); ``composer_for_step(i, t)`` may rewrite the crops fed to the
    model (bootstrapping of regions, an inpainting model's mask channels); ``callback(i, t, x)`` may
    replace the canvas after each step (inpainting's blending, the caller's callback).
    ``pre_average``: where a composer rewrites a job's input, fuse the views' own denoised estimates
    (latent pre-averaging, :mod:`~multidiffusion.engine.pre_average`); elsewhere it changes nothing.
    """
    x = latents
    extra = _step_kwargs(scheduler, generator, eta)
    stats = getattr(model, "stats", None)
    at_step = getattr(model, "at_step", None)
    if stats is not None:
        stats.canvas_pixels = x.shape[-2] * x.shape[-1]
    order = getattr(scheduler, "order", 1)
    total = -(-len(timesteps) // order)  # steps, as diffusers counts them
    with tqdm(total=total, **(progress or {})) as bar:
        for i, t in enumerate(timesteps):
            if at_step is not None:
                at_step(i, len(timesteps))
            x_in = scale_input(scheduler, x, t)
            compose = composer_for_step(i, t) if composer_for_step is not None else None
            denoise = model
            around = getattr(compose, "around", None)  # a composer that also moves the model's output back
            if around is not None:
                denoise = around(model)
            if pre_average and compose is not None:
                denoise, compose = pre_averaged(denoise, compose, input_rate(scheduler, t))
            prediction = fused_prediction(denoise, x_in, t, plan_for_step(i), batch_size, compose)
            x = scheduler.step(prediction, t, x, return_dict=False, **extra)[0]
            if stats is not None:
                stats.steps += 1
            if callback is not None:
                replaced = callback(i, t, x)
                if replaced is not None:
                    x = replaced
            if i == len(timesteps) - 1 or (i + 1) % order == 0:
                bar.update()
    return x
