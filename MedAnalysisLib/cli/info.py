"""``medanalysis info BUNDLE``: print a model card (task, labels, modality, spacing, patch, metrics, training).

Reads only ``bundle.json`` (validated; TensorFlow is not imported and the weights are not loaded). ``--json``
prints the whole configuration instead.
"""

from __future__ import annotations

import argparse
from typing import Any

from MedAnalysisLib.progress import Reporter


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "info",
        parents=parents,
        help="print the model card of a bundle (task, labels, preprocessing, metrics, provenance)",
        description="Show what a model bundle is for and how it was trained, without loading its weights.",
    )
    parser.add_argument("bundle", help="bundle folder, its bundle.json, or a .zip of the folder")
    parser.add_argument("--json", action="store_true", help="print the full bundle.json (validated) as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.bundles import bundle_summary, read_bundle_config

    config = read_bundle_config(args.bundle)
    if reporter.mode == "jsonl":
        reporter.result(bundle=str(args.bundle), config=config.to_dict(), card=bundle_summary(config))
    elif args.json:
        print(config.to_json(), end="")
    else:
        print(bundle_summary(config))
    return 0
