"""The Upscale tab: an uploaded image upscaled (resized by a filter, then re-worked by MultiDiffusion
over windows), or re-worked at its size (img2img)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from multidiffusion.app.context import AppContext
from multidiffusion.app.handlers import generate_upscale
from multidiffusion.app.inpaint_tab import IMAGE_TYPES
from multidiffusion.app.inputs import read_upload
from multidiffusion.app.settings import default_of
from multidiffusion.app.widgets import (
    PAGE_QUEUE,
    client_gone,
    control_controls,
    guarded,
    message,
    model_dropdown,
    placement_controls,
    progress_steps,
    result_controls,
    sampling_controls,
    strength_slider,
)
from multidiffusion.options import MAX_SCALE

__all__ = ["upscale_tab"]

TASKS = [("Upscale", "upscale"), ("Re-work at its size (img2img)", "img2img")]
UPLOAD_LABEL = "Upload the image to re-work"  # not the Inpaint tab's label: a page test finds each by its label
HOW_TO = """Upload an image. **Upscale** resizes it by *scale* with the upscaler, then re-works it from
*strength* under the prompt (optional: a few words of what it shows help); **img2img** re-works it
at its size under the prompt. Low strength keeps the image, high strength re-draws it. The fast mode
(window placement *shifted*) pays most on large images."""


def upscale_tab(ctx: AppContext) -> dict[str, Any]:
    """The tab's form components by API name (what a PNG's settings fill in), ``task`` included."""
    fields: dict[str, Any] = {}
    parts = _inputs(ctx, fields)
    parts["upscale_only"] = _task_settings(ctx, fields)
    fields.update(sampling_controls(ctx, "upscale", None, placement_controls(ctx, "upscale", "upscale")))
    fields.update(control_controls(ctx, "upscale"))
    _wire(ctx, fields, parts, result_controls("upscale"))
    return fields


def _inputs(ctx: AppContext, fields: dict[str, Any]) -> dict[str, Any]:
    """The image's upload and preview, the prompts, the task and the model; the preview, the upload
    button and the Generate button by name."""
    with gr.Row():
        with gr.Column(scale=2, min_width=240):
            # the upload's path, kept on the server: Gradio's image component would open every upload with
            # PIL before any handler ran (hostile files failed there, shown as a bare "Error"), so the file
            # comes through an upload button and only the checked loader reads it
            fields["image"] = gr.State(None)
            preview = gr.Image(
                label="Input image", sources=[], interactive=False, height=240, elem_id="upscale-preview"
            )
            upload = gr.UploadButton(UPLOAD_LABEL, file_types=IMAGE_TYPES, size="sm", elem_id="upscale-image")
        with gr.Column(scale=3):
            fields["prompt"] = gr.Textbox(
                label="Prompt",
                info="optional when upscaling; img2img needs one",
                placeholder="a mountain village at dusk",
                lines=2,
                elem_id="upscale-prompt",
            )
            fields["negative_prompt"] = gr.Textbox(
                label="Negative prompt", placeholder="what the image should not show", elem_id="upscale-negative"
            )
            gr.Markdown(HOW_TO)
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id="upscale-generate")
            fields["task"] = gr.Radio(TASKS, value="upscale", label="Task", elem_id="upscale-task")
            fields["model"] = model_dropdown(ctx, "upscale")
    return {"preview": preview, "upload": upload, "generate": generate}


def _task_settings(ctx: AppContext, fields: dict[str, Any]) -> Any:
    """Strength, and upscale's scale, upscaler and noise inversion; returns the row shown for upscale."""
    with gr.Row(equal_height=True):
        fields["strength"] = strength_slider("upscale", "upscale", "the fraction of the steps that re-work the image")
        with gr.Row(elem_id="upscale-only") as upscale_only:
            fields["scale"] = gr.Slider(
                1,
                MAX_SCALE,
                value=default_of("upscale", "scale"),
                step=0.25,
                label="Scale",
                info=f"the result's sides: at most {ctx.limits.max_side} px on this server",
                elem_id="upscale-scale",
            )
            fields["upscaler"] = gr.Dropdown(
                list(ctx.upscalers.names),
                value=ctx.upscalers.names[0],
                label="Upscaler",
                info="resizes the image before the re-work",
                elem_id="upscale-upscaler",
            )
            fields["noise_inversion"] = gr.Checkbox(
                label="Noise inversion",
                info="start from the image's DDIM inversion, not fresh noise: keeps more detail (slower)",
                elem_id="upscale-inversion",
            )
    return upscale_only


def _handlers(ctx: AppContext, fields: dict[str, Any]) -> dict[str, Any]:
    """What the tab's button, upload and task choice do, by name."""

    def run(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> tuple[Any, Any, str]:  # noqa: B008
        values = {key: data[component] for key, component in fields.items()}
        out = generate_upscale(values, pool=ctx.pool, limits=ctx.limits, store=ctx.store, upscalers=ctx.upscalers,
                               choices=ctx.task_choices(values.get("task") or "upscale"),
                               on_step=progress_steps(progress), is_cancelled=client_gone())  # fmt: skip
        return str(out.path), gr.DownloadButton(value=str(out.path), visible=True), message("info", out.message)

    def load_image(path: str | None, task: str, scale: float) -> tuple[Any, Any, str]:
        """The uploaded image checked now (size, sides): (its preview, the path the tab keeps on the
        server for the run, a note with the result's size)."""
        if not path:
            raise ValueError("image is required: upload an image")
        found = read_upload(path, "image", ctx.limits)
        h, w = found.size
        text = f"Loaded {found.path!r}, {w}×{h} px."
        if task == "upscale" and isinstance(scale, (int, float)):
            text += f" Upscaled {scale:g}x: about {round(w * scale)}×{round(h * scale)} px."
        return ctx.store.shown(found.image), str(path), message("info", text)

    def show_task(task: str) -> Any:
        return gr.Row(visible=task == "upscale")

    def task_defaults(task: str) -> Any:
        return gr.Slider(value=default_of(task, "strength"))

    return {"run": run, "load_image": load_image, "show_task": show_task, "task_defaults": task_defaults}


def _wire(ctx: AppContext, fields: dict[str, Any], parts: dict[str, Any], out: tuple[Any, Any, Any]) -> None:
    """Connect the button, the upload and the task choice to their handlers (generating one at a
    time, the light jobs on the page's queue)."""
    do = _handlers(ctx, fields)
    status, result, download = out
    parts["generate"].click(
        guarded(do["run"], lambda msg: (gr.skip(), gr.skip(), msg)),
        inputs=set(fields.values()),
        outputs=[result, download, status],
        show_progress_on=result,
        concurrency_limit=1,
        concurrency_id="generate",
    )
    light = {"concurrency_limit": 1, "concurrency_id": PAGE_QUEUE}  # queued, like every job that does work
    parts["upload"].upload(
        guarded(do["load_image"], lambda msg: (gr.skip(), gr.skip(), msg)),
        inputs=[parts["upload"], fields["task"], fields["scale"]],
        outputs=[parts["preview"], fields["image"], status],
        **light,
    )
    fields["task"].change(do["show_task"], inputs=fields["task"], outputs=parts["upscale_only"], **light)
    fields["task"].input(do["task_defaults"], inputs=fields["task"], outputs=fields["strength"], **light)  # user choice
