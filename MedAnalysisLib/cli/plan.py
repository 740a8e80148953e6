"""``medanalysis plan DATA``: measure a dataset fingerprint and derive a preprocessing plan.

The plan is printed as JSON (the same JSON that ``medanalysis train --plan`` accepts) and, with ``--out``, written
atomically to a file. ``--set key=value`` overrides any plan field after it was derived, for example
``--set patch_size=32,32,32 --set batch_size=4 --set normalization.scheme=zscore``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from MedAnalysisLib.cli._manifest_options import add_manifest_options
from MedAnalysisLib.cli._validate import OVERWRITE_POLICY, add_overwrite_option, check_file_output
from MedAnalysisLib.errors import PlanError
from MedAnalysisLib.progress import Reporter
from MedAnalysisLib.sanitize import terminal_field


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``plan`` sub-command to the ``medanalysis`` parser."""
    parser = subparsers.add_parser(
        "plan",
        parents=parents,
        help="measure a dataset and print its preprocessing plan (JSON)",
        description="Read every case of DATA once (an MSD folder or its dataset.json, a CSV manifest, DICOM "
        "folders or files, image files or a folder of them), measure spacings, shapes and intensities, and derive the preprocessing plan: target "
        "spacing, orientation, normalisation, patch and batch size, recommended model.",
        epilog="Existing output: an existing --out or --fingerprint-out file is refused (exit code 2, before any case "
        "is read) unless --overwrite is given. " + OVERWRITE_POLICY,
    )
    parser.add_argument("data", type=Path, metavar="DATA",
                        help="MSD folder or its dataset.json, CSV manifest, DICOM folder or file, image file or folder "
                        "of image files")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the plan JSON here, atomically (default: printed only)")
    parser.add_argument("--fingerprint-out", type=Path, default=None,
                        help="also write the fingerprint JSON here (default: not written)")
    add_overwrite_option(parser, "an --out or --fingerprint-out file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a plan field, e.g. patch_size=32,32,32 or normalization.scheme=zscore (repeatable; default: "
        "none)",
    )
    parser.add_argument(
        "--memory-budget-mb",
        type=float,
        default=None,
        help="memory one training step may use, in MiB (default: 1024, which suits a CPU; raise it for a GPU)",
    )
    parser.add_argument("--workers", type=int, default=2, help="threads reading cases (default: 2)")
    add_manifest_options(parser)
    parser.set_defaults(func=run, validate=validate)


def validate(args: argparse.Namespace) -> None:
    """--set syntax, numbers in range, and outputs the overwrite policy allows, before any case is read."""
    from MedAnalysisLib.preprocessing.plan import check_overrides

    check_overrides(parse_overrides(args.overrides))  # keys and standalone values, before any case is measured
    check_numbers(args)
    if args.out is not None and args.fingerprint_out is not None and args.out.resolve() == args.fingerprint_out.resolve():
        raise PlanError(f"expected --out and --fingerprint-out to be two files, got {terminal_field(args.out)} for "
                        "both")
    check_file_output(args.out, args.overwrite, "--out", inputs=(args.data,))
    check_file_output(args.fingerprint_out, args.overwrite, "--fingerprint-out", inputs=(args.data,))


#: Most reading threads --workers may ask for, and the largest --memory-budget-mb (10 TiB).
MAX_WORKERS, MAX_MEMORY_BUDGET_MB = 256, 10 * 2**20


def check_numbers(args: argparse.Namespace) -> None:
    """--workers and --memory-budget-mb in range (NaN, infinities, zero and negatives are refused).

    Raises:
        InputError: Saying what was expected and what was given.
    """
    import math

    from MedAnalysisLib.errors import InputError

    if not 1 <= args.workers <= MAX_WORKERS:
        raise InputError(f"expected --workers from 1 to {MAX_WORKERS}, got {args.workers}")
    budget = args.memory_budget_mb
    if budget is not None and not (math.isfinite(budget) and 0 < budget <= MAX_MEMORY_BUDGET_MB):
        raise InputError(f"expected --memory-budget-mb to be a finite number in (0, {MAX_MEMORY_BUDGET_MB}], got "
                         f"{budget}")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Turn ``["a=1", "b.c=x"]`` into ``{"a": "1", "b.c": "x"}``; values stay text until the plan parses them."""
    overrides: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PlanError(f"expected --set KEY=VALUE (for example patch_size=32,32,32), got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.data.sources import load_source
    from MedAnalysisLib.io.atomic import write_text_atomic
    from MedAnalysisLib.preprocessing.fingerprint import fingerprint_dataset
    from MedAnalysisLib.preprocessing.plan import DEFAULT_MEMORY_BUDGET_MB, make_plan

    overrides = parse_overrides(args.overrides)
    dataset = load_source(
        args.data,
        modality=args.modality,
        image_columns=args.image_column,
        label_column=args.label_column,
        target_column=args.target_column,
        group_column=args.group_column,
    )
    reporter.log(f"{len(dataset.cases)} cases, task {dataset.task}, modality {terminal_field(dataset.modality)}")
    fingerprint = fingerprint_dataset(dataset, workers=args.workers, reporter=reporter)
    budget = args.memory_budget_mb if args.memory_budget_mb is not None else DEFAULT_MEMORY_BUDGET_MB
    plan = make_plan(fingerprint, overrides=overrides, memory_budget_mb=budget)
    for line in fingerprint.summary_lines():
        reporter.log(line)
    text = plan.to_json()
    if args.out is not None:
        write_text_atomic(args.out, text + "\n")
        reporter.log(f"plan written to {terminal_field(args.out)}")
    if args.fingerprint_out is not None:
        write_text_atomic(args.fingerprint_out, json.dumps(fingerprint.to_dict(), indent=1) + "\n")
    if reporter.mode == "jsonl":
        reporter.result(
            plan=plan.to_dict(),
            fingerprint_summary=fingerprint.summary(),
            plan_path=str(args.out) if args.out else None,
        )
    else:
        print(text)
    return 0
