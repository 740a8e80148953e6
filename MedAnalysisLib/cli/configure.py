"""``medanalysis configure BUNDLE --out NEW [--tta on|off] [--postprocess STEP] [--overlap F]``.

Writes a copy of a bundle whose inference defaults are changed, for settings chosen on validation cases after
training (test-time augmentation, post-processing, sliding-window overlap). The weights are copied byte for byte and
the source bundle is left as it is; ``medanalysis predict NEW`` and the Slicer panel then use the new defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

from MedAnalysisLib.cli._validate import OVERWRITE_POLICY, add_overwrite_option, check_bundle_output
from MedAnalysisLib.cli.predict import stored_overlap_fraction
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.progress import Reporter
from MedAnalysisLib.sanitize import terminal_field


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "configure",
        parents=parents,
        help="copy a bundle with other inference defaults (TTA, post-processing, overlap)",
        description="Write a copy of a bundle with changed inference defaults; the weights are copied unchanged.",
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
    add_overwrite_option(parser, "a bundle at --out")
    parser.set_defaults(func=run, validate=validate)


def validate(args: argparse.Namespace) -> None:
    """At least one change, a source that is a readable bundle, and an --out the overwrite policy allows."""
    from pathlib import Path

    from MedAnalysisLib.bundles import read_bundle_config
    from MedAnalysisLib.errors import BundleError

    if args.tta is None and args.postprocess is None and args.overlap is None:
        raise InputError("expected at least one of --tta, --postprocess or --overlap, got none")
    read_bundle_config(args.bundle)
    if Path(args.out).resolve() == Path(args.bundle).resolve():
        raise BundleError(f"expected an output other than the source bundle {terminal_field(Path(args.bundle).name)}, got the "
                          "source itself (bundles are never changed in place)")
    check_bundle_output(args.out, args.overwrite, inputs=(args.bundle,))


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.bundles import copy_with_inference_defaults

    changes = {
        "tta": None if args.tta is None else args.tta == "on",
        "postprocess": None if args.postprocess is None else args.postprocess.replace("-", "_"),
        "overlap": args.overlap,
    }
    if all(v is None for v in changes.values()):
        raise InputError("expected at least one of --tta, --postprocess or --overlap, got none")
    written = copy_with_inference_defaults(args.bundle, args.out, **changes)
    reporter.result(bundle=str(written), inference={k: v for k, v in changes.items() if v is not None})
    if reporter.mode != "jsonl":
        print(f"bundle written to {terminal_field(written)}")
    return 0
