"""The Panorama tab: one prompt over a canvas of any size."""

from __future__ import annotations

from typing import Any

import gradio as gr

from multidiffusion.app.context import AppContext
from multidiffusion.app.handlers import generate_panorama
from multidiffusion.app.widgets import (
    client_gone,
    control_controls,
    guarded,
    message,
    model_dropdown,
    progress_steps,
    sampling_controls,
)

__all__ = ["panorama_tab"]


def panorama_tab(ctx: AppContext) -> dict[str, Any]:
    """The tab's form components by API name (what a PNG's settings fill in)."""
    fields: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=4):
            fields["prompt"] = gr.Textbox(
                label="Prompt", placeholder="snowy mountains under a starry night sky", lines=2, elem_id="pano-prompt"
            )
            fields["negative_prompt"] = gr.Textbox(
                label="Negative prompt", placeholder="what the image should not show", elem_id="pano-negative"
            )
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id="pano-generate")
            fields["model"] = model_dropdown(ctx, "pano")

    def choices(row: dict[str, Any]) -> None:  # optional API arguments (fast tiling, weights)
        for choice in ctx.panorama_choices:
            row[choice.key] = gr.Dropdown(list(choice.choices), value=choice.choices[0], label=choice.label,
                                          info=choice.info, elem_id=f"pano-{choice.key}")  # fmt: skip

    fields.update(sampling_controls(ctx, "pano", ctx.panorama_size, choices))
    fields.update(control_controls(ctx, "pano"))
    status = gr.HTML(elem_id="pano-message")
    result = gr.Image(
        label="Result",
        type="filepath",
        format="png",
        interactive=False,
        height=320,
        elem_id="pano-result",
        elem_classes="md-result",
    )
    download = gr.DownloadButton("Download PNG (with its settings)", visible=False, elem_id="pano-download")

    def run(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> tuple[Any, Any, str]:  # noqa: B008
        out = generate_panorama(
            {key: data[component] for key, component in fields.items()},
            pool=ctx.pool,
            limits=ctx.limits,
            store=ctx.store,
            choices=ctx.panorama_choices,
            on_step=progress_steps(progress),
            is_cancelled=client_gone(),
        )
        return str(out.path), gr.DownloadButton(value=str(out.path), visible=True), message("info", out.message)

    generate.click(
        guarded(run, lambda msg: (gr.skip(), gr.skip(), msg)),
        inputs=set(fields.values()),
        outputs=[result, download, status],
        show_progress_on=result,
        concurrency_limit=1,
        concurrency_id="generate",
    )
    return fields
