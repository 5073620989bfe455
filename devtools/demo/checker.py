"""Rule-based attribute checker for demo-model images: does a picture show what its caption says?

It reads the procedural attributes of :mod:`.scenes` straight from pixels, using the layout rules
documented there (sky in the top 29% of the height, mountains and hills in the middle band, ground
in the bottom 20%), so it works on any width and on samples of the demo model:

- :func:`classify` -> ``{"sky", "ground", "celestial", "mountains", "snow", "hills", "colours"}``;
- :func:`parse_caption` -> the attributes a caption asks for (only those it mentions);
- :func:`agreement` -> per attribute, whether the image shows what the caption asks for;
  :func:`agreement_score` -> the fraction that agree;
- :func:`colour_classes` / :func:`mask_colour` -> colour class names per pixel / the dominant colour
  class inside a boolean mask (for region prompts: "red", "green", "blue", "white", "dark", ...).

On the procedural ground truth it agrees with the generating attributes on (very nearly) every
image; ``tests/test_demo_scenes.py`` checks this.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "COLOUR_CLASSES",
    "agreement",
    "agreement_score",
    "classify",
    "colour_classes",
    "colour_fractions",
    "horizon_error",
    "image_horizon",
    "layout_horizon",
    "mask_colour",
    "object_present",
    "parse_caption",
]

COLOUR_CLASSES: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "tan",
    "green",
    "blue",
    "purple",
    "white",
    "grey",
    "dark",
)
_C = {name: i for i, name in enumerate(COLOUR_CLASSES)}

# Zones in fractions of the height (see the layout rules in scenes.py).
SKY_ZONE = (0.0, 0.29)
MOUNTAIN_ZONE = (0.30, 0.535)
HILL_ZONE = (0.47, 0.53)
GROUND_ZONE = (0.80, 1.0)
OBJECT_ZONE = (0.67, 1.0)


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8-range float array (H, W, 3) from a PIL image or an HxWx3 uint8 array."""
    arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be RGB with shape (H, W, 3), got shape {arr.shape}")
    return arr.astype(np.float32)


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of an RGB array in [0, 255]."""
    x = rgb / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(-1), x.min(-1)
    c = mx - mn
    safe = np.where(c > 0, c, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = np.where(c > 0, h * 60.0, 0.0)
    s = np.where(mx > 0, c / np.where(mx > 0, mx, 1.0), 0.0)
    return h, s, mx


def _class_map(rgb: np.ndarray) -> np.ndarray:
    """Index into COLOUR_CLASSES for every pixel of an RGB float array in [0, 255]."""
    h, s, v = _hsv(rgb)
    out = np.full(h.shape, _C["blue"], np.int8)
    out[(h < 15) | (h >= 330)] = _C["red"]
    warm = (h >= 15) & (h < 70)
    out[warm & (h < 38)] = _C["orange"]
    out[warm & (h >= 38)] = _C["yellow"]
    out[warm & (s < 0.55)] = _C["tan"]
    out[(h >= 70) & (h < 165)] = _C["green"]
    out[(h >= 260) & (h < 330)] = _C["purple"]
    grey = s < 0.25
    out[grey] = _C["grey"]
    out[grey & (v > 0.82)] = _C["white"]
    out[v < 0.22] = _C["dark"]
    return out


def colour_classes(image: Image.Image | np.ndarray) -> np.ndarray:
    """Colour class name (one of COLOUR_CLASSES) of every pixel, as an (H, W) array of strings."""
    return np.asarray(COLOUR_CLASSES)[_class_map(_as_array(image))]


def colour_fractions(image: Image.Image | np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Fraction of the pixels inside ``mask`` (boolean, H x W; None = all) in each colour class."""
    cls = _class_map(_as_array(image))
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != cls.shape:
            raise ValueError(f"mask must have the image's shape {cls.shape}, got {mask.shape}")
        cls = cls[mask]
    counts = np.bincount(cls.ravel(), minlength=len(COLOUR_CLASSES)).astype(np.float64)
    total = max(counts.sum(), 1.0)
    return {name: float(c / total) for name, c in zip(COLOUR_CLASSES, counts, strict=True)}


def mask_colour(image: Image.Image | np.ndarray, mask: np.ndarray) -> str:
    """The dominant colour class ('red', 'green', 'blue', 'white', 'dark', ...) inside ``mask``."""
    fractions = colour_fractions(image, mask)
    return max(fractions, key=fractions.__getitem__)


def _rows(arr: np.ndarray, zone: tuple[float, float]) -> np.ndarray:
    h = arr.shape[0]
    top = round(zone[0] * h)
    return arr[top : max(round(zone[1] * h), top + 1)]


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion with a (2r+1) square, so isolated stars vanish while discs survive."""
    if r <= 0:
        return mask
    p = np.pad(mask, r, constant_values=False)
    out = np.ones_like(mask)
    h, w = mask.shape
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out &= p[dy : dy + h, dx : dx + w]
    return out


def _vote(votes: dict[str, np.ndarray]) -> str:
    counts = {k: int(v.sum()) for k, v in votes.items()}
    return max(counts, key=counts.__getitem__)


def classify(image: Image.Image | np.ndarray) -> dict[str, Any]:
    """Read the scene attributes from pixels.

    Returns ``sky`` (day / sunset / night / overcast), ``ground`` (meadow / desert / snowfield /
    water / forest), ``celestial`` (sun / moon / none), ``mountains`` (none / bare / snowy),
    ``snow`` (snow-capped mountains), ``hills`` (bool) and ``colours``: the count of bright pixels
    (value >= 0.55) of each colour class in the bottom third (for "blue", only the pure blue of
    houses, not water), and of "dark green" ones, in pixels of a 64-px-high image; used to check
    objects.
    """
    rgb = _as_array(image)
    height = rgb.shape[0]
    area = (height / 64.0) ** 2
    cls = _class_map(rgb)
    hue, _, val = _hsv(rgb)

    sky, sky_v = _rows(cls, SKY_ZONE), _rows(val, SKY_ZONE)
    blue = sky == _C["blue"]
    sky_votes = {
        "day": blue & (sky_v >= 0.5),
        "night": (sky == _C["dark"]) | (blue & (sky_v < 0.5)),
        "overcast": (sky == _C["grey"]) | ((sky == _C["white"]) & (sky_v < 0.9)),
        "sunset": (sky == _C["red"]) | (sky == _C["orange"]) | (sky == _C["purple"]),
    }
    sun = _erode(sky == _C["yellow"], max(1, round(height / 64)))
    moon = _erode(sky == _C["white"], max(1, round(height / 64)))
    n_sun, n_moon = int(sun.sum()), int(moon.sum())
    threshold = 6 * area
    celestial = "none"
    if max(n_sun, n_moon) >= threshold:
        celestial = "sun" if n_sun >= n_moon else "moon"

    ground, ground_v = _rows(cls, GROUND_ZONE), _rows(val, GROUND_ZONE)
    green = ground == _C["green"]
    ground_votes = {
        "meadow": green & (ground_v >= 0.48),
        "forest": (green & (ground_v < 0.48)) | (ground == _C["dark"]),
        "desert": ground == _C["tan"],
        "snowfield": (ground == _C["white"]) | ((ground == _C["grey"]) & (ground_v > 0.6)),
        "water": ground == _C["blue"],
    }

    mid, mid_v = _rows(cls, MOUNTAIN_ZONE), _rows(val, MOUNTAIN_ZONE)
    rock = ((mid == _C["grey"]) | (mid == _C["purple"])) & (mid_v < 0.62)
    snow_px = mid == _C["white"]
    has_mountains = (rock.sum() + snow_px.sum()) >= 0.06 * mid.size
    snow_caps = _erode(snow_px, max(1, round(height / 64)))  # stars between the peaks vanish
    snow = bool(has_mountains and snow_caps.sum() >= 3 * area)
    mountains = ("snowy" if snow else "bare") if has_mountains else "none"

    hills_band = _rows(cls, HILL_ZONE)
    hills = bool((hills_band == _C["green"]).mean() >= 0.4) and not has_mountains

    low, low_v = _rows(cls, OBJECT_ZONE), _rows(val, OBJECT_ZONE)
    bright = low_v >= 0.55  # object bodies, not trunks, doors or shadows
    colours = {name: float(((low == i) & bright).sum() / area) for i, name in enumerate(COLOUR_CLASSES)}
    # A blue house is a purer blue (hue ~225) than water (hue 210-218), so water is no blue house.
    colours["blue"] = float(((low == _C["blue"]) & bright & (_rows(hue, OBJECT_ZONE) >= 222)).sum() / area)
    colours["dark green"] = float(((low == _C["green"]) & (low_v < 0.45)).sum() / area)
    return {
        "sky": _vote(sky_votes),
        "ground": _vote(ground_votes),
        "celestial": celestial,
        "mountains": mountains,
        "snow": snow,
        "hills": hills,
        "colours": colours,
    }


_SKY_RULES = (  # first match wins
    ("night", r"\b(night|starry|stars|midnight)\b"),
    ("sunset", r"\b(sunset|dusk|sundown|evening)\b"),
    ("overcast", r"\b(overcast|cloudy|clouds|grey sky|gray sky)\b"),
    ("day", r"\b(blue sky|clear sky|sunny|daytime|day|noon)\b"),
)
_GROUND_RULES = (
    ("snowfield", r"\b(snowfield|snowy field|snowy plain|snow field)\b"),
    ("desert", r"\b(desert|sand|sandy|dunes)\b"),
    ("water", r"\b(sea|ocean|lake|water)\b"),
    ("forest", r"\b(forest|woods)\b"),
    ("meadow", r"\b(meadow|grass|grassy|field|lawn)\b"),
)
_SNOWY_MOUNTAINS = r"\b(snowy|snow capped|snow-capped|snowcapped)\s+(mountains?|peaks?)\b|\bmountains?\s+with\s+snow\b"
_OBJECT = r"\b(red|blue|yellow|green|orange)\s+(house|tree)s?\b"


def parse_caption(caption: str) -> dict[str, Any]:
    """The attributes a caption asks for; keys only for what it mentions.

    Keys: ``sky``, ``ground``, ``celestial`` ("sun" / "moon"), ``mountains`` ("bare" / "snowy"),
    ``hills`` (True) and ``objects`` (a list of (kind, colour) pairs such as ("house", "red")).
    "mountains" without a snow word means bare mountains, as in the training captions.
    """
    text = " ".join(caption.lower().replace(",", " , ").split())
    out: dict[str, Any] = {}
    for name, pattern in _SKY_RULES:
        if re.search(pattern, text):
            out["sky"] = name
            break
    hits = [(m.start(), name) for name, pattern in _GROUND_RULES if (m := re.search(pattern, text))]
    if hits:
        out["ground"] = min(hits)[1]
    sun, moon = re.search(r"\bsun\b", text), re.search(r"\bmoon\b", text)
    if sun or moon:
        out["celestial"] = "sun" if sun and not (moon and moon.start() < sun.start()) else "moon"
    if re.search(r"\b(mountains?|peaks?)\b", text):
        out["mountains"] = "snowy" if re.search(_SNOWY_MOUNTAINS, text) else "bare"
    if re.search(r"\bhills?\b", text):
        out["hills"] = True
    objects = [(m.group(2), m.group(1)) for m in re.finditer(_OBJECT, text)]
    if objects:
        out["objects"] = objects
    return out


def object_present(kind: str, colour: str, found: dict[str, Any]) -> bool:
    """Whether an object of ``colour`` shows below the horizon (``found``: :func:`classify`'s result)."""
    counts = found["colours"]
    need = 24.0 if colour == "blue" else 12.0  # blue: only houses (bodies of 75+ px), never water's specks
    if colour == "green":  # a dark-green canopy, which a forest would swamp
        return counts["dark green"] >= need and found["ground"] != "forest"
    return counts[colour] >= need


def agreement(image: Image.Image | np.ndarray, caption: str) -> dict[str, bool]:
    """For every attribute the caption mentions, whether the image shows it.

    Keys are those of :func:`parse_caption`; ``objects`` is True when every named object's colour is
    present below the horizon.
    """
    want = parse_caption(caption)
    found = classify(image)
    out: dict[str, bool] = {}
    for key in ("sky", "ground", "celestial", "mountains"):
        if key in want:
            out[key] = found[key] == want[key]
    if "hills" in want:
        out["hills"] = found["hills"]
    if "objects" in want:
        out["objects"] = all(object_present(k, c, found) for k, c in want["objects"])
    return out


def agreement_score(image: Image.Image | np.ndarray, caption: str) -> float:
    """Fraction of the caption's attributes that the image shows (1.0 when it mentions none)."""
    checks = agreement(image, caption)
    return sum(checks.values()) / len(checks) if checks else 1.0


def image_horizon(image: Image.Image | np.ndarray, smooth: int = 2) -> np.ndarray:
    """Per column, the first row below the horizon as the image shows it: the row after the
    strongest vertical colour change (means of ``smooth`` rows above and below, columns averaged over
    3), float (W,). Meant for scenes of a sky over a ground without mountains or hills, where that
    change is the horizon."""
    rgb = _as_array(image).astype(np.float32)
    h = rgb.shape[0]
    padded = np.pad(rgb, ((0, 0), (1, 1), (0, 0)), mode="edge")
    rgb = (padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3
    csum = np.concatenate([np.zeros_like(rgb[:1]), np.cumsum(rgb, 0)])
    rows = np.arange(smooth, h - smooth + 1)  # boundary between rows r-1 and r
    above = (csum[rows] - csum[rows - smooth]) / smooth
    below = (csum[rows + smooth] - csum[rows]) / smooth
    change = np.abs(below - above).sum(-1)  # (rows, W)
    return rows[change.argmax(0)].astype(np.float32)


def layout_horizon(labels: np.ndarray, sky_classes: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """Per column, the first row of a layout map (``scenes.render_layout``'s class indices) below the
    sky (classes sky, sun and moon), float (W,)."""
    ground = ~np.isin(labels, sky_classes)
    return np.where(ground.any(0), ground.argmax(0), labels.shape[0]).astype(np.float32)


def horizon_error(image: Image.Image | np.ndarray, labels: np.ndarray) -> float:
    """Mean absolute distance in pixels, per column, between the image's horizon
    (:func:`image_horizon`) and the layout's (:func:`layout_horizon`); the image may be another size
    of the same aspect ratio as ``labels`` (its rows are scaled to the layout's)."""
    rgb = _as_array(image)
    found = image_horizon(rgb)
    lab = labels
    if rgb.shape[:2] != labels.shape:
        ys = (np.arange(rgb.shape[0]) * labels.shape[0] // rgb.shape[0]).clip(0, labels.shape[0] - 1)
        xs = (np.arange(rgb.shape[1]) * labels.shape[1] // rgb.shape[1]).clip(0, labels.shape[1] - 1)
        lab = labels[ys][:, xs]
    return float(np.abs(found - layout_horizon(lab)).mean())
