"""ControlNets run per window: each window's residuals from that window's latents and its crop of the hint.

ComfyUI's sampler computes a conditioning's ControlNet residuals on the whole canvas, before the
``model_function_wrapper`` runs (``c["control"]`` in ``comfy/samplers.py``). Cut per view, those are
not a window's residuals: the ControlNet saw the canvas (its memory and cost grow with it, and a tile
ControlNet sees the whole image instead of its tile). :class:`WindowControls` moves the ControlNet
into the windows:

- a ``calc_cond_batch`` wrapper (ComfyUI's wrapper around the sampler's batching of conditionings)
  hands the batch a stand-in, :class:`DeferredControl`, for each ControlNet whose chain is made of
  ``comfy.controlnet.ControlNet`` objects (SD / SDXL ControlNets, Control-LoRA, SD 3.5's), so
  ``get_control`` on the canvas returns the stand-in instead of running the network;
- the patch then calls :meth:`WindowControls.residuals` for each batch of views: every ControlNet
  of the chain gets, as its prepared hint ``cond_hint``, the crops F_i of the canvas-sized hint ComfyUI
  prepares (resized, pre-processed, VAE-encoded where the ControlNet needs it: ComfyUI's own code,
  run once per canvas, see :func:`canvas_hint`), and ComfyUI's own ``get_control`` runs on the
  windows' latents with the windows' conditioning. A window's residuals are then exactly a ControlNet
  call on that window's crop of latents and hint.

The stand-in is handed out only while the patch that installed it is the model's outermost
``model_function_wrapper`` (another wrapper around it would see the stand-in); other ControlNet kinds
(T2I-Adapter, whose residuals don't depend on the latents) keep ComfyUI's canvas residuals, cut per view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from multidiffusion.engine.views import View

from .crops import crop_at_scale

__all__ = ["DeferredControl", "WindowControls", "canvas_hint", "chain", "runs_per_window"]

KEY = "multidiffusion_window_control"
"""The key of the pack's wrappers in ComfyUI's ``wrappers`` dict."""


def chain(control: Any) -> list[Any]:
    """A ControlNet and the ones chained before it (``previous_controlnet``), outermost first."""
    out = []
    while control is not None:
        out.append(control)
        control = getattr(control, "previous_controlnet", None)
    return out


def runs_per_window(control: Any) -> bool:
    """Whether every ControlNet of the chain is a ``comfy.controlnet.ControlNet`` (network on the latents)."""
    import comfy.controlnet

    return all(isinstance(member, comfy.controlnet.ControlNet) for member in chain(control))


class _Captured(Exception):
    def __init__(self, hint: torch.Tensor):
        super().__init__("hint captured")
        self.hint = hint


class _HintCapture:
    """Stands in for a ControlNet's network for one call: records the prepared hint, runs nothing."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, *, hint: torch.Tensor, **_: Any) -> None:
        raise _Captured(hint)


def canvas_hint(
    member: Any, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any], batched_number: int
) -> torch.Tensor:
    """The hint ComfyUI prepares for ``member`` (one ControlNet, not its chain) on the canvas ``x``:
    its own ``get_control`` runs up to the network call (resize, pre-processing, VAE encoding,
    extra channels, batch broadcast), whose input is taken; the network does not run."""
    saved = member.control_model, member.previous_controlnet, member.timestep_range
    member.control_model, member.previous_controlnet, member.timestep_range = _HintCapture(saved[0].dtype), None, None
    member.cond_hint = None  # a window's crop from an earlier call: prepare the canvas's afresh
    try:
        member.get_control(x, t, cond, batched_number, cond.get("transformer_options", {}))
    except _Captured as captured:
        return captured.hint
    finally:
        member.control_model, member.previous_controlnet, member.timestep_range = saved
        member.cond_hint = None
    raise RuntimeError(f"{type(member).__name__}.get_control did not call its network: can't run it per window")


class DeferredControl:
    """The stand-in a ControlNet chain gets inside the sampler's batching: ``get_control`` on the canvas
    returns the stand-in itself, so the patch finds the chain in ``c["control"]`` and runs it per window."""

    def __init__(self, control: Any):
        self.control = control

    def get_control(self, *_: Any, **__: Any) -> DeferredControl:
        return self


class WindowControls:
    """Runs the ControlNets of a patched model per window (see the module). ``owner``: the patch's
    ``model_function_wrapper``; stand-ins are handed out only while it is the model's."""

    def __init__(self, owner: Callable):
        self.owner = owner
        self._hints: dict[int, tuple[Any, Any, tuple, torch.Tensor]] = {}

    def install(self, patched: Any) -> None:
        """Add the ``calc_cond_batch`` wrapper (stand-ins) and an ``outer_sample`` one (drops the
        canvas hints kept during sampling) to a ComfyUI ModelPatcher."""
        import comfy.patcher_extension as ext

        patched.add_wrapper_with_key(ext.WrappersMP.CALC_COND_BATCH, KEY, self._calc_cond_batch)
        patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, KEY, self._outer_sample)

    def _calc_cond_batch(self, executor: Callable, model: Any, conds: list, x: Any, t: Any, options: dict) -> Any:
        if options.get("model_function_wrapper") is not self.owner:
            return executor(model, conds, x, t, options)
        stand_ins: dict[int, DeferredControl] = {}

        def defer(cond: dict) -> dict:
            control = cond.get("control")
            if control is None or not runs_per_window(control):
                return cond
            stand_in = stand_ins.setdefault(id(control), DeferredControl(control))
            return {**cond, "control": stand_in}  # one stand-in per chain: cond and uncond still batch together

        conds = [None if group is None else [defer(cond) for cond in group] for group in conds]
        return executor(model, conds, x, t, options)

    def _outer_sample(self, executor: Callable, *args: Any, **kwargs: Any) -> Any:
        try:
            return executor(*args, **kwargs)
        finally:
            self._hints.clear()

    def _hint(self, member: Any, canvas_x: torch.Tensor, t: torch.Tensor, cond: dict, batched: int) -> torch.Tensor:
        key = (tuple(canvas_x.shape), str(canvas_x.device), batched)
        kept = self._hints.get(id(member))
        if kept is None or kept[1] is not member.cond_hint_original or kept[2] != key:
            hint = canvas_hint(member, canvas_x, t, cond, batched)
            kept = (member, member.cond_hint_original, key, hint)  # the member kept: its id is not reused
            self._hints[id(member)] = kept
        return kept[3]

    def residuals(
        self,
        control: Any,
        crops: torch.Tensor,
        sigma: torch.Tensor,
        cond: dict[str, Any],
        views: Sequence[View],
        canvas: tuple[int, int],
        batched_number: int,
    ) -> dict | None:
        """The chain's residuals for ``crops`` (the views' latents stacked view-major, rows each) under
        ``cond`` (their conditioning, view-major too): ComfyUI's ``get_control`` with every member's
        hint cut to the views."""
        rows = crops.shape[0] // len(views)
        canvas_x = torch.zeros((rows, *crops.shape[1:-2], *canvas), dtype=crops.dtype, device=crops.device)
        first = {k: v[:rows] if isinstance(v, torch.Tensor) and v.shape[:1] == crops.shape[:1] else v
                 for k, v in cond.items()}  # fmt: skip
        for member in chain(control):
            hint = self._hint(member, canvas_x, sigma[:rows], first, batched_number)
            if hint.shape[0] != rows and len(views) > 1:  # one hint for all rows: ComfyUI keeps it at batch 1
                hint = hint.expand(rows, *hint.shape[1:])
            member.cond_hint = torch.cat([crop_at_scale(hint, v, canvas, "hint") for v in views])
        return control.get_control(crops, sigma, cond, batched_number, cond.get("transformer_options", {}))
