"""The web app with a ControlNet: the control image inputs exist only when the served model has one,
uploads go through the checked loader (the name recorded, never the server's folder), the preview
shows the preprocessed map, and a run with a control image (or the Tile ControlNet's resized input on
the Upscale tab) records it."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import StableDiffusionControlNetPipeline
from PIL import Image

from multidiffusion import MultiDiffusion
from multidiffusion.app import ModelPool, ServerLimits
from multidiffusion.app.handlers import OutputStore, generate_panorama, preview_control
from multidiffusion.app.settings import panorama_request, upscale_request

from .test_app_images import IMAGE_FORM, picture
from .test_controlnet import _control_image, _controlnet

FORM = {**IMAGE_FORM, "num_inference_steps": 2, "height": 128, "width": 256}


@pytest.fixture(scope="module")
def md_cn(sd16):
    md = MultiDiffusion(StableDiffusionControlNetPipeline(**sd16.components, controlnet=_controlnet(sd16.unet, 1)))
    md.set_progress_bar_config(disable=True)
    return md


@pytest.fixture
def pool(md_cn):
    return ModelPool(["tiny"], lambda name: md_cn)


def test_the_control_image_is_an_upload_checked_like_the_others(pool, tmp_path):
    edges = tmp_path / "edges.png"
    _control_image(width=256, height=128).save(edges)
    request = panorama_request(
        {**FORM, "control_image": str(edges), "control_preprocessor": "canny"}, ServerLimits(), pool
    )
    o = request.options
    assert o.control_image[0].path == "edges.png" and o.control_preprocessor == "canny"  # the name, not the folder
    assert panorama_request(FORM, ServerLimits(), pool).options.control_image is None
    with pytest.raises(ValueError, match=r"^control_image is 256×128 px; this server takes images up to 128 px"):
        panorama_request({**FORM, "control_image": str(edges)}, ServerLimits(max_side=128), pool)
    with pytest.raises(ValueError, match=r"^control_preprocessor must be one of"):
        panorama_request({**FORM, "control_image": str(edges), "control_preprocessor": "depth"}, ServerLimits(), pool)
    photo = picture(tmp_path / "photo.png")
    up = upscale_request({**FORM, "task": "upscale", "image": photo, "strength": 0.5, "scale": 2}, ServerLimits(), pool)
    assert up.options.control_image is None  # the run conditions on the resized input (Tile ControlNet)


def test_the_preview_is_the_preprocessed_map(tmp_path):
    square = tmp_path / "square.png"
    image = Image.new("RGB", (64, 64), "black")
    image.paste((255, 255, 255), (16, 16, 48, 48))
    image.save(square)
    edges = np.asarray(preview_control(str(square), "canny", ServerLimits()))
    assert edges[32, 14:18].max() == 255 and edges[32, 30:34].max() == 0
    assert preview_control(None, "canny", ServerLimits()) is None
    with pytest.raises(ValueError, match=r"^control_image: the upload 'nothing\.png' is gone"):
        preview_control(str(tmp_path / "nothing.png"), "none", ServerLimits())


def test_a_panorama_from_the_page_records_its_control_image(pool, tmp_path):
    edges = tmp_path / "edges.png"
    _control_image(width=256, height=128).save(edges)
    out = generate_panorama(
        {**FORM, "control_image": str(edges)}, pool=pool, limits=ServerLimits(), store=OutputStore(tmp_path / "out")
    )
    from multidiffusion.files.metadata import read_parameters

    assert read_parameters(out.path)["control_image"][0]["path"] == "edges.png"


def test_the_page_shows_control_inputs_only_with_a_controlnet(md_cn, md16):
    pytest.importorskip("gradio")
    from multidiffusion.app.server import create_app

    def ids(app):
        return {c.get("props", {}).get("elem_id") for c in app.get_config_file()["components"]}

    with_cn = ids(create_app(["tiny"], lambda name: md_cn, ServerLimits()))
    assert {"pano-control-image", "pano-control-preview", "upscale-control-image", "upscale-control-preprocessor"} <= (
        with_cn
    )
    assert "pano-control-image" not in ids(create_app(["tiny"], lambda name: md16, ServerLimits()))
