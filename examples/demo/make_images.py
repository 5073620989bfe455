"""Make the demo's input image and its sky mask in images/ (run from this folder: python make_images.py).

images/mountains.png: a 128 x 64 landscape drawn by the demo model (25 steps, seed 3 on the CPU), the
input of the img2img, upscale, inpaint and outpaint examples (`multidiffusion img2img --help`, ...).
images/sky.png: white where that image shows sky (each column from the top down to the first pixel that
is not clearly blue), grown by 2 px so the mountain tops blend; the mask of inpaint.toml.
"""

import numpy as np
import torch
from PIL import Image, ImageFilter

from multidiffusion import MultiDiffusion


def draw_input(path: str = "images/mountains.png") -> None:
    md = MultiDiffusion.from_pretrained("demo", device="cpu")
    prompt = "snowy mountains above a green meadow under a clear blue sky"
    generator = torch.Generator().manual_seed(3)
    md.panorama(prompt, height=64, width=128, num_inference_steps=25, generator=generator).save(path)


def sky_mask(image: str = "images/mountains.png", path: str = "images/sky.png") -> None:
    rgb = np.asarray(Image.open(image).convert("RGB")).astype(int)
    blue = (rgb[..., 2] > rgb[..., 0] + 40) & (rgb[..., 2] > rgb[..., 1] + 10)
    sky = np.cumprod(blue, axis=0).astype(bool)  # each column's sky: from the top to the first pixel that isn't
    mask = Image.fromarray(np.where(sky, 255, 0).astype(np.uint8)).filter(ImageFilter.MaxFilter(5))
    mask.convert("1").save(path, optimize=True)


if __name__ == "__main__":
    draw_input()
    sky_mask()
