"""Loading fails fast and says why: a silent hub, bad arguments, broken folders, refused pickles."""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from multidiffusion.models.loading import HUB_TIMEOUT_S

ROOT = Path(__file__).parents[1]

_LOAD_FROM_SILENT_HUB = """
import json, time
from diffusers import DiffusionPipeline  # imported first (seconds): the bound is on waiting for the hub
from multidiffusion import ModelNotFoundError, MultiDiffusion

start = time.monotonic()
try:
    MultiDiffusion.from_pretrained("someone/some-model", device="cpu")
    error = None
except ModelNotFoundError as exc:
    error = str(exc)
print(json.dumps({"elapsed": time.monotonic() - start, "error": error}))
"""


@pytest.fixture
def silent_hub():
    """An endpoint on 127.0.0.1 that accepts connections and never answers; yields (url, accepted sockets)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    server.close()
    for conn in accepted:
        conn.close()


def test_a_silent_hub_fails_within_the_timeout(silent_hub, tmp_path):
    """A fresh process (the hub client reads HF_ENDPOINT and the cache location at import), an empty
    cache, online: the look-up gives up after HUB_TIMEOUT_S with the error that says how to get the model.
    Before the fix this waited forever; the test's own deadline is the subprocess timeout."""
    url, accepted = silent_hub
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE"))}
    env.update(
        HF_ENDPOINT=url,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_OFFLINE="0",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    try:
        run = subprocess.run(
            [sys.executable, "-c", _LOAD_FROM_SILENT_HUB], env=env, cwd=ROOT, capture_output=True, text=True, timeout=90
        )
    except subprocess.TimeoutExpired:
        pytest.fail("from_pretrained was still waiting for the silent hub after 90 s")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert accepted, "the hub was never asked"
    message = result["error"]
    assert message is not None
    assert f"did not answer within {HUB_TIMEOUT_S:g} s" in message and url in message
    assert "hf download someone/some-model" in message and "\n" not in message
    assert result["elapsed"] < HUB_TIMEOUT_S + 5  # the stated bound, plus margin for a loaded machine
