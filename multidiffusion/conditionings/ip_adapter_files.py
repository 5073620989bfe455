"""Where an IP-Adapter's weights come from: a folder (the weights file a regular file under it) or a
hub repo id, checked before diffusers' ``load_ip_adapter`` reads anything, and what results record
of them (a local file's name and SHA-256, a repo id as is)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multidiffusion.io.messages import shown
from multidiffusion.io.trust import is_repo_id

__all__ = ["check_weights_source", "loaded_files", "not_found"]


def _sources(source: Any, subfolder: Any, names: list[str]) -> list[tuple[Any, str, str]]:
    sources = source if isinstance(source, list) else [source] * len(names)
    folders = subfolder if isinstance(subfolder, list) else [subfolder] * len(names)
    return [(src, folder or "", name) for src, folder, name in zip(sources, folders, names)]


def check_weights_source(source: Any, subfolder: Any, names: list[str]) -> None:
    """``ValueError`` naming the IP-Adapter unless each source is a folder holding its weights file
    (a regular file: no device, FIFO or folder behind the name) or a hub repo id (``org/name``)."""
    if isinstance(source, dict):
        return
    for src, folder, name in _sources(source, subfolder, names):
        path, named = Path(str(src)).expanduser(), shown(str(src))
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"load_ip_adapter: {named} is not a folder (an IP-Adapter folder or hub repo id)")
            if not (path / folder / name).is_file():
                raise ValueError(f"load_ip_adapter: no weights file {shown(str(Path(folder) / name))} in {named}")
        elif not is_repo_id(str(src)):
            raise ValueError(f"load_ip_adapter: {named} is neither a folder nor a hub repo id (org/name)")


def not_found(source: Any, error: OSError) -> str:
    """The one-line refusal of a repo id diffusers could not get (offline, or not on the hub)."""
    from multidiffusion.models.hub import how_to_get

    return f"load_ip_adapter: {how_to_get(str(source), type(error).__name__)}"


def loaded_files(source: Any, subfolder: Any, names: list[str]) -> list[dict[str, Any]]:
    """What results record of the loaded weights: a local file's name and SHA-256, a repo id as is."""
    from multidiffusion.models.files import sha256_file

    if isinstance(source, dict):
        return [{"file": "a state dict"}]
    out = []
    for src, folder, name in _sources(source, subfolder, names):
        path = Path(str(src)).expanduser() / folder / name
        if path.is_file():
            out.append({"file": name, "sha256": sha256_file(path)})
        else:
            out.append({"repo": str(src), "subfolder": folder, "file": name})
    return out
