"""The demo loader node: the shipped demo model as ComfyUI's own MODEL / CLIP / VAE objects.

In-process, against the library running the same weights through diffusers:

- CLIP Text Encode of a prompt equals the library's prompt embeddings (the SD adapter's ``encode``);
- one stock KSampler run (Euler, ComfyUI's "normal" sigmas, classifier-free guidance) equals our
  engine's ``sample`` over one full-canvas view (Eq. 5 with a single view is the model's own
  prediction) with the library's guided model, a diffusers Euler scheduler on the same sigmas and the
  same starting noise: the latents agree up to the two attention implementations' rounding;
- VAE Decode equals the diffusers VAE's decode of the same latents (ComfyUI's latents are the
  library's divided by the VAE's scale factor).

Run with the ComfyUI environment (devtools/comfyui_env.sh):
``/work/comfy-venv/bin/python -m pytest -q tests/comfyui/test_loaders.py``; skipped where ComfyUI
can't be imported.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import comfy_tiny as tiny

PROMPT = "a lighthouse on a cliff above the sea"
NEGATIVE = "blurry"
H, W = 16, 24  # latent canvas: the demo UNet's 16 x 16 native size, wider
STEPS, CFG, SEED = 4, 5.0, 7


@pytest.fixture(scope="module")
def comfy():
    return tiny.import_comfy()


@pytest.fixture(scope="module")
def loaded(comfy):
    loaders = tiny.node_module("loaders")
    return loaders.MultiDiffusionDemoModelLoader().load()


@pytest.fixture(scope="module")
def library():
    from multidiffusion import MultiDiffusion

    return MultiDiffusion.from_pretrained("demo", torch_dtype=torch.float32, device="cpu")


def _encode(clip, text: str) -> list:
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def test_node_declares_its_outputs(comfy):
    node = tiny.node_module("loaders").MultiDiffusionDemoModelLoader
    assert node.RETURN_TYPES == ("MODEL", "CLIP", "VAE")
    assert len(node.OUTPUT_TOOLTIPS) == 3 and all(node.OUTPUT_TOOLTIPS)
    assert node.INPUT_TYPES() == {"required": {}}


def test_the_model_knows_its_latent_factor(loaded):
    model, _, vae = loaded
    assert model.model.latent_format.spacial_downscale_ratio == vae.downscale_ratio == 4


def test_clip_text_encode_equals_the_library_prompt_embeddings(loaded, library):
    _, clip, _ = loaded
    ours = library.adapter.encode([[PROMPT]], [[NEGATIVE]], 1, True)
    for text, want in ((PROMPT, ours.positive), (NEGATIVE, ours.negative)):
        got = _encode(clip, text)[0][0]
        want = want["encoder_hidden_states"][0]
        assert got.shape == want.shape, (got.shape, want.shape)
        diff = (got - want).abs().max().item()
        assert diff <= 1e-5, (text, diff)


def test_ksampler_equals_the_engine_sampling_the_same_sigmas(comfy, loaded, library):
    import nodes  # ComfyUI's stock nodes (on sys.path after import_comfy)
    from diffusers import EulerDiscreteScheduler

    from multidiffusion.engine.fusion import FusionPlan, Job
    from multidiffusion.engine.sampler import GuidedModel, sample
    from multidiffusion.engine.views import grid_views

    model, clip, _ = loaded
    latent = torch.zeros(1, 4, H, W)
    (got,) = nodes.KSampler().sample(
        model, SEED, STEPS, CFG, "euler", "normal", _encode(clip, PROMPT), _encode(clip, NEGATIVE), {"samples": latent}
    )
    got = got["samples"]

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", STEPS)
    scheduler = EulerDiscreteScheduler.from_config(library.pipe.scheduler.config)
    scheduler.set_timesteps(sigmas=sigmas.tolist())
    # KSampler starts from its seeded noise times sqrt(1 + sigma_max^2) (full denoise from the
    # model's largest sigma), in the model's (scaled) latent space
    noise = comfy.sample.prepare_noise(latent, SEED)
    start = noise * math.sqrt(1 + sigmas[0].item() ** 2)
    cond = library.adapter.encode([[PROMPT]], [[NEGATIVE]], 1, True)
    guided = GuidedModel(library.adapter, cond, [CFG], (H, W))
    plan = FusionPlan([Job(view, 0, None) for view in grid_views(H, W, (H, W), (H, W))], (H, W))
    assert len(plan.jobs) == 1
    with torch.no_grad():
        ours = sample(guided, scheduler, start, scheduler.timesteps, lambda i: plan, progress={"disable": True})
    scale = model.model.latent_format.scale_factor
    want = ours / scale  # ComfyUI hands back unscaled latents (process_latent_out)
    diff = (got - want).abs().max().item()
    print(f"KSampler vs engine: max|diff| {diff:.3g} (latents up to {want.abs().max().item():.3g})")
    assert torch.isfinite(got).all() and want.abs().max() > 0.1
    assert diff <= 1e-4, diff


def test_vae_decode_equals_the_diffusers_vae(loaded, library):
    _, _, vae = loaded
    assert vae.downscale_ratio == 4
    latent = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(3))
    got = vae.decode(latent)  # (B, H, W, 3) in [0, 1]
    assert got.shape == (1, 32, 48, 3)
    with torch.no_grad():
        image = library.pipe.vae.decode(latent, return_dict=False)[0]  # ComfyUI's latent is unscaled
    want = ((image + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    diff = (got - want).abs().max().item()
    assert diff <= 1e-4, diff


@pytest.fixture(scope="module")
def controlnet(comfy):
    return tiny.node_module("demo_controlnet").MultiDiffusionDemoControlNetLoader().load()[0]


def test_controlnet_residuals_equal_the_diffusers_controlnet(controlnet, library):
    """ComfyUI's ControlNet network with the demo weights gives diffusers' residuals for the same
    latents, timestep, prompt embedding and control image (in [0, 1], as both hand it over)."""
    from diffusers import ControlNetModel

    from multidiffusion.models.controlnet import DEMO_CONTROLNET_DIR

    ours = ControlNetModel.from_pretrained(DEMO_CONTROLNET_DIR, torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(5)
    x, hint = torch.randn(1, 4, H, W, generator=g), torch.rand(1, 3, 4 * H, 4 * W, generator=g)
    context = library.adapter.encode([[PROMPT]], [[NEGATIVE]], 1, False).positive["encoder_hidden_states"][0]
    t = torch.tensor([421.0])
    assert controlnet.compression_ratio == 4
    with torch.no_grad():
        got = controlnet.control_model(x=x, hint=hint, timesteps=t, context=context)
        down, mid = ours(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
    assert len(got["output"]) == len(down)
    diffs = [(a - b).abs().max().item() for a, b in zip([*got["output"], *got["middle"]], [*down, mid])]
    assert max(diffs) <= 1e-4, diffs
    assert max(d.abs().max().item() for d in down) > 1e-3  # the residuals are not all zero


def test_apply_controlnet_changes_the_ksampler_result(comfy, loaded, controlnet):
    """The stock Apply ControlNet node drives the demo ControlNet (control image at 4x the latent)."""
    import nodes

    model, clip, _ = loaded
    latent = {"samples": torch.zeros(1, 4, H, W)}
    positive, negative = _encode(clip, PROMPT), _encode(clip, NEGATIVE)
    image = torch.zeros(1, 4 * H, 4 * W, 3)
    image[:, : 2 * H] = torch.tensor([0.4, 0.6, 0.9])  # sky over sea, in any palette: a real control
    apply = nodes.ControlNetApplyAdvanced()
    controlled = apply.apply_controlnet(positive, negative, controlnet, image, 1.0, 0.0, 1.0)
    plain = nodes.KSampler().sample(model, SEED, 2, CFG, "euler", "normal", positive, negative, latent)[0]
    steered = nodes.KSampler().sample(model, SEED, 2, CFG, "euler", "normal", *controlled, latent)[0]
    diff = (plain["samples"] - steered["samples"]).abs().max().item()
    assert torch.isfinite(steered["samples"]).all() and diff > 1e-3, diff
