"""Outpainting: extend an image by ``left``, ``right``, ``top`` and ``bottom`` pixels, as an inpainting
of the larger canvas (:mod:`multidiffusion.tasks.inpaint`).

- Canvas: (h + top + bottom) x (w + left + right), the image (its size rounded down to multiples of
  8, resized as img2img does) placed at (top, left).
- Known pixels of the new area (what a strength below 1 starts from, what the feathered edge of the
  mask blends towards, what the VAE encodes around the image): the image's edge columns and rows
  replicated outwards, then blurred by a Gaussian of :data:`FILL_BLUR` pixels so that the streaks
  of replicated edge texture become smooth colour. On a circular canvas the horizontal gap runs from
  the image's right edge, across the 0/360-degree seam, to its left edge: it is filled by a linear
  blend from the last column to the first, so both sides of the seam continue their own edge.
- Mask (1 = repaint): the new area plus ``overlap`` pixels of the image along each side that grows,
  feathered by ``mask_blur`` (wrapping around on a circular canvas).

Everything else (draw order, blending or the inpainting UNet's channels, windows, circular decode)
is the inpainting task's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from multidiffusion.options import OutpaintOptions
from multidiffusion.tasks.images import image_tensor
from multidiffusion.tasks.inpaint import InpaintTask, gaussian_blur

__all__ = ["FILL_BLUR", "OutpaintTask", "extend_image", "outpaint_mask"]

FILL_BLUR = 16
"""Standard deviation (pixels) of the Gaussian that smooths the replicated edge in the new area."""


def extend_image(
    image: torch.Tensor,
    top: int,
    bottom: int,
    left: int,
    right: int,
    circular: bool = False,
    blur: float = FILL_BLUR,
) -> torch.Tensor:
    """``image`` (N, C, h, w) at (``top``, ``left``) of a canvas (N, C, h + top + bottom, w + left +
    right) whose new area holds the edge replicated outwards (on a ``circular`` canvas, horizontally a
    linear blend from the last column round to the first), blurred by ``blur`` pixels; the image's
    own pixels are unchanged."""
    h, w = image.shape[-2:]
    gap = left + right
    if circular and gap:
        last, first = image[..., -1:], image[..., :1]
        t = torch.arange(1, gap + 1, device=image.device, dtype=image.dtype) / (gap + 1)
        fill = last + (first - last) * t  # the k-th column after the right edge, round the seam
        rows = torch.cat([fill[..., right:], image, fill[..., :right]], dim=-1)
    else:
        rows = F.pad(image, (left, right, 0, 0), mode="replicate") if gap else image
    canvas = F.pad(rows, (0, 0, top, bottom), mode="replicate") if top or bottom else rows
    new = torch.ones_like(canvas[:1, :1], dtype=torch.bool)
    new[..., top : top + h, left : left + w] = False
    return torch.where(new, gaussian_blur(canvas, blur, wrap=circular), canvas)


def outpaint_mask(size: tuple[int, int], top: int, bottom: int, left: int, right: int, overlap: int) -> torch.Tensor:
    """(1, 1, H, W) float mask of a canvas of ``size`` pixels: 1 on the new area and on ``overlap``
    pixels of the image along each side that grows (at most the image's own size), 0 elsewhere."""
    height, width = size
    h, w = height - top - bottom, width - left - right
    over_h, over_w = min(overlap, h), min(overlap, w)
    mask = torch.zeros((1, 1, height, width))
    if top:
        mask[..., : top + over_h, :] = 1
    if bottom:
        mask[..., height - bottom - over_h :, :] = 1
    if left:
        mask[..., :, : left + over_w] = 1
    if right:
        mask[..., :, width - right - over_w :] = 1
    return mask


class OutpaintTask(InpaintTask):
    """The image extended on the sides the options give, inpainted where it grew (see the module
    docstring); ``circular=True`` wraps the canvas horizontally, a 360-degree panorama."""

    name = "outpaint"
    options: OutpaintOptions  # type: ignore[assignment]

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the image on the canvas, in pixels."""
        o = self.options
        return self.size[0] - o.top - o.bottom, self.size[1] - o.left - o.right

    def canvas_pixels(self) -> torch.Tensor:
        o = self.options
        image = image_tensor(o.image.image, self.image_size, self.adapter)
        return extend_image(image, o.top, o.bottom, o.left, o.right, circular=self.circular)

    def mask_pixels(self) -> torch.Tensor:
        o = self.options
        mask = outpaint_mask(self.size, o.top, o.bottom, o.left, o.right, o.overlap)
        return gaussian_blur(mask, o.mask_blur, wrap=self.circular)

    def mask_parameters(self) -> dict[str, Any]:
        o = self.options
        return {
            "left": o.left,
            "right": o.right,
            "top": o.top,
            "bottom": o.bottom,
            "overlap": o.overlap,
            "mask_blur": o.mask_blur,
        }
