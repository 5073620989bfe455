"""The demo model's data, checker and shipped weights (fast: no training, a 2-step sample)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from devtools.demo.architecture import DEFAULT_MODEL_DIR
from devtools.demo.captions import caption_scene
from devtools.demo.checker import (
    agreement,
    agreement_score,
    classify,
    colour_classes,
    mask_colour,
    parse_caption,
)
from devtools.demo.scenes import (
    LAYOUT_CLASSES,
    VOCABULARY,
    Scene,
    SceneObject,
    generate,
    render_scene,
    sample_scene,
)

ATTRIBUTES = ("sky", "ground", "celestial", "mountains", "hills")


@pytest.fixture(scope="module")
def dataset() -> tuple[np.ndarray, list[str], list[Scene]]:
    return generate(np.random.default_rng(2024), 400)


def test_generator_is_deterministic_per_seed() -> None:
    a_images, a_captions, a_scenes = generate(np.random.default_rng(7), 16)
    b_images, b_captions, b_scenes = generate(np.random.default_rng(7), 16)
    c_images, _, _ = generate(np.random.default_rng(8), 16)
    assert a_images.dtype == np.uint8 and a_images.shape == (16, 64, 64, 3)
    np.testing.assert_array_equal(a_images, b_images)
    assert a_captions == b_captions and a_scenes == b_scenes
    assert not np.array_equal(a_images, c_images)


def test_renders_any_width_and_checker_reads_panoramas() -> None:
    rng = np.random.default_rng(3)
    wrong = 0
    for _ in range(20):
        scene = sample_scene(rng)
        wide = render_scene(scene, 64, 256)
        assert wide.shape == (64, 256, 3)
        found = classify(wide)
        wrong += sum(found[k] != getattr(scene, k) for k in ATTRIBUTES)
    assert wrong <= 1
    assert render_scene(scene, 96).shape == (96, 96, 3)


def test_captions_use_the_vocabulary_and_parse_to_the_truth(dataset) -> None:
    _, captions, scenes = dataset
    words = set(VOCABULARY)
    lengths = []
    for caption, scene in zip(captions, scenes, strict=True):
        assert caption and set(caption.replace(",", " ,").split()) <= words, caption
        lengths.append(len(caption.split()))
        want = parse_caption(caption)
        assert want, caption
        for key in ("sky", "ground", "celestial", "mountains"):
            if key in want:
                assert want[key] == getattr(scene, key), (caption, key)
        if "hills" in want:
            assert scene.hills, caption
        for kind, colour in want.get("objects", []):
            assert any(o.kind == kind and o.colour == colour for o in scene.objects), caption
    assert max(lengths) + 2 <= 32  # fits the tokenizer's model_max_length with BOS and EOS
    assert Counter(len(parse_caption(c)) for c in captions)[1] > 20  # some captions name one part only


def test_parse_caption_examples() -> None:
    assert parse_caption("snowy mountains under a starry night sky") == {"sky": "night", "mountains": "snowy"}
    assert parse_caption("a red house in a green meadow") == {"ground": "meadow", "objects": [("house", "red")]}
    assert parse_caption("a desert at sunset with the sun") == {"ground": "desert", "sky": "sunset", "celestial": "sun"}
    assert parse_caption("rocky mountains above a snowy field") == {"ground": "snowfield", "mountains": "bare"}
    assert parse_caption("") == {}


def test_checker_agrees_with_ground_truth(dataset) -> None:
    images, captions, scenes = dataset
    right = Counter()
    for image, scene in zip(images, scenes, strict=True):
        found = classify(image)
        for key in ATTRIBUTES:
            right[key] += found[key] == getattr(scene, key)
        assert found["snow"] == scene.snow or found["mountains"] != scene.mountains
    for key in ATTRIBUTES:
        assert right[key] / len(scenes) >= 0.99, (key, right[key])
    scores = [agreement_score(image, caption) for image, caption in zip(images, captions, strict=True)]
    assert np.mean(scores) >= 0.99


def test_checker_rejects_wrong_captions() -> None:
    scene = Scene(
        sky="night",
        ground="desert",
        celestial="moon",
        mountains="snowy",
        seed=5,
        objects=(SceneObject("house", "red", 0.5, 0.9, 0.25),),
    )
    image = render_scene(scene)
    assert agreement(image, "a red house in a desert under a starry sky with the moon, snowy mountains") == {
        "sky": True,
        "ground": True,
        "celestial": True,
        "mountains": True,
        "objects": True,
    }
    assert agreement(image, "a blue house in a green meadow on a sunny day with bare rocky mountains") == {
        "sky": False,
        "ground": False,
        "mountains": False,
        "objects": False,
    }
    assert agreement_score(image, "a forest under a blue sky") == 0.0


def test_mask_colour() -> None:
    scene = Scene(sky="night", ground="meadow", seed=1, objects=(SceneObject("house", "red", 0.5, 0.95, 0.3),))
    image = render_scene(scene)
    h = np.zeros((64, 64), bool)
    h[56:60, 26:38] = True  # the house body
    sky = np.zeros((64, 64), bool)
    sky[:10] = True
    assert mask_colour(image, h) == "red"
    assert mask_colour(image, sky) == "dark"
    assert mask_colour(render_scene(Scene(sky="day", ground="snowfield")), ~sky) in {"white", "blue"}
    assert colour_classes(image).shape == (64, 64)
    with pytest.raises(ValueError, match="mask"):
        mask_colour(image, np.ones((8, 8), bool))


def test_tokenizer_has_one_token_per_vocabulary_word() -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(DEFAULT_MODEL_DIR / "tokenizer")
    assert 16 <= tok.model_max_length <= 32
    for word in VOCABULARY:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    ids = tok("a zebra on the sea!", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(ids) == tok.model_max_length and ids[0] == tok.bos_token_id and ids[-1] == tok.pad_token_id
    assert tok.unk_token_id not in ids[1:6]  # unknown words fall back to characters


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(DEFAULT_MODEL_DIR), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_model_folder_loads_and_is_small(pipe) -> None:
    files = [p for p in Path(DEFAULT_MODEL_DIR).rglob("*") if p.is_file()]
    shipped = [p for p in Path(DEFAULT_MODEL_DIR).parent.rglob("*") if p.is_file()]  # with the ControlNet
    assert sum(p.stat().st_size for p in shipped) <= 30 * 2**20
    weights = [p for p in files if p.suffix in {".safetensors", ".bin", ".pt", ".ckpt"}]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.unet.dtype == torch.float32


def test_two_step_sample_is_finite(pipe) -> None:
    gen = torch.Generator().manual_seed(0)
    out = pipe(
        "a red house in a green meadow", num_inference_steps=2, guidance_scale=5.0, generator=gen, output_type="np"
    )
    assert out.images.shape == (1, 64, 64, 3)
    assert np.isfinite(out.images).all()


def test_text_encoder_tensors_have_the_hub_layout():
    """``text_model.*`` names, as SD checkpoints on the Hub: transformers 4.x loads nothing else (it
    would silently build a random text encoder), and 5.x loads these too."""
    from safetensors import safe_open

    with safe_open(str(DEFAULT_MODEL_DIR / "text_encoder" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("text_model.") for k in keys)


def test_isolated_subjects_on_plain_colours() -> None:
    """Single subjects on a plain backdrop, captioned by their phrase alone; landscapes unchanged
    when the share is 0."""
    from devtools.demo.scenes import render_layout, sample_isolated

    rng = np.random.default_rng(5)
    kinds = Counter()
    for _ in range(60):
        scene = sample_isolated(rng)
        kinds[scene.isolated] += 1
        image, labels = render_layout(scene)
        caption = caption_scene(scene, rng)
        want = parse_caption(caption)
        if scene.isolated == "object":
            assert want == {"objects": [(scene.objects[0].kind, scene.objects[0].colour)]}, caption
            assert (labels == LAYOUT_CLASSES.index(scene.objects[0].kind)).sum() > 20
        elif scene.isolated == "celestial":
            assert want == {"celestial": scene.celestial}, caption
            _, y, r = scene.celestial_pos  # small and high, as in a landscape (and a region box)
            assert 0.05 <= r <= 0.15 and y <= 0.4, scene.celestial_pos
        else:
            assert list(want) == [scene.isolated], caption
        backdrop = (image == np.asarray(scene.backdrop, np.uint8)).all(-1)
        assert 0.02 < backdrop.mean() < 0.99  # the subject and its plain surround
    assert set(kinds) == {"object", "celestial", "sky", "ground"}
    only = Counter(sample_isolated(rng, ("object", "ground")).isolated for _ in range(40))
    assert set(only) == {"object", "ground"} and only["object"] > only["ground"]  # 45 : 15
    with pytest.raises(ValueError, match="kinds must be some of object, celestial, sky, ground"):
        sample_isolated(rng, ("house",))
    a = generate(np.random.default_rng(3), 8)
    b = generate(np.random.default_rng(3), 8, isolated_share=0.0)
    assert a[1] == b[1] and np.array_equal(a[0], b[0])
    _, _, scenes = generate(np.random.default_rng(3), 200, isolated_share=0.3)
    assert 40 <= sum(bool(s.isolated) for s in scenes) <= 80


def test_free_layout_and_its_class_map() -> None:
    """The ControlNet's scenes: the horizon moves and waves; the class map marks it, and the checker
    finds it in the rendered image to within a pixel."""
    from devtools.demo.checker import horizon_error, layout_horizon
    from devtools.demo.scenes import horizon_rows, layout_image, render_layout

    rng = np.random.default_rng(0)
    horizons = [sample_scene(rng, free_layout=True).horizon for _ in range(200)]
    assert min(horizons) < 0.48 and max(horizons) > 0.75
    scene = Scene("day", "meadow", horizon=0.5, wave=(0.1, 2.0, 0.0), free=True, seed=3)
    image, labels = render_layout(scene, 64, 256)
    assert labels.shape == (64, 256) and set(np.unique(labels)) == {0, LAYOUT_CLASSES.index("ground")}
    assert np.abs(layout_horizon(labels) - np.ceil(horizon_rows(scene, 64, 256) - 0.5)).max() <= 1
    assert layout_horizon(labels).max() - layout_horizon(labels).min() >= 10
    assert horizon_error(image, labels) <= 1.0
    assert layout_image(labels).shape == (64, 256, 3)
