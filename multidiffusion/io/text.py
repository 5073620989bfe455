"""Bounded readers for the text files a user names: scene files (TOML or JSON) and batch files (JSON
lines), with limits on what one file or one line may cost.

A file name on the command line or in a folder may be a FIFO (reading blocks forever), a device
(``/dev/zero`` never ends), a link to one, or a regular file far larger than any settings are; and
the text itself may be hostile or careless: invalid UTF-8, lists nested 100000 deep (the parsers
recurse: ``RecursionError``), a 5000-digit integer (Python refuses to convert over 4300 digits with a
message about ``sys.set_int_max_str_digits``). Every such case here is a :class:`TextFileError` (a
ValueError) with one line naming the file (and line) and what is allowed, so the CLI and the batch
runner can show it as is and go on with the next item.

- :func:`open_regular_file`: ``os.stat`` (links followed) refuses folders, FIFOs, sockets and devices
  before anything is opened; the open is non-blocking and ``fstat`` checks again (the name may have
  been swapped for a FIFO since the stat), the same discipline as the image loader
  (:func:`multidiffusion.io.image_loader.check_file`).
- :func:`read_scene_file`: at most :data:`MAX_SCENE_BYTES`, read whole, then parsed.
- :func:`batch_lines`: streamed line by line (never the whole file in memory), each line at most
  :data:`MAX_LINE_BYTES`; a longer line is skipped to its end and reported as that line's error,
  the other lines are read.
- :func:`parse_json_text` / :func:`parse_toml_text`: strict UTF-8, at most :data:`MAX_DEPTH` levels
  of nesting and integers of at most :data:`MAX_DIGITS` digits, checked after parsing (and a
  parser's ``RecursionError`` caught), so a settings value can't be arbitrarily deep or long.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

__all__ = [
    "MAX_DEPTH",
    "MAX_DIGITS",
    "MAX_LINE_BYTES",
    "MAX_SCENE_BYTES",
    "SCENE_SUFFIXES",
    "BatchLine",
    "TextFileError",
    "batch_lines",
    "open_regular_file",
    "parse_json_text",
    "parse_scene_bytes",
    "parse_toml_text",
    "read_batch_line",
    "read_scene_bytes",
    "read_scene_file",
]

MAX_SCENE_BYTES = 16 * 1024 * 1024
"""A scene file's most bytes. A hand-written scene is a few KB; the largest real ones are the
settings a PNG stores, read back as a scene, with their masks and control images inlined as PNG data
URIs. 16 MB holds several such images (a 4096 x 4096 two-colour mask compresses to well under 1 MB)
while a file read whole and parsed stays cheap in memory (the parsed text costs a few times its
size)."""

MAX_LINE_BYTES = 16 * 1024 * 1024
"""A batch line's most bytes: one line is one scene, so the same budget as :data:`MAX_SCENE_BYTES`.
A longer line (a 100 MB prompt) is refused as that line's error; the file is not."""

MAX_DEPTH = 32
"""The deepest nesting of lists and tables a scene or batch line may have. Real settings nest at
most five deep (``regions[0].loras.name.weight``); the parsers recurse, so text nested thousands deep
would otherwise end in a ``RecursionError``."""

MAX_DIGITS = 40
"""The most digits an integer in a scene or batch line may have. Every integer setting fits in 20
(a seed is below 2**64); a longer one is a mistake, and refusing it here keeps messages that echo a
value short and keeps Python's own 4300-digit conversion limit (whose message names
``sys.set_int_max_str_digits``) out of sight."""

SCENE_SUFFIXES = (".toml", ".json")

_CHUNK = 1 << 20


class TextFileError(ValueError):
    """A file or line that can't be read as settings. ``str()`` is the whole one-line message (it
    names the file); ``reason`` is the same without the file's name, for callers that name the file
    themselves (the batch runner's ``scene.toml: ...``), so that no message names it twice."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _size(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB ({size:,} bytes)"


def open_regular_file(path: str | os.PathLike, what: str, give: str) -> tuple[BinaryIO, int]:
    """``path`` opened for reading in binary, and its size, if it is a regular file (links followed).

    Folders, FIFOs, sockets and devices are refused by ``os.stat`` before anything is opened (opening
    a FIFO blocks until a writer comes); the open itself is non-blocking and ``fstat`` checks the
    opened file again. ``what`` names the file in messages (``"scene file 'a.toml'"``); ``give`` says
    what to give instead (``"a .toml or .json file"``)."""
    path = Path(path).expanduser()

    def refuse(reason: str) -> TextFileError:
        return TextFileError(f"{what} {reason}", reason)

    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise refuse("does not exist") from None
    except (OSError, ValueError) as exc:  # ValueError: an embedded null byte
        raise refuse(f"can't be read ({getattr(exc, 'strerror', None) or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise refuse(f"is a folder; give {give}")
    if not stat.S_ISREG(info.st_mode):
        raise refuse(f"is not a regular file (a FIFO, socket or device); give {give}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise refuse(f"can't be read ({exc.strerror or exc})") from None
    file = os.fdopen(fd, "rb")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        file.close()
        raise refuse(f"is not a regular file (a FIFO, socket or device); give {give}")
    return file, info.st_size


def _check_values(data: Any) -> str | None:
    """Why ``data`` (parsed JSON or TOML) is too deep or holds too long an integer; None if fine.
    Iterative, so that it can't itself run out of stack on what the parser accepted."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                return f"lists and tables are nested more than {MAX_DEPTH} deep; settings may nest at most {MAX_DEPTH}"
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 132:  # 10**40 has 133 bits
            digits = len(str(abs(value))) if value.bit_length() < 14_000 else None
            if digits is None or digits > MAX_DIGITS:
                return _too_long(digits)
    return None


def _too_long(digits: int | None) -> str:
    has = f"has {digits:,} digits" if digits else "is too long"
    return f"a number {has}; integers may have at most {MAX_DIGITS} digits"


def _deep() -> str:
    return f"lists and tables are nested too deep to read; settings may nest at most {MAX_DEPTH} deep"


def _text(data: bytes) -> str:
    """``data`` as UTF-8; the reason for the error names the first bad byte's line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        at = f"line {line}, column {column}" if line > 1 else f"column {column}"
        raise ValueError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at {at})") from None


def _json_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_DIGITS:
        raise _Refused(_too_long(digits))
    return int(text)


class _Refused(ValueError):
    """A reason already worded for the user (raised from inside a parser's hook)."""


def parse_json_text(data: bytes) -> Any:
    """JSON from UTF-8 ``data``, within :data:`MAX_DEPTH` and :data:`MAX_DIGITS`; a ValueError whose
    text is the reason (without a file name) otherwise."""
    text = _text(data)
    try:
        value = json.loads(text, parse_int=_json_int)
    except _Refused:
        raise
    except json.JSONDecodeError as exc:
        at = f"line {exc.lineno}, column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
        raise ValueError(f"not valid JSON: {exc.msg} ({at})") from None
    except RecursionError:
        raise ValueError(_deep()) from None
    problem = _check_values(value)
    if problem:
        raise ValueError(problem)
    return value


def parse_toml_text(data: bytes) -> dict[str, Any]:
    """TOML from UTF-8 ``data``, within :data:`MAX_DEPTH` and :data:`MAX_DIGITS`; a ValueError whose
    text is the reason (without a file name) otherwise."""
    text = _text(data)
    try:
        value = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    except RecursionError:
        raise ValueError(_deep()) from None
    except ValueError as exc:  # int() past Python's 4300 digits: the only other ValueError tomllib lets out
        if "integer string conversion" in str(exc):
            raise ValueError(_too_long(None)) from None
        raise ValueError(f"not valid TOML: {exc}") from None
    problem = _check_values(value)
    if problem:
        raise ValueError(problem)
    return value


def read_scene_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a scene file: a regular file of at most :data:`MAX_SCENE_BYTES` ending in .toml
    or .json; a :class:`TextFileError` naming it otherwise."""
    path = Path(path).expanduser()
    what = f"scene file {str(path)!r}"
    if path.suffix.lower() not in SCENE_SUFFIXES:
        reason = "must end in .toml or .json"
        raise TextFileError(f"{what} {reason}", reason)
    file, size = open_regular_file(path, what, "a .toml or .json file")
    limit = f"scene files may be at most {_size(MAX_SCENE_BYTES)}"
    with file:
        if size > MAX_SCENE_BYTES:
            reason = f"is {_size(size)}; {limit}"
            raise TextFileError(f"{what} {reason}", reason)
        data = file.read(MAX_SCENE_BYTES + 1)  # it may have grown since the stat
    if len(data) > MAX_SCENE_BYTES:
        reason = f"grew past {_size(MAX_SCENE_BYTES)} while it was read; {limit}"
        raise TextFileError(f"{what} {reason}", reason)
    return data


def parse_scene_bytes(data: bytes, path: str | os.PathLike) -> dict[str, Any]:
    """A scene file's table from its bytes (``path`` says the format and names it in messages)."""
    path = Path(path)
    try:
        value = parse_toml_text(data) if path.suffix.lower() == ".toml" else parse_json_text(data)
    except ValueError as exc:
        raise TextFileError(f"{path.name}: {exc}", str(exc)) from None
    if not isinstance(value, dict):
        reason = f"a scene must be a table (JSON object), got {type(value).__name__}"
        raise TextFileError(f"{path.name}: {reason}", reason)
    return value


def read_scene_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw contents of a TOML or JSON scene file (a table), read within the limits above."""
    return parse_scene_bytes(read_scene_bytes(path), path)


@dataclass(frozen=True)
class BatchLine:
    """One non-blank line of a batch file: its number (from 1), where it starts (``offset``) and its
    ``size`` in bytes, and its bytes (None when the line is longer than :data:`MAX_LINE_BYTES`: then
    ``error`` says so). ``sha256`` identifies the bytes, so that a line read again later can be
    checked to be the one read first (:func:`read_batch_line`)."""

    number: int
    offset: int
    size: int
    sha256: str
    data: bytes | None
    error: str | None = None


def batch_lines(path: str | os.PathLike, max_line: int | None = None) -> Iterator[BatchLine]:
    """The non-blank lines of a batch file (lines end at ``\\n``), streamed: at most one line of at
    most ``max_line`` bytes is in memory at a time. A longer line is read to its end without being
    kept and comes out with ``data=None`` and ``error`` set (``max_line``: :data:`MAX_LINE_BYTES`
    by default). The file must be a regular file
    (:func:`open_regular_file`); a :class:`TextFileError` naming it otherwise."""
    max_line = MAX_LINE_BYTES if max_line is None else max_line
    path = Path(path).expanduser()
    file, _ = open_regular_file(path, f"batch file {str(path)!r}", "a JSON-lines file or a folder of scene files")
    with file:
        number, start = 1, 0  # the current line's number and where it starts
        line = bytearray()
        size = 0  # the current line's bytes, kept or not
        while True:
            chunk = file.read(_CHUNK)
            pieces = chunk.split(b"\n") if chunk else [b""]
            for k, piece in enumerate(pieces):
                size += len(piece)
                if size <= max_line:
                    line += piece
                else:
                    line.clear()
                ends = k < len(pieces) - 1 or not chunk
                if not ends:
                    continue
                if size > max_line:
                    reason = f"the line is {_size(size)}; batch lines may be at most {_size(max_line)}"
                    yield BatchLine(number, start, size, "", None, reason)
                elif line.strip():
                    data = bytes(line)
                    yield BatchLine(number, start, size, hashlib.sha256(data).hexdigest(), data)
                start += size + 1
                number += 1
                line = bytearray()
                size = 0
            if not chunk:
                return


def read_batch_line(path: str | os.PathLike, line: BatchLine) -> bytes:
    """``line``'s bytes read again from the file (the batch runner keeps only where each line is, not
    its text, so that a batch of many large lines costs one line's memory); a :class:`TextFileError`
    when the file no longer holds them."""
    path = Path(path).expanduser()
    file, _ = open_regular_file(path, f"batch file {str(path)!r}", "a JSON-lines file")
    with file:
        file.seek(line.offset)
        data = file.read(line.size)
    if hashlib.sha256(data).hexdigest() != line.sha256:
        reason = "the line has changed since the batch started; run the batch again"
        raise TextFileError(f"{path.name}:{line.number}: {reason}", reason)
    return data
