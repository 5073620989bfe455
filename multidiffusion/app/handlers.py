"""What the page's buttons do, without Gradio: check the form, call the public API, write the PNG.

Errors a user can fix are ``ValueError`` with a message for the page (from the checks here or from
the library, which names the parameter and the allowed range); the UI layer shows them, and shows
anything else as a one-line internal error while the traceback goes to the server's log.

A generation holds its model for the whole run (:meth:`ModelPool.use`), checks ``is_cancelled``
between denoising steps, and stops with :class:`~multidiffusion.runner.Cancelled` (writing no PNG) once it is true.
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

from multidiffusion.app.cancel import CancelCheck, Cancelled
from multidiffusion.app.inputs import editor_value, mask_layer, read_upload
from multidiffusion.app.limits import ServerLimits
from multidiffusion.app.models import ModelPool
from multidiffusion.app.settings import (
    Choice,
    Request,
    inpaint_request,
    panorama_request,
    regions_request,
    steps_that_run,
    upscale_request,
)
from multidiffusion.app.upscalers import Upscalers
from multidiffusion.files.metadata import save_png
from multidiffusion.generation import run_and_save

__all__ = [
    "Cancelled",
    "OutputStore",
    "Result",
    "check_texts",
    "generate_inpaint",
    "generate_panorama",
    "generate_regions",
    "generate_upscale",
    "load_inpaint_image",
    "load_mask",
    "preview_control",
    "preview_regions",
]

StepCallback = Callable[[int, int], None]

TEXT_KEYS = ("prompt", "negative_prompt", "background")
"""Form fields that are one text box each: the library takes a list of prompts (a batch), a web
request may not, so anything but text there is refused by name."""


def check_texts(values: Mapping[str, Any]) -> None:
    """Refuse a request whose text boxes hold anything but text (a list or a dict sent over HTTP)."""
    if not isinstance(values, Mapping):
        raise ValueError(f"the form must be a table of fields, got a {type(values).__name__}")
    for key in TEXT_KEYS:
        value = values.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{key} must be text, got a {type(value).__name__}")


class OutputStore:
    """Where results are written for the page to show and download: a private temporary folder
    that keeps the ``keep`` newest PNGs."""

    def __init__(self, folder: str | os.PathLike | None = None, keep: int = 32):
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="multidiffusion-app-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.keep_shown = 64  # pictures handed to the page (previews, canvases): Gradio copies them at once
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def path(self, stem: str) -> Path:
        """A fresh path for a result (written by :func:`multidiffusion.generation.run_and_save`)."""
        with self._lock:
            return self.folder / f"{stem}-{int(time.time())}-{next(self._count)}.png"

    def save(self, image: Any, params: Mapping[str, Any], stem: str) -> Path:
        path = save_png(image, self.path(stem), params)
        self._prune()
        return path

    def shown(self, value: Any) -> Any:
        """``value`` (an image, or a dict / list / tuple holding images, as an image editor takes)
        with each PIL image written to its own PNG in ``shown/`` and replaced by that file's path.

        Why: Gradio (6.31) caches a returned PIL image under a name made from its bytes and rewrites
        that file in place every time, so the same picture returned twice (a layout previewed
        twice, a blank canvas) is rewritten while the browser may still be reading it, and the
        server fails the download ("Too little data for declared Content-Length"). A path is
        copied into the cache once, whole, under a temporary name; so the page gets paths."""
        from PIL import Image

        if isinstance(value, Image.Image):
            folder = self.folder / "shown"
            folder.mkdir(exist_ok=True)
            with self._lock:
                name = f"shown-{next(self._count)}.png"
            path = save_png(value, folder / name)
            _keep_newest(folder, self.keep_shown)
            return str(path)
        if isinstance(value, dict):
            return {key: self.shown(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.shown(item) for item in value)
        return value

    def _prune(self) -> None:
        _keep_newest(self.folder, self.keep)


def _keep_newest(folder: Path, keep: int) -> None:
    files = sorted(folder.glob("*.png"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


@dataclass
class Result:
    path: Path
    message: str
    preview: Any = None  # the layout preview (regions)


def _run(
    md: Any,
    request: Request,
    store: OutputStore,
    stem: str,
    on_step: Any,
    is_cancelled: Any,
    extra: Mapping[str, Any] | None = None,
    **context: Any,
):
    """The shells' one generation (seed -> generate -> PNG -> summary), cancellable between steps;
    the model is stored as this server names it, so the PNG loads back into the page. Progress
    counts the steps that run (an image task runs ``strength`` of them)."""

    def should_stop() -> bool:
        return is_cancelled is not None and bool(is_cancelled())

    running = steps_that_run(request.options.with_defaults(*md.adapter.sampling_defaults))
    step = None if on_step is None else lambda i, total: on_step(min(i, running), running)
    saved = run_and_save(  # a cancelled run raises Cancelled between steps
        md,
        request.options,
        store.path(stem),
        extra={"model": request.model, **(extra or {})},
        on_step=step,
        should_stop=should_stop,
        **context,
    )
    store._prune()
    return saved


def generate_panorama(
    values: Mapping[str, Any],
    *,
    pool: ModelPool,
    limits: ServerLimits,
    store: OutputStore,
    choices: tuple[Choice, ...] = (),
    on_step: StepCallback | None = None,
    is_cancelled: CancelCheck | None = None,
) -> Result:
    """One panorama from the form's ``values`` (keys: API names, ``seed``, ``model``); ``Cancelled``
    once ``is_cancelled()`` is true (checked while waiting for the model and between steps)."""
    check_texts(values)
    request = panorama_request(values, limits, pool, choices)
    with pool.use(request.model, is_cancelled) as md:
        saved = _run(md, request, store, "panorama", on_step, is_cancelled)
    return Result(saved.paths[0], saved.summary)


def preview_control(path: str | os.PathLike | None, preprocessor: str | None, limits: ServerLimits) -> Any:
    """The control map an uploaded control image makes with ``preprocessor`` (what the ControlNet
    sees, before it is resized to the canvas), as a PIL image; None without an upload. The upload
    goes through the checked loader (:func:`~.inputs.read_upload`)."""
    from multidiffusion.options import check_choice
    from multidiffusion.preprocessors import PREPROCESSORS, preprocess

    if path is None or path == "":
        return None
    name = check_choice("control_preprocessor", preprocessor or "none", tuple(PREPROCESSORS))
    return preprocess(read_upload(path, "control_image", limits).image, name)


def preview_regions(values: Mapping[str, Any], *, pool: ModelPool, limits: ServerLimits) -> Any:
    """The layout preview (what each prompt controls, on the model's latent grid) as a PIL image."""
    check_texts(values)
    request = regions_request(values, limits, pool)
    o = request.options
    with pool.use(request.model) as md:
        return md.region_layout(o.height, o.width, o.background, o.regions).preview()


def generate_regions(
    values: Mapping[str, Any],
    *,
    pool: ModelPool,
    limits: ServerLimits,
    store: OutputStore,
    on_step: StepCallback | None = None,
    is_cancelled: CancelCheck | None = None,
) -> Result:
    """One image from the Regions tab: the layout's regions, the boxes, the background prompt;
    ``Cancelled`` as :func:`generate_panorama`. The layout is rasterised once, for the preview
    and the run."""
    check_texts(values)
    request = regions_request(values, limits, pool)
    o = request.options
    with pool.use(request.model, is_cancelled) as md:
        layout = md.region_layout(o.height, o.width, o.background, o.regions)  # checked before sampling
        preview = layout.preview()
        saved = _run(md, request, store, "regions", on_step, is_cancelled, layout=layout)
    count = len(o.regions)
    return Result(saved.paths[0], f"{saved.summary} · {count} region{'s' if count != 1 else ''}", preview)


def generate_upscale(
    values: Mapping[str, Any],
    *,
    pool: ModelPool,
    limits: ServerLimits,
    store: OutputStore,
    upscalers: Upscalers | None = None,
    choices: tuple[Choice, ...] = (),
    on_step: StepCallback | None = None,
    is_cancelled: CancelCheck | None = None,
) -> Result:
    """One image from the Upscale tab: the uploaded ``image`` upscaled (``task`` "upscale") or
    re-worked at its size ("img2img"); ``Cancelled`` as :func:`generate_panorama`. The PNG names the
    upscaler as this server lists it."""
    upscalers = upscalers or Upscalers()
    check_texts(values)
    request = upscale_request(values, limits, pool, upscalers, choices)
    o: Any = request.options
    extra = {"upscaler": upscalers.name_of(o.upscaler)} if o.task == "upscale" else {}
    with pool.use(request.model, is_cancelled) as md:
        saved = _run(md, request, store, request.options.task, on_step, is_cancelled, extra)
    return Result(saved.paths[0], f"{_task_label(request)}: {saved.summary}")


def generate_inpaint(
    values: Mapping[str, Any],
    *,
    pool: ModelPool,
    limits: ServerLimits,
    store: OutputStore,
    choices: tuple[Choice, ...] = (),
    on_step: StepCallback | None = None,
    is_cancelled: CancelCheck | None = None,
) -> Result:
    """One image from the Inpaint / Outpaint tab: the uploaded ``image`` with the painted ``mask``
    repainted ("inpaint") or extended by ``left``, ``right``, ``top``, ``bottom`` ("outpaint")."""
    check_texts(values)
    request = inpaint_request(values, limits, pool, choices)
    with pool.use(request.model, is_cancelled) as md:
        saved = _run(md, request, store, request.options.task, on_step, is_cancelled)
    return Result(saved.paths[0], f"{_task_label(request)}: {saved.summary}")


def _task_label(request: Request) -> str:
    o: Any = request.options
    h, w = o.image.size
    if o.task == "upscale":
        return f"{w}x{h} px upscaled {o.scale:g}x"
    if o.task == "outpaint":
        return f"{w}x{h} px extended"
    return f"{w}x{h} px {'re-worked' if o.task == 'img2img' else 'inpainted'}"


def load_inpaint_image(path: str | os.PathLike | None, limits: ServerLimits) -> tuple[Any, str, str]:
    """An image uploaded to the Inpaint / Outpaint tab, checked: (the editor's value, the path the tab
    keeps on the server for the run, a note for the page)."""
    if not path:
        raise ValueError("image is required: upload an image")
    found = read_upload(path, "image", limits)
    h, w = found.size
    note = f"Loaded {found.path!r}, {w}×{h} px. Paint over what to repaint, or extend the sides (Outpaint)."
    return editor_value(found.image), str(path), note


def load_mask(path: str | os.PathLike | None, image: str | os.PathLike | None, limits: ServerLimits) -> tuple[Any, str]:
    """A mask file uploaded for the tab's image (white = repaint), as the editor's strokes over it."""
    if not image:
        raise ValueError("mask: upload the image first, then its mask")
    if not path:
        raise ValueError("mask is required: upload a mask image")
    value = mask_layer(path, read_upload(image, "image", limits), limits)
    return value, "Loaded the mask: its white is repainted. Paint more, or erase, on the image."
