"""Issue 25, the web app: results and uploads in a private temporary folder removed at exit (hole 9),
and the Upscale tab's uploads read by the checked loader (hole 11)."""

from __future__ import annotations

import json
import signal
import stat
import urllib.request
import uuid

import pytest

from multidiffusion.models.loading import DEMO_MODEL_DIR

from .test_app_server import _free_port, start_serve, wait_for_page


def _upload(port: int, data: bytes, name: str = "up.png") -> str:
    """POST a file to Gradio's upload route; the server-side path it was stored at."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())[0]


@pytest.mark.skipif(not (DEMO_MODEL_DIR / "model_index.json").is_file(), reason="the demo model is not here")
def test_serve_keeps_results_and_uploads_private_and_removes_them_at_exit(tmp_path):
    """Before: Gradio's copies of results and the uploads went to $TMPDIR/gradio (0755 folders, 0644
    files) and stayed there after the server stopped."""
    pytest.importorskip("gradio")
    tmp, port, log = tmp_path / "tmp", _free_port(), tmp_path / "server.log"
    proc = start_serve(tmp, port, log)
    try:
        wait_for_page(proc, port, log)
        [private] = list(tmp.iterdir())  # everything the server keeps is in one folder
        assert private.name.startswith("multidiffusion-serve-")
        assert stat.S_IMODE(private.stat().st_mode) == 0o700  # no other local user can enter it
        stored = _upload(port, b"\x89PNG\r\n\x1a\n not really")
        assert stored.startswith(str(private)), stored  # Gradio's copy of the upload is inside it
        [results] = list(private.glob("multidiffusion-app-*"))
        (results / "panorama-1-1.png").write_bytes(b"a result")  # as a generation leaves it
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(tmp.iterdir()) == [], log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()
