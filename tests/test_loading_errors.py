"""Loading fails fast and says why: a silent hub, bad arguments, broken folders, refused pickles."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from multidiffusion import ModelNotFoundError, MultiDiffusion
from multidiffusion.models import loading
from multidiffusion.models.loading import HUB_TIMEOUT_S
from multidiffusion.models.single_file import checkpoint_family

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


def online_env(url: str, home: Path) -> dict[str, str]:
    """This process's environment for a child that asks the hub at ``url``, online, with an empty cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE"))}
    env.update(
        HF_ENDPOINT=url,
        HF_HOME=str(home),
        HF_HUB_OFFLINE="0",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    return env


def test_a_silent_hub_fails_within_the_timeout(silent_hub, tmp_path):
    """A fresh process (the hub client reads HF_ENDPOINT and the cache location at import), an empty
    cache, online: the look-up gives up after HUB_TIMEOUT_S with the error that says how to get the model.
    Before the fix this waited forever; the test's own deadline is the subprocess timeout."""
    url, accepted = silent_hub
    env = online_env(url, tmp_path / "hf-home")
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


# -- arguments: one clear ValueError / TypeError, checked before anything is read or loaded ----------------


@pytest.fixture
def no_weights_loaded(monkeypatch):
    """Fail the test if loading gets as far as reading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the arguments were checked")

    for name in ("_load_folder", "_load_file", "_load_repo"):
        monkeypatch.setattr(loading, name, refuse)


@pytest.mark.parametrize(
    ("model", "error", "match"),
    [
        (None, TypeError, r"model must be 'demo', a Hugging Face repo id, or the path .* got NoneType"),
        (42, TypeError, r"model must be .* \(a str or os.PathLike\), got int"),
        (["a/b"], TypeError, "got list"),
        ("", ValueError, "got an empty string"),
        ("  ", ValueError, "got an empty string"),
    ],
)
def test_model_must_be_a_name_or_path(no_weights_loaded, model, error, match):
    with pytest.raises(error, match=match):
        MultiDiffusion.from_pretrained(model, device="cpu")


@pytest.mark.parametrize(
    ("device", "error", "match"),
    [
        ("foo", ValueError, r"device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu', got 'foo'"),
        ("cuda:x", ValueError, "got 'cuda:x'"),
        ("meta", ValueError, "got 'meta'"),
        (0.5, TypeError, "device must be a str or torch.device .* got float"),
    ],
)
def test_unknown_device(tiny_model_dir, no_weights_loaded, device, error, match):
    with pytest.raises(error, match=match):
        MultiDiffusion.from_pretrained(tiny_model_dir, device=device)


@pytest.mark.skipif(torch.backends.cuda.is_built(), reason="this torch has CUDA")
def test_cuda_on_a_torch_without_cuda(tiny_model_dir, no_weights_loaded):
    with pytest.raises(ValueError, match="CUDA is not available in this torch build") as info:
        MultiDiffusion.from_pretrained(tiny_model_dir, device="cuda")
    assert "install a CUDA build of torch" in str(info.value) and "device='cpu'" in str(info.value)
    with pytest.raises(ValueError, match="CUDA is not available in this torch build"):
        MultiDiffusion.from_pretrained(tiny_model_dir, device=torch.device("cuda", 1))


def test_cuda_built_but_no_gpu(tiny_model_dir, no_weights_loaded, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="torch was built with CUDA but sees no GPU"):
        MultiDiffusion.from_pretrained(tiny_model_dir, device="cuda")


def test_a_cuda_index_that_does_not_exist(tiny_model_dir, no_weights_loaded, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"'cuda:2' does not exist: torch sees 2 CUDA device\(s\), cuda:0 \.\. cuda:1"):
        MultiDiffusion.from_pretrained(tiny_model_dir, device="cuda:2")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_where_unavailable(tiny_model_dir, no_weights_loaded):
    with pytest.raises(ValueError, match=r"device 'mps': Apple's MPS is not available \(.*\); use device='cpu'"):
        MultiDiffusion.from_pretrained(tiny_model_dir, device="mps")


@pytest.mark.parametrize(
    ("dtype", "error", "match"),
    [
        ("float16", TypeError, r"torch_dtype must be a torch floating dtype \(.*\), got 'float16' \(did you mean "),
        (torch.int8, ValueError, "torch_dtype must be a torch floating dtype .* got torch.int8"),
        (torch.complex64, ValueError, "got torch.complex64"),
        (torch.float8_e4m3fn, ValueError, "got torch.float8_e4m3fn"),
        (16, TypeError, "got 16"),
    ],
)
def test_torch_dtype_must_be_a_float_dtype(tiny_model_dir, no_weights_loaded, dtype, error, match):
    with pytest.raises(error, match=match):
        MultiDiffusion.from_pretrained(tiny_model_dir, device="cpu", torch_dtype=dtype)


def test_allow_pickle_must_be_a_bool(tiny_model_dir, no_weights_loaded):
    with pytest.raises(TypeError, match="allow_pickle must be True or False, got 'no'"):
        MultiDiffusion.from_pretrained(tiny_model_dir, device="cpu", allow_pickle="no")


def test_config_must_be_a_folder_or_repo_id(tiny_model_dir, no_weights_loaded, tmp_path):
    with pytest.raises(TypeError, match=r"config must be a diffusers folder or a repo id .* got int"):
        MultiDiffusion.from_pretrained(tiny_model_dir, device="cpu", config=3)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="config must be a diffusers folder or a repo id, got the file"):
        MultiDiffusion.from_pretrained(tiny_model_dir, device="cpu", config=tmp_path / "config.json")


def test_good_arguments_still_load(tiny_model_dir):
    md = MultiDiffusion.from_pretrained(tiny_model_dir, device=torch.device("cpu"), torch_dtype=torch.bfloat16)
    assert md.device.type == "cpu" and md.dtype == torch.bfloat16


# -- broken diffusers folders: name the folder and what is missing -----------------------------------------


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def test_folder_without_unet(model_copy):
    shutil.rmtree(model_copy / "unet")
    with pytest.raises(ModelNotFoundError) as info:
        MultiDiffusion.from_pretrained(model_copy, device="cpu")
    message = str(info.value)
    assert f"{model_copy} is missing its 'unet' component" in message and "no unet/ folder" in message


def test_unet_without_config(model_copy):
    (model_copy / "unet" / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match=r"incomplete 'unet' component: .*unet has no config\.json"):
        MultiDiffusion.from_pretrained(model_copy, device="cpu")


def test_index_without_unet(model_copy):
    index = json.loads((model_copy / "model_index.json").read_text())
    del index["unet"]
    (model_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelNotFoundError, match=r"has no 'unet' component: its model_index\.json lists none"):
        MultiDiffusion.from_pretrained(model_copy, device="cpu")


@pytest.mark.parametrize("text", ['{"_class_name": "StableDiffusionPipeline",', "", "\xff\xfe"])
def test_index_that_is_not_json(model_copy, text):
    (model_copy / "model_index.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ModelNotFoundError) as info:
        MultiDiffusion.from_pretrained(model_copy, device="cpu")
    assert f"{model_copy / 'model_index.json'} is not valid JSON (" in str(info.value)


def test_index_that_is_not_an_object(model_copy):
    (model_copy / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ModelNotFoundError, match=r"is not a diffusers model index .* got list"):
        MultiDiffusion.from_pretrained(model_copy, device="cpu")


# -- pickles: never opened, not even read, without allow_pickle ------------------------------------------

_WATCHED: dict[str, list[str]] = {}


def _audit(event, args):
    if event == "open" and _WATCHED and isinstance(args[0], (str, bytes, os.PathLike)):
        _WATCHED.setdefault("opened", []).append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # sees every open() from Python (torch.load, pickle, Path.read_bytes); cheap otherwise


class _Payload:
    """Unpickling this creates the marker file: what a malicious checkpoint could do instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"model.diffusion_model.x": _Payload(marker)}}, path)
    return path


@pytest.fixture
def watch_opens():
    """The real paths Python opened while the test ran."""
    _WATCHED["on"] = []
    yield lambda: _WATCHED.get("opened", [])
    _WATCHED.clear()


def test_the_payload_is_live(tmp_path, watch_opens):
    """The checks on the tests themselves: unpickling the checkpoint creates the marker, and the
    watch sees torch.load open the file."""
    marker = tmp_path / "marker"
    path = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists() and str(path.resolve()) in watch_opens()


@pytest.mark.parametrize("name", ["model.ckpt", "model.bin", "model.pt", "model.pth", "MODEL.CKPT", "model.Pth"])
def test_a_pickle_checkpoint_is_never_opened(tmp_path, watch_opens, name):
    marker = tmp_path / "marker"
    path = _evil_checkpoint(tmp_path / name, marker)
    with pytest.raises(ModelNotFoundError, match=r"is a pickle checkpoint.*allow_pickle=True"):
        MultiDiffusion.from_pretrained(path, device="cpu")
    assert not marker.exists()
    assert str(path.resolve()) not in watch_opens()


def test_a_link_to_a_pickle_is_never_opened(tmp_path, watch_opens):
    marker = tmp_path / "marker"
    target = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    link = tmp_path / "model.safetensors"
    link.symlink_to(target)
    with pytest.raises(ModelNotFoundError, match=r"model\.safetensors is a pickle checkpoint"):
        MultiDiffusion.from_pretrained(link, device="cpu")
    assert not marker.exists() and str(target.resolve()) not in watch_opens()


def test_checkpoint_family_does_not_unpickle(tmp_path, watch_opens):
    marker = tmp_path / "marker"
    path = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(ModelNotFoundError, match=r"allow_pickle=True"):
        checkpoint_family(path)
    assert not marker.exists() and str(path.resolve()) not in watch_opens()


def test_a_pickle_only_component_is_refused_unopened(tiny_model_dir, tmp_path, watch_opens):
    folder, marker = tmp_path / "model", tmp_path / "marker"
    shutil.copytree(tiny_model_dir, folder)
    for f in folder.glob("unet/*.safetensors"):
        f.unlink()
    path = _evil_checkpoint(folder / "unet" / "diffusion_pytorch_model.bin", marker)
    with pytest.raises(ModelNotFoundError, match=r"pickle weights only \(\.bin\) for unet,"):
        MultiDiffusion.from_pretrained(folder, device="cpu")
    assert not marker.exists() and str(path.resolve()) not in watch_opens()


def test_a_pickle_next_to_safetensors_is_never_opened(tiny_model_dir, sd16, tmp_path, watch_opens):
    folder, marker = tmp_path / "model", tmp_path / "marker"
    shutil.copytree(tiny_model_dir, folder)
    path = _evil_checkpoint(folder / "unet" / "diffusion_pytorch_model.bin", marker)
    md = MultiDiffusion.from_pretrained(folder, device="cpu")
    assert torch.equal(md.pipe.unet.conv_in.weight, sd16.unet.conv_in.weight)  # the .safetensors
    assert not marker.exists() and str(path.resolve()) not in watch_opens()
