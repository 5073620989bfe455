"""The page's events: every one that does work goes through the queue, and the Regions tab's colour
table and map upload refuse what would tie up the server (a photo as a map, an oversized file)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from multidiffusion.app import ServerLimits

pytest.importorskip("gradio")


@pytest.fixture
def app(md16, tmp_path):
    from multidiffusion.app.handlers import OutputStore
    from multidiffusion.app.server import create_app

    return create_app(["tiny"], lambda name: md16, ServerLimits(max_upload_mb=1), OutputStore(tmp_path / "out"))


def _ids(components) -> set:
    return {getattr(c, "elem_id", None) for c in components}


def _event(app, output_id: str, input_ids: set):
    for fn in app.fns.values():
        if output_id in _ids(fn.outputs) and input_ids <= _ids(fn.inputs):
            return fn
    raise AssertionError(f"no event writes {output_id} from {input_ids}")


def test_every_event_that_does_work_is_queued(app):
    unqueued = {fn.name for fn in app.fns.values() if fn.fn is not None and not fn.queue}
    assert unqueued <= {"random_seed"}, unqueued  # the dice: a random number, no work
    colour_table = _event(app, "regions-colours", {"regions-layout", "regions-colours"})
    loader = _event(app, "load-message", {"load-png"})
    for fn in (colour_table, loader):
        assert fn.queue and fn.concurrency_limit == 1


def test_a_map_of_too_many_colours_is_refused_with_a_message(app):
    """4096 x 4096 px, every pixel a colour of its own (16.7 M): refused, counted on 1 M pixels."""
    codes = np.arange(4096 * 4096, dtype=np.uint32).reshape(4096, 4096)
    rgb = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.uint8)
    colour_table = _event(app, "regions-colours", {"regions-layout", "regions-colours"})
    value = {"background": None, "layers": [], "composite": Image.fromarray(rgb)}
    table, status = colour_table.fn(value, None)
    assert "the layout has more than 4096 colours" in status and "flat colours" in status
    assert "Traceback" not in status

    flat = np.full((4096, 4096, 3), 255, np.uint8)
    flat[:, 3072:] = (230, 25, 75)  # a quarter red
    table, _ = colour_table.fn({"background": None, "layers": [], "composite": Image.fromarray(flat)}, None)
    assert [row[0].split()[-1] for row in table] == ["#ffffff", "#e6194b"]


def test_a_colour_map_upload_is_size_checked_before_decoding(app, tmp_path):
    upload = _event(app, "regions-layout", {"regions-upload"})
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)).save(big)
    *_, status = upload.fn(str(big), None)
    assert "the colour map is 2.9 MB; this server accepts uploads up to 1 MB" in status
    wide = tmp_path / "wide.png"
    Image.new("RGB", (8192, 8), "white").save(wide)  # a small file, too wide a map
    *_, status = upload.fn(str(wide), None)
    assert "the colour map is 8192×8 px; this server takes maps up to 4096 px per side" in status


def test_every_tab_starts_at_the_steps_the_command_line_examples_use(app):
    from multidiffusion.app.widgets import DEFAULT_STEPS

    sliders = [b for b in app.blocks.values() if str(getattr(b, "elem_id", None)).endswith("-steps")]
    assert len(sliders) >= 4 and {s.value for s in sliders} == {DEFAULT_STEPS}
    assert 20 <= DEFAULT_STEPS <= 25  # the README's and --help's examples, the demo model's evaluation
