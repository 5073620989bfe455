"""multidiffusion: MultiDiffusion (Bar-Tal, Yariv, Lipman, Dekel, ICML 2023) for diffusers.

Panoramas of any size and region prompts with a pretrained Stable Diffusion model, no training:
each step denoises views of one canvas and fuses their predictions per pixel (paper Eq. 5).
"""

__version__ = "0.1.0"

from .fusion import FusionPlan, Job, fused_prediction
from .loading import ModelNotFoundError
from .pipeline import MultiDiffusion, MultiDiffusionOutput
from .preview import layout_preview
from .regions import MAX_REGIONS, Region, RegionLayout, region_layout
from .scene import Scene, load_scene
from .views import View, grid_views

__all__ = [
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
