"""The ``medanalysis`` command line.

Each sub-command lives in its own module of this package and exposes ``register(subparsers, parents)``, which adds
its parser and sets ``func(args, reporter) -> int | None`` as the default. Nothing heavy (TensorFlow) is imported
until a command runs, so ``medanalysis --help`` stays fast.

Exit codes: 0 success, 2 bad input or refused bundle (a :class:`MedAnalysisError`), 3 cancelled (the line ``stop``
on stdin from a parent that set ``MEDANALYSIS_STOP_ON_STDIN=1``, or the creation of the file named by
``MEDANALYSIS_STOP_FILE``, as the Slicer panel's Cancel does with both; or SIGTERM or Ctrl+C; see
:mod:`MedAnalysisLib.progress`), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from MedAnalysisLib import __version__
from MedAnalysisLib.errors import CancelledError, MedAnalysisError
from MedAnalysisLib.progress import Reporter

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES = ("dicom", "convert", "plan", "train", "info", "configure", "ensemble", "predict", "evaluate",
                   "demo")

EXIT_OK, EXIT_UNEXPECTED, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 3


def common_parent() -> argparse.ArgumentParser:
    """Options every long-running sub-command shares."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--progress",
        choices=("auto", "bar", "log", "jsonl", "none"),
        default="auto",
        help="how to report progress: a bar on terminals, plain log lines, or JSON lines on stdout for a parent "
        "process such as the Slicer panel (default: auto)",
    )
    parent.add_argument("-v", "--verbose", action="store_true", help="more logging on stderr")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medanalysis",
        description="Deep learning on medical scans: read DICOM/NIfTI/NRRD with exact geometry, plan preprocessing, "
        "train Keras models, predict, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"medanalysis {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = [common_parent()]
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"MedAnalysisLib.cli.{name}")
        module.register(subparsers, parents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_INPUT
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from MedAnalysisLib.privacy import install_cli_logging

    install_cli_logging(verbose)  # third-party records and warnings pass the same PHI filter as ours
    reporter = Reporter(getattr(args, "progress", "none"))
    try:
        code = args.func(args, reporter)
    except CancelledError as error:
        reporter.error(error)
        return EXIT_CANCELLED
    except MedAnalysisError as error:
        reporter.error(error)
        return EXIT_INPUT
    except KeyboardInterrupt:
        reporter.error(CancelledError("interrupted"))
        return EXIT_CANCELLED
    except Exception as error:  # noqa: BLE001 - the parent must always get one error line
        reporter.error(error)
        if getattr(args, "verbose", False) or reporter.mode != "jsonl":
            raise
        return EXIT_UNEXPECTED
    return int(code or EXIT_OK)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
