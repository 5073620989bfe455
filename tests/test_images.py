"""Untrusted image inputs (issue 11): one loader, multidiffusion.io.image_loader.open_image, with limits on
file size, pixels and map colours, shared by masks, segmentation maps, the CLI, scene files and the app."""

import base64
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multidiffusion import Region
from multidiffusion.io.image_loader import DEFAULT_LIMITS, ImageLimits, open_image
from multidiffusion.regions.colours import count_colours, load_rgb, segmentation_masks
from multidiffusion.regions.masks import load_mask

ROOT = Path(__file__).resolve().parents[1]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bilevel_png(width: int, height: int, complete: bool = True) -> bytes:
    """A black 1-bit greyscale PNG of any size, streamed (never width x height bytes in memory):
    30000 x 30000 is about 110 KB. ``complete=False`` cuts the pixel data after the first rows,
    so decoding it fails: a loader that refuses it for its size has not decoded it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then zero bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height if complete else 8))
    body += packer.flush() if complete else packer.flush(zlib.Z_SYNC_FLUSH)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _in_thread(call, timeout: float = 10.0):
    """Run ``call`` in a daemon thread: the result or exception, or fail if it is still blocked."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the call was still blocked after {timeout} s"
    return outcome


# -- colours -------------------------------------------------------------------------------------
MAP_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, sys, threading, time, tracemalloc
    import numpy as np
    from PIL import Image
    from multidiffusion import Region

    path, cap_mb = sys.argv[1], float(sys.argv[2])
    x = np.arange(256, dtype=np.uint8)
    rgb = np.zeros((256, 256, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1] = x[None, :], x[:, None]  # 65,536 colours, one per pixel
    Image.fromarray(rgb).save(path, optimize=True)
    # What the web app sends: every colour of the map, one with a prompt, the rest left to the background.
    table = {"#%02x%02x00" % (r, g): "" for g in range(256) for r in range(256)}
    table["#000000"] = "a red car"

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    base = rss_mb()

    def watchdog():  # the old code builds 65,536 masks (4.3 GB): stop it long before that
        while True:
            if rss_mb() - base > cap_mb:
                print(json.dumps({"killed_at_mb": rss_mb() - base}), flush=True)
                os._exit(3)
            time.sleep(0.005)

    threading.Thread(target=watchdog, daemon=True).start()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        Region.from_segmentation(path, table)
        error = None
    except ValueError as exc:
        error = str(exc)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({
        "error": error,
        "traced_peak_mb": peak / 2**20,
        "rss_growth_mb": rss_mb() - base,
        "maxrss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before) / 1024,
        "file_bytes": os.path.getsize(path),
    }))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="measures memory through /proc (Linux)")
def test_a_map_with_a_colour_per_pixel_is_refused_before_any_mask_in_little_memory(tmp_path):
    """The issue's map: 256 x 256, 65,536 colours, 571 bytes as a PNG, one colour given a prompt, the
    rest left to the background, as the web app sends it. Before: one 64 KB boolean mask per colour, 4.3 GB
    (the server reached 4.8 GB). Now it is refused after one np.unique over the pixels, before any mask.
    Measured for the whole call: 10.7 MB peak traced by tracemalloc, of which 10.6 MB is parsing the
    65,536-entry colour table (the map itself well under 1 MB); RSS grew 14 MB, peak RSS 21 MB. Asserted:
    under 32 MB traced and 128 MB of RSS. The subprocess is killed past 512 MB, so the old code fails here
    in about a second instead of taking the machine's memory."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run(
        [sys.executable, "-c", MAP_SCRIPT, str(tmp_path / "map.png"), "512"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, f"exit {run.returncode}: {run.stdout[-2000:]} {run.stderr[-2000:]}"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(result)
    assert result["file_bytes"] < 2000
    assert result["error"] is not None, "the map was accepted"
    assert "segmentation map has 65,536 colours" in result["error"]
    assert "at most 256 (max_colours)" in result["error"]
    assert result["traced_peak_mb"] < 32
    assert result["rss_growth_mb"] < 128 and result["maxrss_growth_mb"] < 128


def test_colour_limit_is_inclusive_and_applies_to_every_kind_of_map():
    codes = np.arange(257, dtype=np.uint32) * 0x010101 % 0x1000000
    rgb = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], -1).astype(np.uint8)[None]  # 1 x 257
    assert count_colours(rgb[:, :256]) == 256
    assert count_colours(Image.fromarray(rgb[:, :256])) == 256
    colours = [tuple(int(v) for v in c) for c in rgb[0, :256]]
    masks = segmentation_masks(rgb[:, :256], colours)
    assert len(masks) == 256 and all(int(m.sum()) == 1 and m[0, i] for i, m in enumerate(masks))
    for value in (rgb, Image.fromarray(rgb)):
        with pytest.raises(
            ValueError, match=r"^map has 257 colours; a colour map may have at most 256 \(max_colours\)"
        ):
            load_rgb(value)
        with pytest.raises(ValueError, match=r"^layout has 257 colours"):
            segmentation_masks(value, [*colours, (255, 255, 255)], "layout")
    assert count_colours(rgb, ImageLimits(max_colours=300)) == 257


# -- pixels --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "map.png"
    path.write_bytes(_bilevel_png(30000, 30000))
    return path


def test_a_30000_px_square_png_is_refused_from_its_header(huge_png):
    """A ~110 KB PNG that decodes to 900 Mpx. Before: "internal error (DecompressionBombError)" in the
    app, PIL's own message (its 179 Mpx limit, not ours) elsewhere. Now a ValueError naming the parameter,
    the file, its size and our limit."""
    assert huge_png.stat().st_size < 200_000
    limit = r"images may have at most 67,108,864 pixels \(max_pixels\)"
    with pytest.raises(ValueError, match=rf"^mask: '.*map\.png' is 900,000,000 pixels; {limit}"):
        load_mask(huge_png)
    with pytest.raises(ValueError, match=rf"^segmentation map: '.*map\.png' is 900,000,000 pixels; {limit}"):
        Region.from_segmentation(str(huge_png), {"#000": "a"})
    uri = "data:image/png;base64," + base64.b64encode(huge_png.read_bytes()).decode()
    with pytest.raises(ValueError, match=rf"^init image: the data URI is 900,000,000 pixels; {limit}"):
        open_image(uri, "init image")


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path):
    """9000 x 9000 = 81 Mpx: over our limit, under PIL's (so PIL would decode it). The pixel data is
    cut short, so decoding would fail: the message shows it was refused from the header alone."""
    path = tmp_path / "big.png"
    path.write_bytes(_bilevel_png(9000, 9000, complete=False))
    with pytest.raises(ValueError, match=r"^mask: '.*big\.png' is 9000x9000 = 81,000,000 pixels; images may have at"):
        load_mask(path)
    small = ImageLimits(max_pixels=100)
    with pytest.raises(ValueError, match=r"^mask: the image is 20x10 = 200 pixels; .* at most 100 pixels"):
        load_mask(Image.new("L", (20, 10)), limits=small)
    with pytest.raises(ValueError, match=r"^map: the map is 20x10 = 200 pixels; .* at most 100 pixels"):
        count_colours(np.zeros((10, 20, 3), np.uint8), small)
    assert open_image(Image.new("L", (10, 10)), "mask", small).size == (10, 10)


# -- files ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_opening_it(tmp_path, monkeypatch):
    fifo = tmp_path / "mask.png"
    os.mkfifo(fifo)
    link = tmp_path / "link.png"
    link.symlink_to(fifo)
    for value in (fifo, str(link)):
        outcome = _in_thread(lambda v=value: load_mask(v))
        assert isinstance(outcome.get("error"), ValueError), outcome
        assert "is not a regular file (a FIFO, socket or device?)" in str(outcome["error"])
    outcome = _in_thread(lambda: Region.from_segmentation(fifo, {"#000": "a"}))
    assert str(outcome["error"]).startswith("segmentation map: ") and "not a regular file" in str(outcome["error"])
    # Swapped for a FIFO between the stat and the open: the open does not block and fstat catches it.
    import multidiffusion.io.image_loader as images

    regular = tmp_path / "regular.png"
    Image.new("L", (4, 4)).save(regular)
    real_stat = os.stat
    monkeypatch.setattr(images.os, "stat", lambda p, *a, **k: real_stat(regular if Path(p) == fifo else p, *a, **k))
    outcome = _in_thread(lambda: open_image(fifo, "mask"))
    assert "is not a regular file" in str(outcome.get("error")), outcome


def test_folders_and_devices_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^mask: '.*' is a folder; give an image file"):
        load_mask(tmp_path)
    if os.path.exists("/dev/zero"):
        outcome = _in_thread(lambda: load_mask("/dev/zero"))
        assert "'/dev/zero' is not a regular file" in str(outcome.get("error")), outcome
    with pytest.raises(ValueError, match="no such file"):
        load_mask(tmp_path / "nowhere.png")


def _no_reading(monkeypatch):
    """Make every way of reading a file fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"opened {args[:1]}")

    monkeypatch.setattr(os, "open", refuse)
    monkeypatch.setattr(Image, "open", refuse)
    monkeypatch.setattr("builtins.open", refuse)


def test_a_file_over_max_bytes_is_refused_without_reading_it(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # sparse: takes no disk
        f.write(_bilevel_png(64, 64))
        f.truncate(DEFAULT_LIMITS.max_bytes + 1)
    small = tmp_path / "small.png"
    small.write_bytes(_bilevel_png(64, 64))
    _no_reading(monkeypatch)
    with pytest.raises(ValueError, match=r"^mask: '.*big\.png' is 64\.0 MB \(67,108,865 bytes\); image files may be"):
        load_mask(big)
    size = small.stat().st_size
    with pytest.raises(
        ValueError, match=rf"\({size:,} bytes\); image files may be at most 0\.0 MB \({size - 1} bytes\)"
    ):
        open_image(small, "mask", ImageLimits(max_bytes=size - 1))
    monkeypatch.undo()
    assert open_image(small, "mask", ImageLimits(max_bytes=small.stat().st_size)).size == (64, 64)


def test_a_data_uri_over_max_bytes_is_refused_before_decoding(monkeypatch):
    png = _bilevel_png(200, 200)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    limits = ImageLimits(max_bytes=len(png) // 2)
    import multidiffusion.io.image_loader as images

    def refuse(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(images.base64, "b64decode", refuse)
    with pytest.raises(ValueError, match=r"^mask: the data URI holds about .* bytes\); images may be at most"):
        load_mask(uri, limits=limits)
    monkeypatch.undo()
    assert load_mask(uri, limits=ImageLimits(max_bytes=len(png))).shape == (200, 200)
    huge = "data:image/png;base64," + "A" * (4 * (DEFAULT_LIMITS.max_bytes // 3 + 2))
    with pytest.raises(ValueError, match=r"^segmentation map: the data URI holds about 64\.0 MB"):
        Region.from_segmentation(huge, {"#000": "a"})


def test_files_that_are_not_images_are_refused_with_the_parameter_name(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    truncated = tmp_path / "cut.png"
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
    truncated.write_bytes(buffer.getvalue()[:300])
    for path in (text, truncated):
        with pytest.raises(ValueError, match=rf"^init image: '.*{path.name}' is not an image \("):
            open_image(path, "init image")
        with pytest.raises(ValueError, match=rf"^segmentation map: '.*{path.name}' is not an image"):
            Region.from_segmentation(path, {"#000": "a"})
    uri = "data:image/png;base64," + base64.b64encode(b"not a picture").decode()
    with pytest.raises(ValueError, match=r"^mask: the data URI is not an image \(cannot identify the format\); images"):
        load_mask(uri)
    with pytest.raises(ValueError, match=r"^mask is not a valid base64 PNG data URI \("):
        load_mask("data:image/png;base64,@@@")
    with pytest.raises(ValueError, match=r"^mask must be a path, a data:image/png;base64,\.\.\. URI or a PIL image"):
        open_image(42, "mask")


def test_limits_are_checked():
    assert ImageLimits(max_pixels=8192 * 8192, max_bytes=64 * 2**20, max_colours=256) == DEFAULT_LIMITS
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_colours must be a whole number"):
            ImageLimits(max_colours=bad)
