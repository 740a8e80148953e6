"""``medanalysis demo``: the whole pipeline on built-in phantom scans, no download and no GPU needed.

Generates seeded phantom scans, plans preprocessing, trains a small 3D U-Net and a CNN+RNN slice-sequence
classifier, evaluates both on held-out phantoms, segments one scan and writes bundles, label map, tables, report and
figures to ``--out``. TensorFlow is imported only when the command runs.

Existing output: --out may be missing, empty, or a folder without any of the demo's outputs (other files are never
touched). When it holds the output of an earlier demo run, the command refuses unless --overwrite, which replaces
that output; when it holds entries with the demo's names that an earlier demo did not write (no demo summary.json),
it refuses even with --overwrite.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from MedAnalysisLib.cli._validate import (
    OVERWRITE_POLICY,
    add_overwrite_option,
    check_folder_location,
    read_json_object,
)
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.progress import Reporter, StopFlag
from MedAnalysisLib.sanitize import terminal_field


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
        epilog="Existing output: an --out holding an earlier demo run is refused (exit code 2) unless --overwrite is "
        "given, which replaces that run's files; entries with the demo's names that no demo wrote are refused even "
        "then. " + OVERWRITE_POLICY,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        help="output folder, created if missing (default: demo-output)",
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
    add_overwrite_option(parser, "the output of an earlier demo run in --out")
    parser.set_defaults(func=run, validate=validate)


#: The most phantom scans --cases may ask for (each is a few MB and seconds of work).
MAX_CASES = 2000
#: What the demo writes directly in --out (see MedAnalysisLib.demo); only these names are ever replaced.
DEMO_ENTRIES = ("summary.txt", "summary.json", "data", "plan.json", "fingerprint.json", "bundles", "evaluation",
                "prediction", "figures")


def _is_demo_output(out: Path) -> bool:
    """True when ``out`` holds a demo run, finished (its summary.json) or stopped after its first stage (the phantom
    dataset it writes first)."""
    summary = read_json_object(out / "summary.json")
    if summary is not None and {"dice", "n_train", "files"} <= set(summary):
        return True
    dataset = read_json_object(out / "data" / "train" / "dataset.json")
    return dataset is not None and dataset.get("name") == "MedAnalysisPhantom"


def validate(args: argparse.Namespace) -> None:
    """--cases in range; --out follows the overwrite policy (see the epilog)."""
    if args.cases is not None and not 4 <= args.cases <= MAX_CASES:
        raise InputError(f"expected --cases from 4 (2 to train, 2 held out) to {MAX_CASES}, got {args.cases}")
    if not 0 <= args.seed < 2**32:
        raise InputError(f"expected --seed from 0 to {2**32 - 1}, got {args.seed}")
    check_folder_location(args.out, "--out")
    out = Path(args.out)
    links = sorted(name for name in DEMO_ENTRIES if (out / name).is_symlink())
    if links:
        raise InputError(f"expected --out to hold the demo's entries as plain files and folders, got the symbolic "
                         f"link(s) {', '.join(links)} in {terminal_field(out)}; links are never replaced")
    present = sorted(name for name in DEMO_ENTRIES if (out / name).exists())
    if not present:
        return
    if not _is_demo_output(out):
        raise InputError(f"expected --out to be new, empty or an earlier demo's output, got {terminal_field(out)} holding "
                         f"{', '.join(present)} that no demo run wrote; it is refused even with --overwrite, since the "
                         "demo would replace those entries")
    if not args.overwrite:
        raise InputError(f"expected --out without an earlier demo run, got one in {terminal_field(out)}; pass --overwrite to replace "
                         "it, or choose another --out")


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
        from MedAnalysisLib.sanitize import terminal_field

        # The summary quotes --out: escape sequences in a name stay inert; the summary's own lines are kept.
        print("\n".join(terminal_field(line) for line in summary.format_text().split("\n")))
    return 0
