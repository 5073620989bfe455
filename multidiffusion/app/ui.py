"""The Gradio page: a settings loader, the Panorama tab and the Regions tab.

Layout only: every button calls a function of :mod:`.handlers` or :mod:`.settings` through
:func:`guarded`, which turns a ``ValueError`` into a message in the page and anything else into a
one-line internal error (the traceback goes to the server's log, never to the browser).
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..pipeline import MultiDiffusion
from ..schedulers import SCHEDULERS
from ..validation import MIN_SIDE
from .handlers import OutputStore, generate_panorama
from .limits import Limits
from .models import ModelPool
from .settings import Choice, available_choices, random_seed, values_from_png

__all__ = ["CSS", "THEME", "AppContext", "build_app", "message"]

log = logging.getLogger("multidiffusion.app")

CSS = """
.md-message { padding: 0.4em 0.8em; border-radius: 6px; min-height: 1.6em; }
.md-message.error { background: #fdecea; color: #8a1c12; border: 1px solid #f5c2bd; }
.md-message.info { background: #eef6ee; color: #1d4d1f; border: 1px solid #c8e2c9; }
.md-message.note { background: #fff8e1; color: #6b4e00; border: 1px solid #f0dc9b; }
#pano-result img { object-fit: contain; }
"""

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
THEME = gr.themes.Soft(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])  # no web fonts: works offline

INTRO = """## MultiDiffusion
Panoramas of any size and region prompts with a pretrained diffusion model, no training
([Bar-Tal et al., ICML 2023](https://arxiv.org/abs/2302.08113)). Generations run one at a time."""


def message(kind: str, text: str) -> str:
    """A message for the page: kind is 'error', 'info' or 'note'; the text is escaped."""
    return f'<div class="md-message {kind}">{html.escape(text)}</div>' if text else ""


@dataclass
class AppContext:
    """What the page's handlers share: the models, the limits and where results go."""

    pool: ModelPool
    limits: Limits
    store: OutputStore
    default_size: tuple[int, int]  # (height, width) for the first model

    @property
    def panorama_choices(self) -> tuple[Choice, ...]:
        return available_choices(MultiDiffusion.panorama)


def guarded(fn: Callable[..., Any], on_error: Callable[[str], Any]) -> Callable[..., Any]:
    """``fn``, with a ValueError shown as its message and other failures as one line."""

    @functools.wraps(fn)  # Gradio reads the signature (gr.Progress) through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            return on_error(message("error", str(exc)))
        except Exception as exc:  # an internal failure: the log gets the traceback, the page one line
            log.exception("request failed")
            return on_error(message("error", f"internal error ({type(exc).__name__}); details are in the server log"))

    return run


def _panorama_tab(ctx: AppContext) -> dict[str, Any]:
    """The Panorama tab; returns its form components by API name (for PNG loading)."""
    height, width = ctx.default_size
    limits = ctx.limits
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
            fields["model"] = gr.Dropdown(
                list(ctx.pool.names),
                value=ctx.pool.default,
                label="Model",
                interactive=len(ctx.pool.names) > 1,
                elem_id="pano-model",
            )
    with gr.Row():
        side_info = f"pixels, a multiple of 8, {MIN_SIDE} to {limits.max_side}"
        fields["width"] = gr.Number(value=width, label="Width", info=side_info, precision=0, elem_id="pano-width")
        fields["height"] = gr.Number(value=height, label="Height", info=side_info, precision=0, elem_id="pano-height")
        fields["num_inference_steps"] = gr.Slider(
            1, limits.max_steps, value=min(50, limits.max_steps), step=1, label="Steps", elem_id="pano-steps"
        )
        fields["guidance_scale"] = gr.Slider(0, 20, value=7.5, step=0.5, label="Guidance", elem_id="pano-guidance")
    with gr.Row(equal_height=True):
        with gr.Column(min_width=220):
            fields["seed"] = gr.Number(
                value=-1, label="Seed", info="-1: a new random seed each time", precision=0, elem_id="pano-seed"
            )
            dice = gr.Button("Random seed", size="sm", elem_id="pano-dice")
        fields["scheduler"] = gr.Dropdown(list(SCHEDULERS), value="ddim", label="Scheduler", elem_id="pano-scheduler")
        fields["circular"] = gr.Checkbox(
            label="Circular (360°)", info="wraps around the left and right edges", elem_id="pano-circular"
        )
        for choice in ctx.panorama_choices:
            fields[choice.key] = gr.Dropdown(
                list(choice.choices), value=choice.choices[0], label=choice.label, info=choice.info
            )
    with gr.Accordion("Windows", open=False), gr.Row():
        fields["window"] = gr.Textbox(
            label="Window", info="latent pixels, N or ROWSxCOLUMNS; empty: the model's native size"
        )
        fields["stride"] = gr.Textbox(label="Stride", info="latent pixels; empty: window / 8 (the paper's)")
    status = gr.HTML(elem_id="pano-message")
    result = gr.Image(
        label="Result", type="filepath", format="png", interactive=False, height=320, elem_id="pano-result"
    )
    download = gr.DownloadButton("Download PNG (with its settings)", visible=False, elem_id="pano-download")

    def run(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> tuple[Any, Any, str]:  # noqa: B008
        def on_step(i: int, total: int) -> None:
            progress((i, total), desc="denoising" if i < total else "decoding", unit="steps")

        progress(0, desc="loading the model")
        out = generate_panorama(
            {key: data[component] for key, component in fields.items()},
            pool=ctx.pool,
            limits=ctx.limits,
            store=ctx.store,
            choices=ctx.panorama_choices,
            on_step=on_step,
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
    dice.click(random_seed, outputs=fields["seed"], queue=False)
    return fields


def _settings_loader(ctx: AppContext, tabs: Any, forms: Mapping[str, Mapping[str, Any]]) -> None:
    """A drop zone for PNGs this tool wrote: their settings fill the form of their tab."""

    def load(path: str | None) -> dict[Any, Any]:
        if not path:
            return {}
        mode, values, notes = values_from_png(path, ctx.limits, ctx.pool)
        form = forms.get(mode)
        if form is None:
            raise ValueError(f"this page has no {mode} tab yet; the image's settings can't be loaded")
        updates: dict[Any, Any] = {component: values[key] for key, component in form.items() if key in values}
        text = f"Loaded the settings of a {mode} image." + "".join(f" Note: {n}." for n in notes)
        updates[tabs] = gr.Tabs(selected=mode)
        updates[status] = message("note" if notes else "info", text)
        return updates

    components = [c for form in forms.values() for c in form.values()]
    with gr.Accordion("Load settings from a PNG", open=False, elem_id="load-accordion"):
        png = gr.File(
            label="Drop a PNG made by multidiffusion here", file_types=[".png"], height=120, elem_id="load-png"
        )
        status = gr.HTML(elem_id="load-message")
    png.upload(
        guarded(load, lambda msg: {status: msg}),
        inputs=png,
        outputs=[tabs, status, *components],
        queue=False,
    )


def build_app(ctx: AppContext) -> gr.Blocks:
    """The page. Launch it with :func:`multidiffusion.app.server.launch` (queue, limits, theme)."""
    with gr.Blocks(title="MultiDiffusion", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(INTRO)
        loader_slot = gr.Column()
        with gr.Tabs(selected="panorama") as tabs, gr.Tab("Panorama", id="panorama", elem_id="tab-panorama"):
            panorama = _panorama_tab(ctx)
        with loader_slot:
            _settings_loader(ctx, tabs, {"panorama": panorama})
    return app
