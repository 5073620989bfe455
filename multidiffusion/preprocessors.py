"""Control maps that need no downloaded weights: Canny edges and a "tile" map.

- :func:`canny`: OpenCV's Canny edge detector (the ``control`` extra installs
  ``opencv-python-headless``), white edges on black, as the Canny ControlNets were trained on.
- :func:`tile`: the image blurred by down- and up-sampling, optionally in grey: what Tile ControlNets
  (and upscaling with them) take; PIL only.

Maps that need a network (depth, pose, line art, segmentation) are brought by the user: made with
``controlnet_aux`` where its weights are at hand, or any other tool, and passed as ``control_image``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from multidiffusion.io.messages import shown

__all__ = ["PREPROCESSORS", "canny", "preprocess", "tile"]


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """Canny edges of ``image`` (thresholds ``low``/``high`` on the gradient, OpenCV's defaults in
    diffusers' examples) as a white-on-black RGB image of the same size."""
    try:
        import cv2
    except ImportError:
        raise ValueError(
            'control_preprocessor: "canny" needs OpenCV: pip install "multidiffusion[control]" (opencv-python-headless)'
        ) from None
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
            raise ValueError(f"canny {name} threshold must be an integer from 0 to 1000, got {shown(value)}")
    if low >= high:
        raise ValueError(f"canny: the low threshold must be below the high one, got {low} and {high}")
    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def tile(image: Image.Image, factor: int = 4, grey: bool = False, blur: float = 0.0) -> Image.Image:
    """``image`` down-sampled ``factor`` times and back (Lanczos, then bicubic), optionally grey and
    Gaussian-blurred by ``blur`` pixels: the low-frequency map a Tile ControlNet keeps the result
    close to, while the model adds detail."""
    if isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= 64:
        raise ValueError(f"tile factor must be an integer from 1 to 64, got {shown(factor)}")
    rgb = image.convert("L").convert("RGB") if grey else image.convert("RGB")
    if factor > 1:
        small = rgb.resize((max(1, rgb.width // factor), max(1, rgb.height // factor)), Image.Resampling.LANCZOS)
        rgb = small.resize(rgb.size, Image.Resampling.BICUBIC)
    if blur > 0:
        rgb = rgb.filter(ImageFilter.GaussianBlur(blur))
    return rgb


PREPROCESSORS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "none": lambda image: image.convert("RGB"),
    "canny": canny,
    "tile": tile,
    "tile-grey": lambda image: tile(image, grey=True),
}
"""Preprocessor name -> function, as the command line and web app offer them."""


def preprocess(image: Any, name: str) -> Image.Image:
    """The control map of ``image`` (a PIL image) by the preprocessor ``name``."""
    if name not in PREPROCESSORS:
        raise ValueError(
            f"control_preprocessor must be one of {', '.join(map(repr, PREPROCESSORS))}, got {shown(name)}"
        )
    return PREPROCESSORS[name](image)
