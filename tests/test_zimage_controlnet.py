"""Z-Image ControlNet (``ZImageControlNetModel``) through the ControlNet conditioning: at one view equal
to diffusers' ZImageControlNetPipeline (max abs diff <= 1e-4) on tiny random components
(``devtools.zimage_components``); each view's ControlNet gets the canvas's control latents cropped at
its place; panoramas, regions, img2img and upscales take it; several nets sum their hints; folders and
single files load by class; ControlNets of another family are refused in one line.

The pipeline encodes the control image with the posterior's mode (``argmax``), ours with its mean:
the same for the VAE's diagonal Gaussian, so no VAE tweak is needed here.
"""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, MultiControlNetModel, ZImageControlNetModel, ZImageControlNetPipeline
from PIL import Image
from safetensors.torch import save_file

from devtools.dit_components import tiny_flux_controlnet, tiny_flux_pipeline
from devtools.zimage_components import tiny_zimage_controlnet, tiny_zimage_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.conditionings.controlnet_run import control_crop
from multidiffusion.engine.views import grid_views
from multidiffusion.files.metadata import read_parameters
from multidiffusion.models.controlnet import load_controlnet
from multidiffusion.vae.codec import encode_images

from .test_cli_images import pixels, run_fails, run_ok
from .test_dit_controlnet import _control_image, _latents

STEPS = 3
H = W = 16  # latent pixels: 128 px, the tiny model's native window
V2 = dict(control_in_dim=33, add_control_noise_refiner="control_noise_refiner")  # the 2.x nets' kind


@pytest.fixture(scope="module")
def zimage():
    """Two main blocks, so a ControlNet feeding blocks 0 and 1 has its hints used by both."""
    return tiny_zimage_pipeline(layers=2, seed=2)


@pytest.fixture(scope="module")
def net(zimage):
    return tiny_zimage_controlnet(zimage.transformer, seed=3)


def _md(pipe, **options):
    md = MultiDiffusion(pipe, max_sequence_length=64, **options)
    md.set_progress_bar_config(disable=True)
    return md


def _canvas_latents(pipe, image):
    """The control image as the pipeline encodes it: [-1, 1], (z - shift) * scale."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    return encode_images(pipe.vae, 2 * pixels - 1)


class ControlSpy:
    """Records the control context (the net's 4th argument: a list of (C, 1, h, w)) of each call."""

    def __init__(self, net):
        self.seen = []
        self.handle = net.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.seen.append(torch.stack([c.squeeze(1) for c in args[3]]).clone())

    def close(self):
        self.handle.remove()


@pytest.mark.parametrize("case", ["turbo", "guided", "v2"])
def test_one_view_equals_the_controlnet_pipeline(zimage, net, case):
    """Same latents and control image: our single view is the pipeline's image step for step, without
    guidance (Turbo), with guidance and a negative prompt (the net runs on both branches), and for a
    2.x net (33 control channels, zeros past the latents; its own noise refiner)."""
    if case == "v2":
        net = tiny_zimage_controlnet(zimage.transformer, seed=4, **V2)
    reference = ZImageControlNetPipeline(**zimage.components, controlnet=net)
    reference.set_progress_bar_config(disable=True)
    image, x = _control_image(seed=1), _latents(1)
    guidance = dict(guidance_scale=2.0, negative_prompt="blurry") if case == "guided" else dict(guidance_scale=0.0)
    common = dict(num_inference_steps=STEPS, controlnet_conditioning_scale=0.75, output_type="latent", **guidance)
    expected = reference(
        "a red ball",
        control_image=image,
        height=H * 8,
        width=W * 8,
        latents=x.clone(),
        max_sequence_length=64,
        **common,
    ).images
    md = _md(reference) if case == "turbo" else _md(zimage, controlnet=net)  # wrapped, or given
    got = md.panorama("a red ball", height=H * 8, width=W * 8, latents=x, control_image=image, **common)
    diff = (got.images - expected).abs().max().item()
    assert diff <= 1e-4, diff
    assert got.stats.controlnet_calls == STEPS  # one call per step: both branches in it when guided
    if case == "turbo":  # the ControlNet mattered
        common.pop("controlnet_conditioning_scale")
        plain = _md(zimage).panorama("a red ball", height=H * 8, width=W * 8, latents=x, **common)
        assert (plain.images - got.images).abs().max() > 1e-3


@pytest.mark.parametrize("positions", ["view", "canvas"])
def test_a_2x_panorama_gives_each_view_its_crop_of_the_control_latents(zimage, net, positions):
    """A 128 x 256 px panorama of 16-latent windows, stride 8: a finite image of the canvas's size,
    and the ControlNet of each view is given the canvas's control latents cropped at the view's
    latent offset (to float error: the encode is run twice). With canvas positions the net's rotary
    ids are moved for the call and put back after it, as the transformer's."""
    md = _md(zimage, controlnet=net, positions=positions)
    image = _control_image(width=2 * W * 8, seed=5)
    spy = ControlSpy(net)
    try:
        out = md.panorama(
            "a lake",
            height=H * 8,
            width=2 * W * 8,
            window=H,
            stride=W // 2,
            view_batch_size=1,
            control_image=image,
            num_inference_steps=1,
            guidance_scale=0.0,
            output_type="np",
        )
    finally:
        spy.close()
    assert out.images.shape == (1, H * 8, 2 * W * 8, 3) and np.isfinite(out.images).all()
    latents = _canvas_latents(zimage, image)
    views = grid_views(H, 2 * W, (H, W), (W // 2, W // 2))
    assert len(spy.seen) == len(views) == 3
    for view, seen in zip(views, spy.seen):
        assert (seen - control_crop(latents, view, 1)).abs().max() <= 1e-4
    assert "patchify_and_embed" not in vars(net) and "patchify_and_embed" not in vars(zimage.transformer)


def test_regions_img2img_and_upscale_take_the_controlnet(zimage, net):
    """A region's own control image conditions only its jobs; img2img follows its control image; an
    upscale with none conditions each view on its resized input (the Tile ControlNet convention)."""
    md = _md(zimage, controlnet=net)
    kwargs = dict(height=H * 8, width=W * 8, num_inference_steps=2, guidance_scale=0.0, output_type="latent")
    kwargs["latents"] = _latents(6)
    box = {"prompt": "a person", "box": (32, 32, 96, 128)}
    spy = ControlSpy(net)
    try:
        region = md.regions(background="a lake", regions=[{**box, "control_image": _control_image(seed=6)}], **kwargs)
    finally:
        spy.close()
    assert len(spy.seen) == 2 and spy.seen[0].shape[0] == 1  # the region's one row per step only
    plain = md.regions(background="a lake", regions=[box], **kwargs)
    assert (region.images - plain.images).abs().max() > 1e-3

    start = _control_image(seed=7)
    common = dict(strength=0.6, num_inference_steps=5, guidance_scale=0.0, output_type="latent")
    common["generator"] = torch.Generator().manual_seed(7)
    controlled = md.img2img(start, "a lake", control_image=_control_image(seed=8), **common)
    common["generator"] = torch.Generator().manual_seed(7)
    free = _md(zimage).img2img(start, "a lake", **common)
    assert controlled.stats.controlnet_calls == 3 and (controlled.images - free.images).abs().max() > 1e-3

    small = _control_image(width=W * 8, height=H * 4, seed=9)
    spy = ControlSpy(net)
    try:
        up = md.upscale(small, scale=2, window=H, stride=W // 2, view_batch_size=1, **{**common, "strength": 0.4})
    finally:
        spy.close()
    latents = _canvas_latents(zimage, small.resize((2 * W * 8, H * 8), Image.LANCZOS))
    views = grid_views(H, 2 * W, (H, W), (W // 2, W // 2))
    assert len(spy.seen) == 2 * len(views)  # strength 0.4 of 5 steps: 2 steps
    for view, seen in zip(views * 2, spy.seen):
        assert (seen - control_crop(latents, view, 1)).abs().max() <= 1e-4
    assert up.parameters["control_image"] == ["input"] and up.images.shape == (1, 16, H, 2 * W)


def test_several_controlnets_sum_their_hints_and_load_by_class(zimage, net, tmp_path):
    """Two copies of a net at scale s/2 each give the one net at s (hints are scale-linear and summed
    per block); a folder loads as a ZImageControlNetModel, two as a MultiControlNetModel (a list); a
    single .safetensors file of Z-Image ControlNet tensors is read as one, its config from diffusers'
    known repo (not reachable offline: refused in one line naming the class)."""
    fresh = tiny_zimage_controlnet(zimage.transformer, seed=3)  # the net's weights, not yet given shared modules
    folder = tmp_path / "zimage-controlnet"
    fresh.save_pretrained(folder)
    image, x = _control_image(seed=11), _latents(11)
    kwargs = dict(height=H * 8, width=W * 8, latents=x, num_inference_steps=2, guidance_scale=0.0, output_type="latent")
    one = _md(zimage, controlnet=str(folder)).panorama("a lake", control_image=image, **kwargs)
    two = _md(zimage, controlnet=[str(folder), str(folder)])
    assert type(two.adapter.controlnet) is MultiControlNetModel
    assert [type(n).__name__ for n in two.adapter.controlnets] == ["ZImageControlNetModel"] * 2
    halves = two.panorama("a lake", control_image=[image, image], controlnet_conditioning_scale=0.5, **kwargs)
    assert (halves.images - one.images).abs().max() <= 1e-4
    assert halves.stats.controlnet_calls == 2 * one.stats.controlnet_calls

    file = tmp_path / "z-image-controlnet.safetensors"
    save_file({k: v.contiguous() for k, v in fresh.state_dict().items()}, str(file))
    with pytest.raises(Exception, match=r"could not load z-image-controlnet.safetensors as a ZImageControlNetModel"):
        load_controlnet(str(file))
    original = ZImageControlNetModel.from_single_file.__func__
    try:  # with its config at hand (as from the hub's cache), the file loads with the folder's weights
        ZImageControlNetModel.from_single_file = classmethod(lambda cls, p, **kw: original(cls, p, config=str(folder)))
        loaded = load_controlnet(str(file))
    finally:
        del ZImageControlNetModel.from_single_file
    assert type(loaded) is ZImageControlNetModel
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), fresh.state_dict().values()))


def test_controlnets_of_another_family_are_refused_in_one_line(zimage, net, sd16):
    flux = tiny_flux_pipeline(sample_size=16)
    sd_net = ControlNetModel.from_unet(sd16.unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
    other = tiny_zimage_pipeline(seed=5)  # one main block
    cases = [
        (
            zimage,
            sd_net,
            "ControlNetModel is a ControlNet for SD 1.x/2.x or SDXL models, but the model loaded is Z-I",
        ),
        (zimage, tiny_flux_controlnet(flux.transformer), "FluxControlNetModel is a ControlNet for FLUX.1 models, but "),
        (flux, net, "ZImageControlNetModel is a ControlNet for Z-Image models, but the model loaded is FLUX.1"),
        (sd16, net, "ZImageControlNetModel is a ControlNet for Z-Image models, but the model loaded is SD 1.x/2.x"),
        (other, net, r"feeds blocks \[0, 1\] with 16 control channels, but the transformer has 1 blocks"),
        (zimage, tiny_zimage_controlnet(zimage.transformer, dim=32), r"made for another Z-Image model \(dim=32\)"),
    ]
    for pipe, wrong, says in cases:
        with pytest.raises(ValueError, match=says) as error:
            MultiDiffusion(pipe, controlnet=wrong)
        assert "\n" not in str(error.value)
    md = _md(zimage, controlnet=net)
    with pytest.raises(ValueError, match="guess_mode: ZIMAGE ControlNets have no guess mode"):
        md.panorama("a lake", height=H * 8, width=W * 8, control_image=_control_image(), guess_mode=True)


def test_the_command_line_runs_a_zimage_controlnet_folder(zimage, tmp_path, capsys):
    """`--controlnet FOLDER --control-image FILE` on a Z-Image folder: the image is made with the net
    (it differs from the run without) and records the control image and scale; a FLUX ControlNet
    folder is refused in one line (exit 2)."""
    model, net_dir, edges = tmp_path / "zimage", tmp_path / "controlnet", tmp_path / "edges.png"
    zimage.save_pretrained(model)
    tiny_zimage_controlnet(zimage.transformer, seed=12).save_pretrained(net_dir)
    _control_image(width=2 * W * 8, seed=12).save(edges)
    args = ["panorama", "a lake", "--model", model, "--width", 2 * W * 8, "--height", H * 8, "--steps", 2]
    args += ["--seed", 1, "--guidance", 0, "--max-sequence-length", 64, "-q"]
    first, plain = tmp_path / "first.png", tmp_path / "plain.png"
    run_ok([*args, "--controlnet", net_dir, "--control-image", edges, "--control-scale", 0.75, "-o", first], capsys)
    run_ok([*args, "-o", plain], capsys)
    assert Image.open(first).size == (2 * W * 8, H * 8)
    assert not np.array_equal(pixels(first), pixels(plain))
    params = read_parameters(first)
    assert params["controlnet_conditioning_scale"] == 0.75 and params["control_image"][0]["path"] == str(edges)
    flux_dir = tmp_path / "flux-controlnet"
    tiny_flux_controlnet(tiny_flux_pipeline(sample_size=16).transformer).save_pretrained(flux_dir)
    err = run_fails(
        [*args, "--controlnet", flux_dir, "--control-image", edges, "-o", tmp_path / "x.png"], capsys, tmp_path
    )
    assert "FluxControlNetModel is a ControlNet for FLUX.1 models, but the model loaded is Z-Image" in err
