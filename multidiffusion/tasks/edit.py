"""Reference-image editing of large images (``md.edit``): an editing model (Qwen-Image-Edit) run
over MultiDiffusion's windows, each view given its crop of the reference image.

An edit pipeline denoises fresh noise while the transformer also attends to the reference image's
latents (appended as tokens after the image's). Past the model's native size the canvas is the
input image's size (like img2img), the image is encoded once (tiled, the posterior's mean, as the
pipelines take it) and every view, at every step, is given the crop of those latents at its own
place: a view over the top-left corner of a 4K photo edits that corner, seeing that corner. The
views' predictions are fused by Eq. 5 as in a panorama. Optionally (``whole_reference``) every view
also sees the whole image, brought to the size the family's pipeline brings a reference
(:meth:`~multidiffusion.models.base.FamilyAdapter.reference_size`; Qwen-Image-Edit: about 1 MP),
as a second reference, for global context (what the crop belongs to) at the cost of its tokens.

**The prompt.** An encoder that reads the image too (Qwen-Image-Edit's Qwen2.5-VL) encodes the
prompt once with the *whole* image, brought to the pipeline's size, as the pipeline does: the
instruction ("make the sky a sunset") is about the picture as a whole, and one encoding keeps every
view under the same conditioning (a per-view encoding of each crop would cost a VL pass per view
and give neighbouring views different readings of the same instruction). The views then differ
only by their crops' reference latents. This is the default and only mode for now.

**What a family implements** (:class:`~multidiffusion.models.base.FamilyAdapter`):
``reference_size(size)`` (also the check that the model edits: other families refuse in a line),
``reference_inputs(references)`` (the model's keyword arguments for a batch's reference latents:
the view crops first, the whole image after), consumed by its ``predict``; and, for an encoder that
sees images, the ``image`` of :class:`EditSlots` in its ``condition``. FLUX.2's reference images
plug in through the same two methods (its reference tokens and their position ids).

``strength`` below 1 (default 1, as the edit pipelines) also starts from the input noised to that
step, as img2img. At one view covering a canvas of the pipeline's reference size this equals
QwenImageEditPipeline (``tests/test_edit.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from multidiffusion.engine.conditioning import Conditioning, ModelCall
from multidiffusion.engine.task import PromptSlots, Start
from multidiffusion.engine.views import crop
from multidiffusion.options import EditOptions
from multidiffusion.tasks.images import image_tensor
from multidiffusion.tasks.img2img import Img2ImgTask
from multidiffusion.vae.codec import encode_images

__all__ = ["EditReferences", "EditSlots", "EditTask"]


@dataclass
class EditSlots(PromptSlots):
    """Prompt slots with the image the prompt is about (the whole input, for encoders that see it)."""

    image: Any = None


class EditReferences(Conditioning):
    """The reference latents of every model call: each job's crop of the encoded reference at its
    view (and the whole image's latents, when given), one row per model input row."""

    shares_unconditional = False  # the unconditional rows get each view's own crop too

    def __init__(self, adapter: Any, reference: torch.Tensor, whole: torch.Tensor | None):
        self.adapter, self.reference, self.whole = adapter, reference, whole

    def model_inputs(self, call: ModelCall) -> dict[str, Any]:
        crops = torch.cat([crop(self.reference, job.view) for job in call.jobs])
        references = [crops]
        if self.whole is not None:
            references.append(self.whole.repeat(len(call.jobs), 1, 1, 1))
        if call.guided:
            references = [torch.cat([r, r]) for r in references]
        return self.adapter.reference_inputs(references)

    def record(self) -> dict[str, Any]:
        return {}


class EditTask(Img2ImgTask):
    """The input image's canvas under a panorama's windows, each view with its reference crop; the
    prompt encoded with the whole image."""

    name = "edit"
    options: EditOptions

    def __init__(self, options: EditOptions, adapter: Any):
        super().__init__(options, adapter)
        self.whole_size = adapter.reference_size(self.size)  # refuses a model that does not edit
        self.references: EditReferences | None = None

    def prompt_slots(self) -> PromptSlots:
        slots = super().prompt_slots()
        return EditSlots(slots.prompts, slots.negatives, slots.guidance, image=self.input.image.image)

    def prepare(self, generator: Any, images: int, vae_tiling: dict[str, Any]) -> None:
        """Encode the reference (the posterior's mean: no draw, so the noise is the pipeline's) and,
        with ``whole_reference``, the whole image at the pipeline's reference size."""
        tiling = {k: v for k, v in vae_tiling.items() if k in ("tile", "overlap", "norm_stats", "share", "cache_mb")}
        a = self.adapter

        def encoded(pixels: torch.Tensor) -> torch.Tensor:
            latents = encode_images(a.vae, pixels, latent_format=a.latent_format, **tiling)
            return latents.repeat(images // latents.shape[0], 1, 1, 1).to(device=a.device, dtype=a.dtype)

        reference = self.input.latents = encoded(self.input.pixels())
        whole = (
            encoded(image_tensor(self.input.image.image, self.whole_size, a)) if self.options.whole_reference else None
        )
        self.references = EditReferences(a, reference, whole)

    def start_latents(self, start: Start) -> torch.Tensor:
        return super().start_latents(start) if self.strength < 1 else super(Img2ImgTask, self).start_latents(start)

    def conditionings(self) -> list[Conditioning]:
        return [self.references] if self.references is not None else []

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "whole_reference": self.options.whole_reference}
