"""What the page's buttons do, without Gradio: check the form, call the public API, write the PNG.

Errors a user can fix are ``ValueError`` with a message for the page (from the checks here or from
the library, which names the parameter and the allowed range); the UI layer shows them, and shows
anything else as a one-line internal error while the traceback goes to the server's log.

A generation holds its model for the whole run (:meth:`ModelPool.use`), checks ``is_cancelled``
between denoising steps, and stops with :class:`~.jobs.Cancelled` (writing no PNG) once it is true.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from multidiffusion.app.jobs import CancelCheck, Cancelled, check_cancelled
from multidiffusion.app.limits import Limits
from multidiffusion.app.models import ModelPool
from multidiffusion.app.settings import Choice, panorama_request, regions_request
from multidiffusion.metadata import save_png

__all__ = ["Cancelled", "OutputStore", "Result", "generate_panorama", "generate_regions", "preview_regions"]

StepCallback = Callable[[int, int], None]


class OutputStore:
    """Where results are written for the page to show and download: a private temporary folder
    that keeps the ``keep`` newest PNGs."""

    def __init__(self, folder: str | os.PathLike | None = None, keep: int = 32):
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="multidiffusion-app-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def save(self, image: Any, params: Mapping[str, Any], stem: str) -> Path:
        with self._lock:
            path = self.folder / f"{stem}-{int(time.time())}-{next(self._count)}.png"
        save_png(image, path, params)
        self._prune()
        return path

    def _prune(self) -> None:
        files = sorted(self.folder.glob("*.png"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[self.keep :]:
            old.unlink(missing_ok=True)


@dataclass
class Result:
    path: Path
    message: str
    preview: Any = None  # the layout preview (regions)


def _step_callback(on_step: StepCallback | None, total: int, is_cancelled: CancelCheck | None):
    """The API's ``callback_on_step_end``: stops a cancelled job (raising ends the run), moves the progress."""
    if on_step is None and is_cancelled is None:
        return None

    def callback(md: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        check_cancelled(is_cancelled)
        if on_step is not None:
            on_step(i + 1, total)
        return {}

    return callback


def _summary(image: Any, seed: int, seconds: float, stats: Any, extra: str = "") -> str:
    w, h = image.size
    calls = getattr(stats, "model_calls", None)
    return f"{w}×{h} px · seed {seed}{extra} · {seconds:.1f} s" + (
        f" · {calls} model calls" if calls is not None else ""
    )


def generate_panorama(
    values: Mapping[str, Any],
    *,
    pool: ModelPool,
    limits: Limits,
    store: OutputStore,
    choices: tuple[Choice, ...] = (),
    on_step: StepCallback | None = None,
    is_cancelled: CancelCheck | None = None,
) -> Result:
    """One panorama from the form's ``values`` (keys: API names, ``seed``, ``model``); ``Cancelled``
    once ``is_cancelled()`` is true (checked while waiting for the model and between steps)."""
    request = panorama_request(values, limits, pool, choices)
    steps = request.kwargs["num_inference_steps"]
    with pool.use(request.model, is_cancelled) as md:
        start = time.perf_counter()
        out = md.panorama(
            generator=torch.Generator("cpu").manual_seed(request.seed),
            callback_on_step_end=_step_callback(on_step, steps, is_cancelled),
            **request.kwargs,
        )
        seconds = time.perf_counter() - start
    check_cancelled(is_cancelled)  # cancelled while decoding: no PNG
    image = out.images[0]
    # the model as this server names it, so the PNG loads back into the page
    path = store.save(image, {**out.parameters, "model": request.model}, "panorama")
    return Result(path, _summary(image, request.seed, seconds, out.stats))


def _layout(md: Any, kwargs: Mapping[str, Any]) -> Any:
    return md.region_layout(kwargs["height"], kwargs["width"], kwargs.get("background"), kwargs["regions"])


def preview_regions(values: Mapping[str, Any], *, pool: ModelPool, limits: Limits) -> Any:
    """The layout preview (what each prompt controls, on the model's latent grid) as a PIL image."""
    request = regions_request(values, limits, pool)
    with pool.use(request.model) as md:
        return _layout(md, request.kwargs).preview()


def generate_regions(
    values: Mapping[str, Any],
    *,
    pool: ModelPool,
    limits: Limits,
    store: OutputStore,
    on_step: StepCallback | None = None,
    is_cancelled: CancelCheck | None = None,
) -> Result:
    """One image from the Regions tab: the layout's regions, the boxes, the background prompt;
    ``Cancelled`` as :func:`generate_panorama`."""
    request = regions_request(values, limits, pool)
    steps = request.kwargs["num_inference_steps"]
    with pool.use(request.model, is_cancelled) as md:
        preview = _layout(md, request.kwargs).preview()  # validates the layout before any sampling
        start = time.perf_counter()
        out = md.regions(
            generator=torch.Generator("cpu").manual_seed(request.seed),
            callback_on_step_end=_step_callback(on_step, steps, is_cancelled),
            **request.kwargs,
        )
        seconds = time.perf_counter() - start
    check_cancelled(is_cancelled)
    image = out.images[0]
    path = store.save(image, {**out.parameters, "model": request.model}, "regions")
    count = len(request.kwargs["regions"])
    extra = f" · {count} region{'s' if count != 1 else ''}"
    return Result(path, _summary(image, request.seed, seconds, out.stats, extra), preview)
