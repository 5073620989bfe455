"""Cancelling a generation: the job stops between denoising steps, writes no PNG, and the next job
runs alone on the model (one lock holds it for the whole run). Driven through a real Gradio server
over HTTP, as the page does it: /queue/join, /cancel, and a client that goes away."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from multidiffusion.app import ModelPool, ServerLimits
from multidiffusion.app.handlers import Cancelled, OutputStore, generate_panorama

from .test_app import FORM

WAIT_S = 120  # a deadline for things that do happen (a busy 2-core machine is slow); never a measured time


class GatedModel:
    """The tiny model; its first run stops at its first step until ``release`` is set, and every
    run's outcome is recorded ('done' or the exception's name)."""

    def __init__(self, md):
        self.md = md
        self.started = threading.Event()
        self.release = threading.Event()
        self.outcomes: list[str] = []
        self.running = 0
        self.most_running = 0
        self._calls = 0

    def __getattr__(self, name):
        return getattr(self.md, name)

    def generate(self, options, callback_on_step_end=None, **kwargs):
        first = self._calls == 0
        self._calls += 1

        def callback(md, i, t, tensors):
            if first and i == 0:
                self.started.set()
                assert self.release.wait(WAIT_S)
            return callback_on_step_end(md, i, t, tensors) if callback_on_step_end else {}

        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            out = self.md.generate(options, callback_on_step_end=callback, **kwargs)
        except BaseException as exc:
            self.outcomes.append(type(exc).__name__)
            raise
        finally:
            self.running -= 1
        self.outcomes.append("done")
        return out


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture
def reference(md16, tmp_path):
    """The image the second job must produce: the same form, run alone."""
    pool = ModelPool(["tiny"], lambda name: md16)
    return pixels(generate_panorama(FORM, pool=pool, limits=ServerLimits(), store=OutputStore(tmp_path / "ref")).path)


def test_a_cancelled_job_stops_and_the_next_runs_alone(md16, tmp_path, reference):
    """The handlers without Gradio: job 1 holds the model; job 2 waits for it; job 1 is cancelled."""
    gated = GatedModel(md16)
    pool = ModelPool(["tiny"], lambda name: gated)
    store = OutputStore(tmp_path / "out")
    cancel = threading.Event()
    outcome: dict[str, object] = {}

    def job(key, is_cancelled):
        try:
            outcome[key] = generate_panorama(
                FORM, pool=pool, limits=ServerLimits(), store=store, is_cancelled=is_cancelled
            )
        except Exception as exc:
            outcome[key] = exc

    first = threading.Thread(target=job, args=("first", cancel.is_set))
    first.start()
    assert gated.started.wait(WAIT_S)
    second = threading.Thread(target=job, args=("second", None))
    second.start()
    cancel.set()
    gated.release.set()
    first.join(WAIT_S)
    second.join(WAIT_S)
    assert isinstance(outcome["first"], Cancelled), outcome["first"]
    assert gated.outcomes == ["Cancelled", "done"] and gated.most_running == 1
    assert list(store.folder.glob("*.png")) == [outcome["second"].path]
    assert (pixels(outcome["second"].path) == reference).all()

    # a job cancelled while it waits for the model never runs
    with pool.use("tiny"):
        waiting = threading.Thread(target=job, args=("third", lambda: True))
        waiting.start()
        waiting.join(WAIT_S)
    assert isinstance(outcome["third"], Cancelled) and gated.outcomes == ["Cancelled", "done"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _running_events(app) -> list:
    return [event for job in app._queue.active_jobs if job for event in job]


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_S} s for {what}"
        time.sleep(0.05)


@pytest.fixture
def served(md16, tmp_path):
    """(app, base URL, gated model, store): the page over the tiny model, launched in this process."""
    pytest.importorskip("gradio")
    from multidiffusion.app.server import create_app, launch

    gated = GatedModel(md16)
    store = OutputStore(tmp_path / "out")
    app = create_app(["tiny"], lambda name: gated, ServerLimits(), store)
    port = _free_port()
    launch(app, host="127.0.0.1", port=port, limits=ServerLimits(), block=False)
    try:
        yield app, f"http://127.0.0.1:{port}/gradio_api/", gated, store
    finally:
        gated.release.set()
        app.close()


def _panorama_request(app) -> tuple[int, list]:
    """(fn_index, data) of the Panorama tab's Generate with the test form."""
    by_id = {
        "pano-prompt": FORM["prompt"],
        "pano-width": FORM["width"],
        "pano-height": FORM["height"],
        "pano-steps": FORM["num_inference_steps"],
        "pano-seed": FORM["seed"],
    }
    for index, fn in app.fns.items():
        if any(getattr(c, "elem_id", None) == "pano-result" for c in fn.outputs):
            return index, [by_id.get(c.elem_id, c.value) for c in fn.inputs]
    raise AssertionError("no Generate event on the Panorama tab")


def _join(client, fn_index: int, data: list, session: str) -> str:
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    response = client.post("queue/join", json=body)
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def _result(client, session: str) -> dict:
    with client.stream("GET", "queue/data", params={"session_hash": session}, timeout=WAIT_S) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError("the stream ended without a result")


@pytest.mark.parametrize("how", ["cancel", "disconnect"])
def test_a_cancelled_page_job_stops_and_the_next_job_is_right(served, reference, how):
    httpx = pytest.importorskip("httpx")
    app, url, gated, store = served
    fn_index, data = _panorama_request(app)
    with httpx.Client(base_url=url, timeout=WAIT_S) as client:
        first = _join(client, fn_index, data, "first")
        if how == "cancel":  # what gradio_client's Job.cancel() sends
            assert gated.started.wait(WAIT_S)
            body = {"session_hash": "first", "fn_index": fn_index, "event_id": first}
            assert client.post("cancel", json=body).status_code == 200
        else:  # the page's tab is closed: its event stream ends
            with client.stream("GET", "queue/data", params={"session_hash": "first"}):
                assert gated.started.wait(WAIT_S)
            _wait_for(lambda: not any(e.alive for e in _running_events(app) if e._id == first), "the disconnect")

        second = _join(client, fn_index, data, "second")
        if how == "cancel":  # Gradio frees the job's slot at once (its thread goes on): the next job starts
            _wait_for(lambda: any(e._id == second for e in _running_events(app)), "the second job to start")
        gated.release.set()  # the first job goes on to its next step, where it stops
        done = _result(client, "second")

    assert done["success"], done
    image, _, status = done["output"]["data"]
    assert "256x128 px, seed 5" in status
    _wait_for(lambda: len(gated.outcomes) == 2, "both jobs to end")
    assert gated.outcomes == ["Cancelled", "done"]  # the first job stopped; the second ran alone
    assert gated.most_running == 1
    pngs = list(store.folder.glob("*.png"))
    assert len(pngs) == 1  # no PNG from the cancelled job
    assert (pixels(pngs[0]) == reference).all() and (pixels(image["path"]) == reference).all()
