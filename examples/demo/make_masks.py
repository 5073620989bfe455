"""Draw the demo examples' masks and segmentation map in masks/ (run from this folder: python make_masks.py).

The demo model draws 64 px high landscapes (horizon at about 0.6 of the height, sun or moon near the
top, houses and trees below the horizon: see docs/demo-model.md), so the canvases are 64 px high and
the layouts keep to that. Masks are white where a region's prompt applies; the map uses one flat
colour per prompt (no antialiasing, so every pixel has a colour of lake.toml's table).
"""

from PIL import Image, ImageDraw

# masks.toml: 128 x 64 (width x height)
moon = Image.new("1", (128, 64), 0)  # a tight mask
ImageDraw.Draw(moon).ellipse((88, 4, 104, 20), fill=1)
moon.save("masks/moon.png", optimize=True)

house = Image.new("1", (128, 64), 0)  # a rough scribble below the horizon, as a user would draw it
ImageDraw.Draw(house).polygon([(14, 36), (30, 30), (44, 34), (46, 52), (34, 58), (16, 56)], fill=1)
house.save("masks/house.png", optimize=True)

# lake.toml: a colour-coded segmentation map, 256 x 64
lake = Image.new("RGB", (256, 64), "#87ceeb")  # sky
draw = ImageDraw.Draw(lake)
draw.polygon([(40, 40), (80, 22), (110, 30), (150, 20), (200, 40)], fill="#808080")  # mountains
draw.rectangle((0, 40, 255, 63), fill="#228b22")  # meadow
draw.rectangle((120, 40, 255, 63), fill="#1e90ff")  # lake
lake.save("masks/lake.png", optimize=True)
