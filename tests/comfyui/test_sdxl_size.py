"""SDXL's size conditioning per window (the tiled patch's ``sdxl_size``), on ComfyUI's own SDXL model
class (``model_base.SDXL``, its ``encode_adm`` and embedder) with a tiny UNet.

- One window covering the canvas: ``window`` leaves the stock KSampler's result unchanged.
- Two windows: each window's ``y`` is what ComfyUI's ``encode_adm`` makes for a plain call with that
  window as the target size (and, with ``window+offset``, its offset as the crop), the original size
  staying the canvas's; ``conditioning`` leaves every window the canvas's ``y``.

Run with the ComfyUI environment: ``/work/comfy-venv/bin/python -m pytest -q tests/comfyui/test_sdxl_size.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import comfy_tiny as tiny

from multidiffusion.engine.views import grid_views

H, W = 16, 24  # latents; 128 x 192 px
CFG = 4.0


@pytest.fixture(scope="module")
def comfy():
    return tiny.import_comfy()


@pytest.fixture(scope="module")
def sdxl(comfy):
    config = tiny.tiny_unet_config()
    config.update(adm_in_channels=2816, num_classes="sequential")
    supported = comfy.supported_models.SDXL(config)
    supported.unet_config.update(num_heads=-1, num_head_channels=16)
    model = supported.get_model({})
    tiny._init(model.diffusion_model, 5)
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model.eval(), load_device=device, offload_device=device)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(7)
    return tuple(
        [[torch.randn(1, 8, tiny.CONTEXT, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
        for _ in range(2)
    )


def _sample(comfy, model, prompts, steps: int = 2) -> torch.Tensor:
    noise = torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(3))
    latent = torch.zeros(1, 4, H, W)
    return comfy.sample.sample(model, noise, steps, CFG, "euler", "normal", *prompts, latent, disable_pbar=True)


def _patched(model, window_px: int, stride_px: int, sdxl_size: str):
    tiled = tiny.node_module("tiled").MultiDiffusionTiled()
    args = (window_px, window_px, stride_px, "grid", "uniform", False, 1, 0)
    return tiled.patch(model, *args, sdxl_size=sdxl_size)[0]


def test_one_window_leaves_the_ksampler_unchanged(comfy, sdxl, prompts):
    want = _sample(comfy, sdxl, prompts)
    got = _sample(comfy, _patched(sdxl, 512, 0, "window"), prompts)
    diff = (got - want).abs().max().item()
    print(f"SDXL sizes per window, one window: patched vs stock KSampler max|diff| = {diff:.3g}")
    assert diff <= 1e-5


@pytest.mark.parametrize("mode", ["conditioning", "window", "window+offset"])
def test_each_windows_y_is_comfyuis_for_that_window(comfy, sdxl, prompts, mode):
    seen: list[torch.Tensor] = []

    def record(apply_model, args):
        seen.append(args["c"]["y"].clone())
        return apply_model(args["input"], args["timestep"], **args["c"])

    recorded = sdxl.clone()
    recorded.set_model_unet_function_wrapper(record)
    _sample(comfy, _patched(recorded, 128, 64, mode), prompts, steps=1)  # windows at latent columns 0 and 8
    views = grid_views(H, W, (16, 16), (8, 8))
    assert len(seen) == len(views) == 2  # one call per window (view_batch_size 1), cond and uncond rows each
    worst = 0.0
    for y, view in zip(seen, views, strict=True):
        for row in y:
            crop = (view.top * 8, view.left * 8) if mode == "window+offset" else (0, 0)
            target = (view.height * 8, view.width * 8) if mode != "conditioning" else (H * 8, W * 8)
            want = sdxl.model.encode_adm(
                pooled_output=row[None, :1280], width=W * 8, height=H * 8, crop_h=crop[0], crop_w=crop[1],
                target_height=target[0], target_width=target[1],
            )[0]  # fmt: skip
            worst = max(worst, (row - want).abs().max().item())
    print(f"SDXL sizes, mode {mode}: each window's y vs ComfyUI's encode_adm for it: max|diff| = {worst:.3g}")
    assert worst <= 1e-6
    if mode != "conditioning":
        canvas_target = sdxl.model.embedder(torch.Tensor([W * 8])).flatten()
        assert (seen[0][0, -256:] - canvas_target).abs().max() > 1e-3  # a real rewrite: width 128, not 192
