"""A layout preview: what each prompt controls, drawn before (or over) a generation.

Every canvas pixel is tinted with the colours of the prompts in proportion to their shares of
Eq. 5 on the latent grid (W_p / Σ_q W_q, shown at latent resolution: what the model actually uses,
soft edges and overlaps included), and each prompt is written where its share is largest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

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


def _fit(text: str, width: int, measure: Callable[[str], int]) -> str:
    """``text`` (at most :data:`MAX_LABEL` characters), shortened with an ellipsis to ``width`` pixels."""
    if len(text) > MAX_LABEL:
        text = text[: MAX_LABEL - 1] + "…"
    while len(text) > 2 and measure(text) > width:
        text = text[:-2].rstrip() + "…"
    return text


Box = tuple[int, int, int, int]
"""A label's pixels on the canvas: x0, y0, x1, y1."""


def _place(area: torch.Tensor, box: tuple[int, int], taken: list[Box], step: int) -> tuple[int, int]:
    """Top-left (x, y) in pixels of a label of ``box`` (width, height) pixels, wholly on the canvas:
    over no label already placed (``taken``: x0, y0, x1, y1) where possible, then as much inside
    ``area`` (the pixels where its prompt's share is largest) as it can be, then nearest the area's
    centroid. Positions are tried every ``step`` pixels and flush with each edge."""
    rows, cols = area.shape
    w, h = min(box[0], cols), min(box[1], rows)
    ys = torch.unique(torch.cat([torch.arange(0, rows - h + 1, step), torch.tensor([rows - h])]))
    xs = torch.unique(torch.cat([torch.arange(0, cols - w + 1, step), torch.tensor([cols - w])]))
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    total = F.pad(area.double().cumsum(0).cumsum(1), (1, 0, 1, 0))  # summed-area table
    inside = (total[y + h, x + w] - total[y, x + w] - total[y + h, x] + total[y, x]) / (w * h)
    overlap = torch.zeros_like(inside)
    for x0, y0, x1, y1 in taken:
        across = (torch.clamp(x + w, max=x1) - torch.clamp(x, min=x0)).clamp(min=0)
        down = (torch.clamp(y + h, max=y1) - torch.clamp(y, min=y0)).clamp(min=0)
        overlap += across * down
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    weight = area.double().sum().clamp(min=1)
    cy, cx = float((area * r).sum() / weight), float((area * c).sum() / weight)
    distance = ((y + h / 2 - cy) ** 2 + (x + w / 2 - cx) ** 2) / (rows**2 + cols**2)  # < 1
    outside = torch.ceil((1 - inside) * 10 - 1e-6)  # tenths of the label off its area
    score = (overlap > 0) * 1000.0 + overlap / (w * h) * 100 + outside + distance
    i = int(score.argmin())
    return int(x.flatten()[i]), int(y.flatten()[i])


def draw_layout(layout: Any, image: Image.Image | None = None) -> Image.Image:
    """The preview of a :class:`~multidiffusion.regions.layout.RegionLayout` (see the module
    docstring; typed loosely: the layout imports this module to draw itself). Labels are placed from
    the smallest area to the largest, each over no other label where there is room, none cut off."""
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
    style = (
        {"stroke_width": max(1, size // 8), "stroke_fill": (0, 0, 0)}
        if isinstance(font, ImageFont.FreeTypeFont)
        else {}
    )
    stroke = style.get("stroke_width", 0)
    labels = (["background: " + layout.background] if layout.background is not None else []) + [
        f"{i + 1}: {r.prompt}" for i, r in enumerate(layout.regions)
    ]
    areas = [(shares[slot] >= shares[slot].max() - 1e-6) & (shares[slot] > 0) for slot in range(len(labels))]
    taken: list[Box] = []
    for slot in sorted((s for s in range(len(labels)) if bool(areas[s].any())), key=lambda s: int(areas[s].sum())):
        label = _fit(labels[slot], canvas.width - 2, lambda t: int(draw.textlength(t, font=font)) + 2 * stroke)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font, stroke_width=stroke)
        area = areas[slot].repeat_interleave(f, 0).repeat_interleave(f, 1)
        x, y = _place(area, (right - left + 2, bottom - top + 2), taken, step=max(1, min(f, 4)))
        taken.append((x, y, x + right - left + 2, y + bottom - top + 2))
        draw.text((x + 1 - left, y + 1 - top), label, fill=(255, 255, 255), font=font, **style)
    return canvas
