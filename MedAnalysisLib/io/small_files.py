"""Reading the small text files a user names as options: JSON options, labels, plans, ``dataset.json``, CSV manifests.

Such a file is a few kilobytes. A name can still point at a FIFO (reading blocks for ever), a device
(``/dev/zero`` never ends, ``/dev/urandom`` neither), a folder, or a multi-gigabyte file; a JSON text can nest
thousands of levels deep and exhaust Python's recursion. One function reads every such file
(:func:`read_small_text`) and one parses every user-supplied JSON text (:func:`parse_json_text`), so each is
refused the same way, with an :class:`~MedAnalysisLib.errors.InputError` saying what was expected and what was found.

This module imports only the standard library (it runs before TensorFlow, in the command line's checks).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from MedAnalysisLib.errors import InputError, MedAnalysisError

#: Largest JSON option file (labels, plan, ``dataset.json``): real ones are kilobytes.
MAX_JSON_BYTES = 16 * 1024**2
#: Largest CSV manifest: a row is a few hundred bytes, so this is hundreds of thousands of cases.
MAX_CSV_BYTES = 64 * 1024**2
#: Deepest nesting of user JSON: the deepest real option (a label's terminology) is four levels.
MAX_JSON_DEPTH = 32

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"))


def file_kind(mode: int) -> str:
    """What ``st_mode`` says a path is, for messages about paths that are not regular files ("a FIFO", "a socket",
    "a character device", "a block device", "a folder", "a symbolic link"; else "a special file"). The one naming
    every reader uses."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a special file"


def open_regular_descriptor(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Open ``path`` read-only without ever blocking (``O_NONBLOCK``: a FIFO opened for reading would wait for a
    writer) and return ``(descriptor, st_mode of the open file)``. The caller checks the mode, so that a FIFO, device
    or socket that replaced a regular file after it was listed or stat'ed is caught on the descriptor itself, and
    closes the descriptor.

    Raises:
        OSError: The path cannot be opened (missing, permission, a link loop).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags)
    try:
        return descriptor, os.fstat(descriptor).st_mode
    except OSError:
        return descriptor, 0


def read_small_text(path: str | os.PathLike[str], what: str, max_bytes: int = MAX_JSON_BYTES,
                    error: type[MedAnalysisError] = InputError) -> str:
    """The UTF-8 text of ``path``, a regular file of at most ``max_bytes`` bytes (a leading BOM is dropped).

    The path is checked with ``stat`` (links followed) before it is opened, and the open descriptor again, so a
    FIFO, device, socket or folder is never read; at most ``max_bytes + 1`` bytes are read whatever the size claims.

    Args:
        path: The file the user named.
        what: How the message names it, e.g. ``"a labels JSON file (--labels)"``.
        max_bytes: Size cap.
        error: The error type raised (an :class:`InputError` by default; plans raise ``PlanError``).

    Raises:
        InputError: Missing, not a regular file, too large, unreadable or not UTF-8 (``error`` when given).
    """
    path = Path(path)
    shown = path.name or str(path)
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError) as problem:
        raise error(f"expected {what} at {shown}, got {getattr(problem, 'strerror', None) or problem}") from None
    if not stat.S_ISREG(mode):
        raise error(f"expected {what} at {shown} to be a regular file, got {file_kind(mode)} (it is not opened)")
    try:
        fd, opened = open_regular_descriptor(path)
    except OSError as problem:
        raise error(f"expected a readable {what} at {shown}, got: {problem.strerror or problem}") from None
    try:
        if not stat.S_ISREG(opened):  # swapped for something else between stat and open
            raise error(f"expected {what} at {shown} to be a regular file, got {file_kind(opened)}")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as problem:
        raise error(f"expected a readable {what} at {shown}, got: {problem.strerror or problem}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise error(f"expected {what} of at most {max_bytes // 1024**2} MiB at {shown}, got a larger file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as problem:
        raise error(f"expected UTF-8 text in {what} at {shown}, got undecodable bytes at offset {problem.start}") \
            from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"the non-standard constant {name}")


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json_text(text: str, what: str, max_depth: int = MAX_JSON_DEPTH, max_chars: int = MAX_JSON_BYTES,
                    error: type[MedAnalysisError] = InputError, allow_nan: bool = False) -> Any:
    """Parse user-supplied JSON: at most ``max_chars`` characters, ``max_depth`` levels, no NaN/Infinity.

    ``allow_nan`` lets NaN and Infinity through for a caller that checks every number itself and names the field
    in its message (``--hparam KEY=NaN``); files never need it.

    Raises:
        InputError: Text that is too long, does not parse, uses NaN or Infinity, or nests too deeply (``error``
            when given); the message says what was expected and what was found.
    """
    if len(text) > max_chars:
        raise error(f"expected {what} of at most {max_chars} characters, got {len(text)}")
    try:
        value = json.loads(text) if allow_nan else json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise error(f"expected {what}, got JSON nested deeper than {max_depth} levels") from None
    except ValueError as problem:  # JSONDecodeError is a ValueError, and so is a refused constant
        raise error(f"expected {what}, got text that does not parse as standard JSON: {problem}") from None
    if json_depth(value) > max_depth:
        raise error(f"expected {what}, got JSON nested deeper than {max_depth} levels")
    return value


def read_json_file(path: str | os.PathLike[str], what: str, max_bytes: int = MAX_JSON_BYTES,
                   error: type[MedAnalysisError] = InputError) -> Any:
    """:func:`read_small_text` then :func:`parse_json_text` (the message names the file)."""
    text = read_small_text(path, what, max_bytes, error)
    return parse_json_text(text, f"{what} at {Path(path).name}", max_chars=max_bytes, error=error)


__all__ = ["MAX_CSV_BYTES", "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "json_depth", "parse_json_text", "read_json_file",
           "read_small_text"]
