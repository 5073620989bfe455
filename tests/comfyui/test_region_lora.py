"""A region's own LoRA through ComfyUI's hooks (Create Hook LoRA on the region's conditioning), on the
tiny SD 1.x UNet with a tiny random LoRA.

- A region covering the canvas gives the stock KSampler's result with that hooked conditioning as the
  positive (ComfyUI applying the hook itself).
- A half-canvas region: the model calls of its rows run with the LoRA's weights (equal to the model
  with the LoRA loaded), every other row (background, negative) with the model's own weights, bit for
  bit (``torch.equal``), and the model's weights are its own again after sampling.

Run with the ComfyUI environment: ``/work/comfy-venv/bin/python -m pytest -q tests/comfyui/test_region_lora.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import comfy_tiny as tiny

H, W, F = 16, 24, 8
CFG = 4.0
LAYER = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v"  # (32, 32), fed by the prompt


@pytest.fixture(scope="module")
def comfy():
    return tiny.import_comfy()


@pytest.fixture(scope="module")
def lora() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(21)
    return {
        f"{LAYER}.lora_up.weight": torch.randn(32, 4, generator=g) * 0.5,
        f"{LAYER}.lora_down.weight": torch.randn(4, 32, generator=g) * 0.5,
    }


@pytest.fixture(scope="module")
def conds(comfy, lora):
    """(background, region plain, region hooked with the LoRA, negative)."""
    import comfy.hooks

    region = tiny.conditioning(3)
    hooked = comfy.hooks.set_hooks_for_conditioning(region, comfy.hooks.create_hook_lora(lora, 1.0, 1.0))
    return tiny.conditioning(1), region, hooked, tiny.conditioning(2)


def _sample(comfy, model, positive, negative, steps: int = 2) -> torch.Tensor:
    noise = torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(3))
    latent = torch.zeros(1, 4, H, W)
    return comfy.sample.sample(
        model, noise, steps, CFG, "euler", "normal", positive, negative, latent, disable_pbar=True
    )


def _patched(model, region, mask):
    nodes = tiny.node_module("regions")
    regions = nodes.MultiDiffusionRegion().add(region, mask, 1.0)[0]
    return nodes.MultiDiffusionRegions().patch(model, regions, 0, 0, 0, 0, 0)[0]


def test_a_whole_canvas_region_equals_comfyui_applying_the_hook(comfy, conds):
    model = tiny.tiny_model(comfy)
    background, region, hooked, negative = conds
    want = _sample(comfy, model, hooked, negative)
    got = _sample(comfy, _patched(model, hooked, torch.ones(H * F, W * F)), background, negative)
    diff = (got - want).abs().max().item()
    print(f"a region's LoRA (hooks), region = whole canvas: vs stock KSampler max|diff| = {diff:.3g}")
    assert diff <= 1e-5
    plain = _sample(comfy, model, region, negative)
    assert (want - plain).abs().max() > 1e-3  # the LoRA matters: the check can fail


def test_only_the_regions_rows_run_with_its_lora(comfy, conds, lora):
    model = tiny.tiny_model(comfy)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    background, region, hooked, negative = conds
    log: list[tuple] = []

    def record(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        log.append((args["input"].clone(), args["timestep"].clone(), args["c"]["c_crossattn"].clone(), out.clone()))
        return out

    recorded = model.clone()
    recorded.set_model_unet_function_wrapper(record)
    half = torch.zeros(H * F, W * F)
    half[:, : W * F // 2] = 1
    _sample(comfy, _patched(recorded, hooked, half), background, negative, steps=1)
    assert all(torch.equal(v, before[k]) for k, v in model.model.state_dict().items())  # weights restored
    with torch.no_grad():
        plain_out = [model.model.apply_model(x, t, c_crossattn=c) for x, t, c, _ in log]
        with_lora = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)[0]
        comfy.model_management.load_models_gpu([with_lora])
        lora_out = [with_lora.model.apply_model(x, t, c_crossattn=c) for x, t, c, _ in log]
    with_lora.unpatch_model()
    region_context = region[0][0][0]  # (tokens, width)
    kinds = set()
    for (_x, _t, context, out), hooked_out, plain in zip(log, lora_out, plain_out, strict=True):
        own = [bool(torch.equal(c[: region_context.shape[0]], region_context)) for c in context]
        assert len(set(own)) == 1, "a hooked region's rows share a model call with other rows"
        if own[0]:
            kinds.add("region")
            diff = (out - hooked_out).abs().max().item()
            print(f"the region's rows: vs the model with the LoRA loaded max|diff| = {diff:.3g}")
            assert diff <= 1e-5 and (out - plain).abs().max() > 1e-4
        else:
            kinds.add("others")
            assert torch.equal(out, plain)
    assert kinds == {"region", "others"}


def test_other_hook_kinds_are_refused(comfy, conds):
    import comfy.hooks

    group = comfy.hooks.HookGroup()
    group.add(comfy.hooks.TransformerOptionsHook())
    bad = comfy.hooks.set_hooks_for_conditioning(conds[1], group)
    with pytest.raises(ValueError, match="only LoRA"):
        tiny.node_module("regions").MultiDiffusionRegion().add(bad, torch.ones(8, 8), 1.0)
