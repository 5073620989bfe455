"""Speed options that must not change the result (the shared guidance prefix; view batching and
skipped zero-weight region jobs are tested in test_panorama.py and test_regions.py), and the
precision and compile options, which must run."""

import pytest
import torch

from devtools.components import sd_shaped_pipeline, tiny_sd_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.engine.shared_prefix import SharedPrefix, shared_prefix_modules

from .conftest import noise


@pytest.fixture(scope="module")
def sd_shaped():
    """SD 2-base's architecture at 1/40 width: cross-attention in its first block, as in SD."""
    pipe = sd_shaped_pipeline(divisor=40, vae_divisor=16)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    return md


@pytest.mark.parametrize("which", ["tiny", "sd_shaped"])
def test_shared_guidance_prefix_leaves_the_output_unchanged(md16, sd_shaped, which):
    md = md16 if which == "tiny" else sd_shaped
    modules = shared_prefix_modules(md.pipe.unet)
    if which == "tiny":  # no attention in the first block: the whole block is shared
        assert modules[-1] is md.pipe.unet.down_blocks[0]
    else:  # up to the first transformer block's self-attention
        assert modules[-1] is md.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    kwargs = dict(height=128, width=256, num_inference_steps=2, output_type="latent", latents=noise((1, 4, 16, 32)))
    shared = md.panorama("a hill", view_batch_size=3, **kwargs)
    plain = MultiDiffusion(md.pipe, share_prefix=False).panorama("a hill", view_batch_size=3, **kwargs)
    assert shared.stats.model_calls == plain.stats.model_calls
    torch.testing.assert_close(shared.images, plain.images, rtol=1e-4, atol=1e-4)  # float rounding
    assert not md.pipe.unet._forward_hooks and not md.pipe.unet.conv_in._forward_pre_hooks  # hooks removed


def test_shared_prefix_is_off_where_the_time_embedding_sees_the_prompt():
    from devtools.components import tiny_sdxl_pipeline

    assert shared_prefix_modules(tiny_sdxl_pipeline(sample_size=16).unet) == []
    prefix = SharedPrefix(tiny_sd_pipeline(sample_size=16).unet)
    assert prefix.modules and prefix._first is None


# bfloat16 end to end is also test_cli_dtype_bfloat16_on_cpu's
@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, marks=pytest.mark.slow), torch.float16])
def test_reduced_precision_runs_on_cpu(dtype):
    pipe = tiny_sd_pipeline(sample_size=16, dtype=dtype)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    out = md.panorama(
        "a lake", height=128, width=256, num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    )
    image = out.images[0]
    assert image.size == (256, 128) and len(set(image.getdata())) > 10
    latents = md.panorama("a lake", height=128, width=256, num_inference_steps=2, output_type="latent").images
    assert latents.dtype == dtype and torch.isfinite(latents.float()).all()


@pytest.mark.slow
def test_compiled_unet_gives_the_same_panorama():
    pipe = tiny_sd_pipeline(sample_size=16)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    kwargs = dict(height=128, width=256, num_inference_steps=2, output_type="latent", latents=noise((1, 4, 16, 32)))
    eager = md.panorama("a hill", view_batch_size=9, **kwargs).images
    compiled = md.compile().panorama("a hill", view_batch_size=9, **kwargs).images
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_cli_dtype_bfloat16_on_cpu(tiny_model_dir, tmp_path, capsys):
    from PIL import Image

    from .test_cli import FAST, run

    path = tmp_path / "bf16.png"
    code, _, err = run(
        [
            "panorama",
            "a lake",
            "--model",
            str(tiny_model_dir),
            "--dtype",
            "bfloat16",
            "--device",
            "cpu",
            "-o",
            str(path),
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    assert Image.open(path).size == (256, 128)
