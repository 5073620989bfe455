"""Image-to-image on the one engine: equal to diffusers' img2img pipelines at one view, any canvas
beyond it; the input image is encoded (tiled) before the noise is drawn, as diffusers draws."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
from PIL import Image

from devtools.components import tiny_sdxl_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.engine.schedulers import make_scheduler
from multidiffusion.io.trust import RecordedFile
from multidiffusion.options import Img2ImgOptions, RegionsOptions


def _picture(width=128, height=128, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8))


def _md(pipe):
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    return md


@pytest.fixture(scope="module")
def xl16():
    return tiny_sdxl_pipeline(sample_size=16)


@pytest.mark.parametrize(("scheduler", "strength"), [("ddim", 0.75), ("euler", 0.5), ("dpm++2m", 0.9), ("ddim", 1.0)])
def test_one_view_equals_diffusers_img2img(sd16, scheduler, strength):
    pipe = StableDiffusionImg2ImgPipeline(**sd16.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(scheduler, sd16.scheduler.config)
    image = _picture()
    expected = pipe(
        "a red house",
        image=image,
        strength=strength,
        num_inference_steps=4,
        guidance_scale=7.5,
        negative_prompt="blurry",
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    ).images
    md = _md(sd16)
    got = md.img2img(
        image,
        "a red house",
        strength=strength,
        num_inference_steps=4,
        negative_prompt="blurry",
        scheduler=scheduler,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    ).images
    assert (got - expected).abs().max() <= 1e-4


def test_one_view_equals_diffusers_sdxl_img2img(xl16):
    pipe = StableDiffusionXLImg2ImgPipeline(**xl16.components, requires_aesthetics_score=False)
    pipe.set_progress_bar_config(disable=True)
    image = _picture(seed=1)
    kwargs = dict(num_inference_steps=4, guidance_scale=5.0, output_type="latent")
    expected = pipe("a lake", image=image, strength=0.6, generator=torch.Generator().manual_seed(5), **kwargs).images
    got = _md(xl16).img2img(image, "a lake", strength=0.6, generator=torch.Generator().manual_seed(5), **kwargs)
    assert (got.images - expected).abs().max() <= 1e-4


def test_images_per_prompt_and_generator_lists_draw_like_diffusers(sd16):
    pipe = StableDiffusionImg2ImgPipeline(**sd16.components)
    pipe.set_progress_bar_config(disable=True)
    image = _picture(seed=2)
    for generator in (
        lambda: torch.Generator().manual_seed(1),
        lambda: [torch.Generator().manual_seed(s) for s in (1, 2)],
    ):
        kwargs = dict(strength=0.5, num_inference_steps=4, num_images_per_prompt=2, output_type="latent")
        expected = pipe("a tree", image=image, generator=generator(), **kwargs).images
        got = _md(sd16).img2img(image, "a tree", generator=generator(), **kwargs).images
        assert (got - expected).abs().max() <= 1e-4


def test_a_wide_image_is_reworked_over_windows_and_keeps_its_size(md16):
    image = _picture(width=389, height=130)  # sides not multiples of 8: rounded down
    out = md16.img2img(image, "a lake", strength=0.5, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (384, 128)
    p = out.parameters
    assert (p["task"], p["width"], p["height"], p["strength"]) == ("img2img", 384, 128, 0.5)
    assert p["image"] == {"path": None, "sha256": None}
    assert out.stats.steps == 2  # int(4 * 0.5) steps run
    assert out.stats.coverage > 1  # several windows overlap: it is a MultiDiffusion run


def test_on_the_demo_a_low_strength_keeps_the_image_and_a_high_one_changes_it():
    demo = MultiDiffusion.from_pretrained("demo", device="cpu")
    demo.set_progress_bar_config(disable=True)
    image = demo.panorama(
        "a lake at dusk", width=256, num_inference_steps=10, generator=torch.Generator().manual_seed(0)
    ).images[0]
    target = np.asarray(image, np.float32) / 255

    def error(strength):
        out = demo.img2img(
            image,
            "snowy mountains",
            strength=strength,
            num_inference_steps=10,
            output_type="np",
            generator=torch.Generator().manual_seed(1),
        )
        return np.abs(out.images[0] - target).mean()

    low, high = error(0.2), error(1.0)
    assert low < 0.06 < high, (low, high)


def test_a_file_input_is_recorded_with_its_sha256(md16, tmp_path):
    import hashlib

    path = tmp_path / "in.png"
    _picture(width=128, height=128).save(path)
    out = md16.img2img(str(path), "a lake", strength=0.5, num_inference_steps=2, output_type="latent")
    assert out.parameters["image"] == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    # a record as stored settings hold it (a plain dict) is never opened; a RecordedFile (what a scene file,
    # or the user, makes of it) is read: the same file passes, a changed or missing one is refused clearly
    with pytest.raises(ValueError, match="never read from them; give the image again"):
        Img2ImgOptions(prompt="x", image=out.parameters["image"])
    record = RecordedFile(**out.parameters["image"])
    assert Img2ImgOptions(prompt="x", image=record).image.sha256 == out.parameters["image"]["sha256"]
    _picture(width=128, height=128, seed=9).save(path)
    with pytest.raises(ValueError, match=r"image: the input file .* has changed"):
        Img2ImgOptions(prompt="x", image=record)
    path.unlink()
    with pytest.raises(ValueError, match=r"image: the input file .* is missing"):
        Img2ImgOptions(prompt="x", image=record)


def test_regions_rework_an_image(md16):
    image = _picture(width=128, height=128, seed=5)
    out = md16.regions(
        image=image,
        strength=0.5,
        background="a lake",
        regions=[{"prompt": "a red house", "box": (0, 0, 64, 64)}],
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    assert out.parameters["strength"] == 0.5 and out.stats.steps == 2
    assert out.images.shape[-2:] == (16, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(strength=0), r"strength must be a number in \(0, 1\]"),
        (dict(strength=1.5), r"strength must be a number in \(0, 1\]"),
        (dict(image=None), "image is required"),
        (dict(image="/no/such.png"), "image: no such file"),
        (dict(image=Image.new("RGB", (40, 40))), r"image is 40x40 px, which makes a canvas 40 px in height"),
    ],
)
def test_bad_inputs_are_named(kwargs, message):
    args = {"prompt": "x", "image": Image.new("RGB", (128, 128)), **kwargs}
    with pytest.raises(ValueError, match=message):
        Img2ImgOptions(**args)


def test_strength_without_an_image_is_refused_for_regions():
    with pytest.raises(ValueError, match="strength applies to an input image"):
        RegionsOptions(background="x", strength=0.5)


def test_not_an_image_file_is_named(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    with pytest.raises(ValueError, match=r"image: .*notes\.png' is not an image"):
        Img2ImgOptions(prompt="x", image=str(bad))


def test_a_strength_that_runs_no_step_is_refused_before_any_work(md16):
    with pytest.raises(ValueError, match=r"strength 0.3 runs none of the 2 steps"):
        md16.img2img(Image.new("RGB", (128, 128)), "x", strength=0.3, num_inference_steps=2)
