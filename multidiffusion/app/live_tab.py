"""The Regions tab's Live mode: each brush stroke, moved box or edited prompt re-renders the layout
without a Generate click, through the library's render loop (:class:`multidiffusion.live.LiveRegions`).

How a burst of strokes is kept from queueing renders:

- The layout editor's ``change`` event (Gradio 6.31 fires it once per finished stroke, after the
  stroke's picture reached the server; also when a map is uploaded or a PNG's settings set the
  layout; its ``input`` event comes before that upload, with the previous picture) and the tables'
  and background prompt's ``input`` events run :func:`live_render` with ``trigger_mode="multiple"``:
  every stroke's event reaches the server at once, *while* the previous render runs. (Gradio's
  ``"always_last"`` would hold the newest stroke in the browser until the running render finished:
  no queue, but no cancelling either.) The editor does not report its first change after its value
  was set (the first stroke after loading a map is not sent); the next strokes are.
- ``concurrency_limit=None`` on their own ``concurrency_id``: a handler only pushes the layout and
  waits; the rendering is one loop per browser session, which holds the model (the pool's lock, as
  Generate does) for one render at a time. A push cancels the render in progress at its next
  denoising step and replaces the push waiting, if any: at most one render waits, the newest. The
  handler of a replaced push returns at once without touching the result.
- The counters the loop keeps (pushes, renders started / finished / cancelled, pushes dropped
  unrendered, the most ever waiting) are shown under the result: a server-side count the browser
  test reads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import gradio as gr

from multidiffusion.app.context import AppContext
from multidiffusion.app.handlers import check_texts
from multidiffusion.app.layout import colour_of_cell, layout_colours, layout_image, merge_colour_table
from multidiffusion.app.settings import regions_request
from multidiffusion.app.widgets import guarded, message
from multidiffusion.live import LiveRegions

__all__ = ["LiveSessions", "live_checkbox", "live_counters", "live_render", "wire_live"]

MAX_SESSIONS = 8
"""Browser sessions with a render loop at once; the least recently used one's loop is closed."""
LIVE_INFO = "re-render on every stroke, moved box or edited prompt (few steps, e.g. 2-4, answer fastest)"


class LiveSessions:
    """One :class:`LiveRegions` per browser session (so one user's strokes never cancel another's
    render), each rendering with the pool's model, held for one render at a time."""

    def __init__(self, ctx: AppContext, max_sessions: int = MAX_SESSIONS):
        self.ctx = ctx
        self.max_sessions = max_sessions
        self._loops: OrderedDict[str, LiveRegions] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session: str) -> LiveRegions:
        with self._lock:
            live = self._loops.get(session)
            if live is None:
                live = self._loops[session] = LiveRegions(use=lambda model, stop: self.ctx.pool.use(model, stop))
            self._loops.move_to_end(session)
            closed = [self._loops.popitem(last=False)[1] for _ in range(len(self._loops) - self.max_sessions)]
        for old in closed:
            old.close(timeout=0)
        return live


def _session() -> str:
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    return str(getattr(request, "session_hash", None) or "local")


def live_checkbox() -> Any:
    """The Live checkbox (beside Generate)."""
    return gr.Checkbox(value=False, label="Live", info=LIVE_INFO, elem_id="regions-live")


def live_counters() -> Any:
    """Where the loop's counters are shown (under the result)."""
    return gr.HTML(elem_id="regions-live-stats")


def live_render(
    ctx: AppContext, sessions: LiveSessions, values: dict[str, Any], enabled: bool
) -> tuple[Any, Any, str, str]:
    """Push the page's layout to the session's loop and wait for its frame: (result, colour table,
    counters, message); ``gr.skip()`` where nothing is to change (Live off, or a newer stroke came)."""
    if not enabled:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    check_texts(values)
    table = _new_colours(values.get("layout"), values.get("colours"), ctx.limits.max_side)
    if table is not None:
        values = {**values, "colours": table}
    request = regions_request(values, ctx.limits, ctx.pool)
    live = sessions.get(_session())
    version = live.push(request.options, model=request.model)
    frame = live.wait(version)
    counters = f'<div class="md-message note">{live.stats.summary()}</div>'
    shown_table = gr.skip() if table is None else table
    if frame is None:  # replaced by a newer stroke: its handler shows that one
        return gr.skip(), shown_table, counters, gr.skip()
    note = message("info", f"Live frame {frame.version}: {frame.seconds:.2f} s; Generate saves a PNG.")
    return ctx.store.shown(frame.image), shown_table, counters, note


def _new_colours(layout: Any, table: Any, max_side: int) -> list[list[str]] | None:
    """The colour table with the layout's new colours added (their prompts empty: background until
    one is typed), or None when the table already lists every colour of the layout."""
    image = layout_image(layout)
    if image is None or max(image.size) > max_side:
        return None  # regions_request says why
    rows = table.values.tolist() if hasattr(table, "values") else list(table or [])
    listed = {colour_of_cell(row[0]) for row in rows if len(row)}
    colours = layout_colours(image)
    return None if listed >= set(colours) else merge_colour_table(colours, table)


def wire_live(
    ctx: AppContext,
    fields: dict[str, Any],
    controls: dict[str, Any],
    out: dict[str, Any],
    form: Callable[[dict[Any, Any]], dict[str, Any]],
) -> None:
    """Re-render on the layout editor's and tables' ``input`` events and when Live is switched on."""
    sessions = LiveSessions(ctx)
    enabled = controls["live"]

    def render(data: dict[Any, Any]) -> tuple[Any, Any, str, str]:
        return live_render(ctx, sessions, form(data), bool(data[enabled]))

    handler = guarded(render, lambda msg: (gr.skip(), gr.skip(), gr.skip(), msg))
    inputs = {*fields.values(), enabled}
    outputs = [out["result"], fields["colours"], controls["live_stats"], out["status"]]
    common = {"concurrency_limit": None, "concurrency_id": "live", "show_progress": "hidden"}
    triggers = [fields["layout"].change, fields["boxes"].input, fields["colours"].input, fields["background"].input]
    for trigger in triggers:
        trigger(handler, inputs=inputs, outputs=outputs, trigger_mode="multiple", **common)
    enabled.change(handler, inputs=inputs, outputs=outputs, trigger_mode="always_last", **common)
