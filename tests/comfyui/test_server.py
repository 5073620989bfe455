"""End to end: ComfyUI's own server, headless on loopback, with the pack in its ``custom_nodes``.

The pack loads with no error line in the server log; ``/object_info`` lists every node of the pack
with a tooltip on every input; each API-format demo example workflow under ``examples/comfyui/``
(``demo_*``) is queued through ``/prompt``, run to completion (``/history``) and its saved image
checked: its size, finite, not blank. The others name real checkpoints (not here): every node type
they use exists in ``/object_info``, every input value is one its spec allows, every link joins an
output to an input of its type. The server (conftest's ``comfyui_server``) is stopped and its
temporary folders removed at the end of the session.

Run with the ComfyUI environment (devtools/comfyui_env.sh):
``/work/comfy-venv/bin/python -m pytest -q tests/comfyui/test_server.py``; skipped where ComfyUI
can't be imported.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from comfy_tiny import PACK

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "comfyui"
WORKFLOWS = sorted(EXAMPLES.glob("*.api.json"))
DEMOS = [w for w in WORKFLOWS if w.name.startswith("demo_")]  # run here; the others name real weights
REAL = [w for w in WORKFLOWS if w not in DEMOS]
# weights files the real examples name (ComfyUI lists the files it finds: none here), by node and input
MODEL_FILES = {("CheckpointLoaderSimple", "ckpt_name"), ("ControlNetLoader", "control_net_name")}
# (width, height) of each example's saved image: every API-format example must have its line
EXPECTED_SIZE = {
    "demo_controlnet": (128, 64),  # a layout drawn with stock image nodes steering the demo ControlNet
    "demo_txt2img": (96, 64),  # Empty Latent Image 192 x 128: latents 24 x 16, the demo VAE's x4
    "demo_panorama": (256, 64),  # 512 x 128: latents 64 x 16, four 16 x 16 windows wide, circular
    "demo_regions": (128, 64),  # 256 x 128: latents 32 x 16, two half-width regions over a background
    "demo_upscale": (192, 128),  # the 96 x 64 txt2img image upscaled 2x and re-worked over windows
    "demo_tile_upscale": (192, 128),  # the same 2x, from its noise inversion, with the demo Tile ControlNet
}
PACK_DIR_NAME = PACK.name  # conftest links the pack into custom_nodes under its own folder name
MODULE = f"custom_nodes.{PACK_DIR_NAME}"  # ComfyUI's python_module of the pack's nodes


def pack_node_names() -> set[str]:
    """The node names the pack's root ``__init__`` exports (imported as ComfyUI imports it)."""
    spec = importlib.util.spec_from_file_location(
        "comfyui_multidiffusion_pack", PACK / "__init__.py", submodule_search_locations=[str(PACK)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert set(module.NODE_DISPLAY_NAME_MAPPINGS) == set(module.NODE_CLASS_MAPPINGS)
    return set(module.NODE_CLASS_MAPPINGS)


def test_tracebacks_are_cut_at_their_exception_line():
    log = 'start\nTraceback (most recent call last):\n  File "a.py", line 1\n    x\nValueError: no\nnext line\n'
    assert tracebacks(log) == ['Traceback (most recent call last):\n  File "a.py", line 1\n    x\nValueError: no']


def test_every_example_has_an_expected_size():
    assert WORKFLOWS, f"no API-format workflow in {EXAMPLES}"
    assert {w.name.removesuffix(".api.json") for w in DEMOS} == set(EXPECTED_SIZE)


def test_the_pack_loads_without_an_error_line(comfyui_server):
    log = comfyui_server.log_text()
    ours = [line for line in log.splitlines() if PACK_DIR_NAME in line or "multidiffusion" in line.lower()]
    assert any(re.search(rf"\d+\.\d+ seconds: .*{re.escape(PACK_DIR_NAME)}$", line) for line in ours), (
        f"the pack is not in ComfyUI's custom node import times\n{comfyui_server.log_tail()}"
    )
    bad = [line for line in ours if re.search(r"IMPORT FAILED|Traceback|Error|Cannot import|WARNING", line)]
    assert not bad, "\n".join(bad)
    # a traceback's indented frame lines name the files it passed through; none may be the pack's
    for block in tracebacks(log):
        assert PACK_DIR_NAME not in block and "multidiffusion_comfy" not in block, block


def tracebacks(log: str) -> list[str]:
    """Each Python traceback in ``log``: its header, its indented frames and its exception line."""
    blocks, lines = [], log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            end = i + 1
            while end < len(lines) and lines[end].startswith(" "):
                end += 1
            blocks.append("\n".join(lines[i : end + 1]))
    return blocks


def test_object_info_lists_the_pack_nodes_with_tooltips(comfyui_server):
    info = comfyui_server.get("/object_info")
    listed = {name for name, node in info.items() if node.get("python_module") == MODULE}
    assert listed == pack_node_names(), (listed, MODULE)
    for name in listed:
        node = info[name]
        assert node["description"], name
        for section in ("required", "optional"):
            for key, spec in node["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{name}.{key} has no tooltip"
        assert len(node.get("output_tooltips", [])) == len(node["output"]), name


def test_ui_format_workflows_are_their_api_format(comfyui_server):
    """Each example's UI-format file (what ComfyUI's page loads) is the conversion of its API-format
    file with this ComfyUI's node definitions: regenerate with ``python -m devtools.comfyui_workflow``."""
    from devtools.comfyui_workflow import api_to_ui

    info = comfyui_server.get("/object_info")
    for path in WORKFLOWS:
        ui = path.with_name(path.name.removesuffix(".api.json") + ".json")
        assert ui.is_file(), f"{ui} missing: python -m devtools.comfyui_workflow URL {path}"
        assert json.loads(ui.read_text()) == api_to_ui(json.loads(path.read_text()), info), ui


def _allowed(node: str, name: str, spec: list, value: object) -> str | None:
    """Why ``value`` is not allowed by the input ``spec`` (None when it is)."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        if (node, name) in MODEL_FILES:
            ok = isinstance(value, str) and value.endswith((".safetensors", ".pth", ".ckpt"))
            return None if ok else f"{value!r} is not a weights file name"
        return None if value in choices else f"{value!r} not in {choices}"
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, int if kind == "INT" else (int, float)):
            return f"{value!r} is not {kind}"
        low, high = options.get("min", -float("inf")), options.get("max", float("inf"))
        return None if low <= value <= high else f"{value} outside [{low}, {high}]"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    return f"a {kind} input needs a link, got {value!r}"


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name.removesuffix(".api.json"))
def test_real_model_example_fits_the_node_specs(comfyui_server, path: Path):
    """An example naming real weights (not run here): node types known, required inputs given, values
    allowed by the specs (weights files by their name only), links from an output of the input's type."""
    info = comfyui_server.get("/object_info")
    workflow = json.loads(path.read_text())
    problems = []
    for node_id, node in workflow.items():
        kind = node["class_type"]
        if kind not in info:
            problems.append(f"{node_id}: unknown node type {kind}")
            continue
        specs = {**info[kind]["input"].get("required", {}), **info[kind]["input"].get("optional", {})}
        missing = set(info[kind]["input"].get("required", {})) - set(node["inputs"])
        problems += [f"{node_id} {kind}: required input {m!r} missing" for m in sorted(missing)]
        for name, value in node["inputs"].items():
            if name not in specs:
                problems.append(f"{node_id} {kind}: no input {name!r}")
            elif isinstance(value, list):
                source, slot = value
                outputs = info[workflow[source]["class_type"]]["output"]
                want = specs[name][0]
                if slot >= len(outputs) or (outputs[slot] != want and "*" not in (want, outputs[slot])):
                    problems.append(f"{node_id} {kind}.{name}: linked to {source}[{slot}], not a {want}")
            elif (why := _allowed(kind, name, specs[name], value)) is not None:
                problems.append(f"{node_id} {kind}.{name}: {why}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DEMOS, ids=lambda p: p.name.removesuffix(".api.json"))
def test_example_workflow_runs_to_an_image(comfyui_server, path: Path):
    workflow = json.loads(path.read_text())
    start = time.perf_counter()
    entry = comfyui_server.run(workflow)
    print(f"{path.name}: {time.perf_counter() - start:.1f} s through ComfyUI's /prompt")
    images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    assert images, entry["outputs"]
    for image in images:
        assert image["type"] == "output"
        file = comfyui_server.output / image.get("subfolder", "") / image["filename"]
        pixels = np.asarray(Image.open(file).convert("RGB"), dtype=np.float64)
        assert (pixels.shape[1], pixels.shape[0]) == EXPECTED_SIZE[path.name.removesuffix(".api.json")]
        assert np.isfinite(pixels).all()
        assert pixels.std() > 5 and np.ptp(pixels) > 40, (pixels.std(), np.ptp(pixels))  # not blank or flat
