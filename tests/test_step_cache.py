"""Step caching per batch of views (diffusers' first-block cache and TaylorSeer): off, nothing
changes; at one view, equal to the diffusers pipeline under the same cache config; on a panorama,
each batch of views keeps its own cache (checked against one pipeline run per view), evaluations
are skipped and counted, the bound on the state holds, and nothing stays on the transformer."""

import pytest
import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    HookRegistry,
    TaylorSeerCacheConfig,
    apply_first_block_cache,
    apply_taylorseer_cache,
)
from diffusers.models.cache_utils import CacheMixin

from devtools.dit_components import tiny_sd3_pipeline
from multidiffusion import MultiDiffusion
from multidiffusion.files.metadata import settings_from_parameters
from multidiffusion.models.flux import pack_latents, unpack_latents

STEPS = 6
N = 16  # latent pixels: the tiny models' native window (128 px)
THRESHOLD = 0.5  # random weights change between steps more than trained ones: a high bar makes skips


def _noise(w=N, seed=0):
    return torch.randn((1, 16, N, w), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def flux(flux16):
    md = MultiDiffusion(flux16, max_sequence_length=16)
    md.set_progress_bar_config(disable=True)
    return md


@pytest.fixture(scope="module")
def sd3():
    pipe = tiny_sd3_pipeline(sample_size=16, layers=2)  # first-block cache needs a head and a tail block
    md = MultiDiffusion(pipe, max_sequence_length=16)
    md.set_progress_bar_config(disable=True)
    return md


def _pano(md, x, **kwargs):
    h, w = x.shape[-2:]
    args = dict(height=h * 8, width=w * 8, num_inference_steps=STEPS, latents=x, output_type="latent", stride=N // 2)
    return md.panorama("a red ball", **{**args, **kwargs})  # half-window stride: few views, each test small


def _cached_pipeline(pipe, config, **kwargs):
    """The diffusers pipeline with ``config`` on its transformer, one cache context around the call
    (SD 3's pipeline sets none itself; FLUX.1's sets "cond", which wins inside)."""
    first_block = isinstance(config, FirstBlockCacheConfig)
    for module in pipe.transformer.modules():  # a registry a pipeline call left (its cache_context) hides
        registry = vars(module).get("_diffusers_hook")  # hooks added after it from diffusers' own contexts
        if registry is not None and not registry.hooks:
            del module._diffusers_hook
    (apply_first_block_cache if first_block else apply_taylorseer_cache)(pipe.transformer, config)
    try:
        with CacheMixin.cache_context(pipe.transformer, "cond"):
            return pipe(height=N * 8, width=N * 8, num_inference_steps=STEPS, output_type="latent", **kwargs).images
    finally:
        names = ("fbc_leader_block_hook", "fbc_block_hook") if first_block else ("taylorseer_cache",)
        for name in names:
            HookRegistry.check_if_exists_or_initialize(pipe.transformer).remove_hook(name, recurse=True)


def _flux_reference(pipe, config, x):
    out = _cached_pipeline(
        pipe, config, prompt="a red ball", latents=pack_latents(x), guidance_scale=3.5, max_sequence_length=16
    )
    return unpack_latents(out, N, N)


def _touched(transformer):
    """Modules carrying what diffusers' hooks add (a registry, an instance forward) or torch hooks."""
    return [
        name
        for name, m in transformer.named_modules()
        if {"forward", "_diffusers_hook"} & set(vars(m)) or m._forward_hooks or m._forward_pre_hooks
    ]


CONFIGS = {
    "first_block": (FirstBlockCacheConfig(threshold=THRESHOLD), {"step_cache_threshold": THRESHOLD}),
    "taylorseer": (TaylorSeerCacheConfig(cache_interval=2), {"step_cache_interval": 2}),
}


@pytest.mark.parametrize("kind", CONFIGS)
def test_flux_one_view_equals_the_cached_pipeline(flux, kind):
    config, options = CONFIGS[kind]
    x = _noise()
    expected = _flux_reference(flux.pipe, config, x)
    got = _pano(flux, x, guidance_scale=3.5, step_cache=kind, **options)
    assert (got.images - expected).abs().max() <= 1e-4
    assert got.stats.step_cache_skipped > 0  # the cache acted: the comparison is not the uncached one
    assert got.stats.step_cache_skipped + got.stats.step_cache_computed == got.stats.evaluations == STEPS
    assert (got.images - _pano(flux, x, guidance_scale=3.5).images).abs().max() > 0
    assert got.parameters["step_cache"] == kind and got.parameters["step_cache_mb"] == 1024.0


def test_sd3_guided_one_view_equals_the_cached_pipeline(sd3):
    """SD 3 with classifier-free guidance: both branches in one call (as its pipeline), one cache."""
    config, options = CONFIGS["taylorseer"]
    x = _noise(seed=1)
    kwargs = dict(prompt="a red ball", negative_prompt="blurry", guidance_scale=5.0, max_sequence_length=16)
    expected = _cached_pipeline(sd3.pipe, config, latents=x, **kwargs)
    got = _pano(sd3, x, negative_prompt="blurry", guidance_scale=5.0, step_cache="taylorseer", **options)
    assert (got.images - expected).abs().max() <= 1e-4
    assert got.stats.step_cache_skipped > 0 and got.stats.evaluations == 2 * STEPS
    assert (got.images - _pano(sd3, x, negative_prompt="blurry", guidance_scale=5.0).images).abs().max() > 0


def test_sd3_first_block_is_refused_by_name(sd3):
    """diffusers 0.42's first-block cache breaks on SD 3's last block (no text stream out of it)."""
    with pytest.raises(ValueError, match=r"^step_cache: .*first_block.*SD3Transformer2DModel.*'taylorseer'$"):
        _pano(sd3, _noise(), step_cache="first_block")


def test_each_view_keeps_its_own_cache(flux):
    """Two windows side by side (stride = window: no overlap, so Eq. 5 keeps each view's prediction
    as it is), one per model call: each equals the cached pipeline on its own half of the noise. A
    cache shared between the views would hand one view the other's residuals."""
    config, options = CONFIGS["first_block"]
    x = _noise(2 * N, seed=3)
    got = _pano(flux, x, guidance_scale=3.5, stride=N, view_batch_size=1, step_cache="first_block", **options)
    for half in range(2):
        part = x[..., half * N : (half + 1) * N]
        expected = _flux_reference(flux.pipe, config, part)
        assert (got.images[..., half * N : (half + 1) * N] - expected).abs().max() <= 1e-4
    assert got.stats.step_cache_contexts == 2 and got.stats.step_cache_skipped > 0


@pytest.mark.parametrize("kind", CONFIGS)
def test_panorama_skips_evaluations_and_stays_near_the_uncached_result(flux, kind):
    x = _noise(3 * N, seed=4)  # 5 views, batches of 2
    plain = _pano(flux, x, view_batch_size=2)
    got = _pano(flux, x, view_batch_size=2, step_cache=kind, **CONFIGS[kind][1])
    stats = got.stats
    assert stats.step_cache_contexts == 3  # one per batch of views
    assert 0 < stats.step_cache_skipped < stats.evaluations
    assert stats.step_cache_skipped + stats.step_cache_computed == stats.evaluations == plain.stats.evaluations
    diff = (got.images - plain.images).abs().max()
    assert 0 < diff < 0.1 * plain.images.abs().max()


def test_cache_off_changes_nothing_and_a_call_leaves_nothing_behind(flux):
    x = _noise(2 * N, seed=5)
    before = _pano(flux, x, view_batch_size=2)  # 3 views: a batch of 2, a batch of 1
    assert not [k for k in before.parameters if k.startswith("step_cache")]
    assert not [k for k in before.stats.counts if k.startswith("step_cache")]
    touched = _touched(flux.pipe.transformer)
    _pano(flux, x, view_batch_size=2, step_cache="taylorseer")
    assert _touched(flux.pipe.transformer) == touched and flux.pipe.transformer._cache_config is None
    after = _pano(flux, x, view_batch_size=2)
    assert torch.equal(before.images, after.images)


def test_the_bound_on_the_cached_state_holds(flux):
    x = _noise(2 * N, seed=6)  # 3 views, one per call
    options = dict(view_batch_size=1, step_cache="first_block", step_cache_threshold=THRESHOLD)
    free = _pano(flux, x, **options)
    one = free.stats.step_cache_peak_mb / free.stats.step_cache_contexts  # one view's state
    bound = 2.5 * one
    bounded = _pano(flux, x, step_cache_mb=bound, **options)
    assert 0 < bounded.stats.step_cache_peak_mb <= bound
    assert bounded.stats.step_cache_contexts == 2 < free.stats.step_cache_contexts == 3
    assert bounded.stats.step_cache_uncached > 0  # the other views computed every step
    nothing = _pano(flux, x, step_cache_mb=0, **options)  # no state fits: every evaluation computed
    assert nothing.stats.step_cache_skipped == 0 and nothing.stats.step_cache_peak_mb == 0
    assert (nothing.images - _pano(flux, x, view_batch_size=1).images).abs().max() <= 1e-6


def test_the_settings_are_recorded_and_read_back(flux):
    out = _pano(flux, _noise(), step_cache="first_block", step_cache_threshold=0.2, step_cache_mb=64)
    options = settings_from_parameters(out.parameters).options()
    assert (options.step_cache, options.step_cache_threshold, options.step_cache_mb) == ("first_block", 0.2, 64)


def test_the_command_line_takes_the_flags():
    from multidiffusion.cli import build_parser
    from multidiffusion.cli.common import SAMPLING_FLAGS, flag_values

    args = build_parser().parse_args(
        ["panorama", "a hill", "-o", "x.png", "--step-cache", "taylorseer", "--step-cache-interval", "3"]
    )
    values = flag_values(args, SAMPLING_FLAGS)
    assert values["step_cache"] == "taylorseer" and values["step_cache_interval"] == 3


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"step_cache": "mag"}, r"^step_cache must be one of 'first_block', 'taylorseer', got 'mag'$"),
        ({"step_cache_threshold": 0.1}, r"^step_cache_threshold applies to step_cache='first_block' only"),
        ({"step_cache": "taylorseer", "step_cache_threshold": 0.1}, r"^step_cache_threshold applies"),
        ({"step_cache": "first_block", "step_cache_interval": 2}, r"^step_cache_interval applies"),
        ({"step_cache": "taylorseer", "step_cache_interval": 0}, r"^step_cache_interval must be an integer"),
        ({"step_cache": "first_block", "step_cache_threshold": -1}, r"^step_cache_threshold must be a number"),
        ({"step_cache": "first_block", "step_cache_mb": float("nan")}, r"^step_cache_mb must be a number"),
        ({"step_cache": "taylorseer", "step_cache_mb": 1e308}, r"^step_cache_mb must be a number from 0 to 1073741824"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_parameter(flux, options, match):
    with pytest.raises(ValueError, match=match) as error:
        _pano(flux, _noise(), **options)
    assert "\n" not in str(error.value)


def test_a_unet_is_refused_by_name(md16):
    with pytest.raises(ValueError, match=r"^step_cache: .*diffusion transformers.*UNet2DConditionModel$"):
        md16.panorama("a hill", height=128, width=128, num_inference_steps=1, step_cache="first_block")


def test_what_diffusers_cannot_cache_is_refused_by_name():
    """Chroma's blocks are unknown to diffusers 0.42's first-block cache (refused before any model
    call; TaylorSeer runs and skips); on FLUX.2 its hooks fail inside the model: a one-line
    ValueError naming step_cache, and the hooks are gone after it."""
    from devtools.family_components import tiny_chroma_pipeline
    from devtools.flux2_components import tiny_flux2_klein_pipeline

    chroma = MultiDiffusion(tiny_chroma_pipeline())
    chroma.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"^step_cache: .*first_block.*ChromaTransformerBlock.*'taylorseer'$"):
        _pano(chroma, _noise(), step_cache="first_block")
    out = _pano(chroma, _noise(), num_inference_steps=4, step_cache="taylorseer", step_cache_interval=2)
    assert out.stats.step_cache_skipped == out.stats.evaluations // 4  # step 3 of 4 predicted, both branches
    flux2 = MultiDiffusion(tiny_flux2_klein_pipeline(distilled=True))
    flux2.set_progress_bar_config(disable=True)
    touched = _touched(flux2.pipe.transformer)
    h = flux2.adapter.native_latent_size[0]
    x = torch.randn((1, flux2.adapter.latent_channels, h, h), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^step_cache: diffusers' first_block cache fails on the Flux2") as error:
        _pano(flux2, x, num_inference_steps=2, step_cache="first_block")
    assert "\n" not in str(error.value)
    assert _touched(flux2.pipe.transformer) == touched


def test_the_fast_modes_moving_windows_are_never_cached_and_their_state_is_freed(flux):
    """Shifted windows (the fast mode) change every step: no batch of views comes back, so nothing is
    skipped, the result is the uncached one, and the state of a step's batches is freed when the
    step after next starts (at most two steps' batches hold state)."""
    x = _noise(2 * N, seed=7)
    options = dict(placement="shifted", view_batch_size=1)
    plain = _pano(flux, x, **options)
    got = _pano(flux, x, step_cache="taylorseer", step_cache_interval=1, **options)
    assert got.stats.step_cache_skipped == 0
    assert torch.equal(got.images, plain.images)
    per_step = got.stats.jobs // STEPS
    assert per_step < got.stats.step_cache_contexts <= 2 * per_step
