"""The Regions tab: paint a layout (or upload a colour map), give each colour a prompt, add boxes,
preview what each prompt controls, generate."""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

from multidiffusion.app.context import AppContext
from multidiffusion.app.handlers import generate_regions, preview_regions
from multidiffusion.app.layout import (
    BACKGROUND,
    PALETTE,
    blank_layout,
    layout_colours,
    layout_image,
    merge_colour_table,
    read_map,
)
from multidiffusion.app.live_tab import live_checkbox, live_counters, wire_live
from multidiffusion.app.widgets import (
    PAGE_QUEUE,
    client_gone,
    guarded,
    message,
    model_dropdown,
    progress_steps,
    sampling_controls,
)

__all__ = ["regions_tab"]

COLOUR_HEADERS = ["colour", "prompt", "negative prompt"]
BOX_HEADERS = ["prompt", "negative prompt", "x0", "y0", "x1", "y1"]
HOW_TO = """Paint regions on the canvas with the brush (pick a colour with the palette button) or upload a
colour-coded map (flat colours, e.g. a PNG), then press **Preview the layout**: the table lists the layout's colours.
Give each colour its prompt; colours left without one, like the white of a blank canvas, belong to the background.
Boxes add regions by coordinates."""
MAP_TYPES = [".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"]


def _colour_rows(layout: Any, table: Any, max_side: int) -> list[list[str]]:
    image = layout_image(layout)
    if image is None:
        return merge_colour_table([], table)
    if max(image.size) > max_side:
        raise ValueError(
            f"the layout is {image.width}×{image.height} px; this server takes layouts up to {max_side} px per side"
        )
    return merge_colour_table(layout_colours(image), table)


def regions_tab(ctx: AppContext) -> dict[str, Any]:
    """The tab's form components by API name (what a PNG's settings fill in)."""
    height, width = ctx.regions_size
    fields: dict[str, Any] = {}
    buttons = _prompts(ctx, fields)
    fields.update(sampling_controls(ctx, "regions", (height, width), _bootstrap))
    gr.Markdown(HOW_TO)
    buttons.update(_layout_inputs(fields, width, height))
    results = _results()
    _wire(ctx, fields, buttons, results)
    wire_live(ctx, fields, {"live": buttons["live"], "live_stats": results["live_stats"]}, results, _form(fields))
    return fields


def _form(fields: dict[str, Any]) -> Any:
    """The form's values by API name, from the values Gradio passes by component."""
    return lambda data: {key: data[component] for key, component in fields.items()}


def _prompts(ctx: AppContext, fields: dict[str, Any]) -> dict[str, Any]:
    """The background and negative prompts, the model and the tab's two buttons (returned by name)."""
    with gr.Row():
        with gr.Column(scale=4):
            fields["background"] = gr.Textbox(
                label="Background prompt",
                info="everything outside the regions",
                placeholder="a green meadow under a blue sky",
                elem_id="regions-background",
            )
            fields["negative_prompt"] = gr.Textbox(
                label="Negative prompt",
                info="the background's, and the default of every region's",
                elem_id="regions-negative",
            )
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id="regions-generate")
            preview = gr.Button("Preview the layout", elem_id="regions-preview")
            live = live_checkbox()
            fields["model"] = model_dropdown(ctx, "regions")
    return {"generate": generate, "preview": preview, "live": live}


def _bootstrap(row: dict[str, Any]) -> None:
    """The bootstrapping steps, beside the seed (:func:`sampling_controls`' ``extra``)."""
    row["bootstrap_steps"] = gr.Number(
        value=-1,
        label="Bootstrapping steps",
        info="first steps that denoise each region on a plain background; -1: 40% of the steps (paper: 20 of 50)",
        precision=0,
        elem_id="regions-bootstrap",
    )


def _layout_inputs(fields: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """The layout editor, its two buttons (returned by name), the colour table and the boxes."""
    with gr.Row():
        with gr.Column(scale=3):
            fields["layout"] = gr.ImageEditor(
                value=blank_layout(width, height),
                type="pil",
                image_mode="RGB",
                format="png",
                label="Layout",
                sources=[],  # maps come through the upload button, whose event carries the file
                brush=gr.Brush(colors=[*PALETTE, BACKGROUND], default_color=PALETTE[0], color_mode="fixed"),
                layers=False,
                transforms=(),
                height=360,
                elem_id="regions-layout",
            )
            with gr.Row():
                new_canvas = gr.Button("New blank canvas (width × height)", size="sm", elem_id="regions-new")
                upload = gr.UploadButton(
                    "Upload a colour map", file_types=MAP_TYPES, size="sm", elem_id="regions-upload"
                )
        with gr.Column(scale=2):
            fields["colours"] = gr.Dataframe(
                value=merge_colour_table([BACKGROUND], None),
                headers=COLOUR_HEADERS,
                datatype=["html", "str", "str"],
                static_columns=[0],
                type="array",
                interactive=True,
                label="Colours: a prompt for each region (empty: background)",
                elem_id="regions-colours",
            )
            fields["boxes"] = gr.Dataframe(
                value=[["", "", None, None, None, None]],
                headers=BOX_HEADERS,
                datatype=["str", "str", "number", "number", "number", "number"],
                type="array",
                interactive=True,
                label="Boxes: x0, y0, x1, y1 as fractions of the canvas (0-1) or pixels",
                elem_id="regions-boxes",
            )
    return {"new_canvas": new_canvas, "upload": upload}


def _results() -> dict[str, Any]:
    """The message line, the layout preview, the result and its download button, by name."""
    status = gr.HTML(elem_id="regions-message")
    with gr.Row(equal_height=True):
        shown = {"elem_classes": "md-result", "format": "png", "interactive": False, "height": 320}
        preview = gr.Image(label="Layout: what each prompt controls", type="pil", elem_id="regions-preview-image",
                           **shown)  # fmt: skip
        result = gr.Image(label="Result", type="filepath", elem_id="regions-result", **shown)
    download = gr.DownloadButton("Download PNG (with its settings)", visible=False, elem_id="regions-download")
    stats = live_counters()  # the Live mode's counters
    return {"status": status, "preview": preview, "result": result, "download": download, "live_stats": stats}


def _handlers(ctx: AppContext, fields: dict[str, Any]) -> dict[str, Any]:
    """What the tab's buttons and upload do, by name (Gradio passes the components' values)."""

    form = _form(fields)

    def run(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
        out = generate_regions(form(data), pool=ctx.pool, limits=ctx.limits, store=ctx.store,
                               on_step=progress_steps(progress), is_cancelled=client_gone())  # fmt: skip
        download_button = gr.DownloadButton(value=str(out.path), visible=True)
        return ctx.store.shown(out.preview), str(out.path), download_button, message("info", out.message)

    def show_preview(data: dict[Any, Any]) -> tuple[Any, str]:
        return ctx.store.shown(preview_regions(form(data), pool=ctx.pool, limits=ctx.limits)), ""

    def load_map(path: str | None, table: Any) -> tuple[Any, ...]:
        """An uploaded map becomes the layout; the canvas takes its size; the table its colours."""
        if not path:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), ""
        ctx.limits.check_upload("the colour map", os.path.getsize(path))  # before decoding it
        image, note = read_map(path, ctx.limits.max_side)
        w = ctx.limits.check_side("the colour map's width", image.width)
        h = ctx.limits.check_side("the colour map's height", image.height)
        return ctx.store.shown(image), w, h, _colour_rows(image, table, ctx.limits.max_side), message("info", note)

    def new_layout(w: Any, h: Any) -> tuple[Any, str]:
        blank = blank_layout(ctx.limits.check_side("width", w), ctx.limits.check_side("height", h))
        return ctx.store.shown(blank), ""

    def colour_table(layout: Any, table: Any) -> tuple[Any, Any]:
        """The layout's colours into the table (keeping the prompts typed for them)."""
        return _colour_rows(layout, table, ctx.limits.max_side), gr.skip()

    return {"run": run, "show_preview": show_preview, "load_map": load_map, "new_layout": new_layout,
            "colour_table": colour_table}  # fmt: skip


def _wire(ctx: AppContext, fields: dict[str, Any], buttons: dict[str, Any], out: dict[str, Any]) -> None:
    """Connect the buttons and the upload to their handlers: generating and previewing each one at a
    time, the light jobs on the page's queue."""
    do = _handlers(ctx, fields)
    status, generate, preview = out["status"], buttons["generate"], buttons["preview"]
    generate.click(
        guarded(do["run"], lambda msg: (gr.skip(), gr.skip(), gr.skip(), msg)),
        inputs=set(fields.values()),
        outputs=[out["preview"], out["result"], out["download"], status],
        show_progress_on=out["result"],
        concurrency_limit=1,
        concurrency_id="generate",
    )
    preview.click(
        guarded(do["show_preview"], lambda msg: (gr.skip(), msg)),
        inputs=set(fields.values()),
        outputs=[out["preview"], status],
        concurrency_limit=1,
        concurrency_id="preview",
    )
    # the buttons read the layout's colours into the table: the editor reports no brush strokes as they
    # happen, and its change event also fires when a PNG's settings set it (with the table not yet set)
    light = {"concurrency_limit": 1, "concurrency_id": PAGE_QUEUE}  # queued, like every job that does work
    for trigger in (preview.click, generate.click):
        trigger(guarded(do["colour_table"], lambda msg: (gr.skip(), msg)),
                inputs=[fields["layout"], fields["colours"]], outputs=[fields["colours"], status], **light)  # fmt: skip
    buttons["upload"].upload(
        guarded(do["load_map"], lambda msg: (gr.skip(), gr.skip(), gr.skip(), gr.skip(), msg)),
        inputs=[buttons["upload"], fields["colours"]],
        outputs=[fields["layout"], fields["width"], fields["height"], fields["colours"], status],
        **light,
    )
    buttons["new_canvas"].click(
        guarded(do["new_layout"], lambda msg: (gr.skip(), msg)),
        inputs=[fields["width"], fields["height"]],
        outputs=[fields["layout"], status],
        **light,
    )
