"""``medanalysis ensemble BUNDLE BUNDLE [...] --out NEW [--name N] [--tta on|off] [--postprocess STEP] [--overlap F]``.

Writes an ensemble of trained bundles (cross-validation folds, or the same configuration trained with other seeds):
one self-contained folder or .zip with a verified copy of every member. ``medanalysis predict/evaluate`` and the Slicer
panel run it like a single bundle and average the members' probabilities (see :mod:`MedAnalysisLib.ensemble`).
"""

from __future__ import annotations

import argparse
from typing import Any

from MedAnalysisLib.progress import Reporter


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ensemble",
        parents=parents,
        help="combine trained bundles into one ensemble bundle (probabilities averaged)",
        description="Write an ensemble of 2 to 16 trained bundles; predictions average the members' probabilities.",
    )
    parser.add_argument("bundles", nargs="+", help="member bundle folders or .zip files")
    parser.add_argument("--out", required=True, help="the ensemble (folder, or a path ending in .zip)")
    parser.add_argument("--name", default=None, help="ensemble name (default: the first member's + '-ensembleN')")
    parser.add_argument("--description", default="", help="free text for the model card")
    parser.add_argument("--tta", choices=("on", "off"), default=None,
                        help="flip test-time augmentation (default: the first member's setting)")
    parser.add_argument("--postprocess", choices=("none", "largest-component", "fill-holes"), default=None,
                        help="post-processing of the averaged label map (default: the first member's)")
    parser.add_argument("--overlap", type=float, default=None, help="sliding-window overlap in [0, 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.ensemble import make_ensemble

    written = make_ensemble(
        args.bundles, args.out, name=args.name, description=args.description,
        tta=None if args.tta is None else args.tta == "on",
        postprocess=None if args.postprocess is None else args.postprocess.replace("-", "_"),
        overlap=args.overlap,
    )
    reporter.result(bundle=str(written), members=len(args.bundles))
    if reporter.mode != "jsonl":
        print(f"ensemble of {len(args.bundles)} bundles written to {written}")
    return 0
