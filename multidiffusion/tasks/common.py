"""What the tasks share: the canvas and window defaults that depend on the model."""

from __future__ import annotations

from typing import Any

from multidiffusion.engine.adapter import ModelAdapter
from multidiffusion.engine.windows import default_stride
from multidiffusion.options import check_side, pair

__all__ = ["canvas_size", "pixel_multiple", "window_and_stride", "window_parameters"]


def canvas_size(options: Any, adapter: ModelAdapter, default: tuple[int, int]) -> tuple[int, int]:
    """(height, width) in pixels: the options', else ``default``; multiples of the VAE factor times
    the model's patch size (16 px for FLUX and SD 3, whose tokens are 2x2 latent pixels)."""
    multiple = max(8, pixel_multiple(adapter))
    limits = options.checked_against
    height = default[0] if options.height is None else options.height
    width = default[1] if options.width is None else options.width
    return (
        check_side("height", height, multiple, limits.max_side, limits.suffix()),
        check_side("width", width, multiple, limits.max_side, limits.suffix()),
    )


def pixel_multiple(adapter: ModelAdapter) -> int:
    """Pixels per model token side: the VAE factor times the patch size (8 for SD, 16 for FLUX)."""
    return adapter.vae_scale_factor * adapter.patch_size


def window_and_stride(options: Any, adapter: ModelAdapter, placement: str = "grid") -> tuple[tuple[int, int], ...]:
    """Window (default: the model's native latent size) and stride (default: the placement's,
    :func:`~multidiffusion.engine.windows.default_stride`) in latent pixels, as (rows, columns).

    A diffusion transformer sees its input in patches of ``adapter.patch_size`` latent pixels, so
    the window and the stride must be multiples of it (every view then starts and ends on the
    token grid); ``ValueError`` naming the value otherwise."""
    p = adapter.patch_size
    window = adapter.native_latent_size if options.window is None else pair("window", options.window)
    stride = default_stride(window, placement, p) if options.stride is None else pair("stride", options.stride)
    for name, value in (("window", window), ("stride", stride)):
        if value[0] % p or value[1] % p:
            shown = value[0] if value[0] == value[1] else f"{value[0]}x{value[1]}"
            raise ValueError(
                f"{name} must be a multiple of {p} latent pixels for this {adapter.family.upper()} model (its "
                f"transformer takes {p}x{p} patches), got {shown}"
            )
    if stride[0] > window[0] or stride[1] > window[1]:
        raise ValueError(f"stride must be at most the window {window[0]}x{window[1]}, got {stride[0]}x{stride[1]}")
    return (window[0], window[1]), (stride[0], stride[1])


def window_parameters(window: tuple[int, int], stride: tuple[int, int]) -> dict[str, Any]:
    """Window and stride as stored: an int when square, else [rows, columns]."""

    def value(p: tuple[int, int]) -> int | list[int]:
        return p[0] if p[0] == p[1] else list(p)

    return {"window": value(window), "stride": value(stride)}
