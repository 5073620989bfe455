"""Steps and guidance left unset take the model family's diffusers defaults (SD 50 at 7.5, SDXL 50 at
5, SD 3 28 at 7, FLUX.1-dev 28 at 3.5, schnell 4), for every task and shell; results record the
values used, and what depends on the steps (a strength that must run one, bootstrapping's 40%) is
checked once they are known."""

import pytest
from PIL import Image

from multidiffusion.options import Img2ImgOptions, PanoramaOptions, RegionsOptions


def test_unset_steps_and_guidance_are_filled_from_the_family():
    options = PanoramaOptions(prompt="a lake")
    assert options.num_inference_steps is None and options.guidance_scale is None
    filled = options.with_defaults(28, 3.5)
    assert (filled.num_inference_steps, filled.guidance_scale) == (28, 3.5)
    assert options.num_inference_steps is None  # a copy
    given = PanoramaOptions(prompt="a lake", num_inference_steps=12, guidance_scale=0)
    assert given.with_defaults(28, 3.5) is given


def test_what_depends_on_the_steps_is_checked_once_they_are_known():
    regions = RegionsOptions(background="a lake", regions=[{"prompt": "a house", "box": (0, 0, 64, 64)}])
    assert regions.bootstrap_steps is None
    assert regions.with_defaults(28, 7.0).bootstrap_steps == 11  # the paper's 40% (20 of 50)
    assert regions.with_defaults(50, 7.5).bootstrap_steps == 20
    image = Image.new("RGB", (64, 64))
    weak = Img2ImgOptions(prompt="a lake", image=image, strength=0.2)  # no steps yet: nothing to check
    assert weak.with_defaults(50, 7.5).strength == 0.2
    with pytest.raises(ValueError, match=r"strength 0.2 runs none of the 4 steps .* at least 5 steps"):
        weak.with_defaults(4, 0.0)  # FLUX.1-schnell's 4 steps


def test_each_family_has_its_pipelines_defaults(md16, dit_models):
    from devtools.dit_components import tiny_flux_pipeline
    from multidiffusion import MultiDiffusion

    assert md16.adapter.sampling_defaults == (50, 7.5)
    assert dit_models["flux"].adapter.sampling_defaults == (28, 3.5)
    assert dit_models["sd3"].adapter.sampling_defaults == (28, 7.0)
    schnell = MultiDiffusion(tiny_flux_pipeline(sample_size=16, guidance_embeds=False), max_sequence_length=16)
    assert schnell.adapter.sampling_defaults == (4, 0.0)


def test_a_call_without_steps_runs_and_records_the_familys(dit_models):
    md = dit_models["flux"]
    out = md.panorama("a lake", height=128, width=128, output_type="latent")
    assert out.stats.steps == 28
    assert (out.parameters["num_inference_steps"], out.parameters["guidance_scale"]) == (28, 3.5)
