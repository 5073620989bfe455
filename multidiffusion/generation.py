"""One generation as the shells run it: seed -> generate -> PNG(s) -> summary (was ``jobs.py``:
"job" now means only the engine's view under a prompt).

The command line and the web app both call :func:`run_and_save`, so a seed is resolved, a run is
timed, files are written (whole or not at all, never for a cancelled run) and a result is
summarised in one place. When the views are sharded across processes
(:mod:`multidiffusion.engine.distributed`), every process draws rank 0's random seed and only rank 0
writes the files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multidiffusion.engine import distributed
from multidiffusion.files.metadata import check_output_path, numbered_paths
from multidiffusion.io.ranges import drawn_seed
from multidiffusion.options import SamplingOptions
from multidiffusion.output import MultiDiffusionOutput

__all__ = ["SavedRun", "run_and_save", "summary"]


@dataclass
class SavedRun:
    output: MultiDiffusionOutput
    paths: list[Path]
    seed: int

    @property
    def summary(self) -> str:
        return summary(self.output, self.seed)


def summary(output: MultiDiffusionOutput, seed: int | None) -> str:
    """'256x64 px, seed 3, 4.1 s, 40 model calls'."""
    w, h = output.images[0].size
    seed_text = f", seed {seed}" if seed is not None else ""
    return f"{w}x{h} px{seed_text}, {output.stats.seconds:.1f} s, {output.stats.model_calls} model calls"


def run_and_save(
    md: Any,
    options: SamplingOptions,
    path: str | os.PathLike,
    *,
    extra: dict[str, Any] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **context: Any,
) -> SavedRun:
    """Generate ``options`` with ``md`` (a random seed when none is set, so the PNG can regenerate
    it) and save the images to ``path`` (numbered after the first). ``on_step(done, total)``
    reports progress; ``should_stop()`` cancels between steps (nothing is written)."""
    if options.output_type != "pil":
        raise ValueError(f"output_type must be 'pil' to save PNGs, got {options.output_type!r}")
    options.seed = drawn_seed(options.seed, distributed.active())
    options = options.with_defaults(*md.adapter.sampling_defaults)  # the steps the progress counts
    callback = None
    if on_step is not None:
        total = options.num_inference_steps

        def callback(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            on_step(i + 1, total)
            return {}

    out = md.generate(options, callback_on_step_end=callback, should_stop=should_stop, **context)
    if distributed.is_writer():
        paths = out.save(path, **(extra or {}))
    else:  # rank 0 of a sharded run writes them
        paths = numbered_paths(check_output_path(path), len(out.images))
    return SavedRun(out, paths, options.seed)
