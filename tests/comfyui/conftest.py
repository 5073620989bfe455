"""Tests of the ComfyUI node pack against a real ComfyUI (``COMFYUI_PATH`` or ``../shared/vendor/ComfyUI``).

They run in the separate ComfyUI environment that ``devtools/comfyui_env.sh`` builds (PyPI's default
torch/torchvision pair: our CPU-only torch can't load PyPI's torchvision, which ComfyUI imports), and
skip, saying why, where ComfyUI can't be imported or started.

ComfyUI's tree is read-only to the tests: no bytecode is written next to its sources (here, and
``PYTHONDONTWRITEBYTECODE`` for the server), and the server gets temporary base, user, input, output
and temp folders and an in-memory database. The ``comfyui_server`` fixture starts one headless
server on loopback for the session with the pack linked into its temporary ``custom_nodes``.
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # before any ComfyUI module is imported in-process

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import comfy_tiny  # noqa: E402

PACK = comfy_tiny.PACK
PACK_DIR_NAME = PACK.name  # the folder name under custom_nodes, and ComfyUI's module name for it
STARTUP_S = 300  # importing torch and ComfyUI's nodes on a busy 2-core machine is slow
PROMPT_S = 300  # one demo workflow on a busy CPU


@dataclass
class ComfyServer:
    """A running ComfyUI: its URL, its temporary folders and its log file."""

    url: str
    base: Path
    log: Path
    process: subprocess.Popen

    @property
    def output(self) -> Path:
        return self.base / "output"

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict) -> object:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # ComfyUI explains a refused prompt in the body
            raise AssertionError(f"POST {path}: {error.code} {error.read().decode(errors='replace')}") from None

    def run(self, workflow: dict, timeout_s: float = PROMPT_S) -> dict:
        """Queue an API-format workflow through ``/prompt`` and wait for its ``/history`` entry."""
        prompt_id = self.post("/prompt", {"prompt": workflow, "client_id": uuid.uuid4().hex})["prompt_id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") != "success":
                    raise AssertionError(f"workflow failed: {entry['status']}\n{self.log_tail()}")
                return entry
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited ({self.process.returncode})\n{self.log_tail()}")
            time.sleep(0.5)
        raise AssertionError(f"workflow not done in {timeout_s} s\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/system_stats", timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def comfyui_server() -> Iterator[ComfyServer]:
    """ComfyUI's server, headless on loopback on a free port, CPU only, with the pack installed the way
    users install it (its folder in ``custom_nodes``, here a link); stopped and its folders removed
    afterwards."""
    comfy_tiny.import_comfy()  # skips, saying why, where ComfyUI can't be imported with this python
    comfyui = comfy_tiny.comfyui_path()
    base = Path(tempfile.mkdtemp(prefix="comfyui-test-"))
    for name in ("custom_nodes", "user", "input", "output", "temp"):
        (base / name).mkdir()
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(PACK, target_is_directory=True)
    # the page's settings: a returning user (no template browser over the graph on first load), nodes
    # drawn in full at any zoom and no minimap (for the browser test's screenshots)
    settings = {
        "Comfy.TutorialCompleted": True,
        "LiteGraph.Canvas.MinFontSizeForLOD": 0,
        "Comfy.Minimap.Visible": False,
    }
    (base / "user" / "default").mkdir()
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(settings))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = base / "server.log"
    command = [
        sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--base-directory", str(base), "--user-directory", str(base / "user"),
        "--input-directory", str(base / "input"), "--output-directory", str(base / "output"),
        "--temp-directory", str(base / "temp"), "--database-url", "sqlite:///:memory:",
        "--disable-auto-launch", "--preview-method", "none",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")  # two threads on a busy 2-core machine: 10-20x slower
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=comfyui, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = ComfyServer(url, base, log, process)
    try:
        deadline = time.monotonic() + STARTUP_S
        while not _up(url):
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited at start ({process.returncode})\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI did not answer in {STARTUP_S} s\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(base)
        assert not base.exists()
