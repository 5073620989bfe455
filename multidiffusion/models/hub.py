"""Everything that asks the Hugging Face Hub, each question bounded by :data:`HUB_TIMEOUT_S`
(the hub client has no limit: a hub that accepts connections and never answers hung loads), and
the one message saying how to get a model that can't be had.

:func:`hub_folder` resolves a repo id named by a scene file or stored settings
(:class:`~multidiffusion.io.trust.RepoId`) to its snapshot folder in the cache, and only there:
diffusers' and transformers' ``from_pretrained(name)`` and ``load_lora_weights(name)`` first look
for a folder called ``name`` in the current directory, which is what a user who typed it means, but
a scene or a PNG from someone else could steer that to any ``org/name`` folder that happens to be
there.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from multidiffusion.models.files import ModelNotFoundError

__all__ = ["HUB_TIMEOUT_S", "ask_hub", "ask_hub_in_time", "how_to_get", "hub_folder", "hub_offline", "within_timeout"]


# Longest wait, in seconds, for the Hugging Face Hub to answer the look-up of a repo id that is not in the
# local cache (DNS, connection and answer together); past it loading fails with ModelNotFoundError.
# The hub client itself has no limit there: a server that accepts connections and never answers hangs it.
HUB_TIMEOUT_S = 10.0


def how_to_get(model: str, reason: str | None = None) -> str:
    why = f" ({reason})" if reason else ""
    return (
        f"model {model!r} is not in the local Hugging Face cache and could not be downloaded{why}. "
        f"On a machine with network run `hf download {model}` (or `huggingface-cli download {model}`) "
        "and copy the cache (~/.cache/huggingface), or pass a local diffusers folder or a .safetensors "
        "checkpoint; `--model demo` runs offline"
    )


def hub_offline() -> bool:
    """Whether the hub client is offline (HF_HUB_OFFLINE, read at its import or set since)."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "")


def ask_hub_in_time(repo: str, message: Callable[[str], str] | None = None) -> None:
    """Online, :func:`ask_hub` given up on after ``HUB_TIMEOUT_S``; offline nothing is asked."""
    if not hub_offline():
        within_timeout(time.monotonic() + HUB_TIMEOUT_S, lambda: ask_hub(repo, message), repo, message)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def within_timeout(
    deadline: float, fn: Callable[[], Any], repo: str, message: Callable[[str], str] | None = None
) -> Any:
    """``fn()`` run in a thread, given up on at ``deadline`` (``time.monotonic()``): the hub client's
    requests have no time limit by default and name resolution never has one. An abandoned thread is
    a daemon and ends with its request. ``message(reason)``: the error's text (default: how to get
    the model ``repo``)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=f"hub look-up of {repo}", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        reason = f"{_endpoint()} did not answer within {HUB_TIMEOUT_S:g} s"
        raise ModelNotFoundError(message(reason) if message else how_to_get(repo, reason))
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def ask_hub(repo: str, message: Callable[[str], str] | None = None) -> None:
    """Whether the hub has ``repo``; ``ModelNotFoundError`` saying why not (missing, unreachable, silent),
    in ``message(reason)`` (default: how to get the model ``repo``)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        HfApi(endpoint=_endpoint()).model_info(repo, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        reason = f"{_endpoint()} has no such model, or it is private: log in with `hf auth login` if you have access"
    except Exception as exc:  # the hub client's network errors (httpx, requests) and HTTP errors
        if "timeout" in type(exc).__name__.lower():
            reason = f"{_endpoint()} did not answer within {HUB_TIMEOUT_S:g} s"
        else:
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            reason = f"{_endpoint()} could not be reached: {type(exc).__name__}" + (f": {detail}" if detail else "")
    else:
        return
    raise ModelNotFoundError(message(reason) if message else how_to_get(repo, reason))


def hub_folder(repo: str, name: str, allow_pickle: bool = False) -> Path:
    """The local snapshot folder of ``repo`` (cache first; else downloaded, once the hub has
    answered within ``HUB_TIMEOUT_S``); ``ModelNotFoundError`` naming ``name`` when it can't be had.
    Pickle weights are not fetched unless ``allow_pickle``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    ignore = None if allow_pickle else ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.pkl"]
    try:
        return Path(snapshot_download(repo, local_files_only=True, ignore_patterns=ignore))
    except HFValidationError:
        raise ModelNotFoundError(f"{name}: {repo!r} is not a Hugging Face repo id") from None
    except (OSError, ValueError):
        pass  # not in the cache
    if hub_offline():
        raise ModelNotFoundError(f"{name}: " + how_to_get(repo))
    ask_hub_in_time(repo)
    return Path(snapshot_download(repo, ignore_patterns=ignore))
