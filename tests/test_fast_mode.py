"""The fast mode: shifted windows at seeded offsets (SpotDiffusion) and Gaussian weights (Mixture of
Diffusers), one engine with a different plan per step."""

import pytest
import torch

import multidiffusion.engine.fusion as fusion
from multidiffusion.engine.views import paste_add, window_weights
from multidiffusion.engine.windows import Windows, panorama_plans

from .conftest import noise


def count(views, canvas):
    c = torch.zeros(1, 1, *canvas)
    for v in views:
        paste_add(c, v, 1.0)
    return c


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("canvas", [(16, 144), (21, 53), (40, 40), (8, 70)])
@pytest.mark.parametrize("stride", [16, 9])
def test_shifted_layout_covers_every_pixel_every_step(canvas, circular, stride):
    layout = Windows(canvas, (16, 16), (stride, stride), "shifted", circular, seed=3)
    for step in range(30):
        c = count(layout.views(step), canvas)
        assert c.min() >= 1, (step, layout.offset(step))
        assert {v.size for v in layout.views(step)} == {(min(16, canvas[0]), min(16, canvas[1]))}


def test_shifted_layout_coverage_at_the_papers_panorama_size():
    # 512 x 4608 px with SD's 64-latent windows: the grid's coverage is 7.2, the floor 1.0
    layout = Windows((64, 576), (64, 64), (64, 64), "shifted", seed=0)
    factors = [sum(v.height * v.width for v in layout.views(i)) / (64 * 576) for i in range(50)]
    assert max(factors) <= 10 * 64 * 64 / (64 * 576) + 1e-9  # at most one extra window
    assert sum(factors) / len(factors) <= 1.3
    grid = Windows((64, 576), (64, 64), (8, 8), "grid")
    assert sum(v.height * v.width for v in grid.views(0)) / (64 * 576) == pytest.approx(7.22, abs=0.01)


def test_offsets_are_seeded_and_change_every_step():
    a = Windows((16, 100), (16, 16), (16, 16), "shifted", seed=5)
    b = Windows((16, 100), (16, 16), (16, 16), "shifted", seed=5)
    c = Windows((16, 100), (16, 16), (16, 16), "shifted", seed=6)
    b.offset(9)  # drawn out of order: offsets depend on the step only
    assert [a.offset(i) for i in range(10)] == [b.offset(i) for i in range(10)]
    assert [a.offset(i) for i in range(10)] != [c.offset(i) for i in range(10)]
    assert len({a.offset(i) for i in range(10)}) > 3


def test_gaussian_weights():
    w = window_weights(16, 24, "gaussian")
    assert w.shape == (16, 24) and w.min() > 0
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1))
    assert w.max() == w[7:9, 11:13].max() and w.max() / w.min() > 1e4
    assert window_weights(16, 16, "uniform") is None
    with pytest.raises(ValueError, match=r"weights must be one of 'uniform', 'gaussian', got 'box'"):
        window_weights(16, 16, "box")


def test_plans_of_the_shifted_layout_change_per_step_and_carry_weights():
    layout = Windows((16, 64), (16, 16), (16, 16), "shifted", seed=1)
    plans = panorama_plans(layout, "gaussian")
    assert all(job.weight is not None for job in plans(0).jobs)
    assert {tuple(j.view for j in plans(i).jobs) for i in range(6)}.__len__() > 1
    grid = panorama_plans(Windows((16, 64), (16, 16), (4, 4)))
    assert grid(0) is grid(5)


def test_fast_mode_denoises_every_pixel_every_step_and_is_reproducible(md16, monkeypatch):
    seen = []
    original = fusion.crop_batch

    def spy(x, views):
        seen.append(list(views))
        return original(x, views)

    monkeypatch.setattr(fusion, "crop_batch", spy)
    kwargs = dict(height=128, width=424, num_inference_steps=3, output_type="latent", placement="shifted", stride=16)
    out = md16.panorama("hills", generator=torch.Generator().manual_seed(4), view_batch_size=100, **kwargs)
    assert len(seen) == 3  # one group of views per step (they all fit one batch)
    for views in seen:
        assert count(views, (16, 53)).min() >= 1
    assert out.stats.coverage <= 1.4  # vs 9 windows of 16 x 16 in 16 x 53: grid coverage 2.7 at stride 2...
    assert out.parameters["placement"] == "shifted" and out.parameters["weights"] == "gaussian"
    again = md16.panorama("hills", generator=torch.Generator().manual_seed(4), **kwargs)
    torch.testing.assert_close(out.images, again.images, rtol=0, atol=0)
    other = md16.panorama("hills", generator=torch.Generator().manual_seed(5), **kwargs)
    assert not torch.equal(out.images, other.images)


def test_fast_mode_costs_a_fraction_of_the_grid(md16):
    kwargs = dict(height=128, width=512, num_inference_steps=2, output_type="latent", latents=noise((1, 4, 16, 64)))
    exact = md16.panorama("a lake", **kwargs).stats
    fast = md16.panorama("a lake", placement="shifted", **kwargs).stats
    assert exact.coverage == pytest.approx(25 * 256 / 1024)
    assert fast.coverage <= 1.5 and fast.latent_pixels * 4 <= exact.latent_pixels  # small canvas: edge windows
    assert fast.coverage > 1.0  # the default shifted windows overlap by 1/8 (stride 14 of 16)


def test_gaussian_grid_differs_from_uniform_and_stays_finite(md16):
    kwargs = dict(height=128, width=256, num_inference_steps=2, output_type="latent", latents=noise((1, 4, 16, 32)))
    uniform = md16.panorama("a lake", stride=8, **kwargs).images
    gaussian = md16.panorama("a lake", stride=8, weights="gaussian", **kwargs).images
    assert torch.isfinite(gaussian).all() and not torch.allclose(uniform, gaussian)


def test_placement_and_weights_are_validated(md16):
    with pytest.raises(ValueError, match=r"placement must be one of 'grid', 'shifted', got 'spot'"):
        md16.panorama("x", width=256, placement="spot")
    with pytest.raises(ValueError, match=r"weights must be one of 'uniform', 'gaussian', got 'flat'"):
        md16.panorama("x", width=256, weights="flat")


def test_cli_fast_mode_is_stored_and_regenerated(tiny_model_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from multidiffusion.files.metadata import read_parameters

    from .test_cli import FAST, run

    first = tmp_path / "fast.png"
    args = ["panorama", "dunes", "--model", str(tiny_model_dir), "--seed", "2", "-o", str(first), *FAST]
    code, _, err = run([*args, "--placement", "shifted", "--weights", "gaussian"], capsys)
    assert code == 0, err
    params = read_parameters(first)
    assert params["placement"] == "shifted" and params["weights"] == "gaussian" and params["stride"] == 14
    again = tmp_path / "again.png"
    code, _, err = run(
        ["panorama", "--from", str(first), "--model", str(tiny_model_dir), "-o", str(again), "-q"], capsys
    )
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    bad = ["panorama", "dunes", "--model", str(tiny_model_dir), "-o", str(tmp_path / "bad.png"), "--placement", "spot"]
    code, _, err = run(bad, capsys)
    assert code == 2 and err.startswith("error: argument --placement: invalid choice: 'spot'")
