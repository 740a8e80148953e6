"""``medanalysis configure BUNDLE --out NEW [--tta on|off] [--postprocess STEP] [--overlap F] [--card FILE]
[--evaluation SUMMARY.json] [--author NAME] [--model-version V] [--license L] [--intended-use TEXT]``.

Writes a copy of a bundle whose inference defaults or model card are changed: settings chosen on validation cases
after training (test-time augmentation, post-processing, sliding-window overlap), card fields an author completes
(``--card`` and the card options), and an evaluation made afterwards (``--evaluation``, the ``summary.json`` of
``medanalysis evaluate`` run with this bundle: its means with their bootstrap intervals become the card's
evaluation). The weights are copied byte for byte and the source bundle is left as it is; every copy appends one
entry to the card's changelog. ``medanalysis predict NEW`` and the Slicer panel then use the new defaults and card.
"""

from __future__ import annotations

import argparse
from typing import Any

from MedAnalysisLib.cli._validate import OVERWRITE_POLICY, add_overwrite_option, check_bundle_output
from MedAnalysisLib.cli.predict import stored_overlap_fraction
from MedAnalysisLib.cli.train import add_card_options, card_from_args
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.progress import Reporter
from MedAnalysisLib.sanitize import terminal_field


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "configure",
        parents=parents,
        help="copy a bundle with other inference defaults (TTA, post-processing, overlap) or model card",
        description="Write a copy of a bundle with changed inference defaults or model card; the weights are "
        "copied unchanged and the card's changelog gets one entry.",
        epilog="Existing output: when --out already holds a bundle the command refuses (exit code 2) unless "
        "--overwrite is given; the source bundle is never changed in place. " + OVERWRITE_POLICY,
    )
    parser.add_argument("bundle", help="bundle folder or .zip")
    parser.add_argument("--out", required=True, help="the new bundle (folder, or a path ending in .zip)")
    parser.add_argument("--tta", choices=("on", "off"), default=None,
                        help="flip test-time augmentation (default: unchanged)")
    parser.add_argument("--postprocess", choices=("none", "largest-component", "fill-holes"), default=None,
                        help="post-processing of label maps (default: unchanged)")
    parser.add_argument("--overlap", type=stored_overlap_fraction, default=None,
                        help="sliding-window overlap in [0, 0.9] (default: unchanged)")
    parser.add_argument("--evaluation", default=None, metavar="SUMMARY.json",
                        help="the summary.json of medanalysis evaluate run with this bundle: its metrics with their "
                        "bootstrap intervals become the card's evaluation (default: unchanged)")
    add_card_options(parser, "default: unchanged", copy=True)
    add_overwrite_option(parser, "a bundle at --out")
    parser.set_defaults(func=run, validate=validate)


#: What ``configure`` can change, for the message when nothing is asked.
CHANGES = "--tta, --postprocess, --overlap, --evaluation, --card, --author, --model-version, --license or --intended-use"


def _evaluation(args: argparse.Namespace) -> dict[str, Any] | None:
    """The parsed ``--evaluation`` summary, its form checked (whose bundle it is is checked once the bundle is
    loaded), or None.

    Raises:
        InputError: An unreadable or oversized file, or one that is not a summary of ``medanalysis evaluate``.
    """
    if args.evaluation is None:
        return None
    from MedAnalysisLib.bundles.card import evaluation_from_summary
    from MedAnalysisLib.io.small_files import read_json_file

    summary = read_json_file(args.evaluation, "a summary.json of medanalysis evaluate (--evaluation)")
    evaluation_from_summary(summary, None, None, InputError)
    return summary


def validate(args: argparse.Namespace) -> None:
    """At least one change, a source that is a readable bundle, and an --out the overwrite policy allows."""
    from pathlib import Path

    from MedAnalysisLib.bundles import read_bundle_config
    from MedAnalysisLib.errors import BundleError

    card = card_from_args(args)
    evaluation = _evaluation(args)
    if args.tta is None and args.postprocess is None and args.overlap is None and card is None and evaluation is None:
        raise InputError(f"expected at least one of {CHANGES}, got none")
    read_bundle_config(args.bundle)
    if Path(args.out).resolve() == Path(args.bundle).resolve():
        raise BundleError(f"expected an output other than the source bundle {terminal_field(Path(args.bundle).name)}, got the "
                          "source itself (bundles are never changed in place)")
    check_bundle_output(args.out, args.overwrite, inputs=(args.bundle, args.card, args.evaluation))


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.bundles import copy_with_inference_defaults

    changes = {
        "tta": None if args.tta is None else args.tta == "on",
        "postprocess": None if args.postprocess is None else args.postprocess.replace("-", "_"),
        "overlap": args.overlap,
    }
    card, evaluation = card_from_args(args), _evaluation(args)
    if all(v is None for v in changes.values()) and card is None and evaluation is None:
        raise InputError(f"expected at least one of {CHANGES}, got none")
    written = copy_with_inference_defaults(args.bundle, args.out, card=card, evaluation=evaluation, **changes)
    reporter.result(bundle=str(written), inference={k: v for k, v in changes.items() if v is not None},
                    card_fields=sorted(set(card or {}) | ({"evaluation"} if evaluation is not None else set())))
    if reporter.mode != "jsonl":
        print(f"bundle written to {terminal_field(written)}")
    return 0
