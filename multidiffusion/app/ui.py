"""The Gradio page: a settings loader over the Panorama, Regions, Upscale and Inpaint / Outpaint tabs.

Layout only: every button calls a function of :mod:`.handlers` or :mod:`.settings` through
:func:`~.widgets.guarded`, which turns a ``ValueError`` into a message in the page and anything
else into a one-line internal error (the traceback goes to the server's log, never to the browser).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import gradio as gr

from multidiffusion.app.context import AppContext
from multidiffusion.app.from_png import IMAGE_INPUTS, values_from_png
from multidiffusion.app.inpaint_tab import inpaint_tab
from multidiffusion.app.panorama_tab import panorama_tab
from multidiffusion.app.regions_tab import regions_tab
from multidiffusion.app.settings import INPAINT_TASKS, UPSCALE_TASKS
from multidiffusion.app.upscale_tab import upscale_tab
from multidiffusion.app.widgets import CSS, PAGE_QUEUE, THEME, guarded, message

__all__ = ["CSS", "THEME", "AppContext", "build_app"]

INTRO = """## MultiDiffusion
Panoramas of any size, region prompts, upscaling, inpainting and outpainting with a pretrained
diffusion model, no training ([Bar-Tal et al., ICML 2023](https://arxiv.org/abs/2302.08113)).
Generations run one at a time."""


def _settings_of_upload(path: str, ctx: AppContext) -> tuple[str, dict[str, Any], list[str]]:
    """:func:`values_from_png` of an uploaded PNG, its refusals naming the upload by its file name only:
    the path is in the server's temporary folder, which the page has no business seeing."""
    name = os.path.basename(path)
    try:
        return values_from_png(path, ctx.limits, ctx.pool, ctx.upscalers)
    except ValueError as exc:
        raise ValueError(str(exc).replace(repr(str(path)), repr(name)).replace(str(path), name)) from None
    except OSError as exc:  # the upload gone (the page open too long) or unreadable
        why = exc.strerror or type(exc).__name__
        raise ValueError(f"the PNG: the upload {name!r} could not be read ({why}); upload it again") from None


def _settings_loader(ctx: AppContext, tabs: Any, forms: Mapping[str, tuple[str, Mapping[str, Any]]]) -> None:
    """A drop zone for PNGs this tool wrote: their settings fill the form of their task's tab.
    ``forms``: task -> (tab id, the tab's form components by key)."""

    def load(path: str | None) -> dict[Any, Any]:
        if not path:
            return {}
        mode, values, notes = _settings_of_upload(path, ctx)
        tab, form = forms[mode]
        updates: dict[Any, Any] = {
            component: ctx.store.shown(values[key]) for key, component in form.items() if key in values
        }
        text = f"Loaded the settings of a {mode} image." + "".join(f" Note: {n}." for n in notes)
        updates[tabs] = gr.Tabs(selected=tab)
        updates[status] = message("note" if notes else "info", text)
        return updates

    settings = [c for _, form in forms.values() for key, c in form.items() if key not in IMAGE_INPUTS]
    components = list({id(c): c for c in settings}.values())  # a tab that runs two tasks is listed twice
    with gr.Accordion("Load settings from a PNG", open=False, elem_id="load-accordion"):
        png = gr.File(
            label="Drop a PNG made by multidiffusion here", file_types=[".png"], height=120, elem_id="load-png"
        )
        status = gr.HTML(elem_id="load-message")
    png.upload(
        guarded(load, lambda msg: {status: msg}),
        inputs=png,
        outputs=[tabs, status, *components],
        concurrency_limit=1,
        concurrency_id=PAGE_QUEUE,
    )


def build_app(ctx: AppContext) -> gr.Blocks:
    """The page. Launch it with :func:`multidiffusion.app.server.launch` (queue, limits, theme)."""
    with gr.Blocks(title="MultiDiffusion", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(INTRO)
        loader_slot = gr.Column()
        with gr.Tabs(selected="panorama") as tabs:
            with gr.Tab("Panorama", id="panorama", elem_id="tab-panorama"):
                panorama = panorama_tab(ctx)
            with gr.Tab("Regions", id="regions", elem_id="tab-regions"):
                regions = regions_tab(ctx)
            with gr.Tab("Upscale", id="upscale", elem_id="tab-upscale"):
                upscale = upscale_tab(ctx)
            with gr.Tab("Inpaint / Outpaint", id="inpaint", elem_id="tab-inpaint"):
                inpaint = inpaint_tab(ctx)
        forms = {
            "panorama": ("panorama", panorama),
            "regions": ("regions", regions),
            **{task: ("upscale", upscale) for task in UPSCALE_TASKS},
            **{task: ("inpaint", inpaint) for task in INPAINT_TASKS},
        }
        with loader_slot:
            _settings_loader(ctx, tabs, forms)
    return app
