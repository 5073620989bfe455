"""The browser-test harness: `multidiffusion serve` in a subprocess with the demo model, driven by
headless Chromium (Debian's `chromium` package) through Playwright.

Tests here skip, saying why, when Playwright, Chromium or Gradio is missing; `.ci/run` installs
them, so they run in CI. Set MULTIDIFFUSION_SCREENSHOTS=docs/images to write the README's
screenshots while the tests run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from multidiffusion.models.loading import DEMO_MODEL_DIR

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODEL = os.environ.get("MULTIDIFFUSION_TEST_APP_MODEL", "demo")  # another model only while developing
MAX_SIDE = 1024  # the test server's --max-side
MAX_STEPS = 20
STARTUP_S = 240  # importing torch, diffusers and gradio on a busy 2-core machine is slow
GENERATE_MS = 180_000


def chromium_path() -> str | None:
    path = os.environ.get("MULTIDIFFUSION_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).is_file() else None


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed: pip install -e '.[test,app]'"
    if importlib.util.find_spec("gradio") is None:
        return "Gradio is not installed: pip install -e '.[app]'"
    if chromium_path() is None:
        return "Chromium is not installed: apt-get install chromium (or set MULTIDIFFUSION_CHROMIUM)"
    if MODEL == "demo" and not (DEMO_MODEL_DIR / "model_index.json").is_file():
        return f"the demo model is not in this checkout ({DEMO_MODEL_DIR} has no model_index.json)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    for item in items:
        if "tests/browser/" in item.nodeid.replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[str]:
    """The URL of `multidiffusion serve --model demo` with small limits, started once."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [
        sys.executable, "-m", "multidiffusion", "serve", "--model", MODEL, "--port", str(port),
        "--max-side", str(MAX_SIDE), "--max-steps", str(MAX_STEPS), "--max-upload-mb", "2",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with status {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer within {STARTUP_S} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server)
    page.wait_for_selector("#pano-prompt textarea")
    yield page
    context.close()


@pytest.fixture
def screenshot():
    """Save a full-page screenshot as docs/images/NAME.png when MULTIDIFFUSION_SCREENSHOTS is set."""
    folder = os.environ.get("MULTIDIFFUSION_SCREENSHOTS")

    def take(page, name: str) -> None:
        if folder:
            from PIL import Image

            path = Path(folder) / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=True)
            if path.stat().st_size > 300_000:  # keep the README's images small: 256 colours
                with Image.open(path) as image:
                    quantized = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
                quantized.save(path, optimize=True)

    return take
