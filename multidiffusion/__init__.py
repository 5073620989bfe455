"""multidiffusion: MultiDiffusion (Bar-Tal, Yariv, Lipman, Dekel, ICML 2023) for diffusers.

Panoramas of any size and region prompts with a pretrained Stable Diffusion model, no training:
each step denoises views of one canvas and fuses their predictions per pixel (paper Eq. 5).
"""

__version__ = "0.1.0"

from .fusion import FusionPlan, Job, fused_prediction
from .loading import ModelNotFoundError
from .pipeline import MultiDiffusion, MultiDiffusionOutput
from .views import View, grid_views

__all__ = [
    "FusionPlan",
    "Job",
    "ModelNotFoundError",
    "MultiDiffusion",
    "MultiDiffusionOutput",
    "View",
    "__version__",
    "fused_prediction",
    "grid_views",
]
