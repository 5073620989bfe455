"""Trust levels: what a setting may open depends on who gave it, and the type of the value says so.

Every value that names a file or weights comes from one of three origins (:class:`Trust`):

- **typed** by the user: the command line, or the Python API. Read as given, from anywhere; these
  are the only paths ``--allow-pickle`` covers (:class:`TypedPath`: the command line's file names
  travel as this type, so a scene's or a PNG's plain string can never pass for one).
- **a file the user names**: a scene file or a batch file. Its file names are relative to its folder
  and confined to it (links resolved first; ``--allow-outside-files`` lifts the fence); a name that
  is not a file there and looks like ``org/name`` is a Hugging Face repo id (:class:`RepoId`), looked
  up on the hub and in its cache only, never as a folder of the current directory; pickles are never
  allowed, whatever the command line says.
- **stored** settings (a PNG's text chunk) and web requests, which anyone may have made: they name
  no file, folder, map or record path at all. Images travel embedded (PNG data URIs, within budgets);
  a model may be ``"demo"`` or a repo id (hub only); every other name is refused with one message
  that does not depend on what it points to (nothing is opened or looked up), saying what to give
  again. The model is the one name they may hold, and only as a hub repo id: it names public
  weights, loaded as safetensors only (never a pickle, never remote code) and never from a folder
  here, so the worst a stranger's PNG can do with it is ask for a download the user sees; asking
  for every image's model again would make ``--from`` useless for its main case.

:class:`Origin` is the one resolver the settings reader (:func:`~multidiffusion.files.scene.parse_scene`)
passes every such field through, so a new field that names a file gets the rule by being declared a
file, not by remembering it. The loaders take the types: a :class:`RepoId` is never looked up on
disk (:func:`multidiffusion.models.loading.load_pipeline`, ControlNets, LoRAs); an input image's
``{"path", "sha256"}`` record is opened only as a :class:`RecordedFile`, which only a scene file (or
the user) can produce; a plain record dict is refused.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from multidiffusion.io.messages import shown

__all__ = [
    "PICKLE_SUFFIXES",
    "SHIPPED_CONTROLNETS",
    "SHIPPED_MODELS",
    "WEIGHT_SUFFIXES",
    "Origin",
    "RecordedFile",
    "RepoId",
    "Trust",
    "TypedPath",
    "is_pickle_path",
    "is_record",
    "is_repo_id",
    "pickle_allowed",
    "typed_weights",
]

SHIPPED_MODELS = ("demo", "demo-lcm")
"""Models shipped with the package, loadable by name from anywhere (a stored setting included)."""
SHIPPED_CONTROLNETS = ("demo", "demo-tile")
"""ControlNets shipped with the package (the demo's layout and Tile nets), named as they are by a scene."""
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth", ".gguf", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
"""File endings of pickles: opening one can run code, so only a path the user typed, with
``--allow-pickle``, is ever unpickled."""
"""File endings of weights: a name ending so is a file, never a repo id."""


class Trust(IntEnum):
    """Who gave a value, from least to most trusted."""

    STORED = 0
    """Stored settings (a PNG's) and web requests: anyone may have made them."""
    FILE = 1
    """A scene or batch file the user names: files under its folder only."""
    TYPED = 2
    """Typed by the user: the command line, the Python API."""


class TypedPath(type(Path())):  # type: ignore[misc]  # the concrete PosixPath / WindowsPath
    """A file name the user typed on the command line: read as given (from anywhere), recorded
    absolute, and the only kind of path ``--allow-pickle`` covers (:func:`pickle_allowed`)."""


class RepoId(str):
    """A Hugging Face repo id named by a scene file or stored settings: loaded from the hub and its
    cache only, never looked up as a folder of the current directory (where anyone may have put an
    ``org/name`` folder)."""

    __slots__ = ()


@dataclass(frozen=True)
class RecordedFile:
    """An input image named by a file and the SHA-256 of its bytes (a scene's ``{ path = ..., sha256
    = ... }``, as our PNGs record inputs): the file is read, and used only if it still hashes to
    ``sha256``. Only a scene file (confined to its folder) or the user makes one; a plain record dict
    from stored settings is never opened."""

    path: str
    sha256: str

    def record(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}


def is_record(value: Any) -> bool:
    """Whether ``value`` has the shape of an input image's record as results store it:
    ``{"path": str, "sha256": 64 hex digits}``, or both None for an image given in memory. Nothing
    is opened."""
    if not isinstance(value, Mapping) or set(value) != {"path", "sha256"}:
        return False
    path, digest = value["path"], value["sha256"]
    if path is None and digest is None:
        return True
    return (
        isinstance(path, str)
        and bool(path)
        and "\0" not in path
        and isinstance(digest, str)
        and len(digest) == 64
        and all(c in "0123456789abcdefABCDEF" for c in digest)
    )


_REPO_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def is_repo_id(name: Any) -> bool:
    """True for what can only be a Hugging Face repo id: ``org/name`` of the hub's characters, no
    part starting with a dot, no weights file ending. Paths, file names and anything odd are not."""
    if not isinstance(name, str) or len(name) > 200:
        return False
    parts = name.split("/")
    return (
        len(parts) == 2
        and all(p and set(p) <= _REPO_CHARACTERS and not p.startswith(".") for p in parts)
        and Path(parts[1]).suffix.lower() not in WEIGHT_SUFFIXES
        and not name.endswith(".git")
    )


def is_pickle_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a pickle checkpoint (.ckpt, .bin, .pt, .pth in any case), or is a link to
    one; decided from names only, the file is not opened."""
    path = Path(path)
    suffixes = {path.suffix.lower()}
    with contextlib.suppress(OSError, RuntimeError):  # a link loop: the name is all there is
        suffixes.add(path.resolve().suffix.lower())
    return bool(suffixes & set(PICKLE_SUFFIXES))


def pickle_allowed(value: Any, allow_pickle: bool) -> bool:
    """Whether weights named by ``value`` may be unpickled: only with ``allow_pickle`` (the command
    line's ``--allow-pickle``) and only for a path the user typed on that command line."""
    return bool(allow_pickle) and isinstance(value, TypedPath)


def typed_weights(spec: str | os.PathLike) -> str | TypedPath:
    """Weights the user typed (``--model``, ``--controlnet``, ``--lora``): the shipped names ("demo",
    "demo-lcm", "demo-tile") and names that are no path here as given (a repo id); a path as an absolute
    :class:`TypedPath`."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if text in (*SHIPPED_MODELS, *SHIPPED_CONTROLNETS):
        return text
    if path.exists() or text.startswith((".", "/", "~")) or path.suffix in WEIGHT_SUFFIXES:
        return TypedPath(path.absolute())
    return text


def _path_text(path: str) -> str:
    """A file name for a message: whole (quoted) up to 200 characters, so that two names differ in the
    message only where they differ; longer (a hostile scene's) cut short."""
    return repr(path) if len(path) <= 200 else shown(path)


@dataclass(frozen=True)
class Origin:
    """Where a group of settings came from, and so what their names may open (module docstring).

    ``label`` starts messages ("scene.toml", "--from out.png", "the request"); ``base`` is a file
    origin's folder; ``allow_outside`` lifts its fence (``--allow-outside-files``)."""

    trust: Trust
    label: str = ""
    base: Path | None = None
    allow_outside: bool = False

    def __post_init__(self) -> None:
        if (self.trust == Trust.FILE) != (self.base is not None):
            raise ValueError("Origin: a file origin, and only a file origin, has a base folder")

    @classmethod
    def typed(cls, label: str = "") -> Origin:
        return cls(Trust.TYPED, label)

    @classmethod
    def file(cls, base: str | os.PathLike, label: str = "", allow_outside: bool = False) -> Origin:
        return cls(Trust.FILE, label, Path(base), allow_outside)

    @classmethod
    def stored(cls, label: str = "the stored settings") -> Origin:
        return cls(Trust.STORED, label)

    def at(self, message: str) -> str:
        """``message`` prefixed with this origin's label, if any."""
        return f"{self.label}: {message}" if self.label else message

    def _refuse_stored(self, field: str, again: str) -> ValueError:
        return ValueError(
            f"{field}: settings stored in a PNG or sent in a request name no files (only embedded images, the demo "
            f"or a Hugging Face repo id); {again or 'give it again'}"
        )

    def _confined(self, value: str, field: str) -> str:
        assert self.base is not None
        if "\0" in value:
            raise ValueError(f"{field}: a file name can't hold a NUL character")
        full = self.base / Path(value).expanduser()
        if not self.allow_outside:
            root = os.path.realpath(self.base)
            if os.path.commonpath([root, os.path.realpath(full)]) != root:
                raise ValueError(
                    f"{field} {_path_text(value)} is outside the scene's folder: a scene reads files under its own "
                    "folder (allow more with --allow-outside-files, or allow_outside=True)"
                )
        return os.path.abspath(full)

    def file_name(self, value: Any, field: str, again: str = "") -> Any:
        """A setting that names a file to read (a mask, a map, an input or control image, an upscaler
        model). A data URI is embedded data, from any origin; a :class:`TypedPath` or an object the
        caller put there (an image, an array) passes as given; a plain string is read as given when
        typed, under the folder when from a file, and refused when stored (``again`` says how to give
        it again)."""
        if not isinstance(value, str) or value.startswith("data:"):
            return value
        if self.trust == Trust.TYPED:
            return value
        if self.trust == Trust.STORED:
            raise self._refuse_stored(field, again)
        return self._confined(value, field)

    def recorded(self, value: Mapping[str, Any], field: str, again: str = "") -> Any:
        """An input's ``{"path", "sha256"}`` record: a :class:`RecordedFile` (its path resolved as
        :meth:`file_name` does) when typed or from a file; refused when stored (the PNG names a file
        on somebody's disk). A record of an image given in memory (both None) passes, for the options
        to say "give the image again"."""
        if not is_record(value):
            raise ValueError(
                f"{field} must be an image file, a PNG data URI or a table {{ path = ..., sha256 = ... }} (a stored "
                f"input's record), got {shown(dict(value))}"
            )
        if value["path"] is None:
            return dict(value)
        if self.trust == Trust.STORED:
            raise self._refuse_stored(field, again)
        path = value["path"] if self.trust == Trust.TYPED else self._confined(value["path"], field)
        return RecordedFile(path, value["sha256"].lower())

    def weights(self, value: str, field: str, again: str = "", shipped: tuple[str, ...] = ("demo",)) -> str | RepoId:
        """A setting that names weights (a model, a ControlNet, a LoRA). ``"demo"`` from anywhere;
        typed: as given. From a file: a name that exists under its folder or looks like a path (a
        ``./`` or ``/`` start, a weights ending) is a file there (confined); else a repo id
        (:class:`RepoId`, hub only); anything else is refused. Stored: ``"demo"`` or a repo id (hub
        only); a file is refused (``again`` says how to give it). ``shipped``: the names taken as they are
        (a model field passes :data:`SHIPPED_MODELS`)."""
        if not isinstance(value, str) or not value or "\0" in value:
            raise ValueError(f"{field} must be a name: 'demo', a file or a Hugging Face repo id, got {shown(value)}")
        if value in shipped or self.trust == Trust.TYPED:
            return value
        if self.trust == Trust.STORED:
            if is_repo_id(value):
                return RepoId(value)
            raise self._refuse_stored(field, again)
        assert self.base is not None
        path = Path(value).expanduser()
        looks_like_path = value.startswith((".", "/", "~")) or path.suffix.lower() in WEIGHT_SUFFIXES
        if looks_like_path or os.path.lexists(self.base / path):
            return self._confined(value, field)
        if is_repo_id(value):
            return RepoId(value)
        raise ValueError(
            f"{field} {shown(value)} is neither a file under the scene's folder nor a Hugging Face repo id (org/name)"
        )
