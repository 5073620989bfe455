"""Region prompts (paper Sec. 4.2): each region of the canvas gets its own prompt.

A :class:`Region` is a prompt with where it applies: a mask (tight segmentation or rough scribble),
a box, or a colour of a segmentation map (:meth:`Region.from_segmentation`). A
:class:`RegionLayout` rasterises regions onto the latent grid as the per-prompt weights W_k of
Eq. 5:

    W_k = weight_k · M_k,      M_k = the region's mask on the latent grid (see :mod:`.masks`)
    M_bg = clamp(1 − Σ_k M_k, 0, 1)   (the background: the complement of the union of the regions)

The background formula is the paper's (region_based.py): for masks that do not overlap it is
1 − max_k M_k, and wherever the regions' masks sum to at most 1 the weights form a partition of
unity. Without a background prompt the regions must cover every latent pixel.

Each (window, prompt) pair becomes a :class:`~multidiffusion.engine.fusion.Job` only where the prompt's
weight is non-zero inside the window (:meth:`RegionLayout.jobs`): skipping the others is exact
(their terms in Eq. 5 are zero) and is the main saving on layouts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from multidiffusion.conditionings import ConditioningRegionFields, check_region, region_record
from multidiffusion.engine.fusion import Job
from multidiffusion.engine.views import View, crop
from multidiffusion.io.messages import shown
from multidiffusion.io.ranges import check_guidance, check_prompt_length
from multidiffusion.regions.colours import colour_hex, colour_table, segmentation_masks
from multidiffusion.regions.masks import (
    MaskLike,
    PackedMask,
    box_mask,
    encode_mask,
    feather_mask,
    fit_mask,
    read_mask,
    to_latent_grid,
)

__all__ = [
    "MAX_FEATHER",
    "MAX_REGIONS",
    "MAX_REGION_WEIGHT",
    "Region",
    "RegionLayout",
    "as_regions",
    "layout_preview",
    "region_fields",
    "region_layout",
]

MAX_REGIONS = 32
"""Most regions per canvas (each is a prompt slot: one text encoding, and jobs in the windows it
touches)."""
MAX_FEATHER = 1024
"""Largest feather, in pixels."""
MAX_REGION_WEIGHT = 1000.0
"""Largest region weight (a multiplier of its mask in Eq. 5's weights; 1 is the paper's)."""


def region_fields() -> tuple[str, ...]:
    """The fields a region takes, by name (a scene's region table, a dict of Region fields)."""
    fields = sorted((f for f in dataclasses.fields(Region) if f.init), key=lambda f: f.kw_only)  # own ones first
    return tuple(f.name for f in fields)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(eq=False)
class Region(ConditioningRegionFields):
    """A prompt for part of the canvas.

    ``mask``: path, PIL image, array or tensor at the canvas's size (or aspect ratio), values in
    [0, 1] (soft masks blend with their neighbours); ``box``: (x0, y0, x1, y1), integers in pixels
    or floats as fractions of the canvas in [0, 1]. Give one of the two. ``weight`` scales the
    region's W_k in Eq. 5 against its neighbours and the background; ``guidance_scale`` overrides
    the call's for this prompt; ``negative_prompt`` defaults to the call's; ``feather`` softens the
    mask's edges by about that many pixels (:func:`~multidiffusion.regions.masks.feather_mask`).

    Every conditioning kind adds its own keyword-only fields
    (:class:`~multidiffusion.conditionings.ConditioningRegionFields`, checked by the kind): a
    region's ``control_image`` (with ``controlnet_conditioning_scale`` and ``controlnet``, the
    index of the model's ControlNet it runs through), ``loras`` (adapter name -> weight: LoRAs loaded
    with ``md.load_lora(..., adapter_name=...)`` this region's views run with instead of the
    pipeline's active ones), ``ip_adapter_image``, ...; the other prompts' views don't get them.
    """

    prompt: str
    negative_prompt: str | None = None
    mask: MaskLike | None = None
    box: Sequence[float] | None = None
    weight: float = 1.0
    guidance_scale: float | None = None
    feather: float = 0.0
    _pixels: tuple[int, PackedMask] | None = field(default=None, init=False, repr=False)
    _fitted: tuple[Any, PackedMask] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {shown(self.prompt)}")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise ValueError(f"negative_prompt must be a string or None, got {shown(self.negative_prompt)}")
        if self.mask is not None and self.box is not None:
            raise ValueError("mask and box: give one of them, not both")
        if self.box is not None:
            self.box = _check_box(self.box)
        if not _is_number(self.weight) or self.weight <= 0:
            raise ValueError(f"weight must be a number > 0, got {shown(self.weight)}")
        if self.guidance_scale is not None and (not _is_number(self.guidance_scale) or self.guidance_scale < 0):
            raise ValueError(f"guidance_scale must be a number ≥ 0 or None, got {shown(self.guidance_scale)}")
        if not _is_number(self.feather) or not 0 <= self.feather <= MAX_FEATHER:
            raise ValueError(f"feather must be a number of pixels from 0 to {MAX_FEATHER}, got {shown(self.feather)}")
        check_prompt_length("prompt", self.prompt)
        if self.negative_prompt is not None:
            check_prompt_length("negative_prompt", self.negative_prompt)
        if self.guidance_scale is not None:
            check_guidance("guidance_scale", self.guidance_scale)
        if self.weight > MAX_REGION_WEIGHT:
            raise ValueError(f"weight must be a number > 0 up to {MAX_REGION_WEIGHT:g}, got {shown(self.weight)}")
        check_region(self)  # every conditioning kind's fields

    @classmethod
    def from_segmentation(cls, map: MaskLike, colors: Mapping[Any, str | Region | Mapping | None]) -> list[Region]:
        """Regions from a colour-coded segmentation map (the paper's Fig. 5) and a colour table.

        ``colors`` maps each colour of the map ('#rrggbb', '#rgb', 'r,g,b', a CSS name or an RGB
        tuple) to a prompt, a :class:`Region` without mask or box (for its other settings), a dict
        of Region fields, or None / "" to leave that colour to the background prompt. Every colour
        of the map needs an entry (antialiased edges add colours: draw maps with flat colours).
        """
        pairs = colour_table(colors, "colors")
        masks = segmentation_masks(map, [rgb for rgb, _ in pairs], "segmentation map")
        regions = []
        for (rgb, value), mask in zip(pairs, masks):
            name = f"colors[{colour_hex(rgb)!r}]"
            if value is None or value == "":
                continue
            try:
                if isinstance(value, str):
                    regions.append(cls(value, mask=mask))
                elif isinstance(value, Region):
                    if value.mask is not None or value.box is not None:
                        raise ValueError("mask/box: the map gives the mask; leave them unset")
                    regions.append(dataclasses.replace(value, mask=mask))
                elif isinstance(value, Mapping):
                    unknown = set(value) - set(region_fields()) | ({"mask", "box"} & set(value))
                    if unknown:
                        allowed = ", ".join(f for f in region_fields() if f not in ("mask", "box"))
                        raise ValueError(f"has fields {sorted(unknown)} (allowed: {allowed})")
                    regions.append(cls(**value, mask=mask))
                else:
                    raise ValueError(f"must be a prompt, a Region or a table of Region fields, got {shown(value)}")
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return regions

    # -- rasterising ---------------------------------------------------------------------------
    def source_mask(self, name: str = "mask") -> torch.Tensor:
        """The mask as given, loaded as a uint8 pixel mask (H, W), 0-255, at its own size (kept
        packed, :class:`~multidiffusion.regions.masks.PackedMask`)."""
        if self.mask is None:
            raise ValueError(f"{name}: this region has no mask")
        if self._pixels is None or self._pixels[0] != id(self.mask):
            self._pixels = (id(self.mask), PackedMask(read_mask(self.mask, name)))
        return self._pixels[1].tensor()

    def pixel_weights(self, height: int, width: int, name: str = "region") -> torch.Tensor:
        """The region on a ``height`` x ``width`` canvas, feathered: uint8 (H, W), 0-255. Kept
        (packed) for the last canvas asked, so checking a layout and running it rasterise it once;
        uint8 until :func:`~multidiffusion.regions.masks.to_latent_grid`, never a float canvas."""
        key = (height, width, id(self.mask), self.box, self.feather)
        if self._fitted is None or self._fitted[0] != key:
            self._fitted = (key, PackedMask(self._rasterise(height, width, name)))
        return self._fitted[1].tensor()

    def pixel_mask(self, height: int, width: int, name: str = "region") -> torch.Tensor:
        """:meth:`pixel_weights` as float32 in [0, 1] (made on each call, not kept)."""
        return self.pixel_weights(height, width, name).float().div_(255)

    def _rasterise(self, height: int, width: int, name: str) -> torch.Tensor:
        if self.mask is not None:
            mask = fit_mask(self.source_mask(f"{name}.mask"), height, width, f"{name}.mask")
            if not bool((mask > 0).any()):
                raise ValueError(f"{name}.mask is empty (all zero): it would give its prompt no pixels")
        elif self.box is not None:
            mask = box_mask(self.box, height, width, f"{name}.box", dtype=torch.uint8)
        else:
            raise ValueError(f"{name} ({self.prompt!r}) needs a mask or a box")
        return feather_mask(mask, self.feather)

    def to_dict(self) -> dict[str, Any]:
        """The region as JSON-ready data (scene files, PNG metadata); masks become PNG data URIs."""
        data: dict[str, Any] = {"prompt": self.prompt}
        if self.negative_prompt is not None:
            data["negative_prompt"] = self.negative_prompt
        if self.mask is not None:
            data["mask"] = encode_mask(self.source_mask())
        if self.box is not None:
            data["box"] = list(self.box)
        if self.weight != 1.0:
            data["weight"] = self.weight
        if self.guidance_scale is not None:
            data["guidance_scale"] = self.guidance_scale
        if self.feather:
            data["feather"] = self.feather
        return data | region_record(self)


def _check_box(box: Any) -> tuple[float, ...]:
    if isinstance(box, (str, bytes)) or not isinstance(box, Sequence) or len(box) != 4:
        raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got {shown(box)}")
    if not all(_is_number(v) for v in box):
        raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got {shown(box)}")
    values = tuple(box)
    if any(isinstance(v, float) for v in values):
        if not all(0 <= v <= 1 for v in values):
            raise ValueError(f"box {values}: floats are fractions of the canvas in [0, 1]; give pixels as integers")
    elif any(v < 0 for v in values):
        raise ValueError(f"box {values}: pixel coordinates must be ≥ 0")
    if values[2] <= values[0] or values[3] <= values[1]:
        raise ValueError(f"box {values} must have x1 > x0 and y1 > y0 (x0, y0, x1, y1)")
    return values


def as_regions(regions: Any, max_regions: int = MAX_REGIONS, note: str = "") -> list[Region]:
    """``regions`` as a list of :class:`Region` (dicts of Region fields are accepted); errors name
    the region by its index (``regions[1].box ...``)."""
    if regions is None:
        return []
    if isinstance(regions, (Region, Mapping, str)) or not isinstance(regions, Sequence):
        raise ValueError(f"regions must be a list of Region, got {type(regions).__name__}")
    if len(regions) > max_regions:
        raise ValueError(f"regions: at most {max_regions} regions per canvas, got {len(regions)}{note}")
    out = []
    for i, region in enumerate(regions):
        if isinstance(region, Mapping):
            unknown = set(region) - set(region_fields())
            if unknown:
                raise ValueError(
                    f"regions[{i}] has unknown fields {sorted(unknown)} (allowed: {', '.join(region_fields())})"
                )
            try:
                region = Region(**region)
            except ValueError as exc:
                raise ValueError(f"regions[{i}].{exc}") from None
            except TypeError as exc:
                raise ValueError(f"regions[{i}]: {exc}") from None
        if not isinstance(region, Region):
            raise ValueError(f"regions[{i}] must be a Region, got {type(region).__name__}")
        out.append(region)
    return out


@dataclass(eq=False)
class RegionLayout:
    """Regions rasterised on the latent grid of a ``height`` x ``width`` canvas.

    Prompt slots are the background (slot 0, when there is one) then the regions in order.
    ``masks[p]`` is M_p in [0, 1] (what bootstrapping composites with), ``weights[p]`` is W_p of
    Eq. 5; both (P, height / f, width / f).
    """

    height: int
    width: int
    scale_factor: int
    background: str | None
    regions: list[Region]
    masks: torch.Tensor
    weights: torch.Tensor

    @property
    def offset(self) -> int:
        """The slot of the first region: 1 with a background, else 0."""
        return 0 if self.background is None else 1

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.height // self.scale_factor, self.width // self.scale_factor

    @property
    def prompts(self) -> list[str]:
        return ([self.background] if self.background is not None else []) + [r.prompt for r in self.regions]

    def region_index(self, slot: int) -> int | None:
        """The region of a prompt slot, or None for the background (never bootstrapped)."""
        return None if slot < self.offset else slot - self.offset

    def negative_prompts(self, default: str | None) -> list[str]:
        own = [r.negative_prompt for r in self.regions]
        negatives = ([default] if self.background is not None else []) + [d if d is not None else default for d in own]
        return [n or "" for n in negatives]

    def guidance_scales(self, default: float) -> list[float]:
        own = [r.guidance_scale for r in self.regions]
        return ([default] if self.background is not None else []) + [g if g is not None else default for g in own]

    def jobs(self, views: Sequence[View], skip_empty: bool = True) -> list[Job]:
        """(view, prompt) jobs with the prompt's weights in the view; with ``skip_empty`` only those
        where the weight is non-zero somewhere in the view (exact: the others add 0 to Eq. 5)."""
        jobs = []
        for view in views:
            for slot in range(self.weights.shape[0]):
                w = crop(self.weights[slot], view)
                if skip_empty and not bool(w.any()):
                    continue
                jobs.append(Job(view, slot, w))
        return jobs

    def shares(self) -> torch.Tensor:
        """Each prompt's share of every latent pixel in Eq. 5: W_p / Σ_q W_q, (P, h, w)."""
        return self.weights / self.weights.sum(0, keepdim=True)

    def region_parameters(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.regions]

    def preview(self, image: Image.Image | None = None) -> Image.Image:
        """The layout as an image: each prompt's area tinted, its prompt written on it."""
        from multidiffusion.regions.preview import draw_layout

        return draw_layout(self, image)


def region_layout(
    regions: Sequence[Region | Mapping[str, Any]] | None,
    height: int,
    width: int,
    scale_factor: int = 8,
    background: str | None = None,
) -> RegionLayout:
    """Rasterise ``regions`` (and the background's complement) on the latent grid; validates all.

    Raises ValueError for a region with neither mask nor box, a mask of another aspect ratio, an
    empty mask, a box outside the canvas, more than :data:`MAX_REGIONS` regions, or (without a
    background) latent pixels that no region covers.
    """
    if background is not None and (not isinstance(background, str) or not background.strip()):
        raise ValueError(f"background must be a non-empty prompt or None, got {shown(background)}")
    if height % scale_factor or width % scale_factor:
        raise ValueError(f"height and width must be multiples of {scale_factor}, got {height}x{width}")
    items = as_regions(regions)
    h, w = height // scale_factor, width // scale_factor
    fg = torch.zeros(len(items), h, w)
    for i, region in enumerate(items):
        fg[i] = to_latent_grid(region.pixel_weights(height, width, f"regions[{i}]"), scale_factor)
    scales = torch.tensor([r.weight for r in items], dtype=torch.float32).view(-1, 1, 1)
    if background is not None:
        bg = (1 - fg.sum(0, keepdim=True)).clamp(0, 1)
        masks = torch.cat([bg, fg])
        weights = torch.cat([bg, fg * scales])
    else:
        masks, weights = fg, fg * scales
        _check_covered(masks, scale_factor, height, width)
    return RegionLayout(height, width, scale_factor, background, items, masks, weights)


def _check_covered(masks: torch.Tensor, f: int, height: int, width: int) -> None:
    uncovered = masks.sum(0) <= 0 if masks.shape[0] else torch.ones(height // f, width // f, dtype=torch.bool)
    count = int(uncovered.sum())
    if not count:
        return
    rows, cols = np.nonzero(uncovered.numpy())
    share = 100 * count / uncovered.numel()
    raise ValueError(
        f"no background prompt, but {share:.1f}% of the canvas (in x {cols.min() * f}..{(cols.max() + 1) * f}, "
        f"y {rows.min() * f}..{(rows.max() + 1) * f} px) is covered by no region: give a background prompt "
        "or regions that cover the whole canvas"
    )


def layout_preview(
    regions: Sequence[Region | Mapping[str, Any]],
    height: int,
    width: int,
    background: str | None = None,
    *,
    scale_factor: int = 8,
    image: Image.Image | None = None,
) -> Image.Image:
    """The preview of a layout without a model (``scale_factor``: the VAE's, 8 for Stable Diffusion).

    Validates like :meth:`MultiDiffusion.regions`; ``image`` (the canvas's size) is shown under the
    tints, e.g. the generated image.
    """
    return region_layout(regions, height, width, scale_factor, background).preview(image)
