"""SDXL through the one engine: the plain pipeline on one view, per-view micro-conditioning."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline

from devtools.components import tiny_sd_pipeline, tiny_sdxl_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.engine.fusion import Job
from multidiffusion.engine.schedulers import make_scheduler
from multidiffusion.engine.views import View, grid_views
from multidiffusion.models import StableDiffusionXLAdapter
from multidiffusion.options import PanoramaOptions
from multidiffusion.tasks.common import window_and_stride

from .conftest import noise


@pytest.fixture(scope="module")
def xl16():
    return tiny_sdxl_pipeline(sample_size=16)


def _md(pipe, **options):
    md = MultiDiffusion(pipe, **options)
    md.set_progress_bar_config(disable=True)
    return md


class TimeIdSpy:
    """Records added_cond_kwargs['time_ids'] of every UNet call."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append(kwargs["added_cond_kwargs"]["time_ids"].clone())

    def rows(self):
        return {tuple(int(v) for v in row) for call in self.calls for row in call}

    def close(self):
        self.handle.remove()


@pytest.mark.parametrize(
    ("scheduler", "negative"), [("euler", None), ("euler", "blurry"), ("ddim", "blurry"), ("dpm++2m", None)]
)
def test_one_view_equals_sdxl_pipeline(xl16, scheduler, negative):
    latents = noise((1, 4, 16, 16), seed=1)
    original = xl16.scheduler
    xl16.scheduler = make_scheduler(scheduler, original.config)
    try:
        expected = xl16(  # both at their default guidance: SDXL's 5.0
            "a red house",
            num_inference_steps=3,
            height=128,
            width=128,
            latents=latents.clone(),
            negative_prompt=negative,
            output_type="np",
        ).images
    finally:
        xl16.scheduler = original
    out = _md(xl16).panorama(
        "a red house",
        height=128,
        width=128,
        num_inference_steps=3,
        latents=latents.clone(),
        negative_prompt=negative,
        scheduler=scheduler,
        output_type="np",
    )
    assert out.stats.model_calls == 3  # one view, both guidance branches in one call
    np.testing.assert_allclose(out.images, expected, atol=1e-6)


def test_one_view_batch_of_prompts_and_images_equals_sdxl_pipeline(xl16):
    # two prompts x two images: the time ids and zeroed negatives must line up with the embeddings
    latents = noise((4, 4, 16, 24), seed=2)
    kwargs = dict(num_inference_steps=2, height=128, width=192, output_type="latent", num_images_per_prompt=2)
    expected = xl16(["a cat", "a dog"], latents=latents.clone(), **kwargs).images  # default guidance, as ours
    got = _md(xl16).panorama(["a cat", "a dog"], latents=latents.clone(), window=(16, 24), **kwargs).images
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("circular", [False, True])
def test_sdxl_panoramas_run(xl16, circular):
    md = _md(xl16)
    out = md.panorama(
        "a mountain range",
        height=128,
        width=384,
        num_inference_steps=2,
        circular=circular,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 128, 384, 3)
    assert np.isfinite(out.images).all()
    assert out.parameters["crops_coords_top_left"] == "zero" and out.parameters["original_size"] == "canvas"


def _views(height, width, circular=False):
    return grid_views(height // 8, width // 8, (16, 16), (2, 2), circular=circular)


@pytest.mark.parametrize("circular", [False, True])
def test_default_time_ids_describe_each_view_as_a_piece_of_the_canvas(xl16, circular):
    md = _md(xl16)
    spy = TimeIdSpy(xl16.unet)
    try:
        md.panorama("x", height=192, width=384, num_inference_steps=1, circular=circular, output_type="latent")
    finally:
        spy.close()
    # original = canvas, crop (0, 0), target = the 128 x 128 px window, for every view
    assert spy.rows() == {(192, 384, 0, 0, 128, 128)}


@pytest.mark.parametrize("circular", [False, True])
def test_offset_crops_reach_the_unet_per_view(xl16, circular):
    md = _md(xl16, crops_coords_top_left="offset")
    spy = TimeIdSpy(xl16.unet)
    try:
        md.panorama(
            "x",
            height=192,
            width=384,
            num_inference_steps=1,
            circular=circular,
            view_batch_size=3,
            output_type="latent",
        )
    finally:
        spy.close()
    views = _views(192, 384, circular)
    assert spy.rows() == {(192, 384, v.top * 8, v.left * 8, 128, 128) for v in views}
    assert len(spy.rows()) == len(views) > 1
    for call in spy.calls:  # both guidance branches of a view get the same ids
        uncond, cond = call.chunk(2)
        torch.testing.assert_close(uncond, cond)


@pytest.mark.parametrize(("option", "expected"), [("window", (128, 128)), ((2048, 1024), (2048, 1024))])
def test_original_size_options(xl16, option, expected):
    md = _md(xl16, original_size=option)
    spy = TimeIdSpy(xl16.unet)
    try:
        out = md.panorama("x", height=128, width=256, num_inference_steps=1, output_type="latent")
    finally:
        spy.close()
    assert spy.rows() == {(*expected, 0, 0, 128, 128)}
    assert out.parameters["original_size"] == (option if isinstance(option, str) else list(option))


def test_time_ids_follow_jobs_anywhere_with_several_prompt_slots(xl16):
    """Region jobs: any views, several prompt slots with their own negatives, negatives first."""
    adapter = StableDiffusionXLAdapter(xl16, crops_coords_top_left="offset")
    cond = adapter.encode([["a cat"], ["a dog"]], [["blurry"], [""]], num_images=1, guidance=True)
    jobs = [Job(View(0, 8, 16, 16), 1), Job(View(4, 0, 16, 16), 0)]
    kwargs = adapter.unet_kwargs(cond, jobs, (20, 32))
    hidden, added = kwargs["encoder_hidden_states"], kwargs["added_cond_kwargs"]
    assert hidden.shape[0] == added["text_embeds"].shape[0] == added["time_ids"].shape[0] == 4
    torch.testing.assert_close(hidden[0], cond.negative["encoder_hidden_states"][1, 0])
    torch.testing.assert_close(hidden[1], cond.negative["encoder_hidden_states"][0, 0])
    torch.testing.assert_close(hidden[2], cond.positive["encoder_hidden_states"][1, 0])
    assert cond.negative["encoder_hidden_states"][1].abs().max() == 0  # no negative prompt: zeros, as diffusers
    assert cond.negative["encoder_hidden_states"][0].abs().max() > 0  # "blurry" is encoded
    rows = [[int(v) for v in row] for row in added["time_ids"]]
    assert rows == [[160, 256, 0, 64, 128, 128], [160, 256, 32, 0, 128, 128]] * 2


def test_sdxl_runs_jobs_of_several_prompt_slots(xl16):
    """The engine path regions will take: whole-canvas jobs of two prompts with complementary masks."""
    from multidiffusion import Region

    md = _md(xl16)
    regions = [
        Region("a forest", box=(0, 0, 128, 128)),
        Region("a lake", box=(128, 0, 256, 128), negative_prompt="people", guidance_scale=5.0),
    ]
    out = md.regions(
        128, 256, None, regions, bootstrap_steps=0, num_inference_steps=2, output_type="np",
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out.images.shape == (1, 128, 256, 3) and np.isfinite(out.images).all()


def test_default_canvas_and_window_follow_sample_size():
    md = _md(tiny_sdxl_pipeline(sample_size=24))
    assert md.family == "sdxl"
    assert md.default_size == (192, 768)  # native 24 latents x 8, and 4x that wide
    assert window_and_stride(PanoramaOptions(prompt="x"), md.adapter) == ((24, 24), (3, 3))


def test_img2img_sibling_shares_components_and_gives_the_same_panorama(xl16):
    img2img = StableDiffusionXLImg2ImgPipeline(**xl16.components)
    md = _md(img2img)
    assert md.pipe.unet is xl16.unet and md.pipe.text_encoder_2 is xl16.text_encoder_2
    latents = noise((1, 4, 16, 32), seed=3)
    kwargs = dict(height=128, width=256, num_inference_steps=2, output_type="latent")
    a = md.panorama("sea", latents=latents.clone(), **kwargs).images
    b = _md(xl16).panorama("sea", latents=latents.clone(), **kwargs).images
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_textual_inversion_loaded_on_the_pipe_applies(xl16):
    pipe = tiny_sdxl_pipeline(sample_size=16)
    generator = torch.Generator().manual_seed(0)
    pipe.load_textual_inversion(
        {"<sks>": torch.randn(1, 32, generator=generator)},
        token="<sks>",
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
    )
    pipe.load_textual_inversion(
        {"<sks>": torch.randn(1, 48, generator=generator)},
        token="<sks>",
        text_encoder=pipe.text_encoder_2,
        tokenizer=pipe.tokenizer_2,
    )
    cond = _md(pipe).adapter.encode([["a <sks> dog"]], [[""]], 1, False)
    expected, _, pooled, _ = pipe.encode_prompt("a <sks> dog", do_classifier_free_guidance=False)
    torch.testing.assert_close(cond.positive["encoder_hidden_states"][0], expected)
    torch.testing.assert_close(cond.positive["text_embeds"][0], pooled)
    plain = _md(pipe).adapter.encode([["a sks dog"]], [[""]], 1, False)
    assert not torch.allclose(plain.positive["encoder_hidden_states"], cond.positive["encoder_hidden_states"])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"crops_coords_top_left": "centre"}, r"crops_coords_top_left must be one of 'zero', 'offset', got 'centre'"),
        ({"original_size": "huge"}, r"original_size must be 'canvas', 'window' or a \(height, width\)"),
        ({"original_size": (1024, -1)}, r"original_size must be .* got \(1024, -1\)"),
    ],
)
def test_bad_sdxl_options(xl16, options, match):
    with pytest.raises(ValueError, match=match):
        MultiDiffusion(xl16, **options)


def test_sdxl_options_on_an_sd_model_are_refused():
    with pytest.raises(ValueError, match=r"original_size applies to SDXL models; this model is Stable Diffusion 1\.x"):
        MultiDiffusion(tiny_sd_pipeline(sample_size=16), original_size="window")


def test_refiner_like_unet_is_refused():
    pipe = tiny_sdxl_pipeline(sample_size=16)
    from diffusers import UNet2DConditionModel

    config = {**pipe.unet.config, "addition_time_embed_dim": 6, "projection_class_embeddings_input_dim": 62}
    pipe.unet = UNet2DConditionModel.from_config(config)  # 5 time ids x 6 + 32: refiner-style
    with pytest.raises(ValueError, match="SDXL refiner"):
        MultiDiffusion(pipe)


def test_depth_or_upscaler_unets_are_refused_and_inpainting_unets_only_inpaint():
    pipe = tiny_sd_pipeline(sample_size=16)
    from diffusers import UNet2DConditionModel

    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 5})  # depth: latents + depth
    with pytest.raises(ValueError, match="takes 5 input channels but the VAE's latents have 4"):
        MultiDiffusion(pipe)
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9})  # inpainting
    md = MultiDiffusion(pipe)
    assert (md.adapter.latent_channels, md.adapter.extra_channels) == (4, 5)
    with pytest.raises(ValueError, match="panorama: this model's UNet is an inpainting UNet"):
        md.panorama("x", num_inference_steps=1)


@pytest.mark.parametrize("circular", [False, True])
def test_sdxl_regions_with_bootstrapping(xl16, circular):
    from multidiffusion import Region

    md = _md(xl16)
    out = md.regions(
        height=128,
        width=384,
        background="a meadow",
        regions=[Region("a red house", box=(0.05, 0.2, 0.3, 0.9)), Region("a tree", box=(200, 16, 360, 120))],
        bootstrap_steps=1,
        num_inference_steps=2,
        circular=circular,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 128, 384, 3)
    assert np.isfinite(out.images).all()
    from multidiffusion.engine.views import grid_views

    views = len(grid_views(16, 48, (16, 16), (2, 2), circular=circular))
    assert out.stats.jobs < 3 * views * out.stats.steps  # each region only in the windows it touches


def test_sdxl_regions_share_the_unconditional_branch_exactly(xl16):
    """Per-view time ids and pooled embeddings follow the shared ε_u rows: same output as without."""
    from multidiffusion import Region

    kwargs = dict(
        height=128, width=256, background="a meadow", num_inference_steps=2, output_type="latent",
        regions=[Region("a red house", box=(0.05, 0.2, 0.5, 0.9)), Region("a tree", box=(128, 16, 240, 120))],
        latents=torch.randn((1, 4, 16, 32), generator=torch.Generator().manual_seed(2)), view_batch_size=8,
    )  # fmt: skip
    shared = _md(xl16).regions(**kwargs, generator=torch.Generator().manual_seed(0))  # bootstrapping draws
    plain_md = _md(xl16)
    plain_md.share_unconditional = False
    plain = plain_md.regions(**kwargs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shared.images, plain.images, rtol=1e-5, atol=1e-5)
    assert shared.stats.evaluations < plain.stats.evaluations == 2 * plain.stats.jobs
