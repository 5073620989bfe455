"""Tests of the ComfyUI node pack against a real ComfyUI (``COMFYUI_PATH`` or ``../shared/vendor/ComfyUI``).

They run in the separate ComfyUI environment that ``devtools/comfyui_env.sh`` builds (PyPI's default
torch/torchvision pair: our CPU-only torch can't load PyPI's torchvision, which ComfyUI imports), and
skip, saying why, where ComfyUI can't be imported or started.

ComfyUI's tree is read-only to the tests: no bytecode is written next to its sources (here, and
``PYTHONDONTWRITEBYTECODE`` for the server), and the server gets temporary base, user, input, output
and temp folders and an in-memory database.
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # before any ComfyUI module is imported in-process
