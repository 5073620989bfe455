"""What one request may ask of the server. The defaults keep a shared machine responsive; the
operator raises them with ``multidiffusion serve --max-side ... --max-steps ...``."""

from __future__ import annotations

from dataclasses import dataclass

from multidiffusion.options import MAX_SIDE, MAX_STEPS, MIN_SIDE, check_int, check_side

SIDE_NOTE = "this server's limit, set with `multidiffusion serve --max-side`"

__all__ = ["DEFAULT_MAX_EVALUATIONS", "DEFAULT_MAX_SIDE", "DEFAULT_MAX_STEPS", "DEFAULT_MAX_UPLOAD_MB", "ServerLimits"]

DEFAULT_MAX_SIDE = 4096
"""Longest canvas side in pixels a request may ask for (8 SD windows; 64 demo-model windows)."""
DEFAULT_MAX_STEPS = 150
"""Most denoising steps a request may ask for."""
DEFAULT_MAX_EVALUATIONS = 50_000
"""Most window evaluations per request: the compute bound, since sides and steps alone allow a
4096 x 64 demo panorama with window 8 and stride 1 (1,017 windows a step). Counted by
:mod:`multidiffusion.estimate`: the model's (views x prompts per step, x steps), plus the VAE's tiles
and the prompts converted to window evaluations. A default 4096-wide demo panorama costs 25,250 in
the model + 189 for the VAE; an SD 512 x 4608 one 3,250 + 27; a 2048 x 2048 demo img2img 6,234 for
the VAE alone (1,369 a step in the model)."""
DEFAULT_MAX_UPLOAD_MB = 10.0
"""Largest upload (a PNG to read settings from, a segmentation map) in megabytes."""


@dataclass(frozen=True)
class ServerLimits:
    """The server's caps; ``check_*`` raise ValueError with a message for the page."""

    max_side: int = DEFAULT_MAX_SIDE
    max_steps: int = DEFAULT_MAX_STEPS
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS

    def __post_init__(self) -> None:
        check_int("--max-evaluations", self.max_evaluations, 1)
        check_int("--max-side", self.max_side, MIN_SIDE, MAX_SIDE)
        check_int("--max-steps", self.max_steps, 1, MAX_STEPS)
        if not 0 < self.max_upload_mb <= 1024:
            raise ValueError(f"--max-upload-mb must be a number from 0 to 1024, got {self.max_upload_mb}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check_side(self, name: str, value: object) -> int:
        """A canvas side: the one check of every canvas side (:func:`multidiffusion.io.ranges.check_side`)
        within this server's limit."""
        return check_side(name, value, 8, self.max_side, f" ({SIDE_NOTE})")

    def check_steps(self, value: object) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value > self.max_steps:
            raise ValueError(
                f"steps {value} is more than this server allows: at most {self.max_steps} "
                "(the operator sets this with `multidiffusion serve --max-steps`)"
            )
        return check_int("steps", value, 1, self.max_steps)

    def check_upload(self, name: str, size: int) -> None:
        if size > self.max_upload_bytes:
            raise ValueError(
                f"{name} is {size / 1024 / 1024:.1f} MB; this server accepts uploads up to {self.max_upload_mb:g} MB"
            )
