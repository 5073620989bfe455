"""Inpainting and outpainting on the one engine: equal to diffusers' inpainting pipelines at one view
(latent blending for a 4-channel UNet, mask and masked-image channels for a 9-channel one), the known
image kept outside the mask on any canvas, outpaint's canvas and mask, and the bad inputs named."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from PIL import Image

from devtools.components import tiny_sd_inpaint_pipeline, tiny_sdxl_inpaint_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.engine.schedulers import make_scheduler
from multidiffusion.engine.views import crop, grid_views
from multidiffusion.files.metadata import settings_from_parameters
from multidiffusion.options import InpaintOptions, OutpaintOptions
from multidiffusion.tasks import InpaintTask, OutpaintTask
from multidiffusion.tasks.images import image_tensor
from multidiffusion.tasks.inpaint import gaussian_blur, latent_mask, mask_tensor
from multidiffusion.tasks.outpaint import extend_image, outpaint_mask
from multidiffusion.vae.codec import encode_images

STEPS = 4


def _picture(width=128, height=128, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8))


def _mask(width=128, height=128, box=(20, 30, 100, 90)):
    m = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    return Image.fromarray(m)


def _md(pipe):
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    return md


@pytest.fixture(scope="module")
def sd16_9ch():
    """The sd16 fixture's architecture with a 9-channel (inpainting) UNet."""
    return tiny_sd_inpaint_pipeline(sample_size=16)


@pytest.fixture(scope="module")
def md16_9ch(sd16_9ch):
    return _md(sd16_9ch)


@pytest.mark.parametrize(
    ("channels", "scheduler", "strength"),
    [
        (4, "ddim", 1.0),
        (4, "ddim", 0.75),
        (4, "euler a", 0.6),
        (9, "ddim", 1.0),
        (9, "ddim", 0.75),
        (9, "euler a", 0.6),
    ],
)
def test_one_view_equals_diffusers_inpaint(sd16, sd16_9ch, channels, scheduler, strength):
    """At the native 128 x 128 one window covers the canvas: diffusers' pipeline step for step, draws
    included (an ancestral scheduler draws from the generator after the encoder samples)."""
    base = sd16 if channels == 4 else sd16_9ch
    pipe = StableDiffusionInpaintPipeline(**base.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(scheduler, base.scheduler.config)
    image, mask = _picture(), _mask()
    kwargs = dict(strength=strength, num_inference_steps=STEPS, negative_prompt="blurry", output_type="latent")
    expected = pipe("a red house", image=image, mask_image=mask, generator=torch.Generator().manual_seed(3), **kwargs)
    got = _md(base).inpaint(
        image,
        mask,
        "a red house",
        mask_blur=0,
        scheduler=scheduler,
        generator=torch.Generator().manual_seed(3),
        **kwargs,
    )
    assert (got.images - expected.images).abs().max() <= 1e-4
    assert got.stats.steps == int(STEPS * strength)


def test_images_per_prompt_and_generator_lists_draw_like_diffusers_inpaint(sd16_9ch):
    """With a list of generators diffusers samples the one input image (and the masked image) with the
    first of them, and the noise with each: unlike its img2img pipeline."""
    pipe = StableDiffusionInpaintPipeline(**sd16_9ch.components)
    pipe.set_progress_bar_config(disable=True)
    image, mask = _picture(seed=2), _mask(box=(64, 0, 128, 128))
    kwargs = dict(strength=0.75, num_inference_steps=STEPS, num_images_per_prompt=2, output_type="latent")
    expected = pipe(
        "a tree", image=image, mask_image=mask, generator=[torch.Generator().manual_seed(s) for s in (1, 2)], **kwargs
    )
    got = _md(sd16_9ch).inpaint(
        image, mask, "a tree", mask_blur=0, generator=[torch.Generator().manual_seed(s) for s in (1, 2)], **kwargs
    )
    assert got.images.shape[0] == 2 and (got.images - expected.images).abs().max() <= 1e-4


@pytest.mark.parametrize(("channels", "strength"), [(4, 1.0), (9, 0.75)])
def test_one_view_equals_diffusers_sdxl_inpaint(channels, strength):
    xl = tiny_sdxl_inpaint_pipeline(sample_size=16, in_channels=channels)
    image, mask = _picture(seed=1), _mask(box=(0, 40, 70, 128))
    kwargs = dict(strength=strength, num_inference_steps=STEPS, guidance_scale=5.0, output_type="latent")
    expected = xl("a lake", image=image, mask_image=mask, generator=torch.Generator().manual_seed(5), **kwargs)
    got = _md(xl).inpaint(image, mask, "a lake", mask_blur=0, generator=torch.Generator().manual_seed(5), **kwargs)
    assert (got.images - expected.images).abs().max() <= 1e-4


def _image_latents(md, image, size, seed):
    """The image's encoder sample on the canvas: the first draw of a generator seeded ``seed``."""
    pixels = image_tensor(image, size, md.adapter)
    return encode_images(md.pipe.vae, pixels, generator=torch.Generator().manual_seed(seed), sample=True)


@pytest.mark.parametrize("circular", [False, True])
def test_outside_the_mask_a_wide_canvas_ends_on_the_image_latents(md16, circular):
    """Latent blending on a canvas of several windows: where the latent mask is 0 the final latents
    are the image's latents exactly; inside the mask they are not."""
    image, mask = _picture(width=384), _mask(width=384, box=(150, 20, 300, 110))
    out = md16.inpaint(
        image, mask, "a red house", strength=0.75, num_inference_steps=STEPS, circular=circular, mask_blur=4,
        output_type="latent", generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    assert out.stats.coverage > 1  # several windows: a MultiDiffusion run
    z = _image_latents(md16, image, (128, 384), seed=7)
    m = latent_mask(mask_tensor(mask, (128, 384), 4, wrap=circular), (16, 48))
    keep, repaint = (m == 0).expand_as(z), (m == 1).expand_as(z)
    assert keep.any() and repaint.any()
    assert torch.equal(out.images[keep], z[keep])
    assert (out.images[repaint] - z[repaint]).abs().mean() > 0.1


def test_an_inpainting_unet_sees_each_views_crop_of_the_mask_wrapping_around(md16_9ch):
    """Every model call's mask channel is a view's crop of the canvas-wide latent mask, and every view's
    crop is fed, across the 0/360 seam of a circular canvas too."""
    image, mask = _picture(width=384), _mask(width=384, box=(0, 20, 60, 110))  # at the seam
    seen = []
    hook = md16_9ch.pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 4:5].clone()))
    try:
        out = md16_9ch.inpaint(
            image, mask, "a lake", num_inference_steps=2, circular=True, mask_blur=0, output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    finally:
        hook.remove()
    assert out.images.shape == (1, 4, 16, 48) and torch.isfinite(out.images).all()
    m = latent_mask(mask_tensor(mask, (128, 384)), (16, 48))
    views = grid_views(16, 48, (16, 16), (2, 2), circular=True)
    expected = [crop(m, v) for v in views]
    rows = torch.cat(seen)
    assert all(any(torch.equal(row[None], e) for e in expected) for row in rows)
    assert all(any(torch.equal(row[None], e) for row in rows) for e in expected)
    assert any(v.left + v.width > 48 for v in views)  # some views wrap around


def test_an_inpainting_unet_on_a_wide_canvas_keeps_the_image_roughly(md16_9ch):
    image, mask = _picture(width=256), _mask(width=256, box=(100, 0, 180, 128))
    out = md16_9ch.inpaint(
        image, mask, "a lake", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    )
    assert out.images.shape == (1, 128, 256, 3) and np.isfinite(out.images).all()
    assert out.stats.coverage > 1


def test_inpainting_unet_is_refused_by_the_other_tasks(md16_9ch):
    with pytest.raises(ValueError, match="img2img: this model's UNet is an inpainting UNet"):
        md16_9ch.img2img(_picture(), "x", num_inference_steps=2)
    with pytest.raises(ValueError, match="regions: this model's UNet is an inpainting UNet"):
        md16_9ch.regions(background="x", num_inference_steps=1)


def test_an_inpainting_model_folder_loads(sd16_9ch, tmp_path):
    sd16_9ch.save_pretrained(tmp_path)
    md = MultiDiffusion.from_pretrained(tmp_path, device="cpu")
    assert (md.family, md.adapter.extra_channels) == ("sd", 5)


def test_the_mask_is_resized_binarised_and_feathered(md16):
    small = _mask(width=64, height=64, box=(10, 15, 50, 45))  # same aspect, half size
    options = InpaintOptions(prompt="x", image=_picture(), mask=small, mask_blur=0)
    binary = InpaintTask(options, md16.adapter).mask
    assert binary.shape == (1, 1, 128, 128) and set(binary.unique().tolist()) == {0.0, 1.0}
    assert binary[0, 0, 60, 60] == 1 and binary[0, 0, 5, 5] == 0
    options = InpaintOptions(prompt="x", image=_picture(), mask=small, mask_blur=4)
    soft = InpaintTask(options, md16.adapter).mask
    assert ((soft > 0) & (soft < 1)).sum() > 0 and torch.allclose(soft.sum(), binary.sum(), rtol=0.01)


def _reference_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """cv2.GaussianBlur((k, k), sigma) with A1111's k = 2 * int(2.5 * sigma + 0.5) + 1, BORDER_REFLECT_101."""
    r = int(2.5 * sigma + 0.5)
    k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    k /= k.sum()

    def axis(a: np.ndarray) -> np.ndarray:
        n = a.shape[-1]
        idx = np.abs(np.arange(-r, n + r))
        idx = np.where(idx >= n, 2 * (n - 1) - idx, idx)
        p = a[..., idx]
        return sum(k[j] * p[..., j : j + n] for j in range(2 * r + 1))

    return axis(axis(x).swapaxes(-1, -2)).swapaxes(-1, -2)


def test_gaussian_blur_is_a1111s_mask_blur():
    x = np.random.default_rng(0).random((1, 1, 20, 30))
    got = gaussian_blur(torch.tensor(x, dtype=torch.float32), 3).numpy()
    np.testing.assert_allclose(got, _reference_blur(x, 3), atol=1e-5)
    wide = gaussian_blur(torch.tensor(x, dtype=torch.float32), 30)  # kernel wider than the image: still defined
    assert torch.isfinite(wide).all() and wide.min() >= 0
    t = torch.tensor(x)  # wrapping around the width: the blur commutes with a horizontal roll
    rolled = torch.roll(gaussian_blur(torch.roll(t, 7, -1), 3, wrap=True), -7, -1)
    torch.testing.assert_close(rolled, gaussian_blur(t, 3, wrap=True))
    assert not torch.allclose(gaussian_blur(t, 3, wrap=True), gaussian_blur(t, 3))


# -- outpainting ---------------------------------------------------------------------------------------


def test_outpaint_canvas_mask_and_known_pixels(md16):
    image = _picture(width=133, height=96)  # 133 is rounded down to 128
    options = OutpaintOptions(prompt="x", image=image, left=64, right=32, bottom=16, overlap=16, mask_blur=0)
    task = OutpaintTask(options, md16.adapter)
    assert task.size == (96 + 16, 128 + 96) and task.image_size == (96, 128)
    expected = torch.zeros(1, 1, 112, 224)
    expected[..., :, : 64 + 16] = 1
    expected[..., :, 224 - 32 - 16 :] = 1
    expected[..., 112 - 16 - 16 :, :] = 1
    assert torch.equal(task.mask, expected)
    pixels = task.canvas_pixels()
    assert pixels.shape == (1, 3, 112, 224)
    torch.testing.assert_close(pixels[..., :96, 64:192], image_tensor(image, (96, 128), md16.adapter))
    assert torch.isfinite(pixels).all() and pixels.abs().max() <= 1


def test_outpaint_mask_overlap_never_passes_the_image():
    mask = outpaint_mask((64, 200), 0, 0, 8, 0, overlap=500)
    assert mask.all()
    mask = outpaint_mask((64, 200), 0, 0, 0, 8, overlap=0)
    assert mask[..., 192:].all() and not mask[..., :192].any()


def test_circular_fill_continues_each_edge_across_the_seam():
    image = torch.cat([-torch.ones(1, 1, 4, 1), torch.zeros(1, 1, 4, 6), torch.ones(1, 1, 4, 1)], dim=-1)
    canvas = extend_image(image, 0, 0, 3, 5, circular=True, blur=0)
    row = canvas[0, 0, 0]
    # after the right edge (+1) the fill falls towards the left edge (-1), across column 0
    around = torch.cat([row[11:], row[:3]])
    assert torch.all(around[1:] < around[:-1]) and around[0] < 1 and around[-1] > -1
    assert torch.equal(canvas[..., 3:11], image)
    plain = extend_image(image, 2, 0, 3, 5, circular=False, blur=0)
    assert torch.equal(plain[..., 2:, :3], -torch.ones(1, 1, 4, 3)) and torch.equal(
        plain[..., :2, 3:11], image[..., :2, :]
    )


def test_outpaint_runs_and_records_its_settings(md16):
    out = md16.outpaint(
        _picture(width=128, height=128), "a lake", left=64, right=64, num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out.images[0].size == (256, 128)
    p = out.parameters
    assert (p["task"], p["width"], p["height"], p["left"], p["right"], p["top"], p["bottom"]) == (
        "outpaint", 256, 128, 64, 64, 0, 0,
    )  # fmt: skip
    assert (p["overlap"], p["mask_blur"], p["strength"], p["image"]) == (16, 8, 1.0, {"path": None, "sha256": None})
    assert "mask" not in p


def test_circular_outpaint_to_a_360_panorama(md16_9ch):
    out = md16_9ch.outpaint(
        _picture(width=128, height=128), "a lake", left=64, right=128, circular=True, num_inference_steps=2,
        output_type="latent", generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out.images.shape == (1, 4, 16, 40) and torch.isfinite(out.images).all()
    assert out.parameters["circular"] is True
    task = OutpaintTask(
        OutpaintOptions(prompt="x", image=_picture(), left=64, right=128, circular=True, mask_blur=8), md16_9ch.adapter
    )
    m = task.mask[0, 0, 0]
    assert m[0] == m[-1] == 1  # the new area is one piece across the seam


def test_inpaint_settings_round_trip_through_stored_parameters(md16, tmp_path):
    image_path, mask_path = tmp_path / "in.png", tmp_path / "mask.png"
    _picture().save(image_path)
    _mask().save(mask_path)
    out = md16.inpaint(
        str(image_path), str(mask_path), "a red house", strength=0.5, mask_blur=2, num_inference_steps=2,
        output_type="latent", generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    p = out.parameters
    assert p["task"] == "inpaint" and p["mask"]["path"] == str(mask_path) and len(p["mask"]["sha256"]) == 64
    assert (p["mask_blur"], p["strength"]) == (2, 0.5)
    stored = settings_from_parameters(p)
    assert set(stored.inputs) == {"image", "mask"}  # file records are kept apart, never read: given again
    with pytest.raises(ValueError, match="never read from them; give the image again"):
        stored.options(None)
    options = stored.options(None, image=str(image_path), mask=str(mask_path))
    assert isinstance(options, InpaintOptions) and options.mask.path == str(mask_path) and options.mask_blur == 2


# -- bad inputs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mask=Image.new("L", (128, 64))), r"mask is 128x64 but the image is 128x128"),
        (dict(mask=None), "mask is required"),
        (dict(mask_blur=-1), "mask_blur must be an integer from 0 to 256"),
        (dict(mask_blur=300), "mask_blur must be an integer from 0 to 256"),
        (dict(mask_blur=1.5), "mask_blur must be an integer from 0 to 256"),
        (dict(strength=0), r"strength must be a number in \(0, 1\]"),
    ],
)
def test_bad_inpaint_inputs_are_named(kwargs, message):
    args = {"prompt": "x", "image": _picture(), "mask": _mask(), **kwargs}
    with pytest.raises(ValueError, match=message):
        InpaintOptions(**args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(left=10), "left must be a multiple of 8"),
        (dict(top=4, left=8), "top must be a multiple of 8"),
        (dict(right=-8), "right must be an integer from 0"),
        (dict(), "give at least one of left, right, top, bottom"),
        (dict(left=8, overlap=600), "overlap must be an integer from 0 to 512"),
        (dict(left=8, mask_blur=-2), "mask_blur must be an integer from 0 to 256"),
        (dict(left=8, width=200), "width: an outpaint's size is the image's plus"),
    ],
)
def test_bad_outpaint_inputs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OutpaintOptions(prompt="x", image=_picture(), **kwargs)
