"""ControlNet per view: each view's model call gets the control image's crop at that view's place.

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

from multidiffusion.engine.adapter import ModelAdapter, map_tensors, select_rows
from multidiffusion.engine.fusion import Job
from multidiffusion.engine.views import View, crop

__all__ = ["Control", "Controls", "control_crop"]

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


class Controls:
    """The ControlNets of a call: :meth:`residuals` gives the UNet's extra keyword arguments for a
    batch of jobs at the current step, or an empty dict when no ControlNet acts then.

    ``guess_mode`` as in diffusers: with guidance, the ControlNet sees only the conditional branch
    and the unconditional branch gets no residuals."""

    def __init__(self, controls: Sequence[Control], scale_factor: int, guess_mode: bool = False):
        self.controls = list(controls)
        self.scale_factor = scale_factor
        self.guess_mode = guess_mode
        self.calls = 0  # ControlNet forward passes, for the cost figures
        self._step = (0, 1)
        self._crops: dict[tuple[int, int, tuple[View, ...], int], torch.Tensor] = {}
        self._bytes = 0

    def __bool__(self) -> bool:
        return bool(self.controls)

    def active(self, step: int, steps: int) -> list[Control]:
        self._step = (step, steps)
        return [c for c in self.controls if c.active(step, steps)]

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

    def residuals(
        self,
        active: Sequence[Control],
        adapter: ModelAdapter,
        x: torch.Tensor,
        t: torch.Tensor,
        jobs: Sequence[Job],
        model_kwargs: dict[str, Any],
        guided: bool,
    ) -> dict[str, Any]:
        """The model's extra keyword arguments (:meth:`~ModelAdapter.residual_kwargs`) for the input
        ``x`` ([uncond rows; cond rows] when ``guided``) of these jobs: the ``active`` ControlNets'
        outputs (:meth:`~ModelAdapter.run_controlnet`) summed, as diffusers' multi-ControlNet models.

        A ControlNet sees the rows of its jobs (a region's: its prompt slot's only; the other rows get
        zeros) in both guidance branches, or only in the conditional one in guess mode (the
        unconditional rows get zeros) and for a family whose pipeline runs it on the positive prompt
        only (FLUX: its output then serves both branches)."""
        if not active:
            return {}
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
                t,
                model_kwargs if everything else select_rows(model_kwargs, total, rows),
                control.call_kwargs(images, *self._step),
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


def build_controls(
    options: Any,
    adapter: Any,
    size: tuple[int, int],
    region_controls: Sequence[tuple[int, str, Any, float, int]] = (),
    input_control: Any = None,
) -> Controls | None:
    """The :class:`Controls` of checked ``options`` for a model's ``adapter`` on a canvas of ``size``
    pixels, or None without a control image. Each control image is resized to the canvas as
    diffusers' control image processor does (RGB, [0, 1]); one of another aspect ratio is refused.

    ``region_controls``: (prompt slot, name, input image, scale, ControlNet index) of regions with
    their own control image; each conditions only its slot's jobs, over the call's first control range.
    ``input_control``: the canvas-sized PIL image a :data:`~multidiffusion.options.CONTROL_INPUT`
    entry stands for (an upscale's resized input)."""
    from diffusers.image_processor import VaeImageProcessor

    from multidiffusion.options import CONTROL_INPUT, check_same_aspect, control_settings
    from multidiffusion.preprocessors import preprocess

    settings = control_settings(options)
    if not settings and not region_controls:
        return None
    nets = adapter.controlnets
    if options.guess_mode and not adapter.controlnet_guess_mode:
        raise ValueError(
            f"guess_mode: {adapter.family.upper()} ControlNets have no guess mode (nor have diffusers' pipelines for "
            "them); run without it"
        )
    if not nets:
        raise ValueError(
            "control_image: this model has no ControlNet; load one with "
            "MultiDiffusion.from_pretrained(model, controlnet=...) or wrap a diffusers ControlNet pipeline"
        )
    union = _is_union(nets[0])  # one model, all the images in one pass
    kinds = [_mode_count(net) for net in nets]
    moded = kinds[0] is not None  # every image has a mode: Union ControlNets, either kind
    shared = moded and len(nets) == 1  # one model for every image
    if union and len(nets) > 1:
        raise ValueError(
            "controlnet: several Union ControlNets are not supported; use one, with a control_mode per image"
        )
    if any((k is None) != (kinds[0] is None) for k in kinds):
        raise ValueError("controlnet: Union and one-condition ControlNets together are not supported")
    if moded and settings and options.control_mode is None:
        raise ValueError(f"control_mode: a Union ControlNet needs a mode for each control image (0 to {kinds[0] - 1})")
    if not moded and options.control_mode is not None:
        raise ValueError("control_mode is a Union ControlNet's setting; this model's ControlNet takes none")
    if settings and len(nets) != len(settings) and not shared:
        raise ValueError(
            f"control_image: this model runs {len(nets)} ControlNet(s); give {'a list of ' if len(nets) > 1 else ''}"
            f"{len(nets)} control image(s), got {len(settings)}"
        )
    modes = options.control_mode if isinstance(options.control_mode, list) else [options.control_mode]
    for i, mode in enumerate(modes if moded and settings else ()):
        count = kinds[0 if shared else i]
        if mode >= count:
            which = f"[{i}]" if len(modes) > 1 else ""
            raise ValueError(f"control_mode{which} must be from 0 to {count - 1} for this Union ControlNet, got {mode}")
    processor = VaeImageProcessor(vae_scale_factor=adapter.vae_scale_factor, do_convert_rgb=True, do_normalize=False)
    controls = []
    for i, (image, scale, start, end, preprocessor) in enumerate(settings):
        name = "control_image" if len(settings) == 1 else f"control_image[{i}]"
        if isinstance(image, str) and image == CONTROL_INPUT:
            if input_control is None:
                raise ValueError(f"{name}: {CONTROL_INPUT!r} stands for the input, and this task has none")
            source = input_control
        else:
            check_same_aspect(name, image.size, "canvas", size)
            source = image.image
        pixels = processor.preprocess(preprocess(source, preprocessor), height=size[0], width=size[1])
        net = nets[0 if shared else i]
        image, factor = adapter.control_input(net, pixels.to(adapter.device, adapter.dtype))
        own_mode = (modes[i],) if moded and not union else None  # FLUX: a pass per image, with its mode
        controls.append(Control(net, image, scale, start, end, modes=own_mode, factor=factor))
    if union and controls:  # one model, all the images at once
        ranges = tuple((c.start, c.end) for c in controls)
        controls = [
            Control(
                nets[0],
                [c.image for c in controls],
                [float(c.scale) for c in controls],
                min(r[0] for r in ranges),
                max(r[1] for r in ranges),
                modes=tuple(modes),
                ranges=ranges,
            )
        ]
    if moded and region_controls:
        raise ValueError(f"{region_controls[0][1]}: a region's control image with a Union ControlNet is not supported")
    start, end = (settings[0][2], settings[0][3]) if settings else (0.0, 1.0)
    for slot, name, image, scale, index in region_controls:
        if index >= len(nets):
            raise ValueError(f"{name}: controlnet={index}, but this model runs {len(nets)} ControlNet(s)")
        check_same_aspect(name, image.size, "canvas", size)
        pixels = processor.preprocess(image.image.convert("RGB"), height=size[0], width=size[1])
        latents, factor = adapter.control_input(nets[index], pixels.to(adapter.device, adapter.dtype))
        controls.append(Control(nets[index], latents, scale, start, end, frozenset([slot]), factor=factor))
    return Controls(controls, adapter.vae_scale_factor, options.guess_mode)


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
