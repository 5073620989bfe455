"""One runner for every task: prompts encoded once -> start latents -> per step: jobs -> batched
model calls -> fused prediction (paper Eq. 5) -> one scheduler step -> latents -> tiled decode ->
images + parameters.

The runner knows nothing of panoramas or regions: a :class:`~multidiffusion.engine.task.Task`
supplies the prompt slots, the jobs of each step, what it composes into the model's input and its
start latents. What is the same for every task lives here: the scheduler, the noise and its
generator, guidance, cancellation between steps, the cost bound, decoding and the parameters
common to every result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from multidiffusion.conditionings import Context, prepare_conditionings
from multidiffusion.engine import distributed
from multidiffusion.engine.adapter import PromptEmbeddings
from multidiffusion.engine.sampler import GuidedModel, SamplingStats, sample
from multidiffusion.engine.schedulers import FLOW_SCHEDULERS, SCHEDULERS, make_scheduler, scheduler_name
from multidiffusion.engine.task import Start, Task
from multidiffusion.io.ranges import drawn_seed, steps_that_run
from multidiffusion.output import MultiDiffusionOutput
from multidiffusion.runner.estimate import auto_batch, check_budget
from multidiffusion.runner.step_cache import prepare_step_cache
from multidiffusion.runner.text_encoders import EncodedPrompts
from multidiffusion.vae.codec import decode_latents, decode_to_uint8
from multidiffusion.version import __version__

__all__ = ["Cancelled", "RunSettings", "auto_batch", "denoising_timesteps", "planned_steps", "run"]

Generator = torch.Generator | list[torch.Generator] | None
StepCallback = Callable[..., Any]


class Cancelled(Exception):
    """Raised between steps when ``should_stop()`` says so; nothing is decoded or returned."""


@dataclass
class RunSettings:
    """How a model runs, whatever the task: set on the ``MultiDiffusion`` object.

    ``share_prefix``: guidance branches share the UNet layers before the first cross-attention;
    ``share_unconditional``: the prompts of one window share ε_u. Both leave the output unchanged
    (tests compare with them off) and exist as switches for that comparison and for debugging.
    """

    scheduler: Any
    model_name: str
    share_prefix: bool = True
    share_unconditional: bool = True
    progress: dict[str, Any] = field(default_factory=dict)
    decode: dict[str, Any] = field(default_factory=dict)
    lora_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompts: EncodedPrompts = field(default_factory=EncodedPrompts)
    """Encodes each call's prompts, or serves them after the text encoders were released."""


def run(
    task: Task,
    settings: RunSettings,
    *,
    generator: Generator = None,
    latents: torch.Tensor | None = None,
    callback_on_step_end: StepCallback | None = None,
    pipeline: Any = None,
    should_stop: Callable[[], bool] | None = None,
) -> MultiDiffusionOutput:
    """Run ``task`` and return its images, parameters and cost.

    ``generator`` and ``latents`` as in diffusers (``latents``: the initial canvas noise); without
    either, a seed in the task's options makes the generator. ``callback_on_step_end(pipeline, i,
    t, {"latents": x})`` may return a dict whose "latents" replace the canvas. ``should_stop()`` is
    asked after every step; True raises :class:`Cancelled`.
    """
    started = time.perf_counter()
    adapter, options = task.adapter, task.options
    shard = distributed.active()  # views sharded across processes, or None
    if generator is None and latents is None and (options.seed is not None or shard is not None):
        generator = torch.Generator("cpu").manual_seed(drawn_seed(options.seed, shard))  # ranks draw the same noise
    slots = task.prompt_slots()
    batch = len(slots.prompts[0]) * options.num_images_per_prompt
    _check_generator(generator, batch)
    scheduler, sched, plan_for_step, timesteps = _schedule(task, settings, generator, shard, batch)

    h, w = task.latent_size
    vae_tiling = {**settings.decode, "share": shard}  # a sharded run splits the VAE's tiles too
    task.prepare(generator, batch, vae_tiling)  # e.g. the encoder's sample, drawn before the noise
    noise = _initial_noise(adapter, (batch, adapter.latent_channels, h, w), generator, latents)
    if shard is not None:
        shard.check_same("a sharded run", _call_fingerprint(task, slots, noise, len(timesteps), plan_for_step(0)))
    model = _guided_model(task, settings, slots, pipeline)
    stats = model.stats
    batch_size = options.view_batch_size or auto_batch(adapter)
    start = Start(noise, sched, generator, timesteps, model, plan_for_step, batch_size)
    composer = task.composer(start)
    callback = _step_callback(callback_on_step_end, pipeline, should_stop, task.after_step(start))
    reduced = shard.bytes_all_reduced if shard is not None else 0
    progress = settings.progress if distributed.is_writer() else {**settings.progress, "disable": True}
    with model.attached():
        x = sample(
            model,
            sched,
            task.start_latents(start),
            timesteps,
            plan_for_step,
            batch_size=batch_size,
            composer_for_step=composer,
            generator=generator,
            eta=options.eta,
            callback=callback,
            progress=progress,
            pre_average=options.pre_average,
        )
    params = _parameters(task, settings, scheduler, model.conditionings, _seed_of(generator, latents))
    stats.counts.update(model.counts())
    images = _decoded(task, x, vae_tiling, stats, shard, reduced)
    stats.seconds = time.perf_counter() - started
    return MultiDiffusionOutput(images, params, stats)


def _schedule(task: Task, settings: RunSettings, generator: Generator, shard: Any, batch: int) -> tuple:
    """(the scheduler as given, the call's scheduler, ``plan_for_step``, the timesteps that run),
    after the ranks of a sharded run agree on every input and the call fits the budget (model, VAE,
    prompts: before any model call)."""
    adapter, options = task.adapter, task.options
    scheduler = options.scheduler if options.scheduler is not None else settings.scheduler
    sched = make_scheduler(scheduler, adapter.pipe.scheduler.config)
    if shard is not None:  # before the inputs are used (the sharded VAE encode included): every input agrees
        identity = {"model settings": adapter.parameters(), "LoRAs": settings.lora_files, "decoding": settings.decode}
        shard.check_same("a sharded run", distributed.call_digests(options, sched, adapter.pipe, identity))
    plan_for_step, timesteps = planned_steps(task, sched, generator)
    check_budget(task, plan_for_step, batch, len(timesteps), settings.decode)
    return scheduler, sched, plan_for_step, timesteps


def _guided_model(task: Task, settings: RunSettings, slots: Any, pipeline: Any) -> GuidedModel:
    """The call's guided model: its prompts encoded once, its conditionings prepared (every kind's
    ``prepare``), guidance skipped where it is a no-op."""
    adapter, options = task.adapter, task.options
    cond, guidance = settings.prompts.condition(adapter, slots, options.num_images_per_prompt)
    conditionings = prepare_conditionings(Context(adapter, pipeline), options, task) + task.conditionings()
    conditionings += prepare_step_cache(adapter, options)  # a cache context per batch of views
    if not any(c.branches_differ for c in conditionings):  # else the unconditional branch gets other inputs
        cond = _without_idle_guidance(cond)
    return GuidedModel(
        adapter,
        cond,
        guidance,
        task.latent_size,
        SamplingStats(),
        share_prefix=settings.share_prefix,
        share_unconditional=settings.share_unconditional,
        conditionings=conditionings,
    )


def _parameters(
    task: Task, settings: RunSettings, scheduler: Any, conditionings: list[Any], seed: int | None
) -> dict[str, Any]:
    """The settings that regenerate the result: the task's, the model's, the common ones and every
    conditioning's record."""
    options = task.options
    lora_files = {k: dict(v) for k, v in settings.lora_files.items()}
    return {
        "task": task.name,
        **task.parameters(),
        **task.adapter.parameters(),
        "model": settings.model_name,
        **({"lora_files": lora_files} if lora_files else {}),
        "num_inference_steps": options.num_inference_steps,
        "guidance_scale": options.guidance_scale,
        "num_images_per_prompt": options.num_images_per_prompt,
        "scheduler": _scheduler_label(scheduler),
        "eta": options.eta,
        **({"pre_average": True} if options.pre_average else {}),
        **{k: v for c in conditionings for k, v in c.record().items()},
        "seed": seed,
        "multidiffusion_version": __version__,
    }


def _decoded(task: Task, x: torch.Tensor, vae_tiling: dict, stats: SamplingStats, shard: Any, reduced: int) -> Any:
    """The sampled latents ``x`` decoded (tiled) to the requested output type; in a sharded run, the
    bytes exchanged counted (all-reduced since ``reduced``: the sampling's; the VAE's) and the
    counts summed over the ranks."""
    if shard is not None:
        stats.bytes_all_reduced = shard.bytes_all_reduced - reduced
        exchanged = shard.bytes_all_reduced + shard.bytes_broadcast
    images = _postprocess(task.adapter, x, task.options.output_type, task.circular, vae_tiling)
    if shard is not None:
        stats.vae_bytes = shard.bytes_all_reduced + shard.bytes_broadcast - exchanged
        _sum_counts(stats, shard)
    return images


def _call_fingerprint(task: Task, slots: Any, noise: torch.Tensor, steps: int, plan: Any) -> dict[str, int]:
    """What every rank of a sharded run must agree on, as integers (:meth:`Shard.check_same`)."""
    return {
        "the task": distributed.fingerprint(task.name),
        "the canvas": distributed.fingerprint(task.latent_size),
        "the prompts": distributed.fingerprint((slots.prompts, slots.negatives, slots.guidance)),
        "the number of steps": steps,
        "the jobs of the first step": len(plan.jobs),
        "the initial noise (seed)": distributed.fingerprint(noise),
    }


def _sum_counts(stats: SamplingStats, shard: Any) -> None:
    """The run's counts summed over the ranks (each counted its own share), each rank's latent pixels kept."""
    names = ("model_calls", "jobs", "evaluations", "latent_pixels")
    integral = sorted(k for k, v in stats.counts.items() if isinstance(v, int))  # the conditionings' counts
    counts = torch.zeros(len(names) + len(integral) + shard.world, dtype=torch.int64)
    counts[: len(names) + len(integral)] = torch.tensor(
        [getattr(stats, n) for n in names] + [stats.counts[k] for k in integral], dtype=torch.int64
    )
    counts[len(names) + len(integral) + shard.rank] = stats.latent_pixels
    shard.all_reduce(counts, "the run's counts")
    for k, name in enumerate(names):
        setattr(stats, name, int(counts[k]))
    for k, name in enumerate(integral):
        stats.counts[name] = int(counts[len(names) + k])
    names = (*names, *integral)
    stats.ranks = shard.world
    stats.rank_latent_pixels = [int(v) for v in counts[len(names) :]]


def denoising_timesteps(
    scheduler: Any,
    steps: int,
    strength: float,
    device: Any,
    set_timesteps: Callable[[Any, int, Any], None] | None = None,
) -> torch.Tensor:
    """Set ``steps`` timesteps on ``scheduler`` and return those a call of this ``strength`` runs, as
    diffusers' image-to-image pipelines do: the last ``int(steps * strength)`` steps (all at
    strength 1), with the scheduler's begin index set to the first of them.

    ``set_timesteps(scheduler, steps, device)`` sets the schedule (the runner passes the adapter's,
    which knows the views' size); default: ``scheduler.set_timesteps(steps, device=device)``."""
    if set_timesteps is None:
        scheduler.set_timesteps(steps, device=device)
    else:
        set_timesteps(scheduler, steps, device)
    if strength >= 1.0:
        return scheduler.timesteps
    order = getattr(scheduler, "order", 1)
    first = max(steps - steps_that_run(steps, strength), 0) * order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(first)
    return scheduler.timesteps[first:]


def planned_steps(task: Task, sched: Any, generator: Generator) -> tuple[Callable[[int], Any], torch.Tensor]:
    """(``plan_for_step``, the timesteps that run) of ``task`` with the scheduler ``sched``: what a run
    knows before its first model call, and what :mod:`multidiffusion.estimate` counts (every timestep
    is one model evaluation of each job of its step). Sets ``sched``'s timesteps."""
    adapter = task.adapter
    plan_for_step = task.plans(_offset_seed(generator))
    view = largest_view(plan_for_step(0))

    def set_timesteps(s: Any, steps: int, device: Any) -> None:
        adapter.set_timesteps(s, steps, device, view)

    steps, strength = task.options.num_inference_steps, task.strength
    return plan_for_step, denoising_timesteps(sched, steps, strength, adapter.device, set_timesteps)


def largest_view(plan: Any) -> tuple[int, int]:
    """(rows, columns) of the largest view of a step's plan: the size the model sees (a window, or
    the canvas where that is smaller), which sets a flow-matching model's schedule shift."""
    view = max((job.view for job in plan.jobs), key=lambda v: v.height * v.width)
    return view.height, view.width


def _without_idle_guidance(cond: PromptEmbeddings) -> PromptEmbeddings:
    """``cond`` without its negative branch when that branch is the positive one (an upscale's empty
    prompt and empty negative): then ε_c = ε_u and ε_u + s (ε_c − ε_u) = ε_c for any s, so the
    unconditional rows are skipped (half the model evaluations, the same output)."""
    negative = cond.negative
    if negative is None or negative.keys() != cond.positive.keys():
        return cond
    if all(torch.equal(cond.positive[k], negative[k]) for k in negative):
        return PromptEmbeddings(cond.positive, None)
    return cond


def _check_generator(generator: Any, batch: int) -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, list) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch:
            raise ValueError(
                f"generator: a list needs one torch.Generator per image ({batch}: prompts x "
                f"num_images_per_prompt), got {len(generator)}"
            )
        return
    raise TypeError(
        f"generator must be a torch.Generator, a list of them (one per image) or None, got {type(generator).__name__}"
    )


def _step_callback(
    callback: StepCallback | None,
    pipeline: Any,
    should_stop: Callable[[], bool] | None,
    after_step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
) -> Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None] | None:
    """The sampler's per-step callback: the task's ``after_step`` first (inpainting's blending, as
    diffusers does it before its callback), then the caller's callback, then cancellation."""
    if callback is None and should_stop is None and after_step is None:
        return None
    if callback is not None and not callable(callback):
        raise TypeError(f"callback_on_step_end must be callable or None, got {type(callback).__name__}")

    def on_step(i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        replaced = after_step(i, t, x) if after_step is not None else None
        if replaced is not None:
            x = replaced
        if callback is not None:
            result = callback(pipeline, i, t, {"latents": x})
            if result is not None and not isinstance(result, dict):
                raise TypeError(
                    f"callback_on_step_end must return a dict (or None), got {type(result).__name__} at step {i}"
                )
            replaced = (result or {}).get("latents", replaced)
        if should_stop is not None and should_stop():
            raise Cancelled(f"cancelled after step {i + 1}")
        return replaced

    return on_step


def _initial_noise(adapter: Any, shape: tuple[int, ...], generator: Generator, latents: torch.Tensor | None):
    if latents is None:
        return randn_tensor(shape, generator=generator, device=adapter.device, dtype=adapter.dtype)
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        f = adapter.vae_scale_factor
        raise ValueError(f"latents must have shape {shape} (images, channels, height/{f}, width/{f}), got {got}")
    return latents.to(device=adapter.device, dtype=adapter.dtype)


def _postprocess(adapter: Any, latents: torch.Tensor, output_type: str, circular: bool, decode: dict) -> Any:
    if output_type == "latent":
        return latents
    if output_type == "pil":  # 8 bits per band of rows: no float copy of the whole image
        from PIL import Image

        pixels = decode_to_uint8(adapter.vae, latents, circular=circular, latent_format=adapter.latent_format, **decode)
        pixels = pixels.numpy()
        return [Image.fromarray(p) for p in pixels]
    image = decode_latents(adapter.vae, latents, circular=circular, latent_format=adapter.latent_format, **decode)
    processor = VaeImageProcessor(vae_scale_factor=adapter.vae_scale_factor)
    return processor.postprocess(image, output_type=output_type)


def _scheduler_label(scheduler: Any) -> str:
    if isinstance(scheduler, str):
        return scheduler_name(scheduler)
    name = type(scheduler).__name__
    for label, (cls_name, overrides) in (SCHEDULERS | FLOW_SCHEDULERS).items():
        if cls_name == name and all(scheduler.config.get(k) == v for k, v in overrides.items()):
            return label
    return name


def _offset_seed(generator: Generator) -> int:
    """Seed of random window placement: the noise generator's seed, so ``--seed`` fixes both."""
    first = generator[0] if isinstance(generator, list) and generator else generator
    return int(first.initial_seed()) if isinstance(first, torch.Generator) else 0


def _seed_of(generator: Generator, latents: torch.Tensor | None) -> int | None:
    if latents is None and isinstance(generator, torch.Generator):
        return int(generator.initial_seed())
    return None
