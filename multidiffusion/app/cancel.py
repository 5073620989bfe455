"""Cancelling a request: its client cancelled it or went away. A running generation checks between
denoising steps (and while it waits for the model) and stops with the runner's
:class:`~multidiffusion.runner.Cancelled`, writing no PNG."""

from __future__ import annotations

from collections.abc import Callable

from multidiffusion.runner import Cancelled

__all__ = ["CancelCheck", "Cancelled", "check_cancelled"]

CancelCheck = Callable[[], bool]
"""Returns True once the request is to stop."""


def check_cancelled(is_cancelled: CancelCheck | None) -> None:
    """Raise :class:`Cancelled` if ``is_cancelled()`` says so (``None``: the request can't be cancelled)."""
    if is_cancelled is not None and is_cancelled():
        raise Cancelled("the request was cancelled")
