"""Draw the example masks in masks/ (run from this folder: python make_masks.py).

Masks are plain PNGs: white where a region's prompt applies, black elsewhere; the segmentation map
uses one flat colour per prompt (no antialiasing, so every pixel has a listed colour).
"""

from PIL import Image, ImageDraw

# beach.toml: 512 x 768 (width x height), the paper's Fig. 5 size
ball = Image.new("1", (512, 768), 0)
ImageDraw.Draw(ball).ellipse((300, 470, 460, 630), fill=1)
ball.save("masks/ball.png", optimize=True)

dog = Image.new("1", (512, 768), 0)  # a rough scribble, as a user would draw it
ImageDraw.Draw(dog).polygon(
    [(40, 420), (120, 360), (200, 380), (250, 470), (240, 640), (180, 700), (60, 690), (30, 560)], fill=1
)
dog.save("masks/dog.png", optimize=True)

# city.toml: a colour-coded segmentation map, 512 x 512
city = Image.new("RGB", (512, 512), "#87ceeb")  # sky
draw = ImageDraw.Draw(city)
draw.rectangle((0, 360, 511, 511), fill="#404040")  # road
for x0, top in ((10, 140), (130, 60), (250, 180), (370, 100)):
    draw.rectangle((x0, top, x0 + 110, 359), fill="#a0522d")  # buildings
draw.rectangle((170, 400, 350, 480), fill="#ff0000")  # a car
city.save("masks/city.png", optimize=True)
