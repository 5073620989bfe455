"""multidiffusion: MultiDiffusion (Bar-Tal, Yariv, Lipman, Dekel, ICML 2023) for diffusers.

Panoramas of any size and region prompts with a pretrained Stable Diffusion model, no training:
each step denoises views of one canvas and fuses their predictions per pixel (paper Eq. 5).
"""

from multidiffusion.engine.fusion import FusionPlan, Job, fused_prediction
from multidiffusion.engine.views import View, grid_views
from multidiffusion.models.loading import ModelNotFoundError
from multidiffusion.pipeline import MultiDiffusion, MultiDiffusionOutput
from multidiffusion.regions.layout import MAX_REGIONS, Region, RegionLayout, layout_preview, region_layout
from multidiffusion.regions.scene import Scene, load_scene
from multidiffusion.version import __version__

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
