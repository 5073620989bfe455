"""The ControlNets of a call, built from its checked options: the model's nets matched to the
control images (one per ControlNet, a Union ControlNet's several with their modes, a FLUX
ControlNet-Union's one pass per image), each image resized to the canvas and made the input its
net takes (:meth:`~multidiffusion.models.base.FamilyAdapter.control_input`), the regions' own
control images, and the settings as the result records them."""

from __future__ import annotations

from typing import Any

from multidiffusion.conditionings.controlnet_options import CONTROL_INPUT, control_settings
from multidiffusion.conditionings.controlnet_run import Control, ControlNetConditioning, _is_union, _mode_count
from multidiffusion.io.checks import check_same_aspect
from multidiffusion.preprocessors import preprocess

__all__ = ["build_controls"]


def build_controls(options: Any, adapter: Any, task: Any) -> ControlNetConditioning | None:
    """The ControlNets of checked ``options`` for a model's ``adapter`` and a ``task`` (its canvas
    ``size``, its regions' own control images, its ``canvas_input()``), or None without a control
    image. Each control image is resized to the canvas as diffusers' control image processor does
    (RGB, [0, 1]); one of another aspect ratio is refused.

    A region's control image conditions only its prompt slot's jobs, over the call's first control
    range. A :data:`~multidiffusion.conditionings.controlnet.CONTROL_INPUT` entry stands for the
    task's canvas-sized input (an upscale's resized input); a task whose options take it and give
    no control image conditions every ControlNet on it (the Tile ControlNet convention)."""
    from diffusers.image_processor import VaeImageProcessor

    settings = _settings(options, adapter)
    regional = _region_controls(task)
    if not settings and not regional:
        return None
    nets = adapter.controlnets
    modes = _check_nets(options, adapter, nets, settings)
    union = _is_union(nets[0])  # one model, all the images in one pass
    moded = _mode_count(nets[0]) is not None  # every image has a mode: Union ControlNets, either kind
    shared = moded and len(nets) == 1  # one model for every image
    processor = VaeImageProcessor(vae_scale_factor=adapter.vae_scale_factor, do_convert_rgb=True, do_normalize=False)
    size = task.size
    controls = []
    for i, (image, scale, start, end, preprocessor) in enumerate(settings):
        name = "control_image" if len(settings) == 1 else f"control_image[{i}]"
        if isinstance(image, str) and image == CONTROL_INPUT:
            source = task.canvas_input()
            if source is None:
                raise ValueError(f"{name}: {CONTROL_INPUT!r} stands for the input, and this task has none")
        else:
            check_same_aspect(name, image.size, "canvas", size)
            source = image.image
        pixels = processor.preprocess(preprocess(source, preprocessor), height=size[0], width=size[1])
        net = nets[0 if shared else i]
        image, factor = adapter.control_input(net, pixels.to(adapter.device, adapter.dtype))
        own_mode = (modes[i],) if moded and not union else None  # FLUX: a pass per image, with its mode
        controls.append(Control(net, image, scale, start, end, modes=own_mode, factor=factor))
    if union and controls:  # one model, all the images at once
        controls = [_union_control(nets[0], controls, modes)]
    if moded and regional:
        raise ValueError(f"{regional[0][1]}: a region's control image with a Union ControlNet is not supported")
    start, end = (settings[0][2], settings[0][3]) if settings else (0.0, 1.0)
    for slot, name, image, scale, index in regional:
        if index >= len(nets):
            raise ValueError(f"{name}: controlnet={index}, but this model runs {len(nets)} ControlNet(s)")
        check_same_aspect(name, image.size, "canvas", size)
        pixels = processor.preprocess(image.image.convert("RGB"), height=size[0], width=size[1])
        latents, factor = adapter.control_input(nets[index], pixels.to(adapter.device, adapter.dtype))
        controls.append(Control(nets[index], latents, scale, start, end, frozenset([slot]), factor=factor))
    recorded = _recorded(settings, options) if settings else {}
    return ControlNetConditioning(controls, adapter.vae_scale_factor, options.guess_mode, recorded)


def _union_control(net: Any, controls: list[Control], modes: list[Any]) -> Control:
    """The one :class:`Control` of a Union ControlNet that takes every control image in one pass,
    each with its mode, scale and range."""
    ranges = tuple((c.start, c.end) for c in controls)
    return Control(
        net,
        [c.image for c in controls],
        [float(c.scale) for c in controls],
        min(r[0] for r in ranges),
        max(r[1] for r in ranges),
        modes=tuple(modes),
        ranges=ranges,
    )


def _settings(options: Any, adapter: Any) -> list[tuple[Any, float, float, float, str]]:
    """(image, scale, start, end, preprocessor) per control image; for a task that takes its input
    as control image and gives none, the input for each of the model's ControlNets."""
    settings = control_settings(options)
    if settings or not options.input_control or not adapter.controlnets:
        return settings
    o = options
    entry = (CONTROL_INPUT, o.controlnet_conditioning_scale, o.control_guidance_start, o.control_guidance_end)
    return [(*entry, o.control_preprocessor)] * len(adapter.controlnets)


def _region_controls(task: Any) -> list[tuple[int, str, Any, float, int]]:
    """(prompt slot, parameter name, control image, scale, ControlNet index) of the task's regions
    that have their own control image."""
    return [
        (slot, f"{name}.control_image", r.control_image, r.controlnet_conditioning_scale, r.controlnet)
        for slot, name, r in task.region_slots()
        if getattr(r, "control_image", None) is not None
    ]


def _check_nets(options: Any, adapter: Any, nets: list[Any], settings: list[Any]) -> list[Any]:
    """ValueError when the model's ControlNets don't fit the settings; the control modes, listed."""
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
    union = _is_union(nets[0])
    kinds = [_mode_count(net) for net in nets]
    moded = kinds[0] is not None
    shared = moded and len(nets) == 1
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
    return modes


def _recorded(settings: list[tuple[Any, float, float, float, str]], options: Any) -> dict[str, Any]:
    """The ControlNet settings as stored (control images by path and SHA-256, the input as "input");
    one value per control image as a list when there are several."""

    def column(k: int) -> Any:
        values = [s[k] for s in settings]
        return values if len(values) > 1 else values[0]

    return {
        "control_image": [image if isinstance(image, str) else image.record() for image, *_ in settings],
        "controlnet_conditioning_scale": column(1),
        "control_guidance_start": column(2),
        "control_guidance_end": column(3),
        "guess_mode": options.guess_mode,
        "control_preprocessor": column(4),
        **({"control_mode": options.control_mode} if options.control_mode is not None else {}),
    }
