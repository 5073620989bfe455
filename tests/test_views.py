"""Window layouts (the F_i of the paper), crop and paste, coverage."""

import itertools
import math

import pytest
import torch

from multidiffusion.engine.views import View, axis_starts, crop, grid_views, paste_add, shifted_views


def coverage(views, height, width):
    count = torch.zeros(1, 1, height, width)
    for v in views:
        paste_add(count, v, 1.0)
    return count


@pytest.mark.parametrize("size", [8, 16, 17, 53, 64, 70, 95, 128, 576])
@pytest.mark.parametrize("window,stride", [(16, 2), (64, 8), (16, 16), (16, 5), (64, 64)])
def test_axis_starts_cover_every_position(size, window, stride):
    starts = axis_starts(size, window, stride)
    win = min(window, size)
    covered = set()
    for s in starts:
        assert s >= 0 and s + win <= size
        covered.update(range(s, s + win))
    assert covered == set(range(size))
    assert starts == sorted(set(starts))


def test_edge_window_added_where_stride_does_not_divide():
    # (53 - 16) = 37 is not a multiple of 8: the paper's layout stops at 32 and leaves 5 columns
    assert axis_starts(53, 16, 8) == [0, 8, 16, 24, 32, 37]
    assert axis_starts(48, 16, 8) == [0, 8, 16, 24, 32]


def test_window_larger_than_canvas_shrinks():
    views = grid_views(8, 40, window=(16, 16), stride=(2, 2))
    assert {v.height for v in views} == {8}
    assert coverage(views, 8, 40).min() > 0


def test_paper_panorama_layout():
    # 512 x 2048 with SD's 64-latent windows and stride 8: 25 views, coverage factor 6.25
    views = grid_views(64, 256, (64, 64), (8, 8))
    assert len(views) == 25
    assert sum(v.height * v.width for v in views) / (64 * 256) == 6.25


def test_circular_views_wrap_and_are_roll_invariant():
    views = grid_views(16, 48, (16, 16), (4, 4), circular=True)
    assert len(views) == 12
    assert any(v.left + v.width > 48 for v in views)
    count = coverage(views, 16, 48)
    assert torch.all(count == count[..., :1, :1])  # every column covered equally


def test_crop_and_paste_wrap_around():
    x = torch.arange(2 * 4 * 10, dtype=torch.float32).view(1, 2, 4, 10)
    v = View(1, 8, 2, 5)  # columns 8, 9, 0, 1, 2
    c = crop(x, v)
    assert torch.equal(c, torch.cat([x[..., 1:3, 8:], x[..., 1:3, :3]], dim=-1))
    canvas = torch.zeros_like(x)
    paste_add(canvas, v, c)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[8, 9, 0, 1, 2]] = True
    assert torch.equal(canvas[..., 1:3, mask], x[..., 1:3, mask])
    assert canvas[..., 1:3, ~mask].abs().sum() == 0


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("offset", [(0, 0), (3, 7), (15, 15)])
def test_shifted_views_cover_with_few_windows(circular, offset):
    views = shifted_views(20, 100, (16, 16), offset, circular=circular)
    count = coverage(views, 20, 100)
    assert count.min() >= 1
    assert {v.size for v in views} == {(16, 16)}
    assert count.sum() / count.numel() <= 2.0  # vs 6+ for the stride-2 grid


@pytest.mark.parametrize("size", [96, 128, 160, 512, 1000])
@pytest.mark.parametrize("multiple", [1, 2])
def test_shifted_views_move_without_piling_up_at_the_edges(size, multiple):
    """Along a non-wrapping axis: edge windows at the edges, neighbours at most a stride apart (the
    Gaussian blend's band kept), the fewest windows that leave the inner ones half a stride of play,
    and inner borders that move with the offset (a fixed border would become a seam)."""
    window, stride = 64, 56
    span = size - window
    count = math.ceil(span / stride + 0.5) + 1
    inner_starts = set()
    for offset in range(0, stride, multiple):
        lefts = [
            v.left for v in shifted_views(64, size, (64, window), (0, offset), stride=(64, stride), multiple=multiple)
        ]
        assert lefts == sorted(set(lefts)) and lefts[0] == 0 and lefts[-1] == span
        assert all(0 < b - a <= stride for a, b in itertools.pairwise(lefts)), (offset, lefts)
        assert len(lefts) <= count and all(s % multiple == 0 for s in lefts)
        inner_starts.update(lefts[1:-1])
    assert len(inner_starts) >= stride // multiple // 2 * (count - 2) // 2  # they move, over half a stride
    # two windows wide: 3 windows per axis, 9 in all, where clamped offsets gave 3.25 per axis on average
    assert len(shifted_views(128, 128, (64, 64), (20, 30), stride=(56, 56))) == 9
