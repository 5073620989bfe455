"""SDXL's size conditioning per window, as the library sets it per view (:mod:`multidiffusion.models.sdxl`).

SDXL's UNet reads, in its ``y`` vector, the pooled text embedding and six sizes in pixels, each
through a 256-wide sinusoidal embedding (ComfyUI's ``SDXL.embedder``, in this order):

    y = (pooled, original_h, original_w, crop_top, crop_left, target_h, target_w)

ComfyUI builds one ``y`` for the whole canvas (original and target: the canvas, or the sizes set in
CLIP Text Encode SDXL; crop (0, 0)), and by default every window keeps it. The library gives each
view its own target size (the image the UNet generates is the window), keeps the original size of
the canvas, and optionally the window's offset as the crop. ``sdxl_size``:

- ``conditioning``: ComfyUI's ``y`` for every window, as before (a window covering the canvas and
  the default sizes are the same thing);
- ``window``: each window's target size is its own (the library's default; original and crop stay
  the conditioning's);
- ``window+offset``: and its crop is its offset on the canvas (the library's ``crops_coords_top_left
  ="offset"``).

Other models (SD 1.x, FLUX, SD 3.5: no such ``y``) are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from multidiffusion.engine.views import View

__all__ = ["SIZES", "per_window_y"]

SIZES = ("conditioning", "window", "window+offset")
WIDTH = 256  # each size's embedding
TARGET, CROP = 4, 2  # the index of target_h and crop_top among the six sizes


def _is_sdxl(model: Any, y: Any) -> bool:
    import comfy.model_base

    return (
        isinstance(model, comfy.model_base.SDXL)
        and isinstance(y, torch.Tensor)
        and y.dim() == 2
        and y.shape[-1] > 6 * WIDTH
    )


def per_window_y(
    model: Any, y: Any, views: Sequence[View], rows: int, factor: int, canvas: tuple[int, int], mode: str
) -> Any:
    """``y`` (view-major rows, ``rows`` per view) with each view's sizes set as ``mode`` says."""
    if mode == "conditioning" or not _is_sdxl(model, y):
        return y
    out = y.clone()
    for j, view in enumerate(views):
        sizes = {TARGET: view.height * factor, TARGET + 1: view.width * factor}
        if mode == "window+offset":
            sizes.update({CROP: view.top * factor, CROP + 1: (view.left % canvas[1]) * factor})
        block = out[j * rows : (j + 1) * rows]
        for index, value in sizes.items():
            start = y.shape[-1] - (6 - index) * WIDTH
            embedded = model.embedder(torch.Tensor([value])).flatten().to(device=y.device, dtype=y.dtype)
            block[:, start : start + WIDTH] = embedded
    return out
