"""Bad input: a ValueError naming the parameter, the value and what is allowed."""

import pytest
import torch

from multidiffusion import MultiDiffusion
from multidiffusion.options import MAX_SIDE

SMALL = dict(height=128, width=256, num_inference_steps=1, output_type="latent")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"width": 100}, r"width must be a multiple of 8 from 64 to 16384 \(pixels\), got 100"),
        ({"height": 0}, r"height must be a multiple of 8 .* got 0"),
        ({"width": -8}, r"width must be .* got -8"),
        ({"width": MAX_SIDE + 8}, rf"width must be .* got {MAX_SIDE + 8}"),
        ({"width": 256.5}, r"width must be .* got 256.5"),
        ({"stride": 0}, r"stride must be an integer ≥ 1, got 0"),
        ({"stride": 17}, r"stride must be at most the window 16x16, got 17x17"),
        ({"window": 8, "stride": 9}, r"stride must be an integer from 1 to 8, got 9"),
        ({"window": 4}, r"window must be an integer ≥ 8, got 4"),
        ({"window": (16, 16, 16)}, r"window must be an integer or a \(height, width\) pair"),
        ({"num_inference_steps": 0}, r"num_inference_steps must be an integer from 1 to 1000, got 0"),
        ({"guidance_scale": -1}, r"guidance_scale must be a number ≥ 0, got -1"),
        ({"guidance_scale": float("nan")}, r"guidance_scale must be a number ≥ 0, got nan"),
        ({"scheduler": "nope"}, r"scheduler must be one of ddim, .*euler_a.*dpm\+\+2m.*unipc.* got 'nope'"),
        ({"output_type": "jpg"}, r"output_type must be one of 'pil', 'np', 'pt', 'latent', got 'jpg'"),
        ({"view_batch_size": 0}, r"view_batch_size must be an integer ≥ 1, got 0"),
        ({"num_images_per_prompt": 0}, r"num_images_per_prompt must be an integer from 1 to 64, got 0"),
        ({"eta": 2.0}, r"eta must be a number from 0 to 1, got 2.0"),
        ({"latents": torch.zeros(1, 4, 16, 16)}, r"latents must have shape \(1, 4, 16, 32\) .* got \(1, 4, 16, 16\)"),
        ({"latents": [1, 2]}, r"latents must have shape \(1, 4, 16, 32\) .* got list"),
        ({"negative_prompt": ["a", "b"]}, r"negative_prompt must be a string or a list of 1 strings"),
    ],
)
def test_bad_panorama_arguments(md16, kwargs, message):
    with pytest.raises(ValueError, match=message):
        md16.panorama("x", **{**SMALL, **kwargs})


def test_bad_prompt(md16):
    with pytest.raises(ValueError, match="prompt must be a non-empty prompt, got None"):
        md16.panorama(None, **SMALL)
    with pytest.raises(ValueError, match="prompt must be"):
        md16.panorama([], **SMALL)


def test_bad_scheduler_name_at_construction(sd16):
    with pytest.raises(ValueError, match="scheduler must be one of"):
        MultiDiffusion(sd16, scheduler="DDIM++")


def test_scheduler_aliases(md16):
    from multidiffusion.engine.schedulers import scheduler_name

    assert scheduler_name("DPM++ 2M Karras") == "dpm++2m_karras"
    assert scheduler_name("dpmpp_2m") == "dpm++2m"
    assert scheduler_name("Euler a") == "euler_a"
    assert scheduler_name("euler_ancestral") == "euler_a"
