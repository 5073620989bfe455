"""The models a server offers: a fixed list chosen by the operator at start (``--model``, repeated).

The page only ever sends one of these names back; anything else is refused, so no path typed in a
browser reaches the file system. One model is kept in memory at a time: choosing another unloads
the previous one (large checkpoints don't fit twice on most machines).

One lock guards the model: a job holds it (:meth:`ModelPool.use`) from loading to its last step, so
two generations never run on one model at once (the engine installs hooks on the UNet for a run).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from multidiffusion.app.cancel import CancelCheck, check_cancelled

__all__ = ["ModelPool"]

Loader = Callable[[str], Any]
WAIT_POLL_S = 0.25
"""How often a job waiting for the model checks whether it was cancelled meanwhile."""


class ModelPool:
    """``names`` in the order the page lists them; ``loader(name)`` builds a ``MultiDiffusion``."""

    def __init__(self, names: Sequence[str], loader: Loader):
        names = list(dict.fromkeys(names))  # keep order, drop repeats
        if not names:
            raise ValueError("at least one model is needed (--model)")
        self.names: tuple[str, ...] = tuple(names)
        self._loader = loader
        self._lock = threading.RLock()
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
        """The loaded model ``name`` (loading it, and unloading the previous one, if needed), for a
        look at it (its sizes); a job that runs it holds it with :meth:`use`."""
        with self.use(name) as md:
            return md

    @contextmanager
    def use(self, name: object = None, is_cancelled: CancelCheck | None = None) -> Iterator[Any]:
        """The model ``name``, held for the whole ``with`` block: other jobs wait until it ends (and
        no other model is loaded meanwhile). A job cancelled while it waits stops with ``Cancelled``."""
        name = self.check(name)
        while not self._lock.acquire(timeout=WAIT_POLL_S):
            check_cancelled(is_cancelled)
        try:
            check_cancelled(is_cancelled)
            if self._loaded is None or self._loaded[0] != name:
                self._loaded = None  # free the previous model before loading the next
                self._loaded = (name, self._loader(name))
            yield self._loaded[1]
        finally:
            self._lock.release()
