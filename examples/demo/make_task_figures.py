"""The README's pictures of the images-in tasks, drawn by the shipped demo model (offline, CPU, about
a minute): each is the input, then the result, side by side (shown 3x larger, nearest-neighbour, since
the demo's images are 64 px tall).

    python examples/demo/make_task_figures.py            # writes docs/images/task-*.png

The same runs as the README's command-line examples (same inputs, prompts, seeds and steps).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from multidiffusion import MultiDiffusion

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "docs" / "images"
SHOW = 3  # display scale


def side_by_side(*images: Image.Image, gap: int = 4) -> Image.Image:
    height = max(i.height for i in images)
    width = sum(i.width for i in images) + gap * (len(images) - 1)
    sheet = Image.new("RGB", (width, height), "white")
    x = 0
    for image in images:
        sheet.paste(image.convert("RGB"), (x, 0))
        x += image.width + gap
    return sheet.resize((sheet.width * SHOW, sheet.height * SHOW), Image.Resampling.NEAREST)


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    md = MultiDiffusion.from_pretrained("demo", device="cpu")
    md.set_progress_bar_config(disable=True)
    image = Image.open(HERE / "images" / "mountains.png").convert("RGB")
    sky = Image.open(HERE / "images" / "sky.png")

    def seed() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    runs = {
        "img2img": md.img2img(
            image, "snowy mountains under an overcast sky", strength=0.8, num_inference_steps=20, generator=seed()
        ),
        "upscale": md.upscale(
            image, scale=2, prompt="snowy mountains above a green meadow", num_inference_steps=20, generator=seed()
        ),
        "inpaint": md.inpaint(image, sky, "a starry night sky", num_inference_steps=20, generator=seed()),
        "outpaint": md.outpaint(
            image,
            "snowy mountains above a green meadow under a clear blue sky",
            left=32,
            right=32,
            num_inference_steps=20,
            generator=seed(),
        ),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    for name, out in runs.items():
        inputs = [image, sky.convert("RGB")] if name == "inpaint" else [image]
        path = OUT / f"task-{name}.png"
        side_by_side(*inputs, out.images[0]).save(path)
        print(f"{path}: {out.images[0].width}x{out.images[0].height}, {out.stats.seconds:.1f} s")


if __name__ == "__main__":
    main()
