"""The web app without a browser: limits, the fixed model list, form checks, PNG settings, the
panorama handler, and `multidiffusion serve`'s errors. Browser tests are in tests/browser/."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multidiffusion.app import ModelPool, ServerLimits
from multidiffusion.app.from_png import values_from_png
from multidiffusion.app.handlers import OutputStore, generate_panorama
from multidiffusion.app.settings import (
    PANORAMA_CHOICES,
    Choice,
    available_choices,
    format_window,
    panorama_request,
    parse_window,
)
from multidiffusion.cli import main
from multidiffusion.files.metadata import read_parameters, save_png

FORM = {
    "prompt": "a red house",
    "negative_prompt": "",
    "width": 256,
    "height": 128,
    "num_inference_steps": 2,
    "guidance_scale": 7.5,
    "seed": 5,
    "scheduler": "ddim",
    "circular": False,
    "window": "",
    "stride": "",
    "model": "tiny",
}


@pytest.fixture
def pool(md16):
    return ModelPool(["tiny", "other"], lambda name: md16)


def test_limits_name_the_flag_that_raises_them():
    limits = ServerLimits(max_side=512, max_steps=20)
    assert limits.check_side("width", 512) == 512 and limits.check_side("width", 256.0) == 256
    with pytest.raises(ValueError, match=r"width must be a multiple of 8 from 64 to 512 .*, got 1024 .*max-side"):
        limits.check_side("width", 1024)  # the one canvas side check (io.ranges.check_side), the server's limit
    with pytest.raises(ValueError, match=r"height must be a multiple of 8 from 64 to 512 \(pixels\), got 100$"):
        limits.check_side("height", 100)
    with pytest.raises(ValueError, match="from 64 to 512"):
        limits.check_side("height", 8)
    with pytest.raises(ValueError, match=r"steps 21 is more than this server allows: at most 20 .*--max-steps"):
        limits.check_steps(21)
    with pytest.raises(ValueError, match="steps must be an integer from 1 to 20, got 0"):
        limits.check_steps(0)
    with pytest.raises(ValueError, match="uploads up to 1 MB"):
        ServerLimits(max_upload_mb=1).check_upload("the PNG", 2 * 1024 * 1024)
    with pytest.raises(ValueError, match="--max-side must be an integer from 64 to 16384"):
        ServerLimits(max_side=10**6)


def test_model_pool_offers_only_its_list_and_keeps_one_model_loaded():
    loads = []
    pool = ModelPool(["a", "b", "a"], lambda name: loads.append(name) or f"model {name}")
    assert pool.names == ("a", "b") and pool.default == "a"
    assert pool.get() == "model a" and pool.get("a") == "model a" and loads == ["a"]
    assert pool.get("b") == "model b" and pool.get("a") == "model a" and loads == ["a", "b", "a"]
    for bad in ("/etc/passwd", "../a", "c", 3):
        with pytest.raises(ValueError, match="model must be one of 'a', 'b' \\(chosen at server start\\)"):
            pool.get(bad)
    assert loads == ["a", "b", "a"]
    with pytest.raises(ValueError, match="at least one model"):
        ModelPool([], str)


def test_window_text():
    assert parse_window("window", "") is None and parse_window("window", None) is None
    assert parse_window("window", " 16 ") == 16 and parse_window("window", 16.0) == 16
    assert parse_window("window", "16x32") == (16, 32)
    with pytest.raises(ValueError, match="window must be empty"):
        parse_window("window", "big")
    assert format_window([16, 32]) == "16x32" and format_window(8) == "8" and format_window(None) == ""


def test_form_checks(pool):
    limits = ServerLimits(max_side=512, max_steps=20)
    request = panorama_request(FORM, limits, pool)
    assert request.model == "tiny" and request.seed == 5
    expected = {
        "prompt": "a red house",
        "width": 256,
        "height": 128,
        "num_inference_steps": 2,
        "guidance_scale": 7.5,
        "scheduler": "ddim",
        "circular": False,
    }
    assert {k: request.kwargs[k] for k in expected} == expected
    assert request.options.checked_against.max_side == 512  # the server's limits, in the options
    random = panorama_request({**FORM, "seed": -1, "model": None, "window": "16x16"}, limits, pool)
    assert 0 <= random.seed < 2**32 and random.model == "tiny" and random.kwargs["window"] == (16, 16)
    bad = [
        ({"prompt": "  "}, "prompt must be a non-empty prompt"),
        ({"width": 4096}, "width must be a multiple of 8 from 64 to 512 \\(pixels\\), got 4096 \\(this server"),
        ({"num_inference_steps": 500}, "num_inference_steps must be an integer from 1 to 20, got 500 \\(this server"),
        ({"guidance_scale": -1}, "guidance_scale must be a number ≥ 0"),
        ({"seed": -7}, "seed must be -1 \\(random\\) or an integer from 0 to"),
        ({"scheduler": "fastest"}, "scheduler must be one of ddim"),
        ({"model": "/tmp/evil"}, "model must be one of"),
    ]
    for change, match in bad:
        with pytest.raises(ValueError, match=match):
            panorama_request({**FORM, **change}, limits, pool)


def test_choices_match_the_engine():
    """Each drop-down offers what MultiDiffusion.panorama accepts, its first choice the API default."""
    from multidiffusion import MultiDiffusion

    params = inspect.signature(MultiDiffusion.panorama).parameters
    choices = available_choices(MultiDiffusion.panorama)
    assert {c.key for c in choices} == {c.key for c in PANORAMA_CHOICES}
    for c in choices:  # "auto" stands for None: the API picks by placement
        assert c.choices[0] == (params[c.key].default or "auto"), c


def test_optional_choices_appear_when_the_api_takes_them(pool):
    def panorama(prompt, placement="grid"):
        pass

    choices = available_choices(panorama)
    assert [c.key for c in choices] == ["placement"]
    assert PANORAMA_CHOICES[0].key == "placement"
    request = panorama_request({**FORM, "placement": "shifted"}, ServerLimits(), pool, choices)
    assert request.kwargs["placement"] == "shifted"
    assert panorama_request(FORM, ServerLimits(), pool, choices).kwargs["placement"] == "grid"
    with pytest.raises(ValueError, match="placement must be one of 'grid', 'shifted', got 'magic'"):
        panorama_request(
            {**FORM, "placement": "magic"}, ServerLimits(), pool, (Choice("placement", "Tiling", ("grid", "shifted")),)
        )


def test_pictures_for_the_page_are_new_whole_files_never_rewritten(tmp_path):
    """Gradio rewrites its cached copy of a returned PIL image in place; the same picture returned
    twice then fails a download in flight. The page gets a fresh, whole PNG path each time."""
    store = OutputStore(tmp_path / "out")
    canvas = Image.new("RGB", (40, 24), (250, 120, 10))
    first = store.shown(canvas)
    stamp = Path(first).stat().st_mtime_ns, Path(first).read_bytes()
    value = store.shown({"background": canvas, "layers": [canvas], "composite": None})
    paths = [value["background"], value["layers"][0]]
    assert len({first, *paths}) == 3 and value["composite"] is None
    assert (Path(first).stat().st_mtime_ns, Path(first).read_bytes()) == stamp  # left as it was
    for path in (first, *paths):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(canvas))
    assert store.shown(("text", 3)) == ("text", 3)
    assert not list((tmp_path / "out").glob("*.png"))  # results' pruning never counts them


def test_generate_writes_a_png_that_loads_back(pool, tmp_path):
    steps = []
    store = OutputStore(tmp_path / "out", keep=2)
    result = generate_panorama(
        FORM, pool=pool, limits=ServerLimits(), store=store, on_step=lambda i, n: steps.append((i, n))
    )
    assert steps == [(1, 2), (2, 2)]
    assert "256x128 px, seed 5, " in result.message and "model calls" in result.message
    params = read_parameters(result.path)
    assert params["prompt"] == "a red house" and params["seed"] == 5 and params["model"] == "tiny"
    assert Image.open(result.path).size == (256, 128)

    mode, values, notes = values_from_png(result.path, ServerLimits(), pool)
    assert mode == "panorama" and notes == []
    for key in ("prompt", "width", "height", "num_inference_steps", "guidance_scale", "seed", "scheduler", "model"):
        assert values[key] == FORM[key], key
    assert values["window"] == "16" and values["stride"] == "2"

    for _ in range(3):  # the store keeps the newest `keep` files
        generate_panorama({**FORM, "num_inference_steps": 1}, pool=pool, limits=ServerLimits(), store=store)
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_png_settings_are_fitted_to_the_server(pool, tmp_path):
    path = tmp_path / "big.png"
    save_png(
        Image.new("RGB", (8, 8)),
        path,
        {
            "mode": "panorama",
            "prompt": "x",
            "width": 8192,
            "num_inference_steps": 999,
            "model": "/elsewhere/sd",
            "scheduler": "mystery",
        },
    )
    _, values, notes = values_from_png(path, ServerLimits(max_side=1024, max_steps=50), pool)
    assert values["width"] == 1024 and values["num_inference_steps"] == 50
    assert values["model"] == "tiny" and values["scheduler"] == "ddim"
    assert len(notes) == 4 and "model '/elsewhere/sd' is not offered by this server" in notes[0]

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(ValueError, match="has no multidiffusion parameters"):
        values_from_png(plain, ServerLimits(), pool)
    with pytest.raises(ValueError, match="uploads up to"):
        values_from_png(path, ServerLimits(max_upload_mb=1e-5), pool)


def run_cli(args, capsys):
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_serve_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` fail
    code, err = run_cli(["serve"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "error: the web app needs Gradio, which is not installed: pip install 'multidiffusion[app]'"
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-side", "99999"], "--max-side must be an integer from 64 to 16384, got 99999"),
        (["--max-steps", "0"], "--max-steps must be an integer from 1 to 1000, got 0"),
        (["--port", "70000"], "--port must be from 1 to 65535"),
        (["--model", "/no/such/model"], "model file or folder '/no/such/model' does not exist"),
    ],
)
def test_serve_bad_flags_are_one_line(capsys, args, message):
    pytest.importorskip("gradio")
    code, err = run_cli(["serve", *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_page_builds_with_every_tab(md16):
    pytest.importorskip("gradio")
    from multidiffusion.app.server import create_app

    app = create_app(["tiny"], lambda name: md16, ServerLimits())
    config = app.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"pano-prompt", "pano-generate", "pano-result", "pano-message", "load-png"} <= ids
    assert {"regions-background", "regions-layout", "regions-colours", "regions-boxes", "regions-upload"} <= ids
    assert {"regions-preview", "regions-generate", "regions-result", "regions-preview-image"} <= ids


def test_errors_reach_the_page_as_one_message(caplog):
    pytest.importorskip("gradio")
    from multidiffusion.app.widgets import guarded, message

    def bad_input():
        raise ValueError("width <b>too</b> large")

    def bug():
        raise RuntimeError("secret internals")

    shown = guarded(bad_input, lambda msg: msg)()
    assert shown == '<div class="md-message error">width &lt;b&gt;too&lt;/b&gt; large</div>'
    shown = guarded(bug, lambda msg: msg)()
    assert "internal error (RuntimeError); details are in the server log" in shown
    assert "secret" not in shown and "Traceback" not in shown
    assert "secret internals" in caplog.text  # the traceback goes to the server's log
    assert message("info", "") == ""


def regions_form():
    from multidiffusion.app.layout import colour_cell

    a = np.full((128, 256, 3), 255, np.uint8)
    a[:, 128:] = (230, 25, 75)
    return {
        **{k: v for k, v in FORM.items() if k != "prompt"},
        "width": 256,
        "height": 128,
        "background": "a green meadow",
        "bootstrap_steps": -1,
        "layout": {"background": None, "layers": [], "composite": Image.fromarray(a)},
        "colours": [[colour_cell("#ffffff"), "", ""], [colour_cell("#e6194b"), "snowy mountains", ""]],
        "boxes": [["a red house", "fog", 0.1, 0.5, 0.4, 1.0]],
    }


def test_regions_form_checks(pool):
    from multidiffusion.app.settings import regions_request

    request = regions_request(regions_form(), ServerLimits(), pool)
    assert request.kwargs["background"] == "a green meadow" and request.kwargs["bootstrap_steps"] == 1  # 40 %
    assert [r.prompt for r in request.kwargs["regions"]] == ["snowy mountains", "a red house"]
    assert (
        regions_request({**regions_form(), "bootstrap_steps": 1}, ServerLimits(), pool).kwargs["bootstrap_steps"] == 1
    )
    with pytest.raises(ValueError, match="bootstrap_steps must be an integer from 0 to 2, got 3"):
        regions_request({**regions_form(), "bootstrap_steps": 3}, ServerLimits(), pool)
    with pytest.raises(ValueError, match="box 1: x0, y0, x1, y1 must be numbers"):
        regions_request({**regions_form(), "boxes": [["x", "", "a", 0, 1, 1]]}, ServerLimits(), pool)
    with pytest.raises(ValueError, match="the layout is 256×128 px but the canvas is 128×128: set width and height"):
        regions_request({**regions_form(), "width": 128}, ServerLimits(), pool)
    request = regions_request(
        {**regions_form(), "width": 512, "height": 256}, ServerLimits(), pool
    )  # same aspect: scaled
    assert request.kwargs["regions"][0].pixel_mask(256, 512).shape == (256, 512)


def test_regions_generate_preview_and_load_back(pool, tmp_path):
    from multidiffusion.app.handlers import generate_regions, preview_regions

    preview = preview_regions(regions_form(), pool=pool, limits=ServerLimits())
    assert preview.size == (256, 128)
    with pytest.raises(ValueError, match="covered by no region"):
        preview_regions({**regions_form(), "background": " "}, pool=pool, limits=ServerLimits())

    result = generate_regions(regions_form(), pool=pool, limits=ServerLimits(), store=OutputStore(tmp_path))
    assert (
        "256x128 px, seed 5, " in result.message
        and "· 2 regions" in result.message
        and result.preview.size == (256, 128)
    )
    params = read_parameters(result.path)
    assert params["task"] == "regions" and params["model"] == "tiny" and len(params["regions"]) == 2

    mode, values, notes = values_from_png(result.path, ServerLimits(), pool)
    assert mode == "regions" and notes == []
    assert values["background"] == "a green meadow" and values["seed"] == 5 and values["width"] == 256
    assert [row[1:] for row in values["colours"]] == [["snowy mountains", ""]]
    assert values["boxes"] == [["a red house", "fog", 0.1, 0.5, 0.4, 1.0]]
    again = generate_regions(
        {**regions_form(), **values}, pool=pool, limits=ServerLimits(), store=OutputStore(tmp_path)
    )
    assert (np.asarray(Image.open(again.path)) == np.asarray(Image.open(result.path))).all()  # same image again


def test_serve_wires_models_limits_and_host(monkeypatch, capsys):
    pytest.importorskip("gradio")
    from multidiffusion.app import server

    calls = {}
    monkeypatch.setattr(
        server, "create_app", lambda models, loader, limits, **kw: calls.update(models=models, limits=limits)
    )
    monkeypatch.setattr(server, "launch", lambda app, **kw: calls.update(kw))
    code, err = run_cli(["serve", "--model", "a", "--model", "b", "--max-side", "512", "--host", "0.0.0.0"], capsys)
    assert code == 0
    assert calls["models"] == ["a", "b"] and calls["limits"] == ServerLimits(max_side=512)
    assert calls["host"] == "0.0.0.0" and calls["port"] == 7860 and calls["queue_size"] == 16
    assert "warning: serving on 0.0.0.0: anyone who can reach this address can use the page" in err
    code, err = run_cli(["serve"], capsys)
    assert calls["models"] == ["demo"] and calls["host"] == "127.0.0.1" and "warning" not in err
