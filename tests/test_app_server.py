"""The server process: its temporary results are removed when it stops (a normal exit, SIGTERM,
Ctrl+C), and it serves on IPv6 addresses too. The stop tests run `multidiffusion serve` for real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from multidiffusion.app import ServerLimits
from multidiffusion.models.loading import DEMO_MODEL_DIR

from .test_app import run_cli

STARTUP_S = 240  # deadlines, never measured times: importing torch and gradio on a busy machine is slow
ROOT = Path(__file__).resolve().parents[1]


def _env(tmp: Path) -> dict[str, str]:
    tmp.mkdir(exist_ok=True)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": path, "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}  # fmt: skip


def _free_port(family=socket.AF_INET, host="127.0.0.1") -> int:
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _outputs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("**/multidiffusion-app-*"))  # in serve's private folder


def test_results_are_removed_at_a_normal_exit(tmp_path):
    script = textwrap.dedent("""
        from multidiffusion.app.handlers import OutputStore
        from multidiffusion.app.server import remove_at_exit
        store = OutputStore()
        (store.folder / "result.png").write_bytes(b"png")
        remove_at_exit(store.folder)
        print(store.folder)
    """)
    tmp = tmp_path / "tmp"
    done = subprocess.run([sys.executable, "-c", script], env=_env(tmp), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder.parent == tmp and not folder.exists()


def start_serve(tmp: Path, port: int, log: Path) -> subprocess.Popen:
    """`multidiffusion serve` of the demo model on ``port``, with ``tmp`` as its temporary folder."""
    command = [sys.executable, "-m", "multidiffusion", "serve", "--port", str(port), "--model", "demo"]
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_env(tmp))


def wait_for_page(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no answer within {STARTUP_S} s:\n{log.read_text()}"
        time.sleep(0.5)


@pytest.mark.skipif(not (DEMO_MODEL_DIR / "model_index.json").is_file(), reason="the demo model is not here")
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)], ids=["SIGTERM", "SIGINT"]
)
def test_results_are_removed_when_the_server_is_stopped(tmp_path, signum):
    pytest.importorskip("gradio")
    tmp, port, log = tmp_path / "tmp", _free_port(), tmp_path / "server.log"
    proc = start_serve(tmp, port, log)
    try:
        wait_for_page(proc, port, log)
        [folder] = _outputs(tmp)
        (folder / "panorama-1-1.png").write_bytes(b"a result")  # as a generation leaves it
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not folder.exists(), log.read_text()
    assert _outputs(tmp) == []
    assert "Traceback" not in log.read_text(), log.read_text()


def _ipv6_loopback() -> bool:
    try:
        _free_port(socket.AF_INET6, "::1")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_the_page_serves_on_ipv6(md16, tmp_path):
    pytest.importorskip("gradio")
    from multidiffusion.app.handlers import OutputStore
    from multidiffusion.app.server import create_app, launch

    app = create_app(["tiny"], lambda name: md16, ServerLimits(), OutputStore(tmp_path / "out"))
    port = _free_port(socket.AF_INET6, "::1")
    try:
        launch(app, host="::1", port=port, limits=ServerLimits(), block=False)
        with urllib.request.urlopen(f"http://[::1]:{port}/", timeout=30) as response:
            assert response.status == 200 and b"MultiDiffusion" in response.read()
    finally:
        app.close()


def test_serve_takes_ipv6_hosts(monkeypatch, capsys):
    pytest.importorskip("gradio")
    from multidiffusion.app import server

    calls = {}
    monkeypatch.setattr(server, "create_app", lambda models, loader, limits, **kw: None)
    monkeypatch.setattr(server, "launch", lambda app, **kw: calls.update(kw))
    for host in ("::1", "[::1]"):
        code, err = run_cli(["serve", "--host", host, "--port", "7861"], capsys)
        assert code == 0 and calls["host"] == "::1" and "warning" not in err


def test_a_client_that_goes_away_mid_upload_is_one_log_line(md16, tmp_path, caplog):
    """A page closed while its image editor uploads: the server logs one line, no traceback."""
    pytest.importorskip("gradio")
    import logging

    from multidiffusion.app.handlers import OutputStore
    from multidiffusion.app.server import create_app, launch

    caplog.set_level(logging.INFO, logger="multidiffusion.app")
    app = create_app(["tiny"], lambda name: md16, ServerLimits(), OutputStore(tmp_path / "out"))
    port = _free_port()
    try:
        launch(app, host="127.0.0.1", port=port, limits=ServerLimits(), block=False)
        head = (
            "POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
            '--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(head.encode() + b"\0" * 1000)  # a tenth of the file, then the client is gone
        deadline = time.monotonic() + STARTUP_S
        while "a client went away during /gradio_api/upload" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.1)
        assert "Traceback" not in caplog.text
    finally:
        app.close()
