"""Pieces of the page both tabs use: messages, error handling, the sampling controls."""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from multidiffusion.app.cancel import CancelCheck, Cancelled
from multidiffusion.app.context import AppContext
from multidiffusion.app.settings import default_of, random_seed
from multidiffusion.engine.schedulers import SCHEDULERS
from multidiffusion.options import MIN_SIDE

__all__ = [
    "CSS",
    "DEFAULT_STEPS",
    "PAGE_QUEUE",
    "THEME",
    "client_gone",
    "control_controls",
    "guarded",
    "message",
    "model_dropdown",
    "placement_controls",
    "progress_steps",
    "result_controls",
    "sampling_controls",
    "strength_slider",
]

log = logging.getLogger("multidiffusion.app")

DEFAULT_STEPS = 25
"""The Steps slider's starting value: what the command line's examples (20-25) and the demo model's
evaluation (``demo/model/evaluation.json``: 25) use, and enough for SD's DDIM. A call that leaves
the steps unset (the API, ``multidiffusion`` without ``--steps``) takes the model family's default
(50 for SD); a form always sends a number."""

PAGE_QUEUE = "page"
"""The queue of the page's light jobs (colour tables, maps, uploads, settings): one at a time, beside
generations."""

CSS = """
.md-message { padding: 0.4em 0.8em; border-radius: 6px; min-height: 1.6em; }
.md-message.error { background: #fdecea; color: #8a1c12; border: 1px solid #f5c2bd; }
.md-message.info { background: #eef6ee; color: #1d4d1f; border: 1px solid #c8e2c9; }
.md-message.note { background: #fff8e1; color: #6b4e00; border: 1px solid #f0dc9b; }
.md-result img { width: 100%; height: 100%; object-fit: contain; }  /* small images shown large */
"""

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
THEME = gr.themes.Soft(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])  # no web fonts: works offline


def message(kind: str, text: str) -> str:
    """A message for the page: kind is 'error', 'info' or 'note'; the text is escaped."""
    return f'<div class="md-message {kind}">{html.escape(text)}</div>' if text else ""


def guarded(fn: Callable[..., Any], on_error: Callable[[str], Any]) -> Callable[..., Any]:
    """``fn``, with a ValueError shown as its message, a cancelled job as a note, and other failures
    as one line (the traceback goes to the server's log, never to the browser)."""

    @functools.wraps(fn)  # Gradio reads the signature (gr.Progress) through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Cancelled:
            log.info("a job was cancelled by its client")
            return on_error(message("note", "Cancelled."))
        except ValueError as exc:
            return on_error(message("error", str(exc)))
        except Exception as exc:  # an internal failure
            log.exception("request failed")
            return on_error(message("error", f"internal error ({type(exc).__name__}); details are in the server log"))

    return run


def client_gone() -> CancelCheck:
    """For a handler that Gradio's queue is running: a check that turns true once its client cancels
    the job (Gradio then drops the event from its running jobs, though the handler's thread goes on)
    or goes away (Gradio marks the event no longer alive). Call it in the handler's thread.

    Gradio (6.31) tells a plain function neither, so this reads its queue: the running events and
    their ``alive`` flag. Outside a queued event (a direct call, a test) the job is never cancelled.
    """
    from gradio.context import LocalContext

    queue = getattr(LocalContext.blocks.get(None), "_queue", None)
    event_id = LocalContext.event_id.get(None)

    def event() -> Any:
        for job in getattr(queue, "active_jobs", None) or ():
            for evt in job or ():
                if getattr(evt, "_id", None) == event_id:
                    return evt
        return None

    if queue is None or event_id is None or event() is None:
        return lambda: False

    def gone() -> bool:
        evt = event()
        return evt is None or not getattr(evt, "alive", True)

    return gone


def progress_steps(progress: Any) -> Callable[[int, int], None]:
    """A step callback that moves Gradio's progress bar."""
    progress(0, desc="loading the model")

    def on_step(i: int, total: int) -> None:
        progress((i, total), desc="denoising" if i < total else "decoding", unit="steps")

    return on_step


def model_dropdown(ctx: AppContext, prefix: str) -> Any:
    return gr.Dropdown(
        list(ctx.pool.names),
        value=ctx.pool.default,
        label="Model",
        info="chosen when the server started",
        interactive=len(ctx.pool.names) > 1,
        elem_id=f"{prefix}-model",
    )


def sampling_controls(
    ctx: AppContext,
    prefix: str,
    size: tuple[int, int] | None,
    extra: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Canvas size (none when ``size`` is None: an image tab's canvas is its input's), steps,
    guidance, seed (and its dice), scheduler, circular, windows; ``extra`` adds a tab's own controls
    to the seed row. Component ids are ``{prefix}-{name}``."""
    limits = ctx.limits
    fields: dict[str, Any] = {}
    with gr.Row():
        if size is not None:
            height, width = size
            side_info = f"pixels, a multiple of 8, {MIN_SIDE} to {limits.max_side}"
            fields["width"] = gr.Number(
                value=width, label="Width", info=side_info, precision=0, elem_id=f"{prefix}-width"
            )
            fields["height"] = gr.Number(
                value=height, label="Height", info=side_info, precision=0, elem_id=f"{prefix}-height"
            )
        fields["num_inference_steps"] = gr.Slider(
            1,
            limits.max_steps,
            value=min(DEFAULT_STEPS, limits.max_steps),
            step=1,
            label="Steps",
            elem_id=f"{prefix}-steps",
        )
        fields["guidance_scale"] = gr.Slider(0, 20, value=7.5, step=0.5, label="Guidance", elem_id=f"{prefix}-guidance")
    with gr.Row(equal_height=True):
        with gr.Column(min_width=220):
            fields["seed"] = gr.Number(
                value=-1, label="Seed", info="-1: a new random seed each time", precision=0, elem_id=f"{prefix}-seed"
            )
            dice = gr.Button("Random seed", size="sm", elem_id=f"{prefix}-dice")
        fields["scheduler"] = gr.Dropdown(
            list(SCHEDULERS), value="ddim", label="Scheduler", elem_id=f"{prefix}-scheduler"
        )
        fields["circular"] = gr.Checkbox(
            label="Circular (360°)", info="wraps around the left and right edges", elem_id=f"{prefix}-circular"
        )
        if extra is not None:
            extra(fields)
    with gr.Accordion("Windows", open=False), gr.Row():
        fields["window"] = gr.Textbox(
            label="Window", info="latent pixels, N or ROWSxCOLUMNS; empty: the model's native size"
        )
        fields["stride"] = gr.Textbox(label="Stride", info="latent pixels; empty: window / 8 (the paper's)")
    dice.click(random_seed, outputs=fields["seed"], queue=False)
    return fields


def strength_slider(task: str, prefix: str, info: str) -> Any:
    """The Strength slider of an image task, starting at the task's default."""
    return gr.Slider(0.01, 1, value=default_of(task, "strength"), step=0.01, label="Strength", info=info,
                     elem_id=f"{prefix}-strength")  # fmt: skip


def placement_controls(ctx: AppContext, prefix: str, task: str) -> Callable[[dict[str, Any]], None]:
    """For :func:`sampling_controls`' ``extra``: the task's optional drop-downs (the fast mode's
    placement, window weights), when its ``MultiDiffusion`` method takes them."""

    def add(row: dict[str, Any]) -> None:
        for choice in ctx.task_choices(task):
            row[choice.key] = gr.Dropdown(list(choice.choices), value=choice.choices[0], label=choice.label,
                                          info=choice.info, elem_id=f"{prefix}-{choice.key}")  # fmt: skip

    return add


def result_controls(prefix: str) -> tuple[Any, Any, Any]:
    """The message line, the result image and its download button (the PNG with its settings)."""
    status = gr.HTML(elem_id=f"{prefix}-message")
    result = gr.Image(
        label="Result",
        type="filepath",
        format="png",
        interactive=False,
        height=320,
        elem_id=f"{prefix}-result",
        elem_classes="md-result",
    )
    download = gr.DownloadButton("Download PNG (with its settings)", visible=False, elem_id=f"{prefix}-download")
    return status, result, download


def control_controls(ctx: AppContext, prefix: str) -> dict[str, Any]:
    """The control image upload, its preprocessor and a preview of the control map, by API name;
    none when the served models have no ControlNet (``serve --controlnet``). The upload is read by
    the checked loader, for the preview as for the run."""
    if not ctx.controlnet:
        return {}
    from multidiffusion.app.handlers import preview_control
    from multidiffusion.preprocessors import PREPROCESSORS

    fields: dict[str, Any] = {}
    with gr.Accordion("ControlNet", open=True, elem_id=f"{prefix}-controlnet"), gr.Row():
        fields["control_image"] = gr.Image(
            label="Control image",
            type="filepath",  # the upload's path: read by the checked loader, not decoded by Gradio
            image_mode=None,
            sources=["upload"],
            height=200,
            elem_id=f"{prefix}-control-image",
        )
        with gr.Column():
            fields["control_preprocessor"] = gr.Dropdown(
                list(PREPROCESSORS),
                value="none",
                label="Preprocessor",
                info="none: the upload is the control map; canny: its edges; tile: blurred (Tile ControlNet)"
                + ("; without an upload, an upscale conditions on its resized input" if prefix == "upscale" else ""),
                elem_id=f"{prefix}-control-preprocessor",
            )
            note = gr.HTML(elem_id=f"{prefix}-control-message")
        preview = gr.Image(
            label="Control map", interactive=False, height=200, elem_id=f"{prefix}-control-preview", format="png"
        )

    def show(path: str | None, preprocessor: str) -> tuple[Any, str]:
        return ctx.store.shown(preview_control(path, preprocessor, ctx.limits)), ""

    light = {"concurrency_limit": 1, "concurrency_id": PAGE_QUEUE}
    for event in (fields["control_image"].change, fields["control_preprocessor"].change):
        event(
            guarded(show, lambda msg: (None, msg)),
            inputs=[fields["control_image"], fields["control_preprocessor"]],
            outputs=[preview, note],
            **light,
        )
    return fields
