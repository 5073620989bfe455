"""The few-step demo (issue 29, item 3): ``"demo-lcm"`` is the shipped demo with its distilled LCM-LoRA
fused in and LCMScheduler, and at one view equals diffusers' StableDiffusionPipeline given the same LoRA
(``load_lora_weights``, peft) and scheduler; a 1-step region layout renders; a PNG it made is made again
by ``--from``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline
from PIL import Image

from multidiffusion import MultiDiffusion, Region
from multidiffusion.cli import main
from multidiffusion.files.metadata import read_settings
from multidiffusion.models.demo_lcm import DEMO_LCM_DIR, LORA_FILE
from multidiffusion.models.loading import DEMO_MODEL_DIR

from .conftest import noise

TOL = 1e-4
PROMPT = "a red house in a green meadow under a blue sky"

pytestmark = pytest.mark.skipif(not (DEMO_LCM_DIR / LORA_FILE).is_file(), reason="demo-lcm weights not shipped")


@pytest.fixture(scope="module")
def md() -> MultiDiffusion:
    md = MultiDiffusion.from_pretrained("demo-lcm", device="cpu")
    md.set_progress_bar_config(disable=True)
    return md


@pytest.fixture(scope="module")
def pipe() -> Any:
    """diffusers' own way: the demo, ``load_lora_weights`` (peft, unfused), LCMScheduler."""
    pipe = StableDiffusionPipeline.from_pretrained(str(DEMO_MODEL_DIR), torch_dtype=torch.float32)
    pipe.load_lora_weights(str(DEMO_LCM_DIR), weight_name=LORA_FILE)
    pipe.scheduler = LCMScheduler.from_pretrained(str(DEMO_LCM_DIR / "scheduler"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_one_view_equals_the_pipeline_with_the_lora_loaded(md, pipe):
    """64 x 64 (one demo window): the fused LoRA equals peft's unfused one, LCMScheduler's noise between
    steps included, without guidance (as LCM-LoRAs run) and with; without the LoRA the same call lands
    elsewhere (the weights act)."""
    assert type(md.scheduler).__name__ == "LCMScheduler"
    assert md.adapter.sampling_defaults == (4, 1.0)  # an LCM-LoRA's: 4 steps, no classifier-free guidance
    x = noise((1, 4, 16, 16), seed=3)
    for steps, guidance in ((4, 1.0), (2, 1.5)):
        kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, output_type="latent")

        def diffusers(kwargs=kwargs) -> torch.Tensor:
            return pipe(PROMPT, latents=x.clone(), generator=torch.Generator().manual_seed(7), **kwargs).images

        expected = diffusers()
        got = md.panorama(
            PROMPT, height=64, width=64, latents=x.clone(), generator=torch.Generator().manual_seed(7), **kwargs
        ).images
        diff = (got - expected).abs().max().item()
        assert diff <= TOL, (steps, guidance, diff)
    pipe.disable_lora()
    try:
        assert (diffusers() - expected).abs().max().item() > 0.05
    finally:
        pipe.enable_lora()


def test_one_step_three_region_layout(md):
    """The live canvas (128 x 64, a background and three boxes) in one step: finite, the right size."""
    out = md.regions(
        background="a clear blue sky over a green meadow",
        regions=[
            Region("a yellow sun", box=(8, 4, 32, 24)),
            Region("a red house", box=(44, 28, 84, 60)),
            Region("a green tree", box=(96, 16, 120, 60)),
        ],
        height=64,
        width=128,
        num_inference_steps=1,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(1),
    )
    pixels = np.asarray(out.images[0])
    assert pixels.shape == (64, 128, 3) and np.isfinite(pixels).all() and pixels.std() > 5
    assert out.stats.steps == 1


def _run(argv: list[Any], capsys: Any) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_a_png_round_trips_with_from(tmp_path, capsys):
    """The PNG records "demo-lcm" (a shipped name, trusted as "demo" is): ``--from`` alone makes it again."""
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    args = ["--steps", 2, "--guidance", 1.0, "--width", 128, "--height", 64, "--seed", 5, "-q"]
    code, err = _run(["panorama", "a snowy field at sunset", "--model", "demo-lcm", *args, "-o", first], capsys)
    assert code == 0, err
    stored = read_settings(first, "panorama")
    assert stored.model == "demo-lcm"
    code, err = _run(["panorama", "--from", first, "-q", "-o", again], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
