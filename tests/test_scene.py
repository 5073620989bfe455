"""Scene files and the `multidiffusion regions` command: validation that names the field, examples,
regeneration from the PNG, and errors that write nothing."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multidiffusion import MAX_REGIONS, load_scene, region_layout
from multidiffusion.cli import main
from multidiffusion.files.metadata import read_parameters
from multidiffusion.files.scene import parse_scene
from multidiffusion.io.trust import TypedPath
from multidiffusion.regions.masks import load_mask

EXAMPLES = Path(__file__).parent.parent / "examples" / "regions"

SCENE = """\
width = 256
height = 128
background = "a beach"
num_inference_steps = 2
bootstrap_steps = 1
seed = 4

[[regions]]
prompt = "a red ball"
mask = "masks/ball.png"

[[regions]]
prompt = "a dog"
box = [0.6, 0.1, 0.95, 0.9]
feather = 4
"""


@pytest.fixture
def scene_dir(tmp_path):
    (tmp_path / "masks").mkdir()
    mask = np.zeros((128, 256), dtype=np.uint8)
    mask[32:96, 16:112] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "ball.png")
    (tmp_path / "scene.toml").write_text(SCENE)
    return tmp_path


def test_toml_and_json_scenes_read_the_same(scene_dir):
    toml = load_scene(scene_dir / "scene.toml")
    data = {
        "width": 256,
        "height": 128,
        "background": "a beach",
        "num_inference_steps": 2,
        "bootstrap_steps": 1,
        "seed": 4,
        "regions": [
            {"prompt": "a red ball", "mask": "masks/ball.png"},
            {"prompt": "a dog", "box": [0.6, 0.1, 0.95, 0.9], "feather": 4},
        ],
    }
    (scene_dir / "scene.json").write_text(json.dumps(data))
    js = load_scene(scene_dir / "scene.json")
    assert toml.seed == js.seed == 4 and toml.model is None
    for scene in (toml, js):
        args = scene.arguments
        assert {k: args[k] for k in ("width", "height", "background", "num_inference_steps")} == {
            "width": 256,
            "height": 128,
            "background": "a beach",
            "num_inference_steps": 2,
        }
        ball, dog = args["regions"]
        assert Path(ball.mask) == scene_dir / "masks" / "ball.png"  # relative to the scene file
        assert dog.box == (0.6, 0.1, 0.95, 0.9) and dog.feather == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("num_inference_step = 3", r"scene.toml: unknown setting 'num_inference_step' \(did you mean "),
        ('width = "512"', r"scene.toml: width must be a multiple of 8 from 64 to 16384 \(pixels\), got '512'"),
        ("circular = 1", "scene.toml: circular must be True or False, got 1"),
        ("window = [8, 8, 8]", r"scene.toml: window must be an integer or a \(height, width\) pair"),
        ("num_inference_steps = 0", "scene.toml: num_inference_steps must be an integer from 1 to 1000, got 0"),
        (
            "num_inference_steps = 10\nbootstrap_steps = 20",
            "scene.toml: bootstrap_steps must be an integer from 0 to 10",
        ),
        ('scheduler = "fancy"', "scene.toml: scheduler "),
        ('[[regions]]\nprompt = "a"\nbox = "0,0,1,1"', r"scene.toml: regions\[0\].box must be a list of 4 numbers"),
        (
            '[[regions]]\nprompt = "a"\nbox = [0, 0, 1, 1]\ncolour = "red"',
            r"regions\[0\] has an unknown field 'colour'",
        ),
        ("[[regions]]\nbox = [0, 0, 1, 1]", r"scene.toml: regions\[0\] needs a prompt"),
        (
            '[[regions]]\nprompt = "a"\nbox = [5, 0, 2, 1]',
            r"scene.toml: regions\[0\].box \(5, 0, 2, 1\) must have x1 > x0",
        ),
        ('[[regions]]\nprompt = "a"\nweight = -1\nbox = [0, 0, 1, 1]', r"regions\[0\].weight must be a number > 0"),
        ('[segmentation]\nmap = "m.png"', "scene.toml: segmentation needs colors"),
        ('[segmentation]\nmap = "m.png"\ncolors = { "#fff" = 3 }', r"segmentation.colors\['#fff'\] must be a prompt"),
        ("regions = 3", "scene.toml: regions must be a list of region tables, got 3"),
    ],
)
def test_scene_errors_name_the_field(tmp_path, text, message):
    path = tmp_path / "scene.toml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError, match=message):
        load_scene(path)


def test_scene_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_scene(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("width = \n")
    with pytest.raises(ValueError, match=r"bad\.toml: not valid TOML"):
        load_scene(tmp_path / "bad.toml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="a scene must be a table"):
        load_scene(tmp_path / "list.json")
    (tmp_path / "scene.yaml").write_text("")
    with pytest.raises(ValueError, match=r"must end in \.toml or \.json"):
        load_scene(tmp_path / "scene.yaml")
    regions = [{"prompt": f"r{i}", "box": [0, 0, 8, 8]} for i in range(MAX_REGIONS + 1)]
    with pytest.raises(ValueError, match=f"at most {MAX_REGIONS} regions per canvas"):
        parse_scene({"regions": regions})


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.*") if p.suffix in (".toml", ".json")))
def test_examples_are_valid_scenes(name):
    scene = load_scene(EXAMPLES / name)
    args = scene.arguments
    layout = region_layout(args["regions"], args["height"], args["width"], 8, args.get("background"))
    assert layout.regions and bool((layout.weights.sum(0) > 0).all())
    assert scene.model and scene.seed is not None


def run_cli(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_scene_to_png_with_preview_and_back_with_from(scene_dir, tiny_model_dir, capsys):
    out = scene_dir / "out.png"
    model = ["--model", tiny_model_dir, "-q"]
    code, stdout, err = run_cli(["regions", scene_dir / "scene.toml", "-o", out, "--preview", *model], capsys)
    assert code == 0, err
    assert "wrote" in stdout and out.is_file() and (scene_dir / "out-layout.png").is_file()
    params = read_parameters(out)
    assert params["task"] == "regions" and params["seed"] == 4 and params["width"] == 256
    assert [r["prompt"] for r in params["regions"]] == ["a red ball", "a dog"]
    stored = load_mask(params["regions"][0]["mask"])  # the mask's content travels in the PNG
    torch.testing.assert_close(stored, load_mask(scene_dir / "masks" / "ball.png"))
    (scene_dir / "masks" / "ball.png").unlink()
    again = scene_dir / "again.png"
    code, _, err = run_cli(["regions", "--from", out, "-o", again, *model], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))
    changed = scene_dir / "changed.png"
    code, _, err = run_cli(["regions", "--from", out, "--seed", 5, "-o", changed, *model], capsys)
    assert code == 0, err
    assert read_parameters(changed)["seed"] == 5


def test_cli_quick_layout_flags(tmp_path, tiny_model_dir, capsys):
    mask = np.zeros((128, 128), dtype=np.uint8)
    mask[64:, :] = 255
    Image.fromarray(mask).save(tmp_path / "sea.png")
    out = tmp_path / "out.png"
    argv = ["regions", "--background", "a sky", "--region", "a ball", "--box", "0.1,0.1,0.4,0.4"]
    argv += ["--region", "the sea", "--mask", tmp_path / "sea.png", "--feather", 4, "--width", 128, "--height", 128]
    argv += ["--steps", 2, "--seed", 1, "-o", out, "--model", tiny_model_dir, "-q"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    params = read_parameters(out)
    assert params["regions"][0] == {"prompt": "a ball", "box": [0.1, 0.1, 0.4, 0.4]}
    assert params["regions"][1]["feather"] == 4 and params["background"] == "a sky"
    assert "model calls" in stdout


def test_cli_segmentation_map(tmp_path, tiny_model_dir, capsys):
    seg = np.zeros((128, 128, 3), dtype=np.uint8)
    seg[:64] = (135, 206, 235)
    seg[64:] = (64, 64, 64)
    Image.fromarray(seg).save(tmp_path / "map.png")
    out = tmp_path / "out.png"
    argv = ["regions", "--segmentation", tmp_path / "map.png", "--colors", "#87ceeb=a blue sky; #404040=a road"]
    argv += ["--steps", 2, "--width", 128, "--height", 128, "-o", out, "--model", tiny_model_dir, "-q"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    params = read_parameters(out)
    assert [r["prompt"] for r in params["regions"]] == ["a blue sky", "a road"] and params["background"] is None


def test_cli_preview_only_loads_no_model(scene_dir, capsys):
    out = scene_dir / "out.png"
    code, _, err = run_cli(
        ["regions", scene_dir / "scene.toml", "--preview-only", "-o", out, "--model", "nope"], capsys
    )
    assert code == 0, err
    assert (scene_dir / "out-layout.png").is_file() and not out.exists()
    assert Image.open(scene_dir / "out-layout.png").size == (256, 128)


def _map(tmp_path):
    seg = np.zeros((128, 128, 3), dtype=np.uint8)
    seg[:, 64:] = (255, 0, 0)
    Image.fromarray(seg).save(tmp_path / "map.png")
    return tmp_path / "map.png"


CANVAS = ["--width", 128, "--height", 128]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (lambda d: [d / "scene.toml"], r"scene.toml: unknown setting 'colour'"),
        (lambda d: ["--box", "0,0,1,1", "--region", "a"], r"--box must follow a --region PROMPT"),
        (lambda d: ["--background", "b", "--region", "a", "--box", "0,0,200,64", *CANVAS], r"leaves the 128x128"),
        (lambda d: ["--background", "b", "--region", "a", "--box", "0,0,1,2,3", *CANVAS], "expected x0,y0,x1,y1"),
        (lambda d: ["--region", "a", "--box", "0,0,64,128", *CANVAS], "no background prompt, but 50.0%"),
        (lambda d: ["--region", "a", "--box", "0,0,64,128", "--width", 128], "no background prompt, but 50.0%"),
        (lambda d: ["--segmentation", _map(d), "--colors", "#ff0000=a", *CANVAS], r"no prompt: #000000 \(8192 px\)"),
        (lambda d: ["--segmentation", _map(d)], "--segmentation MAP and --colors TABLE go together"),
        (
            lambda d: ["--background", "b", "--region", "a", "--mask", _map(d), "--width", 256, "--height", 128],
            r"mask is 128x128 pixels \(aspect 1.000\) but the canvas is 256x128",
        ),
        (
            lambda d: ["--background", "b", "--steps", 0],
            "num_inference_steps must be an integer from 1 to 1000, got 0 \\(--steps\\)",
        ),
        (
            lambda d: [
                "--background",
                "b",
                *[x for i in range(MAX_REGIONS + 1) for x in ("--region", f"r{i}", "--box", "0,0,8,8")],
                *CANVAS,
            ],
            f"at most {MAX_REGIONS} regions per canvas",
        ),
        (lambda d: [d / "scene.toml", "--from", d / "x.png"], "give a scene file or --from PNG, not both"),
    ],
    ids=[
        "unknown-field",
        "box-before-region",
        "box-outside",
        "box-syntax",
        "uncovered",
        "uncovered-after-loading",
        "colour-without-prompt",
        "map-without-colors",
        "mask-aspect",
        "steps",
        "too-many-regions",
        "scene-and-from",
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, tiny_model_dir, capsys, argv, message):
    (tmp_path / "scene.toml").write_text('background = "b"\ncolour = "red"\n')
    args = argv(tmp_path)
    before = set(tmp_path.iterdir())
    out = tmp_path / "out.png"
    code, _, err = run_cli(["regions", *args, "-o", out, "--preview", "--model", tiny_model_dir, "-q"], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert set(tmp_path.iterdir()) == before  # nothing written


# -- scene files with input images (img2img, upscale, inpaint, outpaint; regions re-working an image) ------
def _photo(path, width=128, height=64):
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[: height // 2] = (90, 150, 230)
    rgb[height // 2 :] = (40, 140, 50)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture
def image_dir(tmp_path):
    (tmp_path / "images").mkdir()
    _photo(tmp_path / "images" / "photo.png")
    mask = np.zeros((64, 128), dtype=np.uint8)
    mask[:32] = 255
    Image.fromarray(mask).save(tmp_path / "images" / "sky.png")
    return tmp_path


def test_a_scene_names_its_task_and_its_files_are_relative_to_it(image_dir):
    import hashlib

    from multidiffusion.options import InpaintOptions, OutpaintOptions, UpscaleOptions

    photo = image_dir / "images" / "photo.png"
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    texts = {
        "inpaint": 'task = "inpaint"\nimage = "images/photo.png"\nmask = "images/sky.png"\nprompt = "a sunset"\n',
        "upscale": 'task = "upscale"\nimage = "images/photo.png"\nscale = 2\nupscaler = "Bicubic"\n',
        "outpaint": 'task = "outpaint"\nimage = "images/photo.png"\nprompt = "a"\nleft = 64\nseed = 2\n',
        "record": f'task = "img2img"\nprompt = "a"\nimage = {{ path = "images/photo.png", sha256 = "{digest}" }}\n',
    }
    scenes = {}
    for name, text in texts.items():
        (image_dir / f"{name}.toml").write_text(text)
        scenes[name] = load_scene(image_dir / f"{name}.toml")
    inpaint = scenes["inpaint"].options
    assert isinstance(inpaint, InpaintOptions) and scenes["inpaint"].task == "inpaint"
    assert inpaint.image.path == str(photo) and inpaint.image.sha256 == digest  # absolute, recorded as such
    assert inpaint.mask.path == str(image_dir / "images" / "sky.png") and inpaint.mask.image.mode == "L"
    upscale = scenes["upscale"].options
    assert isinstance(upscale, UpscaleOptions) and upscale.upscaler == "bicubic" and upscale.width == 256
    outpaint = scenes["outpaint"].options
    assert isinstance(outpaint, OutpaintOptions) and (outpaint.width, outpaint.seed) == (192, 2)
    assert scenes["record"].options.image.sha256 == digest
    # the same scene as JSON reads the same
    (image_dir / "inpaint.json").write_text(
        json.dumps({"task": "inpaint", "image": "images/photo.png", "mask": "images/sky.png", "prompt": "a sunset"})
    )
    assert load_scene(image_dir / "inpaint.json").options.image.sha256 == digest


def test_a_regions_scene_reworks_an_image(image_dir):
    (image_dir / "s.toml").write_text(
        'image = "images/photo.png"\nstrength = 0.6\nbackground = "a sky"\n'
        '[[regions]]\nprompt = "a sun"\nbox = [0.1, 0.1, 0.3, 0.4]\n'
    )
    options = load_scene(image_dir / "s.toml").options
    assert options.task == "regions" and options.strength == 0.6
    assert (options.height, options.width) == (64, 128)  # the canvas defaults to the image's size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('task = "paint"', "scene.toml: task must be one of 'panorama', 'regions', 'img2img'"),
        ("task = 3", "scene.toml: task must be a string, got 3"),
        ('task = "img2img"\nprompt = "a"', "scene.toml: image is required"),
        ('task = "img2img"\nprompt = "a"\nimage = "nope.png"', "scene.toml: image: no such file '"),
        ('task = "img2img"\nprompt = "a"\nimage = "images/photo.png"\nstrength = 0', "scene.toml: strength must be"),
        ('task = "img2img"\nprompt = "a"\nimage = { path = "images/photo.png" }', r"scene.toml: image must be an"),
        (
            'task = "img2img"\nprompt = "a"\nimage = { path = "images/photo.png", sha256 = "' + "0" * 64 + '" }',
            "has changed since these settings were recorded",
        ),
        ('task = "inpaint"\nprompt = "a"\nimage = "images/photo.png"', "scene.toml: mask is required"),
        (
            'task = "inpaint"\nprompt = "a"\nimage = "images/photo.png"\nmask = "images/tall.png"',
            "scene.toml: mask is 64x128 but the image is 128x64",
        ),
        ('task = "upscale"\nimage = "images/photo.png"\nscale = 10', "scene.toml: scale must be a number from 1 to 8"),
        ('task = "upscale"\nimage = "images/photo.png"\nupscaler = "x.pth"', "scene.toml: upscaler: no such file"),
        ('task = "upscale"\nimage = "images/photo.png"\nallow_pickle = true', "allow_pickle can't be set by a scene"),
        (
            'task = "img2img"\nprompt = "a"\nimage = "images/photo.png"\nbackground = "b"',
            "unknown setting 'background'",
        ),
        (
            'task = "img2img"\nprompt = "a"\nimage = "i.png"\n[[regions]]\nprompt = "r"\nbox = [0, 0, 1, 1]',
            'scene.toml: regions is for region layouts (task = "regions"), not for img2img',
        ),
        ('background = "b"\nstrength = 0.5', "scene.toml: strength applies to an input image"),
    ],
)
def test_scene_image_errors_name_the_field(image_dir, text, message):
    mask = np.zeros((128, 64), dtype=np.uint8)
    Image.fromarray(mask).save(image_dir / "images" / "tall.png")
    (image_dir / "scene.toml").write_text(text + "\n")
    with pytest.raises(ValueError) as exc:
        load_scene(image_dir / "scene.toml")
    assert message in str(exc.value)


def test_a_pickle_upscaler_in_a_scene_is_never_unpickled_only_a_typed_one_is(image_dir):
    (image_dir / "model.pth").write_bytes(b"weights")
    (image_dir / "s.toml").write_text('task = "upscale"\nimage = "images/photo.png"\nupscaler = "model.pth"\n')
    with pytest.raises(ValueError, match=r"s\.toml: upscaler: .*model\.pth' is a pickle file"):
        load_scene(image_dir / "s.toml")
    # --allow-pickle covers exactly the files typed on that command line, not a scene's
    with pytest.raises(
        ValueError, match=r"s\.toml: upscaler: 'model\.pth' is a pickle named by the settings, not typed"
    ):
        load_scene(image_dir / "s.toml", allow_pickle=True)
    typed = {
        "task": "upscale",
        "image": str(image_dir / "images/photo.png"),
        "upscaler": TypedPath(image_dir / "model.pth"),
    }
    scene = parse_scene(typed, base=image_dir, source="s.toml", allow_pickle=True)
    assert scene.options.upscaler == str(image_dir / "model.pth") and scene.options.allow_pickle


def test_the_cli_runs_a_scene_only_with_its_verb(image_dir, capsys):
    (image_dir / "s.toml").write_text('task = "inpaint"\nimage = "images/photo.png"\nprompt = "a"\n')
    (image_dir / "r.toml").write_text('background = "a"\n')
    out = image_dir / "out.png"
    for argv, message in [
        (["regions", image_dir / "s.toml"], f"run it with `multidiffusion inpaint --scene {image_dir / 's.toml'}`"),
        (["outpaint", "--scene", image_dir / "s.toml"], "s.toml: task is 'inpaint', not outpaint"),
        (["img2img", "--scene", image_dir / "r.toml"], f"run it with `multidiffusion regions {image_dir / 'r.toml'}`"),
    ]:
        code, _, err = run_cli([*argv, "-o", out, "--model", "/no/such/model"], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_a_misspelled_field_is_named_even_when_nothing_is_left_to_draw(tmp_path, capsys):
    """Issue 26, as a new user found it: a scene with a misspelled top-level field and no regions
    said 'nothing to draw'; `steps` (the flag's name) got no hint toward `num_inference_steps`."""
    (tmp_path / "s.toml").write_text('backgroud = "a lake"\n')
    code, _, err = run_cli(["regions", tmp_path / "s.toml", "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and "unknown setting 'backgroud' (did you mean 'background'?)" in err, err
    (tmp_path / "s.toml").write_text('background = "a lake"\nsteps = 3\n')
    code, _, err = run_cli(["regions", tmp_path / "s.toml", "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and "unknown setting 'steps' (did you mean 'num_inference_steps'?)" in err, err
    code, _, err = run_cli(["regions", "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and "nothing to draw" in err
