"""Region fusion at few steps (multidiffusion.regions.few_step): mask-centring bootstrapping and masks
quantized with the noise level. Off they change nothing; centring a centred mask is the identity;
quantized masks follow the threshold rule; both options are recorded and read back with --from."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from multidiffusion import Region
from multidiffusion.cli import main
from multidiffusion.engine.fusion import Job
from multidiffusion.engine.views import View
from multidiffusion.files.metadata import read_parameters
from multidiffusion.options import RegionsOptions
from multidiffusion.regions.few_step import centred_denoiser, centring_shift, noise_level, quantized_weights
from multidiffusion.regions.layout import region_layout

CENTRED = [Region("a red house", box=(32, 32, 96, 96))]  # latent 4..12 of 16: centroid 7.5, the view's centre
OFF_CENTRE = [Region("a red house", box=(0, 0, 48, 40))]
FEATHERED = [Region("a red house", box=(20, 20, 92, 100), feather=12)]


def _latents(seed=0):
    return torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(seed))


def _run(md, regions, **kwargs):
    out = md.regions(
        height=128, width=128, background="a beach", regions=regions, num_inference_steps=3, bootstrap_steps=2,
        latents=_latents(), generator=torch.Generator().manual_seed(1), output_type="latent", **kwargs,
    )  # fmt: skip
    return out.images, out.parameters


@pytest.mark.parametrize("regions", [OFF_CENTRE, FEATHERED])
def test_options_off_change_nothing_and_are_not_recorded(md16, regions):
    plain, params = _run(md16, regions)
    off, params_off = _run(md16, regions, bootstrap_centre=False, mask_schedule="soft")
    assert torch.equal(plain, off)
    assert "bootstrap_centre" not in params and "mask_schedule" not in params and params == params_off
    centred, _ = _run(md16, regions, bootstrap_centre=True)
    quantized, _ = _run(md16, regions, mask_schedule="quantized")
    assert not torch.equal(plain, centred)  # an off-centre box moves: the option does something
    if regions is FEATHERED:
        assert not torch.equal(plain, quantized)  # soft edges are sharpened


def test_centring_a_centred_mask_is_the_identity(md16):
    layout = region_layout(CENTRED, 128, 128, 8, "a beach")
    assert centring_shift(layout.masks[1]) == (0, 0)
    plain, _ = _run(md16, CENTRED)
    centred, params = _run(md16, CENTRED, bootstrap_centre=True)
    assert torch.equal(plain, centred)
    assert params["bootstrap_centre"] is True


def test_centring_a_centred_mask_under_pre_averaging_is_the_identity(md16):
    soft = [Region("a red house", box=(32, 32, 96, 96), feather=10)]  # symmetric: still centred, soft edges
    assert centring_shift(region_layout(soft, 128, 128, 8, "a beach").masks[1]) == (0, 0)
    averaged, _ = _run(md16, soft, pre_average=True)
    both, _ = _run(md16, soft, pre_average=True, bootstrap_centre=True)
    assert torch.equal(averaged, both)
    assert not torch.equal(averaged, _run(md16, soft)[0])  # pre-averaging acts on the soft edges


def test_centring_rolls_the_input_to_the_centre_and_the_output_back():
    layout = region_layout(OFF_CENTRE, 128, 128, 8, "a beach")  # latent rows 0..4, columns 0..5
    assert centring_shift(layout.masks[1]) == (6, 5)  # centroid (y 2, x 2.5) to (7.5, 7.5), rounded
    view = View(0, 0, 16, 16)
    jobs = [Job(view, 0, None), Job(view, 1, None)]
    seen = []

    def model(crops, t, jobs):
        seen.append(crops.clone())
        return crops * 2 + torch.arange(16.0).view(1, 1, 1, 16)  # not shift-equivariant in x

    crops = torch.randn(2, 4, 16, 16)
    out = centred_denoiser(layout)(model)(crops, torch.tensor(1.0), jobs)
    assert torch.equal(seen[0][0], crops[0])  # the background's job is not moved
    assert torch.equal(seen[0][1], torch.roll(crops[1], (6, 5), dims=(-2, -1)))
    assert torch.equal(out[0], model(crops, None, jobs)[0])
    expected = torch.roll(torch.roll(crops[1], (6, 5), (-2, -1)) * 2 + torch.arange(16.0), (-6, -5), (-2, -1))
    torch.testing.assert_close(out[1], expected, rtol=0, atol=0)


def test_quantized_masks_follow_the_threshold_rule_and_are_binary_at_the_last_step():
    layout = region_layout(FEATHERED, 128, 128, 8, "a beach")
    soft = layout.masks[1]
    assert bool(((soft > 0) & (soft < 1)).any())  # the layout really is soft
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(4)
    levels = [noise_level(scheduler, t) for t in scheduler.timesteps]
    alphas = scheduler.alphas_cumprod
    assert levels == [float((1 - alphas[int(t)]) ** 0.5) for t in scheduler.timesteps]
    assert levels == sorted(levels, reverse=True)  # the noise falls, the regions grow
    areas = []
    for level in levels:
        w = quantized_weights(layout, level)
        assert torch.equal(w[1], (soft / soft.max() > level).float())  # weight 1: W = M / max M thresholded
        assert bool(w[1].any())  # the peak always counts (a feathered peak is 254/255 < σ of t = 999)
        assert torch.equal(w[0], (1 - w[1]).clamp(0, 1))  # the background is the complement
        areas.append(int(w[1].sum()))
    last = quantized_weights(layout, levels[-1])
    assert set(last.unique().tolist()) <= {0.0, 1.0}
    assert areas == sorted(areas) and areas[0] < areas[-1]


def test_quantized_keeps_soft_weights_where_no_prompt_would_be_left():
    regions = [Region("left", box=(0, 0, 60, 128)), Region("right", box=(60, 0, 128, 128))]  # share column 7
    layout = region_layout(regions, 128, 128, 8)
    w = quantized_weights(layout, 0.9)
    assert torch.equal(w[:, :, 7], layout.weights[:, :, 7])  # 4/8 and 4/8 both below 0.9
    assert torch.equal(w[0, :, :7], torch.ones(16, 7))


def test_options_are_checked():
    with pytest.raises(ValueError, match="mask_schedule must be one of soft, quantized"):
        RegionsOptions(background="x", mask_schedule="binary", num_inference_steps=2)
    with pytest.raises(ValueError, match="bootstrap_centre must be True or False"):
        RegionsOptions(background="x", bootstrap_centre="yes", num_inference_steps=2)


def test_cli_records_the_options_and_from_reads_them_back(tiny_model_dir, tmp_path, capsys):
    first, again = tmp_path / "few.png", tmp_path / "again.png"
    flags = ["--steps", "2", "--height", "128", "--width", "128", "--seed", "2", "-q", "--model", str(tiny_model_dir)]
    layout = ["--background", "a beach", "--region", "a house", "--box", "20,20,92,100", "--feather", "12"]
    few = ["--bootstrap-centre", "--mask-schedule", "quantized", "--bootstrap-steps", "1"]
    assert main(["regions", *layout, *few, *flags, "-o", str(first)]) in (0, None), capsys.readouterr().err
    params = read_parameters(first)
    assert params["bootstrap_centre"] is True and params["mask_schedule"] == "quantized"
    assert main(["regions", "--from", str(first), "--model", str(tiny_model_dir), "-q", "-o", str(again)]) in (0, None)
    assert read_parameters(again)["mask_schedule"] == "quantized" and read_parameters(again)["bootstrap_centre"]
    np.testing.assert_array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
