"""Checks made at the entrance of the commands, before anything heavy (TensorFlow) is imported.

A mistake on the command line costs a fraction of a second, not the 6-9 s of a TensorFlow import: argparse types
refuse a bad value while the line is parsed (:func:`model_family`), and each command's ``validate(args)`` hook,
which :func:`MedAnalysisLib.cli.main` calls before the command runs, checks inputs and outputs. Every refusal says
what was expected and what was found, and exits with code 2.

The overwrite policy, one for every command that writes (:data:`OVERWRITE_POLICY`; each command's ``--help`` ends
with its part of it): an output that already exists is refused unless ``--overwrite`` is given; with it, only what
the command itself writes is replaced (atomically, see :mod:`MedAnalysisLib.io.atomic`). A path holding something
the command never writes (a folder of other files where a bundle goes, a folder where a file goes) is refused even
with ``--overwrite``: nothing the command did not create is ever deleted. Two commands resume instead of refusing:
``train`` continues an interrupted run from its checkpoint, and ``predict`` skips the cases whose sidecar shows the
same bundle and options made them.
"""

from __future__ import annotations

import argparse
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path

from MedAnalysisLib.errors import InputError

#: The policy in one paragraph, for the ``--help`` epilogs and the documentation.
OVERWRITE_POLICY = (
    "The rule every command follows: an output that already exists is refused (exit code 2, before any work) unless "
    "--overwrite is given, and then only what the command itself writes is replaced, atomically; a path that holds "
    "anything else (other files where a bundle or a file would go) is refused even with --overwrite, so nothing the "
    "command did not create is deleted."
)

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
    return InputError(f"expected {option} to name a path that does not exist yet, got {found} at {path}; pass "
                      f"--overwrite to replace it, or choose another {option}")


def check_file_output(path: str | Path | None, overwrite: bool, option: str = "OUT") -> None:
    """The policy for an output file: new, or an existing regular file with ``overwrite``; a folder never."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise InputError(f"expected {option} to name a file, got the folder {path} (a folder is never replaced)")
    if path.exists() and not overwrite:
        raise _refusal(path, "an existing file", option)


def is_bundle_path(path: Path) -> bool:
    """True for a folder holding ``bundle.json``/``ensemble.json``, or a .zip holding one at its root or one level
    down (how bundles are zipped). Reads only names, nothing is extracted."""
    if path.is_dir():
        return any((path / marker).is_file() for marker in BUNDLE_MARKERS)
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return False
        return any(name.rsplit("/", 1)[-1] in BUNDLE_MARKERS and name.count("/") <= 1 for name in names)
    return False


def check_bundle_output(path: str | Path, overwrite: bool, option: str = "--out") -> None:
    """The policy for a bundle output (train, configure, ensemble): new or an empty folder; an existing bundle only
    with ``overwrite``; anything else never (a bundle is written as a whole and would replace it).

    Raises:
        InputError: The path holds a bundle and ``overwrite`` is false, or holds something else.
    """
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir() and not any(path.iterdir()):
        return
    if not is_bundle_path(path):
        kind = "a folder holding other files" if path.is_dir() else "a file that is not a bundle"
        raise InputError(f"expected {option} to name a new bundle or an existing one, got {kind} at {path}; "
                         "it would be replaced as a whole, so it is refused even with --overwrite")
    if not overwrite:
        raise _refusal(path, "an existing bundle", option)


def check_folder_outputs(folder: str | Path, names: Iterable[str], overwrite: bool, option: str = "--out") -> None:
    """The policy for a folder the command writes fixed file names into (evaluate): refused when any of ``names``
    exists there, unless ``overwrite``; other files in the folder are never touched."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"expected {option} to name a folder, got the file {folder}")
    existing = sorted(name for name in names if (folder / name).exists())
    if existing and not overwrite:
        raise InputError(f"expected {option} without the outputs of an earlier run, got {', '.join(existing)} in "
                         f"{folder}; pass --overwrite to replace them, or choose another {option}")


def read_json_object(path: Path) -> dict | None:
    """The JSON object in a small file, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
