"""``medanalysis ensemble BUNDLE BUNDLE [...] --out NEW [--name N] [--tta on|off] [--postprocess STEP] [--overlap F]``.

Writes an ensemble of trained bundles (cross-validation folds, or the same configuration trained with other seeds):
one self-contained folder or .zip with a verified copy of every member. ``medanalysis predict/evaluate`` and the Slicer
panel run it like a single bundle and average the members' probabilities (see :mod:`MedAnalysisLib.bundles.ensemble`).
"""

from __future__ import annotations

import argparse
from typing import Any

from MedAnalysisLib.cli._validate import OVERWRITE_POLICY, add_overwrite_option, check_bundle_output
from MedAnalysisLib.cli.predict import stored_overlap_fraction
from MedAnalysisLib.cli.train import add_card_options, card_from_args
from MedAnalysisLib.progress import Reporter
from MedAnalysisLib.sanitize import terminal_field


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ensemble",
        parents=parents,
        help="combine trained bundles into one ensemble bundle (probabilities averaged)",
        description="Write an ensemble of 2 to 16 trained bundles; predictions average the members' probabilities.",
        epilog="Existing output: when --out already holds a bundle or an ensemble the command refuses (exit code 2) "
        "unless --overwrite is given; a member is never changed in place. " + OVERWRITE_POLICY,
    )
    parser.add_argument("bundles", nargs="+", help="member bundle folders or .zip files")
    parser.add_argument("--out", required=True, help="the ensemble (folder, or a path ending in .zip)")
    parser.add_argument("--name", default=None, help="ensemble name (default: the first member's + '-ensembleN')")
    parser.add_argument("--description", default="", help="free text for the model card (default: none)")
    parser.add_argument("--tta", choices=("on", "off"), default=None,
                        help="flip test-time augmentation (default: the first member's setting)")
    parser.add_argument("--postprocess", choices=("none", "largest-component", "fill-holes"), default=None,
                        help="post-processing of the averaged label map (default: the first member's)")
    parser.add_argument("--overlap", type=stored_overlap_fraction, default=None,
                        help="sliding-window overlap in [0, 0.9] (default: the first member's)")
    add_card_options(parser, "default: the training data its members agree on, version 1.0.0, clinical use 'not "
                     "for clinical use', no evaluation")
    add_overwrite_option(parser, "a bundle or ensemble at --out")
    parser.set_defaults(func=run, validate=validate)


def validate(args: argparse.Namespace) -> None:
    """--out follows the overwrite policy (see the epilog) and is none of the members, nor a folder holding one, nor
    inside one; no member is given twice (the same path after resolving links, or the same weights sha256 that its
    bundle.json records: a copy); members are checked in full by the ensemble writer."""
    card_from_args(args)
    check_bundle_output(args.out, args.overwrite, inputs=[*args.bundles, args.card])
    check_distinct_members(args.bundles)


def check_distinct_members(bundles: list[str]) -> None:
    """Refuse a member given twice: by path (links resolved) or by the weights sha256 its bundle.json records. A
    bundle.json that cannot be read is left to the ensemble writer, which says what is wrong with it.

    Raises:
        BundleError: Naming the two members.
    """
    from pathlib import Path

    from MedAnalysisLib.bundles import read_bundle_config
    from MedAnalysisLib.errors import BundleError, MedAnalysisError

    seen: dict[str, str] = {}
    for bundle in bundles:
        keys = [f"path:{Path(bundle).resolve()}"]
        try:
            sha = read_bundle_config(bundle).weights.get("sha256")
        except (MedAnalysisError, OSError):
            sha = None
        keys += [f"sha256:{sha}"] if sha else []
        for key in keys:
            if key in seen:
                what = "the same bundle (after resolving links)" if key.startswith("path:") else "the same weights sha256"
                raise BundleError(f"expected distinct ensemble members, got {terminal_field(seen[key])} and "
                                  f"{terminal_field(bundle)} with {what}; a member given twice would count twice in "
                                  "the mean")
            seen[key] = bundle


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.bundles import make_ensemble

    written = make_ensemble(
        args.bundles, args.out, name=args.name, description=args.description, card=card_from_args(args),
        tta=None if args.tta is None else args.tta == "on",
        postprocess=None if args.postprocess is None else args.postprocess.replace("-", "_"),
        overlap=args.overlap,
    )
    reporter.result(bundle=str(written), members=len(args.bundles))
    if reporter.mode != "jsonl":
        print(f"ensemble of {len(args.bundles)} bundles written to {terminal_field(written)}")
    return 0
