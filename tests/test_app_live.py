"""The Regions tab's Live handler without a browser (multidiffusion.app.live_tab): Live off does
nothing, Live on renders the page's layout through the session's loop, adds newly painted colours to
the table, and one session's loop is kept per browser session. The browser test
(tests/browser/test_live_page.py) drives the same handler from real strokes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio")

from multidiffusion import MultiDiffusion
from multidiffusion.app import ModelPool, ServerLimits
from multidiffusion.app.handlers import OutputStore
from multidiffusion.app.layout import colour_cell, colour_of_cell
from multidiffusion.app.live_tab import LiveSessions, live_render


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    torch.set_num_threads(1)
    md = MultiDiffusion.from_pretrained("demo", device="cpu")
    md.set_progress_bar_config(disable=True)
    store = OutputStore(tmp_path_factory.mktemp("out"))
    return SimpleNamespace(pool=ModelPool(["demo"], lambda name: md), limits=ServerLimits(), store=store)


def form(blue: bool = False) -> dict:
    a = np.full((64, 128, 3), 255, np.uint8)
    a[:, 64:] = (230, 25, 75)
    if blue:
        a[8:56, 8:40] = (67, 99, 216)  # a colour painted since the table was read
    return {
        "negative_prompt": "", "width": 128, "height": 64, "num_inference_steps": 2, "guidance_scale": 7.5,
        "seed": 5, "scheduler": "ddim", "circular": False, "window": "", "stride": "", "model": "demo",
        "background": "a green meadow", "bootstrap_steps": -1,
        "layout": {"background": None, "layers": [], "composite": Image.fromarray(a)},
        "colours": [[colour_cell("#ffffff"), "", ""], [colour_cell("#e6194b"), "snowy mountains", ""]],
        "boxes": [["", "", None, None, None, None]],
    }  # fmt: skip


def test_live_off_does_nothing_and_live_on_renders(ctx):
    import gradio as gr

    sessions = LiveSessions(ctx)
    assert live_render(ctx, sessions, form(), False) == (gr.skip(),) * 4
    assert sessions.get("local").stats.pushes == 0
    result, table, counters, note = live_render(ctx, sessions, form(), True)
    assert Image.open(result).size == (128, 64) and table == gr.skip()
    assert "pushes 1 · renders 1 (finished 1" in counters and "Live frame 1" in note
    result2, table2, counters2, _ = live_render(ctx, sessions, form(blue=True), True)
    prompts = {colour_of_cell(row[0]): row[1] for row in table2}  # the new colour: background until named
    assert prompts == {"#ffffff": "", "#e6194b": "snowy mountains", "#4363d8": ""}
    assert "pushes 2" in counters2 and Path(result2) != Path(result)
    with pytest.raises(ValueError, match="num_inference_steps"):
        live_render(ctx, sessions, {**form(), "num_inference_steps": 0}, True)


def test_one_loop_per_session_and_the_oldest_closed(ctx):
    sessions = LiveSessions(ctx, max_sessions=2)
    a, b = sessions.get("a"), sessions.get("b")
    assert sessions.get("a") is a
    sessions.get("c")  # "b" is now the least recently used
    with pytest.raises(RuntimeError, match="closed"):
        b.push(background="x", height=64, width=128)
    assert sessions.get("a") is a
