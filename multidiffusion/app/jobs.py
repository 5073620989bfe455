"""Cancelling a job: its client cancelled it or went away. A running job checks between denoising
steps (and while it waits for the model), stops with :class:`Cancelled`, and writes no PNG."""

from __future__ import annotations

from collections.abc import Callable

from multidiffusion.runner import Cancelled as EngineCancelled

__all__ = ["CancelCheck", "Cancelled", "check_cancelled"]

CancelCheck = Callable[[], bool]
"""Returns True once the job is to stop."""


class Cancelled(EngineCancelled):
    """The job was cancelled (by its client, or because the client went away). The engine's own
    :class:`~multidiffusion.runner.Cancelled`, raised between steps, is caught the same way."""

    def __init__(self, message: str = "the job was cancelled") -> None:
        super().__init__(message)


def check_cancelled(is_cancelled: CancelCheck | None) -> None:
    """Raise :class:`Cancelled` if ``is_cancelled()`` says so (``None``: the job can't be cancelled)."""
    if is_cancelled is not None and is_cancelled():
        raise Cancelled()
