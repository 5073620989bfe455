"""multidiffusion: MultiDiffusion (Bar-Tal, Yariv, Lipman, Dekel, ICML 2023) for diffusers.

Panoramas of any size and region prompts with a pretrained Stable Diffusion model, no training:
each step denoises views of one canvas and fuses their predictions per pixel (paper Eq. 5).

The public names are imported on first use (PEP 562), so ``import multidiffusion`` and
``multidiffusion --help`` do not load torch and diffusers before they are needed.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from multidiffusion.version import __version__

if TYPE_CHECKING:  # what the lazy exports below resolve to, for type checkers and IDEs
    from multidiffusion.engine.fusion import FusionPlan, Job, fused_prediction
    from multidiffusion.engine.views import View, grid_views
    from multidiffusion.files.scene import Scene, load_scene
    from multidiffusion.models.loading import ModelNotFoundError
    from multidiffusion.pipeline import MultiDiffusion, MultiDiffusionOutput
    from multidiffusion.regions.layout import MAX_REGIONS, Region, RegionLayout, layout_preview, region_layout

_EXPORTS: dict[str, str] = {
    "FusionPlan": "multidiffusion.engine.fusion",
    "Job": "multidiffusion.engine.fusion",
    "fused_prediction": "multidiffusion.engine.fusion",
    "View": "multidiffusion.engine.views",
    "grid_views": "multidiffusion.engine.views",
    "ModelNotFoundError": "multidiffusion.models.loading",
    "MultiDiffusion": "multidiffusion.pipeline",
    "MultiDiffusionOutput": "multidiffusion.pipeline",
    "MAX_REGIONS": "multidiffusion.regions.layout",
    "Region": "multidiffusion.regions.layout",
    "RegionLayout": "multidiffusion.regions.layout",
    "layout_preview": "multidiffusion.regions.layout",
    "region_layout": "multidiffusion.regions.layout",
    "Scene": "multidiffusion.files.scene",
    "load_scene": "multidiffusion.files.scene",
}
"""Public name -> the module that defines it."""

__all__ = [  # the names above and __version__ (tests/test_cli_parser.py checks they agree)
    "MAX_REGIONS",
    "FusionPlan",
    "Job",
    "ModelNotFoundError",
    "MultiDiffusion",
    "MultiDiffusionOutput",
    "Region",
    "RegionLayout",
    "Scene",
    "View",
    "__version__",
    "fused_prediction",
    "grid_views",
    "layout_preview",
    "load_scene",
    "region_layout",
]


class _TorchvisionFallbackFilter(logging.Filter):
    """Drops transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to
    `CLIPImageProcessorPil`" notes (and SigLIP's), printed when diffusers' pipeline modules import
    those classes: the PIL processors are the ones this library uses, so the notes ask nothing of
    the user. The command line and the Python API both get this filter; other warnings still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back to" not in str(record.msg)


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackFilter())


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (then cached in this module)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'multidiffusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
