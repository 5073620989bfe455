"""The MultiDiffusion Regions patch inside ComfyUI, on ComfyUI's own tiny SD 1.x model.

The patched model's output equals the library's fused regions: Eq. 5 (``fused_prediction``) over the
jobs of the library's own ``region_layout`` for the same masks, each job's prediction being
ComfyUI's ``apply_model`` under its prompt's conditioning (the background: the sampler's positive),
guided per job as the library's GuidedModel does; with window tiling, and with bootstrapping (each
region over its noised plain-colour background for the first steps).

Run with the ComfyUI environment: ``/work/comfy-venv/bin/python -m pytest -q tests/comfyui/test_regions.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import comfy_tiny as tiny

from multidiffusion.engine.fusion import FusionPlan, Job, fused_prediction
from multidiffusion.engine.views import View, crop, grid_views
from multidiffusion.regions.layout import Region, region_layout

H, W, F = 16, 24, 8  # latent canvas, VAE factor: 128 x 192 pixels
CFG = 4.0


@pytest.fixture(scope="module")
def comfy():
    return tiny.import_comfy()


@pytest.fixture(scope="module")
def model(comfy):
    return tiny.tiny_model(comfy)


@pytest.fixture(scope="module")
def nodes(comfy):
    return tiny.node_module("regions")


@pytest.fixture(scope="module")
def scene():
    """Masks at pixel size (a hard box, a soft box of 0.7) and the prompts' conditionings: background,
    two regions (the second with 4 tokens: contexts of different lengths), negative."""
    m1 = torch.zeros(H * F, W * F)
    m1[16:112, 8:88] = 1
    m2 = torch.zeros(1, H * F, W * F)  # ComfyUI MASKs come batched
    m2[0, 40:128, 100:180] = 0.7
    conds = [tiny.conditioning(1), tiny.conditioning(3), tiny.conditioning(4, tokens=4), tiny.conditioning(2)]
    return (m1, m2), conds


def _regions(nodes, scene) -> list:
    (m1, m2), conds = scene
    regions = nodes.MultiDiffusionRegion().add(conds[1], m1, 1.0)[0]
    return nodes.MultiDiffusionRegion().add(conds[2], m2, 2.0, regions)[0]


def _library_layout(scene):
    (m1, m2), _ = scene
    regions = [Region("one", mask=m1), Region("two", mask=m2[0], weight=2.0)]
    return region_layout(regions, H * F, W * F, F, background="background")


def _branch(apply_model, embeddings: list[torch.Tensor]):
    """One guidance branch of the library side: each job's crop under its prompt slot's context."""

    def denoise(crops: torch.Tensor, sigma: torch.Tensor, jobs: list[Job]) -> torch.Tensor:
        per = crops.shape[0] // len(jobs)
        outs = [
            apply_model(crops[j * per : (j + 1) * per], sigma.expand(per), c_crossattn=embeddings[job.prompt])
            for j, job in enumerate(jobs)
        ]
        return torch.cat(outs)

    return denoise


def _guided(apply_model, positives: list[torch.Tensor], negative: torch.Tensor):
    cond, uncond = _branch(apply_model, positives), _branch(apply_model, [negative] * len(positives))

    def denoise(crops: torch.Tensor, sigma: torch.Tensor, jobs: list[Job]) -> torch.Tensor:
        u = uncond(crops, sigma, jobs)
        return u + CFG * (cond(crops, sigma, jobs) - u)

    return denoise


def _call(wrapper, model, x: torch.Tensor, sigma: float, conds, sigmas: list[float] | None = None) -> torch.Tensor:
    """One batched model call as ComfyUI's sampler makes it: positive (the background) and negative rows."""
    c = {
        "c_crossattn": torch.cat([conds[0][0][0], conds[3][0][0]]),
        "transformer_options": {} if sigmas is None else {"sample_sigmas": torch.tensor(sigmas)},
    }
    t = torch.full((2,), sigma)
    return wrapper(
        model.model.apply_model, {"input": torch.cat([x, x]), "timestep": t, "c": c, "cond_or_uncond": [0, 1]}
    )


def test_regions_equal_the_librarys_fused_regions_in_a_ksampler_step(comfy, model, nodes, scene):
    _, conds = scene
    patched = nodes.MultiDiffusionRegions().patch(model, _regions(nodes, scene), 0, 0, 0, 0, 0)[0]
    wrapper = patched.model_options["model_function_wrapper"]
    calls = []

    def spy(apply_model, args):
        out = wrapper(apply_model, args)
        calls.append((apply_model, args, out))
        return out

    patched.set_model_unet_function_wrapper(spy)
    noise = torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(3))
    result = comfy.sample.sample(
        patched, noise, 1, CFG, "euler", "normal", conds[0], conds[3], torch.zeros(1, 4, H, W), disable_pbar=True
    )
    apply_model, args, out = calls[0]
    assert sorted(args["cond_or_uncond"]) == [0, 1]  # one call, both branches (ComfyUI puts them in any order)
    pos = args["cond_or_uncond"].index(0)
    neg = 1 - pos
    x, sigma = args["input"][:1], args["timestep"][:1]
    layout = _library_layout(scene)
    plan = FusionPlan(layout.jobs([View(0, 0, H, W)]), (H, W))
    assert [job.prompt for job in plan.jobs] == [0, 1, 2]
    positives = [conds[k][0][0] for k in range(3)]
    # the patched call, branch by branch: Eq. 5 of the positive rows; the negative rows' Eq. 5 is u(x)
    want = fused_prediction(_branch(apply_model, positives), x, sigma, plan)
    diff = (out[pos : pos + 1] - want).abs().max().item()
    term = (want - x).abs().max().item()  # the model's own share of x0 = x - σ ε
    print(
        f"regions, positive rows vs library Eq. 5: max|diff| = {diff:.3g} "
        f"(|x0| max {want.abs().max():.3g}, |σ ε| {term:.3g})"
    )
    assert diff <= 1e-5
    unguided = apply_model(x, sigma, c_crossattn=conds[3][0][0])
    assert (out[neg : neg + 1] - unguided).abs().max() <= 1e-5
    # the KSampler's step: ComfyUI's guidance after the fusion = the library's fused guided predictions
    guided = fused_prediction(_guided(apply_model, positives, conds[3][0][0]), x, sigma, plan)
    s = sigma.view(1, 1, 1, 1)
    step = model.model.process_latent_out(x + (x - guided) / s * (0 - s))  # Euler's arithmetic to sigma 0
    diff, scale = (result - step).abs().max().item(), step.abs().max().item()
    print(f"regions, KSampler step vs library's fused guided regions: max|diff| = {diff:.3g} (|latents| {scale:.3g})")
    assert diff <= 1e-5 * max(1.0, scale)
    # the regions matter: the background alone differs
    alone = apply_model(x, sigma, c_crossattn=conds[0][0][0])
    assert (alone - want).abs().max() > 1e-3


def test_windowed_regions_equal_the_librarys(model, nodes, scene):
    _, conds = scene
    wrapper = nodes.RegionsWrapper(_regions(nodes, scene), F, (16, 16), (8, 8), view_batch_size=2)
    x = torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(4)) * 3
    out = _call(wrapper, model, x, 3.0, conds)
    views = grid_views(H, W, (16, 16), (8, 8))
    layout = _library_layout(scene)
    plan = FusionPlan(layout.jobs(views), (H, W))
    apply_model, sigma = model.model.apply_model, torch.tensor([3.0])
    positives = [conds[k][0][0] for k in range(3)]
    for rows, embeddings in ((slice(0, 1), positives), (slice(1, 2), [conds[3][0][0]] * 3)):
        want = fused_prediction(_branch(apply_model, embeddings), x, sigma, plan)
        diff = (out[rows] - want).abs().max().item()
        print(f"regions in 2 windows ({len(plan.jobs)} jobs), rows {rows}: max|diff| = {diff:.3g}")
        assert diff <= 1e-5


def test_bootstrapping_equals_the_papers_composition(comfy, model, nodes, scene):
    from test_vae import vaes  # the tiny VAE in ComfyUI's VAE object

    _, conds = scene
    vae = vaes.__wrapped__(comfy)[1]
    wrapper = nodes.RegionsWrapper(_regions(nodes, scene), F, None, None, bootstrap_steps=1, vae=vae, seed=9)
    x = torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(5)) * 5
    sigmas = [5.0, 2.0, 0.0]
    out = _call(wrapper, model, x, 5.0, conds, sigmas)  # step 0: bootstrapping
    later = _call(wrapper, model, x, 2.0, conds, sigmas)  # step 1: not any more
    view = View(0, 0, H, W)
    layout = _library_layout(scene)
    plan = FusionPlan(layout.jobs([view]), (H, W))
    backgrounds = wrapper.backgrounds(model.model, [view], 1, x.device)
    noise = wrapper.noise((1, 4, H, W), x.device)
    assert backgrounds.latents.shape == (1, 4, H, W) and backgrounds.picks.shape == (1, 1, 2, 1)
    sigma = torch.tensor([5.0])

    def compose(crops: torch.Tensor, jobs: list[Job]) -> torch.Tensor:
        """x_k = M_k ⊙ x + (1 − M_k) ⊙ (enc(colour) + σ ε) for region jobs (SD's σ-space noising)."""
        out = crops.clone()
        for j, job in enumerate(jobs):
            if job.prompt == 0:
                continue
            bg = backgrounds.latents[backgrounds.picks[0, 0, job.prompt - 1]]
            m = crop(layout.masks[job.prompt], job.view)
            out[j : j + 1] = m * crops[j : j + 1] + (1 - m) * (bg + 5.0 * noise)
        return out

    apply_model = model.model.apply_model
    positives = [conds[k][0][0] for k in range(3)]
    for rows, embeddings in ((slice(0, 1), positives), (slice(1, 2), [conds[3][0][0]] * 3)):
        want = fused_prediction(_branch(apply_model, embeddings), x, sigma, plan, compose=compose)
        diff = (out[rows] - want).abs().max().item()
        print(f"bootstrapping, rows {rows}: max|diff| = {diff:.3g}")
        assert diff <= 1e-5
    plain = _call(nodes.RegionsWrapper(_regions(nodes, scene), F), model, x, 5.0, conds)
    assert (out - plain).abs().max() > 1e-3  # bootstrapping changed the prediction
    assert torch.isfinite(later).all()


def test_bad_inputs_are_refused(nodes, scene):
    with pytest.raises(ValueError, match="regions"):
        nodes.RegionsWrapper([])
    with pytest.raises(ValueError, match="vae"):
        nodes.RegionsWrapper(_regions(nodes, scene), bootstrap_steps=3)
    (m1, _), conds = scene
    with pytest.raises(ValueError, match="one"):
        nodes.MultiDiffusionRegion().add(conds[1] + conds[2], m1, 1.0)
    with pytest.raises(ValueError, match="hook group"):  # a region's LoRA: tests/comfyui/test_region_lora.py
        nodes.MultiDiffusionRegion().add([[conds[1][0][0], {"hooks": object()}]], m1, 1.0)
    with_control = nodes.MultiDiffusionRegion().add([[conds[1][0][0], {"control": object()}]], m1, 1.0)[0]
    with pytest.raises(ValueError, match="whole canvas"):  # not a ControlNet: prepared for the crop's size
        nodes.RegionsWrapper(with_control, F, (16, 16))


def test_a_regions_own_controlnet(comfy, nodes):
    """A region's conditioning through the stock Apply ControlNet (demo model and ControlNet): a region
    covering the whole canvas gives the stock KSampler's result with that conditioning as the positive
    (its ControlNet on the positive rows only); a half-canvas region's ControlNet steers the result."""
    import nodes as comfy_nodes

    model, clip, _ = tiny.node_module("loaders").MultiDiffusionDemoModelLoader().load()
    controlnet = tiny.node_module("demo_controlnet").MultiDiffusionDemoControlNetLoader().load()[0]
    h, w = 16, 32  # demo latents (factor 4): 64 x 128 px
    latent = {"samples": torch.zeros(1, 4, h, w)}

    def encode(text: str) -> list:
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    background, region, negative = encode("a desert"), encode("the sea"), encode("blurry")
    image = torch.zeros(1, 4 * h, 4 * w, 3)
    image[:, : 2 * h] = torch.tensor([0.4, 0.6, 0.9])
    apply = comfy_nodes.ControlNetApplyAdvanced()
    controlled = apply.apply_controlnet(region, region, controlnet, image, 1.0, 0.0, 1.0)[0]

    def run(m, positive):
        return comfy_nodes.KSampler().sample(m, 7, 2, CFG, "euler", "normal", positive, negative, latent)[0]["samples"]

    whole = nodes.MultiDiffusionRegion().add(controlled, torch.ones(4 * h, 4 * w), 1.0)[0]
    patched = nodes.MultiDiffusionRegions().patch(model, whole, 0, 0, 0, 0, 0)[0]
    diff = (run(patched, background) - run(model, controlled)).abs().max().item()
    print(f"a region's own ControlNet, region = whole canvas: vs stock KSampler max|diff| = {diff:.3g}")
    assert diff <= 1e-5
    half = torch.zeros(4 * h, 4 * w)
    half[:, : 2 * w] = 1
    steered = run(
        nodes.MultiDiffusionRegions().patch(
            model, nodes.MultiDiffusionRegion().add(controlled, half, 1.0)[0], 0, 0, 0, 0, 0
        )[0],
        background,
    )
    free = run(
        nodes.MultiDiffusionRegions().patch(
            model, nodes.MultiDiffusionRegion().add(region, half, 1.0)[0], 0, 0, 0, 0, 0
        )[0],
        background,
    )
    assert torch.isfinite(steered).all() and (steered - free).abs().max() > 1e-3


def test_bootstrapping_noise_is_the_samplers_initial_noise(comfy, model, nodes, scene):
    """In a sampler run, bootstrapping noises the backgrounds with the sampler's own initial noise (the
    library's choice), not one drawn from the node's seed; outside a run, the seed's."""
    from test_vae import vaes

    _, conds = scene
    vae = vaes.__wrapped__(comfy)[1]
    seen: list[torch.Tensor] = []
    holder: list = []

    def record(apply_model, args):
        seen.append(holder[0].noise((1, 4, H, W), args["input"].device).clone())
        return apply_model(args["input"], args["timestep"], **args["c"])

    recorded = model.clone()
    recorded.set_model_unet_function_wrapper(record)
    patched = nodes.MultiDiffusionRegions().patch(recorded, _regions(nodes, scene), 1, 9, 0, 0, 0, vae)[0]
    holder.append(patched.model_options["model_function_wrapper"])
    latent = torch.zeros(1, 4, H, W)
    noise = comfy.sample.prepare_noise(latent, 42)
    comfy.sample.sample(patched, noise, 2, CFG, "euler", "normal", conds[0], conds[3], latent, disable_pbar=True)
    assert seen and all(torch.equal(s, noise) for s in seen)
    outside = holder[0].noise((1, 4, H, W), torch.device("cpu"))
    assert not torch.equal(outside, noise)  # the seed's, after the run
