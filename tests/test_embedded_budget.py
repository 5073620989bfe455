"""Issue 25, hole 4: the images one scene, batch line, PNG or request embeds are budgeted together
(count and pixels from their headers), before a pixel is decoded."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from multidiffusion.files.scene import parse_scene
from multidiffusion.io.budget import MAX_EMBEDDED_IMAGES, MAX_EMBEDDED_PIXELS, check_embedded, embedded_images

from .test_untrusted_settings import REGIONS, _png_with


def _uri(size: tuple[int, int], mode: str = "L", fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, 255).save(buffer, format=fmt)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def big_uri():
    return _uri((8192, 8192))  # 64 Mpx, a few tens of KB as a flat PNG


def test_embedded_images_are_found_where_they_are():
    data = {"image": "data:a", "regions": [{"mask": "x"}, {"mask": "data:b", "control_image": ["data:c"]}]}
    assert sorted(embedded_images(data)) == [
        ("image", "data:a"),
        ("regions[1].control_image[0]", "data:c"),
        ("regions[1].mask", "data:b"),
    ]


def test_the_pixels_of_embedded_images_are_budgeted_together(big_uri):
    check_embedded({"image": big_uri, "mask": big_uri})  # 2 x 64 Mpx: the budget
    with pytest.raises(ValueError, match=r"embed images of more than 134,217,728 pixels in all \(over it at image 3"):
        check_embedded({"control_image": [big_uri] * 3})
    jpeg = _uri((4096, 4096), "RGB", "JPEG")  # a JPEG's size is read from its header too
    with pytest.raises(ValueError, match="pixels in all"):
        check_embedded({"control_image": [jpeg] * (MAX_EMBEDDED_PIXELS // 4096**2 + 1)})


def test_the_count_of_embedded_images_is_budgeted():
    tiny = _uri((1, 1))
    check_embedded({"control_image": [tiny] * MAX_EMBEDDED_IMAGES})
    with pytest.raises(ValueError, match=f"embed more than {MAX_EMBEDDED_IMAGES} images"):
        check_embedded({"control_image": [tiny] * (MAX_EMBEDDED_IMAGES + 1)})


def test_region_masks_in_stored_settings_are_refused_before_decoding(big_uri, monkeypatch):
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    regions = [{"prompt": "a", "mask": big_uri} for _ in range(32)]
    with pytest.raises(ValueError, match="the settings embed images of more than"):
        parse_scene({**REGIONS, "regions": regions, "mode": "regions"}, source="")
    assert decoded == []


def test_a_png_embedding_40_huge_control_images_is_refused_in_little_memory(tmp_path, big_uri):
    """The audit's case: 40 x 8192^2 control images in a PNG reached 7.5 GB in the command line
    before the 'pass --controlnet' refusal. Now: refused in one line, the process's peak measured."""
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    params = {"mode": "img2img", "prompt": "a", "num_inference_steps": 2, "control_image": [big_uri] * 40}
    png = _png_with(tmp_path, params)
    script = (
        "import resource, sys\n"
        "from multidiffusion.cli import main\n"
        "try:\n"
        f"    main(['img2img', '--from', {str(png)!r}, '-i', {str(tmp_path / 'photo.png')!r}, '-o', "
        f"{str(tmp_path / 'o.png')!r}])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stdout)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    code, peak_mb = done.stdout.split()
    assert code == "2" and "the settings embed images of more than" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert int(peak_mb) < 2048, f"peak {peak_mb} MB"
    print(json.dumps({"embedded_40x8192sq_peak_mb": int(peak_mb)}))
