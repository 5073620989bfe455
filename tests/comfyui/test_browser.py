"""ComfyUI's own page, in headless Chromium (Debian's ``chromium``, driven by Playwright), with the
pack installed: each example workflow's UI-format file loads with every node known to the page and
every widget holding the file's value, and the graph is screenshotted.

Set MULTIDIFFUSION_SCREENSHOTS=docs/images to keep the screenshots (``comfyui-<example>.png``).
Skipped, saying why, without Playwright or Chromium, or where ComfyUI can't be imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "comfyui"
UI_WORKFLOWS = [p.with_name(p.name.removesuffix(".api.json") + ".json") for p in sorted(EXAMPLES.glob("*.api.json"))]


def _chromium() -> str | None:
    path = os.environ.get("MULTIDIFFUSION_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).is_file() else None


@pytest.fixture(scope="module")
def page(comfyui_server):
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("Playwright is not installed in this environment (devtools/comfyui_env.sh installs it)")
    if _chromium() is None:
        pytest.skip("Chromium is not installed: apt-get install chromium (or set MULTIDIFFUSION_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.set_default_timeout(120_000)
        page.goto(comfyui_server.url + "/")
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph")
        yield page
        browser.close()


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name.removesuffix(".json"))
def test_example_workflow_loads_in_the_page(page, path: Path, tmp_path: Path):
    workflow = json.loads(path.read_text())
    types = sorted({node["type"] for node in workflow["nodes"]})
    known = page.evaluate("types => types.filter(t => t in window.LiteGraph.registered_node_types)", types)
    assert known == types, f"node types the page does not know: {set(types) - set(known)}"
    page.evaluate("workflow => window.app.loadGraphData(workflow)", workflow)
    page.wait_for_function("n => window.app.graph._nodes.length === n", arg=len(workflow["nodes"]))
    widgets = page.evaluate(
        "() => Object.fromEntries(window.app.graph._nodes.map(n => [n.id, (n.widgets || []).map(w => w.value)]))"
    )
    for node in workflow["nodes"]:
        assert widgets[str(node["id"])] == node["widgets_values"], (node["id"], node["type"])
    page.wait_for_timeout(1000)  # the canvas draws on the next frames
    shot = tmp_path / f"comfyui-{path.name.removesuffix('.json')}.png"
    page.screenshot(path=str(shot))
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (1080, 1920) and pixels.std() > 10
    folder = os.environ.get("MULTIDIFFUSION_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / shot.name)
