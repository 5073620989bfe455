"""The image loader against hostile and careless files (issue 25, holes 1, 4, 10 and 11): one allow-list
of formats for every image we decode (an EPS never reaches Ghostscript), EXIF orientation, 16- and
32-bit images scaled, one reading of a mask image for region and inpainting masks, masks kept as
uint8 (packed when binary), and one-line messages that name the parameter."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image, UnidentifiedImageError

from multidiffusion.app.inputs import read_upload
from multidiffusion.app.layout import read_map
from multidiffusion.app.limits import ServerLimits
from multidiffusion.files.metadata import read_parameters
from multidiffusion.io.image_loader import ALLOWED_FORMATS, input_image, open_image
from multidiffusion.options import build_options
from multidiffusion.regions.colours import load_rgb
from multidiffusion.regions.layout import Region, region_layout
from multidiffusion.regions.masks import load_mask, to_latent_grid

ALLOWED = "images may be PNG, JPEG, WebP, BMP, TIFF or GIF"


def _eps(marker: os.PathLike | None = None) -> bytes:
    """A tiny EPS; with ``marker``, its PostScript writes that file when Ghostscript runs it."""
    write = f"({marker}) (w) file dup (ran) writestring closefile\n" if marker else ""
    return (
        "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
        f"{write}newpath 0 0 moveto 8 0 lineto 8 8 lineto closepath fill\n%%EOF\n"
    ).encode()


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _png(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def _refusals(path, uri: str) -> list[tuple[str, object]]:
    """Every way an image reaches the decoder, each with the message's start."""
    shown = f"'{path}'"
    return [
        (f"image: {shown} is an EPS file; {ALLOWED}", lambda: input_image(path)),
        (f"init image: {shown} is an EPS file; {ALLOWED}", lambda: open_image(path, "init image")),
        (f"mask: {shown} is an EPS file; {ALLOWED}", lambda: input_image(path, "mask", mode="L")),
        (f"control_image: the data URI is an EPS file; {ALLOWED}", lambda: input_image(uri, "control_image")),
        (f"mask: the data URI is an EPS file; {ALLOWED}", lambda: load_mask(uri)),
        (f"map: the data URI is an EPS file; {ALLOWED}", lambda: load_rgb(uri)),
        (f"image: '{path.name}' is an EPS file; {ALLOWED}", lambda: read_upload(path, "image", ServerLimits())),
        (f"colour map: '{path.name}' is an EPS file; {ALLOWED}", lambda: read_map(path, 512)),
        (f"the PNG: {shown} is an EPS file; images may be PNG", lambda: read_parameters(path)),
    ]


@pytest.fixture
def gs_calls(monkeypatch) -> list:
    """Every attempt to run Ghostscript (or any program), recorded and stopped."""
    calls: list = []

    def record(*args, **kwargs):
        calls.append(args)
        raise OSError("a program was run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", record)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")
    monkeypatch.setattr(subprocess, "Popen", record)
    return calls


def test_an_eps_is_refused_by_every_loader_and_ghostscript_is_never_invoked(tmp_path, gs_calls):
    path = tmp_path / "photo.png"
    path.write_bytes(_eps())
    for message, call in _refusals(path, _uri(_eps())):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == message
    assert gs_calls == []
    with pytest.raises(OSError):  # the trap works: PIL on its own would run Ghostscript here
        Image.open(io.BytesIO(_eps())).load()
    assert len(gs_calls) == 1


def test_the_server_makes_pil_forget_other_formats_for_gradios_own_decoding(tmp_path, gs_calls, monkeypatch):
    from multidiffusion.app.server import limit_decoded_pixels

    Image.init()  # every plugin registered in PIL's own tables, then copies of them changed
    for name in ("ID", "OPEN", "MAX_IMAGE_PIXELS"):  # restored after the test
        value = getattr(Image, name)
        monkeypatch.setattr(Image, name, value.copy() if hasattr(value, "copy") else value)
    (tmp_path / "photo.png").write_bytes(_eps())
    limit_decoded_pixels(ServerLimits())  # as `multidiffusion serve` does before Gradio decodes an upload
    with pytest.raises(UnidentifiedImageError):  # what Gradio's image editors call on an upload
        Image.open(tmp_path / "photo.png")
    assert gs_calls == [] and sorted(Image.ID) == sorted(ALLOWED_FORMATS)
    with pytest.raises(ValueError, match=rf"^image: '.*photo\.png' is an EPS file; {ALLOWED}$"):  # still named
        input_image(tmp_path / "photo.png")
    assert Image.open(io.BytesIO(_png(Image.new("RGB", (4, 4))))).size == (4, 4)


@pytest.mark.skipif(shutil.which("gs") is None, reason="Ghostscript (gs) is not installed")
def test_with_ghostscript_installed_no_input_path_runs_the_postscript(tmp_path):
    proof = tmp_path / "proof"
    (tmp_path / "proof.png").write_bytes(_eps(proof))
    try:
        with Image.open(tmp_path / "proof.png") as image:  # PIL left to identify by content runs it
            image.load()
    except OSError:
        pass
    if not proof.exists():
        pytest.skip("this Ghostscript does not let the PostScript write a file: the test would prove nothing")
    marker = tmp_path / "marker"
    path = tmp_path / "photo.png"
    path.write_bytes(_eps(marker))
    for message, call in _refusals(path, _uri(_eps(marker))):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == message and "\n" not in str(info.value)
        assert not marker.exists(), message


def test_the_allowed_formats_open_and_a_gif_gives_its_first_frame(tmp_path):
    rgb = Image.new("RGB", (16, 8), (200, 30, 10))
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "TIFF"):
        path = tmp_path / f"x.{fmt.lower()}"
        rgb.save(path, fmt)
        assert input_image(path).size == (8, 16)
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert input_image(tmp_path / "a.gif").image.getpixel((4, 4)) == (255, 0, 0)
    rgb.save(tmp_path / "x.ppm")  # PIL reads PPM, but it is not on the list
    with pytest.raises(ValueError, match=rf"^image: '.*x\.ppm' is a PPM file; {ALLOWED}$"):
        input_image(tmp_path / "x.ppm")


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (16, 8), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 8, 8))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    data = _png(image, exif=exif.tobytes())
    (tmp_path / "phone.png").write_bytes(data)
    for value in (tmp_path / "phone.png", _uri(data)):
        upright = input_image(value).image
        assert upright.size == (8, 16)
        assert upright.getpixel((4, 2)) == (255, 0, 0) and upright.getpixel((4, 13)) == (0, 0, 255)


def test_16_and_32_bit_images_are_scaled_not_clipped(tmp_path):
    grey16 = Image.fromarray(np.full((8, 8), 128 * 257, np.uint16))  # mode I;16: mid-grey
    assert grey16.mode == "I;16"
    (tmp_path / "g16.png").write_bytes(_png(grey16))
    for value in (tmp_path / "g16.png", grey16):
        assert input_image(value).image.getpixel((0, 0)) == (128, 128, 128)
        assert input_image(value, "mask", mode="L").image.getpixel((0, 0)) == 128
    assert float(load_mask(tmp_path / "g16.png")[0, 0]) == pytest.approx(128 / 255)
    cases = {
        "I 16-bit values": (np.full((4, 4), 65535, np.int32), 255),
        "I 8-bit values": (np.full((4, 4), 100, np.int32), 100),
        "I 32-bit values": (np.full((4, 4), 2**31 - 1, np.int32), 255),
        "F fractions": (np.full((4, 4), 0.5, np.float32), 128),
        "F 16-bit values": (np.full((4, 4), 32896.0, np.float32), 128),
    }
    for what, (array, expected) in cases.items():
        assert input_image(Image.fromarray(array)).image.getpixel((0, 0)) == (expected,) * 3, what
    with pytest.raises(ValueError, match=r"^image: the image is a 32-bit float image with values in \[-1, -1\]; such"):
        input_image(Image.fromarray(np.full((4, 4), -1.0, np.float32)))


def test_a_mask_reads_the_same_for_inpainting_and_regions_alpha_included():
    from multidiffusion.io.image_loader import mask_image  # the one reading of a mask image

    black = np.zeros((8, 16, 4), np.uint8)
    black[:, :8, 3] = 255  # black paint, opaque on the left, transparent on the right
    la = Image.fromarray(black[..., 2:]).convert("LA")
    palette = Image.new("P", (16, 8), 1)
    palette.paste(0, (0, 0, 8, 8))
    palette.info["transparency"] = 1
    grey = Image.fromarray(np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1)))
    one = Image.fromarray(np.tile(np.arange(16) < 8, (8, 1)))  # mode "1"
    for image in (Image.fromarray(black), la, palette, grey, one):
        inpaint = np.asarray(input_image(image, "mask", mode="L").image)
        region = load_mask(image).numpy() * 255
        assert np.array_equal(inpaint, np.asarray(mask_image(image))) and np.allclose(region, inpaint), image.mode
    assert np.asarray(input_image(Image.fromarray(black), "mask", mode="L").image)[:, :8].min() == 255
    options = build_options(
        "inpaint",
        {"prompt": "a", "image": Image.new("RGB", (64, 64)), "mask": Image.fromarray(np.tile(black, (8, 4, 1)))},
    )
    assert np.asarray(options.mask.image)[:, :8].min() == 255 and np.asarray(options.mask.image)[:, 8:16].max() == 0


def test_region_masks_stay_uint8_until_the_latent_grid_and_binary_ones_are_packed():
    binary = torch.zeros(512, 512, dtype=torch.bool)
    binary[:, :200] = True
    soft = torch.linspace(0, 1, 512).repeat(512, 1)
    regions = [Region("a", mask=binary), Region("b", mask=soft), Region("c", box=(0.0, 0.0, 0.5, 1.0), feather=8)]
    for region in regions:
        weights = region.pixel_weights(512, 512)
        assert weights.dtype == torch.uint8 and region.pixel_mask(512, 512).dtype == torch.float32
        assert torch.allclose(to_latent_grid(weights, 8), to_latent_grid(region.pixel_mask(512, 512), 8), atol=1e-6)
    assert regions[0]._fitted[1].nbytes == 512 * 512 // 8  # 1 bit a pixel
    assert regions[1]._fitted[1].nbytes == 512 * 512  # 1 byte a pixel, not 4
    layout = region_layout(regions, 512, 512, background="b")
    assert layout.masks.dtype == torch.float32 and layout.masks.shape == (4, 64, 64)
    assert float(layout.masks[1, 0, 24]) == pytest.approx(1.0) and float(layout.masks[1, 0, 25]) == 0.0


def test_messages_are_one_line_name_the_parameter_and_show_no_object_reprs(tmp_path):
    with pytest.raises(ValueError) as info:
        input_image(_uri(b"not a picture"), "control_image")
    assert str(info.value) == f"control_image: the data URI is not an image (cannot identify the format); {ALLOWED}"
    cut = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))[:300]
    with pytest.raises(ValueError, match=r"^mask: the data URI is not an image \(") as info:
        load_mask(_uri(cut))
    assert "0x" not in str(info.value) and "<" not in str(info.value)
    with pytest.raises(
        ValueError, match=r"^image: the path 'a\\x00b\.png' holds a null byte; give an image file's path"
    ):
        input_image("a\0b.png")
    with pytest.raises(ValueError, match=r"^mask: the upload's name 'a\\x00b\.png' holds a null byte; upload an image"):
        read_upload("a\0b.png", "mask", ServerLimits())
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(ValueError, match=r"^mask: '.*fifo\.png' is not a regular file \(a FIFO, socket or device\?\)"):
        input_image(tmp_path / "fifo.png", "mask", mode="L")
    with pytest.raises(ValueError, match=r"^image: no such file '~no-such-user-25/x\.png'"):
        input_image("~no-such-user-25/x.png")
    with pytest.raises(ValueError) as info:
        build_options("img2img", {"prompt": "a", "image": Image.new("RGB", (1, 1))})
    assert str(info.value).startswith("image is 1x1 px, which makes a canvas 1 px in height (the input image's size)")


def test_a_header_over_pils_warning_threshold_is_refused_without_a_stray_warning(tmp_path):
    """A 12000^2 PNG (above PIL's 89 Mpx warning, below its 179 Mpx error) was refused with PIL's
    DecompressionBombWarning printed beside the one `error:` line (the issue 25 audit)."""
    import struct
    import warnings
    import zlib

    from multidiffusion.io.image_loader import input_image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 12000, 12000, 8, 0, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        with pytest.raises(ValueError, match=r"image: .* is 12000x12000 = 144,000,000 pixels"):
            input_image(str(tmp_path / "bomb.png"))
