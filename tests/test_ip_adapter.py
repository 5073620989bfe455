"""IP-Adapter as a conditioning plug-in: equal to diffusers at one view, every view of a panorama
sees the image, in a region layout only that region's rows do. Tiny random adapters written in
diffusers' file format (tests/ip_adapter_fixtures.py); fresh pipelines, since loading an IP-Adapter
changes the UNet's attention processors."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch
from PIL import Image

from devtools.components import tiny_sd_pipeline, tiny_sdxl_pipeline
from multidiffusion import MultiDiffusion, Region
from multidiffusion.conditionings.ip_adapter import load
from multidiffusion.conditionings.ip_adapter_rows import IPAdapterConditioning
from multidiffusion.engine.conditioning import ModelCall
from multidiffusion.engine.fusion import Job
from multidiffusion.engine.views import View
from multidiffusion.files.metadata import read_settings
from multidiffusion.files.scene import load_scene

from .conftest import noise
from .ip_adapter_fixtures import reference_image, write_ip_adapter

WEIGHTS = "ip-adapter.safetensors"


def _loaded(make, folder, subfolder="models"):
    pipe = make(sample_size=16)
    write_ip_adapter(folder, pipe.unet, subfolder=subfolder, weight_name=WEIGHTS)
    md = MultiDiffusion(pipe)
    md.set_progress_bar_config(disable=True)
    md.load_ip_adapter(str(folder), subfolder=subfolder, weight_name=WEIGHTS)
    return md


@pytest.fixture(scope="module")
def sd_ip(tmp_path_factory):
    """A tiny SD with a tiny IP-Adapter loaded through MultiDiffusion (diffusers' loader underneath)."""
    return _loaded(tiny_sd_pipeline, tmp_path_factory.mktemp("ip-sd"))


@pytest.fixture(scope="module")
def sdxl_ip(tmp_path_factory):
    return _loaded(tiny_sdxl_pipeline, tmp_path_factory.mktemp("ip-sdxl"), subfolder="sdxl_models")


class ImageEmbedsSpy:
    """Records ``added_cond_kwargs["image_embeds"]`` (and the batch size) of every UNet call."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.calls.append((sample.shape[0], (kwargs.get("added_cond_kwargs") or {}).get("image_embeds")))

    def close(self):
        self.handle.remove()


def _one_view_args(**kwargs):
    """A native-size canvas (one view), fixed latents and generator: arguments of ``md.panorama``
    and of the diffusers pipeline alike."""
    latents, generator = noise((1, 4, 16, 16), seed=1), torch.Generator().manual_seed(0)
    common = dict(height=128, width=128, num_inference_steps=3, output_type="latent")
    return {**common, "latents": latents, "generator": generator, **kwargs}


def _one_view(md, **kwargs):
    return md.panorama("a red house", **_one_view_args(**kwargs)).images


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_one_view_equals_the_diffusers_pipeline_with_the_same_ip_adapter(family, sd_ip, sdxl_ip):
    md = sd_ip if family == "sd" else sdxl_ip
    image = reference_image(1)
    md.set_ip_adapter_scale(0.6)
    try:
        expected = md.pipe("a red house", **_one_view_args(ip_adapter_image=image)).images
        got = _one_view(md, ip_adapter_image=image)
        embeds = md.pipe.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)  # [negative; positive]
        from_embeds = _one_view(md, ip_adapter_image_embeds=embeds)
        without = _one_view(md, ip_adapter_image=reference_image(2))
    finally:
        md.set_ip_adapter_scale(1.0)
    assert (got - expected).abs().max().item() <= 1e-4
    assert torch.equal(from_embeds, got)
    assert (without - expected).abs().max().item() > 1e-2  # the image matters


def test_a_call_scale_overrides_the_set_scale_for_that_call_only(sd_ip, md16):
    image = reference_image(1)
    sd_ip.set_ip_adapter_scale(0.0)
    try:
        off = _one_view(sd_ip, ip_adapter_image=image)
        on = _one_view(sd_ip, ip_adapter_image=image, ip_adapter_scale=0.8)
        after = _one_view(sd_ip, ip_adapter_image=image)
    finally:
        sd_ip.set_ip_adapter_scale(1.0)
    without = _one_view(md16)  # the same tiny SD (same seed), no IP-Adapter loaded
    torch.testing.assert_close(off, without, rtol=0, atol=1e-5)
    assert (on - off).abs().max().item() > 1e-2
    torch.testing.assert_close(after, off, rtol=0, atol=0)


def test_a_call_without_an_image_runs_as_the_model_without_ip_adapter(sd_ip, md16):
    # diffusers' UNet refuses a call without image embeddings once an IP-Adapter is loaded; here the
    # rows get zero image tokens, which add exactly nothing
    torch.testing.assert_close(_one_view(sd_ip), _one_view(md16), rtol=0, atol=1e-5)


def test_an_image_without_an_ip_adapter_is_refused_by_name(md16):
    with pytest.raises(ValueError, match="ip_adapter_image: this model has no IP-Adapter loaded"):
        _one_view(md16, ip_adapter_image=reference_image())
    with pytest.raises(ValueError, match="ip_adapter_scale must be a number from 0 to 10"):
        _one_view(md16, ip_adapter_image=reference_image(), ip_adapter_scale=-1)
    with pytest.raises(ValueError, match="is a pickle"):
        md16.load_ip_adapter("somewhere", subfolder="models", weight_name="ip-adapter_sd15.bin")


def test_every_view_of_a_panorama_sees_the_image(sd_ip):
    spy = ImageEmbedsSpy(sd_ip.pipe.unet)
    try:
        out = sd_ip.panorama(
            "a lake",
            height=128,
            width=256,
            num_inference_steps=2,
            latents=noise((1, 4, 16, 32), seed=3),
            output_type="latent",
            ip_adapter_image=reference_image(1),
            stride=8,
            view_batch_size=2,
        )
    finally:
        spy.close()
    assert len(spy.calls) == out.stats.model_calls > 2
    for rows, embeds in spy.calls:
        assert isinstance(embeds, list) and embeds[0].shape[0] == rows  # every row has its embedding
        cond = embeds[0][rows // 2 :]
        assert cond.abs().sum(-1).min() > 0  # the conditional rows see the image (the negative is zeros)
    assert "ip_adapter_image" in out.parameters


def test_gated_rows_get_exactly_no_image_term(sd_ip):
    """Rows of a prompt slot without an image (slot 0) give the UNet's output at IP-Adapter scale 0
    bit for bit; rows of the slot with one (slot 1) the output with its embedding."""
    adapter, unet = sd_ip.adapter, sd_ip.pipe.unet
    embeds = sd_ip.pipe.prepare_ip_adapter_image_embeds(reference_image(1), None, "cpu", 1, True)[0]
    image = [(embeds[:1], embeds[1:])]
    conditioning = IPAdapterConditioning([None, image], batch=1)
    jobs = [Job(View(0, 0, 16, 16), 0), Job(View(0, 0, 16, 16), 1)]
    x, t = noise((4, 4, 16, 16), seed=5), torch.tensor(500)
    text = noise((4, 32, 32), seed=6)  # rows: unconditional of jobs 0, 1; conditional of jobs 0, 1
    kwargs = conditioning.model_inputs(ModelCall(adapter, x, t, jobs, {}, guided=True, step=0, steps=1))
    with torch.no_grad(), conditioning.attached(adapter):
        gated = unet(x, t, text, **kwargs).sample
    plain = [embeds[:1], embeds[:1], embeds[1:], embeds[1:]]
    with torch.no_grad():
        seeing = unet(x, t, text, added_cond_kwargs={"image_embeds": [torch.cat(plain)]}).sample
        sd_ip.set_ip_adapter_scale(0.0)
        try:
            blind = unet(x, t, text, added_cond_kwargs={"image_embeds": [torch.cat(plain)]}).sample
        finally:
            sd_ip.set_ip_adapter_scale(1.0)
    assert conditioning.rows_seen == 2 and not conditioning.shares_unconditional
    assert torch.equal(gated[[0, 2]], blind[[0, 2]])  # slot 0: no IP-Adapter term at all
    assert torch.equal(gated[[1, 3]], seeing[[1, 3]])  # slot 1: its image (negative embedding unconditional)
    assert (seeing[[0, 2]] - blind[[0, 2]]).abs().max() > 1e-2  # the image term is not small by chance


@pytest.mark.parametrize("canvas_image", [False, True])
def test_in_a_region_layout_only_that_regions_rows_see_its_image(sd_ip, canvas_image):
    """A panorama-sized region layout, one step: outside the region only the background's jobs have
    weight, so the latents there are those of the same layout with no region image; inside they move.
    With a canvas image too, the background sees that one and the region its own."""

    def run(image):
        region = Region("a dog", box=(0, 0, 64, 128), ip_adapter_image=image)
        return sd_ip.regions(
            height=128,
            width=256,
            background="a field",
            regions=[region],
            bootstrap_steps=0,
            stride=8,
            num_inference_steps=1,
            latents=noise((1, 4, 16, 32), seed=7),
            output_type="latent",
            ip_adapter_image=reference_image(3) if canvas_image else None,
        ).images

    with_image, without = run(reference_image(1)), run(None)
    inside, outside = (slice(None), slice(None), slice(None), slice(0, 8)), (..., slice(10, 32))
    torch.testing.assert_close(with_image[outside], without[outside], rtol=0, atol=1e-5)
    assert (with_image[inside] - without[inside]).abs().max().item() > 1e-2


def test_results_record_the_images_and_a_scene_file_gives_the_same_result(sd_ip, tmp_path):
    """The call's image and a region's are recorded as input images are (path and SHA-256), with
    the call's scale; a scene file naming the same files runs the same layout to the same latents."""
    reference_image(1).save(tmp_path / "style.png")
    reference_image(2).save(tmp_path / "dog.png")
    sha = {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in ("style.png", "dog.png")}
    settings = dict(height=128, width=128, num_inference_steps=1, bootstrap_steps=0, output_type="latent")
    region = Region("a dog", box=(0, 0, 64, 128), ip_adapter_image=str(tmp_path / "dog.png"))
    image = str(tmp_path / "style.png")
    out = sd_ip.regions(
        background="a field", regions=[region], ip_adapter_image=image, ip_adapter_scale=0.5, **settings
    )
    assert out.parameters["ip_adapter_image"] == {"path": image, "sha256": sha["style.png"]}
    assert out.parameters["ip_adapter_scale"] == 0.5
    assert out.parameters["regions"][0]["ip_adapter_image"]["sha256"] == sha["dog.png"]
    (tmp_path / "scene.toml").write_text(
        'task = "regions"\nbackground = "a field"\nip_adapter_image = "style.png"\nip_adapter_scale = 0.5\n'
        + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in settings.items() if k != "output_type")
        + '[[regions]]\nprompt = "a dog"\nbox = [0, 0, 64, 128]\nip_adapter_image = "dog.png"\n'
    )
    scene = load_scene(tmp_path / "scene.toml")
    scene.options.output_type = "latent"
    again = sd_ip.generate(scene.options, generator=torch.Generator().manual_seed(0), latents=noise((1, 4, 16, 16)))
    first = sd_ip.regions(
        background="a field",
        regions=[region],
        ip_adapter_image=image,
        ip_adapter_scale=0.5,
        generator=torch.Generator().manual_seed(0),
        latents=noise((1, 4, 16, 16)),
        **settings,
    )
    torch.testing.assert_close(again.images, first.images, rtol=0, atol=0)
    assert again.parameters["regions"][0]["ip_adapter_image"] == first.parameters["regions"][0]["ip_adapter_image"]


def test_the_command_lines_loading_flags_load_the_adapter(tmp_path):
    """ip_adapter.load: what --ip-adapter, --ip-adapter-subfolder and --ip-adapter-weight-name give
    (a typed folder here), as the command line hands it over; a subfolder alone is refused."""
    md = MultiDiffusion(tiny_sd_pipeline(sample_size=16))
    write_ip_adapter(tmp_path / "adapter", md.pipe.unet, subfolder="models", weight_name=WEIGHTS)
    with pytest.raises(ValueError, match="--ip-adapter-subfolder: name the IP-Adapter too"):
        load(md, {"subfolder": "models"})
    load(md, {"pretrained_model_name_or_path_or_dict": str(tmp_path / "adapter"), "subfolder": "models",
              "weight_name": WEIGHTS})  # fmt: skip
    assert md.pipe.unet.config.encoder_hid_dim_type == "ip_image_proj"
    assert md.ip_adapter_files[0]["file"] == WEIGHTS and len(md.ip_adapter_files[0]["sha256"]) == 64


@pytest.mark.parametrize("task", ["img2img", "inpaint", "outpaint", "upscale"])
def test_every_image_task_takes_the_image(sd_ip, task):
    picture = reference_image(4, size=128)
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 32, 96, 96))
    call = {
        "img2img": lambda **kw: sd_ip.img2img(picture, "a lake", strength=0.5, **kw),
        "inpaint": lambda **kw: sd_ip.inpaint(picture, mask, "a lake", strength=0.75, **kw),
        "outpaint": lambda **kw: sd_ip.outpaint(picture, "a lake", right=64, **kw),
        "upscale": lambda **kw: sd_ip.upscale(picture.resize((64, 64)), prompt="a lake", scale=2, strength=0.5, **kw),
    }[task]

    def run(image):
        generator = torch.Generator().manual_seed(0)
        return call(num_inference_steps=2, output_type="latent", generator=generator, ip_adapter_image=image)

    plain, seeing = run(None), run(reference_image(1))
    assert seeing.parameters["ip_adapter_image"] == {"path": None, "sha256": None}
    assert (seeing.images - plain.images).abs().max().item() > 1e-3


def test_a_png_round_trip_makes_the_same_image_with_the_image_given_again(sd_ip, tmp_path):
    """Saved, read back (as --from does): the scale comes back, the image is a record of its file
    that is read only when given again (same SHA-256); the same settings make the same pixels."""
    reference_image(1).save(tmp_path / "style.png")
    style = str(tmp_path / "style.png")
    out = sd_ip.panorama(
        "a lake", height=128, width=128, num_inference_steps=2, ip_adapter_image=style, ip_adapter_scale=0.7,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    (png,) = out.save(tmp_path / "out.png")
    stored = read_settings(png)
    assert stored.values["ip_adapter_scale"] == 0.7 and stored.inputs["ip_adapter_image"]["path"] == style
    # which weights made it is recorded (file name and SHA-256) and never read back as a setting
    assert out.parameters["ip_adapter_files"] == sd_ip.ip_adapter_files and len(out.parameters["ip_adapter_files"])
    assert "ip_adapter_files" not in stored.values and "ip_adapter_files" not in stored.inputs
    with pytest.raises(ValueError, match="ip_adapter_image"):
        sd_ip.generate(stored.options())  # a stored record is never opened by itself
    again = sd_ip.generate(stored.options(ip_adapter_image=style))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(out.images[0]))


def test_weights_that_are_no_folder_file_or_repo_id_are_refused_by_name(md16, tmp_path):
    """Before diffusers reads anything: the source must be a folder holding a regular weights file
    (not a device behind a link, not missing) or a hub repo id; each refusal one line naming it."""
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "zero.safetensors").symlink_to("/dev/zero")
    cases = {
        ("/dev/zero", WEIGHTS): "'/dev/zero' is not a folder",
        (str(tmp_path / "adapter"), "zero.safetensors"): "no weights file 'zero.safetensors'",
        (str(tmp_path / "adapter"), WEIGHTS): f"no weights file '{WEIGHTS}'",
        ("../../x", WEIGHTS): "neither a folder nor a hub repo id",
    }
    for (source, name), message in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            md16.load_ip_adapter(source, weight_name=name)
    assert not getattr(md16, "ip_adapter_files", [])
