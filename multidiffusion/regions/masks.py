"""Masks: from what users give (files, images, arrays, tensors, boxes, colour-coded maps) to weights
on the latent grid.

A pixel mask is 1 where a prompt applies, 0 where it does not, in between for soft edges. It is
kept as a uint8 tensor (H, W), 0-255 (:func:`read_mask`), until it is averaged onto the latent grid
(:func:`to_latent_grid`, float32): a canvas-sized float32 mask is 4 bytes a pixel, and 32 regions of
8192 x 8192 held that way took 8.4 GB; as uint8 they are a quarter of that, and a region keeps a
binary mask packed, 1 bit a pixel (:class:`PackedMask`). :func:`load_mask` gives the float32 view
in [0, 1] (multiples of 1/255). Inputs are read as follows:

- an image file, a PIL image or a ``data:image/png;base64,`` URI (how masks are stored in the PNGs
  we write): by :func:`multidiffusion.io.image_loader.mask_image`, the one reading of a mask image (the
  inpainting mask's too): its alpha channel when it has any transparency, else its luminance; 16-
  and 32-bit images scaled to 8 bits. Files and URIs are read by
  :func:`multidiffusion.io.image_loader.open_image`, within its limits on bytes, pixels and formats;
  colour-coded maps are also limited in colours;
- a NumPy array or a torch tensor (H, W) (leading singleton axes are dropped): booleans, uint8
  (as is), uint16 (÷ 257), other integers in {0, 1}, or floats in [0, 1] (× 255, rounded);
- a box (x0, y0, x1, y1): integers are pixels, floats are fractions of the canvas in [0, 1].

**Mapping to the latent grid.** The model works on latents f times smaller than the image (f = 8
for Stable Diffusion). A latent pixel's weight is the *area average* of the pixel mask over the
f x f block of image pixels it decodes to (:func:`to_latent_grid`). A binary mask aligned to the
blocks stays binary; a mask edge that cuts a block gives that latent pixel a soft weight equal to
the covered fraction, so the prompts meeting there share it in Eq. 5 in proportion to their areas.
(The paper's script thresholds the mask at 0.5 and resizes it with nearest neighbours, which moves
edges by up to half a latent pixel.) A mask whose size is not the canvas's but whose aspect ratio
is, is resized to the canvas first (bilinear, antialiased); another aspect ratio is an error.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from multidiffusion.io.image_loader import (
    DATA_URI_PREFIX,
    DEFAULT_LIMITS,
    ImageLimits,
    mask_image,
    open_image,
)

__all__ = [
    "DATA_URI_PREFIX",
    "MaskLike",
    "PackedMask",
    "box_mask",
    "box_pixels",
    "encode_mask",
    "feather_mask",
    "fit_mask",
    "load_mask",
    "read_mask",
    "to_latent_grid",
]

MaskLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor
"""A mask as users give it: a path, a PIL image, an array or a tensor (see the module docstring)."""

ASPECT_TOLERANCE = 0.01
"""Largest relative difference of aspect ratios accepted between a mask and the canvas."""


# -- reading -------------------------------------------------------------------------------------
def _open_image(value: str | os.PathLike, name: str, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    return open_image(value, name, limits)


def _image_to_mask(image: Image.Image, name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(mask_image(image, name), dtype=np.uint8))


def _array_to_mask(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array.detach().cpu()
    while t.dim() > 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (height, width) array, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} has no pixels (shape {tuple(t.shape)})")
    if t.dtype == torch.bool:
        return t.to(torch.uint8) * 255
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.uint16:
        return ((t.to(torch.int32) + 128) // 257).to(torch.uint8)
    if not t.is_floating_point():
        values = torch.unique(t)
        if not bool(((values == 0) | (values == 1)).all()):
            raise ValueError(
                f"{name}: integer masks must hold 0 and 1 (or be uint8 0-255), got values {values[:5].tolist()}"
            )
        return t.to(torch.uint8) * 255
    lo, hi = float(t.min()), float(t.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi > 1:
        raise ValueError(f"{name}: float mask values must be in [0, 1], got range [{lo:g}, {hi:g}]")
    return (t.float() * 255).round_().to(torch.uint8)


def read_mask(value: MaskLike, name: str = "mask", limits: ImageLimits = DEFAULT_LIMITS) -> torch.Tensor:
    """A pixel mask (H, W) as uint8, 0-255 (255 = the prompt applies), from a path, data URI, PIL
    image, array or tensor: the form masks are kept in until the latent grid (a quarter of float32's
    memory). Files, URIs and PIL images are held to ``limits`` (bytes, pixels, formats)."""
    if isinstance(value, (str, os.PathLike, Image.Image)):
        return _image_to_mask(_open_image(value, name, limits), name)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _array_to_mask(value, name)
    raise ValueError(f"{name} must be a path, a PIL image, a NumPy array or a torch tensor, got {type(value).__name__}")


def load_mask(value: MaskLike, name: str = "mask", limits: ImageLimits = DEFAULT_LIMITS) -> torch.Tensor:
    """A pixel mask (H, W), float32 in [0, 1] (multiples of 1/255: :func:`read_mask` divided by
    255), from a path, data URI, PIL image, array or tensor."""
    return read_mask(value, name, limits).float().div_(255)


def _is_binary(array: np.ndarray) -> bool:
    """Whether a uint8 mask holds only 0 and 255."""
    return not np.any((array != 0) & (array != 255))


class PackedMask:
    """A uint8 pixel mask held in as few bytes as it needs: 1 bit a pixel when it is binary (0 and
    255 only, as drawn and as stored 1-bit in our PNGs; ``np.packbits``), else the uint8 tensor.
    A region keeps its mask so between checking a layout and running it; 32 binary 8192 x 8192
    masks are 256 MB this way, 2 GB as uint8, 8 GB as float32. :meth:`tensor` gives the uint8 mask."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.shape = (int(mask.shape[0]), int(mask.shape[1]))
        array = mask.numpy()
        binary = _is_binary(array)
        self._bits = np.packbits(array, axis=None) if binary else None  # 255 = 0b11111111: any bit marks it
        self._bytes = None if binary else mask

    def tensor(self) -> torch.Tensor:
        """The mask as uint8 (H, W), 0-255."""
        if self._bytes is not None:
            return self._bytes
        bits = np.unpackbits(self._bits, count=self.shape[0] * self.shape[1])
        return torch.from_numpy(bits.reshape(self.shape)).mul_(255)

    @property
    def nbytes(self) -> int:
        """The bytes it holds."""
        return int(self._bits.nbytes) if self._bits is not None else self._bytes.numel()


# -- writing -------------------------------------------------------------------------------------
def encode_mask(mask: torch.Tensor) -> str:
    """A compact, lossless-as-possible PNG data URI of a pixel mask: 1-bit for binary masks,
    8-bit when values are multiples of 1/255 (every uint8 mask), else 16-bit (error ≤ 1/131070;
    read back as 8 bits)."""
    if mask.dtype == torch.uint8:
        array = mask.detach().cpu().numpy()
        binary = _is_binary(array)
        image = Image.fromarray(array > 127) if binary else Image.fromarray(array, "L")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        return DATA_URI_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")
    m = mask.detach().float().cpu().clamp(0, 1)
    if bool(((m == 0) | (m == 1)).all()):
        image = Image.fromarray(m.numpy().astype(bool))  # mode "1"
    elif bool(((m * 255).round() / 255 == m).all()):
        image = Image.fromarray((m * 255).round().numpy().astype(np.uint8))  # mode "L"
    else:
        image = Image.fromarray((m * 65535).round().numpy().astype(np.uint16))  # mode "I;16"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return DATA_URI_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")


# -- geometry ------------------------------------------------------------------------------------
def fit_mask(mask: torch.Tensor, height: int, width: int, name: str = "mask") -> torch.Tensor:
    """``mask`` at the canvas size: as is, resized if only the size differs, an error if the aspect
    ratio differs (a mask drawn for another layout would be stretched). A uint8 mask stays uint8
    (resized in float, rounded back)."""
    h, w = mask.shape
    if (h, w) == (height, width):
        return mask
    if abs((w / h) / (width / height) - 1) > ASPECT_TOLERANCE:
        raise ValueError(
            f"{name} is {w}x{h} pixels (aspect {w / h:.3f}) but the canvas is {width}x{height} (aspect "
            f"{width / height:.3f}): give a mask of the canvas's size or aspect ratio"
        )
    if mask.dtype == torch.uint8:
        resized = F.interpolate(mask[None, None].float(), size=(height, width), mode="bilinear", antialias=True)
        return resized[0, 0].clamp_(0, 255).round_().to(torch.uint8)
    resized = F.interpolate(mask[None, None], size=(height, width), mode="bilinear", antialias=True)
    return resized[0, 0].clamp(0, 1)


def box_pixels(box: Sequence[float], height: int, width: int, name: str = "box") -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in whole pixels: integers as they are, fractions (floats) times the canvas
    size, rounded. Raises when the box leaves the canvas or is empty."""
    fractions = any(isinstance(v, float) for v in box)
    if fractions:
        x0, y0, x1, y1 = (round(v * s) for v, s in zip(box, (width, height, width, height)))
    else:
        x0, y0, x1, y1 = (int(v) for v in box)
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(
                f"{name} {tuple(box)} leaves the {width}x{height} canvas: pixel boxes need 0 ≤ x0 < x1 ≤ {width} "
                f"and 0 ≤ y0 < y1 ≤ {height} (or give fractions of the canvas as floats in [0, 1])"
            )
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{name} {tuple(box)} is less than one pixel wide or high on the {width}x{height} canvas")
    return x0, y0, x1, y1


def box_mask(
    box: Sequence[float], height: int, width: int, name: str = "box", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The pixel mask of a box: 1 inside [x0, x1) x [y0, y1), 0 elsewhere (255 and 0 for uint8)."""
    x0, y0, x1, y1 = box_pixels(box, height, width, name)
    mask = torch.zeros(height, width, dtype=dtype)
    mask[y0:y1, x0:x1] = 255 if dtype == torch.uint8 else 1
    return mask


def feather_mask(mask: torch.Tensor, feather: float) -> torch.Tensor:
    """Soft edges for rough layouts: the mask blurred by a Gaussian of standard deviation
    ``feather / 2`` pixels, so each edge becomes a ramp about ``2 * feather`` pixels wide centred on
    it (10 % to 90 % over 1.3 feather). The canvas border is extended, so a mask that reaches the
    border stays 1 there. A uint8 mask is blurred in float and comes back as uint8."""
    if feather <= 0:
        return mask
    sigma = feather / 2
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    m = mask[None, None].float()
    m = F.pad(m, (radius, radius, 0, 0), mode="replicate")
    m = F.conv2d(m, kernel.view(1, 1, 1, -1))
    m = F.pad(m, (0, 0, radius, radius), mode="replicate")
    m = F.conv2d(m, kernel.view(1, 1, -1, 1))
    if mask.dtype == torch.uint8:
        return m[0, 0].clamp_(0, 255).round_().to(torch.uint8)
    return m[0, 0].clamp(0, 1)


STRIP_PIXELS = 1 << 22
"""Pixels of a uint8 mask turned into float32 at once by :func:`to_latent_grid` (16 MB)."""


def to_latent_grid(mask: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """Pixel mask (H, W) -> latent weights (H / f, W / f), float32: the mean of each f x f pixel
    block. A uint8 mask (0-255) is averaged a strip of rows at a time and divided by 255, so no
    float copy of the whole canvas is made."""
    f = scale_factor
    if mask.dtype != torch.uint8:
        return F.avg_pool2d(mask[None, None].float(), f)[0, 0]
    h, w = mask.shape[0] // f, mask.shape[1] // f
    out = torch.empty(h, w)
    rows = max(1, STRIP_PIXELS // max(1, w * f * f))  # latent rows per strip
    for r in range(0, h, rows):
        strip = mask[r * f : (r + rows) * f, : w * f].float()
        out[r : r + rows] = F.avg_pool2d(strip[None, None], f)[0, 0]
    return out.div_(255)
