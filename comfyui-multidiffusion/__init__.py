"""ComfyUI entry point of the MultiDiffusion node pack (loaded from ``custom_nodes/``).

One mapping per node module, merged here: adding a module is one line in ``_MODULES``.
"""

import importlib

_MODULES = (
    "loaders",
    "demo_controlnet",
    "tiled",
    "regions",
    "vae",
    "upscale",
)

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

for _name in _MODULES:
    _module = importlib.import_module(f".multidiffusion_comfy.{_name}", __name__)
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
