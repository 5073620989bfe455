"""Procedural landscapes with captions: the demo model's training data.

A :class:`Scene` is a small record of attributes (sky, ground, mountains, sun or moon, objects) plus
layout numbers in fractions of the image height, drawn from a ``numpy.random.Generator``. It renders
at any size: the native square (64 x 64) for training, or wide canvases (e.g. 64 x 256) for checking
panoramas, where mountains, stars and textures continue across the width. Everything is
deterministic given the generator's seed.

Layout rules (fractions of the height H), relied on by :mod:`.checker`:

- the horizon lies in [0.58, 0.66]; the sky zone [0, 0.29) holds only sky, sun or moon;
- mountain peaks lie in [0.32, 0.44], snow caps below them stay above 0.54; hills (green, only
  in scenes without mountains) rise to [0.42, 0.49]; forest tree tips rise at most 0.045 above the
  horizon;
- sun and moon centres lie in [0.10, 0.20] with radius at most 0.08, so they end above 0.29;
- houses and trees stand on the ground, wholly below the horizon.

Example::

    rng = np.random.default_rng(0)
    scene = sample_scene(rng)
    image = render_scene(scene)                  # uint8 (64, 64, 3)
    caption = caption_scene(scene, rng)          # "snowy mountains under a starry night sky"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from devtools.demo.captions import caption_scene
from devtools.demo.vocabulary import GROUNDS, HOUSE_COLOURS, SKIES, TREE_COLOURS, VOCABULARY

__all__ = [
    "LAYOUT_CLASSES",
    "LAYOUT_PALETTE",
    "NATIVE_SIZE",
    "VOCABULARY",
    "Scene",
    "SceneObject",
    "caption_scene",
    "generate",
    "horizon_rows",
    "layout_image",
    "render_layout",
    "render_scene",
    "sample_isolated",
    "sample_scene",
]

NATIVE_SIZE = 64

# Base colours (RGB). The checker's colour classes are tuned to keep these apart.
SKY_GRADIENTS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "day": ((70, 130, 220), (165, 200, 240)),
    "sunset": ((225, 95, 70), (255, 170, 85)),
    "night": ((8, 10, 35), (25, 35, 80)),
    "overcast": ((150, 154, 163), (188, 190, 196)),
}
MEADOW = (90, 170, 60)
FOREST = (32, 88, 42)
DESERT = (226, 190, 125)
SNOW = (240, 242, 250)
SEA_NEAR, SEA_FAR = (30, 80, 160), (70, 130, 200)
HILLS = (60, 140, 60)
ROCK = (105, 95, 122)
SUN = (255, 228, 80)
MOON = (240, 238, 222)
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 35),
    "blue": (45, 85, 205),
    "yellow": (238, 208, 45),
    "green": (25, 100, 35),
    "orange": (228, 120, 30),
}
TRUNK = (100, 65, 35)
DOOR = (60, 40, 30)

#: The classes of a scene's layout map (``render_layout``), the demo ControlNet's control image.
LAYOUT_CLASSES: tuple[str, ...] = ("sky", "sun", "moon", "mountains", "hills", "ground", "house", "tree")
#: Their colours in the control image (``layout_image``): far apart, none a scene colour.
LAYOUT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 255),
    (255, 255, 0),
    (255, 255, 255),
    (128, 0, 128),
    (0, 255, 0),
    (128, 64, 0),
    (255, 0, 0),
    (0, 128, 128),
)
_L = {name: i for i, name in enumerate(LAYOUT_CLASSES)}


@dataclass(frozen=True)
class SceneObject:
    """A house or tree standing on the ground; positions in fractions (x of width, rest of height)."""

    kind: str
    colour: str
    x: float
    base: float
    height: float


@dataclass(frozen=True)
class Scene:
    """The attributes of one landscape and the layout numbers needed to render it."""

    sky: str
    ground: str
    celestial: str = "none"
    mountains: str = "none"
    hills: bool = False
    water: str = "sea"
    objects: tuple[SceneObject, ...] = ()
    horizon: float = 0.62
    celestial_pos: tuple[float, float, float] = (0.7, 0.15, 0.07)
    seed: int = 0
    # An isolated subject on a plain colour (``sample_isolated``): "object" (the objects), "celestial"
    # (the sun or moon), "sky" or "ground" (a patch of it in ``box``), "" for a whole landscape.
    isolated: str = ""
    backdrop: tuple[int, int, int] = (128, 128, 128)
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    # A horizon that varies across the width (``sample_scene(free_layout=True)``): amplitude (fraction
    # of the height), wavelength (in heights) and phase of a sine added to ``horizon``; mountains and
    # hills then follow the horizon's mean instead of their fixed band.
    wave: tuple[float, float, float] = (0.0, 1.0, 0.0)
    free: bool = False

    @property
    def snow(self) -> bool:
        """Whether the mountains carry snow caps."""
        return self.mountains == "snowy"


def sample_scene(rng: np.random.Generator, free_layout: bool = False) -> Scene:
    """Draw a random scene (attributes and layout) from ``rng``.

    ``free_layout`` (the ControlNet's training scenes) breaks the layout rules on purpose: the horizon
    lies anywhere in [0.4, 0.82] and waves across the width, so that a control map can move it.
    """
    sky = SKIES[rng.integers(len(SKIES))]
    ground = GROUNDS[rng.integers(len(GROUNDS))]
    p_body = {"day": ("sun", 0.6), "sunset": ("sun", 0.7), "night": ("moon", 0.6), "overcast": ("none", 0.0)}
    body, p = p_body[sky]
    celestial = body if rng.random() < p else "none"
    mountains = ("none", "bare", "snowy")[rng.choice(3, p=[0.4, 0.3, 0.3])]
    hills = bool(ground in ("meadow", "forest", "water") and mountains == "none" and rng.random() < 0.5)
    water = "lake" if rng.random() < 0.5 else "sea"
    horizon = float(rng.uniform(0.58, 0.66))
    wave = (0.0, 1.0, 0.0)
    if free_layout:
        horizon = float(rng.uniform(0.42, 0.8))
        amp = float(rng.uniform(0.0, 0.12)) if rng.random() < 0.7 else 0.0
        wave = (amp, float(rng.uniform(1.0, 4.0)), float(rng.uniform(0, 2 * np.pi)))
    pos = (float(rng.uniform(0.12, 0.88)), float(rng.uniform(0.10, 0.20)), float(rng.uniform(0.055, 0.08)))
    objects: list[SceneObject] = []
    if ground in ("meadow", "desert", "snowfield"):
        n = int(rng.choice(3, p=[0.45, 0.4, 0.15]))
        slots = rng.permutation(2)
        for i in range(n):
            kind = "tree" if ground != "desert" and rng.random() < 0.5 else "house"
            colours = TREE_COLOURS if kind == "tree" else HOUSE_COLOURS
            colour = colours[rng.integers(len(colours))]
            h = float(rng.uniform(0.2, 0.32) if kind == "tree" else rng.uniform(0.17, 0.3))
            h = min(h, max(0.96 - horizon - wave[0], 0.08))
            base = float(rng.uniform(horizon + h + 0.01, 0.97))
            x = float((slots[i] + rng.uniform(0.25, 0.75)) / 2)
            objects.append(SceneObject(kind, colour, x, base, h))
    return Scene(
        sky=sky,
        ground=ground,
        celestial=celestial,
        mountains=mountains,
        hills=hills,
        water=water,
        objects=tuple(objects),
        horizon=horizon,
        celestial_pos=pos,
        seed=int(rng.integers(2**31)),
        wave=wave,
        free=free_layout,
    )


# Plain backdrops of isolated subjects: saturated and pale colours, greys, black and white.
def _backdrop(rng: np.random.Generator) -> tuple[int, int, int]:
    if rng.random() < 0.3:
        v = int(rng.integers(0, 256))
        return (v, v, v)
    return tuple(int(c) for c in rng.integers(0, 256, 3))  # type: ignore[return-value]


ISOLATED_KINDS = {"object": 0.45, "celestial": 0.25, "sky": 0.15, "ground": 0.15}
"""What an isolated subject is, and how often (renormalised over the kinds asked for)."""


def sample_isolated(rng: np.random.Generator, kinds: Sequence[str] = tuple(ISOLATED_KINDS)) -> Scene:
    """Draw one subject on a plain colour: a house or tree (45%), the sun or moon (25%), or a patch of
    sky (15%) or ground (15%) on a plain background; ``kinds`` limits the draw to some of them.
    Captions name the subject alone ("a red house", "a full moon", "a starry night sky"), as a
    bootstrapped region's view does (paper Sec. 4.2)."""
    if not kinds or any(k not in ISOLATED_KINDS for k in kinds):
        raise ValueError(f"kinds must be some of {', '.join(ISOLATED_KINDS)}, got {kinds!r}")
    weights = np.array([ISOLATED_KINDS[k] for k in kinds])
    cumulative = np.cumsum(weights / weights.sum())
    kind = kinds[min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(kinds) - 1)]
    base = sample_scene(rng)
    backdrop = _backdrop(rng)
    seed = int(rng.integers(2**31))
    if kind == "object":
        obj_kind = "tree" if rng.random() < 0.55 else "house"
        colours = TREE_COLOURS if obj_kind == "tree" else HOUSE_COLOURS
        colour = colours[rng.integers(len(colours))]
        h = float(rng.uniform(0.25, 0.9))
        w = h * (1.15 if obj_kind == "house" else 0.62)
        x = float(rng.uniform(min(0.5, w / 2 + 0.02), max(0.5, 1 - w / 2 - 0.02)))
        bottom = float(rng.uniform(min(h + 0.02, 0.98), 0.98))
        obj = SceneObject(obj_kind, colour, x, bottom, h)
        return Scene(base.sky, "meadow", objects=(obj,), seed=seed, isolated="object", backdrop=backdrop)
    if kind == "celestial":
        body = "sun" if rng.random() < 0.5 else "moon"
        # Small and high, as in a landscape (radius <= 0.08, centre in [0.10, 0.20]) and a little
        # beyond, as a region box asks: v2b drew them at radius 0.08-0.4 anywhere, and lost 9.6
        # points of sun / moon caption agreement against v1 (docs/demo-model.md).
        r = float(rng.uniform(0.05, 0.15))
        pos = (float(rng.uniform(r, 1 - r)), float(rng.uniform(max(r, 0.08), 0.4)), r)
        return Scene("day", "meadow", celestial=body, celestial_pos=pos, seed=seed, isolated=kind, backdrop=backdrop)
    bw, bh = float(rng.uniform(0.35, 1.0)), float(rng.uniform(0.25, 0.8))
    x0, y0 = float(rng.uniform(0, 1 - bw)), float(rng.uniform(0, 1 - bh))
    return Scene(
        base.sky,
        base.ground,
        water=base.water,
        seed=seed,
        isolated=kind,
        backdrop=backdrop,
        box=(x0, y0, x0 + bw, y0 + bh),
    )


def _lerp(a: tuple[int, int, int], b: tuple[int, int, int], t: np.ndarray) -> np.ndarray:
    a_, b_ = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a_ + (b_ - a_) * t[..., None]


def _paint(
    img: np.ndarray,
    mask: np.ndarray,
    colour: np.ndarray | tuple[int, int, int],
    lab: np.ndarray | None = None,
    cls: str = "sky",
) -> None:
    img[mask] = np.asarray(colour, np.float32) if isinstance(colour, tuple) else colour[mask]
    if lab is not None:
        lab[mask] = _L[cls]


def horizon_rows(scene: Scene, height: int, width: int) -> np.ndarray:
    """The horizon's row (in pixels, float) at the centre of every column: (width,)."""
    x = np.arange(width, dtype=np.float32) + 0.5
    amp, wavelength, phase = scene.wave
    return (scene.horizon + amp * np.sin(2 * np.pi * x / (wavelength * height) + phase)) * height


def _offset(scene: Scene) -> float:
    """How far (fraction of the height) mountains and hills move with a free layout's horizon."""
    return scene.horizon - 0.62 if scene.free else 0.0


def _smooth_noise(rng: np.random.Generator, x: np.ndarray, scale: float, terms: int = 3) -> np.ndarray:
    """Sum of random sines along ``x`` (pixels), wavelengths around ``scale``; values in about [-1, 1]."""
    out = np.zeros_like(x, dtype=np.float32)
    for k in range(terms):
        freq = 2 * np.pi / (scale * rng.uniform(0.5, 1.5) / (k + 1))
        out += np.sin(x * freq + rng.uniform(0, 2 * np.pi)) / (k + 1)
    return out / 1.83


def _sky(scene: Scene, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, h: int) -> np.ndarray:
    top, bottom = SKY_GRADIENTS[scene.sky]
    img = _lerp(top, bottom, np.clip(yy / horizon_rows(scene, h, yy.shape[1])[None, :], 0, 1))
    if scene.sky == "overcast":
        clouds = _smooth_noise(rng, xx + 3.0 * np.sin(yy / 3.0), 0.5 * h) * _smooth_noise(rng, yy, 0.25 * h)
        img += 10.0 * clouds[..., None]
    return img


def _stars(img: np.ndarray, rng: np.random.Generator, sky_mask: np.ndarray) -> None:
    h, w = sky_mask.shape
    n = int(0.012 * h * w)
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    keep = sky_mask[ys, xs]
    bright = rng.uniform(170, 255, n)[keep]
    img[ys[keep], xs[keep]] = np.stack([bright, bright, np.minimum(bright + 10, 255)], -1)


def _mountains(
    scene: Scene, rng: np.random.Generator, img: np.ndarray, xx: np.ndarray, yy: np.ndarray, lab: np.ndarray
) -> None:
    h, w = yy.shape
    hor_col = horizon_rows(scene, h, w)[None, :]
    hor = scene.horizon * h
    centres, x = [], -0.3 * h
    while x < w + 0.3 * h:
        centres.append(x)
        x += rng.uniform(0.35, 0.7) * h
    c = np.asarray(centres, np.float32)
    tops = (rng.uniform(0.32, 0.44, len(c)) + _offset(scene)) * h
    visible = np.flatnonzero((c > 0.1 * w) & (c < 0.9 * w))
    if len(visible) == 0:  # very narrow canvases
        visible = np.asarray([int(np.abs(c - w / 2).argmin())])
    tops[rng.choice(visible)] = (rng.uniform(0.32, 0.37) + _offset(scene)) * h
    slopes = rng.uniform(0.8, 1.4, len(c))
    x1 = xx[0]
    heights = tops[:, None] + slopes[:, None] * np.abs(x1[None, :] - c[:, None])
    which = heights.argmin(0)
    ridge = heights.min(0) + 0.8 * _smooth_noise(rng, x1, 0.08 * h)
    lit = x1 < c[which]
    body = (yy >= ridge[None, :]) & (yy < hor_col + 1)
    shade = np.where(lit, 1.15, 0.85)[None, :].repeat(h, 0)
    rock = np.asarray(ROCK, np.float32) * shade[..., None]
    _paint(img, body, rock, lab, "mountains")
    if scene.mountains == "snowy":
        top_min = float(tops.min())
        snow_line = min(top_min + rng.uniform(0.45, 0.6) * (hor - top_min), (0.53 + _offset(scene)) * h)
        jag = snow_line + 1.5 * _smooth_noise(rng, x1, 0.1 * h)
        cap = body & (yy < jag[None, :])
        snow = np.asarray(SNOW, np.float32) * np.where(lit, 1.0, 0.93)[None, :, None]
        _paint(img, cap, np.broadcast_to(snow, img.shape).copy(), lab, "mountains")


def _hills(
    scene: Scene, rng: np.random.Generator, img: np.ndarray, xx: np.ndarray, yy: np.ndarray, lab: np.ndarray
) -> None:
    h = yy.shape[0]
    x1 = xx[0]
    top = (rng.uniform(0.42, 0.45) + _offset(scene)) * h
    ridge = top + 0.02 * h * (1 + _smooth_noise(rng, x1, 0.6 * h))
    body = yy >= ridge[None, :]
    depth = np.clip((yy - ridge[None, :]) / (0.1 * h), 0, 1)
    _paint(img, body, _lerp((75, 160, 70), HILLS, depth), lab, "hills")


def _ground(
    scene: Scene, rng: np.random.Generator, img: np.ndarray, xx: np.ndarray, yy: np.ndarray, lab: np.ndarray
) -> None:
    h, w = yy.shape
    hor_col = horizon_rows(scene, h, w)[None, :]
    hor = scene.horizon * h
    below = yy >= hor_col
    depth = np.clip((yy - hor_col) / np.maximum(h - hor_col, 1.0), 0, 1)
    noise = rng.normal(0, 1, (h, w)).astype(np.float32)
    g = scene.ground
    if g == "meadow":
        stripes = np.sin(yy * 2 * np.pi / (0.06 * h + 6 * depth) + rng.uniform(0, 6))
        col = np.asarray(MEADOW, np.float32) * (1 + 0.06 * stripes + 0.04 * noise)[..., None]
    elif g == "desert":
        dunes = np.sin(xx * 2 * np.pi / (0.5 * h) + yy * 2 * np.pi / (0.12 * h) + rng.uniform(0, 6))
        col = np.asarray(DESERT, np.float32) * (1 + 0.07 * dunes + 0.02 * noise)[..., None]
    elif g == "snowfield":
        drift = np.sin(xx * 2 * np.pi / (0.7 * h) + yy * 2 * np.pi / (0.15 * h) + rng.uniform(0, 6))
        col = _lerp(SNOW, (222, 230, 244), 0.5 + 0.5 * drift)
    elif g == "water":
        col = _lerp(SEA_FAR, SEA_NEAR, depth)
        n = int(0.02 * h * w)
        ys = rng.uniform(min(hor + 1, h - 1), h, n).astype(int)
        xs = rng.integers(0, w, n)
        lengths = rng.integers(2, 5, n)
        for dx in range(4):
            sel = dx < lengths
            col[np.clip(ys[sel], 0, h - 1), np.clip(xs[sel] + dx, 0, w - 1)] = (120, 170, 222)
        if scene.water == "lake":
            shore = below & (yy < hor_col + rng.uniform(0.025, 0.045) * h)
            col[shore] = np.asarray(HILLS, np.float32) * 1.05
    else:  # forest
        col = np.asarray(FOREST, np.float32) * (1 + 0.05 * noise)[..., None]
        _paint(img, below, col, lab, "ground")
        spacing, tree_w = 0.07 * h, 0.09 * h
        band, y0 = 0, hor_col - hor  # rows below the horizon, per column
        while (y0 + hor).min() < h + spacing:
            offset = rng.uniform(0, tree_w)
            saw = np.abs(((xx + offset) % tree_w) - tree_w / 2) * 2 / tree_w  # 0 at apex, 1 at gaps
            tips = y0 + hor - 0.045 * h + saw * 0.05 * h
            tree = (yy >= tips) & (yy < y0 + hor + spacing)
            shade = (40, 100, 46) if band % 2 == 0 else (26, 74, 36)
            _paint(img, tree, shade, lab, "ground")
            y0 += spacing
            band += 1
        return
    _paint(img, below, col, lab, "ground")


def _celestial(scene: Scene, img: np.ndarray, xx: np.ndarray, yy: np.ndarray, lab: np.ndarray) -> None:
    h, w = yy.shape
    cx, cy, r = scene.celestial_pos
    cx, cy, r = cx * w, cy * h, r * h
    d = np.hypot(xx - cx, yy - cy)
    if scene.celestial == "sun":
        _paint(img, d < r, SUN, lab, "sun")
    elif scene.celestial == "moon":
        _paint(img, d < r, MOON, lab, "moon")


def _house(
    img: np.ndarray, lab: np.ndarray, xx: np.ndarray, yy: np.ndarray, cx: float, base: float, hh: float, colour: str
) -> None:
    body_h, roof_h = 0.6 * hh, 0.4 * hh
    half = 0.5 * hh * 1.15
    col = np.asarray(OBJECT_COLOURS[colour], np.float32)
    body = (np.abs(xx - cx) <= half) & (yy <= base) & (yy > base - body_h)
    roof_top = base - body_h - roof_h
    roof = (yy > roof_top) & (yy <= base - body_h) & (np.abs(xx - cx) <= (yy - roof_top) / roof_h * half * 1.2)
    door = (np.abs(xx - cx) <= max(0.5, 0.1 * hh)) & (yy <= base) & (yy > base - 0.33 * hh)
    _paint(img, body, tuple(col.astype(int)), lab, "house")
    _paint(img, roof, tuple((col * 0.6).astype(int)), lab, "house")
    _paint(img, door, DOOR, lab, "house")


def _tree(
    img: np.ndarray, lab: np.ndarray, xx: np.ndarray, yy: np.ndarray, cx: float, base: float, hh: float, colour: str
) -> None:
    trunk_h = 0.35 * hh
    trunk = (np.abs(xx - cx) <= max(0.5, 0.07 * hh)) & (yy <= base) & (yy > base - trunk_h)
    r = 0.34 * hh
    canopy = np.hypot((xx - cx) / 0.9, yy - (base - hh + r)) < r
    _paint(img, trunk, TRUNK, lab, "tree")
    _paint(img, canopy, OBJECT_COLOURS[colour], lab, "tree")


def render_scene(scene: Scene, height: int = NATIVE_SIZE, width: int | None = None) -> np.ndarray:
    """Render ``scene`` to a uint8 RGB array of shape (height, width, 3); width defaults to height.

    Sizes scale with the height; wide canvases get more peaks, stars and texture across the width,
    with objects and the sun or moon at their fractional positions.
    """
    return render_layout(scene, height, width)[0]


def render_layout(scene: Scene, height: int = NATIVE_SIZE, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``render_scene``'s image and the scene's layout: class indices into ``LAYOUT_CLASSES``,
    uint8 (height, width), what was painted last at each pixel (an isolated subject's backdrop is sky)."""
    width = height if width is None else width
    rng = np.random.default_rng(scene.seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    lab = np.zeros((height, width), np.uint8)
    if scene.isolated:
        return _render_isolated(scene, rng, yy, xx, lab), lab
    img = _sky(scene, rng, yy, xx, height)
    sky_mask = yy < horizon_rows(scene, height, width)[None, :]
    if scene.sky == "night":
        _stars(img, rng, sky_mask)
    _celestial(scene, img, xx, yy, lab)
    if scene.mountains != "none":
        _mountains(scene, rng, img, xx, yy, lab)
    if scene.hills:
        _hills(scene, rng, img, xx, yy, lab)
    _ground(scene, rng, img, xx, yy, lab)
    for obj in sorted(scene.objects, key=lambda o: o.base):
        draw = _house if obj.kind == "house" else _tree
        draw(img, lab, xx, yy, obj.x * width, obj.base * height, obj.height * height, obj.colour)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), lab


def _render_isolated(
    scene: Scene, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, lab: np.ndarray
) -> np.ndarray:
    h, w = yy.shape
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.asarray(scene.backdrop, np.float32)
    if scene.isolated == "celestial":
        _celestial(scene, img, xx, yy, lab)
    elif scene.isolated == "object":
        for obj in scene.objects:
            draw = _house if obj.kind == "house" else _tree
            draw(img, lab, xx, yy, obj.x * w, obj.base * h, obj.height * h, obj.colour)
    else:  # a patch of sky (the sky of a scene whose horizon is the patch's bottom) or of ground
        x0, y0, x1, y1 = scene.box
        c0, r0 = round(x0 * w), round(y0 * h)
        c1, r1 = max(round(x1 * w), c0 + 2), max(round(y1 * h), r0 + 2)
        ph, pw = r1 - r0, c1 - c0
        pyy, pxx = np.mgrid[0:ph, 0:pw].astype(np.float32) + 0.5
        plab = np.zeros((ph, pw), np.uint8)
        if scene.isolated == "sky":
            patch = _sky(replace(scene, horizon=1.0), rng, pyy, pxx, ph)
            if scene.sky == "night":
                _stars(patch, rng, np.ones((ph, pw), bool))
        else:
            patch = np.zeros((ph, pw, 3), np.float32)
            _ground(replace(scene, horizon=0.0), rng, patch, pxx, pyy, plab)
        img[r0:r1, c0:c1] = patch
        lab[r0:r1, c0:c1] = plab
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def layout_image(labels: np.ndarray) -> np.ndarray:
    """A layout (``render_layout``'s class indices) as the ControlNet's RGB control image, uint8."""
    return np.asarray(LAYOUT_PALETTE, np.uint8)[labels]


def generate(
    rng: np.random.Generator,
    n: int,
    height: int = NATIVE_SIZE,
    width: int | None = None,
    isolated_share: float = 0.0,
    isolated_kinds: Sequence[str] = tuple(ISOLATED_KINDS),
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """Draw ``n`` scenes from ``rng``; return images (n, height, width, 3) uint8, captions and scenes.

    ``isolated_share``: the fraction (drawn per scene) that are isolated subjects on plain colours
    (``sample_isolated``, of ``isolated_kinds``) instead of whole landscapes; 0 draws exactly the
    landscapes of before.
    """
    width = height if width is None else width
    images = np.empty((n, height, width, 3), np.uint8)
    captions: list[str] = []
    scenes: list[Scene] = []
    for i in range(n):
        isolated = isolated_share > 0 and rng.random() < isolated_share
        scene = sample_isolated(rng, isolated_kinds) if isolated else sample_scene(rng)
        images[i] = render_scene(scene, height, width)
        captions.append(caption_scene(scene, rng))
        scenes.append(scene)
    return images, captions, scenes
