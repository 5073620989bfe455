"""Audit of hostile and careless inputs, reproducible: ``python -m devtools.audit_inputs --repo PATH --out R.json``.

Tries a few hundred inputs (image files, scene files, batch files, stored PNG settings, CLI numbers,
weights files, the app's upload handlers called in-process, library calls) against the checkout at
PATH and classifies each from what actually happened:

* clean: a result, or a refusal that is one line ``error: ...`` on stderr with exit 2 (the CLI;
  argparse's usage refusal counts too), a batch whose stderr lines are all ``error: ...`` one per
  failed item with its good items written, or a ValueError/TypeError with a one-line message (the
  library), within the time bound and the memory bound;
* unclean: a traceback, an internal error (exit 1 ``error: SomeError: ...``), another exception
  type, a multi-line message, an object repr (``<... at 0x``), a 300+ digit number, Python's own
  texts (recursion, int digits limit, MemoryError), a server or secret path or content in the
  message, exit 0 for an input that must be refused, a degenerate (one-colour) or wrong-sized
  result, a hang, a memory overrun, or a side effect: a marker file written by PostScript or a
  pickle, an input file changed, a watched file read (its access time moved), a file written
  outside the output.

Cases run in a fork server: one process of the checkout's Python imports multidiffusion (and torch)
once, then forks a child per case (cwd in the case's own folder, stdin/stdout/stderr to files,
``multidiffusion.cli.main(argv)`` wrapped as ``python -m multidiffusion`` is), so each case costs its
own work only. ``--spawn`` runs each CLI case as a fresh ``python -m multidiffusion`` instead (slower,
the same classification). Peak memory is the child's ru_maxrss from wait4 (it includes the imports'
pages, ~0.5 GB); the child is killed past ``--kill-mb`` to protect the machine.

The harness needs PIL and numpy (run it with the project's virtual environment's Python).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECRET_TEXT = "root:$6$AUDITSECRET$0123456789abcdef:19000:0:99999:7:::\n"
"""The content of the shadow-like file outside every case's folder; seen in a message = leaked."""
OLD_TIME = 946684800  # 2000-01-01: a watched file's access time, moved by any read (relatime)

UNCLEAN_PATTERNS = [
    (re.compile(r"Traceback \(most recent call last\)"), "traceback"),
    (re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>"), "object repr in message"),
    (re.compile(r"\d{300,}"), "300+ digit number in message"),
    (re.compile(r"set_int_max_str_digits|Exceeds the limit \(\d+ digits\)"), "Python's int digits text"),
    (re.compile(r"RecursionError|maximum recursion depth"), "recursion error text"),
    (re.compile(r"MemoryError"), "MemoryError text"),
    (re.compile(r"AUDITSECRET"), "secret file's content in message"),
]


# -- fixtures ----------------------------------------------------------------------------------------
def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def raw_png(width: int, height: int, mode_byte: int = 0, bit_depth: int = 8, data: bytes | None = None) -> bytes:
    """A PNG written by hand: any IHDR (0x0, huge), with ``data`` (zlib-compressed scanlines) or zeros."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, mode_byte, 0, 0, 0)
    if data is None:
        data = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def zero_png(side: int, white_rows: int = 0) -> bytes:
    """A real side x side greyscale PNG of zeros (its first ``white_rows`` white), compressed by
    streaming (no side^2 buffer kept)."""
    comp = zlib.compressobj(9)
    row, white = b"\x00" * (side + 1), b"\x00" + b"\xff" * side
    parts = [comp.compress(white if y < white_rows else row) for y in range(side)]
    parts.append(comp.flush())
    return raw_png(side, side, 0, 8, b"".join(parts))


def eps(marker: Path | None, loop: bool = False) -> bytes:
    """An EPS whose PostScript writes ``marker`` (or loops forever) when Ghostscript renders it."""
    body = "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
    if marker is not None:
        body += f"/f ({marker}) (w) file def\nf (ghostscript ran) writestring\nf closefile\n"
    if loop:
        body += "{ 1 pop } loop\n"
    body += "newpath 0 0 moveto 64 0 lineto 64 64 lineto closepath 0.5 setgray fill\nshowpage\n"
    return body.encode()


class MarkerPickle:
    """Unpickling it writes a marker file (what a hostile .ckpt/.pth does, harmlessly)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pickle-ran > {self.marker}",))


def pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": MarkerPickle(str(marker))})


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def stored_png(params: dict[str, Any] | str, size: tuple[int, int] = (64, 64)) -> bytes:
    """A PNG holding ``params`` under the multidiffusion key (a dict as JSON, or text as it is)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("multidiffusion", params if isinstance(params, str) else json.dumps(params))
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 160)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


class Fixtures:
    """Shared inputs built once under ROOT/fix, and the watched outside files under ROOT/outside."""

    def __init__(self, root: Path):
        import numpy as np
        from PIL import Image

        self.root = root
        self.fix = root / "fix"
        self.outside = root / "outside"
        self.markers = root / "markers"
        for d in (self.fix, self.outside, self.markers):
            d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        noise = Image.fromarray(rng.integers(40, 215, (64, 64, 3), dtype=np.uint8))
        self.good = png_bytes(noise)
        self.good_mask = png_bytes(Image.fromarray(np.pad(np.full((32, 32), 255, np.uint8), 16)))
        (self.outside / "shadow").write_text(SECRET_TEXT)
        (self.outside / "secret.png").write_bytes(self.good)
        self.write("good.png", self.good)
        self.write("mask.png", self.good_mask)
        self.write("truncated.png", self.good[: len(self.good) // 2])
        self.write("zero.png", raw_png(0, 0))
        self.write("one.png", png_bytes(Image.new("RGB", (1, 1), (128, 128, 128))))
        self.write("empty.png", b"")
        self.write("text.png", b"just some text, not an image\n")
        self.write("header-bomb.png", raw_png(1_000_000, 1_000_000, 2))
        self.write("pixel-bomb.png", zero_png(12000))
        self.write("wide.png", png_bytes(Image.new("RGB", (8192, 4), (128, 128, 128))))
        self.write("grey16.png", png_bytes(Image.fromarray(np.full((64, 64), 32768, np.uint16))))
        buf = io.BytesIO()
        Image.fromarray(np.full((64, 64), 0.5, np.float32), mode="F").save(buf, format="TIFF")
        self.write("float32.tiff", buf.getvalue())
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90: a 128x64 file shows as 64x128
        buf = io.BytesIO()
        Image.new("RGB", (128, 64), (120, 90, 60)).save(buf, format="JPEG", exif=exif.tobytes())
        self.write("exif6.jpg", buf.getvalue())
        frames = [Image.new("RGB", (64, 64), c) for c in ((200, 0, 0), (0, 200, 0))]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
        self.write("anim.gif", buf.getvalue())
        buf = io.BytesIO()
        Image.new("CMYK", (64, 64), (10, 50, 90, 0)).save(buf, format="JPEG")
        self.write("cmyk.jpg", buf.getvalue())
        self.write("rgba.png", png_bytes(Image.new("RGBA", (64, 64), (100, 150, 200, 0))))
        self.pickle = pickle_bytes(self.markers / "PICKLE")  # the marker name is replaced per case

    def write(self, name: str, data: bytes) -> Path:
        path = self.fix / name
        path.write_bytes(data)
        return path


# -- cases ---------------------------------------------------------------------------------------------
@dataclass
class Case:
    kind: str
    name: str
    argv: list[str] | None = None  # a CLI case: multidiffusion's arguments
    code: str | None = None  # a library case: Python run in the child (sets `result`, may set `wrong`)
    expect: str = "any"  # "refuse": exit 0 / a result is unclean; "run": a refusal is unclean too
    setup: Any = None  # callable(cwd: Path, ctx: Ctx) preparing the case's folder
    timeout: float | None = None
    outputs: list[str] = field(default_factory=list)  # batch: outputs of the good items, must be written
    size: tuple[int, int] | None = None  # the result's expected size (width, height)
    forbid: list[str] = field(default_factory=list)  # substrings a message must not hold (lower case)
    must_name: str | None = None  # a word the refusal must name (the field)
    pair: str | None = None  # an existence-oracle pair: cases with the same pair must not differ


@dataclass
class Ctx:
    fx: Fixtures
    case_dir: Path
    markers: Path
    protect: list[Path] = field(default_factory=list)  # files whose bytes must not change
    watch: list[Path] = field(default_factory=list)  # files that must not be read (atime)


D = ["--model", "demo", "--steps", "1", "-q"]
S64 = ["--width", "64", "--height", "64"]
OUT = ["-o", "out.png"]


def put(cwd: Path, ctx: Ctx, name: str, source: str | bytes | None = None, data: bytes | None = None) -> Path:
    """Copy fixture ``source`` (or ``data``) to ``cwd/name``."""
    path = cwd / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = (ctx.fx.fix / source).read_bytes() if isinstance(source, str) else source
    path.write_bytes(data or b"")
    return path


def watched(path: Path, ctx: Ctx, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    os.utime(path, (OLD_TIME, time.time()))
    ctx.watch.append(path)
    return path


def watch_dir(path: Path, ctx: Ctx) -> None:
    """A folder that must not be listed (its access time moves when it is read)."""
    ctx.watch.append(path)


def image_sources(ctx_marker_name: str = "") -> dict[str, Any]:
    """Hostile and careless image files: name -> callable(cwd, ctx) returning the path to give."""

    def fixture(src: str, name: str | None = None):
        return lambda cwd, ctx: put(cwd, ctx, name or src, src)

    def eps_png(cwd, ctx):
        return put(cwd, ctx, "photo.png", data=eps(ctx.case_dir / "tmp" / "gs-ran"))

    def eps_loop(cwd, ctx):
        return put(cwd, ctx, "loop.png", data=eps(None, loop=True))

    def eps_ext(cwd, ctx):
        return put(cwd, ctx, "drawing.eps", data=eps(ctx.case_dir / "tmp" / "gs-ran"))

    def fifo(cwd, ctx):
        path = cwd / "fifo.png"
        os.mkfifo(path)
        return path

    def folder(cwd, ctx):
        path = cwd / "folder.png"
        path.mkdir()
        return path

    def shadow_link(cwd, ctx):
        path = cwd / "avatar.png"
        path.symlink_to(watched(ctx.case_dir / "outside" / "shadow", ctx, SECRET_TEXT))
        return path

    return {
        "eps-named-png": eps_png,
        "eps-endless-loop": eps_loop,
        "eps-extension": eps_ext,
        "truncated-png": fixture("truncated.png"),
        "0x0-png": fixture("zero.png"),
        "1x1-png": fixture("one.png"),
        "empty-file": fixture("empty.png"),
        "text-named-png": fixture("text.png"),
        "header-bomb-1e6-squared": fixture("header-bomb.png"),
        "pixel-bomb-12000-squared": fixture("pixel-bomb.png"),
        "8192x4-strip": fixture("wide.png"),
        "fifo": fifo,
        "dev-zero": lambda cwd, ctx: Path("/dev/zero"),
        "folder": folder,
        "symlink-to-shadow": shadow_link,
        "missing-file": lambda cwd, ctx: cwd / "missing.png",
    }


REFUSE_IMAGES = {
    "eps-named-png",
    "eps-endless-loop",
    "eps-extension",
    "truncated-png",
    "0x0-png",
    "empty-file",
    "text-named-png",
    "header-bomb-1e6-squared",
    "pixel-bomb-12000-squared",
    "fifo",
    "dev-zero",
    "folder",
    "symlink-to-shadow",
    "missing-file",
}


ENTRY_IMAGES = ("eps-named-png", "truncated-png", "1x1-png", "header-bomb-1e6-squared", "fifo", "dev-zero", "folder")
ENTRY_IMAGES += ("symlink-to-shadow",)


def image_cases() -> list[Case]:
    cases = []
    entries = {
        "img2img -i": lambda p: ["img2img", "-i", p, "x", "--strength", "1", *D, *S64, "-o", "out.png"],
        "inpaint --mask": lambda p: ["inpaint", "-i", "good.png", "--mask", p, "x", "--strength", "1", *D, *OUT],
        "regions --mask": lambda p: ["regions", "--background", "a", "--region", "b", "--mask", p, *D, *S64, *OUT],
        "panorama --control-image": lambda p: [
            "panorama",
            "x",
            "--controlnet",
            "demo",
            "--control-image",
            p,
            *D,
            *S64,
            *OUT,
        ],
    }
    for entry, argv_of in entries.items():
        for name, make in image_sources().items():
            if entry != "img2img -i" and name not in ENTRY_IMAGES:
                continue

            def setup(cwd, ctx, make=make):
                put(cwd, ctx, "good.png", "good.png")
                ctx.protect.append(cwd / "good.png")
                ctx.given = str(make(cwd, ctx))  # type: ignore[attr-defined]

            cases.append(
                Case(
                    "image files",
                    f"{entry} {name}",
                    argv=argv_of("{given}"),
                    setup=setup,
                    expect="refuse" if name in REFUSE_IMAGES else "any",
                    timeout=30 if "loop" in name or name in ("fifo", "dev-zero") else None,
                )
            )
    # careful but legitimate images: must run, with the right size
    for name, src, size in (
        ("16-bit greyscale png", "grey16.png", (64, 64)),
        ("32-bit float tiff", "float32.tiff", (64, 64)),
        ("EXIF-rotated jpeg (orientation 6)", "exif6.jpg", (64, 128)),
        ("animated gif", "anim.gif", (64, 64)),
        ("cmyk jpeg", "cmyk.jpg", (64, 64)),
        ("transparent rgba png", "rgba.png", (64, 64)),
    ):
        cases.append(
            Case(
                "image files",
                f"img2img -i {name}",
                argv=["img2img", "-i", src, "x", "--strength", "1", *D, "-o", "out.png"],
                setup=lambda cwd, ctx, src=src: put(cwd, ctx, src, src),
                expect="run",
                size=size,
            )
        )
    return cases


def library_cases() -> list[Case]:
    """The library's image loader on the careless inputs whose result can be checked by value."""
    checks = {
        "16-bit mid-grey png reads as mid-grey": (
            "grey16.png",
            "im = input_image(P).image; m = float(np.asarray(im).mean()); result = f'mean {m:.0f}'\n"
            "wrong = None if 100 < m < 156 else f'16-bit mid-grey read as mean {m:.0f} of 255 (clipped, not scaled)'",
        ),
        "32-bit float 0.5 tiff reads as mid-grey": (
            "float32.tiff",
            "im = input_image(P).image; m = float(np.asarray(im).mean()); result = f'mean {m:.0f}'\n"
            "wrong = None if 100 < m < 156 else f'float 0.5 read as mean {m:.1f} of 255 (clipped, not scaled)'",
        ),
        "EXIF orientation 6 jpeg reads upright": (
            "exif6.jpg",
            "im = input_image(P).image; result = f'{im.size}'\n"
            "wrong = None if im.size == (64, 128) else f'EXIF orientation ignored: {im.size}, expected (64, 128)'",
        ),
        "rgba mask alpha": (
            "rgba.png",
            "im = input_image(P, 'mask', mode='L').image; result = f'mask mean {np.asarray(im).mean():.0f}'",
        ),
    }
    cases = []
    prelude = "import numpy as np\nfrom multidiffusion.io.image_loader import input_image\n"
    for name, (src, body) in checks.items():
        cases.append(
            Case(
                "library",
                name,
                code=prelude + f"P = {src!r}\n" + body,
                setup=lambda cwd, ctx, src=src: put(cwd, ctx, src, src),
                expect="run",
            )
        )
    eps_b64 = "__EPS_URI__"
    hostile = {
        "input_image(EPS data URI)": f"result = input_image({eps_b64!r}).image.size",
        "input_image(null byte in path)": "result = input_image('a\\x00b.png').image.size",
        "input_image(int)": "result = input_image(12345).image.size",
        "input_image(record to FIFO)": "import os; os.mkfifo('f.png')\n"
        "result = input_image({'path': 'f.png', 'sha256': '0' * 64}).image.size",
        "input_image(record with list sha)": "result = input_image({'path': 'x.png', 'sha256': [1]}).image.size",
        "input_image(truncated data URI)": "import base64\n"
        "result = input_image('data:image/png;base64,' + base64.b64encode(open('t.png','rb').read()).decode()).image",
        "input_image(non-base64 data URI)": "result = input_image('data:image/png;base64,@@@@').image",
        "input_image(huge data URI header)": "import base64\n"
        "result = input_image('data:image/png;base64,' + base64.b64encode(open('hb.png','rb').read()).decode()).image",
        "load_scene(deeply nested JSON)": "open('s.json','w').write('{\"a\": ' + '[' * 100000 + ']' * 100000 + '}')\n"
        "from multidiffusion import load_scene; result = load_scene('s.json')",
        "load_scene(5000-digit width)": "open('s.toml','w').write('width = ' + '9' * 5000 + '\\n')\n"
        "from multidiffusion import load_scene; result = load_scene('s.toml')",
        "load_scene(invalid UTF-8)": "open('s.toml','wb').write(b'background = \"\\xff\\xfe\"\\n')\n"
        "from multidiffusion import load_scene; result = load_scene('s.toml')",
        "read_settings(non-dict JSON)": "from multidiffusion.files.metadata import read_settings\n"
        "result = read_settings('nd.png')",
    }

    def setup_h(cwd, ctx):
        put(cwd, ctx, "t.png", "truncated.png")
        put(cwd, ctx, "hb.png", "header-bomb.png")
        put(cwd, ctx, "nd.png", data=stored_png("[1, 2, 3]"))

    for name, body in hostile.items():
        cases.append(
            Case("library", name, code=prelude + body, setup=setup_h, expect="refuse", timeout=30),
        )
    return cases


def app_cases() -> list[Case]:
    """The web app's upload handlers called in-process (a stand-in for HTTP: no Gradio component)."""
    cases = []
    calls = {
        "read_upload": "from multidiffusion.app.inputs import read_upload; result = read_upload(P, 'image', L).size",
        "preview_control": "from multidiffusion.app.handlers import preview_control\n"
        "result = preview_control(P, 'canny', L)",
    }
    names = ("eps-named-png", "eps-endless-loop", "truncated-png", "1x1-png", "header-bomb-1e6-squared", "fifo")
    names += ("dev-zero", "folder", "symlink-to-shadow")
    for call, body in calls.items():
        for name in names:
            make = image_sources()[name]

            def setup(cwd, ctx, make=make):
                ctx.given = str(make(cwd, ctx))  # type: ignore[attr-defined]

            code = "from multidiffusion.app.limits import ServerLimits\nL = ServerLimits()\nP = '{given}'\n" + body
            cases.append(
                Case(
                    "app uploads (handlers in-process)",
                    f"{call} {name}",
                    code=code,
                    setup=setup,
                    expect="refuse" if name in REFUSE_IMAGES else "any",
                    timeout=30 if "loop" in name or name in ("fifo", "dev-zero") else None,
                )
            )
    return cases


BASE_SCENE = 'model = "demo"\nwidth = 64\nheight = 64\nbackground = "a field"\n'
REGION = '[[regions]]\nprompt = "a sun"\nbox = [0.0, 0.0, 0.5, 0.5]\n'


def scene_cases() -> list[Case]:
    cases = []

    def scene(name, text, *, argv=None, extra=None, expect="refuse", folder="scenes", **kw):
        def setup(cwd, ctx):
            d = cwd / folder
            d.mkdir(parents=True, exist_ok=True)
            data = text if isinstance(text, bytes) else text.replace("{case}", str(ctx.case_dir)).encode()
            (d / ("s.json" if data.lstrip().startswith(b"{") else "s.toml")).write_bytes(data)
            ctx.given = str(d / ("s.json" if data.lstrip().startswith(b"{") else "s.toml"))  # type: ignore
            if extra:
                extra(cwd, ctx)

        cases.append(
            Case(
                "scene files",
                name,
                argv=argv or ["regions", "{given}", "--steps", "1", "-q", "-o", "out.png"],
                setup=setup,
                expect=expect,
                **kw,
            )
        )

    def outside_png(cwd, ctx):
        watched(cwd / "secret.png", ctx, ctx.fx.good)
        watched(ctx.case_dir / "outside" / "secret.png", ctx, ctx.fx.good)

    def link_png(cwd, ctx):
        outside_png(cwd, ctx)
        (cwd / "scenes" / "link.png").symlink_to(cwd / "secret.png")

    def link_dir(cwd, ctx):
        outside_png(cwd, ctx)
        (cwd / "scenes" / "sub").symlink_to(ctx.case_dir / "outside")

    region_mask = BASE_SCENE + '[[regions]]\nprompt = "a sun"\nmask = "{}"\n'
    scene("mask ../ escape", region_mask.format("../secret.png"), extra=outside_png)
    scene("mask absolute path", region_mask.format("{case}/outside/secret.png"), extra=outside_png)
    scene("mask symlink to outside file", region_mask.format("link.png"), extra=link_png)
    scene("mask through symlinked folder", region_mask.format("sub/secret.png"), extra=link_dir)
    scene(
        "mask null byte in name",
        '{"model": "demo", "width": 64, "height": 64, "background": "a", '
        '"regions": [{"prompt": "b", "mask": "a\\u0000.png"}]}',
        must_name="mask",
    )
    seg = BASE_SCENE + '[segmentation]\nmap = "../secret.png"\n[segmentation.colors]\n"#000000" = "x"\n'
    scene("segmentation map ../ escape", seg, extra=outside_png)

    def evil_model(cwd, ctx):
        for folder in ("scenes", "."):  # in the scene's folder and in the current one
            put(cwd, ctx, f"{folder}/in.png", "good.png")
            put(cwd, ctx, f"{folder}/evil.ckpt", data=pickle_bytes(ctx.markers / "pickle-ran"))
            put(cwd, ctx, f"{folder}/up.pth", data=b"not weights")

    up_scene = (
        'task = "upscale"\nmodel = "evil.ckpt"\nimage = "in.png"\nupscaler = "up.pth"\nscale = 1\nstrength = 1.0\n'
    )
    up_argv = ["upscale", "--scene", "{given}", "--allow-pickle", "--steps", "1", "-q", "-o", "out.png"]
    # the scene in the current folder: the old code resolves a scene's model from there
    scene(
        "model = evil.ckpt with --allow-pickle for upscaler = up.pth",
        up_scene,
        argv=up_argv,
        extra=evil_model,
        folder="scenes",
    )
    scene(
        "model = evil.ckpt without --allow-pickle",
        up_scene,
        argv=[a for a in up_argv if a != "--allow-pickle"],
        extra=evil_model,
    )

    def cwd_model(cwd, ctx):
        watched(cwd / "org" / "name" / "model_index.json", ctx, '{"_class_name": "StableDiffusionPipeline"}')
        watch_dir(cwd / "org" / "name", ctx)

    scene("model org/name exists in cwd", BASE_SCENE.replace('"demo"', '"org/name"') + REGION, extra=cwd_model)

    def cwd_cn(cwd, ctx):
        watched(cwd / "mycn" / "config.json", ctx, '{"_class_name": "ControlNetModel"}')
        watch_dir(cwd / "mycn", ctx)
        put(cwd, ctx, "scenes/c.png", "good.png")

    scene(
        "controlnet name resolved from cwd",
        BASE_SCENE + 'controlnet = "mycn"\ncontrol_image = "c.png"\n' + REGION,
        extra=cwd_cn,
    )

    def cwd_lora(cwd, ctx):
        watched(cwd / "style" / "pytorch_lora_weights.safetensors", ctx, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
        watch_dir(cwd / "style", ctx)

    scene("lora name resolved from cwd", BASE_SCENE + '[loras]\nstyle = "style"\n' + REGION, extra=cwd_lora)
    scene("deep nesting JSON", '{"regions": ' + "[" * 100000 + "]" * 100000 + "}")
    scene("deep nesting TOML", BASE_SCENE + "x = " + "[" * 5000 + "]" * 5000 + "\n")
    scene("5000-digit width", BASE_SCENE.replace("width = 64", "width = " + "9" * 5000) + REGION)
    scene(
        "5000-digit seed JSON",
        '{"model": "demo", "width": 64, "height": 64, "background": "a", "seed": ' + "9" * 5000 + "}",
    )
    scene("invalid UTF-8 TOML", BASE_SCENE.encode() + b'negative_prompt = "\xff\xfe"\n' + REGION.encode())
    scene("invalid UTF-8 JSON", b'{"model": "demo", "background": "\xff\xfe"}')
    scene("empty scene", "", expect="any")
    scene("unknown key", BASE_SCENE + "frobnicate = 3\n" + REGION)
    for field_name, value in (
        ("width", '"64"'),
        ("height", "[64]"),
        ("seed", "1.5"),
        ("seed", "-5"),
        ("num_inference_steps", "true"),
        ("num_inference_steps", "100000000"),
        ("guidance_scale", '"high"'),
        ("guidance_scale", "nan"),
        ("guidance_scale", "inf"),
        ("negative_prompt", "{ a = 1 }"),
        ("scheduler", '["ddim"]'),
        ("scheduler", '"evil"'),
        ("window", "-1"),
        ("stride", "0"),
        ("circular", '"yes"'),
        ("width", "16384"),
    ):
        text = "".join(ln for ln in BASE_SCENE.splitlines(keepends=True) if not ln.startswith(field_name + " "))
        steps = [] if field_name == "num_inference_steps" else ["--steps", "1"]  # a flag would override it
        scene(
            f"{field_name} = {value}",
            text + f"{field_name} = {value}\n" + REGION,
            argv=["regions", "{given}", *steps, "-q", "-o", "out.png"],
            expect="refuse",
            timeout=60 if value in ("16384", "100000000") else None,
        )
    for name, region, *expect in (
        ("regions = string", 'regions = "abc"\n'),
        ("regions = [1]", "regions = [1]\n"),
        ("box = string", '[[regions]]\nprompt = "a"\nbox = "0,0,1,1"\n'),
        ("box out of range", '[[regions]]\nprompt = "a"\nbox = [0, 0, 2, 2]\n', "any"),
        ("box nan", '[[regions]]\nprompt = "a"\nbox = [0, 0, nan, 1]\n'),
        ("region prompt = 123", "[[regions]]\nprompt = 123\nbox = [0, 0, 1, 1]\n"),
        ("region mask = 5", '[[regions]]\nprompt = "a"\nmask = 5\n'),
        ("10000 regions", '[[regions]]\nprompt = "a"\nbox = [0, 0, 1, 1]\n' * 10000),
    ):
        scene(name, BASE_SCENE + region, expect=expect[0] if expect else "refuse")

    def fifo_scene(cwd, ctx):
        (cwd / "scenes").mkdir()
        os.mkfifo(cwd / "scenes" / "fifo.toml")

    cases.append(
        Case(
            "scene files",
            "FIFO scene file",
            argv=["regions", "scenes/fifo.toml", "-o", "out.png", "-q"],
            setup=fifo_scene,
            expect="refuse",
            timeout=30,
            forbid=["does not exist", "no such"],
        )
    )
    cases.append(
        Case(
            "scene files",
            "/dev/zero as scene",
            argv=["regions", "/dev/zero", "-o", "out.png", "-q"],
            expect="refuse",
            timeout=30,
            forbid=["does not exist", "no such"],
        )
    )
    cases.append(
        Case(
            "scene files",
            "folder as scene",
            argv=["regions", "scenes", "-o", "out.png", "-q"],
            setup=lambda cwd, ctx: (cwd / "scenes").mkdir(),
            expect="refuse",
            forbid=["does not exist", "no such"],
        )
    )
    return cases


def batch_cases() -> list[Case]:
    cases = []
    good = {"task": "panorama", "prompt": "a", "width": 64, "height": 64, "num_inference_steps": 1, "output": "g.png"}
    good_line = json.dumps(good).encode() + b"\n"

    def batch(name, body, *, outputs=("g.png",), expect="refuse", extra=None, args=(), **kw):
        def setup(cwd, ctx):
            data = body(cwd, ctx) if callable(body) else body
            (cwd / "jobs.jsonl").write_bytes(data)
            if extra:
                extra(cwd, ctx)

        argv = ["batch", "jobs.jsonl", "--output-dir", "outdir", "-q", *args]
        cases.append(Case("batch files", name, argv=argv, setup=setup, expect=expect, outputs=list(outputs), **kw))

    def line(**changes):
        return json.dumps({**good, **changes}).encode() + b"\n"

    batch("good line only", good_line, expect="run")
    batch("nested JSON line", b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}\n" + good_line)
    batch("5000-digit int line", b'{"task": "panorama", "seed": ' + b"9" * 5000 + b', "output": "x.png"}\n' + good_line)
    batch("invalid UTF-8 line", b'{"task": "panorama", "prompt": "\xff\xfe", "output": "x.png"}\n' + good_line)
    batch("not JSON line", b"this is not json\n" + good_line)
    batch("JSON array line", b"[1, 2, 3]\n" + good_line)
    batch("null line", b"null\n" + good_line)
    batch(
        "100 MB prompt line", lambda cwd, ctx: line(prompt="a" * 100_000_000, output="big.png") + good_line, timeout=90
    )
    batch("10 MB line of whitespace", b" " * 10_000_000 + b"\n" + good_line, expect="any")
    batch("duplicate outputs", good_line + line(prompt="b") + line(prompt="c", output="h.png"), outputs=("h.png",))
    batch("output escapes output dir", line(output="../escape.png") + good_line)
    batch("output absolute", lambda cwd, ctx: line(output=str(ctx.case_dir / "abs.png")) + good_line)
    batch("output null byte", line(output="a\x00.png") + good_line, must_name="output")
    batch("output = 5", line(output=5) + good_line)
    batch("width 16384 x 16384", line(width=16384, height=16384, output="huge.png"), outputs=(), timeout=60)
    batch("guidance 1e308", line(guidance_scale=1e308, output="black.png"), outputs=())
    batch("steps 10**5000 as float", line(num_inference_steps=1e308, output="x.png") + good_line)
    batch("task unknown", line(task="serve") + good_line)
    batch(
        "image ../ escape",
        lambda cwd, ctx: line(task="img2img", image="../outside.png", output="x.png") + good_line,
        extra=lambda cwd, ctx: watched(cwd.parent / "outside.png", ctx, ctx.fx.good),
    )

    def inplace(cwd, ctx):
        put(cwd, ctx, "outdir/in.png", "good.png")
        ctx.protect.append(cwd / "outdir" / "in.png")

    batch(
        "output is its own input with --overwrite",
        line(task="img2img", image="outdir/in.png", output="in.png", strength=1.0) + good_line,
        extra=inplace,
        args=("--overwrite",),
    )

    def evil(cwd, ctx):
        put(cwd, ctx, "evil.ckpt", data=pickle_bytes(ctx.markers / "pickle-ran"))

    batch(
        "model evil.ckpt in a line, --allow-pickle for another reason",
        line(model="evil.ckpt", output="x.png") + good_line,
        extra=evil,
        args=("--allow-pickle",),
    )
    batch("model evil.ckpt in a line", line(model="evil.ckpt", output="x.png") + good_line, extra=evil)
    batch(
        "model org/name exists in cwd",
        line(model="org/name", output="x.png") + good_line,
        extra=lambda cwd, ctx: watched(cwd / "org" / "name" / "model_index.json", ctx, "{}"),
    )
    batch(
        "eps image in a line",
        line(task="img2img", image="photo.png", strength=1.0, output="x.png") + good_line,
        extra=lambda cwd, ctx: put(cwd, ctx, "photo.png", data=eps(ctx.case_dir / "tmp" / "gs-ran")),
    )

    for name, target, timeout in (("/dev/zero", "/dev/zero", 30), ("FIFO", "FIFO", 30), ("folder", "FOLDER", None)):

        def setup(cwd, ctx, target=target):
            if target == "FIFO":
                os.mkfifo(cwd / "jobs.jsonl")
            elif target == "FOLDER":
                (cwd / "jobs.jsonl").mkdir()

        path = target if target.startswith("/") else "jobs.jsonl"
        cases.append(
            Case(
                "batch files",
                f"batch {name}",
                argv=["batch", path, "--output-dir", "outdir", "-q"],
                setup=setup,
                expect="refuse",
                timeout=timeout,
            )
        )

    def folder_bad_toml(cwd, ctx):
        d = cwd / "scenes"
        d.mkdir()
        (d / "a.toml").write_text(
            'task = "panorama"\nprompt = "a"\nwidth = 64\nheight = 64\nnum_inference_steps = 1\noutput = "g.png"\n'
        )
        (d / "0-bad.toml").write_text("this = is = not toml\n")  # sorted first

    cases.append(
        Case(
            "batch files",
            "folder with one bad TOML",
            argv=["batch", "scenes", "--output-dir", "outdir", "-q"],
            setup=folder_bad_toml,
            expect="refuse",
            outputs=["g.png"],
        )
    )
    return cases


def stored_cases(bases: dict[str, dict[str, Any]]) -> list[Case]:
    """``--from`` PNGs with hostile settings; ``bases``: real settings written by the checkout."""
    cases = []
    pano, regions, img2img = bases["panorama"], bases["regions"], bases["img2img"]

    def stored(name, params, verb="panorama", *, extra=None, args=(), expect="refuse", **kw):
        def setup(cwd, ctx):
            value = params(cwd, ctx) if callable(params) else params
            (cwd / "from.png").write_bytes(value if isinstance(value, bytes) else stored_png(value))
            if extra:
                extra(cwd, ctx)

        argv = [verb, "--from", "from.png", "-q", "-o", "out.png", *args]
        cases.append(Case("stored settings (--from)", name, argv=argv, setup=setup, expect=expect, **kw))

    stored("panorama as written", pano, expect="run")

    def seg(path):
        def params(cwd, ctx):
            value = {k: v for k, v in regions.items() if k != "regions"}
            value["segmentation"] = {"map": path, "colors": {"#000000": "x"}}
            return value

        return params

    stored(
        "segmentation map names an existing file",
        seg("lake.png"),
        "regions",
        pair="seg",
        extra=lambda cwd, ctx: watched(cwd / "lake.png", ctx, ctx.fx.good),
    )
    stored("segmentation map names a missing file", seg("lake.png"), "regions", pair="seg")
    lora = {**regions, "loras": {"x": "SHADOW"}, "lora_files": {"x": {"file": "SHADOW", "weight": 1.0}}}
    lora["regions"] = [{**lora["regions"][0], "loras": {"x": 1.0}}, *lora["regions"][1:]]

    def lora_params(exists):
        def params(cwd, ctx):
            path = ctx.case_dir / "outside" / "shadow"
            if exists:
                watched(path, ctx, SECRET_TEXT)
            return json.loads(json.dumps(lora).replace("SHADOW", str(path)))

        return params

    stored("loras names an existing file", lora_params(True), "regions", pair="lora")
    stored("loras names a missing file", lora_params(False), "regions", pair="lora")

    def record(kind):
        def params(cwd, ctx):
            import hashlib

            value = dict(img2img)
            if kind == "existing-match":
                put(cwd, ctx, "in.png", "good.png")
                value["image"] = {"path": str(cwd / "in.png"), "sha256": hashlib.sha256(ctx.fx.good).hexdigest()}
            elif kind == "existing-mismatch":
                watched(cwd / "in.png", ctx, ctx.fx.good)
                value["image"] = {"path": str(cwd / "in.png"), "sha256": "0" * 64}
            elif kind == "missing":
                value["image"] = {"path": str(cwd / "in.png"), "sha256": "0" * 64}
            elif kind == "fifo":
                os.mkfifo(cwd / "in.png")
                value["image"] = {"path": str(cwd / "in.png"), "sha256": "0" * 64}
            elif kind == "dev-zero":
                value["image"] = {"path": "/dev/zero", "sha256": "0" * 64}
            elif kind == "eps-data-uri":
                value["image"] = data_uri(eps(ctx.case_dir / "tmp" / "gs-ran"))
            elif kind == "sha-not-string":
                value["image"] = {"path": "in.png", "sha256": 12345}
            return value

        return params

    stored("input record, existing file, matching sha256", record("existing-match"), "img2img", expect="any")
    stored("input record, existing file, wrong sha256", record("existing-mismatch"), "img2img", pair="rec")
    stored("input record, missing file", record("missing"), "img2img", pair="rec")
    stored("input record, FIFO", record("fifo"), "img2img", timeout=30)
    stored("input record, /dev/zero", record("dev-zero"), "img2img", timeout=30)
    stored("input record, sha256 an int", record("sha-not-string"), "img2img")
    stored("image = EPS data URI", record("eps-data-uri"), "img2img")

    def eps_control(cwd, ctx):
        return {**pano, "control_image": [data_uri(eps(ctx.case_dir / "tmp" / "gs-ran"))]}

    stored("control_image = EPS data URI", eps_control, args=("--controlnet", "demo"))
    stored(
        "model org/name exists in cwd",
        {**pano, "model": "org/name"},
        extra=lambda cwd, ctx: watched(cwd / "org" / "name" / "model_index.json", ctx, "{}"),
    )
    big = data_uri(zero_png(8192))
    stored("40 embedded 8192^2 control images", {**pano, "control_image": [big] * 40}, timeout=90)
    stored(
        "40 embedded 8192^2 control images with --controlnet",
        {**pano, "control_image": [big] * 40},
        args=("--controlnet", "demo"),
        timeout=90,
    )
    masks = [{"prompt": f"r{i}", "mask": data_uri(zero_png(8192, white_rows=64 * (i + 1)))} for i in range(32)]
    stored("32 embedded 8192^2 region masks", {**regions, "regions": masks}, "regions", timeout=90)
    stored(
        "img2img --from a regions PNG",
        regions,
        "img2img",
        args=("-i", "good.png"),
        extra=lambda cwd, ctx: put(cwd, ctx, "good.png", "good.png"),
    )
    stored("panorama --from an img2img PNG", img2img, "panorama")
    for name, text in (
        ("JSON list", "[1, 2, 3]"),
        ("JSON null", "null"),
        ("JSON number", "5"),
        ("not JSON", "{not json"),
        ("deeply nested JSON", '{"a": ' + "[" * 100000 + "]" * 100000 + "}"),
        ("5000-digit int", '{"mode": "panorama", "seed": ' + "9" * 5000 + "}"),
    ):
        stored(f"stored {name}", stored_png(text))
    stored("10 MB prompt", {**pano, "prompt": "a " * 5_000_000}, timeout=90, expect="any")
    stored("guidance 1e308", {**pano, "guidance_scale": 1e308})
    stored("steps 1e308", {**pano, "num_inference_steps": 1e308})
    stored("width 16384 x 16384", {**pano, "width": 16384, "height": 16384}, timeout=60)
    stored("mode = serve", {**pano, "mode": "serve"})
    stored("model = 5", {**pano, "model": 5})

    def evil(cwd, ctx):
        put(cwd, ctx, "evil.ckpt", data=pickle_bytes(ctx.markers / "pickle-ran"))

    stored("model = evil.ckpt", {**pano, "model": "evil.ckpt"}, args=("--allow-pickle",), extra=evil)
    stored(
        "upscaler = up.pth (stored)",
        {**img2img, "mode": "upscale", "upscaler": "up.pth", "scale": 1},
        "upscale",
        args=("-i", "good.png", "--allow-pickle"),
        extra=lambda cwd, ctx: (
            put(cwd, ctx, "good.png", "good.png"),
            put(cwd, ctx, "up.pth", data=pickle_bytes(ctx.markers / "pickle-ran")),
        ),
    )
    stored("scheduler = evil", {**pano, "scheduler": "evil"})
    stored("window = [0, 0]", {**pano, "window": [0, 0]})
    stored("--from EPS file", eps(None), expect="refuse")
    stored("--from a PNG with no settings", lambda cwd, ctx: ctx.fx.good)
    argv = ["panorama", "--from", "/dev/zero", "-q", "-o", "out.png"]
    cases.append(Case("stored settings (--from)", "--from /dev/zero", argv=argv, expect="refuse", timeout=30))
    return cases


def number_cases() -> list[Case]:
    cases = []
    big = "1" + "0" * 5000

    def num(verb, flags, expect="refuse", **kw):
        if verb == "panorama":
            argv = ["panorama", "x", *D, *S64]
        elif verb == "img2img":
            argv = ["img2img", "-i", "good.png", "x", "--strength", "1", *D]
        elif verb == "upscale":
            argv = ["upscale", "-i", "good.png", "x", "--strength", "1", *D]
        elif verb == "inpaint":
            argv = ["inpaint", "-i", "good.png", "--mask", "mask.png", "x", "--strength", "1", *D]
        elif verb == "outpaint":
            argv = ["outpaint", "-i", "good.png", "x", "--strength", "1", *D]
        else:
            argv = ["regions", "--background", "a", "--region", "b", "--box", "0,0,0.5,0.5", *D, *S64]
        name = f"{verb} {' '.join(f if len(f) < 40 else f[:8] + f'...({len(f)} chars)' for f in flags)}"

        def setup(cwd, ctx):
            put(cwd, ctx, "good.png", "good.png")
            put(cwd, ctx, "mask.png", "mask.png")

        cases.append(Case("CLI numbers", name, argv=[*argv, *flags, "-o", "out.png"], setup=setup, expect=expect, **kw))

    for value in ("1e308", "-1e308", "nan", "inf", big):
        num("panorama", ["--guidance", value])
    num("panorama", ["--guidance", "1e-308"], expect="any")
    for value in ("1e-308", "nan", "0", "-0.5", "2", "inf"):
        num("img2img", ["--strength", value])
    for value in (big, "0", "-1", "1.5", "nan", "100000000"):
        num("panorama", ["--steps", value])
    for value in (big, "-2", str(2**64)):
        num("panorama", ["--seed", value], expect="refuse" if value != "-2" else "any")
    for flag in ("--width", "--height"):
        for value in ("-64", "0", "63", big) if flag == "--height" else ("-64", "0", "63", "1000000000", "nan", big):
            num("panorama", [flag, value])
    num("panorama", ["--width", "16384", "--height", "16384"], timeout=60)
    num("panorama", ["--width", "65536"], timeout=60)
    for flag, values in (
        ("--num-images", (big, "0", "1000000")),
        ("--batch-size", ("0", "1000000", "-1")),
        ("--window", ("0", "1000000000", "-16", "16x0")),
        ("--stride", ("0", "-1", "1000000000")),
    ):
        for value in values:
            num("panorama", [flag, value], expect="any" if value == "1000000" and flag == "--batch-size" else "refuse")
    control = ["--controlnet", "demo", "--control-image", "good.png"]
    num("panorama", [*control, "--control-scale", "nan"])
    num("panorama", [*control, "--control-start", "1", "--control-end", "0"])
    for value in ("1e308", "nan", "-1"):
        num("regions", ["--feather", value])
    num("regions", ["--bootstrap-steps", "1000000000"])
    num("regions", ["--box", "nan,0,1,1"])
    num("regions", ["--box", "0,0,1e308,1"])
    for value in ("1e308", "0", "nan", "1000", "-2"):
        num("upscale", ["--scale", value])
    num("upscale", ["--inversion-steps", "1000000000"])
    for value in ("1e308", "nan", "-4"):
        num("inpaint", ["--mask-blur", value])
    for value in ("1000000000", "-8", "7", big):
        num("outpaint", ["--left", value])
    num("outpaint", ["--overlap", "1e308"])
    return cases


def weights_cases() -> list[Case]:
    cases = []

    def weights(name, flags, verb="panorama", setup_files=None, expect="refuse"):
        def setup(cwd, ctx):
            put(cwd, ctx, "good.png", "good.png")
            put(cwd, ctx, "pickle.safetensors", data=pickle_bytes(ctx.markers / "pickle-ran"))
            put(cwd, ctx, "evil.ckpt", data=pickle_bytes(ctx.markers / "pickle-ran"))
            put(cwd, ctx, "evil.pth", data=pickle_bytes(ctx.markers / "pickle-ran"))
            put(cwd, ctx, "hugeheader.safetensors", data=struct.pack("<Q", 2**62) + b"{}")
            put(cwd, ctx, "text.safetensors", data=b"hello")
            watched(ctx.case_dir / "outside" / "shadow", ctx, SECRET_TEXT)
            (cwd / "emptydir").mkdir()
            (cwd / "garbagedir").mkdir()
            (cwd / "garbagedir" / "config.json").write_text("{not json")
            if setup_files:
                setup_files(cwd, ctx)

        base = ["panorama", "x", *D, *S64] if verb == "panorama" else ["upscale", "-i", "good.png", "x", *D]
        if verb == "upscale":
            base += ["--scale", "1", "--strength", "1"]
        argv = [*base, *[f.replace("SHADOW", "{case}/outside/shadow") for f in flags], "-o", "out.png"]
        cases.append(Case("weights files", name, argv=argv, setup=setup, expect=expect))

    targets = {
        "pickle named .safetensors": "pickle.safetensors",
        "shadow-like file": "SHADOW",
        "missing .safetensors": "missing.safetensors",
        "empty folder": "emptydir",
        "folder with bad config.json": "garbagedir",
        "8-byte header claiming 2^62": "hugeheader.safetensors",
        "5-byte text .safetensors": "text.safetensors",
        ".ckpt pickle without --allow-pickle": "evil.ckpt",
    }
    for what, target in targets.items():
        weights(f"--lora {what}", ["--lora", target])
        weights(f"--controlnet {what}", ["--controlnet", target, "--control-image", "good.png"])
        weights(f"--model {what}", ["--model", target])
        weights(f"upscale --upscaler {what}", ["--upscaler", target], verb="upscale")
    weights("--config shadow-like file", ["--model", "pickle.safetensors", "--config", "SHADOW"])
    weights("--lora weight nan", ["--lora", "text.safetensors:nan"])
    weights("--lora empty name", ["--lora", "=text.safetensors"])
    weights("--lora empty", ["--lora", ""])
    weights("upscale --upscaler .pth without --allow-pickle", ["--upscaler", "evil.pth"], verb="upscale")
    return cases


def build_cases(bases: dict[str, dict[str, Any]]) -> list[Case]:
    return (
        image_cases()
        + scene_cases()
        + batch_cases()
        + stored_cases(bases)
        + number_cases()
        + weights_cases()
        + app_cases()
        + library_cases()
    )


# -- the fork server (runs under the checkout's Python) -------------------------------------------------
def _child(request: dict[str, Any]) -> None:
    os.setpgid(0, 0)
    os.chdir(request["cwd"])
    for fd, name in ((0, os.devnull), (1, "stdout"), (2, "stderr")):
        f = os.open(name, os.O_RDONLY) if fd == 0 else os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.environ.update(request["env"])
    tempfile.tempdir = None
    sys.stdin = open(0, closefd=False)  # noqa: SIM115  (the child's own streams, for its whole life)
    sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
    code = 1
    if request.get("code") is not None:
        outcome: dict[str, Any] = {}
        scope: dict[str, Any] = {}
        try:
            exec(request["code"], scope)
            outcome = {"result": repr(scope.get("result"))[:300], "wrong": scope.get("wrong")}
        except BaseException as exc:
            refusal = isinstance(exc, (ValueError, TypeError))  # their subclasses too (e.g. a TextFileError)
            outcome = {"exc_type": type(exc).__name__, "refusal": refusal, "message": str(exc)[:100_000]}
        with open("lib-result.json", "w") as f:
            json.dump(outcome, f)
        code = 0
    else:
        from multidiffusion.cli import main

        sys.argv = ["multidiffusion", *request["argv"]]
        try:
            code = main(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _watch(pid: int, timeout: float, kill_mb: float) -> dict[str, Any]:
    started = time.perf_counter()
    why = None
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        elapsed = time.perf_counter() - started
        if why is None and elapsed > timeout:
            why = "timeout"
        elif why is None and _rss_mb(pid) > kill_mb:
            why = "memory"
        if why is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # Ghostscript and other grandchildren left behind
    rc = os.waitstatus_to_exitcode(status)
    return {"rc": rc, "seconds": round(seconds, 2), "peak_mb": round(usage.ru_maxrss / 1024, 1), "killed": why}


def serve(spawn: bool) -> None:
    import torch  # noqa: F401

    import multidiffusion.cli  # noqa: F401  (imported once: every fork starts from here)

    if not spawn:
        from multidiffusion.cli import build_parser

        build_parser()
    out = sys.stdout
    sys.stdout = sys.stderr
    print(json.dumps({"ready": True, "file": __import__("multidiffusion").__file__}), file=out, flush=True)
    for raw in sys.stdin:
        request = json.loads(raw)
        if spawn and request.get("argv") is not None:
            cwd = request["cwd"]
            with open(Path(cwd) / "stdout", "wb") as o, open(Path(cwd) / "stderr", "wb") as e:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "multidiffusion", *request["argv"]],
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=o,
                    stderr=e,
                    env={**os.environ, **request["env"]},
                    start_new_session=True,
                )
            pid = proc.pid
        else:
            pid = os.fork()
            if pid == 0:
                try:
                    _child(request)
                finally:
                    os._exit(70)
        result = _watch(pid, request["timeout"], request["kill_mb"])
        if spawn and request.get("argv") is not None:
            proc.returncode = result["rc"]
        print(json.dumps(result), file=out, flush=True)


# -- the harness -------------------------------------------------------------------------------------------
class Server:
    def __init__(self, python: str, repo: Path, spawn: bool):
        env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("MULTIDIFFUSION_DEBUG", None)
        args = [python, str(Path(__file__).resolve()), "--worker"] + (["--spawn"] if spawn else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd="/")
        hello = json.loads(self.proc.stdout.readline())
        self.module_file = hello["file"]

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fork server died")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _files(root: Path) -> dict[str, float]:
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            with contextlib.suppress(OSError):
                found[str(p)] = p.lstat().st_mtime
    return found


def _sha(path: Path) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _image_check(path: Path, size: tuple[int, int] | None) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if size is not None and im.size != size:
                return f"result is {im.size[0]}x{im.size[1]}, expected {size[0]}x{size[1]}"
            lo, hi = zip(*im.convert("RGB").getextrema())
            if max(hi) - min(lo) == 0 or max(hi) < 8:
                return f"result is one flat colour (extrema {lo}-{hi})"
    except Exception as exc:
        return f"result unreadable ({type(exc).__name__})"
    return None


def classify(case: Case, cwd: Path, ctx: Ctx, res: dict[str, Any], timeout: float) -> dict[str, Any]:
    out = (cwd / "stdout").read_text(errors="replace") if (cwd / "stdout").exists() else ""
    err = (cwd / "stderr").read_text(errors="replace") if (cwd / "stderr").exists() else ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    reasons: list[str] = []
    rc = res["rc"]
    message = ""
    refused = False
    if case.code is not None:
        lib = json.loads((cwd / "lib-result.json").read_text()) if (cwd / "lib-result.json").exists() else None
        if lib is None:
            reasons.append(f"child died (exit {rc})")
        elif "exc_type" in lib:
            refused = True
            message = lib["message"]
            first = message.splitlines()[0] if message else ""
            if not lib.get("refusal", lib["exc_type"] in ("ValueError", "TypeError")):
                reasons.append(f"{lib['exc_type']}")
            if len(message.splitlines()) > 1:
                reasons.append("multi-line message")
            if not message.strip():
                reasons.append("empty message")
            message = f"{lib['exc_type']}: {first}"
            lines = [message]
        else:
            message = f"result {lib['result']}"
            if lib.get("wrong"):
                reasons.append(f"wrong result: {lib['wrong']}")
    else:
        argparse_refusal = rc == 2 and lines and lines[0].startswith("usage:") and ": error: " in lines[-1]
        error_lines = [ln for ln in lines if ln.startswith("error: ") or (argparse_refusal and ": error: " in ln)]
        message = error_lines[0] if error_lines else (lines[0] if lines else out.strip().splitlines()[-1:] or [""])[0]
        batch = case.kind == "batch files"
        if rc == 0:
            if error_lines and not batch:
                reasons.append("error message with exit 0")
        elif rc == 2:
            refused = True
            if not argparse_refusal and (len(lines) != 1 or not lines[0].startswith("error: ")):
                reasons.append("refusal not one 'error:' line" if lines else "exit 2 with no message")
        elif rc == 1 and batch and error_lines and len(error_lines) == len(lines):
            refused = True  # some items failed, each named on its own line
        elif rc == 1 and error_lines and " (set MULTIDIFFUSION_DEBUG=1" in error_lines[0]:
            refused = True
            reasons.append("internal error (exit 1)")
        elif res["killed"] is None:
            refused = True
            reasons.append(f"exit {rc}")
        stray_lines = lines and not argparse_refusal and any(not ln.startswith("error: ") for ln in lines)
        if stray_lines and not any(r.startswith("refusal not") for r in reasons):
            stray = next(ln for ln in lines if not ln.startswith("error: "))
            reasons.append(f"stray stderr lines ({stray[:80]!r})")
        if batch:
            missing = [o for o in case.outputs if not (cwd / "outdir" / o).exists()]
            if missing and res["killed"] is None:
                reasons.append(f"good items not written ({', '.join(missing)}): the batch did not go on per item")
            if rc == 0 and not error_lines and case.expect == "refuse":
                reasons.append("accepted with exit 0, no item refused")
        elif rc == 0 and case.expect == "refuse":
            reasons.append("accepted with exit 0 (should be refused)")
        for png in sorted(cwd.glob("out*.png")) + sorted((cwd / "outdir").glob("*.png")):
            if batch and png.name == "in.png":
                continue
            problem = _image_check(png, case.size if png.name == "out.png" else None)
            if problem:
                reasons.append(f"{png.name}: {problem}")
        if case.size and rc == 0 and not (cwd / "out.png").exists():
            reasons.append("no result written")
    if res["killed"] == "timeout":
        reasons.append(f"hang (killed after {timeout:.0f} s)")
    elif res["killed"] == "memory" or res["peak_mb"] > 2048:
        reasons.append(f"memory overrun (peak {res['peak_mb']:.0f} MB)")
    if case.expect == "run" and refused and not reasons:
        reasons.append("refused a legitimate input")
    text = "\n".join(lines)
    for pattern, why in UNCLEAN_PATTERNS:
        if pattern.search(text):
            reasons.append(why)
    if re.search(r"/tmp/gradio|" + re.escape(str(ctx.case_dir / "outside")), text) and case.kind.startswith("app"):
        reasons.append("server path in message")
    if re.search(r"^error: ([^:\s]+): \1: ", text, re.M):
        reasons.append("file name twice in message")
    low = text.lower()
    for word in case.forbid:
        if word in low:
            reasons.append(f"misleading message ({word!r})")
    if case.must_name and refused and case.must_name not in message:
        reasons.append(f"message does not name {case.must_name!r}")
    for marker in sorted(ctx.markers.glob("*-ran")) + sorted((ctx.case_dir / "tmp").glob("*-ran")):
        reasons.append(f"side effect: {marker.name} marker written (code ran)")
    for path in ctx.protect:
        if ctx.protect_sha.get(str(path)) != _sha(path):  # type: ignore[attr-defined]
            reasons.append(f"side effect: input {path.name} changed")
    for path in ctx.watch:
        try:
            if path.stat().st_atime > OLD_TIME + 1:
                reasons.append(f"side effect: read {path.relative_to(ctx.case_dir)}")
        except OSError:
            pass
    for written in set(_files(ctx.case_dir)) - set(ctx.before):  # type: ignore[attr-defined]
        rel = Path(written).relative_to(ctx.case_dir)
        allowed = rel.parts[0] == "tmp" or (
            rel.parts[0] == "cwd"
            and (
                case.code is not None
                or rel.name in ("stdout", "stderr", "lib-result.json")
                or rel.name.startswith("out")
                or (len(rel.parts) > 2 and rel.parts[1] == "outdir")
            )
        )
        if not allowed and "markers" not in rel.parts:
            reasons.append(f"side effect: wrote {rel}")
    return {
        "kind": case.kind,
        "name": case.name,
        "outcome": "unclean" if reasons else "clean",
        "result": "refused" if refused else ("killed" if res["killed"] else "ran"),
        "reasons": reasons,
        "message": message[:300],
        "exit": rc,
        "seconds": res["seconds"],
        "peak_mb": res["peak_mb"],
    }


def _fill(value: str, ctx: Ctx) -> str:
    return value.replace("{given}", getattr(ctx, "given", "")).replace("{case}", str(ctx.case_dir))


def run_case(server: Server, case: Case, root: Path, index: int, fx: Fixtures, args: argparse.Namespace) -> dict:
    case_dir = root / "cases" / f"{index:03d}"
    cwd = case_dir / "cwd"
    for d in (cwd, case_dir / "markers", case_dir / "tmp", case_dir / "outside"):
        d.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(fx, case_dir, case_dir / "markers")
    try:
        if case.setup:
            case.setup(cwd, ctx)
    except Exception as exc:
        return {"kind": case.kind, "name": case.name, "outcome": "not built", "message": f"{type(exc).__name__}: {exc}"}
    ctx.protect_sha = {str(p): _sha(p) for p in ctx.protect}  # type: ignore[attr-defined]
    ctx.before = _files(case_dir)  # type: ignore[attr-defined]
    for path in ctx.watch:  # after the listing above: setting up and listing touched them
        os.utime(path, (OLD_TIME, path.stat().st_mtime))
    timeout = case.timeout or args.timeout
    code = case.code
    if code is not None:
        code = _fill(code, ctx).replace("__EPS_URI__", data_uri(eps(ctx.case_dir / "tmp" / "gs-ran")))
    request = {
        "cwd": str(cwd),
        "argv": [_fill(a, ctx) for a in case.argv] if case.argv is not None else None,
        "code": code,
        "env": {"TMPDIR": str(case_dir / "tmp"), "HOME": str(case_dir / "tmp"), "HF_HUB_OFFLINE": "1"},
        "timeout": timeout,
        "kill_mb": args.kill_mb,
    }
    res = server.run(request)
    result = classify(case, cwd, ctx, res, timeout)
    if not args.keep:
        shutil.rmtree(case_dir, ignore_errors=True)
    return result


def make_bases(server: Server, root: Path, fx: Fixtures) -> dict[str, dict[str, Any]]:
    """Real stored settings of three tasks, written by the checkout under test."""
    from PIL import Image

    d = root / "bases"
    d.mkdir(parents=True, exist_ok=True)
    (d / "good.png").write_bytes(fx.good)
    (d / "lake.png").write_bytes((Path(__file__).resolve().parent.parent / "examples/demo/masks/lake.png").read_bytes())
    scene = (
        'model = "demo"\nwidth = 64\nheight = 64\nseed = 2\n[[regions]]\nprompt = "a sun"\n'
        'mask = "good.png"\n[[regions]]\nprompt = "a hill"\nbox = [0.0, 0.5, 1.0, 1.0]\n'
    )
    (d / "r.toml").write_text(scene)
    runs = {
        "panorama": ["panorama", "x", *D, *S64, "--seed", "1", "-o", "panorama.png"],
        "regions": ["regions", "r.toml", "--steps", "1", "-q", "-o", "regions.png"],
        "img2img": ["img2img", "-i", "good.png", "x", "--strength", "1", *D, "--seed", "1", "-o", "img2img.png"],
    }
    bases = {}
    for task, argv in runs.items():
        res = server.run({"cwd": str(d), "argv": argv, "code": None, "env": {}, "timeout": 120, "kill_mb": 8000})
        if res["rc"] != 0:
            raise SystemExit(f"the {task} base run failed: {(d / 'stderr').read_text()[-2000:]}")
        with Image.open(d / f"{task}.png") as im:
            bases[task] = json.loads(im.text["multidiffusion"])
    return bases


def summary(results: list[dict[str, Any]]) -> str:
    kinds: dict[str, list[int]] = {}
    for r in results:
        row = kinds.setdefault(r["kind"], [0, 0, 0, 0])
        if r["outcome"] == "not built":
            row[3] += 1
            continue
        row[0] += 1
        row[1 if r["outcome"] == "clean" else 2] += 1
    total = [sum(col) for col in zip(*kinds.values())] if kinds else [0, 0, 0, 0]
    lines = [f"{'kind':36} {'tried':>6} {'clean':>6} {'unclean':>8} {'not built':>10}"]
    for kind, row in [*kinds.items(), ("total", total)]:
        lines.append(f"{kind:36} {row[0]:>6} {row[1]:>6} {row[2]:>8} {row[3]:>10}")
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: Path) -> None:
    """The results as JSON, one case a line (small enough to commit, easy to diff)."""
    head = json.dumps({k: v for k, v in report.items() if k != "cases"}, indent=1)[:-2]
    cases = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in report["cases"])
    path.write_text(f'{head},\n "cases": [\n{cases}\n ]\n}}\n')


def compare(before_path: str, after_path: str) -> str:
    """The closing note's table: by kind, tried and clean before and after, from two results files."""
    before, after = (json.loads(Path(p).read_text()) for p in (before_path, after_path))

    def counts(report):
        rows: dict[str, list[int]] = {}
        for r in report["cases"]:
            if r["outcome"] != "not built":
                row = rows.setdefault(r["kind"], [0, 0])
                row[0] += 1
                row[1] += r["outcome"] == "clean"
        return rows

    b, a = counts(before), counts(after)
    head = f"{'kind':36} {'tried':>6} {'clean before':>13} {'clean after':>12}"
    lines = [head, f"({before.get('commit')} -> {after.get('commit')}{' + changes' if after.get('dirty') else ''})"]
    for kind in [*b, *(k for k in a if k not in b)]:
        tried = a.get(kind, b.get(kind, [0]))[0]
        lines.append(f"{kind:36} {tried:>6} {b.get(kind, [0, 0])[1]:>13} {a.get(kind, [0, 0])[1]:>12}")
    tb, ta = (sum(r[0] for r in x.values()) for x in (b, a))
    cb, ca = (sum(r[1] for r in x.values()) for x in (b, a))
    lines.append(f"{'total':36} {f'{tb}/{ta}':>6} {cb:>13} {ca:>12}")
    names = {(r["kind"], r["name"]): r["outcome"] for r in before["cases"]}
    still = [r for r in after["cases"] if r["outcome"] == "unclean"]
    if still:
        lines.append("unclean after:")
        lines += [f"  {r['kind']}: {r['name']}: {'; '.join(r['reasons'])} | {r['message'][:120]}" for r in still]
    regressed = [
        r for r in after["cases"] if r["outcome"] == "unclean" and names.get((r["kind"], r["name"])) == "clean"
    ]
    if regressed:
        lines.append("clean before, unclean after: " + ", ".join(f"{r['kind']}: {r['name']}" for r in regressed))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.audit_inputs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=".", help="the checkout to audit (its code is put on PYTHONPATH)")
    parser.add_argument("--out", required=False, help="results JSON")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs the checkout's code")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case (some cases set more)")
    parser.add_argument("--kill-mb", type=float, default=3072.0, help="kill a case's process past this RSS")
    parser.add_argument("--only", default=None, help="run only cases whose 'kind name' matches this regex")
    parser.add_argument("--spawn", action="store_true", help="a fresh python -m multidiffusion per CLI case")
    parser.add_argument("--keep", action="store_true", help="keep each case's folder (under the work folder)")
    parser.add_argument("--work", default=None, help="work folder (default: a new temporary one)")
    parser.add_argument(
        "--merge-into",
        metavar="RESULTS",
        help="with --only: replace those cases in an earlier results file (same checkout) and write --out",
    )
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="print the before/after table")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(*args.compare))
        return 0
    if args.worker:
        serve(args.spawn)
        return 0
    repo = Path(args.repo).resolve()
    root = Path(args.work or tempfile.mkdtemp(prefix="audit-inputs-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    fx = Fixtures(root)
    server = Server(args.python, repo, args.spawn)
    print(f"auditing {server.module_file} (gs: {shutil.which('gs') or 'not installed'}), work folder {root}")
    if not str(Path(server.module_file).resolve()).startswith(str(repo)):
        raise SystemExit(f"multidiffusion is imported from {server.module_file}, not from {repo}")
    bases = make_bases(server, root, fx)
    cases = build_cases(bases)
    if args.only:
        cases = [c for c in cases if re.search(args.only, f"{c.kind} {c.name}")]
    results = []
    for index, case in enumerate(cases):
        r = run_case(server, case, root, index, fx, args)
        results.append(r)
        mark = {"clean": ".", "unclean": "U", "not built": "-"}[r["outcome"]]
        print(
            f"[{index + 1:3}/{len(cases)}] {mark} {r['kind']}: {r['name']}  ({r.get('seconds', 0)} s, "
            f"{r.get('peak_mb', 0)} MB) {'; '.join(r.get('reasons', []))} | {r.get('message', '')[:150]}",
            flush=True,
        )
    server.close()
    # existence oracles: two cases naming an existing and a missing file must not answer differently
    pairs: dict[str, list[dict]] = {}
    for case, r in zip(cases, results):
        if case.pair and r["outcome"] != "not built":
            pairs.setdefault(case.pair, []).append(r)
    for group in pairs.values():
        if len({re.sub(r"'[^']*'", "'…'", r["message"]) for r in group}) > 1:
            for r in group:
                r["reasons"].append("existence oracle: the message differs for an existing and a missing file")
                r["outcome"] = "unclean"
                print(f"existence oracle: {r['kind']}: {r['name']} | {r['message'][:150]}")
    rerun = None
    if args.merge_into:
        earlier = json.loads(Path(args.merge_into).read_text())
        fresh = {(r["kind"], r["name"]): r for r in results}
        merged = [fresh.pop((r["kind"], r["name"]), r) for r in earlier["cases"]]
        rerun = sorted({*earlier.get("rerun", []), *(f"{r['kind']}: {r['name']}" for r in results)})
        results = merged + list(fresh.values())
    print()
    print(summary(results))
    if args.out:
        git = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        report = {
            "repo": str(repo),
            "commit": git.stdout.strip(),
            "dirty": bool(dirty),
            "module": server.module_file,
            "ghostscript": shutil.which("gs"),
            "mode": "spawn" if args.spawn else "fork server",
            "timeout_s": args.timeout,
            "memory_bound_mb": 2048,
            "seconds": round(time.perf_counter() - started, 1),
            **({"rerun": rerun} if rerun else {}),
            "summary": summary(results).splitlines(),
            "cases": results,
        }
        write_report(report, Path(args.out))
    if not args.keep and not args.work:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
