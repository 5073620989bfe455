"""Start the page: one generation at a time (a queue), uploads capped, errors never as tracebacks."""

from __future__ import annotations

import atexit
import os
import shutil
from collections.abc import Sequence
from typing import Any

from multidiffusion.app.handlers import OutputStore
from multidiffusion.app.limits import Limits
from multidiffusion.app.models import Loader, ModelPool

__all__ = ["LOOPBACK", "create_app", "launch"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def create_app(models: Sequence[str], loader: Loader, limits: Limits, store: OutputStore | None = None) -> Any:
    """The Gradio Blocks for ``models`` (the first is loaded now, so a bad model fails at start)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    from multidiffusion.app.context import AppContext
    from multidiffusion.app.ui import build_app

    pool = ModelPool(models, loader)
    if store is None:
        store = OutputStore()
        atexit.register(shutil.rmtree, store.folder, ignore_errors=True)
    ctx = AppContext(pool, limits, store, pool.get().default_size)
    return build_app(ctx)


def launch(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    limits: Limits,
    queue_size: int = 16,
    block: bool = True,
) -> Any:
    """Serve ``app``: generations queue one at a time (at most ``queue_size`` waiting)."""
    from multidiffusion.app.widgets import CSS, THEME

    app.queue(max_size=queue_size, default_concurrency_limit=1)
    return app.launch(
        server_name=host,
        server_port=port,
        max_file_size=limits.max_upload_bytes,
        show_error=False,  # exceptions the handlers don't catch show as "Error", never a traceback
        ssr_mode=False,
        share=False,
        quiet=True,
        prevent_thread_lock=not block,
        theme=THEME,
        css=CSS,
        footer_links=["gradio"],
    )
