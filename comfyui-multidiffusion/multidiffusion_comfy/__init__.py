"""ComfyUI nodes over the multidiffusion engine.

Each node module (``loaders``, ``tiled``, ``regions``, ``vae``) imports ComfyUI's ``comfy`` package
and so only loads inside ComfyUI (or a test that put ComfyUI on ``sys.path``); this package's own
import does not, so ``pip install`` can check it anywhere. The pack's root ``__init__.py`` merges the
modules' ``NODE_CLASS_MAPPINGS``.
"""
