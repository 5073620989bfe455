"""The MultiDiffusion MODEL patch inside ComfyUI, on ComfyUI's own model objects (tiny weights).

- One view covering the canvas: ComfyUI's KSampler gives the same latents with and without the patch.
- Two or more views: the patched model's call equals our engine's Eq. 5 (library ``fused_prediction``
  over the library's own views, the denoiser being ComfyUI's ``apply_model`` on each crop, same sigma),
  and a one-step KSampler run (Euler to sigma 0 returns the guided denoised estimate) equals Eq. 5 of
  the classifier-free-guided predictions: guidance after fusion is guidance before it.

Run with the ComfyUI environment: ``/work/comfy-venv/bin/python -m pytest -q tests/comfyui/test_patch.py``;
skipped where ComfyUI can't be imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import comfy_tiny as tiny

from multidiffusion.engine.fusion import FusionPlan, Job, fused_prediction
from multidiffusion.engine.views import View, grid_views
from multidiffusion.engine.windows import Windows, panorama_plans

H, W = 16, 24  # latent canvas (128 x 192 pixels)
CFG = 4.0


@pytest.fixture(scope="module")
def comfy():
    return tiny.import_comfy()


@pytest.fixture(scope="module")
def model(comfy):
    return tiny.tiny_model(comfy)


@pytest.fixture(scope="module")
def tiled(comfy):
    return tiny.node_module("tiled")


@pytest.fixture(scope="module")
def prompts():
    return tiny.conditioning(1), tiny.conditioning(2, tokens=4)  # batched together (token counts 8 and 4)


def _noise(seed: int = 3) -> torch.Tensor:
    return torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(seed))


def _ksampler(comfy, model, prompts, steps: int, sampler: str = "euler") -> torch.Tensor:
    positive, negative = prompts
    latent = torch.zeros(1, 4, H, W)
    return comfy.sample.sample(
        model, _noise(), steps, CFG, sampler, "normal", positive, negative, latent, disable_pbar=True
    )


def _patched(tiled, model, *args):
    return tiled.MultiDiffusionTiled().patch(model, *args)[0]


def _spy(patched) -> list[tuple]:
    """Record every call of the patch's wrapper: (apply_model, args, output)."""
    wrapper = patched.model_options["model_function_wrapper"]
    calls: list[tuple] = []

    def spy(apply_model, args):
        out = wrapper(apply_model, args)
        calls.append((apply_model, args, out))
        return out

    patched.set_model_unet_function_wrapper(spy)
    return calls


def _plain_denoiser(apply_model, embeddings: list[torch.Tensor]):
    """The library side's denoiser, written here without the pack's helpers: ComfyUI's apply_model on
    view-major crops, each batch chunk with its own cross-attention context."""

    def denoise(crops: torch.Tensor, sigma: torch.Tensor, jobs: list[Job]) -> torch.Tensor:
        k = len(jobs)
        tokens = max(e.shape[1] for e in embeddings)
        context = torch.cat([e.repeat(1, tokens // e.shape[1], 1) for e in embeddings])
        return apply_model(crops, sigma.repeat(k), c_crossattn=context.repeat(k, 1, 1))

    return denoise


def _guided_denoiser(apply_model, positive: torch.Tensor, negative: torch.Tensor):
    """Classifier-free guidance per crop, u + s (c − u), as the library's GuidedModel combines."""

    def denoise(crops: torch.Tensor, sigma: torch.Tensor, jobs: list[Job]) -> torch.Tensor:
        k = len(jobs)
        u = apply_model(crops, sigma.repeat(k), c_crossattn=negative.repeat(k, 1, 1))
        c = apply_model(crops, sigma.repeat(k), c_crossattn=positive.repeat(k, 1, 1))
        return u + CFG * (c - u)

    return denoise


def test_one_view_leaves_the_ksampler_unchanged(comfy, model, tiled, prompts):
    plain = _ksampler(comfy, model, prompts, 3)
    patched = _patched(tiled, model, 512, 512, 0, "grid", "default", False, 1, 0)  # window > canvas: one view
    calls = _spy(patched)
    got = _ksampler(comfy, patched, prompts, 3)
    diff = (got - plain).abs().max().item()
    print(f"one view, KSampler euler 3 steps: max|diff| = {diff:.3g} (|latents| max {plain.abs().max():.3g})")
    assert calls, "the patch was not called"
    assert torch.isfinite(plain).all() and plain.abs().max() > 0
    assert diff <= 1e-5


def test_grid_step_equals_eq5_of_the_same_denoiser(comfy, model, tiled, prompts):
    # 128 x 128 px windows (16 latents), stride 64 px (8): views at columns 0 and 8 of 24
    patched = _patched(tiled, model, 128, 128, 64, "grid", "uniform", False, 1, 0)
    calls = _spy(patched)
    result = _ksampler(comfy, patched, prompts, 1)  # one Euler step to sigma 0
    apply_model, args, out = calls[0]
    x, sigma, chunks = args["input"], args["timestep"], args["cond_or_uncond"]
    views = grid_views(H, W, (16, 16), (8, 8))
    assert len(views) == 2
    plan = FusionPlan([Job(v, 0) for v in views], (H, W))
    embeddings = [(prompts[0] if k == 0 else prompts[1])[0][0] for k in chunks]
    want = fused_prediction(_plain_denoiser(apply_model, embeddings), x, sigma, plan)
    diff = (out - want).abs().max().item()
    term = (want - x).abs().max().item()  # the model's own share of x0 = x - σ ε
    print(
        f"grid, 2 views: patched call vs Eq. 5: max|diff| = {diff:.3g} "
        f"(|x0| max {want.abs().max():.3g}, |σ ε| {term:.3g})"
    )
    assert diff <= 1e-5
    # the whole KSampler step: ComfyUI's guidance after fusion = Eq. 5 of the guided predictions
    x0 = x[: x.shape[0] // len(chunks)]
    guided = fused_prediction(_guided_denoiser(apply_model, prompts[0][0][0], prompts[1][0][0]), x0, sigma[:1], plan)
    sigma0 = sigma[:1].view(1, 1, 1, 1)
    step = model.model.process_latent_out(x0 + (x0 - guided) / sigma0 * (0 - sigma0))  # Euler's arithmetic
    diff = (result - step).abs().max().item()
    scale = step.abs().max().item()
    print(f"grid, 2 views: KSampler step vs Eq. 5 of guided: max|diff| = {diff:.3g} (|latents| max {scale:.3g})")
    # float32 rounding of the sampler's own arithmetic (x + (x - x0) / σ · (0 - σ), then / 0.18215)
    assert diff <= 1e-5 * max(1.0, scale)
    # and Eq. 5 is not the model on the whole canvas: the check can fail
    whole = _plain_denoiser(apply_model, embeddings)(x, sigma, [Job(View(0, 0, H, W), 0)])
    assert (whole - want).abs().max() > 1e-3


def test_shifted_circular_gaussian_step_equals_eq5(comfy, model, tiled, prompts):
    patched = _patched(tiled, model, 128, 128, 0, "shifted", "gaussian", True, 2, 7)
    calls = _spy(patched)
    _ksampler(comfy, patched, prompts, 2)
    assert len(calls) == 2  # cond and uncond in one call per step
    windows = Windows((H, W), (16, 16), (14, 14), "shifted", circular=True, seed=7)
    plans = panorama_plans(windows, "gaussian")
    for apply_model, args, out in calls:
        x, sigma, chunks = args["input"], args["timestep"], args["cond_or_uncond"]
        step = args["c"]["transformer_options"]["sample_sigmas"].tolist().index(sigma[0].item())
        plan = plans(step)
        assert len(plan.jobs) >= 2
        assert any(job.view.left + job.view.width > W for job in plan.jobs)  # a view wraps around
        embeddings = [(prompts[0] if k == 0 else prompts[1])[0][0] for k in chunks]
        want = fused_prediction(_plain_denoiser(apply_model, embeddings), x, sigma, plan)
        diff = (out - want).abs().max().item()
        print(f"shifted circular gaussian, step {step}, views {[v.view.left for v in plan.jobs]}: max|diff| {diff:.3g}")
        assert diff <= 1e-5


def test_view_inputs_cut_spatial_conditioning_and_repeat_the_rest(comfy):
    crops = tiny.node_module("crops")
    n, canvas = 2, (8, 12)
    views = [View(0, 0, 8, 8), View(0, 8, 8, 8)]  # the second wraps around the right edge
    c = {
        "c_crossattn": torch.randn(n, 3, 4),
        "c_concat": torch.randn(n, 5, 8, 12),
        "control": {"input": [torch.randn(n, 2, 4, 6), None], "output": [torch.randn(n, 2, 8, 12)]},
        "transformer_options": {"cond_or_uncond": [0, 1], "uuids": ["a", "b"]},
    }
    out = crops.view_inputs(c, views, n, canvas)
    assert torch.equal(out["c_crossattn"], torch.cat([c["c_crossattn"]] * 2))
    wrapped = torch.cat([c["c_concat"][..., 8:], c["c_concat"][..., :4]], dim=-1)
    assert torch.equal(out["c_concat"], torch.cat([c["c_concat"][..., :8], wrapped]))
    half = c["control"]["input"][0]  # at half the latent resolution: views cut at half their size
    assert torch.equal(
        out["control"]["input"][0], torch.cat([half[..., :4], torch.cat([half[..., 4:], half[..., :2]], -1)])
    )
    assert out["control"]["input"][1] is None
    assert out["transformer_options"]["cond_or_uncond"] == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="control"):
        crops.view_inputs({"control": {"input": [torch.randn(n, 2, 3, 5)]}}, views, n, canvas)


def test_the_patch_chains_a_wrapper_installed_before_it(comfy, tiled):
    seen = []

    def previous(apply_model, args):
        seen.append(args["input"].shape)
        return apply_model(args["input"], args["timestep"], **args["c"]) * 2

    wrapper = tiled.TiledWrapper((4, 4), (4, 4), previous=previous)
    x = torch.randn(2, 4, 4, 8)
    out = wrapper(lambda x, t, **c: x + 1, {"input": x, "timestep": torch.ones(2), "c": {}, "cond_or_uncond": [0, 1]})
    assert seen == [(4, 4, 4, 4)]  # both views in one call (view_batch_size None: all)
    assert torch.equal(out, 2 * (x + 1))


def test_controlnet_residuals_follow_the_views(comfy, tiled):
    """The stock Apply ControlNet on the demo model and ControlNet (run per window by the patch:
    tests/comfyui/test_window_control.py): at one view the patched KSampler equals the stock one with
    the ControlNet; on three views it runs and the control steers it. Residuals ComfyUI computed on the
    canvas (``controlnet="canvas"``) are cut per view at each residual's resolution, window starts
    snapped to the coarsest residual's grid."""
    import nodes

    model, clip, _ = tiny.node_module("loaders").MultiDiffusionDemoModelLoader().load()
    controlnet = tiny.node_module("demo_controlnet").MultiDiffusionDemoControlNetLoader().load()[0]
    h, w = 16, 32  # demo latents (factor 4): 64 x 128 px
    latent = {"samples": torch.zeros(1, 4, h, w)}
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a lighthouse above the sea"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    image = torch.zeros(1, 4 * h, 4 * w, 3)
    image[:, : 2 * h] = torch.tensor([0.4, 0.6, 0.9])
    controlled = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, controlnet, image, 1.0, 0.0, 1.0)

    def run(m, conds):
        return nodes.KSampler().sample(m, 7, 2, CFG, "euler", "normal", *conds, latent)[0]["samples"]

    one_view = _patched(tiled, model, 512, 512, 0, "grid", "default", False, 1, 0)
    diff = (run(one_view, controlled) - run(model, controlled)).abs().max().item()
    print(f"ControlNet, one view: patched vs stock KSampler max|diff| = {diff:.3g}")
    assert diff <= 1e-5
    views = _patched(tiled, model, 64, 64, 32, "grid", "uniform", False, 0, 0)  # views at 0, 8, 16 latents
    steered, free = run(views, controlled), run(views, (positive, negative))
    assert torch.isfinite(steered).all()
    assert (steered - free).abs().max() > 1e-3
    # shifted windows at random offsets snap to the coarsest residual's grid, so the cuts stay exact
    assert (
        tiny.node_module("crops").control_multiple({"control": {"output": [torch.zeros(1, 4, h // 4, w // 4)]}}, (h, w))
        == 4
    )
    shifted = _patched(tiled, model, 64, 64, 0, "shifted", "default", False, 0, 3)
    assert torch.isfinite(run(shifted, controlled)).all()


def _tiny_flux(comfy):
    """ComfyUI's FLUX.1-shaped transformer (``model_base.Flux``), width 64, one block of each kind."""
    config = {
        "image_model": "flux", "guidance_embed": False, "in_channels": 16, "out_channels": 16, "vec_in_dim": 32,
        "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
        "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True,
        "txt_ids_dims": [],
    }  # fmt: skip
    model = comfy.supported_models.Flux(config).get_model({})
    tiny._init(model.diffusion_model, 1)
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model.eval(), load_device=device, offload_device=device)


@torch.no_grad()
def test_dit_windows_at_their_canvas_positions(comfy, tiled):
    """A FLUX-shaped DiT takes the crops (patch size 2: window starts are multiples of it); with
    positions="canvas" each window's rotary positions are its place on the canvas (ComfyUI's
    rope_options), and the patched call equals Eq. 5 of the model called with those shifts."""
    flux = _tiny_flux(comfy)
    patched = _patched(tiled, flux, 64, 64, 64, "grid", "uniform", False, 0, 0)  # factor 8: windows of 8 latents
    assert patched.model_options["model_function_wrapper"].multiple == 2
    g = torch.Generator().manual_seed(8)
    x, context, pooled = (
        torch.randn(2, 16, 8, 16, generator=g),
        torch.randn(2, 5, 32, generator=g),
        torch.randn(2, 32, generator=g),
    )
    sigma = torch.full((2,), 0.7)
    args = {"input": x, "timestep": sigma, "c": {"c_crossattn": context, "y": pooled}, "cond_or_uncond": [0, 1]}
    apply_model = flux.model.apply_model
    outs = {}
    for positions in ("view", "canvas"):
        wrapper = tiled.TiledWrapper((8, 8), (8, 8), view_batch_size=1, multiple=2, positions=positions)
        outs[positions] = wrapper(apply_model, args)

    def denoise(crops: torch.Tensor, t: torch.Tensor, jobs: list[Job]) -> torch.Tensor:
        assert len(jobs) == 1
        v = jobs[0].view
        rope = {"rope_options": {"shift_y": v.top / 2, "shift_x": v.left / 2}}
        return apply_model(crops, t, c_crossattn=context, y=pooled, transformer_options=rope)

    plan = FusionPlan([Job(v, 0) for v in grid_views(8, 16, (8, 8), (8, 8))], (8, 16))
    want = fused_prediction(denoise, x, sigma, plan, 1)
    diff = (outs["canvas"] - want).abs().max().item()
    print(f"FLUX-shaped DiT, positions=canvas, 2 views: max|diff| vs Eq. 5 = {diff:.3g}")
    assert diff <= 1e-5
    # the first window sits at the origin either way; the second's positions moved (attention to the text
    # tokens, at position 0, sees them: small on random weights, yet not rounding: the calls are otherwise equal)
    assert torch.equal(outs["view"][..., :8], outs["canvas"][..., :8])
    assert (outs["view"][..., 8:] - outs["canvas"][..., 8:]).abs().max() > 1e-6
