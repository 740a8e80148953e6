"""``medanalysis models list | pull ID[@VERSION] | path ID[@VERSION]``: the model catalog on the command line.

``list`` shows every model the catalogs list (id, version, title, modality, task, size, status: cached or needs a
download); ``--offline`` reads remote catalogs only from their saved copies. ``pull`` downloads a model into the
per-user cache with a progress bar (or JSON lines), verifies it, and prints its path; ``path`` prints the path of a
cached model without any network, or fails with exit code 2 when it needs a download. ``--catalog`` (repeatable)
replaces the default list of catalogs (the shipped one and ``MEDANALYSIS_CATALOGS``); ``MEDANALYSIS_MODEL_CACHE``
moves the cache.

Every value from a catalog is text someone else wrote: the table shows each through
:func:`~MedAnalysisLib.sanitize.terminal_field`, and ``--json`` is printed as ASCII with JSON escapes.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

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
    listing.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait for a catalog server")
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
    from MedAnalysisLib.catalog.pull import human_bytes

    entry = listing.entry
    values = (entry.id, entry.version, entry.title, entry.modality, entry.task, human_bytes(entry.size), listing.status)
    return [terminal_field(value, FIELD_LIMIT) for value in values]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[n]) for row in rows) for n in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows)


def _listing_dict(listing: Any) -> dict[str, Any]:
    return {**listing.entry.to_dict(), "cached": listing.cached, "path": listing.path, "status": listing.status}


def run_list(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.catalog import list_models
    from MedAnalysisLib.catalog.listing import NEEDS_DOWNLOAD, STALE_NOTE

    found = list_models(args.catalog, offline=args.offline, modality=args.modality, timeout=args.timeout)
    if reporter.mode == "jsonl":
        reporter.result(models=[_listing_dict(m) for m in found.models], problems=found.problems)
    elif args.json:
        print(json.dumps({"models": [_listing_dict(m) for m in found.models], "problems": found.problems},
                         indent=2, ensure_ascii=True, allow_nan=False))
    elif found.models:
        print(_table([list(COLUMNS), *(_row(m) for m in found.models)]))
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
    return 2 if any(STALE_NOTE not in problem for problem in found.problems) else 0


def run_pull(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.catalog import pull
    from MedAnalysisLib.progress import StopFlag

    path = pull(args.model, catalogs=args.catalog, reporter=reporter, stop_flag=StopFlag().install(),
                timeout=args.timeout)
    if reporter.mode == "jsonl":
        reporter.result(path=str(path), model=path.parent.parent.name, version=path.parent.name)
    else:
        print(path)
    return 0


def run_path(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.catalog import cached_path

    path = cached_path(args.model, catalogs=args.catalog)
    if reporter.mode == "jsonl":
        reporter.result(path=str(path), model=path.parent.parent.name, version=path.parent.name)
    else:
        print(path)
    return 0
