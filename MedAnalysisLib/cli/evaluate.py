"""``medanalysis evaluate BUNDLE DATA --out DIR``: measure a bundle on labelled cases.

DATA is an MSD folder or its dataset.json, or a CSV manifest (DICOM and image files, which the other commands take,
are accepted too, but hold no labels).
Writes a per-case CSV (Dice per label, 95% Hausdorff distance in mm, volume difference; or, for classifiers,
probabilities and targets), a summary JSON with mean, median and bootstrap confidence intervals (plus AUC,
accuracy, sensitivity, specificity and the confusion matrix for classifiers), the headline as text (also printed)
and PNG figures: an overlay montage of the best and worst cases, the training curves from the bundle and a ROC curve
for classifiers.

Labels are matched by name when the data names them (an MSD dataset.json), by value when it does not (a CSV
manifest); names left over on both sides (organ in the bundle, anterior in the data) are refused, leftovers on one
side are not scored. --label-map BUNDLE_LABEL=DATA_LABEL pairs labels explicitly (e.g. --label-map organ=anterior;
DATA_LABEL "none" leaves a bundle label unscored).

Confidence intervals resample whole groups of cases when the manifest has a group column (group, else patient_id,
or the one --group-column names): several slices or scans of one patient are not independent cases. --group-column
none resamples cases.

Exit codes: 0 done (cases that failed are listed in summary.json and in the printed headline), 2 bad input,
mismatched labels or an earlier evaluation in --out (nothing is written).

Existing outputs: when --out already holds any file an evaluation writes (per_case.csv, summary.json, summary.txt,
montage.png, training_curves.png, roc.png), the command refuses before any work unless --overwrite, which replaces
those files; other files in the folder are never touched.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from MedAnalysisLib.cli._manifest_options import add_manifest_options
from MedAnalysisLib.cli._validate import (
    OVERWRITE_POLICY,
    add_overwrite_option,
    check_folder_outputs,
    check_not_an_input,
)
from MedAnalysisLib.cli.predict import add_inference_options, parse_shard
from MedAnalysisLib.errors import InputError

#: Every file an evaluation writes into --out (MedAnalysisLib.evaluation.report); the overwrite policy guards them.
EVALUATION_FILES = ("per_case.csv", "summary.json", "summary.txt", "montage.png", "training_curves.png", "roc.png")


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "evaluate",
        parents=parents,
        help="measure a model bundle on labelled data: per-case CSV, summary with confidence intervals, figures",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.fill(OVERWRITE_POLICY, 78),
    )
    p.add_argument("bundle", help="model bundle folder or .zip")
    p.add_argument("data", help="labelled data: an MSD folder or its dataset.json, or a CSV manifest")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--label-map", action="append", default=None, metavar="BUNDLE_LABEL=DATA_LABEL",
                   help="score a bundle label against a data label of another name or value, e.g. organ=anterior "
                   "(repeat, or separate pairs with commas; DATA_LABEL 'none' leaves the bundle label unscored; "
                   "default: labels matched by name, else by value)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for confidence intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--max-cases", type=int, default=None,
                   help="evaluate only the first N cases (after sharding; default: every case)")
    p.add_argument("--shard", type=parse_shard, default=(1, 1), metavar="I/N",
                   help="evaluate only shard I of N (default: 1/1, every case)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--postprocess", action="append", choices=("largest-component", "fill-holes", "none"),
                   help="post-processing of label maps; repeat for both, 'none' for neither (default: the bundle's); "
                   "choose it on validation cases, never on the test cases")
    add_inference_options(p)
    add_manifest_options(p, modality=False)  # the bundle knows its modality
    add_overwrite_option(p, "the files of an earlier evaluation in --out")
    p.set_defaults(func=run, validate=validate)


def validate(args: argparse.Namespace) -> None:
    """Before TensorFlow is imported: numbers out of range, a bundle.json that is not a valid bundle, DATA that is not
    a dataset, and an --out that holds an earlier evaluation (without --overwrite)."""
    from MedAnalysisLib.bundles import read_bundle_config
    from MedAnalysisLib.data.sources import resolve_source

    check_numbers(args)
    read_bundle_config(args.bundle)
    resolve_source(args.data)
    check_not_an_input(args.out, (args.bundle, args.data), "--out")
    check_folder_outputs(args.out, EVALUATION_FILES, args.overwrite)


#: Upper bounds of the numeric options: far beyond any real evaluation, low enough to refuse a typo before work.
LIMITS = {"--bootstrap": 100_000, "--seed": 2**32 - 1, "--max-cases": 10_000_000, "--batch-size": 4096,
          "--memory-budget-mb": 10 * 2**20}


def check_numbers(args: argparse.Namespace) -> None:
    """Every numeric option in its range: --bootstrap and --seed from 0, the others from 1 (None: the default).

    Raises:
        InputError: Saying what was expected and what was given.
    """
    values = {"--bootstrap": (args.bootstrap, 0), "--seed": (args.seed, 0), "--max-cases": (args.max_cases, 1),
              "--batch-size": (args.batch_size, 1), "--memory-budget-mb": (args.memory_budget_mb, 1)}
    for option, (value, low) in values.items():
        if value is None:
            continue
        if value < low:
            raise InputError(f"expected {option} >= {low}, got {value}")
        if value > LIMITS[option]:
            raise InputError(f"expected {option} from {low} to {LIMITS[option]}, got {value}")


def run(args: argparse.Namespace, reporter: Any) -> int:
    from MedAnalysisLib.evaluation.labels import parse_label_map
    from MedAnalysisLib.evaluation.report import EvaluationOptions, evaluate_bundle
    from MedAnalysisLib.progress import StopFlag

    if args.bootstrap < 0:
        raise InputError(f"expected --bootstrap >= 0, got {args.bootstrap}")
    options = EvaluationOptions(
        overlap=args.overlap,
        tta=None if args.tta is None else args.tta == "on",
        postprocess=tuple(args.postprocess) if args.postprocess else None,
        batch_size=args.batch_size,
        precision=args.precision,
        memory_budget_mb=args.memory_budget_mb,
        bootstrap=args.bootstrap,
        seed=args.seed,
        max_cases=args.max_cases,
        shard=args.shard,
        figures=not args.no_figures,
        label_map=parse_label_map(args.label_map or []) or None,
        group_column=args.group_column,
        image_columns=tuple(args.image_column) if args.image_column else None,
        label_column=args.label_column,
        target_column=args.target_column,
    )
    summary = evaluate_bundle(args.bundle, args.data, args.out, options, reporter=reporter, stop_flag=StopFlag().install())
    if reporter.mode != "jsonl":
        print(summary["text"], flush=True)
    reporter.result(**summary)
    return 0
