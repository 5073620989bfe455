"""Start the page: one generation at a time (a queue), uploads capped, errors never as tracebacks.

The server's results go to a temporary folder that is removed when it stops: at a normal exit, and
on SIGTERM or SIGINT (Ctrl+C), whose handlers remove it and then do what was done before them.
``multidiffusion serve`` first makes one private folder (:func:`private_temp_folder`, mode 0700: no
other local user can list or read what is inside) that holds it, Gradio's copies of every result and
every upload (``GRADIO_TEMP_DIR``) and anything else made with :mod:`tempfile`, all removed at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from multidiffusion.app.handlers import OutputStore
from multidiffusion.app.limits import ServerLimits
from multidiffusion.app.models import Loader, ModelPool
from multidiffusion.app.upscalers import Upscalers

__all__ = [
    "LOOPBACK",
    "create_app",
    "launch",
    "limit_decoded_pixels",
    "private_temp_folder",
    "remove_at_exit",
    "remove_on_signals",
]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("multidiffusion.app")

_temporary: list[Path] = []  # folders to remove when the server stops
_signals_installed = False


def _remove_temporary() -> None:
    while _temporary:
        shutil.rmtree(_temporary.pop(), ignore_errors=True)


def remove_at_exit(folder: str | os.PathLike) -> None:
    """Remove ``folder`` when this process exits normally (see :func:`remove_on_signals` for signals)."""
    if not _temporary:
        atexit.register(_remove_temporary)
    _temporary.append(Path(folder))


def private_temp_folder() -> Path:
    """A new folder only this user can enter (``tempfile.mkdtemp``: mode 0700), made the process's
    temporary folder (``tempfile.tempdir``: the server's results go there) and Gradio's
    (``GRADIO_TEMP_DIR``: its copies of results and the uploads), removed at exit and on SIGTERM or
    SIGINT once :func:`remove_on_signals` is installed. Call it before Gradio is imported: some of its
    modules read ``GRADIO_TEMP_DIR`` once, at import."""
    if "gradio" in sys.modules:
        raise RuntimeError("private_temp_folder() must run before gradio is imported (it reads GRADIO_TEMP_DIR then)")
    folder = Path(tempfile.mkdtemp(prefix="multidiffusion-serve-"))
    os.chmod(folder, 0o700)  # mkdtemp's mode already; said here, as the point of the folder
    remove_at_exit(folder)
    gradio = folder / "gradio"
    gradio.mkdir(mode=0o700)
    os.environ["GRADIO_TEMP_DIR"] = str(gradio)
    tempfile.tempdir = str(folder)
    return folder


def _on_signal(previous: Any):
    def handler(signum: int, frame: Any) -> None:
        _remove_temporary()
        if callable(previous):  # e.g. Python's SIGINT handler: KeyboardInterrupt, and Gradio closes
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # the default: end the process as the signal would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handler


def remove_on_signals() -> None:
    """On SIGTERM and SIGINT, remove the temporary folders, then do what the previous handler did
    (only from the main thread, once; a signal that was ignored stays ignored)."""
    global _signals_installed
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        previous = signal.getsignal(signum)
        if previous != signal.SIG_IGN:
            signal.signal(signum, _on_signal(previous))
    _signals_installed = True


async def _client_went_away(request: Any, exc: Exception) -> Any:
    """A client that went away mid-request (a page closed or reloaded while its image editor was
    uploading): nothing to answer, and no traceback for the log (Gradio's upload route lets
    Starlette's ClientDisconnect through, and uvicorn logs it as an error of the application)."""
    from starlette.responses import Response

    log.info("a client went away during %s", request.url.path)
    return Response(status_code=400)


def create_app(
    models: Sequence[str],
    loader: Loader,
    limits: ServerLimits,
    store: OutputStore | None = None,
    upscalers: Upscalers | None = None,
    controlnet: bool | None = None,
) -> Any:
    """The Gradio Blocks for ``models`` (the first is loaded now, so a bad model fails at start);
    ``upscalers``: the upscaler model files the operator offers besides the filters (checked already);
    ``controlnet``: whether the tabs offer a control image (default: whether the first model has a
    ControlNet)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    from multidiffusion.app.context import AppContext
    from multidiffusion.app.ui import build_app

    pool = ModelPool(models, loader)
    if store is None:
        store = OutputStore()
        remove_at_exit(store.folder)
    first = pool.get()
    if controlnet is None:
        controlnet = bool(getattr(getattr(first, "adapter", None), "controlnets", None))
    ctx = AppContext(pool, limits, store, first.default_size, upscalers or Upscalers(), controlnet)
    return build_app(ctx)


def limit_decoded_pixels(limits: ServerLimits) -> None:
    """Make PIL refuse, in this process, images of more than twice the pixels of a square of
    ``--max-side`` (and warn above one such square): Gradio decodes what its image editors send
    before any handler sees it, and a small PNG can declare a huge canvas. The library's own loader
    checks its limits before decoding, whatever this says; it is never raised above PIL's default.
    For the same reason PIL forgets every format but the loader's
    (:func:`~multidiffusion.io.image_loader.restrict_decoders`): an EPS sent to an image editor
    would otherwise be run through Ghostscript by Gradio's decoding."""
    from PIL import Image

    from multidiffusion.io.image_loader import restrict_decoders

    restrict_decoders()
    cap = limits.max_side * limits.max_side
    if Image.MAX_IMAGE_PIXELS is None or cap < Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = cap


def launch(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    limits: ServerLimits,
    queue_size: int = 16,
    block: bool = True,
) -> Any:
    """Serve ``app``: generations queue one at a time (at most ``queue_size`` waiting). ``host`` is
    a name or an IPv4 or IPv6 address (``::1``); ``block=True`` also installs :func:`remove_on_signals`."""
    from starlette.requests import ClientDisconnect

    from multidiffusion.app.widgets import CSS, THEME

    app.queue(max_size=queue_size, default_concurrency_limit=1)
    limit_decoded_pixels(limits)
    if block:
        remove_on_signals()
    return app.launch(
        server_name=f"[{host}]" if ":" in host and not host.startswith("[") else host,  # IPv6: Gradio's URL form
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
        app_kwargs={"exception_handlers": {ClientDisconnect: _client_went_away}},
    )
