"""What the demo model can draw: scene attributes and the phrases its captions use for them.

Every caption of the training set is assembled from these phrases (see :mod:`.captions`), so
``VOCABULARY`` (every word that occurs) is exactly what the demo model's tokenizer knows as whole
words. Other words still tokenize (they fall back to characters) but the model never saw them.
"""

from __future__ import annotations

SKIES: tuple[str, ...] = ("day", "sunset", "night", "overcast")
GROUNDS: tuple[str, ...] = ("meadow", "desert", "snowfield", "water", "forest")
MOUNTAINS: tuple[str, ...] = ("none", "bare", "snowy")
CELESTIALS: tuple[str, ...] = ("none", "sun", "moon")
HOUSE_COLOURS: tuple[str, ...] = ("red", "blue", "yellow")
TREE_COLOURS: tuple[str, ...] = ("green", "orange", "yellow")

SKY_PHRASES: dict[str, tuple[str, ...]] = {
    "day": ("a clear blue sky", "a blue sky", "a sunny sky", "a bright blue sky"),
    "sunset": ("a sunset sky", "an orange sunset sky", "a red sunset", "a sunset"),
    "night": ("a starry night sky", "a night sky full of stars", "a dark night sky", "a starry sky"),
    "overcast": ("an overcast sky", "a cloudy grey sky", "grey clouds", "a cloudy sky"),
}
# The same skies as a time of day, appended to a landscape ("a desert at night").
TIME_PHRASES: dict[str, tuple[str, ...]] = {
    "day": ("on a sunny day", "in daytime"),
    "sunset": ("at sunset", "at dusk"),
    "night": ("at night", "under the stars"),
    "overcast": ("on an overcast day", "on a cloudy day"),
}
CELESTIAL_PHRASES: dict[str, tuple[str, ...]] = {
    "sun": ("a yellow sun", "the sun", "a bright sun"),
    "moon": ("a full moon", "the moon", "a white moon", "a pale moon"),
}
MOUNTAIN_PHRASES: dict[str, tuple[str, ...]] = {
    "bare": ("mountains", "rocky mountains", "grey mountains"),
    "snowy": ("snowy mountains", "snow capped mountains", "snowy peaks"),
}
HILL_PHRASES: tuple[str, ...] = ("green hills", "rolling hills", "hills")
GROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "meadow": ("a green meadow", "a meadow", "a grassy field", "green grass"),
    "desert": ("a desert", "a sandy desert", "sand dunes", "a desert with sand dunes"),
    "snowfield": ("a snowfield", "a snowy field", "a snowy plain"),
    "sea": ("the sea", "the ocean", "a calm sea"),
    "lake": ("a lake", "a calm lake", "a blue lake"),
    "forest": ("a forest", "a pine forest", "a dense forest", "green woods"),
}
OBJECT_KINDS: tuple[str, ...] = ("house", "tree")
# Words that glue phrases together (captions.py uses exactly these).
CONNECTIVES: tuple[str, ...] = (
    "in",
    "on",
    "with",
    "and",
    "under",
    "over",
    "above",
    "below",
    "behind",
    "beneath",
    "a",
    "an",
    "the",
)


def _all_phrases() -> list[str]:
    phrases: list[str] = []
    for table in (SKY_PHRASES, TIME_PHRASES, CELESTIAL_PHRASES, MOUNTAIN_PHRASES, GROUND_PHRASES):
        for options in table.values():
            phrases.extend(options)
    phrases.extend(HILL_PHRASES)
    phrases.extend(f"{c} house" for c in HOUSE_COLOURS)
    phrases.extend(f"{c} tree" for c in TREE_COLOURS)
    phrases.extend(CONNECTIVES)
    return phrases


#: Every word that occurs in a training caption, sorted; each is a single token of the demo tokenizer.
VOCABULARY: tuple[str, ...] = tuple(sorted({w for p in _all_phrases() for w in p.split()} | {","}))
