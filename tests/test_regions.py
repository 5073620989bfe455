"""Region prompts on the one engine: Eq. 5 computed directly, the paper's per-view loop, skipping,
bootstrapping and the errors of bad layouts."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from devtools.reference import paper_regions
from multidiffusion import MAX_REGIONS, Region, RegionLayout, layout_preview, region_layout
from multidiffusion.engine.schedulers import SCHEDULERS
from multidiffusion.engine.views import crop as crop_view
from multidiffusion.engine.views import grid_views, paste_add
from multidiffusion.regions.bootstrap import MAX_COLOURS, BootstrapBackgrounds, bootstrap_composer, draw_backgrounds
from multidiffusion.regions.preview import BACKGROUND_TINT, PALETTE

from .conftest import noise


def ball_and_dog(height, width, feather=0.0):
    """A mask region (block-aligned rectangle, binary on the latent grid) and a pixel box region."""
    mask = torch.zeros(height, width)
    mask[32:96, 16:80] = 1
    return [
        Region("a red ball", mask=mask, feather=feather),
        Region("a dog", box=(width - 72, 8, width - 8, 120)),
    ]


def direct_eq5_step(pipe, prompts, weights, latents, views, guidance):
    """One DDIM step on Eq. 5 computed by hand: per window, per prompt, one guided UNet call."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    pos, neg = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=[""] * len(prompts))
    num = torch.zeros_like(latents)
    den = torch.zeros(1, 1, *latents.shape[-2:])
    for view in views:
        x = crop_view(latents, view)
        for p in range(len(prompts)):
            w = crop_view(weights[p], view)
            out = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([neg[p : p + 1], pos[p : p + 1]]))
            uncond, cond = out.sample.chunk(2)
            paste_add(num, view, w * (uncond + guidance[p] * (cond - uncond)))
            paste_add(den, view, w)
    return scheduler.step(num / den, t, latents).prev_sample


@pytest.mark.parametrize("width", [128, 320], ids=["one-window", "panorama"])
def test_regions_without_bootstrapping_equal_eq5_computed_directly(sd16, md16, width):
    regions = ball_and_dog(128, width, feather=6.0)  # soft weights from the feather
    regions[1].weight = 2.0
    regions[1].guidance_scale = 3.0
    latents = noise((1, 4, 16, width // 8), seed=1)
    out = md16.regions(
        128,
        width,
        "a beach",
        regions,
        bootstrap_steps=0,
        num_inference_steps=1,
        latents=latents.clone(),
        output_type="latent",
        window=16,
        stride=4,
    )
    # the weights as documented: area average of each 8 x 8 pixel block; background the complement
    fg = torch.stack([F.avg_pool2d(r.pixel_mask(128, width)[None, None], 8)[0, 0] for r in regions])
    bg = (1 - fg.sum(0)).clamp(0, 1)
    weights = torch.stack([bg, fg[0], 2.0 * fg[1]])
    assert bool(((fg[0] > 0) & (fg[0] < 1)).any())  # soft edges present
    views = grid_views(16, width // 8, (16, 16), (4, 4))
    expected = direct_eq5_step(sd16, ["a beach", "a red ball", "a dog"], weights, latents, views, [7.5, 7.5, 3.0])
    torch.testing.assert_close(out.images, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("width", "images"), [(128, 1), (256, 2)], ids=["one-window", "panorama"])
def test_fused_ddim_equals_the_papers_per_view_loop_with_bootstrapping(sd16, md16, width, images):
    regions = ball_and_dog(128, width)  # binary on the latent grid: the equivalence is exact
    latents = noise((images, 4, 16, width // 8), seed=2)
    out = md16.regions(
        128,
        width,
        "a beach",
        regions,
        bootstrap_steps=2,
        num_inference_steps=3,
        latents=latents.clone(),
        generator=torch.Generator().manual_seed(5),
        num_images_per_prompt=images,
        output_type="latent",
        window=16,
        stride=8,
    )
    layout = md16.region_layout(128, width, "a beach", regions)
    assert set(layout.masks.unique().tolist()) <= {0.0, 1.0}
    views = grid_views(16, width // 8, (16, 16), (8, 8))
    # the backgrounds md.regions draws: with given latents the generator serves only them
    backgrounds = draw_backgrounds(
        sd16.vae,
        steps=2,
        views=len(views),
        regions=2,
        images=images,
        size=views[0].size,
        generator=torch.Generator().manual_seed(5),
    )
    expected = paper_regions(
        sd16,
        layout.prompts,
        layout.masks,
        latents.clone(),
        num_inference_steps=3,
        views=views,
        bootstrap_steps=2,
        backgrounds=backgrounds,
    )
    torch.testing.assert_close(out.images, expected, rtol=1e-5, atol=5e-5)
    # and bootstrapping did something
    plain = md16.regions(
        128, width, "a beach", regions, bootstrap_steps=0, num_inference_steps=3, latents=latents.clone(),
        num_images_per_prompt=images, output_type="latent", window=16, stride=8,
    )  # fmt: skip
    assert (plain.images - out.images).abs().max() > 0.1


def test_skipping_prompts_outside_their_windows_changes_nothing_and_saves_model_calls(md16, monkeypatch):
    # 128 x 384 canvas, 16-latent windows every 8: 5 windows; each region sits in one end
    regions = [Region("a red ball", box=(0, 0, 96, 128)), Region("a dog", box=(320, 0, 384, 128))]
    kwargs = dict(
        height=128,
        width=384,
        background="a beach",
        regions=regions,
        bootstrap_steps=1,
        num_inference_steps=2,
        latents=noise((1, 4, 16, 48), seed=3),
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        window=16,
        stride=8,
        view_batch_size=1,
    )
    skipped = md16.regions(**{**kwargs, "generator": torch.Generator().manual_seed(0)})
    original = RegionLayout.jobs
    monkeypatch.setattr(RegionLayout, "jobs", lambda self, views, skip_empty=True: original(self, views, False))
    every = md16.regions(**{**kwargs, "generator": torch.Generator().manual_seed(0)})
    torch.testing.assert_close(skipped.images, every.images, rtol=1e-5, atol=1e-5)
    # background: windows 0-2 (left of x=320 px) and 3 (partly): 5 windows minus the last one (all dog)
    # ball: windows at x 0 and 64 px; dog: windows at x 256 px and 320 px -> 4 + 2 + 2 = 8 of 15 jobs
    assert every.stats.jobs == 2 * 15 and every.stats.model_calls == 2 * 15
    assert skipped.stats.jobs == 2 * 8 and skipped.stats.model_calls == 2 * 8


@pytest.mark.parametrize("bootstrap_steps", [0, 1], ids=["plain", "bootstrapped"])
def test_shared_unconditional_branch_changes_nothing_and_saves_evaluations(md16, bootstrap_steps):
    """Prompts of one window share ε_u: P + 1 UNet rows per window instead of 2P. A region with its
    own negative prompt, and bootstrapped crops (which differ), get their own ε_u."""
    regions = [
        Region("a red ball", box=(0, 0, 96, 128)),
        Region("a dog", box=(256, 0, 384, 128)),
        Region("a cat", box=(96, 0, 160, 64), negative_prompt="blurry"),
    ]
    kwargs = dict(
        height=128, width=384, background="a beach", regions=regions, bootstrap_steps=bootstrap_steps,
        num_inference_steps=2, latents=noise((1, 4, 16, 48), seed=4), output_type="latent", window=16, stride=8,
        view_batch_size=6,
    )  # fmt: skip
    shared = md16.regions(**kwargs, generator=torch.Generator().manual_seed(0))
    md16.share_unconditional = False
    try:
        plain = md16.regions(**kwargs, generator=torch.Generator().manual_seed(0))
    finally:
        md16.share_unconditional = True
    torch.testing.assert_close(shared.images, plain.images, rtol=1e-5, atol=1e-5)
    assert shared.stats.jobs == plain.stats.jobs and shared.stats.model_calls == plain.stats.model_calls
    assert plain.stats.evaluations == 2 * plain.stats.jobs
    # per step: each of the 5 windows needs one ε_u for the beach, ball and dog prompts together
    # (when their crops are the model's input as they are), and the cat its own (another negative)
    layout = md16.region_layout(128, 384, "a beach", regions)
    jobs = layout.jobs(grid_views(16, 48, (16, 16), (8, 8)))
    views = {job.view for job in jobs}
    cat_views = {job.view for job in jobs if job.prompt == 3}
    per_step = len(jobs) + len(views) + len(cat_views)
    if bootstrap_steps == 0:
        assert shared.stats.evaluations == 2 * per_step
    else:  # the first step's foreground crops are composites: more rows, still fewer than 2 per job
        assert 2 * per_step < shared.stats.evaluations < plain.stats.evaluations


def test_layout_background_is_the_complement_of_the_union_and_weights_scale():
    a = torch.zeros(64, 64)
    a[:, :40] = 1
    b = torch.zeros(64, 64)
    b[:, 24:] = 128 / 255  # masks are kept as 8 bits until the latent grid
    layout = region_layout([Region("a", mask=a), Region("b", mask=b, weight=3.0)], 64, 64, 8, "bg")
    assert layout.prompts == ["bg", "a", "b"]
    ma, mb = F.avg_pool2d(a[None], 8)[0], F.avg_pool2d(b[None], 8)[0]
    torch.testing.assert_close(layout.masks[0], (1 - ma - mb).clamp(0, 1))
    torch.testing.assert_close(layout.weights[2], 3 * mb)
    torch.testing.assert_close(layout.masks[2], mb)
    assert layout.region_index(0) is None and layout.region_index(2) == 1
    assert layout.negative_prompts("ugly") == ["ugly"] * 3
    assert layout.guidance_scales(7.5) == [7.5] * 3
    torch.testing.assert_close(layout.shares().sum(0), torch.ones(8, 8))


def test_no_background_is_fine_when_regions_cover_the_canvas(md16):
    regions = [Region("sky", box=(0.0, 0.0, 1.0, 0.5)), Region("sea", box=(0.0, 0.5, 1.0, 1.0))]
    out = md16.regions(128, 128, None, regions, num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 128, 128, 3) and np.isfinite(out.images).all()
    assert out.stats.jobs == 2 * 2
    assert out.parameters["background"] is None


def test_uncovered_pixels_without_background_are_an_error(md16):
    with pytest.raises(
        ValueError, match=r"no background prompt, but 50.0% of the canvas \(in x 64..128, y 0..128 px\)"
    ):
        md16.regions(128, 128, None, [Region("sky", box=(0, 0, 64, 128))], num_inference_steps=2)
    with pytest.raises(ValueError, match=r"regions: give at least one region or a background prompt"):
        md16.regions(128, 128, None, [], num_inference_steps=2)


def test_bad_layouts_are_errors_that_name_the_region(md16):
    box = (0, 0, 64, 64)

    def run(regions, **kwargs):
        md16.regions(128, 128, "bg", regions, num_inference_steps=2, output_type="latent", **kwargs)

    with pytest.raises(
        ValueError, match=r"regions\[0\].mask is 64x32 pixels \(aspect 2.000\) but the canvas is 128x128"
    ):
        run([Region("a", mask=torch.ones(32, 64))])
    with pytest.raises(ValueError, match=r"regions\[1\].mask is empty"):
        run([Region("a", box=box), Region("b", mask=np.zeros((128, 128)))])
    with pytest.raises(ValueError, match=r"regions\[0\].box \(0, 0, 200, 64\) leaves the 128x128 canvas"):
        run([Region("a", box=(0, 0, 200, 64))])
    with pytest.raises(ValueError, match=r"regions\[0\] \('a'\) needs a mask or a box"):
        run([Region("a")])
    with pytest.raises(ValueError, match=f"at most {MAX_REGIONS} regions per canvas, got {MAX_REGIONS + 1}"):
        run([Region(f"r{i}", box=box) for i in range(MAX_REGIONS + 1)])
    with pytest.raises(ValueError, match="bootstrap_steps must be an integer from 0 to 2, got 3"):
        run([Region("a", box=box)], bootstrap_steps=3)
    with pytest.raises(ValueError, match=r"regions\[0\] has unknown fields \['colour'\]"):
        run([{"prompt": "a", "box": box, "colour": "red"}])
    with pytest.raises(ValueError, match="regions must be a list of Region"):
        run(Region("a", box=box))


def test_region_fields_are_checked_when_made():
    with pytest.raises(ValueError, match=r"box .* x1 > x0"):
        Region("a", box=(10, 0, 10, 5))
    with pytest.raises(ValueError, match=r"box .* x1 > x0"):
        Region("a", box=(0.5, 0.1, 0.2, 0.9))
    with pytest.raises(ValueError, match="floats are fractions of the canvas"):
        Region("a", box=(0.0, 0.0, 64.0, 64.0))
    with pytest.raises(ValueError, match="box must be 4 numbers"):
        Region("a", box=(0, 0, 1))
    with pytest.raises(ValueError, match="give one of them, not both"):
        Region("a", mask=np.ones((8, 8)), box=(0, 0, 1, 1))
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        Region("", box=(0, 0, 1, 1))
    with pytest.raises(ValueError, match="weight must be a number > 0, got 0"):
        Region("a", box=(0, 0, 1, 1), weight=0)
    with pytest.raises(ValueError, match="feather must be a number of pixels from 0 to 1024, got -1"):
        Region("a", box=(0, 0, 1, 1), feather=-1)


def test_bootstrapping_composes_model_inputs_only_for_foreground_jobs():
    layout = region_layout([Region("a", box=(0, 0, 64, 128))], 128, 128, 8, "bg")
    views = grid_views(16, 16, (16, 16), (2, 2))
    scheduler = EulerDiscreteScheduler()  # scale_model_input is not the identity
    scheduler.set_timesteps(4)
    t = scheduler.timesteps[1]
    initial = noise((1, 4, 16, 16), seed=4)
    x = scheduler.scale_model_input(noise((1, 4, 16, 16), seed=5), t)
    bg = torch.full((3, 4, 16, 16), 0.25)
    backgrounds = BootstrapBackgrounds(torch.rand(3, 3), bg, torch.zeros((2, 1, 1, 1), dtype=torch.long))
    compose = bootstrap_composer(layout, views, backgrounds, initial, scheduler)(1, t)
    jobs = layout.jobs(views)
    out = compose(torch.cat([x, x]), jobs)
    assert torch.equal(out[:1], x)  # the background's job: untouched
    torch.testing.assert_close(out[1:, ..., :8], x[..., :8])  # inside the region: the canvas
    outside = scheduler.scale_model_input(scheduler.add_noise(bg[:1], initial, t.reshape(1)), t)
    torch.testing.assert_close(out[1:, ..., 8:], outside[..., 8:])  # outside: the noised background
    assert bootstrap_composer(layout, views, backgrounds, initial, scheduler)(2, t) is None  # after 2 steps


def test_backgrounds_are_drawn_from_the_generator(sd16):
    a = draw_backgrounds(
        sd16.vae, steps=30, views=3, regions=2, images=2, size=(16, 8), generator=torch.Generator().manual_seed(1)
    )
    b = draw_backgrounds(
        sd16.vae, steps=30, views=3, regions=2, images=2, size=(16, 8), generator=torch.Generator().manual_seed(1)
    )
    assert a.colours.shape == (MAX_COLOURS, 3) and a.latents.shape == (MAX_COLOURS, 4, 16, 8)
    assert a.picks.shape == (30, 3, 2, 2) and int(a.picks.max()) < MAX_COLOURS
    assert torch.equal(a.picks, b.picks) and torch.equal(a.latents, b.latents)
    assert a.get(4, 1, 0, (8, 8)).shape == (2, 4, 8, 8)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_bootstrapping_runs_with_every_named_scheduler(md16, name):
    out = md16.regions(
        128,
        128,
        "a beach",
        ball_and_dog(128, 128),
        bootstrap_steps=2,
        num_inference_steps=3,
        scheduler=name,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(out.images).all()


def test_view_batching_leaves_bootstrapped_regions_unchanged(md16):
    outs = [
        md16.regions(
            128,
            256,
            "a beach",
            ball_and_dog(128, 256),
            bootstrap_steps=2,
            num_inference_steps=3,
            latents=noise((1, 4, 16, 32), seed=6),
            generator=torch.Generator().manual_seed(1),
            view_batch_size=b,
            output_type="latent",
        ).images
        for b in (1, 100)
    ]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=5e-5)  # batched convolutions round differently


def test_circular_regions_are_equivariant_to_rolling(md16):
    regions = ball_and_dog(128, 384)
    kwargs = dict(bootstrap_steps=0, num_inference_steps=2, output_type="latent", circular=True, window=16, stride=4)
    latents = noise((1, 4, 16, 48), seed=7)
    base = md16.regions(128, 384, "a beach", regions, latents=latents.clone(), **kwargs).images
    shift = 8  # latent pixels: two strides
    rolled_regions = [Region(r.prompt, mask=torch.roll(r.pixel_mask(128, 384), shift * 8, dims=-1)) for r in regions]
    rolled = md16.regions(
        128, 384, "a beach", rolled_regions, latents=torch.roll(latents, shift, dims=-1), **kwargs
    ).images
    torch.testing.assert_close(rolled, torch.roll(base, shift, dims=-1), rtol=1e-4, atol=1e-4)


def test_parameters_hold_the_whole_scene_and_regenerate_it(md16, tmp_path):
    mask = tmp_path / "ball.png"
    from PIL import Image

    m = np.zeros((128, 128), dtype=np.uint8)
    m[30:90, 20:100] = 255
    Image.fromarray(m).save(mask)
    regions = [Region("a red ball", mask=mask, feather=3), Region("a dog", box=(0.5, 0.1, 0.9, 0.9), weight=1.5)]
    kwargs = dict(num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="latent")
    out = md16.regions(128, 128, "a beach", regions, negative_prompt="blurry", **kwargs)
    params = out.parameters
    assert params["task"] == "regions" and params["background"] == "a beach" and params["bootstrap_steps"] == 1
    assert params["regions"][0]["mask"].startswith("data:image/png;base64,")
    assert params["regions"][1] == {"prompt": "a dog", "box": [0.5, 0.1, 0.9, 0.9], "weight": 1.5}
    mask.unlink()  # the metadata does not need the file
    again = md16.regions(
        params["height"],
        params["width"],
        params["background"],
        params["regions"],
        negative_prompt=params["negative_prompt"],
        bootstrap_steps=params["bootstrap_steps"],
        num_inference_steps=params["num_inference_steps"],
        generator=torch.Generator().manual_seed(params["seed"]),
        output_type="latent",
    )
    torch.testing.assert_close(again.images, out.images, rtol=0, atol=0)


def test_default_canvas_is_the_native_size_one_view_per_prompt(md16):
    ball = Region("a ball", box=(0.25, 0.25, 0.75, 0.75))
    out = md16.regions(background="a beach", regions=[ball], num_inference_steps=2, output_type="latent")
    assert out.images.shape == (1, 4, 16, 16)
    assert out.stats.jobs == 2 * 2 and out.parameters["bootstrap_steps"] == 1  # 40 % of 2 steps, rounded


def test_preview_tints_each_prompt_and_validates(md16):
    layout = md16.region_layout(128, 256, "a beach", ball_and_dog(128, 256))
    image = layout.preview()
    assert image.size == (256, 128)
    assert image.getpixel((2, 126)) == BACKGROUND_TINT
    assert image.getpixel((20, 40)) == PALETTE[0]  # inside the ball's mask, away from its label
    assert image.getpixel((240, 112)) == PALETTE[1]
    assert layout_preview(ball_and_dog(128, 256), 128, 256, "a beach").size == (256, 128)
    with pytest.raises(ValueError, match="no background prompt"):
        layout_preview([Region("a", box=(0, 0, 8, 8))], 64, 64)
