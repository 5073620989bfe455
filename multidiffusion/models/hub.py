"""Hub repo ids named by scene files and stored settings (:class:`~multidiffusion.io.trust.RepoId`)
resolved to their snapshot folder in the Hugging Face cache, and only there.

diffusers' and transformers' ``from_pretrained(name)`` and ``load_lora_weights(name)`` first look
for a folder called ``name`` in the current directory: for a name the user typed that is what they
mean, but a scene or a PNG from someone else could steer it to any ``org/name`` folder that happens
to be there. :func:`hub_folder` asks ``huggingface_hub`` for the repo's snapshot instead (cache
first, then the hub within :data:`~multidiffusion.models.loading.HUB_TIMEOUT_S`), so the loaders
are handed a folder inside the cache.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from multidiffusion.models.files import ModelNotFoundError

__all__ = ["hub_folder"]


def hub_folder(repo: str, name: str, allow_pickle: bool = False) -> Path:
    """The local snapshot folder of ``repo`` (cache first; else downloaded, once the hub has
    answered within ``HUB_TIMEOUT_S``); ``ModelNotFoundError`` naming ``name`` when it can't be had.
    Pickle weights are not fetched unless ``allow_pickle``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    from multidiffusion.models.loading import HUB_TIMEOUT_S, _ask_hub, _before, _how_to_get

    ignore = None if allow_pickle else ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.pkl"]
    try:
        return Path(snapshot_download(repo, local_files_only=True, ignore_patterns=ignore))
    except HFValidationError:
        raise ModelNotFoundError(f"{name}: {repo!r} is not a Hugging Face repo id") from None
    except (OSError, ValueError):
        pass  # not in the cache
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", ""):
        raise ModelNotFoundError(f"{name}: " + _how_to_get(repo))
    _before(time.monotonic() + HUB_TIMEOUT_S, lambda: _ask_hub(repo), repo)
    return Path(snapshot_download(repo, ignore_patterns=ignore))
