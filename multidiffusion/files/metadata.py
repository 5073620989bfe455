"""Images on disk: PNG with the generation parameters in text chunks, written atomically, and the
one reader that turns them back into a task's options.

Two chunks are written: ``multidiffusion`` holds the parameters as JSON (what ``--from`` and the web
app read to regenerate an image), ``parameters`` holds an AUTOMATIC1111-style summary that other
tools display.

**Stored settings are untrusted** (a PNG can come from anyone): they are the least trusted origin
of :mod:`multidiffusion.io.trust`, and name no file at all.

- Region masks, input images (``image``, an inpainting ``mask``, each of a ``control_image`` list)
  and segmentation maps travel embedded as PNG data URIs (within the budgets of
  :func:`~multidiffusion.io.budget`), or not at all.
- An input read from a file is recorded as the file's name and the SHA-256 of its bytes (``{"path":
  ..., "sha256": ...}``, :class:`~multidiffusion.io.image_loader.InputImage`), so a reader can say which
  image to give again; the record is kept apart (:attr:`StoredSettings.inputs`) and never opened,
  whatever it names (the loader refuses record dicts: only a scene file or the user makes a
  :class:`~multidiffusion.io.trust.RecordedFile`).
- The model is recorded as a name (a file's name, never its folder), which a shell loads only when
  it is the demo or a Hugging Face repo id (:func:`is_model_name`), from the hub and its cache only
  (:class:`~multidiffusion.io.trust.RepoId`: never a folder of the current directory) and never
  with pickle allowed; an upscaler model file is likewise kept apart by name
  (:attr:`StoredSettings.files`), for the user to give again, and ``allow_pickle``, ControlNets and
  LoRA files are never read back.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from multidiffusion.conditionings import image_fields, recorded_only, region_image_fields
from multidiffusion.conditionings.controlnet import CONTROL_INPUT
from multidiffusion.io.image_loader import ImageLimits, check_file, is_input_record, open_header
from multidiffusion.io.messages import shown
from multidiffusion.io.text import parse_json_text
from multidiffusion.io.trust import SHIPPED_MODELS, RepoId, is_repo_id
from multidiffusion.models import family_options
from multidiffusion.options import TASK_OPTIONS, UPSCALE_FILTERS, Limits, SamplingOptions, build_options, input_fields

__all__ = [
    "METADATA_KEY",
    "StoredSettings",
    "a1111_parameters",
    "check_output_path",
    "is_model_name",
    "model_label",
    "numbered_paths",
    "read_parameters",
    "read_settings",
    "save_png",
    "settings_from_parameters",
]

METADATA_KEY = "multidiffusion"
MAX_PNG_BYTES = 256 * 1024 * 1024
"""Largest PNG whose settings are read (only its first chunks are, but a FIFO or a device is no PNG)."""
NOT_SETTINGS = ("task", "mode", "multidiffusion_version", "image_index")
"""Stored keys that are not task settings (the task, which older PNGs stored as "mode", is read apart)."""
RENAMED = {"tiling": "placement"}
"""Keys of older versions and their names now."""
FILE_KEYS = ("upscaler",)
"""Stored keys that may name a file to load (weights): kept apart by name, never loaded from a PNG."""
NEVER_READ = ("allow_pickle", "controlnet", "lora_files", *recorded_only())
"""Stored keys ignored on reading: only the user, on the command line or in code, allows pickles or
names a ControlNet or a LoRA to load (the LoRAs' names and file names are kept apart, for a message:
:attr:`StoredSettings.loras`)."""


def check_output_path(path: str | os.PathLike, name: str = "output") -> Path:
    """Fail before any computing if ``path`` can't be written as a PNG."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".png":
        raise ValueError(f"{name} must be a .png file (the parameters are stored in it), got {str(path)!r}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"{name} folder {str(parent)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a folder")
    try:  # the real test (os.access says yes to root on read-only file systems)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.stem}-", suffix=".png"):
            pass
    except OSError as exc:
        raise ValueError(f"{name} {str(path)!r} is not writable: {exc.strerror}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{name} {str(path)!r} is not writable")
    return path


def a1111_parameters(params: Mapping[str, Any]) -> str:
    """The AUTOMATIC1111 'parameters' text: prompt, negative prompt, then 'Key: value' pairs."""
    lines = [str(params.get("prompt") or params.get("background") or "")]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    fields = {
        "Steps": params.get("num_inference_steps"),
        "Sampler": params.get("scheduler"),
        "CFG scale": params.get("guidance_scale"),
        "Seed": params.get("seed"),
        "Size": f"{params.get('width')}x{params.get('height')}",
        "Model": params.get("model"),
        "MultiDiffusion": f"window {params.get('window')}, stride {params.get('stride')}"
        + (", circular" if params.get("circular") else ""),
    }
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it


def save_png(image: Image.Image, path: str | os.PathLike, params: Mapping[str, Any] | None = None) -> Path:
    """Write ``image`` with ``params`` in its text chunks; the file appears whole or not at all."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    if params is not None:
        info.add_text(METADATA_KEY, json.dumps(params, sort_keys=True))
        info.add_text("parameters", a1111_parameters(params))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a new file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def numbered_paths(path: Path, count: int) -> list[Path]:
    """out.png, out-2.png, out-3.png, ... for ``count`` images."""
    return [path] + [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(2, count + 1)]


def model_label(model: str | os.PathLike) -> str:
    """How a model is recorded: "demo" and repo ids as they are, a file or folder by its name only
    (a stored setting never holds a path on this machine)."""
    name = str(model)
    return name if is_model_name(name) else Path(name).name


def is_model_name(name: Any) -> bool:
    """True for the shipped models ("demo", "demo-lcm") and Hugging Face repo ids ("org/name"): what
    stored settings may load by themselves (a repo id from the hub and its cache only,
    :class:`~multidiffusion.io.trust.RepoId`).
    Paths, file names (.safetensors, .ckpt, ...) and anything odd are not."""
    return name in SHIPPED_MODELS or is_repo_id(name)


def _open_png(source: str | os.PathLike) -> Image.Image:
    """The PNG's header and text chunks (no pixels decoded), after the image loader's file checks."""
    path = check_file(source, "the PNG", ImageLimits(max_bytes=MAX_PNG_BYTES))
    try:  # PNG only: PIL identifies by content, and an EPS named .png would run Ghostscript
        return open_header(path, "the PNG", repr(str(source)), formats=("PNG",))
    except Image.DecompressionBombError:
        raise ValueError(f"the PNG: {str(source)!r} declares more pixels than PIL allows") from None


def read_parameters(source: str | os.PathLike | Image.Image) -> dict[str, Any]:
    """The parameters stored by :func:`save_png`; ValueError if the image has none."""
    image = source if isinstance(source, Image.Image) else _open_png(source)
    text = getattr(image, "text", {}) or image.info
    if METADATA_KEY not in text:
        raise ValueError("image has no multidiffusion parameters (it was not written by multidiffusion)")
    try:  # bounded like a scene file: nesting depth, digits of integers (a PNG may come from anyone)
        params = parse_json_text(str(text[METADATA_KEY]).encode("utf-8", "surrogatepass"))
    except ValueError as exc:
        raise ValueError(f"image's multidiffusion parameters can't be read: {exc}") from None
    if not isinstance(params, dict):
        raise ValueError("image's multidiffusion parameters are not a JSON object")
    return params


@dataclass
class StoredSettings:
    """Settings read back from a PNG: the ``task``, its settings by API name (``values``), the
    ``model`` it was made with (a name, or None) and that model's options (SDXL micro-conditioning).

    ``inputs``: the input images recorded as files (``{"path": ..., "sha256": ...}`` by key, e.g.
    ``image``, ``mask``; ``control_image``: a list of them), apart from ``values`` because using one
    reads a file on this machine (only if its SHA-256 still matches; see the module docstring).
    ``files``: settings that named a file to load (an upscaler model), by key, as the file's name
    only; never loaded from here. ``loras``: the LoRAs the image was made with (adapter name -> file
    name), likewise never loaded from here."""

    task: str
    values: dict[str, Any]
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    loras: dict[str, str] = field(default_factory=dict)

    def options(self, limits: Limits | None = None, **changes: Any) -> SamplingOptions:
        """The task's options with ``changes`` (e.g. flags given on the command line, the inputs given
        again) on top; a recorded input not given again is refused by name (never read)."""
        return build_options(self.task, {**self.values, **self.inputs, **changes}, limits)


def settings_from_parameters(params: Mapping[str, Any], task: str | None = None) -> StoredSettings:
    """The one reader of stored parameters (``--from``, scene files' stored form, the web app).

    ``task``: the task expected (ValueError if they are another's). Region masks must be embedded
    data URIs; input images embedded or records of a file and its SHA-256 (kept in ``inputs``);
    anything else is refused without being looked at (see the module docstring)."""
    if not isinstance(params, Mapping):
        raise ValueError("the stored settings are not a table")
    named = [params[key] for key in ("task", "mode") if params.get(key) is not None]
    if len(named) == 2 and named[0] != named[1]:  # "task" now, "mode" in older PNGs: two would switch tasks
        raise ValueError(f"the stored settings name two tasks: {shown(named[0])} and {shown(named[1])}")
    stored_task = named[0] if named else None
    if not isinstance(stored_task, str) or stored_task not in TASK_OPTIONS:
        raise ValueError(f"the stored settings are for {shown(stored_task)}, not one of {', '.join(TASK_OPTIONS)}")
    if task is not None and stored_task != task:
        raise ValueError(f"the image was made by the {stored_task} task, not {task}")
    values = {RENAMED.get(k, k): v for k, v in params.items() if k not in NOT_SETTINGS + NEVER_READ}
    inputs = _stored_inputs(values, stored_task)
    files = {}
    for key in FILE_KEYS:
        value = values.get(key)
        if value is not None and not (isinstance(value, str) and value.lower() in UPSCALE_FILTERS):
            values.pop(key)
            path = value.get("path") if isinstance(value, Mapping) else value
            files[key] = Path(path).name if isinstance(path, str) else repr(path)
    model = values.pop("model", None)
    if model is not None and not isinstance(model, str):
        raise ValueError(f"the stored model must be a name, got {type(model).__name__}")
    if is_repo_id(model):
        model = RepoId(model)  # loaded from the hub and its cache only, never from a folder here
    model_keys = family_options()  # stored keys that configure the model: every registered family's options
    model_options = {k: values.pop(k) for k in model_keys if values.get(k) is not None}
    for k in model_keys:
        values.pop(k, None)
    for key in ("window", "stride", "original_size"):
        for mapping in (values, model_options):
            if isinstance(mapping.get(key), list):
                mapping[key] = tuple(mapping[key])
    regions = values.get("regions")
    if regions is not None:
        if not isinstance(regions, list):
            raise ValueError(f"regions must be a list of region tables, got {type(regions).__name__}")
        for i, region in enumerate(regions):
            mask = region.get("mask") if isinstance(region, Mapping) else None
            if isinstance(mask, str) and not mask.startswith("data:"):
                raise ValueError(
                    f"regions[{i}].mask: stored settings carry masks embedded (PNG data URIs); a file name is "
                    "refused and never opened"
                )
            for key in region_image_fields():
                image = region.get(key) if isinstance(region, Mapping) else None
                if image is not None and not _is_listed_input(image, False):
                    raise ValueError(
                        f"regions[{i}].{key}: stored settings carry {_images(key)} embedded (PNG data URIs) or as a "
                        "record of the file read and its SHA-256 ({'path': ..., 'sha256': ...}); anything else is "
                        "refused and never opened"
                    )
    return StoredSettings(stored_task, values, model, model_options, inputs, files, _lora_names(params))


def _stored_inputs(values: dict[str, Any], task: str) -> dict[str, Any]:
    """The input images of stored settings (the task's options marked as inputs and the conditioning
    kinds' image fields) that are records of a file: taken out of ``values`` (using one reads a file
    here). The others must be embedded; lists (one image per ControlNet) may also hold "input" (the
    task's own input, an upscale's Tile ControlNet). Anything else is refused, never opened."""
    lists = image_fields(lists=True)
    inputs = {}
    for key in input_fields(task):
        value = values.get(key)
        if value is None:
            continue
        if key not in lists:
            if is_input_record(value):
                inputs[key] = values.pop(key)
            elif not (isinstance(value, str) and value.startswith("data:")):
                raise ValueError(
                    f"{key}: stored settings carry input images embedded (PNG data URIs) or as a record of the file "
                    "read and its SHA-256 ({'path': ..., 'sha256': ...}); anything else is refused and never opened"
                )
            continue
        items = value if isinstance(value, list) else [value]
        takes_input = getattr(TASK_OPTIONS[task], "input_control", False)  # "input" names no file only there
        if not items or not all(_is_listed_input(item, takes_input) for item in items):
            raise ValueError(
                f"{key}: stored settings carry {_images(key)} as a list of records of the file read and its SHA-256 "
                "({'path': ..., 'sha256': ...}), embedded images (PNG data URIs) or \"input\"; anything else is "
                "refused and never opened"
            )
        if any(is_input_record(item) for item in items):  # reading it reads a file here: kept apart
            inputs[key] = values.pop(key)
    return inputs


def _images(key: str) -> str:
    """What an image field holds, in words: control_image -> "control images"."""
    return key.removesuffix("_image").replace("_", "-") + " images"


def _lora_names(params: Mapping[str, Any]) -> dict[str, str]:
    """Adapter name -> file name of the stored ``lora_files`` (only names: nothing here is loaded)."""
    stored = params.get("lora_files")
    if not isinstance(stored, Mapping):
        return {}
    names = {}
    for name, record in stored.items():
        file = record.get("file") if isinstance(record, Mapping) else None
        names[str(name)] = Path(file).name if isinstance(file, str) else "unknown file"
    return names


def _is_listed_input(item: Any, takes_input: bool) -> bool:
    if isinstance(item, str):
        return (takes_input and item == CONTROL_INPUT) or item.startswith("data:")
    return is_input_record(item)


def read_settings(source: str | os.PathLike | Image.Image, task: str | None = None) -> StoredSettings:
    """:func:`settings_from_parameters` of a PNG written by :func:`save_png`."""
    return settings_from_parameters(read_parameters(source), task)
