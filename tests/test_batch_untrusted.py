"""Issue 25 (holes 4, 7, 11) for batch and scene files: one bounded reader (regular files only, a
size cap, batch files streamed line by line with a per-line limit), every problem of one line or one
file that line's or file's own error, outputs written by two items or over an item's own input
refused by name, and every message one line naming the file once."""

from __future__ import annotations

import contextlib
import json
import os
import threading

import pytest
from PIL import Image

from multidiffusion.cli.batch import read_items
from multidiffusion.files.scene import load_scene
from multidiffusion.io import text

from .test_cli import run

SMALL = {"task": "panorama", "prompt": "hills", "height": 128, "width": 256, "num_inference_steps": 2}


def write_lines(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n")


def errors(items):
    return {item.where: item.error for item in items}


def unblock_later(fifo):
    """Open ``fifo`` for writing after a while, so that a reader blocked on it (the old code) gets
    EOF and the test fails instead of hanging; a reader that never opened it is left alone."""

    def writer():
        threading.Event().wait(5)
        with contextlib.suppress(OSError):  # no reader: nothing blocked
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=writer, daemon=True).start()


def test_a_batch_file_that_is_a_device_or_a_fifo_is_refused_at_once(tmp_path, capsys):
    # before: /dev/zero was read until MemoryError, a FIFO blocked forever
    code, _, err = run(["batch", "/dev/zero", "-q"], capsys)
    assert code == 2 and err.startswith("error: batch file '/dev/zero' is not a regular file") and err.count("\n") == 1
    fifo = tmp_path / "jobs.jsonl"
    os.mkfifo(fifo)
    unblock_later(fifo)
    code, _, err = run(["batch", str(fifo), "-q"], capsys)
    assert code == 2 and "is not a regular file (a FIFO, socket or device)" in err and err.count("\n") == 1


def test_a_scene_file_that_is_a_fifo_or_too_big_says_so(tmp_path):
    fifo = tmp_path / "scene.toml"
    os.mkfifo(fifo)
    unblock_later(fifo)
    with pytest.raises(ValueError, match=r"scene\.toml' is not a regular file \(a FIFO"):  # before: "does not exist"
        load_scene(fifo)
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(text.MAX_SCENE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(ValueError, match=r"big\.json' is 16\.0 MB .*; scene files may be at most 16\.0 MB"):
        load_scene(big)
    with pytest.raises(ValueError, match="does not exist"):
        load_scene(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "nested too deep to read; settings may nest at most 32"),
        ("deep.toml", b"a = " + b"[" * 5000 + b"]" * 5000, "nested too deep to read; settings may nest at most 32"),
        ("nested.toml", b"a = " + b"[" * 40 + b"1" + b"]" * 40, "nested more than 32 deep"),
        ("long.json", b'{"seed": ' + b"1" * 5000 + b"}", "a number has 5,000 digits; integers may have at most 40"),
        ("long.toml", b"seed = " + b"1" * 5000, "a number is too long; integers may have at most 40 digits"),
        ("bytes.toml", b'prompt = "\xff"', r"not UTF-8 text \(byte 0xff at column 11\)"),
    ],
)
def test_a_hostile_scene_file_is_one_line_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
        load_scene(path)
    text_ = str(caught.value)
    assert text_.startswith(f"{name}: ") and "\n" not in text_ and "1" * 50 not in text_
    assert "set_int_max_str_digits" not in text_ and "Recursion" not in text_


def test_every_bad_line_is_its_own_error_and_the_others_are_read(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    prompt_line = json.dumps({**SMALL, "prompt": "x" * text.MAX_LINE_BYTES, "output": "huge.png"}).encode()
    write_lines(
        jobs,
        [
            {**SMALL, "output": "first.png"},
            b"[" * 100_000,  # before: RecursionError ended the batch
            b'{"seed": ' + b"7" * 5000 + b', "output": "n.png"}',  # before: Python's 4300-digit text ended it
            b'{"prompt": "caf\xe9", "output": "c.png"}',  # Latin-1: before, the whole file was refused
            prompt_line,  # 16 MB and more: that line only
            {**SMALL, "output": "last.png"},
        ],
    )
    items = read_items(jobs, tmp_path)
    found = errors(items)
    assert found["jobs.jsonl:1"] is None and found["jobs.jsonl:6"] is None
    assert "nested too deep" in found["jobs.jsonl:2"]
    assert found["jobs.jsonl:3"] == "a number has 5,000 digits; integers may have at most 40 digits"
    assert found["jobs.jsonl:4"] == r"not UTF-8 text (byte 0xe9 at column 16)"
    assert (
        found["jobs.jsonl:5"].startswith("the line is 16.0 MB")
        and "batch lines may be at most 16.0 MB" in found["jobs.jsonl:5"]
    )
    assert items[0].scene.options.prompt == "hills"  # parsed again from the file when it runs
    # through the CLI: one line per bad item, no traceback, the good ones counted
    (tmp_path / "first.png").write_bytes(b"")  # "done": skipped, so that no model is needed
    (tmp_path / "last.png").write_bytes(b"")
    code, out, err = run(["batch", str(jobs), "-q"], capsys)
    assert (
        code == 1 and err.count("\n") == 4 and all(line.startswith("error: jobs.jsonl:") for line in err.splitlines())
    )
    assert "batch: 0 written, 2 skipped (output exists), 4 failed, of 6 items" in out
    assert "7" * 50 not in err + out and "Traceback" not in err


def test_one_bad_file_of_a_folder_is_its_own_error_named_once(tmp_path, capsys):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    (scenes / "good.toml").write_text('task = "panorama"\nprompt = "hills"\nheight = 128\nwidth = 256\n')
    (scenes / "deep.toml").write_bytes(b"a = " + b"[" * 5000 + b"]" * 5000)  # before: RecursionError, all aborted
    (scenes / "bytes.toml").write_bytes(b'prompt = "\xff"\n')
    (scenes / "broken.json").write_text("{")
    os.mkfifo(scenes / "pipe.json")
    found = errors(read_items(scenes, tmp_path))
    assert found["good.toml"] is None
    assert found["bytes.toml"] == "not UTF-8 text (byte 0xff at column 11)"  # before: "bytes.toml: bytes.toml: ..."
    assert found["broken.json"].startswith("not valid JSON")
    assert "nested too deep" in found["deep.toml"]
    assert found["pipe.json"].startswith("is not a regular file")
    (tmp_path / "good.png").write_bytes(b"")
    code, _, err = run(["batch", str(scenes), "--output-dir", str(tmp_path), "-q"], capsys)
    assert code == 1 and "error: bytes.toml: not UTF-8" in err
    for name in ("bytes.toml", "broken.json", "deep.toml", "pipe.json"):
        assert err.count(name) == 1, err


def test_two_items_writing_one_output_are_refused_by_name(tmp_path):
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    write_lines(
        tmp_path / "jobs.jsonl",
        [
            {**SMALL, "output": "out.png", "num_images_per_prompt": 2},  # out.png and out-2.png
            {**SMALL, "output": "a.png"},
            {**SMALL, "output": "b.png", "width": 100},  # bad: claims nothing
            {**SMALL, "output": "a.png"},
            {**SMALL, "output": "out-2.png"},
            {**SMALL, "output": "link.png"},  # a.png again, through a link
            {**SMALL, "output": "b.png"},
        ],
    )
    found = errors(read_items(tmp_path / "jobs.jsonl", tmp_path))
    assert found["jobs.jsonl:1"] is None and found["jobs.jsonl:2"] is None and found["jobs.jsonl:7"] is None
    assert found["jobs.jsonl:4"] == "output 'a.png' is also written by jobs.jsonl:2"
    assert found["jobs.jsonl:5"] == "output 'out-2.png' is also written by jobs.jsonl:1"
    assert found["jobs.jsonl:6"] == "output 'a.png' is also written by jobs.jsonl:2"


def test_an_item_that_would_write_over_its_own_input_is_refused(tmp_path, capsys):
    for name in ("photo.png", "mask.png", "p-2.png"):
        Image.new("RGB", (64, 64), "white").save(tmp_path / name)
    (tmp_path / "alias.png").symlink_to(tmp_path / "photo.png")
    before = (tmp_path / "photo.png").read_bytes()
    write_lines(
        tmp_path / "jobs.jsonl",
        [
            {"task": "upscale", "image": "photo.png", "scale": 2, "output": "photo.png"},
            {"task": "inpaint", "image": "photo.png", "mask": "mask.png", "prompt": "a", "output": "mask.png"},
            {"task": "regions", "regions": [{"prompt": "a", "mask": "mask.png"}], "output": "mask.png"},
            {"task": "upscale", "image": "photo.png", "scale": 2, "output": "alias.png"},
            {"task": "upscale", "image": "p-2.png", "scale": 2, "output": "p.png", "num_images_per_prompt": 2},
            {"task": "upscale", "image": "photo.png", "scale": 2, "output": "big.png"},
        ],
    )
    found = errors(read_items(tmp_path / "jobs.jsonl", tmp_path))
    assert found["jobs.jsonl:1"] == (
        "output 'photo.png' is this item's own input file (image); writing it would destroy the input: "
        "choose another output"
    )
    assert found["jobs.jsonl:2"].startswith("output 'mask.png' is this item's own input file (mask)")
    assert found["jobs.jsonl:3"].startswith("output 'mask.png' is this item's own input file (regions[0].mask)")
    assert found["jobs.jsonl:4"].startswith("output 'photo.png' is this item's own input file (image)")
    assert found["jobs.jsonl:5"].startswith("output 'p-2.png' is this item's own input file (image)")
    assert found["jobs.jsonl:6"] is None
    # before: --overwrite wrote the upscaled image over photo.png
    write_lines(tmp_path / "one.jsonl", [{"task": "upscale", "image": "photo.png", "scale": 2, "output": "photo.png"}])
    code, _, err = run(["batch", str(tmp_path / "one.jsonl"), "--overwrite", "-q"], capsys)
    assert code == 1 and err.startswith("error: one.jsonl:1: output 'photo.png' is this item's own input file (image)")
    assert (tmp_path / "photo.png").read_bytes() == before


def test_a_line_changed_after_the_check_is_not_run(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    write_lines(jobs, [{**SMALL, "output": "a.png"}])
    (item,) = read_items(jobs, tmp_path)
    write_lines(jobs, [{**SMALL, "prompt": "other", "output": "a.png"}])
    with pytest.raises(ValueError, match="the line has changed since the batch started"):
        item.scene  # noqa: B018


def test_a_numbered_output_may_not_be_a_link_out_of_the_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a-2.png").symlink_to(tmp_path / "elsewhere.png")
    write_lines(tmp_path / "jobs.jsonl", [{**SMALL, "output": "a.png", "num_images_per_prompt": 2}])
    (item,) = read_items(tmp_path / "jobs.jsonl", out)
    assert "is outside the output folder" in item.error
