"""FLUX.2 [dev] at one view equals diffusers' Flux2Pipeline (max abs diff <= 1e-4), and panoramas,
region layouts and the other tasks run, on tiny random components built in-process
(:mod:`devtools.flux2_components`: a 30-layer Mistral 3 text model 16 wide over a small Unigram
vocabulary with a chat template, a Flux2Transformer2DModel of width 32, an AutoencoderKLFlux2 with
random batch-norm statistics; nothing downloaded).

The pipeline's ``latents`` are patchified (B, 128, h/2, w/2) and its ``output_type="latent"`` is the
packed tokens (B, h/2 · w/2, 128); ours are the canvas in the VAE's layout (B, 32, h, w), so the
comparisons patchify our noise for it and unpack its tokens."""

import numpy as np
import pytest
import torch
from PIL import Image

from devtools.flux2_components import tiny_flux2_klein_pipeline, tiny_flux2_pipeline
from multidiffusion import MultiDiffusion, Region
from multidiffusion.files.metadata import read_settings
from multidiffusion.models.flux2 import Flux2Adapter, Flux2Latents, patchify, unpatchify
from multidiffusion.models.transformer_file import default_dit_config, dit_family
from multidiffusion.vae.codec import encode_images

from .family_checks import the_other_tasks_run
from .test_scene import run_cli

STEPS = 3
H = W = 16  # latent pixels: 128 px, the tiny model's native window
TOKENS = 64  # Mistral tokens: FLUX.2's system message and the chat template take ~40


@pytest.fixture(scope="module")
def flux2():
    return tiny_flux2_pipeline()


def _md(pipe, **options):
    md = MultiDiffusion(pipe, max_sequence_length=TOKENS, **options)
    md.set_progress_bar_config(disable=True)
    return md


def _latents(seed=0, h=H, w=W):
    return torch.randn((1, 32, h, w), generator=torch.Generator().manual_seed(seed))


def _reference(pipe, latents, **kwargs):
    """Flux2Pipeline from our canvas ``latents``, its packed result back in the VAE's layout."""
    tokens = pipe(
        height=latents.shape[-2] * 8,
        width=latents.shape[-1] * 8,
        latents=patchify(latents),
        output_type="latent",
        max_sequence_length=TOKENS,
        **kwargs,
    ).images
    b, _, h, w = latents.shape
    return unpatchify(tokens.transpose(1, 2).reshape(b, 128, h // 2, w // 2))


def test_one_view_equals_the_pipeline_with_embedded_guidance(flux2):
    x = _latents()
    kwargs = dict(num_inference_steps=STEPS, guidance_scale=2.5)
    expected = _reference(flux2, x, prompt="a red ball", **kwargs)
    got = _md(flux2).panorama("a red ball", height=H * 8, width=W * 8, latents=x, output_type="latent", **kwargs)
    assert got.images.shape == (1, 32, H, W)
    assert (got.images - expected).abs().max() <= 1e-4
    assert (got.images - x).abs().max() > 0.1  # it did denoise
    assert got.stats.evaluations == STEPS  # guidance is an input: no unconditional branch
    other = _md(flux2).panorama(
        "a red ball",
        height=H * 8,
        width=W * 8,
        latents=x,
        output_type="latent",
        num_inference_steps=STEPS,
        guidance_scale=6.0,
    )
    assert (other.images - got.images).abs().max() > 1e-3  # the scale reaches the transformer


def test_the_latent_format_is_the_pipelines_batch_norm_over_patches(flux2):
    """Decoding goes through the VAE's batch-norm statistics of the 2x2-patchified channels, as the
    pipeline decodes; encoding is its inverse (and the VAE's posterior mean, as the pipeline's
    ``_encode_vae_image``)."""
    fmt = Flux2Adapter(flux2).latent_format
    assert isinstance(fmt, Flux2Latents) and fmt.mean.abs().max() > 0.1  # the tiny VAE's statistics are not trivial
    x = _latents(2)
    bn = flux2.vae.bn
    expected = patchify(x) * torch.sqrt(bn.running_var + bn.eps).view(1, -1, 1, 1) + bn.running_mean.view(1, -1, 1, 1)
    torch.testing.assert_close(fmt.to_vae(x), unpatchify(expected))
    torch.testing.assert_close(fmt.from_vae(fmt.to_vae(x)), x, atol=1e-5, rtol=1e-5)
    image = torch.rand(1, 3, H * 8, W * 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ours = encode_images(flux2.vae, image, latent_format=fmt)
    theirs = flux2._encode_vae_image(image, generator=None)  # patchified, normalised, (1, 128, h/2, w/2)
    assert (patchify(ours) - theirs).abs().max() <= 1e-4
    image_pipe = flux2(
        prompt="a lake",
        latents=patchify(x),
        num_inference_steps=1,
        height=H * 8,
        width=W * 8,
        output_type="pt",
        max_sequence_length=TOKENS,
    ).images
    ours_pixels = (
        _md(flux2)
        .panorama("a lake", height=H * 8, width=W * 8, latents=x, num_inference_steps=1, output_type="pt")
        .images
    )
    assert (ours_pixels - image_pipe).abs().max() <= 1e-4  # the whole path, decode included


def test_img2img_equals_the_pipeline_from_the_same_noised_start(flux2):
    """diffusers 0.42 has no FLUX.2 img2img pipeline: ours is compared with Flux2Pipeline started from
    the same noised latents (the input encoded and noised to the first timestep that runs, with the
    same generator draws) on the same truncated schedule (its sigmas from the first that runs, μ of
    the full number of steps, which is how the shifted schedule of ``steps`` is cut by strength)."""
    steps, strength = 5, 0.6
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (H * 8, W * 8, 3), dtype=np.uint8))
    noise = _latents(5)
    md = _md(flux2)
    got = md.img2img(
        image,
        "a lake",
        strength=strength,
        num_inference_steps=steps,
        latents=noise,
        generator=torch.Generator().manual_seed(5),
        output_type="latent",
        guidance_scale=3.0,
    )
    assert got.stats.evaluations == 3  # strength 0.6 of 5 steps
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    z0 = encode_images(
        flux2.vae,
        pixels,
        generator=torch.Generator().manual_seed(5),
        sample=True,
        latent_format=md.adapter.latent_format,
    )
    scheduler = type(flux2.scheduler).from_config(flux2.scheduler.config)
    md.adapter.set_timesteps(scheduler, steps, "cpu", (H, W))
    start = steps - 3
    x_start = scheduler.scale_noise(z0, scheduler.timesteps[start : start + 1], noise)
    sigmas = np.linspace(1.0, 1 / steps, steps)[start:]
    expected = _reference(flux2, x_start, prompt="a lake", num_inference_steps=steps, sigmas=sigmas, guidance_scale=3.0)
    assert (got.images - expected).abs().max() <= 1e-4


def test_the_schedule_shift_comes_from_the_view_not_the_canvas(flux2):
    seen = []
    _md(flux2).panorama(
        "a lake",
        height=H * 8,
        width=4 * W * 8,
        window=H,
        stride=W // 2,
        num_inference_steps=STEPS,
        output_type="latent",
        callback_on_step_end=lambda md, i, t, kw: seen.append(float(t)),
    )
    _reference(flux2, _latents(), prompt="a lake", num_inference_steps=STEPS)  # the pipeline at the view's size
    assert seen == pytest.approx(flux2.scheduler.timesteps.tolist(), abs=1e-4)
    canvas = type(flux2.scheduler).from_config(flux2.scheduler.config)
    Flux2Adapter(flux2).set_timesteps(canvas, STEPS, "cpu", (H, 4 * W))  # what the whole canvas would get
    adapter = Flux2Adapter(flux2)
    assert adapter.shift_mu(H * W // 4, STEPS, {}) < adapter.shift_mu(H * 4 * W // 4, STEPS, {})
    assert canvas.timesteps[1] > seen[1] + 0.5


def test_a_two_view_panorama_and_canvas_positions(flux2):
    x = _latents(3, w=2 * W)
    kwargs = dict(height=H * 8, width=2 * W * 8, window=H, stride=W // 2, num_inference_steps=2, output_type="latent")
    local = _md(flux2).panorama("a lake", latents=x, view_batch_size=3, **kwargs)
    assert local.images.shape == (1, 32, H, 2 * W) and torch.isfinite(local.images).all()
    assert local.stats.coverage >= 1.0 and local.stats.jobs == 2 * 3  # 3 views of 16 at stride 8 across 32
    assert local.stats.model_calls == 2  # the three views in one call per step
    placed = _md(flux2, positions="canvas").panorama("a lake", latents=x, view_batch_size=3, **kwargs)
    assert placed.parameters["positions"] == "canvas" and local.parameters["positions"] == "view"
    assert (placed.images - local.images).abs().max() > 1e-3  # the views right of the first moved
    assert placed.stats.model_calls == 2 * 3  # one transformer call per view place (it reads one set of ids)
    one = dict(kwargs, width=W * 8)  # one view at (0, 0): the same ids either way
    assert torch.equal(
        _md(flux2, positions="canvas").panorama("a lake", latents=_latents(), **one).images,
        _md(flux2).panorama("a lake", latents=_latents(), **one).images,
    )


def test_a_region_layout_runs(flux2):
    out = _md(flux2).regions(
        background="a beach",
        regions=[Region("a red ball", box=(0, 0, W * 8, H * 8), guidance_scale=6.0)],
        height=H * 8,
        width=2 * W * 8,
        window=H,
        stride=W // 2,
        num_inference_steps=2,
        output_type="latent",
    )
    assert out.images.shape == (1, 32, H, 2 * W) and torch.isfinite(out.images).all()
    assert out.stats.jobs > 2 * 3  # the region's views run besides the background's
    images = (
        _md(flux2)
        .regions(
            background="a beach",
            regions=[Region("a red ball", box=(0.0, 0.0, 0.5, 1.0))],
            height=H * 8,
            width=2 * W * 8,
            window=H,
            stride=W // 2,
            num_inference_steps=1,
        )
        .images
    )
    assert images[0].size == (2 * W * 8, H * 8)


def test_the_family_is_recognised_with_its_defaults(flux2):
    md = _md(flux2)
    assert isinstance(md.adapter, Flux2Adapter) and md.family == "flux2"
    assert md.adapter.sampling_defaults == (50, 4.0)
    assert md.adapter.native_latent_size == (H, W)
    assert md.adapter.parameters() == {"positions": "view", "max_sequence_length": TOKENS}
    with pytest.raises(ValueError, match="max_sequence_length"):
        MultiDiffusion(flux2, max_sequence_length=0)
    with pytest.raises(ValueError, match="positions"):
        MultiDiffusion(flux2, positions="global")
    with pytest.raises(ValueError, match="true_cfg_scale applies to FLUX"):
        MultiDiffusion(flux2, true_cfg_scale=2.0)  # FLUX.1's option


def test_other_tasks_and_the_png_round_trip(flux2, tmp_path, capsys):
    """Inpainting, outpainting, upscaling and the fast mode run through the same contract; a panorama
    saved by the command line from a FLUX.2 folder is made again from its PNG with the same pixels."""
    the_other_tasks_run(_md(flux2), H, W, 32)
    folder = tmp_path / "tiny-flux2"
    flux2.save_pretrained(folder)
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    args = ["--model", folder, "--width", 256, "--height", 128, "--seed", 3, "--steps", 2, "-q"]
    args += ["--max-sequence-length", TOKENS, "--positions", "canvas"]
    code, _, err = run_cli(["panorama", "a lake at dawn", *args, "-o", first], capsys)
    assert code == 0, err
    stored = read_settings(first, "panorama")
    assert stored.model_options == {"positions": "canvas", "max_sequence_length": TOKENS}
    assert stored.values["guidance_scale"] == 4.0  # FLUX.2's default
    code, _, err = run_cli(["panorama", "--from", first, "--model", folder, "-q", "-o", again], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))


def test_pipelines_it_cannot_drive_are_refused_in_one_line(flux2):
    from diffusers import Flux2Pipeline

    from devtools.flux2_components import tiny_flux2_transformer

    with pytest.raises(ValueError, match=r"pipe must have a 'text_encoder' for this FLUX2 model"):
        MultiDiffusion(Flux2Pipeline(**{**flux2.components, "text_encoder": None}))
    wide = tiny_flux2_transformer()
    wide.register_to_config(in_channels=256)  # an image-conditioned variant's input
    with pytest.raises(ValueError, match=r"takes 256 input channels but FLUX2 text-to-image takes 128"):
        MultiDiffusion(Flux2Pipeline(**{**flux2.components, "transformer": wide}))


# diffusers' names -> BFL's: convert_flux2_transformer_checkpoint_to_diffusers undone
_BFL_NAMES = {
    "x_embedder.": "img_in.",
    "context_embedder.": "txt_in.",
    "time_guidance_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
    "time_guidance_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
    "time_guidance_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
    "time_guidance_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
    "modulation_img.linear.": "modulation_img.lin.",
    "modulation_txt.linear.": "modulation_txt.lin.",
    "single_stream_modulation.linear.": "single_stream_modulation.lin.",
    "proj_out.": "final_layer.linear.",
}
_BFL_DOUBLE = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.to_out.0.": "img_attn.proj.",
    "ff.linear_in.": "img_mlp.0.",
    "ff.linear_out.": "img_mlp.2.",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
    "attn.to_add_out.": "txt_attn.proj.",
    "ff_context.linear_in.": "txt_mlp.0.",
    "ff_context.linear_out.": "txt_mlp.2.",
}
_BFL_SINGLE = {
    "attn.to_qkv_mlp_proj.": "linear1.",
    "attn.to_out.": "linear2.",
    "attn.norm_q.weight": "norm.query_norm.scale",
    "attn.norm_k.weight": "norm.key_norm.scale",
}


def bfl_state_dict(transformer, prefix=""):
    """The transformer's weights as BFL's FLUX.2 files name them: double_blocks.* with fused q/k/v,
    single_blocks.*, .scale norms, the final modulation as (shift, scale)."""
    state, bfl = transformer.state_dict(), {}
    for name, tensor in state.items():
        if name.startswith("transformer_blocks."):
            _, index, rest = name.split(".", 2)
            if rest.startswith(("attn.to_k.", "attn.to_v.", "attn.add_k_proj.", "attn.add_v_proj.")):
                continue
            if rest.startswith(("attn.to_q.", "attn.add_q_proj.")):
                q = rest.split(".")[1]
                parts = [state[name.replace(q, q.replace("q", n))] for n in ("q", "k", "v")]
                side = "img" if q == "to_q" else "txt"
                name, tensor = f"double_blocks.{index}.{side}_attn.qkv.{rest.rsplit('.', 1)[1]}", torch.cat(parts)
            else:
                rest = next(rest.replace(d, b) for d, b in _BFL_DOUBLE.items() if rest.startswith(d))
                name = f"double_blocks.{index}.{rest}"
        elif name.startswith("single_transformer_blocks."):
            _, index, rest = name.split(".", 2)
            rest = next(rest.replace(d, b) for d, b in _BFL_SINGLE.items() if rest.startswith(d))
            name = f"single_blocks.{index}.{rest}"
        elif name.startswith("norm_out.linear."):
            scale, shift = tensor.chunk(2)
            name, tensor = (
                name.replace("norm_out.linear.", "final_layer.adaLN_modulation.1."),
                torch.cat([shift, scale]),
            )
        else:
            for ours, theirs in _BFL_NAMES.items():
                name = name.replace(ours, theirs)
        bfl[prefix + name] = tensor.clone().contiguous()
    return bfl


def test_single_file_transformers_load_as_the_folders(flux2, tmp_path):
    """A FLUX.2 transformer file (BFL's names or diffusers', the latter also under ComfyUI's prefix) is told by
    ``single_stream_modulation.`` (before FLUX.1's ``double_blocks.``, which BFL's files carry too)
    and read by Flux2Transformer2DModel.from_single_file with the rest from ``config=``: [dev] and
    [klein] (the folder's model_index picks the pipeline) each equal to the folder's model; without a
    config the variant is named by the text width of ``txt_in``."""
    from safetensors.torch import save_file

    for name in ("single_stream_modulation.lin.weight", "model.diffusion_model.single_stream_modulation.linear.weight"):
        assert dit_family({name: (2, 2), "double_blocks.0.img_attn.qkv.weight": (2, 2)}) == "flux2"
    for width, repo in ((7680, "FLUX.2-klein-4B"), (12288, "FLUX.2-klein-9B"), (15360, "FLUX.2-dev")):
        for key in ("txt_in.weight", "context_embedder.weight"):
            assert default_dit_config("flux2", {key: (3072, width)}) == f"black-forest-labs/{repo}"
    for pipe, family in ((flux2, "flux2"), (tiny_flux2_klein_pipeline(), "flux2_klein")):
        folder = tmp_path / family
        pipe.save_pretrained(folder)
        state = pipe.transformer.state_dict()
        files = {
            "diffusers' names": state,
            "diffusers' under ComfyUI's prefix": {"model.diffusion_model." + k: v for k, v in state.items()},
            "BFL's names": bfl_state_dict(pipe.transformer),
        }
        assert "double_blocks.0.img_attn.qkv.weight" in files["BFL's names"]
        for i, (names, weights) in enumerate(files.items()):
            path = tmp_path / f"{family}-{i}.safetensors"
            save_file({k: v.contiguous() for k, v in weights.items()}, path)
            md = MultiDiffusion.from_pretrained(path, config=str(folder), device="cpu", max_sequence_length=TOKENS)
            assert md.family == family and type(md.pipe).__name__ == type(pipe).__name__
            loaded = md.pipe.transformer.state_dict()
            diff = max(float((loaded[k].float() - v.float()).abs().max()) for k, v in state.items())
            assert loaded.keys() == state.keys() and diff == 0.0, (names, diff)
            md.set_progress_bar_config(disable=True)
            x, kwargs = _latents(), dict(height=H * 8, width=W * 8, output_type="latent", num_inference_steps=2)
            got = md.panorama("a red ball", latents=x, **kwargs).images
            expected = _md(pipe).panorama("a red ball", latents=x, **kwargs).images
            print(f"{family} single file, {names}: weights {diff}, result {(got - expected).abs().max():.1e}")
            assert (got - expected).abs().max() <= 1e-5
        # diffusers' FLUX.2 converter reads the block number from BFL's bare names: under ComfyUI's prefix
        # the names are given to it bare
        path = tmp_path / f"{family}-comfy-bfl.safetensors"
        save_file(bfl_state_dict(pipe.transformer, "model.diffusion_model."), path)
        loaded = MultiDiffusion.from_pretrained(path, config=str(folder), device="cpu").pipe.transformer.state_dict()
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
