"""ControlNet per view: equal to diffusers' ControlNet pipelines at one view (single, two nets,
guess mode, SDXL); each view's ControlNet sees the control image's crop at its place."""

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    MultiControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
)
from PIL import Image

from devtools.components import tiny_sdxl_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.conditionings.controlnet_run import control_crop
from multidiffusion.engine.views import View
from multidiffusion.options import PanoramaOptions

from .conftest import noise


def _control_image(width=128, height=128, seed=0):
    rng = np.random.default_rng(seed)
    edges = (rng.random((height, width)) > 0.9).astype(np.uint8) * 255
    return Image.fromarray(np.stack([edges] * 3, -1))


def _controlnet(unet, seed):
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
    with torch.no_grad():  # from_unet zero-initialises the outputs: give them weights so they matter
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return net


@pytest.fixture(scope="module")
def nets(sd16):
    return _controlnet(sd16.unet, 1), _controlnet(sd16.unet, 2)


def _md(pipe):
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    return md


@pytest.mark.parametrize(("guess_mode", "start", "end"), [(False, 0.0, 1.0), (True, 0.0, 1.0), (False, 0.25, 0.75)])
def test_one_view_equals_diffusers_controlnet(sd16, nets, guess_mode, start, end):
    pipe = StableDiffusionControlNetPipeline(**sd16.components, controlnet=nets[0])
    pipe.set_progress_bar_config(disable=True)
    image = _control_image()
    latents = noise((1, 4, 16, 16), seed=3)
    kwargs = dict(
        num_inference_steps=4,
        guidance_scale=7.5,
        controlnet_conditioning_scale=0.8,
        guess_mode=guess_mode,
        control_guidance_start=start,
        control_guidance_end=end,
        output_type="latent",
    )
    expected = pipe("a red house", image=image, latents=latents.clone(), **kwargs).images
    got = _md(pipe).panorama(
        "a red house", height=128, width=128, control_image=image, latents=latents.clone(), **kwargs
    )
    assert (got.images - expected).abs().max() <= 1e-4
    without = _md(sd16).panorama(
        "a red house", height=128, width=128, latents=latents.clone(), num_inference_steps=4, output_type="latent"
    )
    assert (without.images - expected).abs().max() > 1e-2  # the ControlNet did something


def test_two_controlnets_equal_diffusers_multi_controlnet(sd16, nets):
    multi = MultiControlNetModel(list(nets))
    pipe = StableDiffusionControlNetPipeline(**sd16.components, controlnet=multi)
    pipe.set_progress_bar_config(disable=True)
    images = [_control_image(seed=1), _control_image(seed=2)]
    latents = noise((1, 4, 16, 16), seed=4)
    kwargs = dict(
        num_inference_steps=3,
        controlnet_conditioning_scale=[0.7, 1.2],
        control_guidance_start=[0.0, 0.3],
        control_guidance_end=[1.0, 1.0],
        output_type="latent",
    )
    expected = pipe("a lake", image=images, latents=latents.clone(), **kwargs).images
    got = _md(pipe).panorama("a lake", height=128, width=128, control_image=images, latents=latents.clone(), **kwargs)
    assert (got.images - expected).abs().max() <= 1e-4


def test_sdxl_one_view_equals_diffusers_controlnet():
    xl = tiny_sdxl_pipeline(sample_size=16)
    net = _controlnet(xl.unet, 5)
    pipe = StableDiffusionXLControlNetPipeline(
        **{k: v for k, v in xl.components.items() if k != "image_encoder" and k != "feature_extractor"}, controlnet=net
    )
    pipe.set_progress_bar_config(disable=True)
    image = _control_image(seed=3)
    latents = noise((1, 4, 16, 16), seed=5)
    kwargs = dict(num_inference_steps=3, guidance_scale=5.0, output_type="latent", controlnet_conditioning_scale=0.9)
    expected = pipe("a lake", image=image, latents=latents.clone(), height=128, width=128, **kwargs).images
    got = _md(pipe).panorama("a lake", height=128, width=128, control_image=image, latents=latents.clone(), **kwargs)
    assert (got.images - expected).abs().max() <= 1e-4


class ControlSpy:
    """Records the control image each ControlNet call gets."""

    def __init__(self, net):
        self.images = []
        self.handle = net.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        cond = kwargs["controlnet_cond"]  # a Union ControlNet's: a list, one per mode
        self.images.append([c.clone() for c in cond] if isinstance(cond, list) else cond.clone())

    def close(self):
        self.handle.remove()


@pytest.mark.parametrize("circular", [False, True])
def test_each_view_gets_the_control_crop_at_its_place(sd16, nets, circular):
    pipe = StableDiffusionControlNetPipeline(**sd16.components, controlnet=nets[0])
    md = _md(pipe)
    image = _control_image(width=384, height=128, seed=7)
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]
    spy = ControlSpy(nets[0])
    try:
        out = md.panorama(
            "a lake",
            height=128,
            width=384,
            window=16,
            stride=12,
            circular=circular,
            view_batch_size=1,
            control_image=image,
            num_inference_steps=1,
            guidance_scale=1.0,
            output_type="latent",
        )
    finally:
        spy.close()
    from multidiffusion.engine.views import grid_views

    views = grid_views(16, 48, (16, 16), (12, 12), circular=circular)
    assert len(spy.images) == len(views)
    for view, seen in zip(views, spy.images):
        expected = control_crop(pixels, view, 8)
        assert torch.equal(seen, expected)
    if circular:  # a window across the 360-degree seam sees the right edge then the left edge
        wrapped = [v for v in views if v.left + v.width > 48]
        assert wrapped
        seen = spy.images[views.index(wrapped[0])]
        cut = (48 - wrapped[0].left) * 8
        assert torch.equal(seen[..., :cut], pixels[..., -cut:]) and torch.equal(
            seen[..., cut:], pixels[..., : 128 - cut]
        )
    assert out.parameters["control_image"] == [{"path": None, "sha256": None}]


def test_outside_start_end_the_controlnet_is_not_run(sd16, nets):
    pipe = StableDiffusionControlNetPipeline(**sd16.components, controlnet=nets[0])
    spy = ControlSpy(nets[0])
    try:
        _md(pipe).panorama(
            "a lake",
            height=128,
            width=128,
            control_image=_control_image(),
            control_guidance_start=0.5,
            num_inference_steps=4,
            output_type="latent",
        )
    finally:
        spy.close()
    assert len(spy.images) == 2  # steps 2 and 3 of 4


def test_control_crop_of_a_view_is_in_pixels_and_wraps():
    image = torch.arange(2 * 3 * 16 * 32, dtype=torch.float32).view(2, 3, 16, 32)
    assert torch.equal(control_crop(image, View(1, 1, 1, 2), 8), image[..., 8:16, 8:24])
    wrapped = control_crop(image, View(1, 3, 1, 2), 8)  # latent columns 3 and 0 of a 4-wide canvas
    assert torch.equal(wrapped, torch.cat([image[..., 8:16, 24:32], image[..., 8:16, 0:8]], dim=-1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(controlnet_conditioning_scale=-1), "controlnet_conditioning_scale must be a number from 0"),
        (dict(control_guidance_start=0.8, control_guidance_end=0.2), "control_guidance_start must be below"),
        (dict(control_guidance_end=1.5), "control_guidance_end must be a number from 0"),
        (dict(controlnet_conditioning_scale=[1.0, 2.0]), "one per control image"),
    ],
)
def test_bad_control_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PanoramaOptions(prompt="x", control_image=Image.new("RGB", (64, 64)), **kwargs)


def test_control_settings_without_an_image_are_refused():
    with pytest.raises(ValueError, match="controlnet_conditioning_scale applies to a control image"):
        PanoramaOptions(prompt="x", controlnet_conditioning_scale=0.5)


def test_a_model_without_controlnet_and_another_aspect_are_refused(sd16, nets):
    with pytest.raises(ValueError, match="control_image: this model has no ControlNet"):
        _md(sd16).panorama("x", height=128, width=128, control_image=_control_image(), num_inference_steps=1)
    pipe = StableDiffusionControlNetPipeline(**sd16.components, controlnet=nets[0])
    with pytest.raises(ValueError, match="control_image is 128x128 but the canvas is 256x128"):
        _md(pipe).panorama("x", height=128, width=256, control_image=_control_image(), num_inference_steps=1)


def test_controlnets_load_from_folders_and_files_and_are_checked(sd16, nets, tmp_path):
    folder = tmp_path / "cn"
    nets[0].save_pretrained(folder)
    md = MultiDiffusion(sd16, controlnet=str(folder))
    assert len(md.adapter.controlnets) == 1
    md.set_controlnet([str(folder), nets[1]])
    assert len(md.adapter.controlnets) == 2
    md.set_controlnet(None)
    assert md.adapter.controlnets == []
    with pytest.raises(ValueError, match="controlnet: no such file or folder"):
        md.set_controlnet("./missing-controlnet")
    pickle = tmp_path / "cn.pth"
    pickle.write_bytes(b"not really")
    with pytest.raises(ValueError, match=r"controlnet: cn\.pth is a pickle checkpoint"):
        md.set_controlnet(str(pickle))


def test_a_controlnet_of_another_family_is_refused(sd16):
    xl = tiny_sdxl_pipeline(sample_size=16)
    with pytest.raises(ValueError, match=r"controlnet: this ControlNet was made for another model \(SDXL"):
        MultiDiffusion(sd16, controlnet=_controlnet(xl.unet, 0))


def test_preprocessors_make_control_maps():
    from multidiffusion.preprocessors import canny, preprocess, tile

    image = Image.new("RGB", (64, 64), "black")
    image.paste((255, 255, 255), (16, 16, 48, 48))
    edges = np.asarray(canny(image))
    assert edges.shape == (64, 64, 3) and edges.max() == 255
    assert edges[32, 14:18].max() == 255 and edges[32, 30:34].max() == 0  # the square's border, not its inside
    blurred = np.asarray(tile(image, factor=8), np.float32)
    assert 0 < blurred[16, 16, 0] < 255  # the edge is soft
    assert np.asarray(preprocess(image, "tile-grey")).std(axis=-1).max() == 0
    with pytest.raises(ValueError, match="control_preprocessor must be one of"):
        preprocess(image, "depth")


def test_the_preprocessor_is_applied_and_recorded(sd16, nets):
    pipe = StableDiffusionControlNetPipeline(**sd16.components, controlnet=nets[0])
    spy = ControlSpy(nets[0])
    image = Image.new("RGB", (128, 128), "black")
    image.paste((255, 255, 255), (32, 32, 96, 96))
    try:
        out = _md(pipe).panorama(
            "x",
            height=128,
            width=128,
            control_image=image,
            control_preprocessor="canny",
            num_inference_steps=1,
            guidance_scale=1.0,
            output_type="latent",
        )
    finally:
        spy.close()
    seen = spy.images[0][0, 0]
    assert seen[64, 64] == 0 and seen[64, 30:34].max() == 1  # edges, not the filled square
    assert out.parameters["control_preprocessor"] == "canny"


def test_a_regions_control_image_conditions_only_its_jobs(sd16, nets):
    """A region's control map goes to its prompt's jobs only (the ControlNet runs on their rows; the
    other rows of the UNet batch get zero residuals)."""
    pipe = StableDiffusionControlNetPipeline(**sd16.components, controlnet=nets[0])
    md = _md(pipe)
    md.share_unconditional = False
    pose = _control_image(seed=11)
    spy = ControlSpy(nets[0])
    kwargs = dict(
        height=128,
        width=128,
        background="a lake",
        num_inference_steps=2,
        bootstrap_steps=0,
        output_type="latent",
        latents=noise((1, 4, 16, 16), seed=2),
    )
    regions = [
        {"prompt": "a person", "box": (32, 32, 96, 128), "control_image": pose, "controlnet_conditioning_scale": 0.9}
    ]
    try:
        out = md.regions(regions=regions, **kwargs)
    finally:
        spy.close()
    assert len(spy.images) == 2  # one job (the region's) per step: the background's view isn't conditioned
    assert spy.images[0].shape[0] == 2  # its two guidance rows only
    plain = md.regions(regions=[{"prompt": "a person", "box": (32, 32, 96, 128)}], **kwargs)
    assert (out.images - plain.images).abs().max() > 1e-3
    assert out.parameters["regions"][0]["control_image"] == {"path": None, "sha256": None}
    with pytest.raises(ValueError, match=r"regions\[0\].control_image: controlnet=1, but this model runs 1"):
        md.regions(regions=[{**regions[0], "controlnet": 1}], **kwargs)


@pytest.mark.parametrize("explicit", [False, True])
def test_an_upscale_conditions_on_its_resized_input_tile_controlnet(sd16, nets, explicit):
    from multidiffusion.engine.views import grid_views
    from multidiffusion.files.metadata import settings_from_parameters

    pipe = StableDiffusionControlNetPipeline(**sd16.components, controlnet=nets[0])
    md = _md(pipe)
    small = _control_image(width=96, height=64, seed=5)
    resized = small.resize((192, 128), Image.LANCZOS)  # the upscaler's output: the canvas
    pixels = torch.from_numpy(np.asarray(resized, np.float32) / 255).permute(2, 0, 1)[None]
    spy = ControlSpy(nets[0])
    extra = {"control_image": "input", "controlnet_conditioning_scale": 0.5} if explicit else {}
    try:
        out = md.upscale(
            small,
            scale=2,
            window=16,
            stride=8,
            view_batch_size=1,
            num_inference_steps=2,
            strength=0.5,
            output_type="latent",
            **extra,
        )
    finally:
        spy.close()
    views = grid_views(16, 24, (16, 16), (8, 8))
    assert len(spy.images) == len(views)  # one step runs at strength 0.5 of 2
    for view, seen in zip(views, spy.images):
        assert (seen - control_crop(pixels, view, 8)).abs().max() <= 1e-6
    assert out.parameters["control_image"] == ["input"]
    assert out.parameters["controlnet_conditioning_scale"] == (0.5 if explicit else 1.0)
    stored = settings_from_parameters(out.parameters)
    assert stored.values["control_image"] == ["input"] and "control_image" not in stored.inputs
    again = stored.options(image=small)
    assert again.control_image == ["input"]
    with pytest.raises(ValueError, match="control_image"):  # only a task with an input takes "input"
        PanoramaOptions(prompt="x", control_image="input")


def test_an_upscales_noise_inversion_runs_the_controlnet_as_the_step_it_mirrors(sd16, nets):
    """Noise inversion uses the run's own guided model, its conditionings included: the Tile
    ControlNet acts at each inversion level as at the sampling step that level mirrors (its range
    too), so sampling retraces a path made with the same residuals."""
    pipe = StableDiffusionControlNetPipeline(**sd16.components, controlnet=nets[0])
    md = _md(pipe)
    small = _control_image(width=64, height=64, seed=6)
    kwargs = dict(scale=2, num_inference_steps=4, strength=0.5, output_type="latent")
    plain = md.upscale(small, **kwargs)
    inverted = md.upscale(small, noise_inversion=True, **kwargs)
    assert plain.stats.controlnet_calls == 2  # one view, the 2 steps that run
    assert inverted.stats.controlnet_calls == 4  # and the 2 inversion levels
    late = md.upscale(small, noise_inversion=True, control_image="input", control_guidance_start=0.5, **kwargs)
    assert late.stats.controlnet_calls == 2  # the second step that runs, and the first level, which mirrors it
