"""Finding and loading a model: the shipped demo, a Hugging Face repo id, a diffusers folder, or a
single checkpoint file (.safetensors; pickle formats only when asked for).

Errors are ``ModelNotFoundError`` (a ``ValueError``) with one message that says how to get the
model, instead of a hub traceback.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from multidiffusion.io.trust import SHIPPED_MODELS, RepoId
from multidiffusion.models.files import GGUF_SUFFIX, PICKLE_SUFFIXES, ModelNotFoundError, is_gguf_path, is_pickle_path
from multidiffusion.models.hub import HUB_TIMEOUT_S, ask_hub, ask_hub_in_time, how_to_get, hub_offline, within_timeout

__all__ = [
    "DEMO_MODEL_DIR",
    "HUB_TIMEOUT_S",
    "ModelNotFoundError",
    "check_device",
    "check_dtype",
    "checkpoint_family",
    "default_device",
    "default_dtype",
    "is_pickle_path",
    "load_pipeline",
    "set_prediction_type",
]

DEMO_MODEL_DIR = Path(__file__).parents[1] / "demo" / "model"
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_MODEL_KINDS = "'demo', a Hugging Face repo id, or the path of a diffusers folder or a checkpoint file"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def default_device() -> torch.device:
    """CUDA if present, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """float16 on accelerators, float32 on the CPU (half precision is slow or missing there)."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.float16


def _pipeline_class(name: str):
    import diffusers

    from multidiffusion.models import supported_families, supported_pipelines

    if name not in supported_pipelines():
        raise ModelNotFoundError(
            f"model is a {name}; multidiffusion supports {supported_families()} ({', '.join(supported_pipelines())}) "
            "and their fine-tunes"
        )
    return getattr(diffusers, name)


def _pickle_refusal(what: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{what}, which can run arbitrary code when loaded; convert it to .safetensors or pass allow_pickle=True "
        "(--allow-pickle) if you trust the source"
    )


def _read_index(folder: Path) -> dict[str, Any]:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelNotFoundError(f"{folder} is not a diffusers model folder: it has no model_index.json")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelNotFoundError(
            f"{index} is not valid JSON ({exc}); re-download the model or save it again with save_pretrained"
        ) from None
    if not isinstance(data, dict):
        raise ModelNotFoundError(f"{index} is not a diffusers model index (a JSON object), got {type(data).__name__}")
    return data


def _components(folder: Path, index: dict[str, Any], passed: set[str]) -> dict[str, Path]:
    """Component name -> its subfolder, for the components ``model_index.json`` lists and the caller
    does not pass; ``ModelNotFoundError`` naming the folder and the first one missing."""
    listed = {
        name: value[1]
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] and value[1]
    }
    if "unet" not in listed and "transformer" not in listed:
        raise ModelNotFoundError(
            f"{folder} has no 'unet' component: its model_index.json lists none (nor a 'transformer')"
        )
    found = {}
    for name, cls in listed.items():
        if name in passed:
            continue
        sub = folder / name
        if not sub.is_dir():
            raise ModelNotFoundError(
                f"{folder} is missing its {name!r} component: model_index.json lists a {cls} but there is no "
                f"{name}/ folder; re-download the model or save it again with save_pretrained"
            )
        needs = "scheduler_config.json" if name.startswith("scheduler") else "config.json"
        model = name in ("unet", "transformer", "vae") or name.startswith(("text_encoder", "scheduler"))
        if model and not (sub / needs).is_file():
            raise ModelNotFoundError(f"{folder} has an incomplete {name!r} component: {sub} has no {needs}")
        found[name] = sub
    return found


def _load_folder(folder: Path, allow_pickle: bool, **kwargs: Any):
    index = _read_index(folder)
    cls = _pipeline_class(str(index.get("_class_name", "?")))
    components = _components(folder, index, set(kwargs))
    # the weights of the models among them (those with a config.json): .safetensors, or pickles when allowed;
    # a pickle is refused here by its name, and use_safetensors=True keeps diffusers and transformers
    # from falling back to a .bin next to a .safetensors
    pickle_only, missing = [], []
    for name, sub in components.items():
        if (sub / "config.json").is_file() and not any(sub.glob("*.safetensors")):
            (pickle_only if any(is_pickle_path(f) for f in sub.iterdir() if f.is_file()) else missing).append(name)
    if missing:
        raise ModelNotFoundError(
            f"{folder} has no weights for {', '.join(missing)} (no .safetensors or pickle file in "
            f"{', '.join(n + '/' for n in missing)}); re-download the model or save it again with save_pretrained"
        )
    if pickle_only and not allow_pickle:
        raise _pickle_refusal(f"{folder} holds pickle weights only (.bin) for {', '.join(pickle_only)}")
    return cls.from_pretrained(str(folder), use_safetensors=None if allow_pickle else True, **kwargs)


def _load_file(path: Path, allow_pickle: bool, config: str | None, **kwargs: Any):
    if is_pickle_path(path) and not allow_pickle:
        raise _pickle_refusal(f"{path.name} is a pickle checkpoint")
    if path.suffix != ".safetensors" and not is_pickle_path(path) and not is_gguf_path(path):
        raise ModelNotFoundError(f"model file must be a .safetensors or .gguf checkpoint, got {path.name}")
    if not path.is_file():  # a FIFO or a device is never opened
        raise ModelNotFoundError(f"model file {path.name} is not a regular file")
    from multidiffusion.models.single_file import load_single_file

    return load_single_file(path, config, allow_pickle=allow_pickle, ask_hub=ask_hub_in_time, **kwargs)


def check_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device`` (None: :func:`default_device`), or ``ValueError`` / ``TypeError``
    saying what is wrong and what is allowed: an unknown name, or an accelerator this machine lacks."""
    if device is None:
        return default_device()
    allowed = "'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu'"
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device ({allowed}), got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must be {allowed}, got {device!r}") from None
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"device must be {allowed}, got {device!r}")
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ValueError(
                f"device {str(device)!r}: CUDA is not available in this torch build (torch {torch.__version__} was "
                "built without CUDA); install a CUDA build of torch (see https://pytorch.org/get-started/locally/) "
                "or use device='cpu'"
            )
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r}: torch was built with CUDA but sees no GPU (check the NVIDIA driver and "
                "CUDA_VISIBLE_DEVICES), or use device='cpu'"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {str(device)!r} does not exist: torch sees {count} CUDA device(s), cuda:0 .. cuda:{count - 1}"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            why = (
                "this torch build has no MPS support"
                if mps is None or not mps.is_built()
                else "it needs Apple silicon and macOS 12.3 or later"
            )
            raise ValueError(f"device {str(device)!r}: Apple's MPS is not available ({why}); use device='cpu'")
    elif dev.type == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            raise ValueError(f"device {str(device)!r}: no Intel XPU is available to this torch build; use device='cpu'")
    return dev


def check_dtype(torch_dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
    """``torch_dtype``, or :func:`default_dtype` for None; ``TypeError`` / ``ValueError`` for anything that is
    not one of ``FLOAT_DTYPES``."""
    if torch_dtype is None:
        return default_dtype(device)
    allowed = ", ".join(str(d) for d in FLOAT_DTYPES)
    if not isinstance(torch_dtype, torch.dtype):
        hint = (
            f" (did you mean torch.{torch_dtype}?)"
            if isinstance(getattr(torch, str(torch_dtype), None), torch.dtype)
            else ""
        )
        raise TypeError(f"torch_dtype must be a torch floating dtype ({allowed}), got {torch_dtype!r}{hint}")
    if torch_dtype not in FLOAT_DTYPES:
        raise ValueError(f"torch_dtype must be a torch floating dtype ({allowed}), got {torch_dtype}")
    return torch_dtype


def _check_model(model: Any) -> str:
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be {_MODEL_KINDS} (a str or os.PathLike), got {type(model).__name__}")
    name = os.fspath(model)
    if not isinstance(name, str):
        raise TypeError(f"model must be {_MODEL_KINDS} as a str path, got {type(name).__name__}")
    if not name.strip():
        raise ValueError(f"model must be {_MODEL_KINDS}, got an empty string")
    return name


def set_prediction_type(pipe: Any, prediction_type: str) -> None:
    """Make the pipeline's scheduler (and every scheduler built from its config) use ``prediction_type``."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (0.36); pass the name this version expects."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def load_pipeline(
    model: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    allow_pickle: bool = False,
    config: str | None = None,
    prediction_type: str | None = None,
    **kwargs: Any,
):
    """A diffusers pipeline for ``model``: "demo" ("demo-lcm": the few-step demo), a repo id, a diffusers
    folder or a checkpoint file (SD 1.x, 2.x or SDXL; see :mod:`multidiffusion.models.single_file`).

    Loading tries the local cache first; a repo id not there is downloaded unless HF_HUB_OFFLINE is
    set, and ``ModelNotFoundError`` follows when the hub has not answered within ``HUB_TIMEOUT_S``.
    The safety checker is not loaded (multidiffusion does not run it). ``prediction_type``
    overrides the scheduler's ("epsilon", "v_prediction" or "sample").

    Bad arguments raise ``TypeError`` / ``ValueError`` naming the parameter and what is allowed (an
    unknown ``device`` or one this machine lacks, a ``torch_dtype`` other than ``FLOAT_DTYPES``), before
    anything is read. Pickle files (.ckpt, .bin, .pt, .pth, any case, or links to one) are never
    opened unless ``allow_pickle`` is True.
    """
    # every argument is checked before any file is read or weight loaded
    name = _check_model(model)
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    if not isinstance(allow_pickle, bool):
        raise TypeError(f"allow_pickle must be True or False, got {allow_pickle!r}")
    if config is not None and not isinstance(config, (str, os.PathLike)):
        raise TypeError(
            f"config must be a diffusers folder or a repo id (str or os.PathLike), got {type(config).__name__}"
        )
    if config is not None:
        config = os.fspath(config)
        if Path(config).expanduser().is_file():
            raise ValueError(f"config must be a diffusers folder or a repo id, got the file {config!r}")
    device = check_device(device)
    kwargs = {**_dtype_kwarg(check_dtype(torch_dtype, device)), **kwargs}
    if name in SHIPPED_MODELS:
        if not (DEMO_MODEL_DIR / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"the demo model's weights are missing from {DEMO_MODEL_DIR}; reinstall multidiffusion "
                "or train them with `python -m devtools.demo.train`"
            )
        pipe = _load_folder(DEMO_MODEL_DIR, allow_pickle=False, **kwargs)
        if name == "demo-lcm":  # the demo with its LCM-LoRA fused in, and LCMScheduler
            from multidiffusion.models.demo_lcm import make_demo_lcm

            make_demo_lcm(pipe, keep_scheduler="scheduler" in kwargs)
    elif isinstance(model, RepoId):  # named by a scene or a PNG: the hub's, never a folder here
        pipe = _load_repo(name, allow_pickle, **kwargs)
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if path.is_dir():
            pipe = _load_folder(path, allow_pickle, safety_checker=None, **kwargs)
        else:
            pipe = _load_file(path, allow_pickle, config, **kwargs)
    elif Path(name).suffix in (".safetensors", GGUF_SUFFIX, *PICKLE_SUFFIXES) or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model file or folder {name!r} does not exist")
    else:
        pipe = _load_repo(name, allow_pickle, **kwargs)
    if prediction_type is not None:
        set_prediction_type(pipe, prediction_type)
    return pipe.to(device)


def _load_repo(repo: str, allow_pickle: bool, **kwargs: Any):
    """Resolve a repo id to a local snapshot (cache first, then the hub) and load that folder.

    Everything up to the download itself is bounded by ``HUB_TIMEOUT_S`` in total: the cache look-up
    (the hub client contacts the endpoint even then, when not offline) and one question to the hub.
    The download that follows has the hub client's own limits (HF_HUB_DOWNLOAD_TIMEOUT per read).
    """
    from diffusers import DiffusionPipeline
    from huggingface_hub.errors import HFValidationError

    offline = hub_offline()
    deadline = time.monotonic() + HUB_TIMEOUT_S
    for local_only in [True] if offline else [True, False]:

        def find(local_only: bool = local_only) -> str:
            return DiffusionPipeline.download(
                repo,
                local_files_only=local_only,
                use_safetensors=None if allow_pickle else True,
                safety_checker=None,
            )

        try:
            if local_only:  # online, the hub client contacts the endpoint even for a cached model
                folder = find() if offline else within_timeout(deadline, find, repo)
            else:
                within_timeout(deadline, lambda: ask_hub(repo), repo)  # the hub answers: the download can start
                folder = find()
        except ModelNotFoundError:
            raise
        except HFValidationError:
            raise ModelNotFoundError(
                f"model {repo!r} is neither 'demo', an existing folder or file, nor a Hugging Face repo id"
            ) from None
        except (OSError, ValueError) as exc:
            if "safetensors" in str(exc).lower() and not allow_pickle:
                raise ModelNotFoundError(
                    f"model {repo!r} has no .safetensors weights; pickle weights can run code when loaded, "
                    "pass allow_pickle=True (--allow-pickle) if you trust the source"
                ) from None
            continue
        return _load_folder(Path(folder), allow_pickle, safety_checker=None, **kwargs)
    raise ModelNotFoundError(how_to_get(repo))


# re-exported for compatibility: the single-file logic lives in its own module, which needs
# ModelNotFoundError from this one (hence the import at the end)
from multidiffusion.models.single_file import checkpoint_family  # noqa: E402  (re-exported)
