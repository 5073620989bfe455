"""A layout preview: what each prompt controls, drawn before (or over) a generation.

Every canvas pixel is tinted with the colours of the prompts in proportion to their shares of
Eq. 5 on the latent grid (W_p / Σ_q W_q, shown at latent resolution: what the model actually uses,
soft edges and overlaps included), and each prompt is written where its share is largest.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from multidiffusion.regions.layout import RegionLayout

__all__ = ["draw_layout"]

BACKGROUND_TINT = (96, 96, 96)
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
]
MAX_LABEL = 48


def _label(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def _label_position(share: torch.Tensor, box: tuple[int, int]) -> tuple[float, float]:
    """Where to centre a label of ``box`` (rows, columns) latent pixels in the area where ``share``
    is largest: the placement wholly inside the area nearest its centroid; else the point deepest
    inside it (repeated 3x3 erosion, the canvas border counting as an edge)."""
    inside = (share >= share.max() - 1e-6).float()[None, None]
    rows, cols = torch.meshgrid(torch.arange(share.shape[0]), torch.arange(share.shape[1]), indexing="ij")
    area = inside[0, 0]
    cy, cx = float((area * rows).sum() / area.sum()), float((area * cols).sum() / area.sum())
    kh, kw = min(box[0], share.shape[0]), min(box[1], share.shape[1])
    fits = F.avg_pool2d(inside, (kh, kw), stride=1)[0, 0] >= 1 - 1e-6
    offset = ((kh - 1) / 2, (kw - 1) / 2)
    if not bool(fits.any()):
        fits, offset = area > 0, (0.0, 0.0)
        while True:
            eroded = -F.max_pool2d(-F.pad(fits.float()[None, None], (1, 1, 1, 1)), 3, stride=1)[0, 0] > 0
            if not bool(eroded.any()):
                break
            fits = eroded
    r, c = rows[: fits.shape[0], : fits.shape[1]] + offset[0], cols[: fits.shape[0], : fits.shape[1]] + offset[1]
    dist = (r - cy) ** 2 + (c - cx) ** 2
    dist[~fits] = float("inf")
    i = int(dist.argmin())
    return float(r.flatten()[i]), float(c.flatten()[i])


def draw_layout(layout: RegionLayout, image: Image.Image | None = None) -> Image.Image:
    """The preview of a :class:`RegionLayout` (see the module docstring)."""
    f = layout.scale_factor
    shares = layout.shares()  # (P, h, w)
    colours = ([BACKGROUND_TINT] if layout.background is not None else []) + [
        PALETTE[i % len(PALETTE)] for i in range(len(layout.regions))
    ]
    tint = torch.einsum("phw,pc->hwc", shares, torch.tensor(colours, dtype=torch.float32))
    tint = tint.repeat_interleave(f, 0).repeat_interleave(f, 1).clamp(0, 255).numpy().astype(np.uint8)
    canvas = Image.fromarray(tint)
    if image is not None:
        base = image.convert("RGB").resize(canvas.size)
        canvas = Image.blend(base, canvas, 0.45)
    draw = ImageDraw.Draw(canvas)
    size = max(10, min(layout.height, layout.width) // 24)
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    scalable = isinstance(font, ImageFont.FreeTypeFont)
    labels = (["background: " + layout.background] if layout.background is not None else []) + [
        f"{i + 1}: {r.prompt}" for i, r in enumerate(layout.regions)
    ]
    for slot, text in enumerate(labels):
        share = shares[slot]
        if not bool((share > 0).any()):
            continue
        style = {"stroke_width": max(1, size // 8), "stroke_fill": (0, 0, 0)} if scalable else {}
        label = _label(text)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font, stroke_width=style.get("stroke_width", 0))
        tw, th = right - left, bottom - top
        y, x = _label_position(share, (math.ceil(th / f) + 1, math.ceil(tw / f) + 1))
        # centred there, moved inside the canvas
        px = min(max((x + 0.5) * f - tw / 2, 0), max(0, canvas.width - tw)) - left
        py = min(max((y + 0.5) * f - th / 2, 0), max(0, canvas.height - th)) - top
        draw.text((px, py), label, fill=(255, 255, 255), font=font, **style)
    return canvas
