"""The ranges of the values a call may give, each written once, with their checks: canvas sides,
steps, images, seeds, prompts, guidance, strength, LoRA weights. A ``ValueError`` names the parameter,
the value given and what is allowed.

At the bottom of the package (beside :mod:`.checks`, the generic checks they use) so that every
layer checks a value the same way: the options (:mod:`multidiffusion.options`), ``Region``, the
model loaders (a LoRA's weight) and the shells (a server's limits) import them from here.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from multidiffusion.io.checks import check_number
from multidiffusion.io.messages import shown

__all__ = [
    "MAX_GUIDANCE",
    "MAX_IMAGES",
    "MAX_LORA_WEIGHT",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "MAX_SIDE",
    "MAX_STEPS",
    "MIN_SIDE",
    "RANDOM_SEEDS",
    "check_guidance",
    "check_lora_weight",
    "check_negative",
    "check_prompt_length",
    "check_seed",
    "check_side",
    "check_strength",
    "check_text",
    "drawn_seed",
    "pair",
    "random_seed",
    "steps_that_run",
]

MIN_SIDE = 64
"""Smallest canvas side in pixels."""
MAX_SIDE = 16384
"""Largest canvas side in pixels (a 512 x 16384 panorama is 32 SD windows wide)."""
MAX_STEPS = 1000
"""Most inference steps (the schedulers' training steps)."""
MAX_IMAGES = 64
"""Most images per call (``num_images_per_prompt``)."""
MAX_SEED = 2**64 - 1
"""Largest seed: torch generators take 64-bit seeds. -1 asks for a random one."""
RANDOM_SEEDS = 2**32
"""Random seeds are drawn below this, so they stay short enough to read and type."""
MAX_PROMPT_CHARS = 10_000
"""Longest prompt (and negative or region prompt) in characters. The text encoders read only the first
77 tokens (CLIP) or 512 (T5, FLUX and SD3), about 300 and 2,000 characters of English and fewer of
scripts with more tokens per character; the rest is cut off after tokenising, which is the whole
cost of a longer text (a 10 MB prompt tokenised for 88 s at +4.4 GB). 10,000 is five times T5's
reach: no prompt a model reads is refused."""
MAX_GUIDANCE = 100.0
"""Largest guidance scale (classifier-free guidance, per region too). Models are used at 1-20;
past a few hundred the guided noise estimate leaves the range the scheduler can step from, and
at 1e308 it overflows to inf and every pixel comes out black."""


def check_guidance(name: str, value: Any) -> float:
    """A guidance scale: a number from 0 to :data:`MAX_GUIDANCE`."""
    value = check_number(name, value, 0)
    if value > MAX_GUIDANCE:
        raise ValueError(
            f"{name} must be at most {MAX_GUIDANCE:g} (models are used at 1-20; larger scales overflow), "
            f"got {shown(value)}"
        )
    return value


def check_side(name: str, value: Any, multiple: int = 8, max_side: int = MAX_SIDE, note: str = "") -> int:
    """A canvas side in pixels: a multiple of ``multiple`` from MIN_SIDE to ``max_side``."""
    allowed = f"a multiple of {multiple} from {MIN_SIDE} to {max_side}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be {allowed} (pixels), got {shown(value)}")
    if value % multiple or not MIN_SIDE <= value <= max_side:
        raise ValueError(f"{name} must be {allowed} (pixels), got {shown(value)}{note if value > max_side else ''}")
    return value


def check_text(name: str, value: Any, required: bool = True) -> str | None:
    """A prompt: text that is not only white space (None allowed when not ``required``), at most
    :data:`MAX_PROMPT_CHARS` long, that can be encoded as UTF-8 (a command line in another encoding
    gives lone surrogates)."""
    if value is None and not required:
        return None
    if isinstance(value, str):
        check_prompt_length(name, value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty prompt{'' if required else ' or None'}, got {shown(value)}")
    _check_utf8(name, value)
    return value


def check_prompt_length(name: str, value: str) -> None:
    """At most :data:`MAX_PROMPT_CHARS` characters; the message gives the length, not the text."""
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"{name} is {len(value):,} characters long; at most {MAX_PROMPT_CHARS:,} are allowed (the text "
            "encoders read only the first 77 or 512 tokens)"
        )


def _check_utf8(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be valid UTF-8 text, got {shown(value)}") from None


def check_seed(name: str, value: Any) -> int | None:
    """A seed: an integer from 0 to 2**64 - 1, or -1 / None for a random one (returns None)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be -1 (random) or an integer from 0 to {MAX_SEED}, got {shown(value)}")
    return None if value == -1 else value


def random_seed() -> int:
    """A fresh random seed (what -1 and an unset seed mean), below :data:`RANDOM_SEEDS`."""
    return secrets.randbelow(RANDOM_SEEDS)


def pair(name: str, value: Any) -> tuple[Any, Any]:
    """An int or a (rows, columns) pair as a pair."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an integer or a (height, width) pair, got {shown(value)}")
        return value[0], value[1]
    return value, value


def check_negative(name: str, value: Any, count: int | None = None) -> None:
    """A negative prompt: None, a string ("" is none), or with ``count`` a list of that many strings."""
    items = value if count is not None and isinstance(value, (list, tuple)) else [value]
    if value is None or (len(items) == (count or 1) and all(isinstance(v, str) for v in items)):
        for i, v in enumerate(items if value is not None else []):
            check_prompt_length(name if len(items) == 1 else f"{name}[{i}]", v)
            _check_utf8(name, v)
        return
    many = f" or a list of {count} strings (one per prompt)" if count is not None else ""
    raise ValueError(f"{name} must be a string{many} or None, got {shown(value)}")


def check_strength(value: Any, name: str = "strength", steps: int | None = None) -> float:
    """diffusers' ``strength``: the fraction of the schedule that runs, in (0, 1]; with ``steps``, also
    enough for at least one of them to run (``int(steps * strength)`` of them run below 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(
            f"{name} must be a number in (0, 1] (the fraction of the steps that re-work the image), got {shown(value)}"
        )
    if steps is not None and value < 1 and int(steps * value) < 1:
        fewest = math.ceil(1 / value)
        fewest += int(fewest * value) < 1  # rounding: 1 / 0.35 -> 3, 3 x 0.35 = 1.05
        more = f" or at least {fewest} steps (num_inference_steps)" if fewest <= MAX_STEPS else ""
        raise ValueError(
            f"{name} {value:g} runs none of the {steps} steps (int({steps} x {value:g}) = 0): give a {name} of at "
            f"least {math.ceil(100 / steps) / 100:g}{more}"
        )
    return float(value)


def drawn_seed(seed: int | None, shard: Any = None) -> int:
    """The seed a run uses: ``seed``, or when None a fresh :func:`random_seed`, which every process
    of a sharded run (``shard``: :func:`multidiffusion.engine.distributed.active`'s) agrees on."""
    if seed is not None:
        return seed
    return random_seed() if shard is None else shard.agree(random_seed(), "the random seed")


def steps_that_run(steps: int, strength: float | None) -> int:
    """The denoising steps a run takes (diffusers' rule for image-to-image): all ``steps``, or the
    last ``int(steps * strength)`` of them below a strength of 1."""
    return steps if strength is None or strength >= 1 else min(int(steps * strength), steps)


MAX_LORA_WEIGHT = 10.0
"""Largest LoRA weight either way (-10 to 10): LoRAs are used at 0-1.5; beyond 10 is a typo."""


def check_lora_weight(name: str, value: Any) -> float:
    """A LoRA's weight: a number from -:data:`MAX_LORA_WEIGHT` to :data:`MAX_LORA_WEIGHT` (0: loaded
    for the regions that name it only)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= MAX_LORA_WEIGHT:
        raise ValueError(
            f"{name} must be a weight from -{MAX_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g}, got {shown(value)}"
        )
    return float(value)
