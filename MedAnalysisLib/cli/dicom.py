"""``medanalysis dicom ls DIR`` and ``medanalysis dicom info DIR``: list DICOM series without patient identifiers.

Only headers are read (no pixel data). The listing shows, for each series, its index (usable as ``--series``), the
modality, the series description, the in-plane size, the slice count, the voxel spacing and any problem found
(missing slices, gantry tilt, localizers left out, ...). Patient names, IDs and birth dates are never printed.

Header values (modality, description, UIDs) and file names are text someone else wrote: the table shows each
through :func:`~MedAnalysisLib.sanitize.terminal_field`, so an escape sequence or a line break in a description is
shown as ``\x1b`` or ``\x0a`` and cannot act on the terminal or add a line of its own. ``--json`` output is
escaped by JSON itself (non-ASCII characters included).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from MedAnalysisLib.progress import Reporter
from MedAnalysisLib.sanitize import terminal_field

#: The longest header value shown in the table (a longer one ends with how many characters were left out).
FIELD_LIMIT = 120


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dicom",
        help="list the DICOM series in a folder (headers only, no patient data)",
        description="Inspect DICOM folders: list series (ls) or describe one series in detail (info).",
    )
    actions = parser.add_subparsers(dest="dicom_command", metavar="ACTION", required=True)

    ls = actions.add_parser(
        "ls", parents=parents, help="list series: modality, description, size, slices, spacing, problems"
    )
    ls.add_argument("folder", help="folder to scan (recursively) or a single .dcm file")
    ls.add_argument("--no-recursive", action="store_true", help="scan only the folder itself, not its sub-folders")
    ls.add_argument("--json", action="store_true", help="print one JSON object per series instead of a table")
    ls.add_argument("--all", action="store_true", help="also list series made only of localizer images")
    ls.set_defaults(func=run_ls)

    info = actions.add_parser("info", parents=parents, help="geometry and checks of one series")
    info.add_argument("folder", help="folder to scan (recursively) or a single .dcm file")
    info.add_argument("--series", default=None, help="SeriesInstanceUID or index from 'dicom ls' (default: the only one)")
    info.set_defaults(func=run_info)


def _scan(args: argparse.Namespace, reporter: Reporter) -> tuple[list[dict[str, Any]], str]:
    from MedAnalysisLib.io.dicom import ScanReport, scan_dicom_folder

    report = ScanReport()
    series = scan_dicom_folder(
        args.folder,
        recursive=not args.no_recursive,
        include_localizers=args.all,
        report=report,
        progress=lambda done, total: reporter.progress("scan", done, total, "reading DICOM headers"),
    )
    return [info.to_dict() for info in series], report.summary()


def _f(value: Any) -> str:
    """One value from a header or a file name, shown safely on one line."""
    return terminal_field(value, FIELD_LIMIT)


def _format_spacing(spacing: Any) -> str:
    if not spacing:
        return "-"
    return "x".join(f"{value:.4g}" for value in spacing)


def run_ls(args: argparse.Namespace, reporter: Reporter) -> int:
    rows, skipped = _scan(args, reporter)
    if args.json or reporter.mode == "jsonl":
        if reporter.mode == "jsonl":
            reporter.result(series=rows, skipped=skipped)
        else:
            for row in rows:
                print(json.dumps(row))
        return 0
    if not rows:
        print(f"no DICOM image series found (skipped: {_f(skipped)})")
        return 0
    header = f"{'#':>3}  {'modality':<8} {'size (i x j)':<12} {'slices':>6}  {'spacing i x j x k mm':<22} description"
    print(header)
    for row in rows:
        size = "x".join(_f(s) for s in row["size"][:2]) if row["size"] else "-"
        print(
            f"{_f(row['index']):>3}  {_f(row['modality'] or '-'):<8} {size:<12} {_f(row['n_slices']):>6}  "
            f"{_f(_format_spacing(row['spacing'])):<22} {_f(row['series_description'] or '-')}"
        )
        print(f"     uid {_f(row['series_instance_uid'])}")
        if row["is_localizer"]:
            print("     (localizer series)")
        for problem in row["problems"]:
            print(f"     ! {_f(problem)}")
    if skipped != "nothing else":
        print(f"skipped: {_f(skipped)}")
    return 0


def run_info(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.io.dicom import select_series

    series = select_series(args.folder, args.series)
    row = series.to_dict()
    if reporter.mode == "jsonl":
        reporter.result(series=row)
    else:
        print(json.dumps(row, indent=2))
    return 0
