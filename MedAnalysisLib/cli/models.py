"""``medanalysis models list | pull ID[@VERSION] | path ID[@VERSION]``: the model catalog on the command line.

``list`` shows every model the catalogs list (id, version, title, modality, task, size, status: cached or needs a
download); ``--offline`` reads remote catalogs only from their saved copies. ``pull`` downloads a model into the
per-user cache with a progress bar (or JSON lines), verifies it, and prints its path (without ``@VERSION`` it takes
the newest release, a version without a tag such as ``-rc1``, and says which on stderr); ``path`` prints the path of a
cached model without any network, or fails with exit code 2 when it needs a download. ``--catalog`` (repeatable)
replaces the default list of catalogs (the shipped one and ``MEDANALYSIS_CATALOGS``); ``MEDANALYSIS_MODEL_CACHE``
moves the cache.

Every value from a catalog is text someone else wrote: the table shows each through
:func:`~MedAnalysisLib.sanitize.terminal_field`, and ``--json`` is printed as ASCII with JSON escapes. Columns are
padded by display width (a CJK character takes two terminal cells); the status column shows the short status and the
reason of a model that needs a download is printed in full below the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from typing import Any

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.progress import Reporter
from MedAnalysisLib.sanitize import terminal_field

#: Longest catalog value shown in a table cell.
FIELD_LIMIT = 60
COLUMNS = ("id", "version", "title", "modality", "task", "size", "status")
NO_MODELS = ("No catalog models. Add a catalog with --catalog PATH_OR_URL (repeatable), or list catalogs in "
             "MEDANALYSIS_CATALOGS (paths or URLs separated by the system's path separator); see docs/models.md.")


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list, download and locate catalog models (a verified per-user cache)",
        description="Models from catalogs: list them, pull one into the per-user cache (verified by sha256), print "
        "the path of a cached one.",
    )
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=parents, help="list catalog models and whether each is cached")
    _catalog_option(listing)
    listing.add_argument("--modality", default=None,
                         help="only models of this modality (CT, MR, ...; MRI, T1, T2 count as MR) (default: all)")
    listing.add_argument("--offline", action="store_true",
                         help="do not connect: remote catalogs are read from their saved copies")
    listing.add_argument("--json", action="store_true", help="print the models and problems as JSON")
    listing.add_argument("--timeout", type=_seconds, default=10.0, help="seconds each catalog server may take in all (connect, headers and body)")
    listing.set_defaults(func=run_list)
    pull = actions.add_parser("pull", parents=parents, help="download a model into the cache and print its path")
    pull.add_argument("model", help="model id, optionally @VERSION (default: the highest version listed)")
    _catalog_option(pull)
    pull.add_argument("--timeout", type=_seconds, default=30.0,
                      help="seconds to wait for a server to connect or send the next bytes")
    pull.set_defaults(func=run_pull)
    path = actions.add_parser("path", parents=parents, help="print the path of a cached model (no network)")
    path.add_argument("model", help="model id, optionally @VERSION")
    _catalog_option(path)
    path.set_defaults(func=run_path)


def _catalog_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", action="append", default=None, metavar="PATH_OR_URL",
                        help="a catalog file or http(s) URL; repeatable; replaces the default catalogs (the shipped "
                        "one and MEDANALYSIS_CATALOGS)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 3600, got {text!r}")
    return value


def _row(listing: Any) -> list[str]:
    from MedAnalysisLib.io.validate import format_bytes

    entry = listing.entry
    status = listing.status.split(" (", 1)[0] + (" *" if " (" in listing.status else "")
    values = (entry.id, entry.version, entry.title, entry.modality, entry.task, format_bytes(entry.size), status)
    return [terminal_field(value, FIELD_LIMIT) for value in values]


def display_width(text: str) -> int:
    """Terminal cells ``text`` takes: wide and full-width characters (CJK) two, combining marks none."""
    return sum(0 if unicodedata.combining(char) else
               2 if unicodedata.east_asian_width(char) in ("W", "F") else 1 for char in text)


def _table(rows: list[list[str]]) -> str:
    widths = [max(display_width(row[n]) for row in rows) for n in range(len(COLUMNS))]
    return "\n".join("  ".join(cell + " " * (width - display_width(cell))
                               for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows)


def _notes(models: list[Any]) -> list[str]:
    """The full status of each model whose status cell was shortened (marked ``*``), one line each."""
    return [f"* {terminal_field(m.entry.key, 100)}: {terminal_field(m.status, 600)}" for m in models
            if " (" in m.status]


def _check_sources(catalogs: list[str] | None) -> None:
    """Refuse an empty ``--catalog`` value (it would name the current folder)."""
    for source in catalogs or []:
        if not source.strip():
            raise InputError(f"expected --catalog PATH_OR_URL, got an empty value {source!r}")


def _listing_dict(listing: Any) -> dict[str, Any]:
    return {**listing.entry.to_dict(), "cached": listing.cached, "path": listing.path, "status": listing.status}


def run_list(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.catalog import list_models
    from MedAnalysisLib.catalog.listing import NEEDS_DOWNLOAD

    _check_sources(args.catalog)
    found = list_models(args.catalog, offline=args.offline, modality=args.modality, timeout=args.timeout)
    if reporter.mode == "jsonl":
        reporter.result(models=[_listing_dict(m) for m in found.models], problems=found.problems)
    elif args.json:
        print(json.dumps({"models": [_listing_dict(m) for m in found.models], "problems": found.problems},
                         indent=2, ensure_ascii=True, allow_nan=False))
    elif found.models:
        print(_table([list(COLUMNS), *(_row(m) for m in found.models)]))
        for note in _notes(found.models):
            print(note)
        waiting = sum(m.status.startswith(NEEDS_DOWNLOAD) for m in found.models)
        if waiting:
            print(f"{waiting} model(s) need a download: medanalysis models pull ID")
    else:
        print("No catalog models could be listed (see the warnings)." if found.problems else
              "No catalog models of that modality." if args.modality else NO_MODELS)
    if reporter.mode != "jsonl":
        for problem in found.problems:
            print(f"warning: {terminal_field(problem, 400)}", file=sys.stderr, flush=True)
    # a catalog read from its saved copy still listed; one not read at all is bad input (a typo, a refused file)
    return 2 if found.unread else 0


def run_pull(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.catalog import pull
    from MedAnalysisLib.progress import StopFlag

    _check_sources(args.catalog)
    path = pull(args.model, catalogs=args.catalog, reporter=reporter, stop_flag=StopFlag().install(),
                timeout=args.timeout)
    model, version = _pulled(path)
    if reporter.mode == "jsonl":
        reporter.result(path=str(path), model=model, version=version)
    else:
        if "@" not in args.model:  # say which version "the newest release" was
            print(f"chose {terminal_field(model)}@{terminal_field(version)} (the newest release, else the newest "
                  "pre-release; ID@VERSION picks another)", file=sys.stderr, flush=True)
        print(path)
    return 0


def _pulled(path: Any) -> tuple[str, str]:
    """The id and version (as its catalog spells it) of a cached bundle, from its record (else its folders)."""
    from MedAnalysisLib.catalog.cache import read_record

    record = read_record(path.parent)
    if record is None:
        return path.parents[2].name, path.parents[1].name
    return record["entry"].id, record["entry"].version


def run_path(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.catalog import cached_path

    _check_sources(args.catalog)
    path = cached_path(args.model, catalogs=args.catalog)
    if reporter.mode == "jsonl":
        model, version = _pulled(path)
        reporter.result(path=str(path), model=model, version=version)
    else:
        print(path)
    return 0
