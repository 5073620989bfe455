"""The tasks that start from an image (img2img, upscale, inpaint, outpaint; a region layout may
too): the input, its strength and the canvas it makes are checked once, here
(:func:`check_input_image`), and each task says only how its canvas follows from the input
(``canvas_of``) and whether height and width are derived (``derived_size``).

An option that holds an input image is marked ``field(metadata=INPUT)`` (:data:`INPUT`, or
:data:`MASK_INPUT`): PNGs record it as its file and SHA-256, ``--from`` asks for it again, and the
trust rules apply to it; :func:`~multidiffusion.options.registry.input_fields` lists them, with the
conditioning kinds' ``image_fields``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from multidiffusion.io.checks import check_int, check_number, check_same_aspect
from multidiffusion.io.messages import shown
from multidiffusion.io.ranges import MAX_STEPS, MIN_SIDE, check_side, check_strength
from multidiffusion.options.limits import LIBRARY_LIMITS, Limits
from multidiffusion.options.sampling import PanoramaOptions, SamplingOptions
from multidiffusion.options.upscaler import MAX_SCALE, check_upscaler

__all__ = [
    "INPUT",
    "MASK_INPUT",
    "EditOptions",
    "Img2ImgOptions",
    "InpaintOptions",
    "OutpaintOptions",
    "UpscaleOptions",
    "check_input_image",
]

INPUT = {"input": "RGB"}
"""``field(metadata=INPUT)``: the option holds an input image (decoded as RGB)."""
MASK_INPUT = {"input": "L"}
"""``field(metadata=MASK_INPUT)``: the option holds an input mask (decoded as grey levels)."""


def input_image(options: SamplingOptions, name: str) -> Any:
    """The input image option ``name`` loaded and checked, in the mode its field's marker says."""
    from multidiffusion.io.image_loader import input_image as load

    mode = next(f.metadata["input"] for f in fields(options) if f.name == name)
    return load(getattr(options, name), name, mode=mode)


def _same_size(size: tuple[int, int]) -> tuple[tuple[int, int], str]:
    return size, "the input image's size"


def check_input_image(
    options: Any, canvas_of: Callable[[tuple[int, int]], tuple[tuple[int, int], str]] = _same_size
) -> None:
    """An image task's input, in one place: ``strength`` runs at least one of the steps, ``image``
    loads, and height and width not given are the canvas ``canvas_of(image size)`` makes (rounded
    down to multiples of 8), with what it is for the messages."""
    options.strength = check_strength(options.strength, steps=options.num_inference_steps)
    options.image = input_image(options, "image")
    size, what = canvas_of(options.image.size)
    lim = options.checked_against
    note = f" ({what}; give height and width to resize it)"
    for key, value in zip(("height", "width"), size):
        if getattr(options, key) is None:
            if value - value % 8 < MIN_SIDE:  # say what the user gave, not the derived side ("got 0")
                h, w = options.image.size
                raise ValueError(
                    f"image is {w}x{h} px, which makes a canvas {value} px in {key} ({what}); a canvas side must be "
                    f"at least {MIN_SIDE} px: give a larger image"
                    + (" or height and width" if options.task in ("img2img", "edit", "inpaint", "regions") else "")
                )
            setattr(options, key, check_side(key, value - value % 8, 8, lim.max_side, lim.suffix() or note))


@dataclass
class Img2ImgOptions(PanoramaOptions):
    """Image-to-image on a canvas of any size: ``image`` (a file, PIL image, array or tensor) is
    encoded, noised to the step ``strength`` says (diffusers' convention: 0.75 runs the last 75 % of
    the steps) and denoised with the panorama's windows. The canvas is the image's size (rounded
    down to multiples of 8) unless ``height`` and ``width`` resize it."""

    task: ClassVar[str] = "img2img"
    derived_size: ClassVar[str] = ""
    """Why height and width follow from the input alone (given ones must equal them), or "" when
    they may resize it."""

    image: Any = field(default=None, metadata=INPUT)
    strength: float = 0.75

    def __post_init__(self, limits: Limits | None) -> None:
        given = self.height, self.width
        if self.derived_size:
            self.height = self.width = None
        super().__post_init__(limits)
        check_input_image(self, self.canvas_of)
        for key, value in zip(("height", "width"), given):
            if self.derived_size and value is not None and value != getattr(self, key):
                raise ValueError(f"{key}: {self.derived_size} ({getattr(self, key)} here), got {shown(value)}")

    def canvas_of(self, size: tuple[int, int]) -> tuple[tuple[int, int], str]:
        """The canvas (height, width) an input of ``size`` makes, and what it is (for messages)."""
        return _same_size(size)


@dataclass
class EditOptions(Img2ImgOptions):
    """Reference-image editing of an image of any size with an editing model (Qwen-Image-Edit):
    each window is given its crop of ``image`` as the model's reference, and with
    ``whole_reference`` the whole image brought to the model's reference size too; the prompt is the
    instruction. ``strength`` 1 (default) starts from noise as the edit pipelines; less starts from
    the image noised to that step (:mod:`multidiffusion.tasks.edit`)."""

    task: ClassVar[str] = "edit"

    strength: float = 1.0
    whole_reference: bool = False

    def __post_init__(self, limits: Limits | None) -> None:
        if not isinstance(self.whole_reference, bool):
            raise ValueError(f"whole_reference must be True or False, got {shown(self.whole_reference)}")
        super().__post_init__(limits)


@dataclass
class UpscaleOptions(Img2ImgOptions):
    """Upscaling: ``image`` resized ``scale`` times by ``upscaler`` ("lanczos" and PIL's other
    filters, an ESRGAN-family model file read by spandrel, or a callable PIL -> PIL), then re-worked
    from ``strength`` (default 0.35) over windows. The prompt may be empty. ``noise_inversion``
    starts from a DDIM inversion of the resized image's latents instead of fresh noise
    (``inversion_steps`` of them, default the steps that run); ``allow_pickle`` lets a ``.pth``
    upscaler file be unpickled (only for files you trust)."""

    task: ClassVar[str] = "upscale"
    prompt_required: ClassVar[bool] = False
    input_control: ClassVar[bool] = True  # control_image="input": the resized input (Tile ControlNet)
    derived_size: ClassVar[str] = "an upscale's size is the image's times scale; give scale instead"

    prompt: str | list[str] | None = ""
    strength: float = 0.35
    scale: float = 2.0
    upscaler: Any = "lanczos"
    noise_inversion: bool = False
    inversion_steps: int | None = None
    allow_pickle: bool = False

    def __post_init__(self, limits: Limits | None) -> None:
        self.scale = check_number("scale", self.scale, 1, MAX_SCALE)
        self.upscaler = check_upscaler(self.upscaler, self.allow_pickle)
        for key in ("noise_inversion", "allow_pickle"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be True or False, got {shown(getattr(self, key))}")
        if self.inversion_steps is not None:
            self.inversion_steps = check_int("inversion_steps", self.inversion_steps, 1, MAX_STEPS)
        super().__post_init__(limits)

    def canvas_of(self, size: tuple[int, int]) -> tuple[tuple[int, int], str]:
        h, w = size
        return (round(h * self.scale), round(w * self.scale)), f"the input's {w}x{h} times scale {self.scale:g}"


@dataclass
class InpaintOptions(Img2ImgOptions):
    """Inpainting: ``mask`` (white = repaint, black = keep; a file, PIL image or array of the image's
    size or aspect ratio) is feathered by ``mask_blur`` pixels; everything outside it is kept by
    blending the known image back after every step (any model) or, with a 9-channel inpainting
    UNet, by the model itself. ``strength`` 1 (the default) repaints the masked area from noise."""

    task: ClassVar[str] = "inpaint"

    strength: float = 1.0
    mask: Any = field(default=None, metadata=MASK_INPUT)
    mask_blur: int = 4

    def __post_init__(self, limits: Limits | None) -> None:
        super().__post_init__(limits)
        self.mask_blur = check_int("mask_blur", self.mask_blur, 0, 256)
        self.mask = input_image(self, "mask")
        check_same_aspect("mask", self.mask.size, "image", self.image.size)


@dataclass
class OutpaintOptions(Img2ImgOptions):
    """Outpainting: the canvas is the image extended by ``left``, ``right``, ``top`` and ``bottom``
    pixels (multiples of 8), painted under the prompt; the image is kept, its last ``overlap``
    pixels towards each new side repainted so the seam blends (``mask_blur`` feathers it). With
    ``circular=True`` the canvas wraps around: the showcase is a photo extended to 360 degrees."""

    task: ClassVar[str] = "outpaint"
    derived_size: ClassVar[str] = "an outpaint's size is the image's plus left, right, top and bottom"

    strength: float = 1.0
    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0
    overlap: int = 16
    mask_blur: int = 8

    def __post_init__(self, limits: Limits | None) -> None:
        lim = limits if limits is not None else LIBRARY_LIMITS
        for key in ("left", "right", "top", "bottom"):
            setattr(self, key, check_int(key, getattr(self, key), 0, lim.max_side))
            if getattr(self, key) % 8:
                raise ValueError(f"{key} must be a multiple of 8 (pixels), got {getattr(self, key)}")
        if not (self.left or self.right or self.top or self.bottom):
            raise ValueError("outpaint: give at least one of left, right, top, bottom (pixels to add)")
        self.overlap = check_int("overlap", self.overlap, 0, 512)
        self.mask_blur = check_int("mask_blur", self.mask_blur, 0, 256)
        super().__post_init__(limits)

    def canvas_of(self, size: tuple[int, int]) -> tuple[tuple[int, int], str]:
        h, w = size
        h, w = h - h % 8, w - w % 8
        return (h + self.top + self.bottom, w + self.left + self.right), f"the input's {w}x{h} plus the added sides"
