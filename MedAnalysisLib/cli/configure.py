"""``medanalysis configure BUNDLE --out NEW [--tta on|off] [--postprocess STEP] [--overlap F]``.

Writes a copy of a bundle whose inference defaults are changed, for settings chosen on validation cases after
training (test-time augmentation, post-processing, sliding-window overlap). The weights are copied byte for byte and
the source bundle is left as it is; ``medanalysis predict NEW`` and the Slicer panel then use the new defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.progress import Reporter


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "configure",
        parents=parents,
        help="copy a bundle with other inference defaults (TTA, post-processing, overlap)",
        description="Write a copy of a bundle with changed inference defaults; the weights are copied unchanged.",
    )
    parser.add_argument("bundle", help="bundle folder or .zip")
    parser.add_argument("--out", required=True, help="the new bundle (folder, or a path ending in .zip)")
    parser.add_argument("--tta", choices=("on", "off"), default=None, help="flip test-time augmentation")
    parser.add_argument("--postprocess", choices=("none", "largest-component", "fill-holes"), default=None,
                        help="post-processing of label maps")
    parser.add_argument("--overlap", type=float, default=None, help="sliding-window overlap in [0, 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.bundle import copy_with_inference_defaults

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
        print(f"bundle written to {written}")
    return 0
