"""Measuring one run: wall time, UNet calls and the time inside them, latent pixels, peak memory.

Everything is counted by hooks on the UNet module (or the diffusion transformer), so our engine and
the peers are measured the same way. On CUDA the hooks synchronise, so the time inside model calls is
real, not launch time.
"""

from __future__ import annotations

import ctypes
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
import torch

from multidiffusion.vae.heap import glibc_function

__all__ = ["Measurement", "RssPoller", "live_heap_bytes", "measure", "median_of", "peak_rss_mb"]


@dataclass
class Measurement:
    seconds: float = 0.0
    model_calls: int = 0
    evaluations: int = 0  # UNet batch rows: one crop under one prompt (or unconditional) each
    model_seconds: float = 0.0
    latent_pixels: int = 0  # summed over the UNet batch, both guidance branches
    peak_mb: float = 0.0  # CPU: peak RSS of the process during the run; CUDA: max_memory_allocated
    live_peak_mb: float | None = None  # CPU with glibc: peak of live_heap_bytes() (RSS less what malloc keeps)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_model(self) -> float:
        """Share of the run's wall time spent inside UNet calls."""
        return self.model_seconds / self.seconds if self.seconds else 0.0

    def coverage(self, canvas_pixels: int, steps: int, branches: int = 2) -> float:
        """Latent pixels through the UNet per canvas latent pixel, per step, per guidance branch."""
        return self.latent_pixels / (canvas_pixels * steps * branches)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "in_model": self.in_model}


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]


_MALLINFO2 = glibc_function("mallinfo2", _Mallinfo2)  # glibc 2.33 and newer


def live_heap_bytes() -> int | None:
    """Bytes malloc has handed out and not got back (glibc: ``uordblks + hblkhd``, all arenas), or
    None where glibc's ``mallinfo2`` is missing. Unlike RSS, this leaves out the freed memory the
    allocator keeps: freed chunks inside the heap that glibc neither trims nor unmaps. How much of
    that it keeps differs from run to run of the same program (measured: the same 4096 px upscale
    peaked at 807, 849, 1946 and 2125 MiB RSS at 520 MiB live), so the live figure is the one that tells whether memory
    follows the tile or the canvas."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


class RssPoller:
    """Peak resident memory of this process while the run lasts (polled every 2 ms), and the peak of
    :func:`live_heap_bytes` (``live_peak``, None without glibc)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.live_peak = live_heap_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, self.process.memory_info().rss)
        if self.live_peak is not None:
            self.live_peak = max(self.live_peak, live_heap_bytes() or 0)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.002)

    def __enter__(self) -> RssPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (ru_maxrss), MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(run: Callable[[], Any], unet: torch.nn.Module | None, device: torch.device) -> tuple[Any, Measurement]:
    """Run ``run()`` once and measure it; ``unet=None`` skips the model-call hooks."""
    m = Measurement()
    cuda = device.type == "cuda"
    starts: list[float] = []

    def before(module, args, kwargs):
        if cuda:
            torch.cuda.synchronize()
        starts.append(time.perf_counter())
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        # a UNet's or SD 3's (B, C, h, w) latents; FLUX's (B, tokens, 4C) tokens of 2x2 latent pixels
        m.latent_pixels += x.shape[0] * (4 * x.shape[1] if x.dim() == 3 else x.shape[-2] * x.shape[-1])
        m.evaluations += x.shape[0]

    def after(module, args, kwargs, output):
        if cuda:
            torch.cuda.synchronize()
        m.model_seconds += time.perf_counter() - starts.pop()
        m.model_calls += 1

    hooks = []
    if unet is not None:
        hooks = [
            unet.register_forward_pre_hook(before, with_kwargs=True),
            unet.register_forward_hook(after, with_kwargs=True),
        ]
    try:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with RssPoller() as rss:
            start = time.perf_counter()
            result = run()
            if cuda:
                torch.cuda.synchronize()
            m.seconds = time.perf_counter() - start
        m.peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss.peak / 2**20
        if not cuda and rss.live_peak is not None:
            m.live_peak_mb = rss.live_peak / 2**20
    finally:
        for h in hooks:
            h.remove()
    return result, m


def median_of(measurements: list[Measurement]) -> Measurement:
    """The run with the median wall time (its other figures come with it)."""
    ordered = sorted(measurements, key=lambda m: m.seconds)
    best = ordered[(len(ordered) - 1) // 2]
    best.extra["all_seconds"] = [round(m.seconds, 3) for m in measurements]
    best.extra["spread"] = round(statistics.pstdev([m.seconds for m in measurements]) / best.seconds, 4)
    return best
