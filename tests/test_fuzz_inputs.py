"""Fuzzers over whole inputs as users and attackers hand them to us (issue 25): scene files as
bytes, stored PNG settings and batch lines, with embedded images of every kind (good, huge headers,
PostScript, damaged, 16-bit). Each gives a result or one clean line (a ValueError: one line, no
object repr, no traceback text, not kilobytes long), within a memory bound."""

from __future__ import annotations

import base64
import io
import json
import re
import resource

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from multidiffusion.files.metadata import settings_from_parameters
from multidiffusion.files.scene import load_scene

from .test_untrusted_settings import JSON, KEYS, RECORD


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _png(size, mode="L", fmt="PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 200).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n"
IMAGES = [
    _uri(_png((64, 64))),  # a mask
    _uri(_png((64, 64), "RGB", "JPEG")),
    _uri(_png((64, 64), "I;16")),
    _uri(_png((8192, 8192))),  # 64 Mpx: the loader's largest
    _uri(_png((64, 64))[:40]),  # damaged
    _uri(EPS),  # PostScript: never run
    _uri(b"GIF89a" + b"\xff" * 10),  # a header declaring 65535 x 65535
    "data:image/png;base64,!!!!",
    "data:text/plain,hello",
]
EMBEDDED = st.sampled_from(IMAGES)
REGION = st.dictionaries(
    st.sampled_from(["prompt", "mask", "box", "feather", "control_image", "loras"]),
    JSON | EMBEDDED | st.sampled_from(["a moon", [0.1, 0.1, 0.5, 0.5], "m.png"]) | RECORD,
    max_size=4,
)
SETTINGS = st.dictionaries(
    KEYS | st.sampled_from(["control_image", "controlnet", "loras", "segmentation"]),
    JSON
    | EMBEDDED
    | st.lists(EMBEDDED, max_size=4)
    | st.lists(REGION, max_size=3)
    | RECORD
    | st.fixed_dictionaries({"map": EMBEDDED, "colors": st.just({"#c8c8c8": "snow"})}),
    max_size=8,
)


def _clean(message: str) -> None:
    assert "\n" not in message.strip(), message
    assert not re.search(r" at 0x[0-9a-f]+", message), message
    assert "Traceback" not in message and not re.search(r"\d{300}", message), message
    assert len(message) < 1500, message[:200]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def rss_start():
    start = _rss_mb()
    yield start
    assert _rss_mb() - start < 1536, f"the fuzzers grew the peak by {_rss_mb() - start:.0f} MB"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=SETTINGS, as_toml=st.booleans(), task=st.sampled_from([None, "regions", "img2img", "inpaint", "upscale"]))
def test_fuzz_scene_files_as_bytes(tmp_path, rss_start, data, as_toml, task):
    if task is not None:
        data = {**data, "task": task}
    path = tmp_path / ("s.toml" if as_toml else "s.json")
    if as_toml:
        lines = [f"{k} = {json.dumps(v)}" for k, v in data.items() if isinstance(v, (str, int, bool))]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text(json.dumps(data))
    try:
        load_scene(path)
    except ValueError as exc:
        _clean(str(exc))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode), suffix=st.sampled_from([".toml", ".json"]))
def test_fuzz_scene_files_of_any_bytes(tmp_path, rss_start, raw, suffix):
    path = tmp_path / f"s{suffix}"
    path.write_bytes(raw)
    try:
        load_scene(path)
    except ValueError as exc:
        _clean(str(exc))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=SETTINGS, task=st.sampled_from(["regions", "img2img", "inpaint", "upscale", "panorama", "outpaint"]))
def test_fuzz_stored_settings_with_embedded_images(rss_start, data, task):
    try:
        settings_from_parameters({**data, "mode": task}).options()
    except ValueError as exc:
        _clean(str(exc))


LINE = st.one_of(
    st.builds(
        lambda data, out: json.dumps({**data, "output": out}).encode(), SETTINGS, st.sampled_from(["a.png", "b.png", 3])
    ),
    st.binary(max_size=120),  # invalid UTF-8 included
    st.sampled_from([b"[" * 5000, b'{"prompt": "a", "seed": ' + b"9" * 5000 + b"}", b"{}", b"", b"null"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, min_size=1, max_size=5))
def test_fuzz_batch_lines_each_give_an_item_or_their_own_clean_error(tmp_path, rss_start, lines):
    from multidiffusion.cli.batch import read_items

    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    try:
        items = read_items(path, out)
    except ValueError as exc:  # the file as a whole (e.g. no items): one clean line
        _clean(str(exc))
        return
    for item in items:
        if item.error is not None:
            _clean(item.error)
            assert item.where.startswith("jobs.jsonl:")
        else:
            try:
                assert item.scene is not None  # parsed again as when it runs
            except ValueError as exc:
                _clean(str(exc))
