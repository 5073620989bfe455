"""What a run will cost, known before its first model call: window evaluations, VAE tiles, prompt
text, memory.

The engine's budget (:class:`~multidiffusion.options.Limits.max_evaluations`, the web app's
``--max-evaluations``) counts in **window evaluations**: one pass of the denoising network over one
native window under one prompt (once per guidance branch: two rows of a batch with classifier-free
guidance, so the conversions below, per row, are halved then). The VAE's tiles and the prompts'
text are converted to that unit:

- A VAE tile costs :data:`DECODE_PER_WINDOW` (decode) or :data:`ENCODE_PER_WINDOW` (encode) window
  evaluations per native window's area of latent pixels it covers. Justification: PyTorch's FLOP
  counter on Stable Diffusion 1.5's shapes (a 64 x 64 latent, one row) gives 803 GFLOP for the UNet,
  2,515 for the VAE decoder (3.13x) and 1,117 for the encoder (1.39x); both scale with pixels. The
  demo model gives 2.19x and 1.02x (per its 16 x 16 window's area), so the SD figures are the
  conservative ones.
- Tiled with canvas-wide GroupNorm statistics, the tiles are run more than once:
  :data:`VAE_PASSES` (docs/benchmarks.md "Speed and memory": exact statistics 1.4x a whole decode with the
  default cache, 6.8x with nothing kept; the fast mode 2.15x). A canvas that fits one tile runs once.
- A prompt slot (a prompt, and its negative) costs :data:`PROMPT_SLOT_COST` for the text encoders'
  pass (2 x parameters x tokens: CLIP-L over 77 tokens is 19 GFLOP, 2 % of SD's UNet; T5-XXL over
  512 tokens about 5 % of FLUX's transformer over a 1024 px window: rounded up to one), plus one per
  :data:`PROMPT_CHARS_PER_EVALUATION` characters for tokenising (a 10 MB prompt took 88 s in the
  issue's report and 71 s measured on the demo model, 7-9 microseconds a character, on the CPU
  whatever the device; a fast GPU's SD window evaluation takes about 10 ms).

The estimate runs what the runner runs before its first model call (the task, its first step's
plan, the timesteps: :func:`~multidiffusion.runner.run.planned_steps`, called by
:func:`multidiffusion.estimate.estimate`), so the counts are the runner's, not a second formula.
Memory: the canvas-sized tensors and the VAE's budgets are counted; the denoising network's
activations for a batch of views are a rough guess (:data:`ACTIVATION_COPIES`).
Time is not estimated: no per-evaluation figure is measured before the first step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DECODE_PER_WINDOW",
    "ENCODE_PER_WINDOW",
    "PROMPT_CHARS_PER_EVALUATION",
    "PROMPT_SLOT_COST",
    "VAE_PASSES",
    "Estimate",
    "auto_batch",
    "available_memory",
    "check_budget",
    "estimate_run",
    "memory_refusal",
    "model_bytes",
    "view_activation_bytes",
]

DECODE_PER_WINDOW = 3.2
"""Window evaluations per native window's area decoded (SD 1.5: 2,515 / 803 GFLOP = 3.13)."""
ENCODE_PER_WINDOW = 1.4
"""Window evaluations per native window's area encoded (SD 1.5: 1,117 / 803 GFLOP = 1.39)."""
VAE_PASSES = {"exact": 1.4, "exact, nothing kept": 6.8, "fast": 2.2, "whole": 1.0}
"""Passes over the tiles, as multiples of one whole-canvas pass (docs/benchmarks.md "Speed and memory", the
1024 px decode: whole 6.0 s, exact 8.6 s, exact with ``cache_mb=0`` 40.3 s, fast 12.9 s)."""
PROMPT_SLOT_COST = 1.0
"""Window evaluations per prompt slot and image for the text encoders (a few percent, rounded up)."""
PROMPT_CHARS_PER_EVALUATION = 1000
"""Prompt characters tokenised per window evaluation's time (9 us a character; 10 ms a window)."""
CANVAS_COPIES = 6
"""Canvas-sized latent tensors a step holds: the noise, the canvas, Eq. 5's numerator and
denominator, the fused prediction and the scheduler's update."""
PLAN_JOBS = 20_000
"""Most jobs an estimate builds a step's plan for (about 2 s; the plan takes about 100 us and 232
bytes a job, measured on a 1024 x 1024 latent grid of 255,025 jobs: 24 s on a loaded machine);
beyond, the estimate counts the window grid and says "about"."""
PLAN_BYTES_PER_JOB = 232
"""Python memory a job of a step's plan holds (tracemalloc's peak over a 255,025-job plan)."""
ACTIVATION_COPIES = 32
"""Rough: tensors of the network's first block (its widest channels at the window's full size) alive
at once per batch row. Not measured for UNets; the estimate says so (transformers:
:func:`view_activation_bytes`)."""
MEMORY_SHARE = 1 / 8
"""Most of the loaded model's bytes a diffusion transformer's batch of views may take in activations
(:func:`auto_batch`): an eighth, so two guidance branches' rows stay within a quarter, the 1.25x
bound on a wide panorama's peak against one view's."""


@dataclass(frozen=True)
class Estimate:
    """A run's cost, counted before its first model call. ``evaluations`` is the runner's count
    (jobs per step x steps + the task's extra, x images); the VAE and prompt figures are converted
    to window evaluations as the module says; bytes are on top of what the process holds now."""

    task: str
    size: tuple[int, int]
    images: int
    jobs_per_step: int
    steps: int
    extra_evaluations: int
    branches: int
    encode_tiles: int
    decode_tiles: int
    vae_cost: float
    prompt_slots: int
    prompt_chars: int
    prompt_cost: float
    canvas_bytes: int
    vae_bytes: int
    views_bytes: int
    available_bytes: int | None
    device: str
    exact: bool = True  # False: the jobs are the window grid's count, the plan too large to build for an estimate

    @property
    def evaluations(self) -> int:
        """Window evaluations (views x prompts per step, x steps, + what the task runs before
        sampling, x images): the runner's count; each runs once per guidance branch."""
        return (self.jobs_per_step * self.steps + self.extra_evaluations) * self.images

    @property
    def cost(self) -> int:
        """Everything in window evaluations: the budget's unit."""
        return self.evaluations + math.ceil(self.vae_cost + self.prompt_cost)

    @property
    def memory_bytes(self) -> int:
        """Memory the run needs beyond what the process holds now (the model is loaded)."""
        return self.canvas_bytes + self.vae_bytes + self.views_bytes

    @property
    def too_large(self) -> bool:
        """Whether the run needs more memory than is available now."""
        return self.available_bytes is not None and self.memory_bytes > self.available_bytes

    def breakdown(self) -> str:
        """The cost's parts, as the budget's message and the command line's estimate give them."""
        extra = f" + {self.extra_evaluations:,} before sampling" if self.extra_evaluations else ""
        images = f" x {self.images} images" if self.images > 1 else ""
        about = "" if self.exact else "about "
        branches = ", each under 2 guidance branches" if self.branches > 1 else ""
        model = f"{about}{self.jobs_per_step:,} per step x {self.steps} steps{extra}{images}{branches}"
        vae = f"{self.encode_tiles} tiles encoded, {self.decode_tiles} decoded"
        prompts = f"{self.prompt_slots} prompts, {self.prompt_chars:,} characters"
        return (
            f"{about}{self.evaluations:,} in the model: {model}; {math.ceil(self.vae_cost):,} for the VAE: {vae}; "
            f"{math.ceil(self.prompt_cost):,} for the text encoders: {prompts}"
        )

    def line(self) -> str:
        """One line for the command line, before the progress bar."""
        h, w = self.size
        free = "" if self.available_bytes is None else f" of {_gib(self.available_bytes)} available"
        return (
            f"estimate: {self.task} {w}x{h} px, {self.cost:,} window evaluations ({self.breakdown()}); memory "
            f"+{_gib(self.memory_bytes)}{free} on {self.device} (canvas {_gib(self.canvas_bytes)}, VAE "
            f"{_gib(self.vae_bytes)}, the network's activations ~{_gib(self.views_bytes)}, a rough guess); time: "
            "not known before the first step"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def available_memory(device: Any) -> int | None:
    """Memory a run may still take on ``device``: the accelerator's free memory, or the system's
    available RAM (psutil where installed, else /proc/meminfo); None where neither says."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        try:
            import psutil

            return int(psutil.virtual_memory().available)
        except ImportError:
            pass
    from multidiffusion.vae.codec import _free_bytes

    return _free_bytes(device)


def _tiles(vae: Any, latent: tuple[int, int], decode: dict[str, Any]) -> tuple[int, int, str]:
    """(tiles, latent pixels they cover, the pass kind) of the tiled VAE over a ``latent``-sized
    canvas with ``decode``'s settings, laid out as :func:`~multidiffusion.vae.tiles.run_tiled` does."""
    from multidiffusion.vae.codec import _check_tiles
    from multidiffusion.vae.tiles import tile_starts

    norm_stats = decode.get("norm_stats") or "exact"
    tile, overlap = _check_tiles(vae, decode.get("tile"), decode.get("overlap"), norm_stats)
    h, w = latent
    if h <= tile and w <= tile:
        return 1, h * w, "whole"
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    kind = "exact, nothing kept" if norm_stats == "exact" and decode.get("cache_mb") == 0 else norm_stats
    return len(rows) * len(cols), len(rows) * len(cols) * min(tile, h) * min(tile, w), kind


def _encodes(task: Any) -> bool:
    """Whether the task encodes an input image (img2img, upscale, inpaint, outpaint, regions with one)."""
    return getattr(task.options, "image", None) is not None


def estimate_run(
    task: Any, jobs: int, images: int, steps: int, decode: dict[str, Any] | None = None, exact: bool = True
) -> Estimate:
    """The estimate of ``task`` given what the runner has before its first model call: the jobs of
    the first step's plan (or, not ``exact``, their bound from the window grid), the images of the
    batch and the steps that run; ``decode`` the VAE's tiling."""
    decode = decode or {}
    adapter = task.adapter
    extra = task.extra_evaluations(jobs)
    slots = task.prompt_slots()
    window = math.prod(adapter.native_latent_size)
    latent = task.latent_size
    tiles, covered, kind = _tiles(adapter.vae, latent, decode)
    passes = VAE_PASSES[kind]
    vae_cost = DECODE_PER_WINDOW * passes * covered / window * images
    encode_tiles = tiles if _encodes(task) else 0
    if encode_tiles:
        vae_cost += ENCODE_PER_WINDOW * passes * covered / window * images
    texts = [t for group in (*slots.prompts, *slots.negatives) for t in group if t]
    chars = sum(len(t) for t in texts)
    prompt_cost = PROMPT_SLOT_COST * len(slots.prompts) * images + chars / PROMPT_CHARS_PER_EVALUATION
    guided = adapter.classifier_free(slots)
    vae_cost /= 2 if guided else 1  # a window evaluation runs once per guidance branch: rows, not jobs
    prompt_cost /= 2 if guided else 1
    vae = (tiles, kind, bool(encode_tiles))
    canvas, vae_work, views = _memory(task, jobs, images, decode, vae, guided, len(slots.prompts))
    return Estimate(
        task=task.name,
        size=task.size,
        images=images,
        jobs_per_step=jobs,
        steps=steps,
        extra_evaluations=extra,
        branches=2 if guided else 1,
        encode_tiles=encode_tiles,
        decode_tiles=tiles,
        vae_cost=vae_cost,
        prompt_slots=len(slots.prompts),
        prompt_chars=chars,
        prompt_cost=prompt_cost,
        canvas_bytes=canvas,
        vae_bytes=vae_work,
        views_bytes=views,
        available_bytes=available_memory(adapter.device),
        device=str(adapter.device),
        exact=exact,
    )


def _memory(
    task: Any, jobs: int, images: int, decode: dict[str, Any], vae: tuple[int, str, bool], guided: bool, slots: int
) -> tuple[int, int, int]:
    """(canvas bytes, VAE bytes, views bytes) of a run: the canvas tensors (the adapter's dtype),
    per-slot weights, the output and input pixels; one VAE tile's activations and what its cache
    keeps; a batch of views' activations. ``vae``: (tiles, tiling kind, whether the input is encoded);
    ``slots``: the prompt slots."""
    import torch

    from multidiffusion.vae.codec import cache_bytes, default_tile

    adapter, options = task.adapter, task.options
    tiles, kind, encodes = vae
    size, (h, w) = task.size, task.latent_size
    item = torch.empty((), dtype=adapter.dtype).element_size()
    canvas = CANVAS_COPIES * images * adapter.latent_channels * h * w * item + slots * h * w * 4
    canvas += jobs * PLAN_BYTES_PER_JOB
    pixels = images * size[0] * size[1] * 3 * 2  # the 8-bit output and its PIL copy
    pixels += images * size[0] * size[1] * 3 * 4 if encodes else 0  # the input as float32
    tile = (decode.get("tile") or default_tile(adapter.vae)) * adapter.vae_scale_factor
    first = _first_channels(adapter.vae)
    vae_work = ACTIVATION_COPIES // 4 * images * first * tile * tile * item  # one tile's activations
    if kind.startswith("exact"):
        # the kept activations: at most the cache's budget, and no more than every tile's (a small
        # canvas keeps little: counting the whole 2 GiB budget refused tiny runs on small machines)
        vae_work += min(cache_bytes(decode.get("cache_mb"), adapter.device), tiles * vae_work)
    rows = min(options.view_batch_size or auto_batch(adapter), max(jobs, 1)) * (2 if guided else 1)
    window = math.prod(adapter.native_latent_size)
    views = ACTIVATION_COPIES * rows * _first_channels(adapter.unet) * window * item
    return canvas + pixels, vae_work, views


def auto_batch(adapter: Any) -> int:
    """Views per model call when not given: about 16k latent pixels of native windows per call on the
    CPU (4 of SD's 64x64 windows, 64 of the demo model's 16x16), 4x that on accelerators, where
    larger batches pay (16 SD windows, 4 SDXL ones). A heuristic: the benchmark calibrates
    ``view_batch_size`` per configuration (docs/benchmarks.md, "Speed and memory"; ``benchmarks/results/``).

    A diffusion transformer's batch is bounded by memory too: its views' activations
    (:func:`view_activation_bytes` each) stay within :data:`MEMORY_SHARE` of the bytes the model holds
    (:func:`model_bytes`). A canvas of one view runs one; a wide one runs the bounded batch, so its
    peak exceeds the single view's by at most that share, whatever the width (issue 27: within 1.25x,
    measured by ``python -m benchmarks --suites memory-width``)."""
    h, w = adapter.native_latent_size
    budget = 4 * 64 * 64 * (4 if adapter.device.type == "cuda" else 1)
    views = max(1, budget // (h * w))
    if getattr(adapter, "network", "unet") != "transformer":
        return views
    return max(1, min(views, int(MEMORY_SHARE * model_bytes(adapter.pipe)) // view_activation_bytes(adapter)))


def model_bytes(pipe: Any) -> int:
    """Bytes of the parameters and buffers of ``pipe``'s modules (network, text encoders, VAE,
    ControlNet): what a run holds before its first view (text encoders released: without them)."""
    import torch

    modules = [m for m in getattr(pipe, "components", {}).values() if isinstance(m, torch.nn.Module)]
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


def view_activation_bytes(adapter: Any) -> int:
    """Activations of one view's row through a diffusion transformer at the native window, estimated:
    :data:`ACTIVATION_COPIES` token-by-hidden tensors over its image tokens and text tokens
    (``max_sequence_length``, else 512), and on the CPU its attention scores, heads x tokens^2 twice
    (scores and softmax: the CPU's fused kernel takes no mask, and Chroma's and Z-Image's pass one;
    CUDA's fused kernels never hold them). Measured on the reduced FLUX.1, Chroma and Z-Image of
    ``benchmarks/memory_width.py`` (320 tokens, width 128, one head): 2.5, 5.5 and 5 MiB a view
    added to the live heap; this estimate gives 6 MiB, erring large."""
    import torch

    h, w = adapter.native_latent_size
    p = getattr(adapter, "patch_size", 1) or 1
    tokens = (h // p) * (w // p) + int(getattr(adapter, "max_sequence_length", None) or 512)
    item = torch.empty((), dtype=adapter.dtype).element_size()
    config = getattr(adapter.unet, "config", {})
    heads = int(config.get("num_attention_heads", None) or config.get("n_heads", None) or 1)
    hidden = _first_channels(adapter.unet)
    scores = 0 if adapter.device.type == "cuda" else 2 * heads * tokens * tokens * item
    return ACTIVATION_COPIES * tokens * hidden * item + scores


def _first_channels(network: Any) -> int:
    """Channels of the network's first block (a UNet's) or its hidden size (a transformer's)."""
    config = getattr(network, "config", {})
    channels = config.get("block_out_channels") if hasattr(config, "get") else None
    if channels:
        return int(channels[0])
    heads, dim = config.get("num_attention_heads", 0), config.get("attention_head_dim", 0)
    return int(heads * dim) or int(config.get("dim", 0) or 0) or 1024  # Z-Image's transformer: dim


def _grid_jobs(task: Any) -> int | None:
    """Jobs of a step at most: the window grid's views (as :func:`~multidiffusion.engine.views.grid_views`
    lays them out) x the prompt slots; None for a task without a window and stride."""
    from multidiffusion.engine.views import axis_starts

    window = getattr(task, "window", None)
    if window is None or getattr(task, "stride", None) is None:
        return None
    stride = task.stride
    (h, w), circular = task.latent_size, bool(getattr(task, "circular", False))
    rows = axis_starts(h, min(window[0], h), stride[0])
    cols = axis_starts(w, min(window[1], w), stride[1], wrap=circular)
    return len(rows) * len(cols) * len(task.prompt_slots().prompts)


def memory_refusal(found: Estimate) -> str | None:
    """The one-line refusal of a run that needs more memory than is available (None when it fits)."""
    if not found.too_large:
        return None
    return (
        f"this run needs about {found.memory_bytes / 2**30:.1f} GiB more memory than the process holds, and "
        f"{(found.available_bytes or 0) / 2**30:.1f} GiB is available on {found.device}: use a smaller canvas or "
        "fewer images, or pass --ignore-estimate to run it anyway"
    )


def check_budget(task: Any, plan_for_step: Any, images: int, steps: int, decode: dict[str, Any]) -> None:
    """The compute bound of the task's limits (``max_evaluations``), over what costs: the model's
    window evaluations, the VAE's tiles and the prompts, in window evaluations (module docstring)."""
    limits = task.options.checked_against
    if limits.max_evaluations is None:
        return
    found = estimate_run(task, len(plan_for_step(0).jobs), images, steps, decode)
    if found.cost > limits.max_evaluations:
        raise ValueError(
            f"this request needs {found.cost:,} window evaluations ({found.breakdown()}), more than the "
            f"{limits.max_evaluations:,} allowed{limits.suffix()}: use fewer steps, a smaller canvas, a larger "
            "window or stride, or placement='shifted'"
        )
