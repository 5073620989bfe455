"""ControlNets run per window by the tiled and region patches, on ComfyUI's demo model and ControlNet.

- At one view the patched KSampler with the stock Apply ControlNet equals the stock KSampler.
- On a canvas of two windows every ControlNet call of the patched KSampler runs on one window's
  latents (never on the canvas), and its residuals equal ComfyUI's own ControlNet on that window
  alone: the same ControlNet applied to the window's crop of the hint image, called on the window's
  latents under the same conditioning.
- A region's own ControlNet works in windows, each region job's residuals those of its window's crop.
- A patch wrapped by another ``model_function_wrapper`` keeps ComfyUI's canvas residuals, cut per view.

Run with the ComfyUI environment: ``/work/comfy-venv/bin/python -m pytest -q tests/comfyui/test_window_control.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import comfy_tiny as tiny

H, W = 16, 32  # demo latents (factor 4): 64 x 128 px; windows of 64 px (16 latents)
CFG = 4.0


@pytest.fixture(scope="module")
def comfy():
    return tiny.import_comfy()


@pytest.fixture(scope="module")
def demo(comfy):
    """(model, clip, ControlNet, hint image varying along the width, positive, negative)."""
    model, clip, _ = tiny.node_module("loaders").MultiDiffusionDemoModelLoader().load()
    controlnet = tiny.node_module("demo_controlnet").MultiDiffusionDemoControlNetLoader().load()[0]
    g = torch.Generator().manual_seed(11)
    image = torch.rand(1, 4 * H, 4 * W, 3, generator=g)
    image[:, :, : 2 * W] *= torch.linspace(0, 1, 2 * W).view(1, 1, -1, 1)

    def encode(text: str) -> list:
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    return model, controlnet, image, encode("a lighthouse above the sea"), encode("blurry"), encode


@pytest.fixture
def calls(comfy, monkeypatch):
    """Every ``ControlNet.get_control`` call: (x, sigma, context, hint it used, residuals), cloned."""
    import comfy.controlnet

    original = comfy.controlnet.ControlNet.get_control
    seen: list[tuple] = []

    def spy(self, x, t, cond, batched_number, options):
        out = original(self, x, t, cond, batched_number, options)
        if out is not None:
            residuals = {k: [None if r is None else r.clone() for r in v] for k, v in out.items()}
            seen.append((x.clone(), t.clone(), cond["c_crossattn"].clone(), self.cond_hint.clone(), residuals))
        return out

    monkeypatch.setattr(comfy.controlnet.ControlNet, "get_control", spy)
    return seen


def _ksampler(model, positive, negative, steps: int = 2):
    import nodes

    latent = {"samples": torch.zeros(1, 4, H, W)}
    return nodes.KSampler().sample(model, 7, steps, CFG, "euler", "normal", positive, negative, latent)[0]["samples"]


def _controlled(controlnet, image, positive, negative):
    import nodes

    return nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, controlnet, image, 1.0, 0.0, 1.0)


def _tiled(model, width: int, stride: int, batch: int):
    return (
        tiny.node_module("tiled")
        .MultiDiffusionTiled()
        .patch(model, width, 64, stride, "grid", "uniform", False, batch, 0)[0]
    )


def _alone(model, controlnet, image, left: int, x, t, context) -> dict:
    """ComfyUI's ControlNet on one window alone: applied to the window's crop of the image (columns
    ``left`` .. ``left`` + 16 latents), called on the window's latents."""
    crop = image[:, :, 4 * left : 4 * (left + H)].movedim(-1, 1)
    alone = controlnet.copy().set_cond_hint(crop, 1.0, (0.0, 1.0))
    sampling = model.model.model_sampling
    alone.pre_run(model.model, lambda a: sampling.percent_to_sigma(a))
    try:
        return alone.get_control(x, t, {"c_crossattn": context}, 2, {})
    finally:
        alone.cleanup()


def _max_diff(a: dict, b: dict) -> float:
    worst = 0.0
    for key in a:
        for u, v in zip(a[key], b[key], strict=True):
            assert (u is None) == (v is None)
            if u is not None:
                worst = max(worst, (u - v).abs().max().item())
    return worst


def test_one_view_equals_the_stock_ksampler(demo, calls):
    model, controlnet, image, positive, negative, _ = demo
    controlled = _controlled(controlnet, image, positive, negative)
    patched = _tiled(model, 512, 0, 1)  # a window larger than the canvas: one view
    got = _ksampler(patched, *controlled)
    assert calls and all(x.shape[-1] == W for x, *_ in calls)
    want = _ksampler(model, *controlled)
    diff = (got - want).abs().max().item()
    print(f"ControlNet per window, one view: patched vs stock KSampler max|diff| = {diff:.3g}")
    assert diff <= 1e-5


@pytest.mark.parametrize("batch", [1, 0])
def test_each_windows_residuals_are_the_controlnet_on_its_crop(demo, calls, batch):
    model, controlnet, image, positive, negative, _ = demo
    controlled = _controlled(controlnet, image, positive, negative)
    steered = _ksampler(_tiled(model, 64, 64, batch), *controlled)  # windows at columns 0 and 16
    assert len(calls) == (4 if batch == 1 else 2)  # 2 steps, one call per window (batch 1) or per step
    worst = 0.0
    for x, t, context, hint, residuals in list(calls):  # (the references' calls are recorded too)
        assert x.shape[-2:] == (H, H)  # the ControlNet never ran on the canvas
        windows = x.shape[0] // 2
        for j, left in enumerate((0, 16)[:windows] if windows == 2 else [None]):
            rows = slice(2 * j, 2 * j + 2)
            if left is None:  # one window per call: which one, from the hint it was given
                firsts = [image[:, :, 4 * c : 4 * (c + H)].movedim(-1, 1) for c in (0, 16)]
                left = (0, 16)[[bool(torch.equal(hint[:1], f)) for f in firsts].index(True)]
            want = _alone(model, controlnet, image, left, x[rows], t[rows], context[rows])
            got = {k: [None if r is None else r[rows] for r in v] for k, v in residuals.items()}
            worst = max(worst, _max_diff(got, want))
    print(f"ControlNet per window, 2 windows (view_batch_size {batch}): max|diff| vs the window alone = {worst:.3g}")
    assert worst <= 1e-5
    free = _ksampler(_tiled(model, 64, 64, batch), positive, negative)
    assert torch.isfinite(steered).all() and (steered - free).abs().max() > 1e-3


def test_a_regions_own_controlnet_in_windows(demo, calls):
    model, controlnet, image, positive, negative, encode = demo
    regions = tiny.node_module("regions")
    sea = encode("the sea")
    controlled = _controlled(controlnet, image, sea, sea)[0]
    half = torch.zeros(4 * H, 4 * W)
    half[:, : 3 * W] = 1  # 24 of the 32 latent columns: a region job in each window
    patch = regions.MultiDiffusionRegions().patch
    windowed = patch(model, regions.MultiDiffusionRegion().add(controlled, half, 1.0)[0], 0, 0, 64, 64, 64)[0]
    steered = _ksampler(windowed, positive, negative)
    assert calls
    worst, lefts = 0.0, set()
    for x, t, context, hint, residuals in list(calls):
        assert x.shape[-2:] == (H, H)  # one region job (one window) per call, its positive rows
        firsts = [image[:, :, 4 * c : 4 * (c + H)].movedim(-1, 1) for c in (0, 16)]
        left = (0, 16)[[bool(torch.equal(hint[:1], f)) for f in firsts].index(True)]
        lefts.add(left)
        crop = image[:, :, 4 * left : 4 * (left + H)].movedim(-1, 1)
        alone = controlnet.copy().set_cond_hint(crop, 1.0, (0.0, 1.0))
        alone.pre_run(model.model, lambda a: model.model.model_sampling.percent_to_sigma(a))
        worst = max(worst, _max_diff(residuals, alone.get_control(x, t, {"c_crossattn": context}, 1, {})))
        alone.cleanup()
    print(f"a region's own ControlNet in 2 windows: max|diff| vs the window alone = {worst:.3g}")
    assert lefts == {0, 16} and worst <= 1e-5
    free = patch(model, regions.MultiDiffusionRegion().add(sea, half, 1.0)[0], 0, 0, 64, 64, 64)[0]
    assert torch.isfinite(steered).all() and (steered - _ksampler(free, positive, negative)).abs().max() > 1e-3


@pytest.mark.parametrize("how", ["wrapped", "controlnet=canvas"])
def test_canvas_residuals_when_wrapped_or_asked(demo, calls, how):
    """Another wrapper around the patch would see the stand-in: the patch then leaves ComfyUI's canvas
    residuals alone and cuts them per view, as the node's ``controlnet="canvas"`` asks."""
    model, controlnet, image, positive, negative, _ = demo
    if how == "wrapped":
        patched = _tiled(model, 64, 64, 0)
        inner = patched.model_options["model_function_wrapper"]
        patched.set_model_unet_function_wrapper(lambda apply_model, args: inner(apply_model, args))
    else:
        tiled = tiny.node_module("tiled").MultiDiffusionTiled()
        patched = tiled.patch(model, 64, 64, 64, "grid", "uniform", False, 0, 0, controlnet="canvas")[0]
    out = _ksampler(patched, *_controlled(controlnet, image, positive, negative))
    assert torch.isfinite(out).all()
    assert calls and all(x.shape[-1] == W for x, *_ in calls)  # on the canvas


def test_each_windows_residuals_are_the_librarys_per_view_controlnet(demo, calls):
    """The library's per-view ControlNet (:mod:`multidiffusion.conditionings.controlnet_run`: the
    diffusers ControlNet on F_i(x_t) with ``control_crop`` of the control image) on the same weights
    gives each window's residuals (the model's input scaling and timestep of the sigma as ComfyUI's)."""
    from diffusers import ControlNetModel

    from multidiffusion.conditionings.controlnet_run import control_crop
    from multidiffusion.engine.views import View
    from multidiffusion.models.controlnet import DEMO_CONTROLNET_DIR

    model, controlnet, image, positive, negative, _ = demo
    library = ControlNetModel.from_pretrained(DEMO_CONTROLNET_DIR, torch_dtype=torch.float32).eval()
    _ksampler(_tiled(model, 64, 64, 1), *_controlled(controlnet, image, positive, negative), steps=1)
    sampling, full = model.model.model_sampling, image.movedim(-1, 1)
    worst, lefts = 0.0, set()
    for x, t, context, hint, residuals in list(calls):
        left = next(c for c in (0, 16) if torch.equal(hint[:1], control_crop(full, View(0, c, H, H), 4)))
        lefts.add(left)
        with torch.no_grad():
            down, mid = library(
                sampling.calculate_input(t, x), sampling.timestep(t), encoder_hidden_states=context,
                controlnet_cond=control_crop(full, View(0, left, H, H), 4).expand(x.shape[0], -1, -1, -1),
                return_dict=False,
            )  # fmt: skip
        pairs = zip([*residuals["output"], *residuals["middle"]], [*down, mid], strict=True)
        worst = max(worst, *((a - b).abs().max().item() for a, b in pairs))
    print(f"ControlNet per window vs the library's per-view ControlNet (diffusers): max|diff| = {worst:.3g}")
    assert lefts == {0, 16} and worst <= 1e-4


def test_the_samplers_controlnet_under_windowed_regions(demo, calls):
    """The sampler's own ControlNet (on its positive) under the Regions patch in windows runs per window
    too, and steers the result."""
    model, controlnet, image, positive, negative, encode = demo
    regions = tiny.node_module("regions")
    half = torch.zeros(4 * H, 4 * W)
    half[:, : 3 * W] = 1
    patched = regions.MultiDiffusionRegions().patch(
        model, regions.MultiDiffusionRegion().add(encode("the sea"), half, 1.0)[0], 0, 0, 64, 64, 64
    )[0]
    steered = _ksampler(patched, *_controlled(controlnet, image, positive, negative))
    assert calls and all(x.shape[-2:] == (H, H) for x, *_ in calls)
    free = _ksampler(patched, positive, negative)
    assert torch.isfinite(steered).all() and (steered - free).abs().max() > 1e-3
