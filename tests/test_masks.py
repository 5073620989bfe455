"""Masks as users give them, and how they map to the latent grid (documented in multidiffusion.regions.masks)."""

import numpy as np
import pytest
import torch
from PIL import Image

from multidiffusion import Region
from multidiffusion.regions.colours import parse_colour
from multidiffusion.regions.masks import (
    box_mask,
    box_pixels,
    encode_mask,
    feather_mask,
    fit_mask,
    load_mask,
    to_latent_grid,
)


def test_latent_weight_is_the_mean_of_each_pixel_block():
    torch.manual_seed(0)
    mask = (torch.rand(64, 96) > 0.5).float()
    latent = to_latent_grid(mask, 8)
    assert latent.shape == (8, 12)
    for r in range(8):
        for c in range(12):
            assert latent[r, c] == pytest.approx(float(mask[8 * r : 8 * r + 8, 8 * c : 8 * c + 8].mean()))


def test_block_aligned_masks_stay_binary_and_cut_blocks_get_their_covered_fraction():
    mask = torch.zeros(32, 32)
    mask[8:24, 0:12] = 1  # rows aligned to blocks; columns cut the second block in half
    latent = to_latent_grid(mask, 8)
    expected = torch.tensor([[0, 0, 0, 0], [1, 0.5, 0, 0], [1, 0.5, 0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(latent, expected)
    assert to_latent_grid(mask, 4)[2:6, :3].eq(1).all()  # a VAE with f = 4 (the demo model's)


def test_every_kind_of_mask_input_reads_the_same(tmp_path):
    m = np.zeros((16, 24), dtype=bool)
    m[4:12, 5:20] = True
    expected = torch.from_numpy(m).float()
    path = tmp_path / "m.png"
    Image.fromarray(m.astype(np.uint8) * 255).save(path)
    rgba = np.zeros((16, 24, 4), dtype=np.uint8)
    rgba[..., 3] = m * 255  # scribble on a transparent layer: alpha is the mask
    inputs = [
        path,
        str(path),
        Image.open(path),
        Image.fromarray(m),  # mode "1"
        Image.fromarray(rgba),
        m,
        m.astype(np.uint8) * 255,
        m.astype(np.float32),
        m.astype(np.int64),
        torch.from_numpy(m)[None],
        encode_mask(expected),
    ]
    for value in inputs:
        torch.testing.assert_close(load_mask(value), expected, msg=lambda s, v=value: f"{type(v)}: {s}")


def test_mask_data_uris_round_trip():
    torch.manual_seed(0)
    binary = (torch.rand(40, 56) > 0.3).float()
    eight_bit = torch.randint(0, 256, (40, 56)).float() / 255
    soft = torch.rand(40, 56)
    for mask, atol in ((binary, 0), (eight_bit, 0), (soft, 0.5 / 255 + 1e-6)):  # masks are read as 8 bits
        uri = encode_mask(mask)
        assert uri.startswith("data:image/png;base64,")
        torch.testing.assert_close(load_mask(uri), mask, rtol=0, atol=atol)
    assert len(encode_mask(torch.ones(512, 768))) < 600  # a 1-bit PNG: compact in metadata


def test_bad_mask_values_and_shapes():
    with pytest.raises(ValueError, match=r"in \[0, 1\], got range \[0, 2\]"):
        load_mask(np.array([[0.0, 2.0]]))
    with pytest.raises(ValueError, match="2-D"):
        load_mask(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="0 and 1"):
        load_mask(np.array([[0, 7]]))
    with pytest.raises(ValueError, match="no such file"):
        load_mask("nowhere/mask.png")
    with pytest.raises(ValueError, match="must be a path"):
        load_mask(42)


def test_masks_of_the_canvas_aspect_are_resized_others_are_refused():
    mask = torch.zeros(64, 96)
    mask[:, :48] = 1
    resized = fit_mask(mask, 128, 192)
    assert resized.shape == (128, 192)
    assert resized[:, :90].min() == 1 and resized[:, 102:].max() == 0
    with pytest.raises(ValueError, match=r"mask is 96x64 pixels \(aspect 1.500\) but the canvas is 128x128"):
        fit_mask(mask, 128, 128)


def test_boxes_in_pixels_and_fractions():
    assert box_pixels((8, 16, 40, 64), 64, 128) == (8, 16, 40, 64)
    assert box_pixels((0.0, 0.25, 0.5, 1.0), 64, 128) == (0, 16, 64, 64)
    mask = box_mask((8, 16, 40, 64), 64, 128)
    assert mask.sum() == 32 * 48 and mask[16, 8] == 1 and mask[15, 8] == 0 and mask[16, 40] == 0
    with pytest.raises(ValueError, match="leaves the 128x64 canvas"):
        box_pixels((0, 0, 129, 10), 64, 128)
    with pytest.raises(ValueError, match="less than one pixel"):
        box_pixels((0.5, 0.0, 0.501, 1.0), 64, 128)


def test_feather_makes_a_ramp_centred_on_the_edge_and_keeps_the_border():
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1
    soft = feather_mask(mask, 8)
    row = soft[10]
    assert row[0] == pytest.approx(1, abs=1e-6) and row[-1] == pytest.approx(0, abs=1e-6)  # border replicated
    assert (row[31] + row[32]) / 2 == pytest.approx(0.5, abs=1e-6)
    assert 0.05 < row[28] < 0.95 and row[22] > 0.99 and row[41] < 0.01  # ramp about 2 x feather wide
    assert bool((row[1:] <= row[:-1] + 1e-7).all())  # monotone
    assert torch.equal(feather_mask(mask, 0), mask)


def test_colours():
    assert parse_colour("#ff8000") == (255, 128, 0)
    assert parse_colour("#f80") == (255, 136, 0)
    assert parse_colour("255, 128, 0") == (255, 128, 0)
    assert parse_colour("red") == (255, 0, 0)
    assert parse_colour((1, 2, 3)) == (1, 2, 3)
    for bad in ("#ggg", "1,2", (1, 2, 300), "not-a-colour"):
        with pytest.raises(ValueError, match="is not a colour"):
            parse_colour(bad)


def _segmentation_map():
    seg = np.zeros((32, 48, 3), dtype=np.uint8)
    seg[:, :] = (0, 0, 0)
    seg[:16, :24] = (255, 0, 0)
    seg[16:, 24:] = (0, 0, 255)
    return seg


def test_regions_from_a_segmentation_map():
    seg = _segmentation_map()
    regions = Region.from_segmentation(
        Image.fromarray(seg),
        {
            "#ff0000": "a red car",
            (0, 0, 255): Region("the sea", guidance_scale=5.0),
            "black": "",  # left to the background
        },
    )
    assert [r.prompt for r in regions] == ["a red car", "the sea"]
    assert regions[1].guidance_scale == 5.0
    red = load_mask(regions[0].mask)
    assert red.sum() == 16 * 24 and red[:16, :24].eq(1).all()
    table = Region.from_segmentation(seg, {"#f00": {"prompt": "car", "weight": 2.0}, "#00f": "sea", "#000": "road"})
    assert [r.weight for r in table] == [2.0, 1.0, 1.0]


def test_segmentation_colour_without_prompt_lists_the_colours_found():
    seg = _segmentation_map()
    with pytest.raises(ValueError) as info:
        Region.from_segmentation(seg, {"#ff0000": "a red car", "#000000": "road"})
    message = str(info.value)
    assert "colours with no prompt: #0000ff (384 px)" in message
    assert "Colours in the map: #000000 (768 px), #0000ff (384 px), #ff0000 (384 px)" in message


def test_segmentation_table_errors():
    seg = _segmentation_map()
    with pytest.raises(ValueError, match="does not contain the colours #00ff00"):
        Region.from_segmentation(seg, {"#f00": "a", "#00f": "b", "#000": "c", "#0f0": "d"})
    with pytest.raises(ValueError, match="same colour #ff0000"):
        Region.from_segmentation(seg, {"red": "a", "#ff0000": "b"})
    with pytest.raises(ValueError, match=r"colors\['#ff0000'\]: mask/box"):
        Region.from_segmentation(seg, {"#f00": Region("a", box=(0, 0, 1, 1)), "#00f": "b", "#000": "c"})
    with pytest.raises(ValueError, match="fields"):
        Region.from_segmentation(seg, {"#f00": {"prompt": "a", "colour": 1}, "#00f": "b", "#000": "c"})


def test_segmentation_masks_are_built_one_at_a_time_for_the_colours_listed():
    from multidiffusion.regions.colours import segmentation_masks

    seg = _segmentation_map()
    colours = [(255, 0, 0), (0, 0, 255), (0, 0, 0)]
    masks = segmentation_masks(seg, colours)
    assert len(masks) == 3 and not isinstance(masks, list)  # built on access, not all at once
    codes = seg.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    expected = [codes == (r << 16 | g << 8 | b) for r, g, b in colours]
    for got, want in zip(masks, expected):
        assert got.dtype == bool and np.array_equal(got, want)
    assert np.array_equal(masks[-1], expected[-1]) and len(masks[1:]) == 2
    with pytest.raises(IndexError):
        masks[3]
