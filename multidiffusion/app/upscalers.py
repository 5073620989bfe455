"""The upscalers a server offers: PIL's resampling filters by name, plus the upscaler model files the
operator named at start (``multidiffusion serve --upscaler NAME=FILE``).

The page only ever sends one of these names back; anything else (a path typed or forged in a
browser) is refused without being looked at, so no file reaches the loader unless the operator
listed it. A configured file is checked when the server starts, and a pickle (.pth) only with the
operator's ``--allow-pickle``. Results record the name, not where the file lies.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from multidiffusion.options import UPSCALE_FILTERS, check_upscaler

__all__ = ["Upscalers", "parse_upscaler"]


def parse_upscaler(text: str) -> tuple[str, str]:
    """``NAME=FILE`` (or ``FILE``, named by its stem) as (name, file), for ``serve --upscaler``."""
    name, sep, path = text.partition("=")
    if not sep:
        name, path = os.path.splitext(os.path.basename(text))[0], text
    name = name.strip()
    if not name or not path:
        raise ValueError(f"--upscaler must be NAME=FILE or FILE, got {text!r}")
    return name, path


class Upscalers:
    """``files``: name -> model file (a mapping or (name, file) pairs), chosen by the operator and
    checked now; ``allow_pickle`` lets .pth files among them be unpickled (``--allow-pickle``)."""

    def __init__(
        self,
        files: Mapping[str, str | os.PathLike] | Iterable[tuple[str, str | os.PathLike]] | None = None,
        allow_pickle: bool = False,
    ):
        self.files: dict[str, str] = {}
        self.allow_pickle = allow_pickle
        pairs = files.items() if isinstance(files, Mapping) else files or ()
        for name, path in pairs:
            where = f"--upscaler {name}={os.fspath(path)}"
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"{where}: give the file a name (NAME=FILE)")
            if name.lower() in UPSCALE_FILTERS or name in self.files:
                raise ValueError(f"{where}: the name {name!r} is taken; give the file another (NAME=FILE)")
            try:
                self.files[name] = check_upscaler(os.fspath(path), allow_pickle)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None

    @property
    def names(self) -> tuple[str, ...]:
        """What the page lists: the filters (the first, lanczos, is the default), then the files."""
        return (*UPSCALE_FILTERS, *self.files)

    def resolve(self, name: object) -> tuple[str, bool]:
        """(what ``MultiDiffusion.upscale`` takes as ``upscaler``, its ``allow_pickle``) for a name the
        page sent; ValueError for anything this server does not offer."""
        if name is None or name == "":
            return UPSCALE_FILTERS[0], False
        if isinstance(name, str) and name.lower() in UPSCALE_FILTERS:
            return name.lower(), False
        if isinstance(name, str) and name in self.files:
            return self.files[name], self.allow_pickle
        raise ValueError(
            f"upscaler must be one of {', '.join(map(repr, self.names))} (this server's list), got {name!r}"
        )

    def name_of(self, stored: object) -> str | None:
        """The page's name for an upscaler stored in a PNG's settings (a filter, a name of this server's
        list, or one of its files' paths, bare or as the library's ``{"path", "sha256"}`` record); None
        when this server does not offer it. Nothing is opened."""
        if isinstance(stored, Mapping):
            stored = stored.get("path")
        if isinstance(stored, str) and stored.lower() in UPSCALE_FILTERS:
            return stored.lower()
        if isinstance(stored, str) and stored in self.files:
            return stored
        for name, path in self.files.items():
            if stored == path:
                return name
        return None
