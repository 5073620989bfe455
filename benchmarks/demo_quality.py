"""The demo model's region and ControlNet figures (``python -m benchmarks --suites demo --json PATH``).

Bootstrapping (paper Sec. 4.2): one region box on a 64 x 64 canvas, the fraction of the box's
pixels in the region prompt's colour class (``devtools.demo.checker.colour_fractions``), without
and with bootstrapping (10 of 25 DDIM steps), over 16 samples (one batch from seed 0). Tight boxes
hold an object (sun, moon, house, tree); loose ones a sky or a ground strip.

ControlNet (``controlnet="demo"``, control image: the scene's class map): the mean distance in
pixels, per column, between the horizon the image shows (``checker.image_horizon``: the strongest
vertical colour change) and the control map's (``checker.layout_horizon``), with and without the
ControlNet from the same noise: on the native 64 x 64 with flat horizons away from the model's habit
(0.45 and 0.78 of the height), and on a 64 x 256 panorama whose control horizon waves across the
width (windows at half-window stride, 7 views, to keep the CPU cost down). Prompts are a sky over a
ground (no mountains or hills), where that colour change is the horizon.

``python -m benchmarks.demo_quality --figures docs/images`` draws the README's pictures.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEPS = 25
BOOTSTRAP = 10
SAMPLES = 16

# (kind, background, region prompt, its colour class, box x0, y0, x1, y1 in pixels of 64 x 64)
BOOTSTRAP_CASES = [
    ("tight", "a clear blue sky over a green meadow", "a yellow sun", "yellow", (8, 4, 26, 22)),
    ("tight", "a dark night sky over a snowfield", "a full moon", "white", (36, 4, 54, 22)),
    ("tight", "a clear blue sky over a desert", "a red house", "red", (20, 30, 44, 58)),
    ("tight", "an overcast sky over a snowfield", "a green tree", "green", (24, 26, 40, 60)),
    ("tight", "a clear blue sky over a snowfield", "a blue house", "blue", (8, 34, 32, 58)),
    ("loose", "a green meadow under a blue sky", "an orange sunset sky", "orange", (0, 0, 40, 24)),
    ("loose", "a desert under a blue sky", "a starry night sky", "dark", (24, 0, 64, 24)),
    ("loose", "a snowfield under an overcast sky", "a blue lake", "blue", (0, 44, 64, 64)),
    ("loose", "a snowfield under a clear blue sky", "a green meadow", "green", (0, 42, 40, 64)),
]

CONTROL_PROMPTS = (
    "a green meadow under a clear blue sky",
    "a snowfield under a starry night sky",
    "a desert under a clear blue sky",
    "a green meadow under an orange sunset sky",
)
NATIVE_HORIZONS = (0.45, 0.78)
PANORAMA_WAVE = (0.6, 0.16, 2.0)  # mean horizon, amplitude (fractions of the height), wavelength (heights)
PANORAMA_STRIDE = 8  # latent pixels: half the demo's 16-latent window (7 views on 64 x 256), to keep the CPU cost down


def _load(model: str, controlnet: bool = False):
    from multidiffusion import MultiDiffusion

    md = MultiDiffusion.from_pretrained(model, device="cpu", controlnet="demo" if controlnet else None)
    md.set_progress_bar_config(disable=True)
    return md


def bootstrap_rows(
    model: str = "demo", samples: int = SAMPLES, steps: int = STEPS, boot: int = BOOTSTRAP
) -> list[dict]:
    from devtools.demo.checker import colour_fractions
    from multidiffusion import Region

    md = _load(model)
    rows = []
    for kind, background, prompt, colour, box in BOOTSTRAP_CASES:
        mask = np.zeros((64, 64), bool)
        mask[box[1] : box[3], box[0] : box[2]] = True
        per: dict[int, list[float]] = {}
        for b in (0, boot):
            out = md.regions(
                height=64, width=64, background=background, regions=[Region(prompt, box=box)], bootstrap_steps=b,
                num_inference_steps=steps, num_images_per_prompt=samples, generator=torch.Generator().manual_seed(0),
                output_type="np",
            )  # fmt: skip
            images = (np.asarray(out.images) * 255).round().astype(np.uint8)
            per[b] = [colour_fractions(im, mask).get(colour, 0.0) for im in images]
        without, with_ = float(np.mean(per[0])), float(np.mean(per[boot]))
        wins = sum(w > o for o, w in zip(per[0], per[boot], strict=True))
        rows.append(
            {
                "suite": "demo",
                "config": f"bootstrapping, {kind} box: {prompt} ({background})",
                "peer": f"no bootstrapping: {without:.2f} of the box {colour}",
                "ours": f"bootstrapping {boot}/{steps} steps: {with_:.2f}",
                "ratio": with_ / without if without > 0 else None,
                "notes": f"{samples} samples; bootstrapping higher on {wins}, lower on "
                f"{sum(w < o for o, w in zip(per[0], per[boot], strict=True))}",
                "extra": {"kind": kind, "colour": colour, "box": box, "without": per[0], "with": per[boot]},
            }
        )
    return rows


def control_map(horizon: float, width: int = 64, wave: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Class indices of a sky-over-ground layout, 64 rows: flat, or waving (amplitude, wavelength)."""
    from devtools.demo.scenes import Scene, render_layout

    scene = Scene("day", "meadow", horizon=horizon, wave=(wave[0], wave[1], 0.0), free=True)
    return render_layout(scene, 64, width)[1]


def _horizon_errors(md, prompt: str, labels: np.ndarray, control: bool, samples: int, steps: int) -> list[float]:
    from PIL import Image

    from devtools.demo.checker import horizon_error
    from devtools.demo.scenes import layout_image

    h, w = labels.shape
    kwargs: dict[str, Any] = {}
    if control:
        kwargs["control_image"] = Image.fromarray(layout_image(labels))
    if w > h:
        kwargs["stride"] = PANORAMA_STRIDE
    out = md.panorama(
        prompt, height=h, width=w, num_inference_steps=steps, num_images_per_prompt=samples,
        generator=torch.Generator().manual_seed(0), output_type="np", **kwargs,
    )  # fmt: skip
    images = (np.asarray(out.images) * 255).round().astype(np.uint8)
    return [horizon_error(im, labels) for im in images]


def controlnet_rows(model: str = "demo", samples: int = 4, steps: int = STEPS) -> list[dict]:
    md = _load(model, controlnet=True)
    plain = _load(model)
    mean, amp, wavelength = PANORAMA_WAVE
    settings = [(f"native 64x64, flat horizon at {h:.2f}", control_map(h)) for h in NATIVE_HORIZONS]
    settings.append(
        (
            f"panorama 64x256, horizon {mean:.2f} +/- {amp:.2f} waving every {wavelength:g} heights",
            control_map(mean, 256, (amp, wavelength)),
        )
    )
    rows = []
    for name, labels in settings:
        errs: dict[bool, list[float]] = {False: [], True: []}
        for prompt in CONTROL_PROMPTS:
            for control in (False, True):
                errs[control] += _horizon_errors(md if control else plain, prompt, labels, control, samples, steps)
        off, on = float(np.mean(errs[False])), float(np.mean(errs[True]))
        lower = sum(a < b for a, b in zip(errs[True], errs[False], strict=True))
        rows.append(
            {
                "suite": "demo",
                "config": f"ControlNet horizon error, {name}",
                "peer": f"no control: {off:.2f} px",
                "ours": f"controlnet='demo': {on:.2f} px",
                "ratio": off / on if on > 0 else None,
                "notes": f"{len(CONTROL_PROMPTS)} prompts x {samples} samples; mean |image horizon - control "
                f"horizon| per column; lower with control on {lower} of {len(errs[True])}",
                "extra": {"without": errs[False], "with": errs[True]},
            }
        )
    return rows


def demo_rows(
    model: str | None = None, quick: bool = False, parts: tuple[str, ...] | list[str] = ("bootstrap", "controlnet")
) -> list[dict]:
    """The ``parts`` asked for (suites demo-bootstrap and demo-controlnet; demo: both) on ``model`` (a
    pipeline folder; default the shipped demo); ``quick``: 4 samples and 10 steps (a smoke test, not
    the published figures)."""
    model = model if model and Path(model).is_dir() else "demo"
    samples, steps, boot = (4, 10, 4) if quick else (SAMPLES, STEPS, BOOTSTRAP)
    rows = bootstrap_rows(model, samples, steps, boot) if "bootstrap" in parts else []
    return rows + (controlnet_rows(model, 2 if quick else 4, steps) if "controlnet" in parts else [])


def _outline(image: np.ndarray, box: tuple[int, int, int, int], colour=(255, 255, 255)) -> np.ndarray:
    out = image.copy()
    x0, y0, x1, y1 = box
    out[y0, x0:x1] = out[y1 - 1, x0:x1] = colour
    out[y0:y1, x0] = out[y0:y1, x1 - 1] = colour
    return out


def figures(folder: str | Path, model: str = "demo", scale: int = 3) -> list[Path]:
    """The README's pictures: a region layout without and with bootstrapping (boxes outlined), and a
    panorama under a waving control map (the map, no control, ControlNet), at ``scale`` x nearest."""
    from PIL import Image

    from devtools.demo.scenes import layout_image
    from multidiffusion import Region

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md = _load(model, controlnet=True)
    regions = [
        Region("a yellow sun", box=(8, 4, 40, 28)),
        Region("a red house", box=(52, 30, 80, 60)),
        Region("a green tree", box=(96, 24, 116, 62)),
    ]
    rows = []
    for boot in (0, BOOTSTRAP):
        out = md.regions(
            height=64, width=128, background="a clear blue sky over a snowfield", regions=regions,
            bootstrap_steps=boot, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
            output_type="np",
        )  # fmt: skip
        image = (np.asarray(out.images[0]) * 255).round().astype(np.uint8)
        for r in regions:
            image = _outline(image, tuple(r.box))
        rows.append(image)
    sep = np.full((2, 128, 3), 255, np.uint8)
    grid = np.concatenate([rows[0], sep, rows[1]])
    paths = [folder / "demo-regions-bootstrap.png"]
    Image.fromarray(grid).resize((128 * scale, grid.shape[0] * scale), Image.NEAREST).save(paths[-1])

    mean, amp, wavelength = PANORAMA_WAVE
    labels = control_map(mean, 256, (amp, wavelength))
    control = layout_image(labels)
    paths.append(folder / "demo-control-wave.png")  # the control map alone, for the command line
    Image.fromarray(control).save(paths[-1])
    prompt = "a snowfield under a starry night sky"
    md_img = md.panorama(
        prompt, height=64, width=256, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(1),
        control_image=Image.fromarray(control), stride=PANORAMA_STRIDE,
    )  # fmt: skip
    md.set_controlnet(None)
    plain = md.panorama(
        prompt, height=64, width=256, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(1)
    )
    sep = np.full((2, 256, 3), 255, np.uint8)
    grid = np.concatenate([control, sep, np.asarray(plain.images[0]), sep, np.asarray(md_img.images[0])])
    paths.append(folder / "demo-controlnet-panorama.png")
    Image.fromarray(grid).resize((256 * scale // 2 * 2, grid.shape[0] * scale), Image.NEAREST).save(paths[-1])
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.demo_quality", description=__doc__)
    p.add_argument("--figures", default="docs/images", help="folder for the README's pictures")
    p.add_argument("--model", default="demo")
    a = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for path in figures(a.figures, a.model):
        print(path)


if __name__ == "__main__":
    main()
