"""The MultiDiffusion MODEL patch: tiled and panorama sampling with ComfyUI's stock samplers.

The patch installs a ``model_function_wrapper`` (ComfyUI's hook around every model call). For a
call on the canvas x at sigma, it runs ComfyUI's own ``apply_model`` on the views F_i(x) of the
step, a batch of views at a time, and returns their fusion by the paper's Eq. 5,

    Φ(x) = Σ_i F_i⁻¹(W_i ⊙ Φ(F_i(x))) / Σ_i F_i⁻¹(W_i),

computed by our engine (:func:`multidiffusion.engine.fusion.fused_prediction`). ComfyUI's model
returns the denoised estimate x0 = x − σ ε (or the flow model's equivalent), affine in the model's
output with coefficients shared by all views, so fusing x0 is fusing ε. The sampler, its scheduler
and classifier-free guidance (after the call, on the fused cond and uncond predictions; Eq. 5 is
linear, so this equals fusing guided predictions) are ComfyUI's, untouched: every model ComfyUI
loads and every sampler it offers work.

Windows are the paper's grid (stride 1/8 of the window) or the fast mode's shifted windows, a
fresh seeded offset each step (SpotDiffusion; docs/fast-mode.md); weights uniform (the paper) or
Gaussian (Mixture of Diffusers); circular wraps windows around the horizontal edge (360-degree).
A ControlNet runs per window (:mod:`.window_control`): each window's residuals come from that
window's latents and its crop of the hint, so the ControlNet's memory is the window's, not the
canvas's, and a tile ControlNet sees its tile. Residuals ComfyUI computed on the canvas (a T2I-Adapter,
or this patch wrapped by another) are cut per view; then window starts and the default stride snap to
the coarsest residual's grid (SD: 8 latent pixels, 64 px).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from multidiffusion.engine.fusion import FusionPlan, Job, fused_prediction
from multidiffusion.engine.views import WEIGHTS, View
from multidiffusion.engine.windows import PLACEMENTS, Windows, default_stride, panorama_plans

from .crops import call_model, control_multiple, latent_factor, patch_multiple, step_index, view_inputs
from .size_cond import SIZES, per_window_y
from .window_control import DeferredControl, WindowControls

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "MultiDiffusionTiled", "TiledWrapper"]


class TiledWrapper:
    """ComfyUI's ``model_function_wrapper`` fusing the views of each step by Eq. 5.

    ``window`` and ``stride`` are (rows, columns) in latent pixels (stride None: the placement's
    default, :func:`~multidiffusion.engine.windows.default_stride`); ``multiple``: a DiT's patch size.
    ``previous``: a wrapper installed before this one, which then runs on each batch of crops.
    ``controls``: runs the ControlNets per window once :meth:`WindowControls.install` put its
    wrappers on the patched model.
    """

    def __init__(
        self,
        window: tuple[int, int],
        stride: tuple[int, int] | None = None,
        placement: str = "grid",
        weights: str | None = None,
        circular: bool = False,
        view_batch_size: int | None = None,
        seed: int = 0,
        multiple: int = 1,
        previous: Callable | None = None,
        positions: str = "view",
        sdxl_size: str = "conditioning",
        factor: int = 8,
    ):
        if sdxl_size not in SIZES:
            raise ValueError(f"sdxl_size must be one of {', '.join(SIZES)}, got {sdxl_size!r}")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        weights = weights or ("gaussian" if placement == "shifted" else "uniform")
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        if min(window) < 1 or (stride is not None and min(stride) < 1):
            raise ValueError(f"window and stride must be at least 1 latent pixel, got {window} and {stride}")
        self.window, self.stride, self.placement, self.weights = window, stride, placement, weights
        self.circular, self.view_batch_size, self.seed, self.multiple = circular, view_batch_size, seed, multiple
        self.previous, self.positions, self.sdxl_size, self.factor = previous, positions, sdxl_size, factor
        self._plans: dict[tuple, Callable[[int], FusionPlan]] = {}
        self.controls = WindowControls(self)

    def plan(self, canvas: tuple[int, int], step: int, device: torch.device, align: int = 1) -> FusionPlan:
        """The views and weights of ``step`` on a ``canvas`` of (rows, columns) latent pixels; window
        starts are multiples of ``align`` too (a ControlNet's coarsest residual grid)."""
        key = (canvas, str(device), align)
        if key not in self._plans:
            m = math.lcm(self.multiple, align)
            window = tuple(max(m, min(w, c) // m * m) if c >= m else c for w, c in zip(self.window, canvas))
            stride = self.stride or default_stride(window, self.placement, m)
            windows = Windows(canvas, window, stride, self.placement, self.circular, self.seed, m)
            self._plans[key] = panorama_plans(windows, self.weights, device=device)
        return self._plans[key](step)

    def __call__(self, apply_model: Callable[..., torch.Tensor], args: dict[str, Any]) -> torch.Tensor:
        x, t, c = args["input"], args["timestep"], args["c"]
        chunks = list(args["cond_or_uncond"])
        if x.dim() < 4:
            raise ValueError(f"the MultiDiffusion patch needs latents (B, C, H, W), got shape {tuple(x.shape)}")
        canvas = (x.shape[-2], x.shape[-1])
        step = step_index(c.get("transformer_options", {}), t)
        plan = self.plan(canvas, step, x.device, control_multiple(c, canvas))
        rows = x.shape[0]
        deferred = c.get("control") if isinstance(c.get("control"), DeferredControl) else None

        def denoise(crops: torch.Tensor, sigma: torch.Tensor, jobs: list[Job]) -> torch.Tensor:
            views = [job.view for job in jobs]
            inputs = view_inputs(c, views, rows, canvas)
            if deferred is not None:
                sigmas = sigma.repeat(len(jobs))
                inputs["control"] = self.controls.residuals(
                    deferred.control, crops, sigmas, inputs, views, canvas, len(chunks)
                )
            if "y" in inputs and self.sdxl_size != "conditioning":
                model = getattr(apply_model, "__self__", None)
                inputs["y"] = per_window_y(model, inputs["y"], views, rows, self.factor, canvas, self.sdxl_size)
            if self.positions == "canvas":
                inputs["transformer_options"] = _placed(inputs.get("transformer_options", {}), views[0], self.multiple)
            return call_model(apply_model, self.previous, crops, sigma.repeat(len(jobs)), inputs, chunks * len(jobs))

        batch = 1 if self.positions == "canvas" else self.view_batch_size
        return fused_prediction(denoise, x, t, plan, batch)


CONTROLS = ("window", "canvas")
"""Where the node runs a ControlNet: per window (:mod:`.window_control`) or ComfyUI's way, on the canvas."""

POSITIONS = ("view", "canvas")
"""Rotary positions of a DiT's image tokens in a window: the window's own (as a whole image of its
size) or its place on the canvas (library: ``positions``, :mod:`multidiffusion.models.flux`)."""


def _placed(options: dict[str, Any], view: View, patch: int) -> dict[str, Any]:
    """``transformer_options`` whose ``rope_options`` shift the window's tokens to its place on the
    canvas (in tokens: latent pixels / patch size), added to any shift already set. FLUX, Lumina /
    Z-Image and Wan read them; other models ignore them."""
    rope = dict(options.get("rope_options") or {})
    rope["shift_y"] = rope.get("shift_y", 0.0) + view.top / patch
    rope["shift_x"] = rope.get("shift_x", 0.0) + view.left / patch
    return {**options, "rope_options": rope}


_PIXELS = {"min": 8, "max": 16384, "step": 8}


class MultiDiffusionTiled:
    """Node: patches a MODEL so every sampler denoises the canvas in windows fused by Eq. 5."""

    CATEGORY = "sampling/multidiffusion"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model, denoising any canvas size in windows fused by MultiDiffusion's Eq. 5.",)
    FUNCTION = "patch"
    DESCRIPTION = (
        "MultiDiffusion (Bar-Tal et al., ICML 2023) for panoramas and large images: the sampler's canvas is "
        "denoised in windows of the model's native size and their predictions are fused per pixel (the paper's "
        "Eq. 5), each step. Works with the stock KSampler / SamplerCustom and any model ComfyUI loads."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to patch (any model ComfyUI loads)."}),
                "tile_width": (
                    "INT",
                    {
                        "default": 512,
                        **_PIXELS,
                        "tooltip": "Window width in pixels: the model's native size "
                        "(SD 1.x: 512, SDXL / FLUX: 1024). Larger than the canvas: the canvas's width.",
                    },
                ),
                "tile_height": (
                    "INT",
                    {"default": 512, **_PIXELS, "tooltip": "Window height in pixels (as tile_width)."},
                ),
                "stride": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 16384,
                        "step": 8,
                        "tooltip": "Distance between windows in "
                        "pixels, both axes. 0: the placement's default (grid: 1/8 of the window, the paper's; "
                        "shifted: 7/8, windows overlapping by 1/8).",
                    },
                ),
                "placement": (
                    list(PLACEMENTS),
                    {
                        "default": "grid",
                        "tooltip": "grid: the paper's fixed sliding windows (exact, ~7 model "
                        "calls per pixel on a panorama). shifted: fast mode, a few windows at a fresh random offset "
                        "each step so no seam stays (~1.2 calls per pixel).",
                    },
                ),
                "weights": (
                    ["default", *WEIGHTS],
                    {
                        "default": "default",
                        "tooltip": "Per-pixel weights W_i of each window in Eq. 5: uniform "
                        "(the paper's) or gaussian (centre-weighted, Mixture of Diffusers). default: uniform on "
                        "the grid, gaussian when shifted.",
                    },
                ),
                "circular": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "360-degree panorama: windows wrap around the left/right "
                        "edge so the two ends join seamlessly (decode it with the circular tiled VAE decode).",
                    },
                ),
                "view_batch_size": (
                    "INT",
                    {
                        "default": 8,
                        "min": 0,
                        "max": 256,
                        "tooltip": "Windows per model call: more is faster (each call has a fixed cost) and "
                        "takes more memory; lower it if the GPU runs out. 0: all windows of a step in one call.",
                    },
                ),
                "positions": (
                    list(POSITIONS),
                    {
                        "default": "view",
                        "tooltip": "DiT models (FLUX, Z-Image, Lumina): view gives each window the rotary "
                        "positions of an image of its size; canvas gives it its place on the canvas (one "
                        "window per model call). UNets (SD 1.x, SDXL) ignore it.",
                    },
                ),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFFFFFFFFFF,
                        "tooltip": "Seed of the shifted placement's window offsets (the grid does not use it).",
                    },
                ),
            },
            "optional": {
                "sdxl_size": (
                    list(SIZES),
                    {
                        "default": "conditioning",
                        "tooltip": "SDXL's size conditioning per window. conditioning: the prompt's sizes for every "
                        "window (ComfyUI's). window: each window's target size is its own (the library's default; "
                        "original size and crop stay the prompt's). window+offset: and its crop is its offset on "
                        "the canvas. Other models ignore it.",
                    },
                ),
                "controlnet": (
                    list(CONTROLS),
                    {
                        "default": "window",
                        "tooltip": "Where a ControlNet runs. window: on each window's latents and its crop of "
                        "the hint (memory of one window batch; a tile ControlNet sees its tile; as many ControlNet "
                        "calls as model calls). canvas: ComfyUI's, once per step on the whole canvas, residuals "
                        "cut per window (cheaper on small canvases, memory grows with the canvas).",
                    },
                ),
            },
        }

    def patch(
        self,
        model: Any,
        tile_width: int,
        tile_height: int,
        stride: int,
        placement: str,
        weights: str,
        circular: bool,
        view_batch_size: int,
        seed: int,
        positions: str = "view",
        controlnet: str = "window",
        sdxl_size: str = "conditioning",
    ) -> tuple[Any]:
        if controlnet not in CONTROLS:
            raise ValueError(f"controlnet must be one of {', '.join(CONTROLS)}, got {controlnet!r}")
        f = latent_factor(model)
        multiple = patch_multiple(model)
        window = (
            max(multiple, tile_height // f // multiple * multiple),
            max(multiple, tile_width // f // multiple * multiple),
        )
        strides = None if stride == 0 else (max(multiple, stride // f // multiple * multiple),) * 2
        patched = model.clone()
        wrapper = TiledWrapper(
            window,
            strides,
            placement,
            None if weights == "default" else weights,
            circular,
            view_batch_size or None,
            seed % 2**63,
            multiple,
            patched.model_options.get("model_function_wrapper"),
            positions,
            sdxl_size,
            f,
        )
        patched.set_model_unet_function_wrapper(wrapper)
        if controlnet == "window":
            wrapper.controls.install(patched)
        return (patched,)


NODE_CLASS_MAPPINGS = {"MultiDiffusionTiled": MultiDiffusionTiled}
NODE_DISPLAY_NAME_MAPPINGS = {"MultiDiffusionTiled": "MultiDiffusion (tiled / panorama)"}
