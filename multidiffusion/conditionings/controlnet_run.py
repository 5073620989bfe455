"""ControlNet per view, run: each view's model call gets the control image's crop at that view's place.

A ControlNet adds residuals to the UNet's skip connections, computed from the noisy latents, the
prompt and a control image (edges, depth, pose, a low-resolution tile). Under MultiDiffusion the
control image belongs to the canvas: view F_i (latent offset (top, left), size (h, w)) is
conditioned on the pixels ``control[:, :, f*top : f*(top+h), f*left : f*(left+w)]`` (wrapping
around on circular canvases), in the same batched call as the UNet:

    down_i, mid_i = Σ_c ControlNet_c(F_i(x_t), t, y_i, crop_i(control_c), scale_c)
    ε_i = UNet(F_i(x_t), t, y_i, down_i, mid_i)

and the fused prediction is Eq. 5 over the ε_i as always. This is what diffusers'
``StableDiffusionControlNetPipeline`` does on one view (several ControlNets sum their residuals, as
its ``MultiControlNetModel``); the peers' failures (the whole control image fed to every tile,
tensor-size crashes) come from not cropping.

``control_guidance_start`` / ``end`` (fractions of the steps that run) bound where a ControlNet
acts: diffusers multiplies the scale by 0 outside, which still runs the ControlNet; here it is not
run at all, which gives the same output (its residuals would be exact zeros) for less work.

A Union ControlNet (diffusers' ``ControlNetUnionModel``, e.g. ControlNet-Union SDXL) is one model
that takes several control images at once, each with its ``control_mode``; every image is cropped
per view the same way. With one mode it is skipped outside its range like any ControlNet; with
several, each mode's scale is 0 outside its own range and the model runs at every step, as in
diffusers (its residuals don't vanish when all of its scales are 0). A FLUX ControlNet-Union
(``FluxControlNetModel`` with ``num_mode``) instead takes one image and one mode per forward pass
(the mode's embedding goes before the text tokens): each control image is its own :class:`Control`
with its mode, over the one model or one model each, their residuals summed, as diffusers'
``FluxMultiControlNetModel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from multidiffusion.engine.adapter import map_tensors, select_rows
from multidiffusion.engine.conditioning import Conditioning, ModelCall
from multidiffusion.engine.fusion import Job
from multidiffusion.engine.views import View, crop

__all__ = ["Control", "ControlNetConditioning", "control_crop"]

CROP_CACHE_BYTES = 256 * 1024**2
"""Most bytes of control-image crops kept between steps."""


@dataclass(eq=False)
class Control:
    """One ControlNet over the canvas: its ``image`` (1, 3, H, W) in [0, 1] at the canvas's pixel
    size (or what the model's adapter makes of it: a transformer's ControlNet takes VAE latents, with
    ``factor`` 1), the residuals' ``scale`` and the fraction of the steps [``start``, ``end``] it
    acts in."""

    model: torch.nn.Module
    image: torch.Tensor | list[torch.Tensor]  # a list: a Union ControlNet's images, one per mode
    scale: float | list[float] = 1.0
    start: float = 0.0
    end: float = 1.0
    slots: frozenset[int] | None = None  # the prompt slots it conditions (a region's); None: every job
    modes: tuple[int, ...] | None = None  # a Union ControlNet's control modes, one per image
    ranges: tuple[tuple[float, float], ...] = ()  # and each mode's (start, end)
    factor: int | None = None  # latent view offsets to ``image``'s grid; None: the VAE's (pixels)

    def active(self, step: int, steps: int) -> bool:
        """diffusers' ``controlnet_keep``: step i of n is kept unless i/n < start or (i+1)/n > end."""
        if self.modes is not None and len(self.modes) > 1:
            return True  # see the module docstring
        return _keep(step, steps, self.start, self.end)

    def call_kwargs(self, crops: list[torch.Tensor], step: int, steps: int) -> dict[str, Any]:
        """The ControlNet's control inputs for these crops (one tensor per image) at step i of n."""
        if self.modes is None:
            return {"controlnet_cond": crops[0], "conditioning_scale": self.scale}
        if not _is_union(self.model):  # one mode per pass (FLUX ControlNet-Union)
            mode = torch.full((crops[0].shape[0], 1), self.modes[0], device=crops[0].device, dtype=torch.long)
            return {"controlnet_cond": crops[0], "controlnet_mode": mode, "conditioning_scale": self.scale}
        kinds = self.model.config.num_control_type
        control_type = torch.zeros(kinds, device=crops[0].device, dtype=crops[0].dtype)
        control_type[list(self.modes)] = 1
        scales = self.scale if isinstance(self.scale, list) else [self.scale] * len(self.modes)
        return {
            "controlnet_cond": crops,
            "control_type": control_type.reshape(1, -1).repeat(crops[0].shape[0], 1),
            "control_type_idx": list(self.modes),
            "conditioning_scale": [s * float(_keep(step, steps, a, b)) for s, (a, b) in zip(scales, self.ranges)],
        }


def _keep(step: int, steps: int, start: float, end: float) -> bool:
    return not (step / steps < start or (step + 1) / steps > end)


def control_crop(image: torch.Tensor, view: View, scale_factor: int) -> torch.Tensor:
    """The pixels of a canvas-sized control ``image`` under latent ``view`` (wrapping horizontally)."""
    f = scale_factor
    return crop(image, View(view.top * f, view.left * f, view.height * f, view.width * f))


class ControlNetConditioning(Conditioning):
    """The ControlNets of a call: :meth:`model_inputs` gives the model's extra keyword arguments for a
    batch of jobs at a step where some ControlNet acts (:meth:`active`).

    ``guess_mode`` as in diffusers: with guidance, the ControlNet sees only the conditional branch
    and the unconditional branch gets no residuals. While a ControlNet acts, ε_u depends on each
    view's control crop, so it is not shared between jobs (``shares_unconditional``). ``recorded``:
    the settings as the result stores them."""

    shares_unconditional = False

    def __init__(
        self,
        controls: Sequence[Control],
        scale_factor: int,
        guess_mode: bool = False,
        recorded: dict[str, Any] | None = None,
    ):
        self.controls = list(controls)
        self.scale_factor = scale_factor
        self.guess_mode = guess_mode
        self.branches_differ = guess_mode  # the unconditional rows get no residuals
        self.recorded = recorded or {}
        self.calls = 0  # ControlNet forward passes, for the cost figures
        self._crops: dict[tuple[int, int, tuple[View, ...], int], torch.Tensor] = {}
        self._bytes = 0

    def active(self, step: int, steps: int) -> bool:
        return any(c.active(step, steps) for c in self.controls)

    def model_inputs(self, call: ModelCall) -> dict[str, Any]:
        active = [c for c in self.controls if c.active(call.step, call.steps)]
        return self.residuals(active, call)

    def stats(self) -> dict[str, float]:
        return {"controlnet_calls": self.calls}

    def record(self) -> dict[str, Any]:
        return dict(self.recorded)

    def _images(self, control: Control, index: int, jobs: Sequence[Job], per: int, dtype: torch.dtype) -> torch.Tensor:
        """Crops of the control's ``index``-th image under the jobs' views, ``per`` rows (images)
        each, job-major; cached per call."""
        key = (id(control), index, tuple(job.view for job in jobs), per)
        if key not in self._crops:
            image = control.image[index] if isinstance(control.image, list) else control.image
            factor = control.factor if control.factor is not None else self.scale_factor
            crops = [control_crop(image, job.view, factor) for job in jobs]
            value = torch.cat(crops).repeat_interleave(per, dim=0).to(dtype)
            # the grid's views recur every step and are worth keeping; shifted windows are new every
            # step, so the cache is bounded (it would otherwise hold every step's crops)
            if self._bytes + value.nbytes > CROP_CACHE_BYTES:
                self._crops.clear()
                self._bytes = 0
            self._crops[key] = value
            self._bytes += value.nbytes
        return self._crops[key]

    def residuals(self, active: Sequence[Control], call: ModelCall) -> dict[str, Any]:
        """The model's extra keyword arguments (the family adapter's ``residual_kwargs``) for the input
        ``call.x`` ([uncond rows; cond rows] when ``call.guided``) of its jobs: the ``active`` ControlNets'
        outputs (its ``run_controlnet``) summed, as diffusers' multi-ControlNet models.

        A ControlNet sees the rows of its jobs (a region's: its prompt slot's only; the other rows get
        zeros) in both guidance branches, or only in the conditional one in guess mode (the
        unconditional rows get zeros) and for a family whose pipeline runs it on the positive prompt
        only (FLUX: its output then serves both branches)."""
        if not active:
            return {}
        adapter, x, jobs, guided = call.adapter, call.x, call.jobs, call.guided
        total = x.shape[0]
        n = total // 2 if guided else total
        per = n // len(jobs)
        positive_only = guided and adapter.controlnet_positive_only and not self.guess_mode
        half = guided and (self.guess_mode or positive_only)
        summed: Any = None
        for control in active:
            mine = [j for j, job in enumerate(jobs) if control.slots is None or job.prompt in control.slots]
            if not mine:
                continue
            count = len(control.image) if isinstance(control.image, list) else 1
            images = [self._images(control, k, [jobs[j] for j in mine], per, x.dtype) for k in range(count)]
            rows = torch.tensor([j * per + b for j in mine for b in range(per)], device=x.device)
            if half:
                rows = rows + n
            elif guided:
                rows = torch.cat([rows, rows + n])
                images = [torch.cat([image, image]) for image in images]
            everything = rows.numel() == total  # every row, in order: nothing to select or scatter
            out = adapter.run_controlnet(
                control.model,
                x if everything else x.index_select(0, rows),
                call.t,
                call.kwargs if everything else select_rows(call.kwargs, total, rows),
                control.call_kwargs(images, call.step, call.steps),
                self.guess_mode,
            )
            self.calls += 1
            if not everything:
                out = map_tensors(lambda r, rows=rows: _scatter(r, rows, total), out)
            summed = out if summed is None else _add(summed, out)
        if summed is None:
            return {}
        if positive_only:  # the conditional rows' residuals for the unconditional rows too
            summed = map_tensors(lambda r: torch.cat([r[n:], r[n:]]), summed)
        return adapter.residual_kwargs(summed)


def _add(a: Any, b: Any) -> Any:
    """Two ControlNets' outputs summed leaf by leaf (None where a family's net returns none)."""
    if isinstance(a, torch.Tensor):
        return a + b
    if isinstance(a, (list, tuple)):
        return type(a)(_add(u, v) for u, v in zip(a, b))
    return a if b is None else b


def _scatter(value: torch.Tensor, rows: torch.Tensor, total: int) -> torch.Tensor:
    out = value.new_zeros((total, *value.shape[1:]))
    return out.index_copy(0, rows, value)


def _is_union(net: torch.nn.Module) -> bool:
    """Whether ``net`` is a Union ControlNet that takes several control images in one pass, each
    with a mode (SDXL's ``ControlNetUnionModel``)."""
    return "num_control_type" in getattr(net, "config", {})


def _mode_count(net: torch.nn.Module) -> int | None:
    """How many control modes ``net`` knows: a Union ControlNet's (SDXL's ``num_control_type``, a FLUX
    ControlNet-Union's ``num_mode``), None for a one-condition ControlNet."""
    config = getattr(net, "config", {})
    count = config.get("num_control_type") or config.get("num_mode")
    return int(count) if count else None
