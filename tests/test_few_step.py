"""Issue 29, item 1: few-step models and schedules at one view equal their diffusers pipelines (max
|diff| <= 1e-4) on tiny random components: LCM models (a UNet with a guidance embedding,
``time_cond_proj_dim``) for SD 1.x and SDXL, TCD, Lightning's trailing Euler and Hyper-SD's trailing
DDIM, FLUX.1 [schnell] at its pipeline's 4 steps; every task runs with an LCM model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    TCDScheduler,
    UNet2DConditionModel,
)
from PIL import Image

from devtools.components import tiny_sd_pipeline, tiny_sdxl_pipeline
from multidiffusion import MultiDiffusion, Region

from .conftest import noise
from .family_checks import the_other_tasks_run

H = W = 16  # latent pixels: the tiny models' native window (128 px)
TOL = 1e-4


def _lcm_unet(like: Any, seed: int = 3) -> Any:
    """``like``'s architecture with a guidance embedding (``time_cond_proj_dim``), as LCM models have."""
    config = {k: v for k, v in like.config.items() if not k.startswith("_")}
    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config({**config, "time_cond_proj_dim": 16}).eval()


def _md(pipe: Any, **kwargs: Any) -> MultiDiffusion:
    md = MultiDiffusion(pipe, **kwargs)
    md.set_progress_bar_config(disable=True)
    return md


@pytest.fixture(scope="module")
def sd() -> Any:
    return tiny_sd_pipeline(sample_size=H)


@pytest.fixture(scope="module")
def lcm(sd: Any) -> Any:
    """An SD 1.x LCM model as its folder loads: LCM UNet, LCMScheduler."""
    components = {
        **sd.components,
        "unet": _lcm_unet(sd.unet),
        "scheduler": LCMScheduler.from_config(sd.scheduler.config),
    }
    components = {k: v for k, v in components.items() if k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    pipe = LatentConsistencyModelPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def md_lcm(lcm: Any) -> MultiDiffusion:
    return _md(StableDiffusionPipeline(**lcm.components))


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_lcm_one_view_equals_the_lcm_pipeline(lcm, md_lcm):
    """w goes in as the UNet's timestep_cond (w − 1 embedded), one evaluation per view and step, no
    unconditional branch; LCMScheduler's noise between steps drawn from the generator in diffusers' order."""
    x = noise((1, 4, H, W), seed=1)
    kwargs = dict(num_inference_steps=4, guidance_scale=8.0, output_type="latent")
    expected = lcm("a red ball", latents=x.clone(), generator=_generator(5), **kwargs).images
    got = md_lcm.panorama("a red ball", height=H * 8, width=W * 8, latents=x.clone(), generator=_generator(5), **kwargs)
    diff = (got.images - expected).abs().max().item()
    assert diff <= TOL, diff
    assert got.stats.evaluations == 4  # one row per step: no classifier-free guidance batch
    other_w = md_lcm.panorama(
        "a red ball",
        height=H * 8,
        width=W * 8,
        latents=x.clone(),
        generator=_generator(5),
        **{**kwargs, "guidance_scale": 2.0},
    )
    assert (other_w.images - got.images).abs().max() > 1e-3  # the embedding acts
    assert got.parameters["scheduler"] != "ddim"


def test_lcm_defaults_are_the_pipelines_example(md_lcm):
    """4 steps at w = 8 (LatentConsistencyModelPipeline's example), recorded in the result."""
    assert md_lcm.adapter.sampling_defaults == (4, 8.0)
    out = md_lcm.panorama("a lake", height=H * 8, width=W * 8, output_type="latent", generator=_generator(1))
    assert out.parameters["num_inference_steps"] == 4 and out.parameters["guidance_scale"] == 8.0
    assert out.stats.steps == 4


def test_lcm_model_folder_loads_with_its_own_scheduler(lcm, tmp_path):
    """The refusal of issue 25 lifted: an LCM folder loads, keeps LCMScheduler (not the paper's DDIM)."""
    lcm.save_pretrained(tmp_path / "lcm")
    md = MultiDiffusion.from_pretrained(tmp_path / "lcm", device="cpu")
    assert type(md.scheduler).__name__ == "LCMScheduler"


def test_sdxl_lcm_equals_the_sdxl_pipeline():
    """StableDiffusionXLPipeline with an LCM UNet runs the guidance embedding and no CFG batch."""
    base = tiny_sdxl_pipeline(sample_size=H)
    pipe = StableDiffusionXLPipeline(
        **{
            **base.components,
            "unet": _lcm_unet(base.unet),
            "scheduler": LCMScheduler.from_config(base.scheduler.config),
        }
    )
    pipe.set_progress_bar_config(disable=True)
    x = noise((1, 4, H, W), seed=2)
    kwargs = dict(num_inference_steps=4, guidance_scale=6.0, output_type="latent")
    expected = pipe("a lake", height=H * 8, width=W * 8, latents=x.clone(), generator=_generator(3), **kwargs).images
    md = _md(pipe)
    got = md.panorama("a lake", height=H * 8, width=W * 8, latents=x.clone(), generator=_generator(3), **kwargs)
    diff = (got.images - expected).abs().max().item()
    assert diff <= TOL, diff
    assert got.stats.evaluations == 4 and md.adapter.sampling_defaults == (4, 8.0)
    # the trailing Euler of SDXL-Lightning on the plain SDXL UNet (a LoRA is weights): 4 steps, no guidance
    lightning = StableDiffusionXLPipeline(
        **{
            **base.components,
            "scheduler": EulerDiscreteScheduler.from_config(base.scheduler.config, timestep_spacing="trailing"),
        }
    )
    lightning.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=4, guidance_scale=0.0, output_type="latent")
    expected = lightning("a lake", height=H * 8, width=W * 8, latents=x.clone(), **kwargs).images
    got = _md(base, scheduler="euler_trailing").panorama(
        "a lake", height=H * 8, width=W * 8, latents=x.clone(), **kwargs
    )
    diff = (got.images - expected).abs().max().item()
    assert diff <= TOL, diff
    assert lightning.scheduler.timesteps[0] == 999  # trailing: the first step at the last training timestep


@pytest.mark.parametrize(
    ("name", "scheduler", "call"),
    [
        ("tcd", lambda c: TCDScheduler.from_config(c), dict(guidance_scale=0.0, eta=0.3)),  # diffusers' TCD example
        (
            "ddim_trailing",
            lambda c: DDIMScheduler.from_config(c, timestep_spacing="trailing"),
            dict(guidance_scale=0.0),
        ),
        ("lcm", lambda c: LCMScheduler.from_config(c), dict(guidance_scale=1.0)),  # an LCM-LoRA set-up
    ],
)
def test_few_step_schedules_equal_the_sd_pipeline(sd, name, scheduler, call):
    """TCD (its gamma as the step's eta), Hyper-SD's trailing DDIM, LCM-LoRA: by name, equal to
    StableDiffusionPipeline given the same scheduler config."""
    pipe = StableDiffusionPipeline(**{**sd.components, "scheduler": scheduler(sd.scheduler.config)})
    pipe.set_progress_bar_config(disable=True)
    x = noise((1, 4, H, W), seed=4)
    kwargs = dict(num_inference_steps=4, output_type="latent", **call)
    expected = pipe("a boat", latents=x.clone(), generator=_generator(6), **kwargs).images
    got = _md(sd, scheduler=name).panorama(
        "a boat", height=H * 8, width=W * 8, latents=x.clone(), generator=_generator(6), **kwargs
    )
    diff = (got.images - expected).abs().max().item()
    assert diff <= TOL, (name, diff)
    assert got.parameters["scheduler"] == name


def test_turbo_one_step_equals_its_pipeline(sd, tmp_path):
    """SD-Turbo: 1 step of trailing Euler at guidance 0 (its folder's scheduler, kept by loading: the
    paper's DDIM with "leading" spacing would take its one step at t = 1); SDXL-Turbo: trailing Euler a."""
    turbo = StableDiffusionPipeline(
        **{
            **sd.components,
            "scheduler": EulerDiscreteScheduler.from_config(sd.scheduler.config, timestep_spacing="trailing"),
        }
    )
    turbo.set_progress_bar_config(disable=True)
    x = noise((1, 4, H, W), seed=12)
    kwargs = dict(num_inference_steps=1, guidance_scale=0.0, output_type="latent")
    expected = turbo("a cat", latents=x.clone(), **kwargs).images
    turbo.save_pretrained(tmp_path / "turbo")
    md = MultiDiffusion.from_pretrained(tmp_path / "turbo", device="cpu")
    assert type(md.scheduler).__name__ == "EulerDiscreteScheduler"
    got = md.panorama("a cat", height=H * 8, width=W * 8, latents=x.clone(), **kwargs)
    assert (got.images - expected).abs().max() <= TOL and got.stats.evaluations == 1
    by_name = _md(sd, scheduler="euler_trailing").panorama(
        "a cat", height=H * 8, width=W * 8, latents=x.clone(), **kwargs
    )
    assert (by_name.images - expected).abs().max() <= TOL
    xl = tiny_sdxl_pipeline(sample_size=H)
    xl_turbo = StableDiffusionXLPipeline(
        **{
            **xl.components,
            "scheduler": EulerAncestralDiscreteScheduler.from_config(xl.scheduler.config, timestep_spacing="trailing"),
        }
    )
    xl_turbo.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, guidance_scale=0.0, output_type="latent")
    expected = xl_turbo("a cat", height=H * 8, width=W * 8, latents=x.clone(), generator=_generator(4), **kwargs).images
    got = _md(xl, scheduler="euler_a_trailing").panorama(
        "a cat", height=H * 8, width=W * 8, latents=x.clone(), generator=_generator(4), **kwargs
    )
    assert (got.images - expected).abs().max() <= TOL


def test_flux_schnell_runs_as_its_pipeline():
    """FLUX.1 [schnell]: no guidance embedding, the pipeline example's 4 steps and 256 text tokens."""
    from devtools.dit_components import tiny_flux_pipeline
    from multidiffusion.models.flux import pack_latents, unpack_latents

    schnell = tiny_flux_pipeline(sample_size=H, guidance_embeds=False, seed=1)
    md = _md(schnell, max_sequence_length=256)
    assert md.adapter.sampling_defaults == (4, 0.0)
    x = torch.randn((1, 16, H, W), generator=_generator(2))
    expected = schnell(
        "a lake",
        height=H * 8,
        width=W * 8,
        num_inference_steps=4,
        guidance_scale=0.0,
        max_sequence_length=256,
        latents=pack_latents(x),
        output_type="latent",
    ).images
    got = md.panorama("a lake", height=H * 8, width=W * 8, latents=x, output_type="latent")  # the defaults
    diff = (got.images - unpack_latents(expected, H, W)).abs().max().item()
    assert diff <= TOL, diff
    assert got.parameters["num_inference_steps"] == 4 and got.stats.evaluations == 4


def test_every_task_runs_with_an_lcm_model(md_lcm):
    """Panorama, regions (each region its own w), img2img (equal at one view to StableDiffusionImg2ImgPipeline
    with the LCM UNet; LatentConsistencyModelImg2ImgPipeline instead spreads all its steps below the
    strength), and inpaint, outpaint, upscale, fast mode."""
    kwargs: dict[str, Any] = dict(num_inference_steps=2, output_type="latent", generator=_generator(0))
    pano = md_lcm.panorama("a lake", height=H * 8, width=2 * W * 8, window=W, stride=8, **kwargs)
    assert pano.images.shape == (1, 4, H, 2 * W) and pano.stats.evaluations == 2 * 3  # 3 views, one row each
    regions = [
        Region("a red ball", box=(0.0, 0.0, 0.5, 1.0), guidance_scale=4.0),
        Region("a dog", box=(0.5, 0.0, 1.0, 1.0)),
    ]
    out = md_lcm.regions(H * 8, 2 * W * 8, "a beach", regions, bootstrap_steps=1, **kwargs)
    assert torch.isfinite(out.images).all()
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (H * 8, W * 8, 3), dtype=np.uint8))
    i2i = dict(strength=0.5, num_inference_steps=4, guidance_scale=8.0, output_type="latent")
    out = md_lcm.img2img(image, "a lake", generator=_generator(3), **i2i)
    assert out.stats.steps == 2  # the last 4 * 0.5 of the 4-step schedule, as diffusers' img2img pipeline
    reference = StableDiffusionImg2ImgPipeline(**md_lcm.adapter.pipe.components)
    reference.set_progress_bar_config(disable=True)
    expected = reference("a lake", image=image, generator=_generator(3), **i2i).images
    assert (out.images - expected).abs().max() <= TOL
    the_other_tasks_run(md_lcm, H, W, 4)


def _per_view_loop(pipe: Any, scheduler: Any, x: torch.Tensor, steps: int, w: float, pre_average: bool) -> torch.Tensor:
    """A 3-view panorama (16 x 32 latents, windows 16, stride 8) of an LCM UNet at w, written out per view.

    ``pre_average``: StreamMultiDiffusion's latent pre-averaging, each view's denoised estimate fused by
    Eq. 5 (W_i = 1), then one re-noising of the canvas with one noise draw (LCMScheduler's own formula);
    else the paper's loop, a scheduler step per view (its own noise draw) and the stepped views averaged."""
    from diffusers.utils.torch_utils import randn_tensor

    from multidiffusion.engine.views import crop, grid_views, paste_add

    views = grid_views(H, 2 * W, (H, W), (8, 8))
    embeds = pipe.encode_prompt("a lake", "cpu", 1, False)[0]
    cond = pipe.get_guidance_scale_embedding(torch.tensor([w - 1.0]), embedding_dim=16)
    scheduler.set_timesteps(steps)
    generator, per_view = _generator(9), _generator(10)
    for i, t in enumerate(scheduler.timesteps):
        value, count = torch.zeros_like(x), torch.zeros_like(x[:, :1])
        for view in views:
            eps = pipe.unet(crop(x, view), t, encoder_hidden_states=embeds, timestep_cond=cond).sample
            scheduler._step_index = i  # the same step for every view
            out = scheduler.step(eps, t, crop(x, view), generator=per_view, return_dict=False)
            paste_add(value, view, out[1] if pre_average else out[0])  # denoised, or the view's x_{t-1}
            paste_add(count, view, torch.ones_like(count[..., : view.height, : view.width]))
        x = value / count
        if pre_average and i < steps - 1:
            alpha_prev = scheduler.alphas_cumprod[scheduler.timesteps[i + 1]]
            noise = randn_tensor(x.shape, generator=generator, dtype=x.dtype)
            x = alpha_prev.sqrt() * x + (1 - alpha_prev).sqrt() * noise
    return x


@torch.no_grad()
def test_the_fused_step_is_latent_pre_averaging(lcm, md_lcm):
    """Issue 29 item 2's first fix is what this engine computes already. Eq. 5 is a per-pixel convex
    combination and every view sees the canvas's x_t at a pixel, so fusing each view's denoised
    estimate (affine in (x_t, ε_i) with coefficients shared by the views: LCM's c_skip x_t + c_out x̂_0)
    equals the denoised estimate of the fused ε; the canvas is then re-noised once, one noise draw.
    The paper's loop (a step per view, each drawing its own noise, stepped views averaged) differs for
    LCM (averaged independent noises shrink), and equals the fused step for DDIM η = 0 (no noise)."""
    x = noise((1, 4, H, 2 * W), seed=11)
    kwargs = dict(height=H * 8, width=2 * W * 8, window=W, stride=8, output_type="latent", latents=x.clone())
    ours = md_lcm.panorama("a lake", num_inference_steps=4, guidance_scale=8.0, generator=_generator(9), **kwargs)
    pre_averaged = _per_view_loop(lcm, LCMScheduler.from_config(lcm.scheduler.config), x, 4, 8.0, True)
    per_view = _per_view_loop(lcm, LCMScheduler.from_config(lcm.scheduler.config), x, 4, 8.0, False)
    assert (ours.images - pre_averaged).abs().max() <= TOL
    assert (ours.images - per_view).abs().max() > 1e-2
    ddim = md_lcm.panorama("a lake", num_inference_steps=4, guidance_scale=8.0, scheduler="ddim", **kwargs)
    paper = _per_view_loop(lcm, DDIMScheduler.from_config(lcm.scheduler.config), x, 4, 8.0, False)
    assert (ddim.images - paper).abs().max() <= TOL


def test_pre_averaging_fuses_each_views_own_denoised_estimate():
    """With soft weights and rewritten inputs (bootstrapping with a feathered mask), ``pre_average`` gives
    StreamMultiDiffusion's step written out: every job's denoised estimate from its own input, fused by
    Eq. 5, then LCM's re-noising of the canvas once; the plain fused step differs there."""
    from diffusers.utils.torch_utils import randn_tensor

    from multidiffusion.engine.fusion import FusionPlan, Job
    from multidiffusion.engine.sampler import sample
    from multidiffusion.engine.views import View

    h, w, steps = 8, 8, 4
    ramp = torch.linspace(0, 1, w).expand(h, w)
    plan = FusionPlan([Job(View(0, 0, h, w), 0, ramp), Job(View(0, 0, h, w), 1, 1 - ramp)], (h, w))
    bg = noise((1, 4, h, w), seed=13)

    def compose(crops, jobs):  # prompt 1's input: its soft region over a background
        return torch.cat(
            [c if j.prompt == 0 else j.weight * c + (1 - j.weight) * bg for c, j in zip(crops.split(1), jobs)]
        )

    def denoise(crops, t, jobs):  # a nonlinear model, another per prompt
        return torch.cat([torch.tanh(c * (1 + j.prompt)) for c, j in zip(crops.split(1), jobs)])

    x0 = noise((1, 4, h, w), seed=14)

    def ours(pre_average: bool) -> torch.Tensor:
        scheduler = LCMScheduler.from_config(DDIMScheduler().config)
        scheduler.set_timesteps(steps)
        return sample(
            denoise, scheduler, x0.clone(), scheduler.timesteps, lambda i: plan,
            composer_for_step=lambda i, t: compose, generator=_generator(15), progress={"disable": True},
            pre_average=pre_average,
        )  # fmt: skip

    scheduler = LCMScheduler.from_config(DDIMScheduler().config)
    scheduler.set_timesteps(steps)
    x, generator = x0.clone(), _generator(15)
    for i, t in enumerate(scheduler.timesteps):
        inputs = compose(torch.cat([x, x]), plan.jobs)
        fused = torch.zeros_like(x)
        for x_k, job in zip(inputs.split(1), plan.jobs):
            scheduler._step_index = i
            denoised = scheduler.step(denoise(x_k, t, [job]), t, x_k, return_dict=False)[1]
            fused += job.weight * denoised
        x = fused / plan.normalizer
        if i < steps - 1:
            alpha_prev = scheduler.alphas_cumprod[scheduler.timesteps[i + 1]]
            x = alpha_prev.sqrt() * x + (1 - alpha_prev).sqrt() * randn_tensor(x.shape, generator=generator)
    assert (ours(True) - x).abs().max() <= TOL
    assert (ours(False) - x).abs().max() > 1e-2


def test_pre_averaging_changes_only_soft_bootstrapped_regions(md_lcm):
    """At one view, on a panorama and for binary masks under bootstrapping the views' inputs are the
    canvas where their weights are not zero: the same result, bit for bit; feathered masks differ."""
    x = noise((1, 4, H, 2 * W), seed=16)
    box = (0.25, 0.0, 0.75, 0.5)

    def both(task: str, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        kwargs.update(num_inference_steps=3, output_type="latent")
        method = getattr(md_lcm, task)
        outs = [method(*args, generator=_generator(17), pre_average=p, **kwargs) for p in (False, True)]
        assert "pre_average" not in outs[0].parameters and outs[1].parameters["pre_average"] is True  # recorded
        return [out.images for out in outs]

    one_view = both("panorama", "a lake", height=H * 8, width=W * 8, latents=x[..., :W].clone())
    panorama = both("panorama", "a lake", height=H * 8, width=2 * W * 8, window=W, stride=8, latents=x.clone())
    binary = both("regions", H * 8, 2 * W * 8, "a beach", [Region("a ball", box=box)], bootstrap_steps=2, latents=x)
    for plain, pre in (one_view, panorama, binary):
        assert torch.equal(plain, pre)
    soft = [Region("a ball", box=box, feather=12)]
    plain, pre = both("regions", H * 8, 2 * W * 8, "a beach", soft, bootstrap_steps=2, latents=x)
    assert (plain - pre).abs().max() > 1e-3
    with pytest.raises(ValueError, match="pre_average must be True or False"):
        md_lcm.panorama("a lake", height=H * 8, width=W * 8, pre_average="yes")


@pytest.mark.parametrize(
    ("scheduler", "prediction_type"),
    [(DDIMScheduler, "epsilon"), (DDIMScheduler, "v_prediction"), (EulerDiscreteScheduler, "epsilon")],
)
def test_the_pre_averaging_rate_keeps_each_views_denoised_estimate(scheduler, prediction_type):
    """p + r(t) (x − x_k) applied to the canvas x gives the x̂_0 that p gives from the view's input x_k
    (the scheduler's own pred_original_sample; inputs in the scaled units the model sees)."""
    from multidiffusion.engine.noising import scale_input
    from multidiffusion.engine.pre_average import input_rate

    s = scheduler.from_config(DDIMScheduler().config, prediction_type=prediction_type)
    s.set_timesteps(10)
    t = s.timesteps[3]
    x = noise((1, 4, 8, 8), seed=18) * s.init_noise_sigma
    scaled = scale_input(s, x, t)
    unscale = scaled.flatten()[0] / x.flatten()[0]  # Euler: 1 / √(σ² + 1); DDIM: 1
    x_k, p = scaled + noise((1, 4, 8, 8), seed=19), noise((1, 4, 8, 8), seed=20)
    own = s.step(p, t, x_k / unscale).pred_original_sample
    if getattr(s, "step_index", None) is not None:  # Euler counted the first step: the same step again
        s._step_index = 3
    canvas = s.step(p + input_rate(s, t) * (scaled - x_k), t, x).pred_original_sample
    assert (own - canvas).abs().max() <= 1e-4


def test_the_estimate_counts_one_branch_for_an_lcm_model(md_lcm):
    """An LCM UNet embeds w: the estimate counts one row per window, as the run evaluates them."""
    from multidiffusion.estimate import estimate
    from multidiffusion.options import PanoramaOptions

    options = PanoramaOptions(
        prompt="a lake", height=H * 8, width=2 * W * 8, window=W, stride=8, num_inference_steps=2, guidance_scale=8.0
    )
    found = estimate(md_lcm, options)
    out = md_lcm.generate(PanoramaOptions(**{**options.settings(), "output_type": "latent"}))
    assert found.branches == 1 and found.evaluations == out.stats.jobs == out.stats.evaluations
