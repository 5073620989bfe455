"""Model adapters: one per model family, all driving the same engine.

:data:`ADAPTERS` is the registry: a family is a module with a
:class:`~multidiffusion.models.base.FamilyAdapter` and one line there (or, from outside the package,
:func:`register_family`). What the package knows of the families derives from it: which family a
pipeline is (:func:`family_of`), the options each takes (:func:`family_options`, the PNG reader's
and the command line's), and the diffusers pipelines a model folder may hold.
"""

from __future__ import annotations

from typing import Any

from multidiffusion.engine.adapter import ModelAdapter, PromptEmbeddings
from multidiffusion.models.base import FamilyAdapter
from multidiffusion.models.chroma import ChromaAdapter
from multidiffusion.models.flux import FluxAdapter
from multidiffusion.models.flux2 import Flux2Adapter
from multidiffusion.models.flux2_klein import Flux2KleinAdapter
from multidiffusion.models.options import cli_flags, option_fields
from multidiffusion.models.qwenimage import QwenImageAdapter
from multidiffusion.models.sd import StableDiffusionAdapter
from multidiffusion.models.sd3 import StableDiffusion3Adapter
from multidiffusion.models.sdxl import StableDiffusionXLAdapter
from multidiffusion.models.zimage import ZImageAdapter

__all__ = [
    "ADAPTERS",
    "FamilyAdapter",
    "ModelAdapter",
    "PromptEmbeddings",
    "StableDiffusionAdapter",
    "StableDiffusionXLAdapter",
    "adapter_for",
    "families",
    "family_of",
    "family_options",
    "model_family",
    "model_flags",
    "register_family",
    "split_model_options",
    "supported_families",
    "supported_pipelines",
    "take_model_options",
]

ADAPTERS: list[type[FamilyAdapter]] = [
    StableDiffusionAdapter,
    StableDiffusionXLAdapter,
    StableDiffusion3Adapter,
    ChromaAdapter,  # before FLUX.1: Chroma's single files have FLUX.1's double_blocks. too
    Flux2KleinAdapter,  # the same transformer class as FLUX.2 [dev]'s, told apart by its Qwen3 text encoder
    Flux2Adapter,  # before FLUX.1: BFL's FLUX.2 files have FLUX.1's double_blocks. too
    FluxAdapter,
    ZImageAdapter,
    QwenImageAdapter,
]
"""The registered families, in the order they are tried on a pipeline: one line each."""


def register_family(adapter: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Register a family from outside the package (a plug-in): ``adapter`` replaces a registered
    family of the same name, or is tried first (a plug-in may claim pipelines a broader family would:
    a fine-tune's own adapter before SD's). Returns it (a class decorator)."""
    same = [i for i, known in enumerate(ADAPTERS) if known.family == adapter.family]
    if same:
        ADAPTERS[same[0]] = adapter
    else:
        ADAPTERS.insert(0, adapter)
    return adapter


def families() -> dict[str, str]:
    """The families the engine drives: name -> what it is."""
    return {adapter.family: adapter.description for adapter in ADAPTERS}


def family_options() -> dict[str, tuple[str, ...]]:
    """Each model option (``from_pretrained`` keyword recorded in a result's parameters) -> the
    families that take it, from their declared :attr:`~FamilyAdapter.Options`."""
    takers: dict[str, list[str]] = {}
    for adapter in ADAPTERS:
        for f in option_fields(adapter.Options):
            takers.setdefault(f.name, []).append(adapter.family)
    return {name: tuple(names) for name, names in takers.items()}


def model_flags() -> list[tuple[str, str, dict[str, Any]]]:
    """The command line's model flags: (flag, option name, argparse keyword arguments) for every
    option of every family (:func:`~multidiffusion.models.options.cli_flags`)."""
    return cli_flags([(adapter.label, adapter.Options) for adapter in ADAPTERS])


def split_model_options(keywords: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``keywords`` split into the model options of the registered families (:func:`family_options`:
    ``MultiDiffusion``'s, checked by :func:`adapter_for`) and the rest (e.g. diffusers'
    ``from_pretrained`` arguments)."""
    names = family_options()
    return {k: v for k, v in keywords.items() if k in names}, {k: v for k, v in keywords.items() if k not in names}


def take_model_options(values: dict[str, Any]) -> dict[str, Any]:
    """The registered families' model options removed from a settings mapping ``values`` (a PNG's
    stored parameters, a scene file's fields) and returned, unset (None) ones dropped: what to pass
    to ``from_pretrained`` with the model, not to the task."""
    names = family_options()
    taken = {k: values.pop(k) for k in list(values) if k in names}
    return {k: v for k, v in taken.items() if v is not None}


def supported_pipelines() -> tuple[str, ...]:
    """diffusers pipeline classes a model folder may name, every family's."""
    return tuple(name for adapter in ADAPTERS for name in adapter.pipelines)


def supported_families() -> str:
    """The supported families in words, for error messages."""
    return "; ".join(families().values())


def family_of(pipe: Any) -> type[FamilyAdapter]:
    """The adapter class of the family that :meth:`~FamilyAdapter.claims` ``pipe``, once it has
    checked the pipeline (:meth:`~FamilyAdapter.check_pipe`). ``ValueError`` naming the supported
    families for any other pipeline; a family's own one-line ``ValueError`` for a pipeline it claims
    but can't drive (a missing component, a depth or LCM UNet, a FLUX Fill transformer, ...)."""
    for adapter in ADAPTERS:
        if adapter.claims(pipe):
            adapter.check_pipe(pipe)
            return adapter
    net = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    if net is None:
        raise ValueError(
            f"{type(pipe).__name__} has no 'unet' or 'transformer', so it is no pipeline this library drives; the "
            f"supported families are: {supported_families()}"
        )
    added = getattr(net, "config", {}).get("addition_embed_type") if hasattr(net, "config") else None
    detail = f" (addition_embed_type={added!r})" if added is not None else ""
    raise ValueError(
        f"{type(pipe).__name__} with a {type(net).__name__}{detail} is not supported; the supported families are: "
        f"{supported_families()}"
    )


def model_family(pipe: Any) -> str:
    """The name of ``pipe``'s family ("sd", "sdxl", "sd3", "flux", ...; :func:`family_of`)."""
    return family_of(pipe).family


def adapter_for(pipe: Any, **options: Any) -> ModelAdapter:
    """The adapter for a diffusers pipeline (text-to-image, img2img or inpainting; their components
    are shared), with the family's ``options`` (its declared :attr:`~FamilyAdapter.Options`; see
    each family's module). A ``None`` option takes the family's default; an option of another family
    or of none is a ``ValueError`` naming the families that take it."""
    options = {k: v for k, v in options.items() if v is not None}
    adapter = family_of(pipe)
    takers = family_options()
    for name in options:
        takes = takers.get(name)
        if takes is None:
            raise ValueError(f"unknown model option {name!r}; the options are {', '.join(takers)}")
        if adapter.family not in takes:
            labels = {known.family: known.label or known.family for known in ADAPTERS}
            names = ", ".join(labels[f] for f in takes)
            raise ValueError(
                f"{name} applies to {names} models; this model is {adapter.description}, which takes no {name}"
            )
    return adapter(pipe, **options)
