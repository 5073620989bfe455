"""Qwen-Image ControlNets (``QwenImageControlNetModel``, e.g. the InstantX Qwen-Image ControlNets) as
diffusers' ``QwenImageControlNetPipeline`` runs them, mixed into
:class:`~multidiffusion.models.qwenimage.QwenImageAdapter`.

- **Control input**: the control image in [-1, 1] through the VAE, normalised as the latents,
  (z − latents_mean) / latents_std (the pipeline draws a sample of the posterior; we take its mean,
  as every flow family here), and each view given the crop of those canvas latents at its latent
  place; the crop is packed into 2x2 patches as the view's latents are.
- **The net** is a short stack of the transformer's dual-stream blocks: it embeds the view's tokens
  plus ``controlnet_x_embedder`` of the control tokens, runs with the view's text, timestep t / 1000
  and rotary positions, and returns one hint per block, each (rows, image tokens, width) and scaled
  by ``controlnet_conditioning_scale``. The transformer adds hint ⌊i / k⌋ to the image stream after
  its block i, k = ⌈blocks / hints⌉; here each net's hints are spread to one per transformer block
  in that way, so that several nets (of any depth) sum block by block.
- **Guidance**: as the pipeline, the net runs on the conditional rows only and its hints serve both
  branches of true CFG (:attr:`controlnet_positive_only`); no guess mode.
- **Positions**: with ``positions="canvas"`` the net's rotary positions move with the view's, as
  the transformer's, one call per place.
- **Editing** (Qwen-Image-Edit, for which diffusers has no ControlNet pipeline): the net sees the
  view's image tokens only, and its hints are zero for the reference tokens appended after them
  (:meth:`~multidiffusion.models.qwenimage.QwenImageAdapter.predict` pads them).

Several nets are held in diffusers' ``MultiControlNetModel`` (``QwenImageMultiControlNetModel``
runs only one net) and their hints summed. Not here: the inpainting ControlNets (their
``extra_condition_channels`` of mask and masked image, ``QwenImageControlNetInpaintPipeline``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from multidiffusion.models.flux import pack_latents
from multidiffusion.models.qwenimage_positions import placed_rope

__all__ = ["QwenImageControlNet"]


class QwenImageControlNet:
    """The ControlNet methods of :class:`~multidiffusion.models.qwenimage.QwenImageAdapter`."""

    controlnet_guess_mode = False
    controlnet_positive_only = True
    transformer: Any
    dtype: torch.dtype

    def adopt_controlnet(self, net: Any, name: str) -> Any:
        """A ``QwenImageControlNetModel`` made for this transformer (its width, input patches and text
        width), without inpainting channels."""
        from multidiffusion.models.controlnet import check_transformer_controlnet

        keys = ("patch_size", "in_channels", "joint_attention_dim")
        check_transformer_controlnet(net, self.transformer, "QwenImageControlNetModel", "Qwen-Image", keys, name)
        extra = net.config.get("extra_condition_channels") or 0
        if extra:
            raise ValueError(
                f"{name}: this QwenImageControlNetModel takes {extra} extra condition channels (an inpainting "
                "ControlNet, QwenImageControlNetInpaintPipeline's), which is not supported; use a plain ControlNet"
            )
        return net

    def control_input(self, net: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """QwenImageControlNetPipeline's control latents of the canvas image (normalised as the
        latents), cropped at the views' latent offsets (packed in :meth:`run_controlnet`)."""
        return self.control_latents(pixels), 1  # type: ignore[attr-defined]

    def run_controlnet(
        self,
        net: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        kwargs: dict[str, Any],
        control: dict[str, Any],
        guess_mode: bool,
    ) -> Any:
        """``net``'s hints for the crops ``x`` as QwenImageControlNetPipeline calls it, one per
        transformer block (the net's hint ⌊i / k⌋ for block i), one call per canvas place."""
        places = kwargs.get("positions")
        cond = control["controlnet_cond"].to(x.dtype)
        scale = control["conditioning_scale"]
        text, mask = kwargs["encoder_hidden_states"], kwargs["encoder_hidden_states_mask"]
        blocks = len(self.transformer.transformer_blocks)

        def hints(rows: torch.Tensor | slice, place: list[int] | None) -> list[torch.Tensor]:
            crops, n, (h, w) = x[rows], x[rows].shape[0], x.shape[-2:]
            own = mask[rows]
            with placed_rope(net, place):
                samples = net(
                    hidden_states=pack_latents(crops),
                    controlnet_cond=pack_latents(cond[rows]),
                    conditioning_scale=scale,
                    encoder_hidden_states=text[rows],
                    encoder_hidden_states_mask=None if bool(own.all()) else own,
                    timestep=t.expand(n).to(x.dtype) / 1000,
                    img_shapes=[[(1, h // 2, w // 2)]] * n,
                    return_dict=False,
                )
            every = math.ceil(blocks / len(samples))
            return [samples[i // every] for i in range(blocks)]

        if places is None:
            return tuple(hints(slice(None), None))
        out: list[torch.Tensor] | None = None
        for place in torch.unique(places, dim=0).tolist():
            rows = (places == torch.tensor(place)).all(dim=1).nonzero().flatten().to(x.device)
            part = hints(rows, place)
            if out is None:
                out = [p.new_zeros((x.shape[0], *p.shape[1:])) for p in part]
            out = [o.index_copy(0, rows, p) for o, p in zip(out, part)]
        return tuple(out or ())

    def residual_kwargs(self, residuals: Any) -> dict[str, Any]:
        """The summed hints, one per transformer block, as its ``controlnet_block_samples``."""
        return {"controlnet_block_samples": list(residuals)}
