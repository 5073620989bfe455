"""The items of a batch (:mod:`multidiffusion.cli.batch`): read from a JSON-lines file or a folder of
scene files through the bounded readers of :mod:`multidiffusion.io.text`, each parsed up front by the
one settings reader (a bad line or file is that item's error), and refused by name when two items
write one PNG or an item would write over one of its own input files."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multidiffusion.files.metadata import numbered_paths
from multidiffusion.io.text import (
    BatchLine,
    TextFileError,
    batch_lines,
    parse_json_text,
    parse_scene_bytes,
    read_batch_line,
    read_scene_bytes,
)

SCENE_SUFFIXES = (".toml", ".json")

MAX_ITEMS = 100_000
"""The most items one batch may hold. Each item is at least seconds of work, so 100,000 is days of it;
the cap bounds what the up-front check keeps (a few small fields per item) for a file of tiny lines."""

TEXT_FIELDS = frozenset({"prompt", "negative_prompt", "background", "colors"})
"""Fields whose strings are text, never file names: not compared with the outputs."""


@dataclass
class Item:
    """One image to make: where it was given (``jobs.jsonl:3``), its output (the first PNG) and how
    many PNGs it writes, or the error that makes it unusable.

    The item's scene is parsed once up front (to report bad items before the first image) and again
    when it runs (:attr:`scene`, from the file, checked to be the same bytes): keeping every parsed
    scene, with its decoded input images, would cost the whole batch's images in memory."""

    where: str
    output: Path | None = None
    error: str | None = None
    count: int = 1
    load: Callable[[], Any] | None = dataclasses.field(default=None, repr=False)

    @property
    def scene(self) -> Any:
        """The item's scene, parsed again from its file; None for a failed item."""
        return self.load() if self.load is not None and self.error is None else None

    def outputs(self) -> list[Path]:
        """Every PNG the item writes (out.png, out-2.png, ...), links resolved."""
        return [p.resolve() for p in numbered_paths(self.output, self.count)] if self.output else []

    def done(self) -> bool:
        """Whether every PNG of the item exists (each is written whole or not at all)."""
        return all(p.exists() for p in numbered_paths(self.output, self.count))


def _prompt_count(options: Any) -> int:
    prompt = getattr(options, "prompt", None)
    return len(prompt) if isinstance(prompt, list) else 1


def read_items(source: Path, output_dir: Path, allow_outside: bool = False, allow_pickle: bool = False) -> list[Item]:
    """The items of a JSON-lines file (one per non-blank line) or of a folder's scene files.

    Every file goes through the bounded readers of :mod:`multidiffusion.io.text` (regular files only,
    a batch file streamed line by line with a size limit per line), and every problem of one line or
    one file (its size, UTF-8, JSON or TOML, nesting, number length, settings) is that item's error:
    the others still run. Two items writing one PNG, and an item that would write over one of its
    own input files, are refused by name. A :class:`~multidiffusion.io.text.TextFileError` only for a
    ``source`` that can't be read at all."""
    context = (output_dir, allow_outside, allow_pickle)
    items = []
    if source.is_dir():
        for path in sorted(p for p in source.iterdir() if p.suffix.lower() in SCENE_SUFFIXES):
            items.append(_scene_file_item(path, source, context))
            _check_count(items, source)
    else:
        for line in batch_lines(source):
            items.append(_line_item(line, source, context))
            _check_count(items, source)
    _refuse_clashes(items, output_dir)
    return items


def _check_count(items: list[Item], source: Path) -> None:
    if len(items) > MAX_ITEMS:
        reason = f"holds more than {MAX_ITEMS:,} items; split it into several batches"
        raise TextFileError(f"{source.name} {reason}", reason)


def _line_item(line: BatchLine, source: Path, context: tuple[Path, bool, bool]) -> Item:
    """The item of one line of a batch file; its file names are relative to the file's folder."""
    where = f"{source.name}:{line.number}"
    if line.data is None:
        return Item(where, error=line.error)
    try:
        data = parse_json_text(line.data)
    except ValueError as exc:
        return Item(where, error=str(exc))
    if not isinstance(data, dict):
        return Item(where, error=f"a line must be a JSON object, got {type(data).__name__}")
    kept = dataclasses.replace(line, data=None)  # where the line is, not its bytes

    def load() -> dict[str, Any]:
        return parse_json_text(read_batch_line(source, kept))

    return _item(data, load, where, source.parent, None, context)


def _scene_file_item(path: Path, source: Path, context: tuple[Path, bool, bool]) -> Item:
    """The item of one scene file of a batch folder; its output defaults to the file's name as .png."""
    try:
        raw = read_scene_bytes(path)
        data = parse_scene_bytes(raw, path)
    except TextFileError as exc:
        return Item(path.name, error=exc.reason)  # the item is named by the file already
    digest = hashlib.sha256(raw).hexdigest()
    del raw

    def load() -> dict[str, Any]:
        again = read_scene_bytes(path)
        if hashlib.sha256(again).hexdigest() != digest:
            raise ValueError("the file has changed since the batch started; run the batch again")
        return parse_scene_bytes(again, path)

    return _item(data, load, path.name, source, context[0] / f"{path.stem}.png", context)


def _item(
    data: dict[str, Any],
    load: Callable[[], dict[str, Any]],
    where: str,
    base: Path,
    default: Path | None,
    context: tuple[Path, bool, bool],
) -> Item:
    """An item from a scene's contents, checked now; ``load`` gives the contents again when it runs.
    The options layer's error, if any, is the item's."""
    output_dir = context[0]
    try:
        scene, path = _parse(data, base, default, context)
        count = scene.options.num_images_per_prompt * _prompt_count(scene.options)
        del scene  # its decoded images: parsed again when the item runs
        item = Item(where, path, count=count)
        outside = [p for p in item.outputs() if not p.is_relative_to(output_dir.resolve())]
        if outside and not context[1]:  # out-2.png may be a link out of the folder
            raise ValueError(
                f"output {_shown(outside[0], output_dir)!r} is outside the output folder {str(output_dir)!r}"
            )
        _refuse_own_inputs(item, data, base, output_dir)
    except ValueError as exc:
        return Item(where, error=str(exc))

    def scene_again() -> Any:
        return _parse(load(), base, default, context)[0]

    item.load = scene_again
    return item


def _parse(
    data: dict[str, Any], base: Path, default: Path | None, context: tuple[Path, bool, bool]
) -> tuple[Any, Path]:
    """The scene of an item's contents and its output path (resolved, confined to the output folder
    unless ``allow_outside``)."""
    from multidiffusion.files.metadata import check_output_path
    from multidiffusion.files.scene import parse_scene

    output_dir, allow_outside, allow_pickle = context
    data = dict(data)
    output = data.pop("output", None)
    if output is None and default is None:
        raise ValueError('output is required: the PNG to write, e.g. "output": "pano.png"')
    if output is not None and not isinstance(output, str):
        raise ValueError(f"output must be a file name (a string), got {type(output).__name__}")
    if output is not None and (len(output) > 4096 or "\0" in output):
        raise ValueError("output must be a file name of at most 4096 characters, without null characters")
    path = (output_dir / output).resolve() if output is not None else default.resolve()
    if not allow_outside and not path.is_relative_to(output_dir.resolve()):
        raise ValueError(f"output {output!r} is outside the output folder {str(output_dir)!r}")
    check_output_path(path, "output")
    scene = parse_scene(data, base=base, source="", allow_outside=allow_outside, allow_pickle=allow_pickle)
    return scene, path


def _shown(path: Path, output_dir: Path) -> str:
    """An output as messages name it: relative to the output folder when it is under it."""
    try:
        return str(path.relative_to(output_dir.resolve()))
    except ValueError:
        return str(path)


def _refuse_own_inputs(item: Item, data: dict[str, Any], base: Path, output_dir: Path) -> None:
    """ValueError when one of the item's outputs is one of its own input files (an image, a mask, a
    control image, a region mask or map, a record's path: any string of its settings that names a
    file), links resolved: writing the output would destroy the input (``--overwrite``, or a
    numbered output that does not exist yet)."""
    outputs = set(item.outputs())
    stack: list[tuple[Any, str]] = [(value, key) for key, value in data.items() if key != "output"]
    while stack:
        value, name = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, f"{name}.{k}") for k, v in value.items() if k not in TEXT_FIELDS)
        elif isinstance(value, list):
            stack.extend((v, f"{name}[{i}]") for i, v in enumerate(value))
        elif (
            isinstance(value, str)
            and name.split(".")[-1] not in TEXT_FIELDS
            and 0 < len(value) < 4096
            and "\0" not in value
            and not value.startswith("data:")
        ):
            try:
                path = (base / Path(value).expanduser()).resolve()
            except (OSError, RuntimeError):  # too long a name, a loop of links: not a file we write
                continue
            if path in outputs:
                raise ValueError(
                    f"output {_shown(path, output_dir)!r} is this item's own input file ({name}); "
                    "writing it would destroy the input: choose another output"
                )


def _refuse_clashes(items: list[Item], output_dir: Path) -> None:
    """Refuse, by name, every item that would write a PNG an earlier item writes (numbered outputs
    included, links resolved): the later ones would overwrite it, and the summary would count one
    file twice."""
    writers: dict[Path, str] = {}
    for item in items:
        if item.error is not None:
            continue
        outputs = item.outputs()
        clash = next((p for p in outputs if p in writers), None)
        if clash is not None:
            item.error = f"output {_shown(clash, output_dir)!r} is also written by {writers[clash]}"
            item.load = None
            continue
        writers.update(dict.fromkeys(outputs, item.where))
