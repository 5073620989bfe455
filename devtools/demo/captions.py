"""Captions for procedural scenes: compositional, varied in wording and order, sometimes partial.

Half of the captions describe the whole scene ("a red house in a green meadow below snowy mountains
under a starry night sky with a full moon"), about a third a random part of it ("snowy mountains at
night"), the rest a single part ("a desert", "a starry night sky"), so that region prompts naming one
part of a scene are in-distribution. A caption never names something the image does not show.
An isolated subject on a plain colour (``scenes.sample_isolated``) is captioned by its phrase alone
("a red house", "a full moon", "a starry night sky", "a desert").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from devtools.demo.vocabulary import (
    CELESTIAL_PHRASES,
    GROUND_PHRASES,
    HILL_PHRASES,
    MOUNTAIN_PHRASES,
    SKY_PHRASES,
    TIME_PHRASES,
)

if TYPE_CHECKING:
    from devtools.demo.scenes import Scene

__all__ = ["caption_scene"]


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _parts(scene: Scene, rng: np.random.Generator) -> dict[str, str]:
    """One phrase for every part the scene shows."""
    parts: dict[str, str] = {"sky": _pick(rng, SKY_PHRASES[scene.sky])}
    ground_key = scene.water if scene.ground == "water" else scene.ground
    parts["ground"] = _pick(rng, GROUND_PHRASES[ground_key])
    if scene.celestial != "none":
        parts["celestial"] = _pick(rng, CELESTIAL_PHRASES[scene.celestial])
    if scene.mountains != "none":
        parts["mountains"] = _pick(rng, MOUNTAIN_PHRASES[scene.mountains])
    if scene.hills:
        parts["hills"] = _pick(rng, HILL_PHRASES)
    if scene.objects:
        names = [f"{'an' if o.colour == 'orange' else 'a'} {o.colour} {o.kind}" for o in scene.objects]
        parts["objects"] = " and ".join(names)
    return parts


def _choose(parts: dict[str, str], rng: np.random.Generator) -> dict[str, str]:
    """Keep all parts (50%), a random non-empty subset (35%) or a single part (15%)."""
    mode = rng.random()
    keys = list(parts)
    if mode < 0.5:
        return parts
    kept = ([k for k in keys if rng.random() < 0.5] or [_pick(rng, keys)]) if mode < 0.85 else [_pick(rng, keys)]
    return {k: parts[k] for k in keys if k in kept}


def _front(p: dict[str, str], rng: np.random.Generator) -> str | None:
    """The landscape below the sky: objects, ground, mountains and hills."""
    land = None
    if "objects" in p and "ground" in p:
        land = f"{p['objects']} {_pick(rng, ('in', 'on'))} {p['ground']}"
    else:
        land = p.get("objects") or p.get("ground")
    backs = [p[k] for k in ("mountains", "hills") if k in p]
    back = " and ".join(backs) if backs else None
    if land and back:
        templates = ("{l} with {b}", "{l} below {b}", "{b} behind {l}", "{b} above {l}", "{b} and {l}")
        return _pick(rng, templates).format(l=land, b=back)
    return land or back


def caption_scene(scene: Scene, rng: np.random.Generator) -> str:
    """A caption for ``scene``, drawn from ``rng`` (see the module docstring for the mix)."""
    if scene.isolated:  # one subject on a plain colour: its phrase alone
        parts = _parts(scene, rng)
        key = {"object": "objects", "celestial": "celestial"}.get(scene.isolated, scene.isolated)
        return parts[key]
    p = _choose(_parts(scene, rng), rng)
    front = _front(p, rng)
    sky, body = p.get("sky"), p.get("celestial")
    if front and sky and rng.random() < 0.3:
        text = f"{front} {_pick(rng, TIME_PHRASES[scene.sky])}"
        return f"{text} with {body}" if body else text
    sky_part = _pick(rng, ("{s} with {c}", "{c} in {s}")).format(s=sky, c=body) if sky and body else sky or body
    if front and sky_part:
        if sky is None:  # only a sun or moon above the landscape
            templates = ("{c} over {f}", "{f} under {c}", "{f} with {c}")
            return _pick(rng, templates).format(f=front, c=sky_part)
        templates = ("{f} under {s}", "{s} over {f}", "{s} above {f}", "{f} beneath {s}", "{f}, {s}")
        return _pick(rng, templates).format(f=front, s=sky_part)
    return front or sky_part or ""
