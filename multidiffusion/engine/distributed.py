"""One image, several processes: the views of each step sharded across the ranks of a
``torch.distributed`` process group (torchrun, or the caller's ``init_process_group``; NCCL on GPUs,
gloo on CPUs).

Paper Eq. 5's numerator is a sum over the step's jobs, so it splits over ranks r = 0..R-1 exactly:

    num = Σ_r Σ_{i ∈ jobs(r)} F_i⁻¹(W_i ⊙ Φ(F_i(J_t) | y_i))       one all-reduce (sum) per step
    J   = num / Σ_i F_i⁻¹(W_i)                                       the denominator: every rank, all jobs

Each rank evaluates its share of the jobs (:func:`shard_jobs`, balanced by cost, the same on every
rank), one all-reduce gives every rank the whole numerator, and every rank divides by the
denominator it computed itself from all the jobs (:class:`~multidiffusion.engine.fusion.FusionPlan`
does so when the plan is made: no communication) and takes the same scheduler step. Nothing else
changes, so nothing in the result does: the numerator accumulates in float64
(:mod:`~multidiffusion.engine.fusion`), where the order of the additions, which depends on the
number of ranks, is lost when the sum is rounded to float32.

Random draws (the noise, the fast mode's offsets, bootstrapping's colours, the scheduler's noise)
come from generators seeded the same on every rank, and every rank draws all of them; the runner
checks that every rank runs the same call from the same initial noise (:meth:`Shard.check_same`).
Before anything that depends on the call's inputs runs (the sharded VAE encode included), the ranks
compare :func:`call_digests`: one digest per option (input images, masks, region masks and control
images by their pixels), the scheduler's class and configuration and the model's components'
configurations; a difference is refused on every rank with one line naming what differs.

Failures end the run on every rank with :class:`RankFailed`, never a hang: a rank whose model call
raises still takes part in the step's all-reduce, flagged, so every rank learns which rank failed
and why; a rank that dies or stops answering makes the others' collective operations fail when the
process group's timeout expires (``init_process_group(timeout=...)``; :func:`init` sets
:data:`DEFAULT_TIMEOUT`).

Sharding is on whenever a process group of more than one rank is initialised; :func:`local` turns it
off for a block (``multidiffusion batch`` runs different images on different ranks that way) and
:func:`sharded` picks a group other than the default one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DEFAULT_TIMEOUT",
    "RankFailed",
    "Shard",
    "active",
    "call_digests",
    "digest",
    "fingerprint",
    "init",
    "is_writer",
    "local",
    "shard_jobs",
    "sharded",
]

DEFAULT_TIMEOUT = timedelta(minutes=10)
"""How long a collective operation waits for the other ranks when :func:`init` makes the group (the
``MULTIDIFFUSION_TIMEOUT`` environment variable, in seconds, overrides it). A step of the slowest
rank must fit in it: minutes for a large SDXL step on a slow GPU."""


class RankFailed(RuntimeError):
    """A rank of a sharded run failed or stopped answering; raised on every rank that learns of it."""


class Shard:
    """This process's place in a process group: its ``rank`` of ``world``, the device collectives run
    on (CUDA for NCCL, the CPU otherwise), and the payload bytes it has all-reduced and broadcast."""

    def __init__(self, group: Any = None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        nccl = dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        self.bytes_all_reduced = 0
        self.bytes_broadcast = 0
        self._shares: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()

    # -- the jobs of a step ---------------------------------------------------------------------------
    def jobs(self, plan: Any) -> list[Any]:
        """This rank's jobs of a :class:`~multidiffusion.engine.fusion.FusionPlan` (computed once per plan)."""
        share = self._shares.get(plan)
        if share is None:
            share = shard_jobs(plan.jobs, self.world)[self.rank]
            self._shares[plan] = share
        return share

    @contextlib.contextmanager
    def summed(self, total: torch.Tensor, what: str) -> Iterator[None]:
        """Run the block that adds this rank's part into ``total``, then sum ``total`` over the ranks.

        If the block raises, this rank still takes part in the sum, with a failure flag and its part
        zeroed, so every rank raises :class:`RankFailed` naming the failed ranks and their errors
        rather than waiting for them (the failed rank's own error is chained)."""
        error: Exception | None = None
        try:
            yield
        except Exception as exc:  # reported to every rank, then raised
            error = exc
        flat = torch.zeros(total.numel() + self.world, dtype=total.dtype, device=total.device)
        if error is None:
            flat[: total.numel()] = total.reshape(-1)
        else:
            flat[total.numel() + self.rank] = 1
        self.all_reduce(flat, what)
        failed = [r for r, flag in enumerate(flat[total.numel() :].tolist()) if flag > 0]
        if failed:
            raise self._failure(what, failed, error) from error
        total.copy_(flat[: total.numel()].view_as(total))

    def _failure(self, what: str, failed: list[int], error: Exception | None) -> RankFailed:
        mine = f"{type(error).__name__}: {error}" if error is not None else ""
        messages: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(messages, mine, group=self.group)
        except RuntimeError:  # the message is a courtesy: the failure is known already
            messages = [mine if r == self.rank else "" for r in range(self.world)]
        reasons = "; ".join(f"rank {r}: {messages[r] or 'failed'}" for r in failed)
        return RankFailed(f"{what}: {len(failed)} of {self.world} ranks failed ({reasons}); every rank stops")

    # -- collectives, with errors that say what happened -----------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, what: str) -> None:
        """Sum ``tensor`` over the ranks, in place (through a contiguous copy on the collective device
        if it is strided or lives elsewhere)."""
        self.bytes_all_reduced += tensor.numel() * tensor.element_size()
        self._on_device(tensor, lambda t: dist.all_reduce(t, group=self.group), what)

    def broadcast(self, tensor: torch.Tensor, src: int, what: str) -> None:
        """Rank ``src``'s ``tensor`` on every rank, in place."""
        self.bytes_broadcast += tensor.numel() * tensor.element_size()
        if self.group is None:
            self._on_device(tensor, lambda t: dist.broadcast(t, src), what)
        else:
            self._on_device(tensor, lambda t: dist.broadcast(t, group=self.group, group_src=src), what)

    def _on_device(self, tensor: torch.Tensor, op: Callable[[torch.Tensor], Any], what: str) -> None:
        # collectives send storage as it lies: a strided tensor (a convolution's channels-last output)
        # would arrive permuted, so it travels as a contiguous copy
        moved = (
            tensor if tensor.device == self.device and tensor.is_contiguous() else tensor.to(self.device).contiguous()
        )
        try:
            op(moved)
        except RuntimeError as exc:  # DistBackendError, gloo's timeouts and closed connections
            raise RankFailed(
                f"{what}: rank {self.rank} of {self.world} got no answer from the other ranks (one of them "
                f"failed, exited or exceeded the process group's timeout): {exc}"
            ) from exc
        if moved is not tensor:
            tensor.copy_(moved)

    def check_same(self, what: str, values: Mapping[str, int]) -> None:
        """Raise ``ValueError`` on every rank unless every rank passes the same ``values`` (integers,
        e.g. :func:`fingerprint`\\ s): ranks that run different calls would fuse unrelated canvases."""
        mine = torch.tensor(list(values.values()), dtype=torch.int64)
        table = torch.zeros((self.world, len(values)), dtype=torch.int64)
        table[self.rank] = mine
        self.all_reduce(table, what)
        for k, name in enumerate(values):
            column = table[:, k]
            if not bool((column == column[0]).all()):
                ranks = ", ".join(f"rank {r}: {int(v)}" for r, v in enumerate(column))
                raise ValueError(
                    f"{what}: the ranks disagree on {name} ({ranks}); every rank must run the same call "
                    "with the same options and seed"
                )

    def agree(self, value: int, what: str) -> int:
        """Rank 0's ``value`` (an integer, e.g. a random seed drawn on each rank), on every rank."""
        t = torch.tensor([value], dtype=torch.int64)
        self.broadcast(t, 0, what)
        return int(t)


def fingerprint(value: Any) -> int:
    """A 63-bit integer that identifies ``value``: a tensor by its shape and the float64 sums of its
    values and of their magnitudes, anything else by its ``repr`` (for :meth:`Shard.check_same`)."""
    if isinstance(value, torch.Tensor):
        value = (tuple(value.shape), float(value.detach().double().sum()), float(value.detach().double().abs().sum()))
    digest = hashlib.blake2b(repr(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def digest(value: Any) -> int:
    """A 63-bit integer that identifies ``value`` by content, the same in every process: tensors, numpy
    arrays and PIL images by their bytes (with shape, dtype or mode), dataclasses by the fields they are
    made from (not private caches), mappings and sequences by their items, a loaded input image by its
    pixels (not the path it came from), a region's mask as loaded, a diffusers or transformers object
    (scheduler, model) by its class and configuration, a module without one by its parameters' names and
    shapes, a function by its name; anything else by its ``repr`` unless that holds a memory address
    (then by its type)."""
    h = hashlib.blake2b(digest_size=8)
    _feed(h, value, 0)
    return int.from_bytes(h.digest(), "big") >> 1


_MAX_DEPTH = 12


def _feed(h: Any, value: Any, depth: int) -> None:
    import numpy as np
    from PIL import Image

    def tag(text: str) -> None:
        h.update(text.encode("utf-8", "surrogatepass") + b"\x00")

    if depth > _MAX_DEPTH:
        tag(f"<deep {type(value).__qualname__}>")
    elif value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        tag(f"{type(value).__name__}:{value!r}")
    elif isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        tag(f"tensor {t.dtype} {tuple(t.shape)}")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        tag(f"array {value.dtype} {value.shape}")
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Image.Image):
        tag(f"image {value.mode} {value.size}")
        h.update(value.tobytes())
    elif _is_loaded_image(value):  # an InputImage: its pixels, wherever each rank read them from
        _feed(h, value.image, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        tag(f"dataclass {type(value).__qualname__}")
        for f in dataclasses.fields(value):
            if f.compare and f.init and not f.name.startswith("_"):  # not caches (a region's rasterised masks)
                item = getattr(value, f.name)
                if f.name == "mask" and item is not None and callable(getattr(value, "source_mask", None)):
                    item = value.source_mask()  # a region's mask as loaded, not the path naming it
                tag(f.name)
                _feed(h, item, depth + 1)
    elif isinstance(value, Mapping):
        tag(f"mapping {len(value)}")
        for key in sorted(value, key=repr):
            _feed(h, key, depth + 1)
            _feed(h, value[key], depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        tag(f"{type(value).__name__} {len(items)}")
        for item in items:
            _feed(h, item, depth + 1)
    elif getattr(value, "config", None) is not None:  # a scheduler, a diffusers model, a transformers model
        config = value.config
        config = config.to_dict() if callable(getattr(config, "to_dict", None)) else dict(config)
        tag(f"configured {type(value).__qualname__}")
        _feed(h, {k: v for k, v in config.items() if not str(k).startswith("_")}, depth + 1)
    elif isinstance(value, torch.nn.Module):
        tag(f"module {type(value).__qualname__}")
        _feed(h, [(name, tuple(p.shape), str(p.dtype)) for name, p in value.named_parameters()], depth + 1)
    elif isinstance(value, type) or callable(value):
        tag(f"callable {getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}")
    else:
        text = repr(value)
        tag(type(value).__qualname__ if " at 0x" in text else f"{type(value).__qualname__}:{text}")


def _is_loaded_image(value: Any) -> bool:
    """Whether ``value`` is a :class:`~multidiffusion.io.image_loader.InputImage` (duck-typed: the engine does
    not import the loaders): a decoded image with the path and SHA-256 it was read from."""
    from PIL import Image

    return isinstance(getattr(value, "image", None), Image.Image) and callable(getattr(value, "record", None))


UNCOMPARED_OPTIONS = ("view_batch_size",)
"""Options ranks may set differently: they change the memory a rank uses, not its result."""


def call_digests(options: Any, scheduler: Any, pipe: Any, extra: Mapping[str, Any] | None = None) -> dict[str, int]:
    """What every rank of a sharded run must agree on before the call's inputs are used, as
    digests (:func:`digest`) for :meth:`Shard.check_same`: each of ``options``' fields (a dataclass; the input
    images, masks, region masks and control images by their pixels), the ``scheduler`` the run made
    (its class and configuration), the model (``pipe``'s components' classes and configurations: cheap,
    no weights are read) and ``extra`` (name -> value, e.g. the model's settings)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        if f.compare and f.name not in UNCOMPARED_OPTIONS:
            values[f.name] = getattr(options, f.name)
    values["the scheduler (its class and configuration)"] = scheduler
    components = getattr(pipe, "components", None) or {}
    values["the model (its components' configurations)"] = {
        name: component for name, component in components.items() if isinstance(component, torch.nn.Module)
    }
    values.update(extra or {})
    return {name: digest(value) for name, value in values.items()}


def shard_jobs(jobs: Sequence[Any], world: int) -> list[list[Any]]:
    """The jobs of a step split over ``world`` ranks, balanced by cost, the same on every rank.

    Jobs of one view stay on one rank (the prompts of a region layout's window share their
    unconditional branch inside a model call); each view's unit costs latent pixels x rows, rows
    being its jobs plus one shared unconditional row. Units go largest first to the least loaded
    rank (ties: the lower rank, the earlier unit), and each rank keeps the plan's order of jobs."""
    if world < 1:
        raise ValueError(f"world must be at least 1, got {world}")
    units: dict[Any, list[int]] = {}
    for k, job in enumerate(jobs):
        units.setdefault(job.view, []).append(k)
    order = list(units.values())
    costs = [jobs[u[0]].view.height * jobs[u[0]].view.width * (len(u) + 1) for u in order]
    load = [0] * world
    owner = [0] * len(jobs)
    for u in sorted(range(len(order)), key=lambda u: (-costs[u], u)):
        r = min(range(world), key=lambda r: (load[r], r))
        load[r] += costs[u]
        for k in order[u]:
            owner[k] = r
    return [[job for k, job in enumerate(jobs) if owner[k] == r] for r in range(world)]


# -- which group, if any ----------------------------------------------------------------------------
_AUTO = object()
_choice: ContextVar[Any] = ContextVar("multidiffusion_shard", default=_AUTO)
_shards: dict[Any, Shard] = {}


def active() -> Shard | None:
    """The shard this process's calls use: the group :func:`sharded` chose, none inside
    :func:`local`, else the default process group when one of more than one rank is initialised."""
    choice = _choice.get()
    if choice is None:
        return None
    if choice is not _AUTO:
        return choice
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    key = id(dist.group.WORLD)
    if key not in _shards:
        _shards.clear()  # a group destroyed and made anew
        _shards[key] = Shard()
    return _shards[key]


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Calls inside run in this process alone, even with a process group (data parallelism)."""
    token = _choice.set(None)
    try:
        yield
    finally:
        _choice.reset(token)


@contextlib.contextmanager
def sharded(group: Any) -> Iterator[Shard]:
    """Calls inside shard their views across ``group`` (a ``torch.distributed`` process group)."""
    token = _choice.set(Shard(group))
    try:
        yield _choice.get()
    finally:
        _choice.reset(token)


def is_writer() -> bool:
    """Whether this process writes files and shows progress: rank 0 of a sharded run, or any process
    that runs alone."""
    shard = active()
    return shard is None or shard.rank == 0


def init(device: str | torch.device | None = None, timeout: timedelta | None = None) -> Shard | None:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment) unless one is
    initialised already: NCCL when ``device`` is CUDA (each process on the GPU ``LOCAL_RANK`` names),
    gloo otherwise, collectives waiting at most ``timeout`` (default :data:`DEFAULT_TIMEOUT`, or
    ``MULTIDIFFUSION_TIMEOUT`` seconds). Returns the active shard (None in a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        seconds = os.environ.get("MULTIDIFFUSION_TIMEOUT")
        if timeout is None and seconds:
            try:
                timeout = timedelta(seconds=float(seconds))
            except ValueError:
                raise ValueError(f"MULTIDIFFUSION_TIMEOUT must be a number of seconds, got {seconds!r}") from None
        kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        if kind == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=timeout or DEFAULT_TIMEOUT)
    return active()
