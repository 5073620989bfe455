"""What a model family is: one adapter class that says which diffusers pipelines it drives, the
options it takes, how its latents map to the VAE's, and what the engine asks of every model
(:class:`~multidiffusion.engine.adapter.ModelAdapter`: prompts encoded once, the model's keyword
arguments per batch of views, its prediction for a batch of crops, the schedule).

A family is a module with a :class:`FamilyAdapter` subclass, registered by one line in
:data:`multidiffusion.models.ADAPTERS`; ``docs/adding-a-family.md`` walks through one. Everything
the rest of the package knows of the families derives from these classes: which family a pipeline
is (:meth:`FamilyAdapter.claims` and :meth:`FamilyAdapter.check_pipe`), the options ``MultiDiffusion``
accepts, what a PNG records and reads back, the command line's flags (:attr:`FamilyAdapter.Options`),
the diffusers pipelines a folder may hold (:attr:`FamilyAdapter.pipelines`) and the multi-ControlNet
class (:attr:`FamilyAdapter.multi_controlnet`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from multidiffusion.engine.adapter import ModelAdapter
from multidiffusion.models.options import ModelOptions, check_clip_skip, option_fields
from multidiffusion.vae.codec import vae_scale_factor
from multidiffusion.vae.latents import LatentFormat, ScaledLatents

__all__ = ["FamilyAdapter"]


class FamilyAdapter(ModelAdapter):
    """Base of every family's adapter; its defaults fit UNet families (SD 1.x / 2.x, SDXL).

    A subclass sets the class attributes below, implements ``encode`` and ``unet_kwargs`` (and
    ``predict`` when the network is not called as a UNet), and overrides what differs. Its options
    become attributes of the adapter (``adapter.clip_skip``), checked by the ``Options`` class.
    """

    family: ClassVar[str] = "base"
    """Short name: ``md.family``, and in messages ("sd", "sdxl", "sd3", "flux")."""
    label: ClassVar[str] = ""
    """The family in a few words, for flags' help ("SDXL", "FLUX.1")."""
    description: ClassVar[str] = ""
    """The family in words, for errors that list the supported families."""
    Options: ClassVar[type[ModelOptions]] = ModelOptions
    """The options the family takes (a frozen dataclass of :func:`~multidiffusion.models.options.option`
    fields): ``from_pretrained``'s keywords, recorded in results, flags of the command line."""
    pipeline_class: ClassVar[str] = ""
    """diffusers' text-to-image pipeline of the family: any sibling (img2img, inpainting, ControlNet)
    is turned into it with ``from_pipe``, sharing its components."""
    pipelines: ClassVar[tuple[str, ...]] = ()
    """diffusers pipeline classes (``model_index.json``'s ``_class_name``) that load as this family."""
    network: ClassVar[str] = "unet"
    """The pipeline's attribute holding the denoising network ("unet" or "transformer")."""
    network_classes: ClassVar[tuple[str, ...]] = ("UNet2DConditionModel",)
    """Class names of the networks the family drives."""
    components: ClassVar[tuple[str, ...]] = ("vae", "scheduler", "text_encoder", "tokenizer")
    """Pipeline components the family needs besides the network."""
    multi_controlnet: ClassVar[str] = "MultiControlNetModel"
    """diffusers' class that runs several of the family's ControlNets as one."""
    controlnet_guess_mode: bool = True
    """Whether this family's ControlNets have diffusers' ``guess_mode`` (UNets; not FLUX, SD 3)."""
    controlnet_positive_only: bool = False
    """With classifier-free guidance, whether the ControlNet runs on the conditional rows only and its
    output serves both branches (FluxControlNetPipeline with ``true_cfg_scale``), rather than on both
    branches with their own prompts (the UNet and SD 3 pipelines)."""
    checkpoint_blocks: ClassVar[str | tuple[str, ...] | None] = None
    """A tensor-name prefix, or several, that mark the family's single-file transformer checkpoints
    (FLUX.1's ``double_blocks.``; :mod:`~multidiffusion.models.transformer_file`), None: none are read."""

    def __init__(self, pipe: Any, **options: Any):
        """``pipe``: the family's pipeline or a sibling sharing its components (its ControlNet, if a
        ControlNet pipeline, is kept for every task); ``options``: the family's :attr:`Options`
        (None or left out: the default), checked, then set as attributes."""
        self.controlnet = getattr(pipe, "controlnet", None)
        super().__init__(self.own_pipeline(pipe))
        unknown = set(options) - {f.name for f in option_fields(self.Options)}
        if unknown:
            takes = ", ".join(f.name for f in option_fields(self.Options)) or "none"
            raise ValueError(f"{self.label} models take no {', '.join(sorted(unknown))}; their options: {takes}")
        checked = self.Options(**options)
        for f in option_fields(self.Options):
            setattr(self, f.name, getattr(checked, f.name))
        if getattr(self, "clip_skip", None) is not None:
            check_clip_skip(self.clip_skip, self.pipe)

    @property
    def controlnets(self) -> list[torch.nn.Module]:
        """The ControlNets this model runs with (several for a diffusers ``MultiControlNetModel``)."""
        if self.controlnet is None:
            return []
        nets = getattr(self.controlnet, "nets", None)
        return list(nets) if nets is not None else [self.controlnet]

    @classmethod
    def own_pipeline(cls, pipe: Any) -> Any:
        """``pipe`` as the family's :attr:`pipeline_class` (the same components, no copies)."""
        import diffusers

        target = getattr(diffusers, cls.pipeline_class)
        return pipe if isinstance(pipe, target) else target.from_pipe(pipe)

    @classmethod
    def claims(cls, pipe: Any) -> bool:
        """Whether ``pipe``'s network is one this family drives (then :meth:`check_pipe` says
        whether the rest fits)."""
        net = getattr(pipe, cls.network, None)
        return net is not None and type(net).__name__ in cls.network_classes

    @classmethod
    def check_pipe(cls, pipe: Any) -> None:
        """ValueError in one line when a pipeline this family :meth:`claims` lacks one of its
        :attr:`components` or has a network it can't drive (:meth:`check_network`)."""
        for name in cls.components:
            if getattr(pipe, name, None) is None:
                raise ValueError(
                    f"pipe must have a {name!r} for this {cls.family.upper()} model; {type(pipe).__name__} has none"
                )
        cls.check_network(pipe)

    @classmethod
    def check_network(cls, pipe: Any) -> None:
        """UNets: text-to-image or inpainting inputs (a guidance embedding, LCM's, is taken:
        :mod:`~multidiffusion.models.guidance_embedding`)."""
        unet_config = pipe.unet.config
        latent = pipe.vae.config.latent_channels
        if unet_config.in_channels not in (latent, 2 * latent + 1):
            raise ValueError(
                f"the UNet takes {unet_config.in_channels} input channels but the VAE's latents have {latent}: "
                f"only text-to-image UNets ({latent} channels) and inpainting UNets ({2 * latent + 1}: latents, mask "
                "and masked image) are supported; depth and upscaling UNets need another image input, use the base "
                "model they were made from"
            )

    @classmethod
    def single_file_config(cls, shapes: dict[str, tuple[int, ...]]) -> str:
        """The repo id whose configuration and other components build a single-file transformer
        checkpoint with these tensors (names -> shapes) when no ``config`` is given."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the network runs, so where the engine builds its tensors: the network's device, or
        under diffusers' model or group offloading (its hooks on the network) the pipeline's execution
        device, the accelerator, while the modules rest on the CPU between calls."""
        net = self.unet
        hooked = getattr(net, "_hf_hook", None) is not None or getattr(net, "_diffusers_hook", None) is not None
        return self.pipe._execution_device if hooked else net.device

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)

    @property
    def latent_format(self) -> LatentFormat:
        """How this family's latents map to its VAE's (every encode and decode of the call goes
        through it): by default as the VAE's config says (:class:`~multidiffusion.vae.latents.ScaledLatents`)."""
        return ScaledLatents.of(self.vae)

    def parameters(self) -> dict[str, Any]:
        """The family's options as set (the attributes, checked again), unset ones left out."""
        return self.Options(**{f.name: getattr(self, f.name) for f in option_fields(self.Options)}).record()

    def adopt_controlnet(self, net: torch.nn.Module, name: str) -> torch.nn.Module:
        """``net`` ready to run with this model: ValueError in one line when it was made for another
        family or model size. UNet families: a ``ControlNetModel`` checked against the UNet."""
        from multidiffusion.models.controlnet import check_controlnet

        check_controlnet(net, self.unet, name)
        return net

    def control_input(self, net: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """What ControlNet ``net`` takes of a canvas-sized control image ``pixels`` (1, 3, H, W) in
        [0, 1], cropped per view, and the factor from latent view offsets to its grid: for a UNet's
        ControlNet the pixels themselves (factor: the VAE's)."""
        return pixels, self.vae_scale_factor

    def run_controlnet(
        self,
        net: torch.nn.Module,
        x: torch.Tensor,
        t: torch.Tensor,
        kwargs: dict[str, Any],
        control: dict[str, Any],
        guess_mode: bool,
    ) -> Any:
        """ControlNet ``net``'s output for model input rows ``x`` at ``t``, with the model's keyword
        arguments of those rows and its control inputs ``control`` (``controlnet_cond``: the rows'
        crops of :meth:`control_input`; ``conditioning_scale``; a Union ControlNet's modes): tensors,
        lists of tensors or None, one row per input row, summed over ControlNets by the ControlNet conditioning."""
        added = kwargs.get("added_cond_kwargs")
        extra = {"added_cond_kwargs": added} if added is not None else {}
        channels = net.config.in_channels  # an inpainting UNet's extra channels are not its
        return net(
            x[:, :channels],
            t,
            encoder_hidden_states=kwargs["encoder_hidden_states"],
            guess_mode=guess_mode,
            return_dict=False,
            **extra,
            **control,
        )

    def residual_kwargs(self, residuals: Any) -> dict[str, Any]:
        """The model's keyword arguments for :meth:`run_controlnet`'s (summed) output."""
        down, mid = residuals
        return {"down_block_additional_residuals": list(down), "mid_block_additional_residual": mid}

    def reference_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Reference-image editing (the ``edit`` task): (height, width) in pixels to which the family's
        edit pipeline brings a whole reference image of ``size`` pixels (for the optional whole-image
        reference and an encoder that sees the image). A family that edits overrides this and
        :meth:`reference_inputs`; by default editing is refused in one line."""
        raise ValueError(f"edit: {self.label or self.family} models take no reference images; use an editing model")

    def reference_inputs(self, references: list[torch.Tensor]) -> dict[str, Any]:
        """The model's keyword arguments for reference latents: ``references`` holds tensors (rows, C,
        h_i, w_i), one row per model input row (the view's crop of the reference image first, then
        the optional whole image); :meth:`predict` consumes what this returns (Qwen-Image-Edit
        appends their tokens after the image's; FLUX.2 would add its reference tokens and ids)."""
        raise ValueError(f"edit: {self.label or self.family} models take no reference images; use an editing model")

    def skip_layer_pass(self, step: int, steps: int) -> tuple[dict[str, Any], float] | None:
        """Skip-layer guidance at step ``step`` of ``steps`` (SD 3.5): the extra keyword arguments of a
        third pass of the conditional rows with some layers skipped, and its scale s_l, or None (the
        default: no such guidance). :mod:`~multidiffusion.conditionings.skip_layers` then adds
        s_l (ε_c − ε_skip) to the guided prediction."""
        return None
