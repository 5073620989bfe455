"""IP-Adapter, declared: an image as a prompt, for the whole canvas or for one region's prompt.

diffusers' names throughout: ``md.load_ip_adapter(folder_or_repo, subfolder=..., weight_name=...)``
(the arguments of ``pipe.load_ip_adapter``), ``md.set_ip_adapter_scale(scale)``,
``md.unload_ip_adapter()``; every task takes ``ip_adapter_image=`` (one image, or a list with one
per loaded IP-Adapter), ``ip_adapter_image_embeds=`` (precomputed, as diffusers takes them: with
guidance the negative embedding first) and ``ip_adapter_scale=`` (this call's scale; None: as
``set_ip_adapter_scale`` left it). ``Region(..., ip_adapter_image=...)`` makes an image that
region's prompt: only the jobs of its prompt slot see it (:mod:`.ip_adapter_rows`).

Stable Diffusion 1.x / 2.x and SDXL (their UNets' IP-Adapter attention processors). Results record
the image and the call's scale; the weights are never read back from stored settings (give them
again, as a ControlNet's); ``md.ip_adapter_files`` says which file is loaded (name and SHA-256).

    md.load_ip_adapter("h94/IP-Adapter", subfolder="models", weight_name="ip-adapter_sd15.safetensors")
    out = md.panorama("a mountain lake", ip_adapter_image="style.png", ip_adapter_scale=0.6)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch

from multidiffusion.conditionings.base import ConditioningKind, Context, Flag
from multidiffusion.conditionings.ip_adapter_files import check_weights_source, loaded_files, not_found
from multidiffusion.conditionings.ip_adapter_rows import IPAdapterConditioning, SlotImage
from multidiffusion.io.messages import shown

__all__ = [
    "IP_ADAPTER",
    "LOAD_FLAGS",
    "MAX_IP_ADAPTER_SCALE",
    "IPAdapterArgs",
    "IPAdapterMethods",
    "IPAdapterOptions",
    "IPAdapterRegionFields",
    "load",
]

FAMILIES = ("sd", "sdxl")
"""Model families whose IP-Adapters run here (their UNets' attention processors)."""
MAX_IP_ADAPTER_SCALE = 10.0
"""Largest IP-Adapter scale (diffusers' examples use 0.3-1; beyond 10 is a typo)."""
PICKLES = (".bin", ".ckpt", ".pt", ".pth")


@dataclass(kw_only=True)
class IPAdapterOptions:
    """IP-Adapter's option fields (see the module docstring)."""

    ip_adapter_image: Any = None
    ip_adapter_image_embeds: list[torch.Tensor] | None = None
    ip_adapter_scale: float | list[float] | None = None


class IPAdapterArgs(TypedDict, total=False):
    """IP-Adapter's keyword arguments of every task method."""

    ip_adapter_image: Any
    ip_adapter_image_embeds: list[torch.Tensor] | None
    ip_adapter_scale: float | list[float] | None


@dataclass(kw_only=True)
class IPAdapterRegionFields:
    """A region's own reference image: its prompt slot's jobs see this image (instead of the call's
    ``ip_adapter_image``, if any); jobs of prompts without one see none."""

    ip_adapter_image: Any = None


def _images(value: Any, name: str) -> Any:
    """One checked input image, or a list of them (one per loaded IP-Adapter)."""
    from multidiffusion.io.image_loader import input_image

    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} must be an image or a non-empty list of images (one per IP-Adapter)")
        return [input_image(v, f"{name}[{i}]") for i, v in enumerate(value)]
    return input_image(value, name)


def _scale(value: Any, name: str = "ip_adapter_scale") -> float | list[float]:
    def number(v: Any, where: str) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or not 0 <= v <= MAX_IP_ADAPTER_SCALE:
            raise ValueError(f"{where} must be a number from 0 to {MAX_IP_ADAPTER_SCALE:g}, got {shown(v)}")
        return float(v)

    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} must be a number or a list of numbers (one per IP-Adapter), got []")
        return [number(v, f"{name}[{i}]") for i, v in enumerate(value)]
    return number(value, name)


def check(options: Any) -> None:
    """``ip_adapter_image`` (checked input images), ``ip_adapter_image_embeds`` (a list of tensors,
    not with an image), ``ip_adapter_scale`` (0 to 10, or one per IP-Adapter; only with an image)."""
    if options.ip_adapter_image is not None and options.ip_adapter_image_embeds is not None:
        raise ValueError("ip_adapter_image and ip_adapter_image_embeds: give one of them, not both")
    if options.ip_adapter_image is not None:
        options.ip_adapter_image = _images(options.ip_adapter_image, "ip_adapter_image")
    embeds = options.ip_adapter_image_embeds
    if embeds is not None:
        if not isinstance(embeds, (list, tuple)) or not embeds or not all(isinstance(e, torch.Tensor) for e in embeds):
            raise ValueError(
                "ip_adapter_image_embeds must be a list of tensors (one per IP-Adapter, as diffusers takes them), "
                f"got {type(embeds).__name__}"
            )
        options.ip_adapter_image_embeds = list(embeds)
    if options.ip_adapter_scale is not None:
        regions = getattr(options, "regions", None) or []
        regional = any(getattr(r, "ip_adapter_image", None) is not None for r in regions)
        if options.ip_adapter_image is None and embeds is None and not regional:
            raise ValueError("ip_adapter_scale applies to an image: give ip_adapter_image too")
        options.ip_adapter_scale = _scale(options.ip_adapter_scale)


def check_region(region: Any) -> None:
    if region.ip_adapter_image is not None:
        region.ip_adapter_image = _images(region.ip_adapter_image, "ip_adapter_image")


def _record_images(images: Any) -> Any:
    return [i.record() for i in images] if isinstance(images, list) else images.record()


def region_record(region: Any) -> dict[str, Any]:
    if region.ip_adapter_image is None:
        return {}
    return {"ip_adapter_image": _record_images(region.ip_adapter_image)}


def _has_ip_adapter(unet: Any) -> bool:
    """Whether diffusers' ``load_ip_adapter`` has run on this UNet (and no unload since)."""
    config = getattr(unet, "config", None)
    return getattr(config, "encoder_hid_dim_type", None) == "ip_image_proj" and unet.encoder_hid_proj is not None


def _check_model(adapter: Any, name: str) -> None:
    if adapter.family not in FAMILIES:
        raise ValueError(
            f"{name}: IP-Adapter runs with Stable Diffusion 1.x/2.x and SDXL models here, not {adapter.family.upper()}"
        )
    if not _has_ip_adapter(adapter.unet):
        raise ValueError(
            f"{name}: this model has no IP-Adapter loaded; load one first: md.load_ip_adapter(folder_or_repo, "
            "subfolder=..., weight_name=...) (command line: --ip-adapter FOLDER_OR_REPO --ip-adapter-weight-name FILE)"
        )


def _embed(pipe: Any, images: Any, device: torch.device) -> SlotImage:
    """An image's (or one per IP-Adapter) embeddings through the pipeline's image encoder, as the
    diffusers pipelines compute them: (negative, positive) per IP-Adapter, each (1, images, ...)."""
    pils = [i.image for i in images] if isinstance(images, list) else images.image
    embeds = pipe.prepare_ip_adapter_image_embeds(pils, None, device, 1, True)
    return [(e[:1], e[1:]) for e in embeds]


def _given(embeds: list[torch.Tensor], guided: bool) -> SlotImage:
    """Precomputed embeddings as diffusers takes them: with guidance [negative; positive] halves."""
    out = []
    for i, e in enumerate(embeds):
        negative, positive = e.chunk(2) if guided else (torch.zeros_like(e), e)
        if positive.shape[0] != 1:
            raise ValueError(
                f"ip_adapter_image_embeds[{i}]: one image's embedding{' (negative first)' if guided else ''} per "
                f"IP-Adapter, got {tuple(e.shape)}"
            )
        out.append((negative, positive))
    return out


def prepare(context: Context, options: Any, task: Any) -> IPAdapterConditioning | None:
    """Embed the call's image and the regions' own images once; None when the call has none."""
    regional = [
        (s, f"{name}.ip_adapter_image", getattr(r, "ip_adapter_image", None)) for s, name, r in task.region_slots()
    ]
    regional = [(slot, name, image) for slot, name, image in regional if image is not None]
    canvas = options.ip_adapter_image
    adapter = context.adapter
    none = canvas is None and options.ip_adapter_image_embeds is None and not regional
    if none and not (adapter.family in FAMILIES and _has_ip_adapter(adapter.unet)):
        return None
    slots = task.prompt_slots()
    batch = len(slots.prompts[0]) * options.num_images_per_prompt
    if none:  # a model with an IP-Adapter loaded needs image embeddings in every call: zeros, gated off
        return IPAdapterConditioning([None] * len(slots.prompts), batch)
    _check_model(adapter, regional[0][1] if regional and canvas is None else "ip_adapter_image")
    guided = max(slots.guidance) > 1.0
    device = adapter.device
    with torch.no_grad():
        if canvas is not None:
            everywhere: SlotImage | None = _embed(adapter.pipe, canvas, device)
        elif options.ip_adapter_image_embeds is not None:
            everywhere = _given([e.to(device) for e in options.ip_adapter_image_embeds], guided)
        else:
            everywhere = None
        per_slot: list[SlotImage | None] = [everywhere] * len(slots.prompts)
        for slot, _, image in regional:
            per_slot[slot] = _embed(adapter.pipe, image, device)
    record: dict[str, Any] = {}
    if canvas is not None:
        record["ip_adapter_image"] = _record_images(canvas)
    if options.ip_adapter_scale is not None:
        record["ip_adapter_scale"] = options.ip_adapter_scale
    files = getattr(context.pipeline, "ip_adapter_files", None)
    if files:  # which weights made it (names and SHA-256; never loaded from a result)
        record["ip_adapter_files"] = [dict(f) for f in files]
    return IPAdapterConditioning(per_slot, batch, options.ip_adapter_scale, record)


class IPAdapterMethods:
    """``MultiDiffusion``'s IP-Adapter methods (diffusers' ``IPAdapterMixin`` names)."""

    ip_adapter_files: list[dict[str, Any]]

    def load_ip_adapter(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, Any],
        subfolder: str = "",
        weight_name: str = "",
        image_encoder_folder: str | None = "image_encoder",
        *,
        allow_pickle: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load an IP-Adapter into the model: diffusers' ``load_ip_adapter`` (a folder or hub repo id,
        the ``subfolder`` and ``weight_name`` of its weights file, the image encoder from
        ``subfolder/image_encoder_folder`` unless the model has one). SD 1.x/2.x and SDXL. A pickle
        (``.bin``) only with ``allow_pickle`` (it is read with torch's safe loader even then). Returns
        ``self``; ``ip_adapter_files`` then names the file (its name and SHA-256, or the repo id)."""
        adapter = self.adapter  # type: ignore[attr-defined]
        if adapter.family not in FAMILIES:
            raise ValueError(
                f"load_ip_adapter: IP-Adapter runs with Stable Diffusion 1.x/2.x and SDXL models here, not "
                f"{adapter.family.upper()}"
            )
        names = weight_name if isinstance(weight_name, list) else [weight_name]
        if not all(names) and not isinstance(pretrained_model_name_or_path_or_dict, dict):
            raise ValueError("load_ip_adapter: weight_name is required (e.g. 'ip-adapter_sd15.safetensors')")
        for name in names:
            if Path(name).suffix.lower() in PICKLES and not allow_pickle:
                raise ValueError(
                    f"load_ip_adapter: {name} is a pickle, which can run code when loaded; use the .safetensors file, "
                    "or pass allow_pickle=True (--allow-pickle) if you trust its source"
                )
        check_weights_source(pretrained_model_name_or_path_or_dict, subfolder, names)
        try:
            adapter.pipe.load_ip_adapter(
                pretrained_model_name_or_path_or_dict,
                subfolder=subfolder,
                weight_name=weight_name,
                image_encoder_folder=image_encoder_folder,
                **kwargs,
            )
        except OSError as error:  # a repo id the cache and the hub don't have
            raise ValueError(not_found(pretrained_model_name_or_path_or_dict, error)) from None
        self.ip_adapter_files = loaded_files(pretrained_model_name_or_path_or_dict, subfolder, names)
        return self

    def set_ip_adapter_scale(self, scale: float | list[Any] | dict[str, Any]) -> Any:
        """diffusers' ``set_ip_adapter_scale``: one number, one per IP-Adapter, or a per-block table
        (``{"up": {"block_0": [0.0, 1.0, 0.0]}}``); a call's ``ip_adapter_scale`` overrides it for
        that call. Returns ``self``."""
        if isinstance(scale, (int, float)):
            _scale(scale, "set_ip_adapter_scale")
        self.adapter.pipe.set_ip_adapter_scale(scale)  # type: ignore[attr-defined]
        return self

    def unload_ip_adapter(self) -> Any:
        """diffusers' ``unload_ip_adapter``: the model's attention as before loading. Returns ``self``."""
        self.adapter.pipe.unload_ip_adapter()  # type: ignore[attr-defined]
        self.ip_adapter_files = []
        return self


FLAGS = (
    Flag(
        "--ip-adapter-image",
        "ip_adapter_image",
        dict(
            action="append",
            metavar="FILE",
            help="a reference image every view sees through the IP-Adapter (--ip-adapter); repeat: one per IP-Adapter",
        ),
    ),
    Flag(
        "--ip-adapter-scale",
        "ip_adapter_scale",
        dict(type=float, metavar="S", help="how strongly the image conditions (default: 1, or as set)"),
    ),
)
"""The command line's IP-Adapter flags (option fields)."""

LOAD_FLAGS = (
    Flag(
        "--ip-adapter",
        "pretrained_model_name_or_path_or_dict",
        dict(metavar="FOLDER_OR_REPO", help="load an IP-Adapter (a folder or hub repo id, e.g. h94/IP-Adapter)"),
    ),
    Flag(
        "--ip-adapter-subfolder",
        "subfolder",
        dict(metavar="DIR", default="", help="the IP-Adapter's folder inside it (e.g. models, sdxl_models)"),
    ),
    Flag(
        "--ip-adapter-weight-name",
        "weight_name",
        dict(metavar="FILE", help="the IP-Adapter's weights file (e.g. ip-adapter_sd15.safetensors)"),
    ),
)
"""The command line's flags that load the IP-Adapter: arguments of :meth:`IPAdapterMethods.load_ip_adapter`
(see :func:`load`), not options: a file named by stored settings is never loaded back."""


def load(pipeline: Any, values: dict[str, Any], allow_pickle: bool = False) -> None:
    """Load what :data:`LOAD_FLAGS` gave (``values`` by field; nothing without
    ``--ip-adapter``) into ``pipeline`` (a ``MultiDiffusion``). ``allow_pickle`` covers only a path
    the user typed (:func:`~multidiffusion.io.trust.pickle_allowed`)."""
    from multidiffusion.io.trust import pickle_allowed, typed_weights

    source = values.get("pretrained_model_name_or_path_or_dict")
    if source is None:
        given = [f.flag for f in LOAD_FLAGS if values.get(f.field)]
        if given:
            raise ValueError(f"{given[0]}: name the IP-Adapter too (--ip-adapter FOLDER_OR_REPO)")
        return
    spec = typed_weights(source)
    pipeline.load_ip_adapter(
        spec,
        subfolder=values.get("subfolder") or "",
        weight_name=values.get("weight_name") or "",
        allow_pickle=pickle_allowed(spec, allow_pickle),
    )


IP_ADAPTER = ConditioningKind(
    name="ip_adapter",
    Options=IPAdapterOptions,
    Args=IPAdapterArgs,
    RegionFields=IPAdapterRegionFields,
    Methods=IPAdapterMethods,
    flags=FLAGS,
    flag_group="IP-Adapter (SD 1.x/2.x, SDXL; with --ip-adapter FOLDER_OR_REPO)",
    load_flags=LOAD_FLAGS,
    load=load,
    image_fields=("ip_adapter_image",),
    recorded_only=("ip_adapter_files",),
    image_lists=("ip_adapter_image",),
    region_image_fields=("ip_adapter_image",),
    check=check,
    check_region=check_region,
    region_record=region_record,
    prepare=prepare,
)
