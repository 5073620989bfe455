"""ComfyUI's model call, cut into the views F_i of the canvas: what the tiled and region patches share.

ComfyUI hands a ``model_function_wrapper`` one batched model call: ``input`` (N, C, H, W) on the
canvas (the cond and uncond chunks of the batch one after another, ``cond_or_uncond`` saying which),
``timestep`` (N,) (sigma) and ``c``, the keyword arguments of ``apply_model``. Our engine's
:func:`~multidiffusion.engine.fusion.fused_prediction` crops the input view by view and stacks the
crops view-major, (V*N, C, h, w); :func:`view_inputs` makes ``c`` match those rows:

- ``c_concat`` (an inpainting model's mask and masked image) and ``control`` (a ControlNet's
  residuals where ComfyUI computed them on the canvas before the wrapper ran: a T2I-Adapter, or a
  patch that is not the model's outermost wrapper; ControlNets proper run per window,
  :mod:`.window_control`) are spatial: each view gets its own crop, at the tensor's own resolution
  (a residual at 1/2 or 1/4 of the latent grid is cropped at that scale).
- Every other tensor with one row per batch row (``c_crossattn``, SDXL's ``y``, FLUX's
  ``guidance``, ...) is repeated once per view.
- ``transformer_options`` gets ``cond_or_uncond`` and ``uuids`` repeated per view, so patches that
  split the batch into its chunks (attention patches, IP-Adapter) still find them.

DiT models (FLUX, SD 3.5) take the crops as any latent: they patchify inside ``apply_model``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from multidiffusion.engine.views import View, crop

__all__ = [
    "SPATIAL_KEYS",
    "call_model",
    "cat_rows",
    "control_multiple",
    "crop_at_scale",
    "latent_factor",
    "patch_multiple",
    "select_rows",
    "step_index",
    "view_inputs",
]

SPATIAL_KEYS = ("c_concat", "control")
"""Keys of ``c`` whose tensors lie on the canvas and are cropped per view."""


def crop_at_scale(value: torch.Tensor, view: View, canvas: tuple[int, int], key: str) -> torch.Tensor:
    """F_i of a tensor whose last two axes cover the canvas at an integer scale (or 1/scale) of it
    (a residual at 1/2 of the latent grid, a ControlNet hint at 8 times it)."""
    h, w = value.shape[-2:]
    if (h, w) == canvas:
        return crop(value, view)
    scale_h, scale_w = h / canvas[0], w / canvas[1]
    box = (view.top * scale_h, view.left * scale_w, view.height * scale_h, view.width * scale_w)
    if abs(scale_h - scale_w) > 1e-9 or any(abs(v - round(v)) > 1e-9 for v in box):
        raise ValueError(
            f"{key}: a {h}x{w} map on a {canvas[0]}x{canvas[1]} latent canvas can't be cut at the view {view}: "
            f"with a ControlNet, the canvas, window and stride must be multiples of {round(canvas[0] / h)} latent "
            "pixels (its coarsest residual's grid)"
        )
    top, left, height, width = (round(v) for v in box)
    return crop(value, View(top, left, height, width))


def _per_view(value: Any, views: Sequence[View], rows: int, canvas: tuple[int, int], key: str, spatial: bool) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] != rows:
            return value
        if spatial:
            if value.dim() < 4:
                raise ValueError(
                    f"{key}: a tensor of shape {tuple(value.shape)} is not a map of the canvas, so it can't be cut "
                    "into views (a DiT ControlNet's token residuals are not supported by the tiled patch)"
                )
            return torch.cat([crop_at_scale(value, v, canvas, key) for v in views])
        return value.repeat(len(views), *([1] * (value.dim() - 1)))
    if isinstance(value, dict):
        return {k: _per_view(v, views, rows, canvas, key, spatial) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_per_view(v, views, rows, canvas, key, spatial) for v in value)
    return value


def view_inputs(c: dict[str, Any], views: Sequence[View], rows: int, canvas: tuple[int, int]) -> dict[str, Any]:
    """``c`` for the crops of ``views`` stacked view-major (each view carries the call's ``rows``)."""
    out: dict[str, Any] = {}
    for key, value in c.items():
        if key == "transformer_options":
            options = dict(value)
            for name in ("cond_or_uncond", "uuids"):
                if isinstance(options.get(name), list):
                    options[name] = options[name] * len(views)
            out[key] = options
        else:
            out[key] = _per_view(value, views, rows, canvas, key, key in SPATIAL_KEYS)
    return out


def control_multiple(c: dict[str, Any], canvas: tuple[int, int]) -> int:
    """The down-sampling of the coarsest ControlNet residual in ``c`` (1 without one): views must
    start at multiples of it for every residual to be cut on its own grid (SD's UNet: 8)."""
    need = 1

    def visit(value: Any) -> None:
        nonlocal need
        if isinstance(value, torch.Tensor) and value.dim() >= 4 and 0 < value.shape[-2] < canvas[0]:
            ratio = canvas[0] / value.shape[-2]
            if ratio == int(ratio):
                need = math.lcm(need, int(ratio))
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    visit(c.get("control"))
    return need


def call_model(
    apply_model: Callable[..., torch.Tensor],
    previous: Callable | None,
    x: torch.Tensor,
    t: torch.Tensor,
    c: dict[str, Any],
    cond_or_uncond: list[int],
) -> torch.Tensor:
    """ComfyUI's model on a batch of crops, through the wrapper that was installed before ours."""
    if previous is not None:
        return previous(apply_model, {"input": x, "timestep": t, "c": c, "cond_or_uncond": cond_or_uncond})
    return apply_model(x, t, **c)


def select_rows(value: Any, index: torch.Tensor, n: int) -> Any:
    """The batch rows ``index`` of every tensor in ``value`` (nested dicts, lists) that has ``n`` rows."""
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index.to(value.device)) if value.dim() and value.shape[0] == n else value
    if isinstance(value, dict):
        return {k: select_rows(v, index, n) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(select_rows(v, index, n) for v in value)
    return value


def cat_rows(pieces: Sequence[torch.Tensor]) -> torch.Tensor:
    """Row blocks of cross-attention contexts, token counts made equal by repetition as ComfyUI does
    (repeating every token the same number of times leaves attention's output unchanged)."""
    if pieces[0].dim() < 3 or len({p.shape[1] for p in pieces}) == 1:
        return torch.cat(list(pieces))
    tokens = math.lcm(*(p.shape[1] for p in pieces))
    return torch.cat([p.repeat(1, tokens // p.shape[1], *([1] * (p.dim() - 2))) for p in pieces])


def step_index(transformer_options: dict[str, Any], sigma: torch.Tensor) -> int:
    """Which sampling step a model call belongs to: the last of the sampler's ``sample_sigmas`` at or
    above ``sigma`` (a second-order sampler's intermediate sigma counts as its step's). 0 when the
    sampler did not say (a call outside ComfyUI's samplers)."""
    sigmas = transformer_options.get("sample_sigmas")
    if sigmas is None or len(sigmas) == 0:
        return 0
    s = float(sigma.flatten()[0])
    above = [i for i, v in enumerate(sigmas.tolist()) if v >= s * (1 - 1e-5) - 1e-8]
    return above[-1] if above else 0


def latent_factor(model: Any) -> int:
    """Pixels per latent pixel of a ComfyUI MODEL (8 for SD/SDXL/FLUX/SD 3.5)."""
    fmt = getattr(getattr(model, "model", None), "latent_format", None)
    return int(getattr(fmt, "spacial_downscale_ratio", 8) or 8)


def patch_multiple(model: Any) -> int:
    """Latent pixels per token of a DiT (FLUX: 2), 1 for UNets: window starts are multiples of it."""
    diffusion = getattr(getattr(model, "model", None), "diffusion_model", None)
    size = getattr(diffusion, "patch_size", 1)
    if isinstance(size, (tuple, list)):
        size = size[-1]
    return int(size) if isinstance(size, int) and size > 0 else 1
