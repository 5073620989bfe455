"""The result of a call: images, the parameters that regenerate them, and what they cost."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multidiffusion.engine.sampler import SamplingStats
from multidiffusion.files.metadata import check_output_path, numbered_paths, save_png

__all__ = ["MultiDiffusionOutput"]


@dataclass
class MultiDiffusionOutput:
    """Result of a call. ``images`` is a list of PIL images, an array, a tensor or the latents, by
    ``output_type``; ``parameters`` regenerate it (written into PNGs); ``stats`` count the cost
    (model calls, evaluations, coverage, seconds)."""

    images: Any
    parameters: dict[str, Any] = field(default_factory=dict)
    stats: SamplingStats = field(default_factory=SamplingStats)

    def save(self, path: str | os.PathLike, **extra: Any) -> list[Path]:
        """Write each image as a PNG with the parameters in its text chunks: ``path`` for the first,
        ``stem-2.png``, ``stem-3.png``, ... for the others. Every path is checked before anything
        is written, and each file appears whole or not at all. ``extra`` parameters (e.g. the model
        name as a server offers it) are stored too."""
        if not isinstance(self.images, list):
            raise ValueError("save() needs PIL images: call with output_type='pil' (the default)")
        paths = numbered_paths(check_output_path(path), len(self.images))
        for p in paths[1:]:
            check_output_path(p)
        for i, (image, p) in enumerate(zip(self.images, paths)):
            save_png(image, p, {**self.parameters, **extra, "image_index": i})
        return paths
