"""The Inpaint / Outpaint tab: upload an image, paint over what to repaint (or upload a mask), or
extend its sides; a 360-degree outpaint wraps the canvas around."""

from __future__ import annotations

from typing import Any

import gradio as gr

from multidiffusion.app.context import AppContext
from multidiffusion.app.handlers import generate_inpaint, load_inpaint_image, load_mask
from multidiffusion.app.inputs import MASK_COLOUR, editor_value, read_upload
from multidiffusion.app.settings import default_of
from multidiffusion.app.widgets import (
    PAGE_QUEUE,
    client_gone,
    guarded,
    message,
    model_dropdown,
    placement_controls,
    progress_steps,
    result_controls,
    sampling_controls,
    strength_slider,
)

__all__ = ["IMAGE_TYPES", "inpaint_tab"]

TASKS = [("Inpaint: repaint what you paint", "inpaint"), ("Outpaint: extend the sides", "outpaint")]
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"]
HOW_TO = """Upload an image, then **inpaint**: paint over what to repaint with the brush (white strokes;
the eraser takes them back) or upload a mask (white = repaint), and describe what goes there; or
**outpaint**: give the pixels to add on each side and describe the whole scene. *Circular (360°)*
with left and right makes a panorama that wraps around."""


def inpaint_tab(ctx: AppContext) -> dict[str, Any]:
    """The tab's form components by API name (what a PNG's settings fill in), ``task`` included;
    ``image`` is the upload's path, kept on the server (the page never sends a path)."""
    fields: dict[str, Any] = {}
    generate = _prompts(ctx, fields)
    fields.update(sampling_controls(ctx, "inpaint", None, placement_controls(ctx, "inpaint", "inpaint")))
    gr.Markdown(HOW_TO)
    fields["image"] = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            buttons = _editor(fields)
        with gr.Column(scale=2):
            buttons["outpaint_only"] = _task_settings(fields)
    buttons["generate"] = generate
    _wire(ctx, fields, buttons, result_controls("inpaint"))
    return fields


def _prompts(ctx: AppContext, fields: dict[str, Any]) -> Any:
    """The prompts, the task and the model; returns the Generate button."""
    with gr.Row():
        with gr.Column(scale=4):
            fields["prompt"] = gr.Textbox(
                label="Prompt",
                info="inpaint: what goes in the painted area; outpaint: the whole scene",
                placeholder="a red house in a green meadow",
                lines=2,
                elem_id="inpaint-prompt",
            )
            fields["negative_prompt"] = gr.Textbox(
                label="Negative prompt", placeholder="what the image should not show", elem_id="inpaint-negative"
            )
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id="inpaint-generate")
            fields["task"] = gr.Radio(TASKS, value="inpaint", label="Task", elem_id="inpaint-task")
            fields["model"] = model_dropdown(ctx, "inpaint")
    return generate


def _editor(fields: dict[str, Any]) -> dict[str, Any]:
    """The image editor (the mask is painted on the image) and its buttons, returned by name."""
    fields["mask"] = gr.ImageMask(
        type="pil",
        image_mode="RGBA",
        format="png",
        label="Image (inpaint: paint over what to repaint)",
        sources=[],  # images come through the upload button, whose file the checked loader reads
        brush=gr.Brush(colors=[MASK_COLOUR], default_color=MASK_COLOUR, color_mode="fixed"),
        layers=False,
        transforms=(),
        height=360,
        elem_id="inpaint-editor",
    )
    with gr.Row():
        upload = gr.UploadButton("Upload an image", file_types=IMAGE_TYPES, size="sm", elem_id="inpaint-upload")
        upload_mask = gr.UploadButton("Upload a mask", file_types=IMAGE_TYPES, size="sm", elem_id="inpaint-upload-mask")
        clear = gr.Button("Clear the mask", size="sm", elem_id="inpaint-clear")
    return {"upload": upload, "upload_mask": upload_mask, "clear": clear}


def _task_settings(fields: dict[str, Any]) -> Any:
    """Strength and mask blur, and outpaint's sides and overlap; returns the group shown for outpaint."""
    fields["strength"] = strength_slider(
        "inpaint", "inpaint", "1: repaint from noise; lower keeps some of what was there"
    )
    fields["mask_blur"] = _pixels("inpaint", "mask_blur", "Mask blur", "pixels of feathering at the mask's edge")
    with gr.Group(visible=False, elem_id="outpaint-only") as outpaint_only:
        side = "pixels to add, a multiple of 8"
        with gr.Row():
            for key in ("left", "right", "top", "bottom"):
                fields[key] = gr.Number(
                    value=0, label=key.capitalize(), info=side, precision=0, minimum=0, step=8,
                    elem_id=f"outpaint-{key}",
                )  # fmt: skip
        seam = "pixels of the image along each new side repainted too, so the seam blends"
        fields["overlap"] = _pixels("outpaint", "overlap", "Overlap", seam)
    return outpaint_only


def _pixels(task: str, key: str, label: str, info: str) -> Any:
    """A number of pixels (0 or more) starting at the task's default; its id is ``{task}-{key}``."""
    return gr.Number(value=default_of(task, key), label=label, info=info, precision=0, minimum=0,
                     elem_id=f"{task}-{key.replace('_', '-')}")  # fmt: skip


def _handlers(ctx: AppContext, fields: dict[str, Any]) -> dict[str, Any]:
    """What the tab's buttons, uploads and task choice do, by name."""

    def run(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> tuple[Any, Any, str]:  # noqa: B008
        values = {key: data[component] for key, component in fields.items()}
        out = generate_inpaint(values, pool=ctx.pool, limits=ctx.limits, store=ctx.store,
                               choices=ctx.task_choices(values.get("task") or "inpaint"),
                               on_step=progress_steps(progress), is_cancelled=client_gone())  # fmt: skip
        return str(out.path), gr.DownloadButton(value=str(out.path), visible=True), message("info", out.message)

    def load_image(path: str | None) -> tuple[Any, Any, str]:
        value, kept, note = load_inpaint_image(path, ctx.limits)
        return ctx.store.shown(value), kept, message("info", note)

    def load_mask_file(path: str | None, image: str | None) -> tuple[Any, str]:
        value, note = load_mask(path, image, ctx.limits)
        return ctx.store.shown(value), message("info", note)

    def clear_mask(image: str | None) -> tuple[Any, str]:
        return (ctx.store.shown(editor_value(read_upload(image, "image", ctx.limits).image)) if image else None), ""

    def show_task(task: str) -> Any:
        return gr.Group(visible=task == "outpaint")

    def task_defaults(task: str) -> tuple[Any, Any]:
        return gr.Slider(value=default_of(task, "strength")), gr.Number(value=default_of(task, "mask_blur"))

    return {"run": run, "load_image": load_image, "load_mask_file": load_mask_file, "clear_mask": clear_mask,
            "show_task": show_task, "task_defaults": task_defaults}  # fmt: skip


def _wire(ctx: AppContext, fields: dict[str, Any], buttons: dict[str, Any], out: tuple[Any, Any, Any]) -> None:
    """Connect the buttons, uploads and task choice to their handlers (generating one at a time, the
    light jobs on the page's queue)."""
    do = _handlers(ctx, fields)
    status, result, download = out
    buttons["generate"].click(
        guarded(do["run"], lambda msg: (gr.skip(), gr.skip(), msg)),
        inputs=set(fields.values()),
        outputs=[result, download, status],
        show_progress_on=result,
        concurrency_limit=1,
        concurrency_id="generate",
    )
    light = {"concurrency_limit": 1, "concurrency_id": PAGE_QUEUE}  # queued, like every job that does work
    buttons["upload"].upload(
        guarded(do["load_image"], lambda msg: (gr.skip(), gr.skip(), msg)),
        inputs=buttons["upload"],
        outputs=[fields["mask"], fields["image"], status],
        **light,
    )
    buttons["upload_mask"].upload(
        guarded(do["load_mask_file"], lambda msg: (gr.skip(), msg)),
        inputs=[buttons["upload_mask"], fields["image"]],
        outputs=[fields["mask"], status],
        **light,
    )
    buttons["clear"].click(
        guarded(do["clear_mask"], lambda msg: (gr.skip(), msg)),
        inputs=fields["image"],
        outputs=[fields["mask"], status],
        **light,
    )
    fields["task"].change(do["show_task"], inputs=fields["task"], outputs=buttons["outpaint_only"], **light)
    fields["task"].input(
        do["task_defaults"], inputs=fields["task"], outputs=[fields["strength"], fields["mask_blur"]], **light
    )  # a user's choice: not when a PNG's settings set the task
