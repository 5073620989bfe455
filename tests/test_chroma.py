"""Chroma (ChromaPipeline, ChromaTransformer2DModel) on tiny random components built in-process (a
character T5 tokenizer, nothing downloaded): at one view equal to the diffusers pipeline (max abs
diff <= 1e-4), with and without classifier-free guidance and for img2img; panoramas and regions run."""

import numpy as np
import pytest
import torch
from diffusers import (
    ChromaImg2ImgPipeline,
    ChromaPipeline,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
)
from PIL import Image
from safetensors.torch import save_file

from devtools.dit_components import flow_vae, t5_encoder, t5_tokenizer
from multidiffusion import MultiDiffusion, Region
from multidiffusion.files.metadata import read_settings
from multidiffusion.models.files import ModelNotFoundError
from multidiffusion.models.flux import pack_latents, unpack_latents
from multidiffusion.models.transformer_file import default_dit_config, dit_family

from .family_checks import the_other_tasks_run
from .test_scene import run_cli

STEPS = 3
H = W = 16  # latent pixels: 128 px, the tiny model's native window
TEXT = 16  # T5 tokens


def tiny_chroma_pipeline(sample_size=H, seed=0):
    """A random ``ChromaPipeline``: a 2-layer (1 double-, 1 single-stream) transformer 32 wide,
    FLUX.1's VAE factors, a T5 of width 32, a dynamically shifted flow-matching scheduler."""
    tokenizer = t5_tokenizer(max_length=TEXT)
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, use_dynamic_shifting=True
    )
    pipe = ChromaPipeline(
        scheduler=scheduler,
        vae=flow_vae(seed=seed, sample_size=sample_size * 8),
        text_encoder=t5_encoder(tokenizer, d_model=32, seed=seed + 1),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.default_sample_size = sample_size
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def chroma():
    return tiny_chroma_pipeline()


@pytest.fixture(scope="module")
def md(chroma):
    md = MultiDiffusion(chroma, max_sequence_length=TEXT)
    md.set_progress_bar_config(disable=True)
    return md


def _latents(seed=0, h=H, w=W):
    return torch.randn((1, 16, h, w), generator=torch.Generator().manual_seed(seed))


def _reference(pipe, latents, steps=STEPS, **kwargs):
    out = pipe(
        height=H * 8,
        width=W * 8,
        num_inference_steps=steps,
        latents=pack_latents(latents),
        output_type="latent",
        max_sequence_length=TEXT,
        **kwargs,
    ).images
    return unpack_latents(out, H, W)


@pytest.mark.parametrize(
    ("guidance", "negative", "evaluations"),
    [(5.0, "blurry", 2), (4.0, None, 2), (1.0, None, 1)],
    ids=["cfg-negative", "cfg-empty-negative", "no-cfg"],
)
def test_one_view_equals_chroma_pipeline(chroma, md, guidance, negative, evaluations):
    """True CFG on guidance_scale > 1 with the negative prompt ("" when none), both branches in one
    call; none at 1; the T5 mask and the view's shift as the pipeline."""
    x = _latents(1)
    kwargs = dict(guidance_scale=guidance, negative_prompt=negative)
    expected = _reference(chroma, x, prompt="a red ball", **kwargs)
    got = md.panorama(
        "a red ball", height=H * 8, width=W * 8, num_inference_steps=STEPS, latents=x, output_type="latent", **kwargs
    )
    diff = (got.images - expected).abs().max()
    assert diff <= 1e-4, diff
    assert got.stats.evaluations == evaluations * STEPS and got.stats.model_calls == STEPS
    assert md.family == "chroma"
    assert got.parameters["positions"] == "view" and got.parameters["max_sequence_length"] == TEXT


def test_one_view_with_a_generator_and_the_defaults(chroma, md):
    """The noise drawn from the generator in diffusers' order (B, C, h, w, then packed); the pipeline's
    steps and guidance when unset are ChromaPipeline's (35, 5.0)."""
    assert md.adapter.sampling_defaults == (35, 5.0)
    kwargs = dict(negative_prompt="blurry", num_inference_steps=2, guidance_scale=5.0, output_type="latent")
    expected = chroma(
        "a lake",
        height=H * 8,
        width=W * 8,
        generator=torch.Generator().manual_seed(7),
        max_sequence_length=TEXT,
        **kwargs,
    ).images
    got = md.panorama("a lake", height=H * 8, width=W * 8, generator=torch.Generator().manual_seed(7), **kwargs)
    assert (got.images - unpack_latents(expected, H, W)).abs().max() <= 1e-4


def test_the_text_mask_matters(chroma, md):
    """Dropping the T5 mask changes the result, so the equivalence above checks it."""
    x = _latents(2)
    kwargs = dict(height=H * 8, width=W * 8, num_inference_steps=2, latents=x, output_type="latent")
    masked = md.panorama("a red ball", guidance_scale=1.0, **kwargs).images
    original = chroma.transformer.forward

    def unmasked(*args, attention_mask=None, **rest):
        return original(*args, **rest)

    chroma.transformer.forward = unmasked
    try:
        plain = md.panorama("a red ball", guidance_scale=1.0, **kwargs).images
    finally:
        del chroma.transformer.forward
    assert (masked - plain).abs().max() > 1e-4


def test_img2img_one_view_equals_chroma_img2img(chroma, md):
    reference = ChromaImg2ImgPipeline(**{k: v for k, v in chroma.components.items() if v is not None})
    reference.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(4)
    image = Image.fromarray(rng.integers(0, 256, (H * 8, W * 8, 3), dtype=np.uint8))
    kwargs = dict(strength=0.6, num_inference_steps=5, guidance_scale=4.0, output_type="latent")
    expected = reference(
        prompt="a lake",
        image=image,
        height=H * 8,
        width=W * 8,
        generator=torch.Generator().manual_seed(5),
        max_sequence_length=TEXT,
        **kwargs,
    ).images
    got = md.img2img(image, "a lake", generator=torch.Generator().manual_seed(5), **kwargs).images
    assert (got - unpack_latents(expected, H, W)).abs().max() <= 1e-4


def test_a_panorama_twice_the_native_width_covers_the_canvas(chroma, md):
    """Three views of the native size cover a canvas twice as wide; the schedule is shifted for the
    view's 64 tokens (the pipeline's at the native size), not for the canvas's 128."""
    seen = []
    out = md.panorama(
        "a lake",
        height=H * 8,
        width=2 * W * 8,
        window=W,
        stride=8,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        callback_on_step_end=lambda pipe, i, t, kw: seen.append(float(t)),
    )
    _reference(chroma, _latents(), prompt="a lake", steps=2)  # the pipeline at the view's size
    assert seen == pytest.approx(chroma.scheduler.timesteps.tolist(), abs=1e-4)
    canvas = type(chroma.scheduler).from_config(chroma.scheduler.config)
    md.adapter.set_timesteps(canvas, 2, "cpu", (H, 2 * W))
    assert canvas.timesteps[1] > seen[1] + 1  # the canvas's size would shift it more
    assert out.images.shape == (1, H * 8, 2 * W * 8, 3) and np.isfinite(out.images).all()
    assert out.stats.coverage >= 1.0
    assert out.stats.evaluations == 2 * 3 * 2  # CFG (default 5.0) x 3 views x 2 steps


def test_canvas_positions_differ_from_local_ones(chroma):
    x = _latents(3, w=2 * W)
    kwargs = dict(height=H * 8, width=2 * W * 8, window=W, stride=8, num_inference_steps=2, latents=x)
    outs = {}
    for positions in ("view", "canvas"):
        md = MultiDiffusion(chroma, max_sequence_length=TEXT, positions=positions)
        md.set_progress_bar_config(disable=True)
        outs[positions] = md.panorama("a lake", view_batch_size=3, output_type="latent", **kwargs)
    assert outs["view"].stats.model_calls == 2 and outs["canvas"].stats.model_calls == 2 * 3
    assert outs["canvas"].parameters["positions"] == "canvas"
    assert not torch.allclose(outs["view"].images, outs["canvas"].images)


def test_a_region_layout_runs(md):
    regions = [Region("a red ball", box=(0, 0, W * 8, H * 8))]  # the left half, in pixels
    out = md.regions(
        background="a beach",
        regions=regions,
        height=H * 8,
        width=2 * W * 8,
        window=W,
        stride=8,
        bootstrap_steps=1,
        num_inference_steps=2,
        output_type="latent",
    )
    assert out.images.shape == (1, 16, H, 2 * W) and torch.isfinite(out.images).all()


def test_options_of_other_families_and_controlnets_are_refused(chroma, md):
    with pytest.raises(ValueError, match=r"true_cfg_scale applies to FLUX\.1 models; this model is Chroma"):
        MultiDiffusion(chroma, true_cfg_scale=4.0)
    with pytest.raises(ValueError, match="positions must be one of 'view', 'canvas'"):
        MultiDiffusion(chroma, positions="global")
    with pytest.raises(ValueError, match="ControlNets are not supported for Chroma models yet"):
        md.adapter.adopt_controlnet(torch.nn.Linear(1, 1), "controlnet")


def test_other_tasks_and_the_png_round_trip(chroma, md, tmp_path, capsys):
    """Inpainting, outpainting, upscaling and the fast mode run through the same contract; a panorama saved by
    the command line from a Chroma folder is made again from its PNG with the same pixels."""
    the_other_tasks_run(md, H, W, 16)
    folder = tmp_path / "tiny-chroma"
    chroma.save_pretrained(folder)
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    args = ["--model", folder, "--steps", 2, "--width", 256, "--height", 128, "--seed", 3, "-q"]
    args += ["--max-sequence-length", TEXT, "--positions", "canvas"]
    code, _, err = run_cli(["panorama", "a lake at dawn", *args, "-o", first], capsys)
    assert code == 0, err
    stored = read_settings(first, "panorama")
    assert stored.model_options == {"positions": "canvas", "max_sequence_length": TEXT}
    code, _, err = run_cli(["panorama", "--from", first, "--model", folder, "-q", "-o", again], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))


def _shapes(*names):
    return {name: (2, 2) for name in names}


def test_single_file_chroma_transformers_are_told_from_flux(chroma, tmp_path, monkeypatch):
    """Chroma's files carry FLUX.1's double_blocks. too; its approximator's tensors make it Chroma,
    read by ChromaTransformer2DModel.from_single_file with the rest from Chroma1-HD or config=."""
    names = ("double_blocks.0.img_attn.qkv.weight", "distilled_guidance_layer.in_proj.bias")
    for prefix in ("", "model.diffusion_model."):
        shapes = _shapes(*(prefix + name for name in names))
        assert dit_family(shapes) == "chroma" and default_dit_config("chroma", shapes) == "lodestones/Chroma1-HD"
    assert dit_family(_shapes("double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight")) == "flux"
    path = tmp_path / "chroma-finetune.safetensors"
    save_file({name: torch.zeros(2, 2) for name in names}, path)
    with pytest.raises(ModelNotFoundError, match=r"single-file Chroma transformer.*lodestones/Chroma1-HD.*config="):
        MultiDiffusion.from_pretrained(path, device="cpu")
    calls = {}

    def transformer_from_file(cls, file, **kwargs):
        calls["transformer"] = (file, kwargs)
        return chroma.transformer

    def pipeline_from_pretrained(cls, source, **kwargs):
        calls["pipeline"] = (source, kwargs)
        return chroma

    monkeypatch.setattr(ChromaTransformer2DModel, "from_single_file", classmethod(transformer_from_file))
    monkeypatch.setattr(ChromaPipeline, "from_pretrained", classmethod(pipeline_from_pretrained))
    md = MultiDiffusion.from_pretrained(path, config="my-chroma-folder", device="cpu")
    assert md.family == "chroma"
    assert calls["transformer"][0] == str(path) and calls["transformer"][1]["config"] == "my-chroma-folder"
    source, kwargs = calls["pipeline"]
    assert source == "my-chroma-folder" and kwargs["transformer"] is chroma.transformer
