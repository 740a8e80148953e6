"""``medanalysis demo``: the whole pipeline on built-in phantom scans, no download and no GPU needed.

Generates seeded phantom scans, plans preprocessing, trains a small 3D U-Net and a CNN+RNN slice-sequence
classifier, evaluates both on held-out phantoms, segments one scan and writes bundles, label map, tables, report and
figures to ``--out``. TensorFlow is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.progress import Reporter, StopFlag


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` sub-command to the ``medanalysis`` parser."""
    parser = subparsers.add_parser(
        "demo",
        parents=parents,
        help="run the whole pipeline on built-in phantom scans (about 6 minutes on 2 CPU cores; --quick: about a minute)",
        description="Generate seeded phantom scans, plan preprocessing, train a 3D U-Net and a CNN+RNN slice-sequence "
        "classifier, evaluate both on held-out phantoms, segment one scan, and write bundles, label map (NIfTI), "
        "CSV tables, an evaluation report and PNG figures to the output folder.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        help="output folder, created if missing; files of an earlier demo run there are replaced (default: demo-output)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of about a minute: fewer and smaller phantoms and very short training (low accuracy)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantoms, the split and training (default: 0)")
    parser.add_argument(
        "--cases",
        type=_positive_int,
        default=None,
        help="number of phantom scans to generate, a fifth of them held out for evaluation (default: 40, or 8 "
        "with --quick)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Run the demo and print its summary on stdout (stderr carries progress)."""
    from MedAnalysisLib.demo import DemoConfig, run_demo

    if not args.verbose:  # DICOM SEG writing logs every copied module at INFO level
        logging.getLogger("highdicom").setLevel(logging.WARNING)
    config = DemoConfig.quick() if args.quick else DemoConfig.full()
    if args.cases is not None:
        if args.cases < 4:
            raise InputError(f"expected --cases of at least 4 (2 to train, 2 held out), got {args.cases}")
        config = config.with_cases(args.cases)
    config = config.replace(seed=args.seed)
    summary = run_demo(args.out, config=config, reporter=reporter, stop_flag=StopFlag().install())
    if reporter.mode == "jsonl":
        reporter.result(**summary.to_dict())
    else:
        print(summary.format_text())
    return 0
