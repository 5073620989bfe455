"""Region prompts from ComfyUI MASKs, fused by Eq. 5 with the masks as weights, with bootstrapping.

Each region is a (CONDITIONING, MASK, strength) triple; the sampler's positive conditioning is the
background. Our library rasterises them exactly as for ``md.regions`` (:func:`~multidiffusion.regions.
layout.region_layout`): on the latent grid, W_k = strength_k · M_k and the background's
W_bg = clamp(1 − Σ_k M_k, 0, 1). The MODEL patch runs ComfyUI's model under each prompt where its
weight is non-zero and returns Eq. 5 of the predictions,

    Φ(x) = Σ_(i,k) F_i⁻¹(W_k ⊙ Φ(F_i(x) | y_k)) / Σ_(i,k) F_i⁻¹(W_k),

for the positive rows of the batch (under y_k the region's conditioning) and for the negative rows
(under the negative, with the same weights). ComfyUI then guides, u + s (c − u): Eq. 5 is linear
and both branches share the weights, so this equals Eq. 5 of the guided predictions, the library's.

Bootstrapping (paper Sec. 4.2), for the first ``bootstrap_steps`` steps: a region's job sees its own
region over a random constant colour, x_k = M_k ⊙ x + (1 − M_k) ⊙ noise(enc(colour), σ), noised by
ComfyUI's own ``noise_scaling`` for the model (σ-space for SD, flow interpolation for FLUX / SD 3),
with the sampler's initial noise (the library's choice; :mod:`.sampler_noise`). The colours and their
picks (as the library draws them, :func:`~multidiffusion.regions.bootstrap.draw_backgrounds`) come
from the node's seed; the colours are encoded by the VAE input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from multidiffusion.engine.fusion import FusionPlan, Job, fused_prediction
from multidiffusion.engine.views import View, crop, grid_views
from multidiffusion.regions.bootstrap import MAX_COLOURS, BootstrapBackgrounds
from multidiffusion.regions.layout import Region, RegionLayout, region_layout

from .crops import SPATIAL_KEYS, call_model, cat_rows, latent_factor, select_rows, step_index, view_inputs
from .region_control import merged_control, prepare_controls
from .region_hooks import RegionHooks, check_hooks
from .sampler_noise import SamplerNoise
from .window_control import DeferredControl, WindowControls, runs_per_window

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "RegionsWrapper"]

NEGATIVE = 1
"""ComfyUI's ``cond_or_uncond`` value of the negative rows."""


class RegionsWrapper:
    """ComfyUI's ``model_function_wrapper`` fusing region prompts by Eq. 5 (see the module).

    ``regions``: (CONDITIONING, mask (H, W) in [0, 1], strength) each; ``window`` / ``stride`` in
    latent pixels (None: the whole canvas is one view); ``vae``: ComfyUI's VAE, for bootstrapping.
    """

    def __init__(
        self,
        regions: Sequence[tuple[list, torch.Tensor, float]],
        factor: int = 8,
        window: tuple[int, int] | None = None,
        stride: tuple[int, int] | None = None,
        bootstrap_steps: int = 0,
        vae: Any = None,
        seed: int = 0,
        view_batch_size: int | None = None,
        previous: Callable | None = None,
    ):
        if not regions:
            raise ValueError("regions: give at least one region")
        if bootstrap_steps < 0:
            raise ValueError(f"bootstrap_steps must be ≥ 0, got {bootstrap_steps}")
        if bootstrap_steps and vae is None:
            raise ValueError("bootstrap_steps > 0 needs the vae input (it encodes the plain-colour backgrounds)")
        self.regions = list(regions)
        self.controls = [cond[0][1].get("control") for cond, _, _ in self.regions]
        hooks = [cond[0][1].get("hooks") for cond, _, _ in self.regions]
        for k, group in enumerate(hooks):
            if group is not None:
                check_hooks(group, f"regions[{k}]")
        self.region_hooks = RegionHooks(hooks)
        if window is not None and any(c is not None and not runs_per_window(c) for c in self.controls):
            raise ValueError(
                "a region's own T2I-Adapter (a control that is not a ControlNet) needs the whole canvas as one "
                "view (tile_width and tile_height 0)"
            )
        self.factor, self.window, self.stride = factor, window, stride
        self.bootstrap_steps, self.vae, self.seed = bootstrap_steps, vae, seed
        self.view_batch_size, self.previous = view_batch_size, previous
        self._cache: dict[Any, Any] = {}
        self.window_controls, self.sampler_noise = WindowControls(self), SamplerNoise()

    # -- what depends on the canvas ---------------------------------------------------------------
    def layout(self, canvas: tuple[int, int]) -> tuple[RegionLayout, list[View]]:
        """The library's region layout (background slot 0, region k slot k + 1) and the views."""
        key = ("layout", canvas)
        if key not in self._cache:
            f = self.factor
            regions = [
                Region(f"region {k + 1}", mask=mask.float().cpu().clamp(0, 1), weight=float(strength))
                for k, (_, mask, strength) in enumerate(self.regions)
            ]
            layout = region_layout(regions, canvas[0] * f, canvas[1] * f, f, background="the sampler's positive")
            if self.window is None:
                views = [View(0, 0, *canvas)]
            else:
                window = (min(self.window[0], canvas[0]), min(self.window[1], canvas[1]))
                views = grid_views(*canvas, window, self.stride or (max(1, window[0] // 8), max(1, window[1] // 8)))
            self._cache[key] = (layout, views)
        return self._cache[key]

    def plans(self, canvas: tuple[int, int], device: torch.device) -> tuple[FusionPlan, FusionPlan]:
        """(every (view, prompt) job with a non-zero weight; one job per view weighted by Σ_k W_k, which
        is the same Eq. 5 where all prompts see the same input under the same conditioning: the
        negative rows outside bootstrapping)."""
        key = ("plans", canvas, str(device))
        if key not in self._cache:
            layout, views = self.layout(canvas)
            total = layout.weights.sum(0)
            shared = [Job(v, 0, crop(total, v)) for v in views if bool(crop(total, v).any())]
            self._cache[key] = (FusionPlan(layout.jobs(views), canvas, device), FusionPlan(shared, canvas, device))
        return self._cache[key]

    def conditioning(self, model: Any, x: torch.Tensor, canvas: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """Each region's model inputs (``c_crossattn``, SDXL's ``y``, FLUX's ``guidance``, ...), for
        ``x``'s rows, made by the model's own ``extra_conds`` as ComfyUI makes the sampler's."""
        key = ("conds", canvas, x.shape[0], str(x.device))
        if key not in self._cache:
            f = self.factor
            out = []
            for k, (cond, _, _) in enumerate(self.regions):
                embedding, extras = cond[0][0], dict(cond[0][1])
                params = {**extras, "cross_attn": embedding, "device": x.device, "noise": x}
                params.update(width=canvas[1] * f, height=canvas[0] * f, prompt_type="positive")
                inputs = {}
                for name, value in model.extra_conds(**params).items():
                    value = value.process_cond(batch_size=x.shape[0], area=None)
                    if isinstance(getattr(value, "cond", None), torch.Tensor) and name not in SPATIAL_KEYS:
                        inputs[name] = value.cond.to(x.device)
                if not inputs:
                    raise ValueError(f"regions[{k}]: its conditioning gives the model no inputs")
                out.append(inputs)
            self._cache[key] = out
        return self._cache[key]

    def noise(self, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """The bootstrapping noise of a canvas batch (B, C, H, W): the sampler's initial noise, as the
        library's (:mod:`.sampler_noise`); from the seed outside a sampler run."""
        sampled = self.sampler_noise.get(shape, device)
        if sampled is not None:
            return sampled
        key = ("noise", tuple(shape), str(device))
        if key not in self._cache:
            g = torch.Generator().manual_seed(self.seed)
            self._cache[key] = torch.randn(tuple(shape), generator=g).to(device)
        return self._cache[key]

    def backgrounds(self, model: Any, views: list[View], images: int, device: torch.device) -> BootstrapBackgrounds:
        """The colour pool (one colour per bootstrapping step, at most MAX_COLOURS) and each (step, view,
        region, image)'s pick, drawn as the library draws them; colours encoded by the VAE at the
        views' size and put in the model's latent space."""
        key = ("backgrounds", tuple(views), images, str(device))
        if key not in self._cache:
            g = torch.Generator().manual_seed(self.seed + 1)
            count = max(1, min(self.bootstrap_steps, MAX_COLOURS))
            colours = torch.rand((count, 3), generator=g)
            picks = torch.randint(count, (self.bootstrap_steps, len(views), len(self.regions), images), generator=g)
            h, w = views[0].size
            f = self.factor
            latents = []
            for colour in colours:
                image = colour.view(1, 1, 1, 3).expand(1, h * f, w * f, 3).contiguous()
                latents.append(model.process_latent_in(self.vae.encode(image)).to(device))
            self._cache[key] = BootstrapBackgrounds(colours, torch.cat(latents), picks.to(device))
        return self._cache[key]

    # -- one model call -----------------------------------------------------------------------------
    def __call__(self, apply_model: Callable[..., torch.Tensor], args: dict[str, Any]) -> torch.Tensor:
        x, t, c = args["input"], args["timestep"], args["c"]
        chunks = list(args["cond_or_uncond"])
        n, per = x.shape[0], x.shape[0] // len(chunks)
        step = step_index(c.get("transformer_options", {}), t)
        bootstrap = step < self.bootstrap_steps
        if any(control is not None for control in self.controls):
            prepare_controls(self.controls, apply_model.__self__)
        out: torch.Tensor | None = None
        for negative in (False, True):  # the positive rows, then the negative ones
            picked = [i for i, kind in enumerate(chunks) if (kind == NEGATIVE) == negative]
            if not picked:
                continue
            index = torch.cat([torch.arange(i * per, (i + 1) * per) for i in picked]).to(x.device)
            sub = {"input": x.index_select(0, index), "timestep": t.index_select(0, index)}
            sub["c"] = {k: v if k == "transformer_options" else select_rows(v, index, n) for k, v in c.items()}
            options = c.get("transformer_options")
            if isinstance(options, dict):  # the chunks of these rows, for patches that split the batch
                options = {**options, "cond_or_uncond": [chunks[i] for i in picked]}
                if isinstance(options.get("uuids"), list) and len(options["uuids"]) == len(chunks):
                    options["uuids"] = [options["uuids"][i] for i in picked]
                sub["c"]["transformer_options"] = options
            result = self._fused(apply_model, sub, [chunks[i] for i in picked], per, step, bootstrap, negative)
            if out is None:
                out = torch.empty((n, *result.shape[1:]), dtype=result.dtype, device=result.device)
            out[index] = result.to(out.dtype)
        return out

    def _fused(
        self,
        apply_model: Callable,
        args: dict[str, Any],
        chunks: list[int],
        per: int,
        step: int,
        bootstrap: bool,
        negative: bool,
    ) -> torch.Tensor:
        x, t, c = args["input"], args["timestep"], args["c"]
        canvas, rows = (x.shape[-2], x.shape[-1]), x.shape[0]
        layout, views = self.layout(canvas)
        jobs_plan, shared_plan = self.plans(canvas, x.device)
        model = getattr(apply_model, "__self__", None)
        conds = [] if negative else self.conditioning(model, x[:per], canvas)
        compose = self._composer(model, layout, views, x, t, per, step) if bootstrap else None

        def denoise(crops: torch.Tensor, sigma: torch.Tensor, jobs: list[Job]) -> torch.Tensor:
            views = [job.view for job in jobs]
            inputs = view_inputs(c, views, rows, canvas)
            if isinstance(inputs.get("control"), DeferredControl):  # the sampler's ControlNet, per window
                sigmas = sigma.repeat(len(jobs))
                control = inputs["control"].control
                inputs["control"] = self.window_controls.residuals(
                    control, crops, sigmas, inputs, views, canvas, len(chunks)
                )
            for name in {name for inputs_k in conds for name in inputs_k}:
                if isinstance(inputs.get(name), torch.Tensor):
                    inputs[name] = self._replace(inputs[name], name, jobs, rows, per, conds)
            if conds and any(control is not None for control in self.controls):
                sigmas = sigma.repeat(len(jobs))
                inputs["control"] = merged_control(
                    inputs.get("control"), self.controls, crops, sigmas, jobs, inputs, rows, len(chunks),
                    self.window_controls, canvas,
                )  # fmt: skip
            if negative:  # a region's LoRA hooks its own prompt's rows only
                return call(crops, sigma.repeat(len(jobs)), inputs, chunks * len(jobs))
            return self.region_hooks.call(call, model, crops, sigma.repeat(len(jobs)), inputs, jobs, chunks)

        def call(crops: torch.Tensor, sigmas: torch.Tensor, inputs: dict, kinds: list[int]) -> torch.Tensor:
            return call_model(apply_model, self.previous, crops, sigmas, inputs, kinds)

        plan = shared_plan if negative and not bootstrap else jobs_plan
        return fused_prediction(denoise, x, t, plan, self.view_batch_size, compose)

    @staticmethod
    def _replace(
        value: torch.Tensor, name: str, jobs: list[Job], rows: int, per: int, conds: list[dict[str, torch.Tensor]]
    ) -> torch.Tensor:
        """``value`` (view-major rows of the positive chunks) with each region job's rows replaced by
        that region's input ``name``; the background's (slot 0) keep the sampler's."""
        pieces = []
        for j, job in enumerate(jobs):
            own = conds[job.prompt - 1].get(name) if job.prompt > 0 else None
            for start in range(j * rows, (j + 1) * rows, per):
                pieces.append(own.to(value.dtype) if own is not None else value[start : start + per])
        return cat_rows(pieces)

    def _composer(
        self, model: Any, layout: RegionLayout, views: list[View], x: torch.Tensor, t: torch.Tensor, per: int, step: int
    ) -> Callable[[torch.Tensor, Sequence[Job]], torch.Tensor]:
        """Bootstrapping's model input: each region job's crop over its noised plain-colour background."""
        backgrounds = self.backgrounds(model, views, per, x.device)
        noise = self.noise((per, *x.shape[1:]), x.device)
        sigma = t[:1]
        index = {view: i for i, view in enumerate(views)}
        masks = layout.masks.to(device=x.device, dtype=x.dtype)
        rows = x.shape[0]

        def compose(crops: torch.Tensor, jobs: Sequence[Job]) -> torch.Tensor:
            out = crops.clone()
            for j, job in enumerate(jobs):
                region = layout.region_index(job.prompt)
                if region is None:
                    continue
                bg = backgrounds.get(step, index[job.view], region, job.view.size).to(crops.dtype)
                noised = model.model_sampling.noise_scaling(sigma, crop(noise, job.view), bg)
                m = crop(masks[job.prompt], job.view)
                block = out[j * rows : (j + 1) * rows].view(-1, per, *crops.shape[1:])
                block.copy_(m * block + (1 - m) * noised)
            return out

        return compose


class MultiDiffusionRegion:
    """Node: one region (its conditioning and mask), added to a list of regions (chainable)."""

    CATEGORY = "conditioning/multidiffusion"
    RETURN_TYPES = ("MD_REGIONS",)
    OUTPUT_TOOLTIPS = ("The regions so far, this one last: feed another region node or MultiDiffusion Regions.",)
    FUNCTION = "add"
    DESCRIPTION = "A region prompt for MultiDiffusion Regions: where the mask is white, this conditioning applies."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "conditioning": ("CONDITIONING", {"tooltip": "The region's prompt (CLIP Text Encode)."}),
                "mask": ("MASK", {"tooltip": "Where the prompt applies (1 = fully), at the image's size or aspect "
                         "ratio; soft edges blend with the neighbours."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1000.0, "step": 0.05, "tooltip":
                             "The region's weight in Eq. 5 against its neighbours and the background (1: the "
                             "paper's)."}),
            },
            "optional": {
                "regions": ("MD_REGIONS", {"tooltip": "Regions to add this one to (another region node)."}),
            },
        }  # fmt: skip

    def add(self, conditioning: list, mask: torch.Tensor, strength: float, regions: list | None = None) -> tuple[list]:
        if not conditioning:
            raise ValueError("conditioning is empty")
        if len(conditioning) > 1:
            raise ValueError(
                f"conditioning holds {len(conditioning)} prompts; a region takes one (join them with Conditioning "
                "(Concat), or give each its own region)"
            )
        if "hooks" in conditioning[0][1]:
            check_hooks(conditioning[0][1]["hooks"], "conditioning")
        m = mask if mask.dim() == 2 else mask.reshape(-1, *mask.shape[-2:])[0]
        return ([*(regions or []), (conditioning, m, float(strength))],)


class MultiDiffusionRegions:
    """Node: patches a MODEL so the sampler's canvas follows the region prompts (Eq. 5, bootstrapping)."""

    CATEGORY = "sampling/multidiffusion"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model, following the region prompts; the sampler's positive prompt is the background.",)
    FUNCTION = "patch"
    DESCRIPTION = (
        "MultiDiffusion region control (Bar-Tal et al., Sec. 4.2): each region's prompt is denoised where its mask "
        "is, the sampler's positive prompt everywhere the regions leave, fused per pixel by Eq. 5; bootstrapping "
        "makes objects fill tight masks."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to patch (any model ComfyUI loads)."}),
                "regions": ("MD_REGIONS", {"tooltip": "The regions (MultiDiffusion Region nodes, chained)."}),
                "bootstrap_steps": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip": "Steps during which "
                                    "each region is denoised over a random plain colour so objects fill their masks "
                                    "(the paper: 20 of 50). Needs the vae input."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Seed of the "
                         "bootstrapping colours (their noise is the sampler's initial noise)."}),
                "tile_width": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8, "tooltip": "Window width "
                               "in pixels for canvases larger than the model's native size; 0: the whole canvas "
                               "is one view."}),
                "tile_height": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8, "tooltip": "Window height "
                                "in pixels (as tile_width)."}),
                "stride": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8, "tooltip": "Distance between "
                           "windows in pixels; 0: 1/8 of the window (the paper's)."}),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "The VAE that encodes bootstrapping's plain-colour backgrounds."}),
            },
        }  # fmt: skip

    def patch(
        self,
        model: Any,
        regions: list,
        bootstrap_steps: int,
        seed: int,
        tile_width: int,
        tile_height: int,
        stride: int,
        vae: Any = None,
    ) -> tuple[Any]:
        f = latent_factor(model)
        window = (max(1, tile_height // f), max(1, tile_width // f)) if tile_width and tile_height else None
        strides = (max(1, stride // f),) * 2 if stride else None
        patched = model.clone()
        previous = patched.model_options.get("model_function_wrapper")
        wrapper = RegionsWrapper(regions, f, window, strides, bootstrap_steps, vae, seed % 2**63, None, previous)
        patched.set_model_unet_function_wrapper(wrapper)
        wrapper.window_controls.install(patched)
        wrapper.region_hooks.install(patched)
        wrapper.sampler_noise.install(patched)
        return (patched,)


NODE_CLASS_MAPPINGS = {"MultiDiffusionRegion": MultiDiffusionRegion, "MultiDiffusionRegions": MultiDiffusionRegions}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MultiDiffusionRegion": "MultiDiffusion Region (mask + prompt)",
    "MultiDiffusionRegions": "MultiDiffusion Regions (patch model)",
}
