"""Checks made at the entrance of the commands, before anything heavy (TensorFlow) is imported.

A mistake on the command line costs a fraction of a second, not the 6-9 s of a TensorFlow import: argparse types
refuse a bad value while the line is parsed (:func:`model_family`), and each command's ``validate(args)`` hook,
which :func:`MedAnalysisLib.cli.main` calls before the command runs, checks inputs and outputs. Every refusal says
what was expected and what was found, and exits with code 2.

The overwrite policy, one for every command that writes (:data:`OVERWRITE_POLICY`; each command's ``--help`` ends
with its part of it): an output that already exists is refused unless ``--overwrite`` is given; with it, only what
the command itself writes is replaced (atomically, see :mod:`MedAnalysisLib.io.atomic`). A path holding something
the command never writes (a folder of other files where a bundle goes, a folder where a file goes) is refused even
with ``--overwrite``: nothing the command did not create is ever deleted. The same holds for a symbolic link at
the output (never replaced nor written through), a path ending in .zip that is a folder, a bundle folder's path that
is a file, an output that is one of the command's inputs, a file a dataset.json or CSV manifest names, a folder
holding one (the current folder, ``/``) or a path inside an input folder (:func:`check_not_an_input`), an "earlier
bundle" whose marker is not a valid bundle document or that holds files a bundle does not consist of, and
train's ``OUT.checkpoint`` holding anything but a checkpoint. Where an output goes is checked first for every command
(:func:`check_output_location`: names the file system accepts, no file above it, a writable folder), so that an
ordinary mistake costs no work. Two commands resume instead of refusing:
``train`` continues an interrupted run from its checkpoint, and ``predict`` skips the cases whose sidecar shows the
same bundle and options made them.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from pathlib import Path

from MedAnalysisLib.errors import InputError, OutputError
from MedAnalysisLib.io.atomic import absolute_target
from MedAnalysisLib.sanitize import terminal_field

#: The policy in one paragraph, for the ``--help`` epilogs and the documentation.
OVERWRITE_POLICY = (
    "The rule every command follows: an output that already exists is refused (exit code 2, before any work) unless "
    "--overwrite is given, and then only what the command itself writes is replaced, atomically; a path that holds "
    "anything else (other files where a bundle or a file would go, a symbolic link, an input of the command) is "
    "refused even with --overwrite, so nothing the command did not create is deleted."
)

#: The longest file name, in bytes, of the common file systems (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units).
NAME_MAX = 255

#: Files that mark a folder (or the root of a .zip) as a model bundle or an ensemble (the bundle format's names).
BUNDLE_MARKERS = ("bundle.json", "ensemble.json")

OVERWRITE_HELP = "replace {what} that already exists (default: refuse, exit code 2)"


def add_overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--overwrite`` with a help text naming ``what`` it lets the command replace."""
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.format(what=what))


def model_family(text: str) -> str:
    """An argparse type: a registered model family name (no Keras import; the registry is a plain table)."""
    from MedAnalysisLib.models import MODEL_FAMILIES

    if text not in MODEL_FAMILIES:
        raise argparse.ArgumentTypeError(f"expected a model family among {', '.join(sorted(MODEL_FAMILIES))}, "
                                         f"got {text!r}")
    return text


def _refusal(path: Path, found: str, option: str) -> InputError:
    return OutputError(f"expected {option} to name a path that does not exist yet, got {found} at {_shown(path)}; "
                       f"pass --overwrite to replace it, or choose another {option}")


def _shown(path: str | os.PathLike[str]) -> str:
    """A path as it may appear in a message on a terminal (control characters escaped)."""
    return terminal_field(os.fspath(path))


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, the file system holding ``folder`` allows (255 where it cannot be asked)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _check_name_lengths(target: Path, siblings: Iterable[str], option: str, limit: int) -> None:
    """Refuse a name in ``target`` (or a sibling name written beside it) longer than ``limit`` bytes."""
    for name in (*target.parts[1:], *siblings):
        size = len(os.fsencode(name))
        if size > limit:
            raise OutputError(f"expected {option} with names of at most {limit} bytes (the file system's limit), got "
                              f"a name of {size} bytes: {_shown(name[:40])}...")


def _nearest_existing(path: Path) -> Path:
    """``path`` itself when it exists, else its closest existing ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or "/")


def _read_only(folder: Path) -> bool:
    """True when ``folder`` lies on a file system mounted read-only (which stops root too)."""
    try:
        return bool(os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1))
    except (OSError, AttributeError):
        return False


def check_output_location(path: str | os.PathLike[str] | None, option: str = "--out",
                          siblings: Iterable[str] = ()) -> None:
    """Cheap checks of where an output will go, made before any work: every name fits the file system (with the
    sibling names in ``siblings`` that the command also writes, such as ``OUT.checkpoint``), nothing above it is a
    file, and the folder it goes into may be written (permissions for ordinary users, a read-only file system for
    everyone).

    Raises:
        OutputError: The first problem, saying what was expected and what was found.
    """
    if path is None or os.fspath(path) == "":
        return
    target = absolute_target(path)
    if len(os.fsencode(str(target))) >= 4000:
        raise OutputError(f"expected {option} of at most 4000 bytes, got {len(os.fsencode(str(target)))} bytes")
    _check_name_lengths(target, siblings, option, NAME_MAX)  # before the file system is asked anything about it
    existing = _nearest_existing(target)
    _check_name_lengths(target, siblings, option, _name_max(existing if existing.is_dir() else existing.parent))
    if existing != target and not existing.is_dir():
        raise OutputError(f"expected {option} inside a folder, got {_shown(target)} below the file {_shown(existing)}")
    folders = [existing] if existing != target else [target.parent] + ([target] if target.is_dir() else [])
    for folder in folders:
        _check_writable(folder, target, option)


def _check_writable(folder: Path, target: Path, option: str) -> None:
    """Refuse ``target`` when ``folder`` (where it is written) is read-only or not writable by this user."""
    if _read_only(folder):
        raise OutputError(f"expected {option} on a writable file system, got {_shown(target)} on a read-only one")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"expected {option} in a folder you may write to, got {_shown(target)} where "
                          f"{_shown(folder)} is not writable (permission denied)")


#: Most cells of a CSV manifest looked at for the files it names (a larger manifest is checked on these).
MAX_MANIFEST_CELLS = 200_000


def _manifest_files(csv_path: Path) -> list[Path]:
    """The files and folders a CSV manifest names (any cell that, read relative to the manifest, is an existing
    path): whatever its columns, so that options choosing columns do not matter."""
    import csv

    found: list[Path] = []
    cells = 0
    home = csv_path.parent.resolve()
    try:
        with csv_path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            for row in csv.reader(handle):
                for cell in row:
                    cells += 1
                    value = cell.strip()
                    candidate = csv_path.parent / value
                    if (value and len(value) < 4096 and "\0" not in value and candidate.exists()
                            and candidate.resolve() not in (home, *home.parents)):  # "." or ".." names no input
                        found.append(candidate)
                if cells >= MAX_MANIFEST_CELLS:
                    break
    except (OSError, csv.Error, ValueError):
        pass
    return found


def _dataset_json_files(root: Path) -> list[Path]:
    """The files an MSD ``dataset.json`` lists (training and test entries), relative to its folder."""
    data = read_json_object(root / "dataset.json") or {}
    found: list[Path] = []
    for key in ("training", "test"):
        entries = data.get(key)
        for entry in entries if isinstance(entries, list) else []:
            values = entry.values() if isinstance(entry, dict) else [entry]
            found += [root / value for value in values if isinstance(value, str) and value and "\0" not in value]
    return found


def input_paths(inputs: Iterable[str | os.PathLike[str] | None]) -> list[Path]:
    """Every path the inputs read: each input itself and, for a dataset description (an MSD folder or its
    dataset.json, a CSV manifest), its folder and the files it names. Inputs that do not exist are kept as given (the
    command's own checks refuse them)."""
    found: list[Path] = []
    for item in inputs:
        if item is None or os.fspath(item) == "":
            continue
        path = Path(item)
        found.append(path)
        try:
            if path.is_file() and path.name.lower().endswith(".csv"):
                found += _manifest_files(path)
            elif path.is_file() and path.name == "dataset.json":
                found += [path.parent, *_dataset_json_files(path.parent)]
            elif path.is_dir() and (path / "dataset.json").is_file():
                found += _dataset_json_files(path)
        except OSError:
            continue
    return found


def _related(out: Path, inputs: Iterable[str | os.PathLike[str] | None]) -> tuple[Path, str] | None:
    """The first input that ``out`` is, holds, or lies inside (paths compared after resolving links), with how they
    overlap; None when they do not."""
    resolved = out.resolve()
    for path in input_paths(inputs):
        try:
            source = path.resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if resolved == source:
            return source, "is"
        if source in resolved.parents:
            return source, "is inside"
        if resolved in source.parents:
            return source, "holds"
    return None


def check_not_an_input(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None],
                       option: str = "--out") -> None:
    """Refuse an output that is one of the inputs, a file an input names (a dataset.json or a CSV manifest lists
    it), a folder holding one, or a path inside an input folder: writing there could replace what the command reads,
    and a later run would read the outputs as data.

    Raises:
        OutputError: ``path`` and an input overlap.
    """
    found = _related(absolute_target(path), inputs)
    if found is not None:
        source, how = found
        relation = {"is": "which is the input", "holds": "which holds the input",
                    "is inside": "which is inside the input folder"}[how]
        raise OutputError(f"expected {option} apart from the inputs, got {_shown(path)}, {relation} "
                          f"{_shown(source)}; inputs are never replaced nor written into")


def check_outputs_apart(outputs: dict[str, str | os.PathLike[str] | None]) -> None:
    """Refuse outputs of one command that are the same path or lie one inside another (``{option: path}``, links
    resolved): each is written, replaced or removed as a whole, so one would destroy or swallow the other.

    Raises:
        OutputError: The first two that overlap.
    """
    paths = [(option, absolute_target(path).resolve()) for option, path in outputs.items() if path is not None]
    for n, (option, path) in enumerate(paths):
        for other, other_path in paths[n + 1:]:
            if path == other_path or path in other_path.parents or other_path in path.parents:
                raise OutputError(f"expected {option} and {other} to be separate paths, got {_shown(path)} and "
                                  f"{_shown(other_path)}; each is replaced as a whole, so one would destroy the other")


def check_file_output(path: str | Path | None, overwrite: bool, option: str = "OUT",
                      inputs: Iterable[str | os.PathLike[str] | None] = ()) -> None:
    """The policy for an output file: new, or an existing regular file with ``overwrite``; a folder, a link or an
    input never."""
    if path is None:
        return
    check_output_location(path, option)
    check_not_an_input(path, inputs, option)
    path = absolute_target(path)
    if path.is_symlink():
        raise OutputError(f"expected {option} to name a file, got a symbolic link at {_shown(path)} (a link is never "
                          "replaced; name the real file)")
    if path.is_dir():
        raise OutputError(f"expected {option} to name a file, got the folder {_shown(path)} (a folder is never "
                          "replaced)")
    if path.exists() and not path.is_file():
        raise OutputError(f"expected {option} to name a regular file, got something else at {_shown(path)} (a "
                          "device, pipe or socket is never replaced)")
    if path.exists() and not overwrite:
        raise _refusal(path, "an existing file", option)


def is_bundle_path(path: Path) -> bool:
    """True for a folder holding ``bundle.json``/``ensemble.json`` (a JSON object), or a .zip holding one at its root
    or one level down (how bundles are zipped); never for a link. Reads only names and the marker file."""
    from MedAnalysisLib.bundles.storage import is_bundle_folder, is_bundle_zip

    return is_bundle_folder(path) or is_bundle_zip(path)


def check_bundle_output(path: str | Path, overwrite: bool, option: str = "--out",
                        inputs: Iterable[str | os.PathLike[str] | None] = ()) -> None:
    """The policy for a bundle output (train, configure, ensemble): new or an empty folder; an existing bundle only
    with ``overwrite``; anything else never (a bundle is written as a whole and would replace it). A path ending in
    .zip is a file (a folder there is refused), any other a folder (a file there is refused); links and paths that
    are or hold an input are refused too.

    Raises:
        OutputError: The path holds a bundle and ``overwrite`` is false, or holds something else.
    """
    check_output_location(path, option)
    check_not_an_input(path, inputs, option)
    path = absolute_target(path)
    if path.is_symlink():
        raise OutputError(f"expected {option} to name a new bundle or an existing one, got a symbolic link at "
                          f"{_shown(path)}; a link is never replaced, name the real path")
    zip_target = path.suffix.lower() == ".zip"
    if zip_target and path.is_dir():
        raise OutputError(f"expected {option} ending in .zip to name a bundle archive (a file), got the folder "
                          f"{_shown(path)}; a folder is never replaced by an archive")
    if not zip_target and path.exists() and not path.is_dir():
        raise OutputError(f"expected {option} to name a bundle folder (or a path ending in .zip), got the file "
                          f"{_shown(path)}; a file is never replaced by a folder")
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    from MedAnalysisLib.bundles.storage import earlier_bundle_problem

    problem = earlier_bundle_problem(path)
    if problem is not None:
        raise OutputError(f"expected {option} to name a new bundle or an earlier one holding only its own files, got "
                          f"{problem} at {_shown(path)}; it would be replaced as a whole, so it is refused even with "
                          "--overwrite")
    if not overwrite:
        raise _refusal(path, "an existing bundle", option)


def check_folder_outputs(folder: str | Path, names: Iterable[str], overwrite: bool, option: str = "--out") -> None:
    """The policy for a folder the command writes fixed file names into (evaluate): refused when any of ``names``
    exists there, unless ``overwrite``; a link or a folder under one of those names is refused even then, and other
    files in the folder are never touched."""
    check_folder_location(folder, option)
    folder = absolute_target(folder)
    names = tuple(names)
    blocked = sorted(name for name in names if (folder / name).is_symlink() or (folder / name).is_dir())
    if blocked:
        raise OutputError(f"expected {option} to hold files (or nothing) under the names it writes, got a folder or "
                          f"link named {', '.join(blocked)} in {_shown(folder)}; it is never replaced, even with "
                          "--overwrite")
    existing = sorted(name for name in names if (folder / name).exists())
    if existing and not overwrite:
        raise OutputError(f"expected {option} without the outputs of an earlier run, got {', '.join(existing)} in "
                          f"{_shown(folder)}; pass --overwrite to replace them, or choose another {option}")


def check_folder_location(folder: str | Path, option: str = "--out") -> None:
    """An output folder the command writes files into (created if missing): not a file, and writable."""
    check_output_location(folder, option)
    path = absolute_target(folder)
    if path.exists() and not path.is_dir():
        raise OutputError(f"expected {option} to name a folder, got the file {_shown(path)}")


def read_json_object(path: Path) -> dict | None:
    """The JSON object in a small file, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
