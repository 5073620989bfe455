"""The models a server offers: a fixed list chosen by the operator at start (``--model``, repeated).

The page only ever sends one of these names back; anything else is refused, so no path typed in a
browser reaches the file system. One model is kept in memory at a time: choosing another unloads
the previous one (large checkpoints don't fit twice on most machines).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ModelPool"]

Loader = Callable[[str], Any]


class ModelPool:
    """``names`` in the order the page lists them; ``loader(name)`` builds a ``MultiDiffusion``."""

    def __init__(self, names: Sequence[str], loader: Loader):
        names = list(dict.fromkeys(names))  # keep order, drop repeats
        if not names:
            raise ValueError("at least one model is needed (--model)")
        self.names: tuple[str, ...] = tuple(names)
        self._loader = loader
        self._lock = threading.Lock()
        self._loaded: tuple[str, Any] | None = None

    @property
    def default(self) -> str:
        return self.names[0]

    def check(self, name: object) -> str:
        """``name`` if this server offers it; ValueError otherwise (never a path from the page)."""
        if name is None or name == "":
            return self.default
        if not isinstance(name, str) or name not in self.names:
            raise ValueError(f"model must be one of {', '.join(map(repr, self.names))} (chosen at server start)")
        return name

    def get(self, name: object = None) -> Any:
        """The loaded model ``name`` (loading it, and unloading the previous one, if needed)."""
        name = self.check(name)
        with self._lock:
            if self._loaded is None or self._loaded[0] != name:
                self._loaded = None  # free the previous model before loading the next
                self._loaded = (name, self._loader(name))
            return self._loaded[1]
