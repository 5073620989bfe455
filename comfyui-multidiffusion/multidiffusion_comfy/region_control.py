"""A region's own ControlNet in the regions patch: residuals for that region's jobs only.

A region whose conditioning went through ComfyUI's Apply ControlNet carries a ControlNet object
(``"control"``). The sampler never sees that conditioning, so the patch does what the sampler does for
its own prompts: ``pre_run`` (the ControlNet's sigma range) and loading its model, then per model call
``get_control`` on the region jobs' crops (after bootstrapping's composition, as the model sees them),
under the region's own cross-attention context, with the ControlNet's hint cut to the job's view
(:mod:`.window_control`: in windows too, a region's ControlNet sees its window of the hint). Jobs of
other prompts keep the residuals of the sampler's positive (or none); the batch's ``control`` holds
each job's rows, zeros where a job has none at a position the others have. A control that is not a
ControlNet (a T2I-Adapter) is prepared by ComfyUI for the crop's size, so it needs the whole canvas
as the one view.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from multidiffusion.engine.fusion import Job

from .window_control import WindowControls, runs_per_window

__all__ = ["merged_control", "prepare_controls"]


def prepare_controls(controls: Sequence[Any], model: Any) -> None:
    """What ComfyUI's sampler does for its prompts' ControlNets before sampling: their sigma range
    (``pre_run``) and their networks loaded on the model's device."""
    import comfy.model_management

    sampling = model.model_sampling
    networks = []
    for control in controls:
        if control is not None:
            control.pre_run(model, lambda a: sampling.percent_to_sigma(a))
            networks += control.get_models()
    if networks:
        comfy.model_management.load_models_gpu(networks)


def _job_rows(value: Any, j: int, rows: int) -> Any:
    if value is None:
        return None
    return {k: [None if v is None else v[j * rows : (j + 1) * rows] for v in lst] for k, lst in value.items()}


def merged_control(
    base: dict | None,
    controls: Sequence[Any],
    crops: torch.Tensor,
    sigma: torch.Tensor,
    jobs: Sequence[Job],
    inputs: dict[str, Any],
    rows: int,
    chunks: int,
    windows: WindowControls | None = None,
    canvas: tuple[int, int] | None = None,
) -> dict | None:
    """The ``control`` of a batch of jobs: region k's ControlNet (``controls[k]``, or None) for the jobs
    of region k (prompt slot k + 1), the base's rows for the others. ``windows`` runs a ControlNet on
    the job's view of its hint on the ``canvas``; without it, ComfyUI's ``get_control`` as is."""
    options = inputs.get("transformer_options", {})
    parts = []
    for j, job in enumerate(jobs):
        control = controls[job.prompt - 1] if job.prompt > 0 else None
        if control is None:
            parts.append(_job_rows(base, j, rows))
            continue
        block = slice(j * rows, (j + 1) * rows)
        cond = {
            k: v[block] for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape[0] == len(jobs) * rows
        }
        if windows is not None and canvas is not None and runs_per_window(control):
            parts.append(windows.residuals(control, crops[block], sigma[block], cond, [job.view], canvas, chunks))
        else:
            parts.append(control.get_control(crops[block], sigma[block], cond, chunks, options))
    present = [p for p in parts if p is not None]
    if not present:
        return None
    out: dict[str, list] = {}
    for key in {k for p in present for k in p}:
        length = max(len(p.get(key, [])) for p in present)
        merged = []
        for i in range(length):
            tensors = [p[key][i] if p is not None and i < len(p.get(key, [])) else None for p in parts]
            like = next((t for t in tensors if t is not None), None)
            if like is None:
                merged.append(None)
                continue
            zero = torch.zeros_like(like)
            merged.append(torch.cat([zero if t is None else t.to(like.dtype) for t in tensors]))
        out[key] = merged
    return out
