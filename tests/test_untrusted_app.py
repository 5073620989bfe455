"""Issue 25, the web app: results and uploads in a private temporary folder removed at exit (hole 9),
and the Upscale tab's uploads read by the checked loader (hole 11)."""

from __future__ import annotations

import html
import json
import os
import signal
import stat
import urllib.request
import uuid
from pathlib import Path

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


HOSTILE_UPLOADS = {
    "text.png": b"not an image at all",
    "eps.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    "empty.png": b"",
    "cut.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 30,
}


def test_hostile_uploads_to_the_upscale_tab_get_a_message_naming_the_field(md16, tmp_path):
    """Before: the tab's image component opened every upload with PIL before the handler ran, so these
    failed inside Gradio and the page showed only "Error". Now the upload is a file path that only the
    checked loader reads; a good upload still loads."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("gradio")
    from multidiffusion.app import ServerLimits
    from multidiffusion.app.handlers import OutputStore
    from multidiffusion.app.server import create_app, launch

    from .test_app_cancel import _join, _result
    from .test_app_images import picture

    app = create_app(["tiny"], lambda name: md16, ServerLimits(), OutputStore(tmp_path / "out"))
    port = _free_port()
    launch(app, host="127.0.0.1", port=port, limits=ServerLimits(), block=False)
    try:
        index, fn = next(
            (i, fn)
            for i, fn in app.fns.items()
            if "upscale-image" in {c.elem_id for c in fn.inputs}
            and "upscale-message" in {c.elem_id for c in fn.outputs}
        )
        ids = [c.elem_id for c in fn.inputs]
        by_id = {"upscale-task": "upscale", "upscale-scale": 2}
        files = {**HOSTILE_UPLOADS, "photo.png": Path(picture(tmp_path / "photo.png")).read_bytes()}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/gradio_api/", timeout=120) as client:
            for k, (name, data) in enumerate(files.items()):
                uploaded = client.post("upload", files={"files": (name, data, "image/png")}).json()[0]
                payload = [by_id.get(c.elem_id, c.value) for c in fn.inputs]
                payload[ids.index("upscale-image")] = {
                    "path": uploaded,
                    "orig_name": name,
                    "meta": {"_type": "gradio.FileData"},
                }
                _join(client, index, payload, f"s{k}")
                done = _result(client, f"s{k}")
                assert done["success"], (name, done)  # the handler ran: no bare "Error"
                status = done["output"]["data"][-1]
                shown = status if isinstance(status, str) else str(status)
                if name == "photo.png":
                    assert "Loaded 'photo.png', 128×64 px" in html.unescape(shown)
                else:
                    assert f"image: &#x27;{name}&#x27;" in shown or f"image: '{name}'" in html.unescape(shown), shown
                    assert str(tmp_path) not in shown and "/gradio" not in shown  # no server path
    finally:
        app.close()


def test_load_settings_names_the_upload_not_the_servers_folder(md16, tmp_path):
    """Before: "the PNG: '/tmp/gradio/<hash>/x.png' is not an image" (and Python's FileNotFoundError text
    for an upload gone) showed the server's temporary folder on the page."""
    pytest.importorskip("gradio")
    from multidiffusion.app import ServerLimits
    from multidiffusion.app.handlers import OutputStore
    from multidiffusion.app.server import create_app

    app = create_app(["tiny"], lambda name: md16, ServerLimits(), OutputStore(tmp_path / "out"))
    load = next(fn for fn in app.fns.values() if "load-png" in {c.elem_id for c in fn.inputs})
    folder = tmp_path / "gradio" / "0123abcd"
    folder.mkdir(parents=True)
    (folder / "text.png").write_text("not a png")
    os.mkfifo(folder / "fifo.png")
    for name, says in [("text.png", "is not an image"), ("fifo.png", "not a regular file"), ("gone.png", "upload it")]:
        updates = load.fn(str(folder / name))
        shown = html.unescape(" ".join(str(v) for v in updates.values()))
        assert f"'{name}'" in shown and says in shown, shown
        assert str(folder) not in shown and "Errno" not in shown, shown


def test_an_upload_that_is_a_link_is_never_followed(tmp_path):
    """An upload is a file the server wrote; a link in its place (to a server file) is refused unread."""
    from PIL import Image

    from multidiffusion.app import ServerLimits
    from multidiffusion.app.inputs import read_upload

    Image.new("RGB", (64, 64)).save(tmp_path / "secret.png")
    (tmp_path / "upload.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ValueError, match=r"^image: 'upload.png' is not a file; upload an image file$"):
        read_upload(tmp_path / "upload.png", "image", ServerLimits())
