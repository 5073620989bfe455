"""Memory flat in width (issue 27, item 5): the text encoders released after encoding (the last call's
prompts still run, others are refused in one line, the modules are freed), and a diffusion
transformer's default batch of views bounded by the memory the model holds. Tiny random FLUX.1 and
Z-Image built in-process."""

import gc
import weakref

import pytest
import torch

from devtools.dit_components import tiny_flux_pipeline
from devtools.zimage_components import tiny_zimage_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.runner import estimate
from multidiffusion.runner.estimate import auto_batch, model_bytes, view_activation_bytes

H = W = 16  # latent pixels: the tiny models' native window
KW = dict(height=H * 8, width=W * 8, num_inference_steps=2, output_type="latent")


@pytest.fixture(scope="module")
def flux_latents():
    return torch.randn((1, 16, H, W), generator=torch.Generator().manual_seed(0))


def _md(pipe, **kwargs):
    md = MultiDiffusion(pipe, max_sequence_length=16, **kwargs)
    md.set_progress_bar_config(disable=True)
    return md


def test_after_the_release_the_same_prompts_run_and_new_ones_are_refused(flux_latents):
    md = _md(tiny_flux_pipeline())
    encoder = weakref.ref(md.pipe.text_encoder_2)
    first = md.panorama("a red ball", latents=flux_latents, guidance_scale=3.5, **KW).images
    assert md.release_text_encoders() == ["text_encoder", "text_encoder_2"]
    assert md.pipe.text_encoder is None and md.pipe.text_encoder_2 is None
    gc.collect()
    assert encoder() is None  # nothing holds the T5 any more: its memory is free
    again = md.panorama("a red ball", latents=flux_latents, guidance_scale=3.5, **KW).images
    assert torch.equal(first, again)
    wide = md.panorama("a red ball", latents=None, guidance_scale=3.5, **{**KW, "width": 2 * W * 8})
    assert wide.images.shape == (1, 16, H, 2 * W)  # a new canvas, the same prompts: runs
    for call in (
        lambda: md.panorama("a blue ball", guidance_scale=3.5, **KW),  # a new prompt
        lambda: md.panorama("a red ball", guidance_scale=5.0, **KW),  # FLUX.1-dev embeds the scale
    ):
        with pytest.raises(ValueError, match=r"^prompts: the text encoders were released") as err:
            call()
        assert "\n" not in str(err.value)
    assert md.release_text_encoders() == []  # releasing again frees nothing and keeps the prompts


def test_release_after_the_first_encoding_gives_the_same_result(flux_latents):
    pipe = tiny_flux_pipeline()
    kept = _md(pipe).panorama("a lake", latents=flux_latents, guidance_scale=3.5, **KW).images
    md = _md(pipe, release_text_encoders=True)
    seen = []
    out = md.panorama(
        "a lake",
        latents=flux_latents,
        guidance_scale=3.5,
        callback_on_step_end=lambda p, i, t, d: seen.append(p.pipe.text_encoder_2),
        **KW,
    ).images
    assert seen == [None, None]  # released before the first step
    assert torch.equal(out, kept)
    with pytest.raises(ValueError, match="text encoders were released"):
        md.panorama("a sea", **KW)


def test_a_guided_z_image_runs_again_from_the_kept_embeddings():
    md = MultiDiffusion(tiny_zimage_pipeline(), max_sequence_length=64)
    md.set_progress_bar_config(disable=True)
    x = torch.randn((1, 16, H, W), generator=torch.Generator().manual_seed(1))
    args = dict(negative_prompt="blurry", guidance_scale=4.0, latents=x, **KW)
    first = md.panorama("a fox", **args).images
    assert md.release_text_encoders() == ["text_encoder"]
    assert torch.equal(md.panorama("a fox", **args).images, first)
    with pytest.raises(ValueError, match="text encoders were released"):
        md.panorama("a fox", **{**args, "negative_prompt": "dark"})


def test_a_transformer_batch_of_views_is_bounded_by_the_models_memory(monkeypatch):
    md = _md(tiny_flux_pipeline())
    adapter = md.adapter
    batch = auto_batch(adapter)
    share = estimate.MEMORY_SHARE * model_bytes(md.pipe)
    assert batch == 1 or batch * view_activation_bytes(adapter) <= share
    assert view_activation_bytes(adapter) > share  # the tiny model: its activations outweigh it, one view a call
    x = torch.randn((1, 16, H, 3 * W), generator=torch.Generator().manual_seed(2))
    wide = md.panorama("a lake", latents=x, guidance_scale=3.5, **{**KW, "width": 3 * W * 8, "num_inference_steps": 1})
    assert wide.stats.model_calls == wide.stats.jobs  # one view per transformer call
    monkeypatch.setattr(estimate, "MEMORY_SHARE", 1e6)  # memory no object: the CPU's speed heuristic alone
    assert auto_batch(adapter) == 4 * 64 * 64 // (H * W)


def test_a_unets_batch_is_the_speed_heuristic_alone():
    from devtools.components import tiny_sd_pipeline

    md = MultiDiffusion(tiny_sd_pipeline())
    h, w = md.adapter.native_latent_size
    assert auto_batch(md.adapter) == max(1, 4 * 64 * 64 // (h * w))


def test_the_memory_width_measurement_in_process():
    """One measurement of ``python -m benchmarks --suites memory-width`` (normally in a fresh process
    each): a FLUX.1-shaped 2x panorama after the text encoders were released."""
    from benchmarks.memory_width import measure

    threads = torch.get_num_threads()
    try:
        got = measure("FLUX.1", 2, True, 1, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert got["views"] == 9 and got["model_calls"] == 9  # one view a call: the bound on the reduced model
    assert got["text_encoders"] == "released" and got["text_encoders_mb"] > 1
    kept = got["weights_mb"] + got["text_encoders_mb"]
    assert got["weights_mb"] < kept and got["peak_mb"] > got["weights_mb"]


@pytest.mark.slow
def test_the_memory_width_suite_in_quick_mode(tmp_path):
    """The suite's quick mode on one family (4 fresh processes: about a minute on 2 loaded cores)."""
    import json

    from benchmarks.__main__ import SUITES
    from benchmarks.memory_width import main

    assert "memory-width" in SUITES
    out = tmp_path / "memory.json"
    assert main(["--quick", "--families", "FLUX.1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["text_encoders"] for r in rows] == ["kept", "released"]
    for r in rows:
        assert set(r["ratios"]) == {"1x", "2x"} and r["ratios"]["1x"] == 1.0
        assert r["detail"]["2x"]["views"] == 9 and r["within_bound"]
    assert rows[1]["detail"]["1x"]["weights_mb"] < rows[0]["detail"]["1x"]["weights_mb"]


def test_the_kept_embeddings_are_keyed_by_what_the_slots_carry():
    """The edit task's slots carry its reference image (Qwen-Image-Edit's text encoder reads it): a
    new image with the same prompt is a miss, the same pixels a hit."""
    from dataclasses import dataclass

    import numpy as np
    from PIL import Image

    from multidiffusion.engine.task import PromptSlots
    from multidiffusion.runner.text_encoders import _key

    @dataclass
    class WithImage(PromptSlots):
        image: object = None

    pixels = np.zeros((8, 8, 3), np.uint8)
    one = WithImage([["a"]], [[""]], [4.0], image=Image.fromarray(pixels))
    same = WithImage([["a"]], [[""]], [4.0], image=Image.fromarray(pixels.copy()))
    other = WithImage([["a"]], [[""]], [4.0], image=Image.fromarray(pixels + 1))
    assert _key(one, 1) == _key(same, 1) != _key(other, 1)
    assert _key(PromptSlots([["a"]], [[""]], [4.0]), 1) != _key(one, 1)
    assert _key(WithImage([["a"]], [[""]], [4.0], image=torch.ones(2)), 1) == _key(
        WithImage([["a"]], [[""]], [4.0], image=torch.ones(2)), 1
    )
