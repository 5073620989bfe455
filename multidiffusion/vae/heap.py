"""Giving the memory freed by a tile back to the operating system (CPU, glibc).

A tiled pass allocates and frees the same tile-sized activations over and over. glibc keeps freed
chunks inside its heap for reuse and returns only what is free at the heap's top, above a threshold
that grows with the largest block it has unmapped; the rest stays resident. How much it keeps
depends on the order in which blocks happen to be freed, so it differs from run to run: measured,
the same 4096 x 4096 upscale with nothing kept peaked at 807, 849, 1946 and 2125 MiB RSS while the
memory actually held (malloc's live bytes) peaked at 520 MiB (``python -m benchmarks --suites
upscale-memory``). ``malloc_trim(0)`` after each tile hands the free pages back (``madvise``), so the
resident memory follows what is live: 831 and 836 MiB in two runs of the same upscale, 10-50%
slower (462 s and 627 s against 376-421 s untrimmed; times vary that much between runs here).

The tiled VAE does it in its least-memory setting (``cache_mb=0``) only: with the default budget of
kept activations, the speed setting, it cost 20% (257 s against 213 s; 2595 against 3621 MiB).
Elsewhere (other C libraries, CUDA, whose caching allocator is its own) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

import torch

__all__ = ["give_back_freed", "glibc_function"]


def glibc_function(name: str, restype: type, *argtypes: type) -> Callable | None:
    """``name`` from the C library with its types, or None where it has no such function (not
    glibc, or too old)."""
    try:
        f = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    f.restype, f.argtypes = restype, list(argtypes)
    return f


_TRIM = glibc_function("malloc_trim", ctypes.c_int, ctypes.c_size_t)


def give_back_freed(device: torch.device) -> None:
    """Return the heap's free pages to the system when ``device`` is the CPU (see the module docstring)."""
    if _TRIM is not None and device.type == "cpu":
        _TRIM(0)
