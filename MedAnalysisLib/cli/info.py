"""``medanalysis info BUNDLE``: print a model card (task, labels, modality, spacing, patch, metrics, training, then
the card's fields: clinical use first, intended use, version, authors, licence, training data, evaluation with its
intervals, limitations, references; a field without a value reads "not stated").

Reads only ``bundle.json`` (validated; TensorFlow is not imported and the weights are not loaded). ``--json``
prints the whole configuration instead, the card included (key ``"card"``).

A bundle is a file someone else wrote and both outputs reach terminals: the card shows every value through
:func:`~MedAnalysisLib.sanitize.terminal_field` (see :mod:`MedAnalysisLib.bundles.summary`), and ``--json`` is
printed as ASCII, every control and non-ASCII character as a JSON escape, so neither can act on the terminal.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from MedAnalysisLib.progress import Reporter


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "info",
        parents=parents,
        help="print the model card of a bundle (use, authors, data, evaluation, labels, preprocessing, provenance)",
        description="Show what a model bundle is for, who made it, what it was trained and evaluated on and how, "
        "without loading its weights.",
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
        print(json.dumps(config.to_dict(), indent=2, allow_nan=False, ensure_ascii=True))
    else:
        print(bundle_summary(config))
    return 0
