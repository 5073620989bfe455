"""The ComfyUI page of the docs (``docs/comfyui.md``): its node tables and its pictures, made by a real
ComfyUI with the pack installed, so neither can drift from the code.

Run with the ComfyUI environment (``devtools/comfyui_env.sh``) and one OpenMP thread:

    OMP_NUM_THREADS=1 /work/comfy-venv/bin/python -m devtools.comfyui_screens

It starts ComfyUI's server headless on loopback exactly as the tests do (``tests/comfyui/conftest.py``'s
``comfyui_server``: temporary folders, the pack linked into ``custom_nodes``, removed afterwards), then

- writes the node tables between the ``<!-- nodes:begin -->`` / ``<!-- nodes:end -->`` markers of
  ``docs/comfyui.md`` from the server's ``/object_info`` (every input, its ComfyUI type, default, range
  and tooltip), or with ``--check`` only says whether the page's tables are still what the server lists;
- queues each API-format demo example (``examples/comfyui/demo_*.api.json``; the others name real
  checkpoints, not here) through ``/prompt`` and copies its saved image to
  ``docs/images/comfyui/<example>-result.png`` (printing the time each took);
- loads each UI-format example into ComfyUI's page in headless Chromium (Playwright), fits the view to
  the graph (the page sized to the graph's shape) and saves ``docs/images/comfyui/<example>-graph.png``,
  palette-quantized where needed so each file stays under 300 KB in the repository. The graph loads
  into the page's open workflow (one tab: loading with no workflow opens a second "Unsaved Workflow").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "comfyui"
PAGE = REPO / "docs" / "comfyui.md"
IMAGES = REPO / "docs" / "images" / "comfyui"
BEGIN, END = "<!-- nodes:begin -->", "<!-- nodes:end -->"
MODULE_SUFFIX = "comfyui-multidiffusion"  # ComfyUI's python_module of the pack's nodes ends with its folder
ZOOM = 0.6  # the graph's scale on the page, where the viewport's limits allow it
VIEWPORT_LIMITS = ((1600, 2600), (700, 1100))  # (min, max) width and height of the page in CSS pixels
MAX_BYTES = 300_000
MARGIN = 60  # page pixels around the graph (a node's title bar sits above its position)
# Fit the view to the nodes' bounding box: LiteGraph draws a graph point p at (p + offset) * scale.
FIT = """([margin, left, top, right, bottom]) => {
  const canvas = window.app.canvas, nodes = window.app.graph._nodes;
  const x0 = Math.min(...nodes.map(n => n.pos[0])) - margin, y0 = Math.min(...nodes.map(n => n.pos[1])) - 2 * margin;
  const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])) + margin;
  const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1])) + margin;
  const w = canvas.canvas.clientWidth - left - right, h = canvas.canvas.clientHeight - top - bottom;
  const scale = Math.min(1, w / (x1 - x0), h / (y1 - y0));
  canvas.ds.scale = scale;
  canvas.ds.offset[0] = -x0 + (left + (w - scale * (x1 - x0)) / 2) / scale;
  canvas.ds.offset[1] = -y0 + (top + (h - scale * (y1 - y0)) / 2) / scale;
  canvas.setDirty(true, true);
}"""
# Load a workflow into the open tab (its ComfyWorkflow), not a new temporary one beside it.
LOAD = """async workflow => {
  const open = window.app.extensionManager?.workflow?.activeWorkflow ?? null;
  await window.app.loadGraphData(workflow, true, true, open);
}"""
INSETS = (64, 104, 16, 64)  # CSS pixels of the page's own bars over the canvas: left, top, right, bottom


def _server():
    """The tests' ``comfyui_server`` fixture as a context manager (same start, same clean-up)."""
    sys.path.insert(0, str(REPO / "tests" / "comfyui"))
    import conftest

    return contextlib.contextmanager(conftest.comfyui_server.__wrapped__)()


# -- the node tables -------------------------------------------------------------------------------
def _type(spec: list) -> str:
    kind = spec[0]
    if isinstance(kind, list):
        return "COMBO: " + ", ".join(f"`{k}`" for k in kind)
    return f"`{kind}`"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _range(options: dict) -> str:
    low, high = options.get("min"), options.get("max")
    if low is None and high is None:
        return ""
    step = options.get("step")
    return f"{low} - {high}" + (f" (step {step})" if step not in (None, 1) else "")


def node_tables(object_info: dict[str, Any]) -> str:
    """Markdown: for each of the pack's nodes, its description, outputs and a table of its inputs."""
    ours = {name: node for name, node in object_info.items() if node.get("python_module", "").endswith(MODULE_SUFFIX)}
    if not ours:
        raise ValueError(f"object_info lists no node of the pack (python_module ending {MODULE_SUFFIX!r})")
    parts = []
    for name, node in ours.items():  # the pack's registration order
        outputs = ", ".join(f"`{kind}` ({tip})" for kind, tip in zip(node["output"], node.get("output_tooltips", [])))
        rows = ["| input | type | default | range | tooltip |", "|---|---|---|---|---|"]
        for section in ("required", "optional"):
            for key in node.get("input_order", {}).get(section, node["input"].get(section, {})):
                spec = node["input"][section][key]
                options = spec[1] if len(spec) > 1 else {}
                default = options.get("default", "")
                label = f"`{key}`" + (" (optional)" if section == "optional" else "")
                rows.append(
                    f"| {label} | {_cell(_type(spec))} | {_cell(json.dumps(default) if default != '' else '')} "
                    f"| {_range(options)} | {_cell(options.get('tooltip', ''))} |"
                )
        if len(rows) == 2:
            rows = ["No inputs."]
        parts.append(
            f"### {node['display_name']}\n\n`{name}`, in *{node['category']}*. {_cell(node['description'])}\n\n"
            f"Outputs: {outputs}.\n\n" + "\n".join(rows) + "\n"
        )
    return "\n".join(parts)


def with_tables(page: str, tables: str) -> str:
    head, sep, rest = page.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise ValueError(f"{PAGE}: the markers {BEGIN} and {END} are missing")
    return f"{head}{BEGIN}\n\n{tables}\n{END}{tail}"


# -- the pictures ----------------------------------------------------------------------------------
def save_small(source: Path, target: Path, width: int | None = None) -> None:
    """``source`` as a PNG under MAX_BYTES: downscaled to ``width`` and quantized to a palette if needed."""
    image = Image.open(source).convert("RGB")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.save(target, optimize=True)
    for colors in (256, 128, 64):
        if target.stat().st_size <= MAX_BYTES:
            return
        image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    if target.stat().st_size > MAX_BYTES:
        raise ValueError(f"{target}: {target.stat().st_size} bytes even at 64 colours")


def results(server, names: list[str]) -> None:
    """Run each API-format example through ``/prompt`` and keep its image."""
    for name in names:
        start = time.perf_counter()
        entry = server.run(json.loads((EXAMPLES / f"{name}.api.json").read_text()))
        seconds = time.perf_counter() - start
        (image,) = [image for output in entry["outputs"].values() for image in output.get("images", [])]
        file = server.output / image.get("subfolder", "") / image["filename"]
        save_small(file, IMAGES / f"{name}-result.png")
        print(f"{name}: {seconds:.1f} s through /prompt, {Image.open(file).size} -> {name}-result.png", flush=True)


def viewport(workflow: dict[str, Any]) -> dict[str, int]:
    """A page size that shows the graph at about ZOOM: wide graphs get a wide page, within limits."""
    nodes = workflow["nodes"]
    width = max(n["pos"][0] + n["size"][0] for n in nodes) - min(n["pos"][0] for n in nodes) + 2 * MARGIN
    height = max(n["pos"][1] + n["size"][1] for n in nodes) - min(n["pos"][1] for n in nodes) + 3 * MARGIN
    left, top, right, bottom = INSETS
    (w_min, w_max), (h_min, h_max) = VIEWPORT_LIMITS
    return {
        "width": min(w_max, max(w_min, round(width * ZOOM) + left + right)),
        "height": min(h_max, max(h_min, round(height * ZOOM) + top + bottom)),
    }


def screenshots(server, names: list[str]) -> None:
    """Each UI-format example loaded into ComfyUI's page, the view fitted to its graph, screenshotted."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        for name in names:  # a fresh page per example: one workflow tab in each screenshot
            workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
            page = browser.new_page(viewport=viewport(workflow))
            page.set_default_timeout(120_000)
            page.goto(server.url + "/")
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph")
            page.evaluate(LOAD, workflow)
            page.wait_for_function("n => window.app.graph._nodes.length === n", arg=len(workflow["nodes"]))
            page.evaluate(FIT, [MARGIN, *INSETS])
            page.wait_for_timeout(1000)  # the canvas draws on the next frames
            shot = server.base / f"{name}-graph.png"
            page.screenshot(path=str(shot))
            save_small(shot, IMAGES / f"{name}-graph.png")
            print(f"{name}: graph -> {name}-graph.png", flush=True)
            page.close()
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the page's node tables")
    parser.add_argument("--no-images", action="store_true", help="write the node tables only")
    parser.add_argument("--only-graphs", action="store_true", help="the tables and the screenshots, not the results")
    parser.add_argument("--only", nargs="*", help="these examples only (names without .api.json)")
    args = parser.parse_args(argv)
    names = sorted(p.name.removesuffix(".api.json") for p in EXAMPLES.glob("*.api.json"))
    names = [n for n in names if not args.only or n in args.only]
    with _server() as server:
        text = PAGE.read_text()
        updated = with_tables(text, node_tables(server.get("/object_info")))
        if args.check:
            print("node tables up to date" if updated == text else f"{PAGE}: node tables differ: rerun without --check")
            return int(updated != text)
        PAGE.write_text(updated)
        if not args.no_images:
            IMAGES.mkdir(parents=True, exist_ok=True)
            if not args.only_graphs:
                results(server, [n for n in names if n.startswith("demo_")])
            screenshots(server, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
