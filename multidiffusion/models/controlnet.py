"""Loading ControlNets and checking they fit the model: a diffusers folder, a repo id (local cache
first, the hub within ``HUB_TIMEOUT_S``), a single ``.safetensors`` file (pickles only when
allowed), an already loaded ``ControlNetModel``, or a list of those for several ControlNets. A
folder or repo whose config names ``ControlNetUnionModel`` loads as one (ControlNet-Union SDXL),
``FluxControlNetModel``, ``SD3ControlNetModel``, ``ZImageControlNetModel`` or ``QwenImageControlNetModel``
as those (FLUX.1, SD 3 / 3.5, Z-Image, Qwen-Image); a single file holding Z-Image's ControlNet tensors
(``control_all_x_embedder.``, the Z-Image-Turbo-Fun files) loads as a ``ZImageControlNetModel``
(diffusers' ``from_single_file``, its config from the hub's cache or the hub). Each is checked
against the model by its adapter (:meth:`~multidiffusion.models.base.FamilyAdapter.adopt_controlnet`).
``"demo"`` is the demo model's ControlNet, shipped in ``multidiffusion/demo/controlnet`` (its control
image is a scene's class map: ``devtools.demo.scenes.layout_image``); ``"demo-tile"`` its Tile
ControlNet, in ``multidiffusion/demo/controlnet-tile`` (its control image is the image itself,
preprocessor ``none``: an upscale's resized input, as ``python -m devtools.demo.train_controlnet
--control tile`` trained it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from multidiffusion.io.trust import RepoId
from multidiffusion.models.files import ModelNotFoundError, has_tensors, is_pickle_path, refused_pickle
from multidiffusion.models.hub import ask_hub_in_time, how_to_get, hub_folder, hub_offline

__all__ = [
    "DEMO_CONTROLNETS",
    "DEMO_CONTROLNET_DIR",
    "check_controlnet",
    "check_controlnet_class",
    "check_controlnet_source",
    "check_transformer_controlnet",
    "load_controlnet",
    "load_controlnets",
]

_KINDS = "'demo', 'demo-tile', a ControlNet folder, a Hugging Face repo id, a .safetensors file or a ControlNetModel"
DEMO_CONTROLNET_DIR = Path(__file__).parents[1] / "demo" / "controlnet"
DEMO_CONTROLNETS = {"demo": DEMO_CONTROLNET_DIR, "demo-tile": DEMO_CONTROLNET_DIR.parent / "controlnet-tile"}
"""The shipped demo ControlNets by name: the layout one and the Tile one."""


def _resolve(spec: str | os.PathLike) -> str | os.PathLike:
    """``"demo"`` / ``"demo-tile"`` -> the shipped demo ControlNet's folder (which must be there);
    anything else as given."""
    if isinstance(spec, str) and spec in DEMO_CONTROLNETS:
        folder = DEMO_CONTROLNETS[spec]
        if not (folder / "config.json").is_file():
            tile = " --control tile" if spec == "demo-tile" else ""
            raise ModelNotFoundError(
                f"the {spec} ControlNet's weights are missing from {folder}; reinstall multidiffusion "
                f"or train them with `python -m devtools.demo.train_controlnet{tile}`"
            )
        return folder
    return spec


CONTROLNET_FAMILIES = {
    "ControlNetModel": "SD 1.x/2.x or SDXL",
    "ControlNetUnionModel": "SDXL",
    "FluxControlNetModel": "FLUX.1",
    "SD3ControlNetModel": "SD 3 / 3.5",
    "ZImageControlNetModel": "Z-Image",
    "QwenImageControlNetModel": "Qwen-Image",
}
"""diffusers' ControlNet classes -> the family they serve."""

NET_CLASSES = (
    "ControlNetUnionModel",
    "FluxControlNetModel",
    "SD3ControlNetModel",
    "ZImageControlNetModel",
    "QwenImageControlNetModel",
)
"""Classes a ControlNet folder's config may name besides ``ControlNetModel``."""


def check_controlnet_class(net: torch.nn.Module, takes: tuple[str, ...], model: str, name: str) -> None:
    """ValueError in one line when ``net`` is not one of the ControlNet classes ``takes`` (by name)
    that a ``model`` (in words) runs."""
    kind = type(net).__name__
    if kind not in takes:
        made = CONTROLNET_FAMILIES.get(kind, "another model")
        raise ValueError(
            f"{name}: this {kind} is a ControlNet for {made} models, but the model loaded is {model}, which takes a "
            f"{' or '.join(takes)}; use a ControlNet of the model's family"
        )


def check_transformer_controlnet(
    net: torch.nn.Module, transformer: torch.nn.Module, takes: str, model: str, keys: tuple[str, ...], name: str
) -> None:
    """ValueError in one line when ``net`` is not a ``takes`` (the ControlNet class of a diffusion
    transformer family, ``model`` in words), or when its config differs from the ``transformer``'s in
    one of ``keys`` or in width (heads x head size: its outputs are added to the transformer's blocks)."""
    check_controlnet_class(net, (takes,), model, name)
    c, m = net.config, transformer.config
    width = ("width", c.num_attention_heads * c.attention_head_dim, m.num_attention_heads * m.attention_head_dim)
    for key, mine, theirs in [(k, c.get(k), m.get(k)) for k in keys] + [width]:
        if mine != theirs:
            raise ValueError(
                f"{name}: this {takes} was made for another {model} model ({key}={mine!r}) than the one loaded "
                f"({key}={theirs!r}); use a ControlNet made for this model"
            )


def _family(config: Any) -> str:
    added = config.get("addition_embed_type") if hasattr(config, "get") else None
    return "SDXL" if added == "text_time" else "SD 1.x/2.x"


def check_controlnet(controlnet: torch.nn.Module, unet: torch.nn.Module, name: str = "controlnet") -> None:
    """ValueError in one line when ``controlnet`` was made for another model family than ``unet``
    (its text width, added conditioning or block widths differ)."""
    check_controlnet_class(controlnet, ("ControlNetModel", "ControlNetUnionModel"), _family(unet.config), name)
    c, u = controlnet.config, unet.config
    mismatch = [
        key
        for key in ("cross_attention_dim", "addition_embed_type", "block_out_channels")
        if (list(c.get(key)) if isinstance(c.get(key), (list, tuple)) else c.get(key))
        != (list(u.get(key)) if isinstance(u.get(key), (list, tuple)) else u.get(key))
    ]
    if mismatch:
        raise ValueError(
            f"{name}: this ControlNet was made for another model ({_family(c)}, {mismatch[0]}={c.get(mismatch[0])!r}) "
            f"than the one loaded ({_family(u)}, {mismatch[0]}={u.get(mismatch[0])!r}); use a ControlNet of the "
            "model's family"
        )


def check_controlnet_source(spec: str | os.PathLike, allow_pickle: bool = False, name: str = "controlnet") -> None:
    """The checks :func:`load_controlnet` makes on a file or folder before loading anything (that it
    exists, is a ControlNet folder or a .safetensors file, and no pickle unless allowed); a repo id
    passes. For shells that check their input before minutes of loading."""
    if isinstance(spec, RepoId):
        return  # the hub's: checked when fetched
    spec = _resolve(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        if is_pickle_path(path) and not allow_pickle:
            raise ModelNotFoundError(
                f"{name}: {path.name} is a pickle checkpoint, which can run code when loaded; convert it to "
                ".safetensors, or pass allow_pickle=True (--allow-pickle) if you trust its source"
            )
        if path.suffix != ".safetensors" and not is_pickle_path(path):
            raise ModelNotFoundError(f"{name}: a ControlNet file must be .safetensors, got {path.name}")
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{name}: {path} is not a ControlNet folder (no config.json)")
        if not any(path.glob("*.safetensors")) and not allow_pickle:
            raise ModelNotFoundError(
                f"{name}: {path} holds pickle weights only; pass allow_pickle=True (--allow-pickle) if you trust it"
            )
    elif str(spec).startswith((".", "/", "~")) or path.suffix in (".safetensors", ".pth", ".bin", ".ckpt", ".pt"):
        raise ModelNotFoundError(f"{name}: no such file or folder {str(spec)!r}")


def load_controlnet(
    spec: Any, *, torch_dtype: torch.dtype | None = None, allow_pickle: bool = False, name: str = "controlnet"
) -> torch.nn.Module:
    """One ControlNet from ``spec`` (see the module docstring)."""
    if isinstance(spec, torch.nn.Module):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"{name} must be {_KINDS}, got {type(spec).__name__}")
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    if isinstance(spec, RepoId):  # named by a scene: the hub's snapshot, never a folder here
        spec = hub_folder(spec, name, allow_pickle)
    spec = _resolve(spec)
    check_controlnet_source(spec, allow_pickle, name)
    path = Path(spec).expanduser()
    if path.is_file():
        cls = _file_class(path)
        try:
            return cls.from_single_file(str(path), **kwargs)
        except Exception as exc:  # diffusers needs the hub for a single file's config when not cached
            refused = refused_pickle(exc, name)
            if refused is not None:
                raise refused from None
            raise ModelNotFoundError(
                f"{name}: could not load {path.name} as a {cls.__name__} ({type(exc).__name__}); give its diffusers "
                "folder instead"
            ) from None
    if path.is_dir():
        cls = _net_class(str(path))
        try:
            return cls.from_pretrained(str(path), use_safetensors=None if allow_pickle else True, **kwargs)
        except OSError as exc:  # a pickle torch's safe loader refused: diffusers' message names the file twice
            refused = refused_pickle(exc, name)
            if refused is None:
                raise
            raise refused from None
    return _load_repo(str(spec), allow_pickle, name, **kwargs)


ZIMAGE_FILE_TENSOR = "control_all_x_embedder."
"""A tensor-name prefix only Z-Image ControlNet files hold (diffusers' own marker for them)."""


def _file_class(path: Path) -> type:
    """The ControlNet class of a single file: ``ZImageControlNetModel`` for a .safetensors file holding
    Z-Image's ControlNet tensors (only its header is read), else ``ControlNetModel``."""
    import diffusers
    from safetensors import safe_open

    if path.suffix != ".safetensors" or is_pickle_path(path):
        return diffusers.ControlNetModel
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
    except Exception:  # unreadable (safetensors raises its own types): diffusers' load below reports it
        return diffusers.ControlNetModel
    return diffusers.ZImageControlNetModel if has_tensors(names, ZIMAGE_FILE_TENSOR) else diffusers.ControlNetModel


def _net_class(source: str, **kwargs: Any) -> type:
    """The ControlNet class the config at ``source`` names (:data:`NET_CLASSES`), else ``ControlNetModel``."""
    import diffusers

    config = diffusers.ControlNetModel.load_config(source, **kwargs)
    name = config.get("_class_name")
    return getattr(diffusers, name) if name in NET_CLASSES else diffusers.ControlNetModel


def _load_repo(repo: str, allow_pickle: bool, name: str, **kwargs: Any) -> torch.nn.Module:

    use = {"use_safetensors": None if allow_pickle else True, **kwargs}
    try:
        return _net_class(repo, local_files_only=True).from_pretrained(repo, local_files_only=True, **use)
    except (OSError, ValueError):
        pass
    if hub_offline():
        raise ModelNotFoundError(f"{name}: " + how_to_get(repo))
    ask_hub_in_time(repo)
    return _net_class(repo).from_pretrained(repo, **use)


def load_controlnets(
    spec: Any, adapter: Any, *, torch_dtype: torch.dtype | None = None, allow_pickle: bool = False
) -> torch.nn.Module:
    """One ControlNet, or a diffusers multi-ControlNet model for a list (``MultiControlNetModel``;
    FLUX's and SD 3's own), each checked by the model's ``adapter`` and moved to its device and dtype."""
    import diffusers

    unet = adapter.unet

    if getattr(spec, "nets", None) is not None:  # a MultiControlNetModel: its nets, checked one by one
        spec = list(spec.nets)
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not specs:
        raise ValueError("controlnet must be a ControlNet or a non-empty list of them")
    nets = []
    for i, s in enumerate(specs):
        label = "controlnet" if len(specs) == 1 else f"controlnet[{i}]"
        net = load_controlnet(s, torch_dtype=torch_dtype or unet.dtype, allow_pickle=allow_pickle, name=label)
        net = adapter.adopt_controlnet(net.to(adapter.device, unet.dtype), label)
        nets.append(net)
    return nets[0] if len(nets) == 1 else getattr(diffusers, adapter.multi_controlnet)(nets)
