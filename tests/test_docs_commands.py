"""Every `multidiffusion ...` command the documentation shows runs: the code blocks of the README and
of the documentation site's pages (``docs/*.md``, what ``mkdocs.yml`` builds) and each verb's
`--help` examples, parsed at test time (so the test follows edits), each run in-process on the
shipped demo model at demo scale, 2 steps, writing into tmp_path. A command shown word for word in
an earlier source (the README's tour repeats some of the pages') runs once, in the first.

How a documented command is adapted (``adapt``):

- ``--model X`` becomes ``--model demo`` (a scene file's model is overridden the same way);
- sizes shrink to demo scale: a command or scene made for another model (Stable Diffusion: 512 px
  native, latents 1/8 of the image) has its ``--width``/``--height`` divided by 8 and its
  ``--window``/``--stride`` (latent pixels; the demo's are 1/4 of the image) by 4; every side is then
  capped at ``MAX_SIDE`` pixels;
- ``--steps 2`` (and ``--bootstrap-steps 1`` where the verb has it: scenes ask for up to 20); a verb
  with ``--strength`` gets the fewest steps that still run one at its strength (0.35: 3 steps);
- outpainting's ``--left``/``--right``/``--top``/``--bottom`` shrink with the sides (pixels);
- ``-o`` and ``--from`` paths are file names in one folder per documentation source, and a
  ``--from x.png`` command runs after the command that wrote ``x.png``;
- input files (scene files, images, masks, maps, colour tables) are resolved from the repository
  root, where a new user runs the README's commands. The ``--help`` examples may name placeholders
  that are not shipped (``--mask palm.png``, ``-i photo.png``); those are drawn here (64 x 64, so an
  image and a mask drawn for it agree).

Commands that can't run here are in ``SKIP_VERBS`` / ``SKIP_OPTIONS`` with the reason.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multidiffusion.cli import build_parser, main
from multidiffusion.options import TASK_OPTIONS
from multidiffusion.tasks import TASKS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").rglob("*.md"))  # the documentation site's pages
DOCUMENTS = [README, *PAGES]
DEMO = "demo"
MAX_SIDE = 128  # pixels: a demo-scale canvas, two of the demo's 64 px windows
SD_SCALE = 8  # Stable Diffusion's native 512 px against the demo's 64 px
SD_LATENT_SCALE = 4  # SD's native latent window (64) against the demo's (16)

# Verbs not run, and why.
SKIP_VERBS = {
    "serve": "starts the web app's server and blocks until stopped (the app has its own tests)",
    "batch": "its settings are in the items of a file, which flags can't shrink to the demo's scale; "
    "tests/test_batch.py runs it and checks the shipped examples/batch/jobs.jsonl",
    "edit": "needs an editing model (Qwen-Image-Edit), which the demo is not; tests/test_edit.py runs the verb",
}
# Options that need what the demo is not (a real checkpoint of another family) or take minutes on a CPU.
SKIP_OPTIONS = {
    "--crops-coords": "SDXL micro-conditioning: needs an SDXL checkpoint (the demo is SD 1.x-shaped)",
    "--original-size": "SDXL micro-conditioning: needs an SDXL checkpoint",
    "--config": "loads a single-file .safetensors checkpoint with its config",
    "--allow-pickle": "loads a pickle checkpoint",
    "--prediction-type": "a checkpoint's prediction type (SD 2.x 768-v)",
    "--compile": "torch.compile takes minutes on a CPU",
    "--upscaler": "an upscaler model file (ESRGAN family, read by spandrel) is not shipped",
    "--controlnet": "a ControlNet checkpoint other than the shipped demo one (--controlnet demo runs)",
}
# Options whose value makes the command skipped only when it is not one of these (a filter name).
SKIP_UNLESS = {"--upscaler": ("lanczos", "bicubic", "bilinear", "nearest"), "--controlnet": ("demo",)}
# Options whose value is an input file (resolved from the repository).
INPUT_OPTIONS = ("--mask", "--segmentation", "--colors", "-i", "--image", "--scene", "--control-image")
SIDE_OPTIONS = ("--left", "--right", "--top", "--bottom")  # outpainting's added pixels


# -- parsing the documentation ---------------------------------------------------------------------
def _fenced_blocks(text: str, languages: tuple[str, ...]) -> list[str]:
    pattern = r"^```(" + "|".join(languages) + r")[ \t]*\n(.*?)^```"
    return [m.group(2) for m in re.finditer(pattern, text, re.S | re.M)]


def shell_commands(text: str) -> list[list[str]]:
    """The ``multidiffusion ...`` commands of shell text (continuations joined, comments dropped,
    ``&&`` / ``;`` chains split), each as its arguments after ``multidiffusion``."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        command: list[str] = []
        for token in [*tokens, "&&"]:
            if token in ("&&", "||", ";", "|"):
                if command and command[0] == "multidiffusion":
                    found.append(command[1:])
                command = []
            else:
                command.append(token)
    return found


def document_commands(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    return [c for block in _fenced_blocks(text, ("bash", "sh", "shell", "console")) for c in shell_commands(block)]


def readme_commands() -> list[list[str]]:
    return document_commands(README)


def verb_parsers() -> dict:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return dict(subparsers.choices)


def help_commands(verb: str) -> list[list[str]]:
    """The commands under 'examples:' in ``multidiffusion VERB --help`` (its description or epilog):
    the indented lines that follow it."""
    parser = verb_parsers()[verb]
    text = f"{parser.description or ''}\n{parser.epilog or ''}"
    _, sep, rest = text.partition("examples:\n")
    lines = []
    for line in rest.splitlines() if sep else []:
        if line.strip() and not line[0].isspace():
            break
        lines.append(line)
    return shell_commands("\n".join(lines))


SOURCES = [
    *(str(path.relative_to(REPO)) for path in DOCUMENTS if path == README or document_commands(path)),
    *(f"{verb} --help" for verb in verb_parsers()),
]


def source_commands(source: str) -> list[list[str]]:
    return help_commands(source.split()[0]) if source.endswith(" --help") else document_commands(REPO / source)


def new_commands(source: str) -> list[list[str]]:
    """``source``'s commands less those an earlier source shows word for word, except where a
    ``--from`` command of ``source`` reads the PNG one of them writes."""
    earlier = {tuple(c) for s in SOURCES[: SOURCES.index(source)] for c in source_commands(s)}
    commands = source_commands(source)
    read = {Path(_value(c, "--from") or "").name for c in commands if tuple(c) not in earlier} - {""}
    return [c for c in commands if tuple(c) not in earlier or Path(_value(c, "-o", "--output") or "").name in read]


# -- adapting a command to the demo -------------------------------------------------------------------
def _shrink(argv: list[str], scale: int) -> list[str]:
    """--width and --height divided by ``scale``, then both by the same factor until each is at most
    ``MAX_SIDE`` (the aspect ratio kept, for masks and maps), as multiples of 8 and at least 64."""
    sides = {i + 1: int(argv[i + 1]) / scale for i, token in enumerate(argv[:-1]) if token in ("--width", "--height")}
    factor = max([1.0, *(side / MAX_SIDE for side in sides.values())])
    if sides:  # never below 64 px a side, so the aspect ratio (a map's, a mask's) survives the shrink
        factor = max(1.0, min(factor, min(sides.values()) / 64))
    argv = list(argv)
    for i, side in sides.items():
        argv[i] = str(max(64, round(side / factor / 8) * 8))
    return argv


def _latent(text: str, scale: int, least: int) -> str:
    return "x".join(str(max(least, int(v) // scale)) for v in text.lower().split("x"))


def _placeholder(name: str, option: str, argv: list[str], folder: Path) -> Path:
    """A stand-in for an input the --help examples name but the repository does not ship."""
    path = folder / "inputs" / Path(name).name
    path.parent.mkdir(parents=True, exist_ok=True)
    if option == "--mask":
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[16:48, 16:48] = 255
        Image.fromarray(mask).save(path)
    elif option in ("-i", "--image"):  # a sky over a meadow, the demo's kind of picture
        rgb = np.zeros((64, 64, 3), dtype=np.uint8)
        rgb[:40], rgb[40:] = (90, 150, 230), (40, 140, 50)
        Image.fromarray(rgb).save(path)
    elif option == "--segmentation":  # vertical stripes of the colours --colors lists
        from multidiffusion.regions.colours import parse_colour

        table = argv[argv.index("--colors") + 1]
        colours = [parse_colour(item.partition("=")[0]) for item in table.split(";") if item.strip()]
        stripes = np.zeros((64, 64, 3), dtype=np.uint8)
        for i, rgb in enumerate(colours):
            stripes[:, i * 64 // len(colours) :] = rgb
        Image.fromarray(stripes).save(path)
    else:
        raise AssertionError(f"{option} {name}: no such file in the repository and no placeholder for it")
    return path


def _input(name: str, option: str, argv: list[str], folder: Path, placeholders: bool) -> str:
    path = REPO / name
    if path.is_file():
        return str(path)
    if not placeholders:
        raise AssertionError(f"{option} {name}: no such file from the repository root (where users run it)")
    return str(_placeholder(name, option, argv, folder))


def adapt(argv: list[str], folder: Path, placeholders: bool) -> list[str]:
    """``argv`` (after ``multidiffusion``) made to run on the demo at demo scale, writing into ``folder``."""
    from multidiffusion.files.scene import read_scene_file

    verb, rest = argv[0], argv[1:]
    options = verb_parsers()[verb]._option_string_actions
    takes_value = {name: action.nargs != 0 for name, action in options.items()}
    scene: dict = {}
    model = None
    out: list[tuple[str | None, str | None]] = []
    i = 0
    while i < len(rest):
        token = rest[i]
        name = token.split("=", 1)[0] if token.startswith("--") else token
        if takes_value.get(name):
            value = token.split("=", 1)[1] if "=" in token else rest[i + 1]
            i += 1 if "=" in token else 2
            out.append((name, value))
        elif name in takes_value:
            out.append((name, None))
            i += 1
        else:  # a positional: the prompt, or a scene file
            if token.endswith((".toml", ".json")):
                token = _input(token, "scene", argv, folder, placeholders)
                scene = read_scene_file(token)
            out.append((None, token))
            i += 1
    for name, value in out:
        if name == "--model":
            model = value
        if name == "--scene":
            scene = read_scene_file(_input(value, name, argv, folder, placeholders))
    model = model or scene.get("model")
    scale = 1 if model in (None, DEMO) else SD_SCALE
    latent_scale = 1 if model in (None, DEMO) else SD_LATENT_SCALE

    adapted = [verb]
    given = set()
    for name, value in out:
        given.add(name)
        if name is None:
            adapted.append(value)
            continue
        if name in ("--model", "--steps", "--bootstrap-steps"):
            continue  # set below
        if name in ("--window", "--stride"):
            value = _latent(value, latent_scale, 8 if name == "--window" else 1)
        elif name in SIDE_OPTIONS:
            value = str(max(8, int(value) // scale // 8 * 8)) if int(value) else value
        elif name in ("-o", "--output", "--from"):
            value = str(folder / Path(value).name)
        elif name in INPUT_OPTIONS and not (name == "--colors" and not value.endswith((".toml", ".json"))):
            value = _input(value, name, argv, folder, placeholders)
        adapted += [name] if value is None else [name, value]
    for key, flag in (("width", "--width"), ("height", "--height")):  # a demo scene keeps its size (pixel boxes)
        if flag not in given and key in scene and scale != 1:
            adapted += [flag, str(scene[key])]
    adapted = _shrink(adapted, scale)
    steps = 2
    if "--strength" in options and (verb != "regions" or _value(adapted, "-i", "--image")):
        # enough steps for one to run: int(steps x strength) >= 1
        strength = float(_value(adapted, "--strength") or scene.get("strength") or 0.35)
        steps = max(steps, math.ceil(1 / strength - 1e-9))
    adapted += ["--model", DEMO, "--steps", str(steps), "-q"]
    if "--bootstrap-steps" in options:
        adapted += ["--bootstrap-steps", "1"]
    return adapted


def _value(argv: list[str], *names: str) -> str | None:
    for i, token in enumerate(argv):
        if token in names:
            return argv[i + 1]
    return None


def ordered(commands: list[list[str]]) -> list[list[str]]:
    """Document order, except that a ``--from x.png`` command runs after the one that writes ``x.png``."""
    pending, done, written = list(commands), [], set()
    while pending:
        for command in pending:
            source = _value(command, "--from")
            writers = {Path(_value(c, "-o", "--output") or "").name for c in pending if c is not command}
            if source is None or Path(source).name in written or Path(source).name not in writers:
                break
        pending.remove(command)
        done.append(command)
        written.add(Path(_value(command, "-o", "--output") or "").name)
    return done


def skip_reason(argv: list[str]) -> str | None:
    if argv[0] in SKIP_VERBS:
        return SKIP_VERBS[argv[0]]
    if argv[0] in TASK_OPTIONS and argv[0] not in TASKS:
        return f"the {argv[0]} task is not merged yet (its options and command line are)"
    for i, token in enumerate(argv):
        name = token.split("=", 1)[0]
        if name in SKIP_OPTIONS:
            value = token.split("=", 1)[1] if "=" in token else (argv[i + 1] if i + 1 < len(argv) else "")
            if value.lower() not in SKIP_UNLESS.get(name, ()):
                return SKIP_OPTIONS[name]
    return None


# -- the tests -----------------------------------------------------------------------------------
def test_the_docs_show_commands():
    assert readme_commands(), "no `multidiffusion ...` command found in the README's code blocks"
    assert PAGES and any(document_commands(page) for page in PAGES), "no command in the docs pages"
    for verb in verb_parsers():
        if verb not in SKIP_VERBS:
            assert help_commands(verb), f"`multidiffusion {verb} --help` shows no examples"


@pytest.mark.parametrize("source", SOURCES)
def test_documented_commands_run_on_the_demo(source, tmp_path, monkeypatch, capsys):
    commands = new_commands(source)
    runnable = [c for c in commands if not skip_reason(c)]
    if not runnable:
        pytest.skip("; ".join(f"multidiffusion {shlex.join(c)}: {skip_reason(c)}" for c in commands) or "none")
    monkeypatch.chdir(tmp_path)  # anything written by mistake lands here
    failures = []
    for command in ordered(runnable):
        shown = "multidiffusion " + shlex.join(command)
        try:
            argv = adapt(command, tmp_path, placeholders=source.endswith(" --help"))
        except AssertionError as exc:
            failures.append(f"{shown}\n    {exc}")
            continue
        start = time.perf_counter()
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        print(f"{time.perf_counter() - start:6.1f} s  {shlex.join(argv)}")  # shown with -rP
        err = capsys.readouterr().err.strip()
        output = Path(_value(argv, "-o", "--output"))
        written = [p for p in (output, output.with_name(f"{output.stem}-layout.png")) if p.is_file()]
        if code != 0 or not written:
            failures.append(f"{shown}\n    ran as: {shlex.join(argv)}\n    exit {code}: {err or 'no PNG written'}")
            continue
        for path in written:
            with Image.open(path) as image:
                assert image.format == "PNG" and min(image.size) >= 64, (shown, path, image.size)
    assert not failures, "documented commands that fail:\n" + "\n".join(failures)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_python_blocks_compile(path):
    blocks = _fenced_blocks(path.read_text(encoding="utf-8"), ("python", "py"))
    for i, block in enumerate(blocks):
        compile(block, f"{path.name} python block {i + 1}", "exec")
    if path == README:
        assert blocks


# a file the documentation names in backquotes: from the repository root, or a module of the package
# (`engine/fusion.py`, `io/trust.py`, `files/scene.parse_scene`: a module and a name in it)
REPO_PATH = re.compile(r"`((?:multidiffusion|benchmarks|examples|tests|devtools|docs|\.ci)/[\w/.-]*)`")
PACKAGES = "|".join(p.name for p in (REPO / "multidiffusion").iterdir() if p.is_dir())
PACKAGE_PATH = re.compile(r"`((?:" + PACKAGES + r")/[\w/.-]*)`")


def _exists(path: Path) -> bool:
    return path.exists() or path.with_suffix(".py").exists() or path.parent.with_suffix(".py").exists()


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_named_files_exist(path):
    """The files, folders and modules a page names exist (pages go stale when code moves)."""
    text = path.read_text(encoding="utf-8")
    missing = [m for m in REPO_PATH.findall(text) if not (REPO / m).exists()]
    missing += [m for m in PACKAGE_PATH.findall(text) if not _exists(REPO / "multidiffusion" / m)]
    assert not missing, f"{path.relative_to(REPO)} names what is not in the repository: {missing}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_toml_blocks_parse(path):
    for block in _fenced_blocks(path.read_text(encoding="utf-8"), ("toml",)):
        tomllib.loads(block)
