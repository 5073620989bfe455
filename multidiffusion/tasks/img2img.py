"""Image-to-image on a canvas of any size (SDEdit over MultiDiffusion's windows): the input image,
encoded and noised to the step ``strength`` says, denoised as a panorama is."""

from __future__ import annotations

from typing import Any

import torch

from multidiffusion.engine.task import Start
from multidiffusion.options import Img2ImgOptions
from multidiffusion.tasks.images import EncodedImage
from multidiffusion.tasks.panorama import PanoramaTask

__all__ = ["Img2ImgTask"]


class Img2ImgTask(PanoramaTask):
    """A panorama's windows, placement and weights over the input image's canvas; starts from the
    input noised to the first timestep that runs (:mod:`multidiffusion.tasks.images`)."""

    name = "img2img"
    options: Img2ImgOptions

    def __init__(self, options: Img2ImgOptions, adapter: Any):
        super().__init__(options, adapter)
        self.input = EncodedImage(options.image, self.size, adapter)

    @property
    def strength(self) -> float:
        return self.options.strength

    def prepare(self, generator: Any, images: int, vae_tiling: dict[str, Any]) -> None:
        self.input.encode(generator, images, vae_tiling)

    def start_latents(self, start: Start) -> torch.Tensor:
        return self.input.noised(start)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "image": self.input.record(), "strength": self.options.strength}
