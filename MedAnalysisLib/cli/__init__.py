"""The ``medanalysis`` command line.

Each sub-command lives in its own module of this package and exposes ``register(subparsers, parents)``, which adds
its parser and sets ``func(args, reporter) -> int | None`` as the default. Nothing heavy (TensorFlow) is imported
until a command runs, so ``medanalysis --help`` stays fast.

Exit codes: 0 success, 2 bad input or refused bundle (a :class:`MedAnalysisError`), 3 cancelled (the line ``stop``
on stdin from a parent that set ``MEDANALYSIS_STOP_ON_STDIN=1``, or the creation of the file named by
``MEDANALYSIS_STOP_FILE``, as the Slicer panel's Cancel does with both; or SIGTERM or Ctrl+C; see
:mod:`MedAnalysisLib.progress`), 1 anything unexpected, 141 stdout closed early (``medanalysis info B | head``: the
command stops quietly, as the shell's own tools do on SIGPIPE).

Before a command runs, its ``validate(args)`` hook (when its parser sets one) checks inputs and outputs, so a mistake
is refused before TensorFlow is imported (:mod:`MedAnalysisLib.cli._validate`, which also states the overwrite
policy every command follows); TensorFlow's start-up lines stay off stderr unless ``--verbose``
(:mod:`MedAnalysisLib.cli._quiet`). Every ``--help`` shows the defaults.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from MedAnalysisLib import __version__
from MedAnalysisLib.errors import CancelledError, MedAnalysisError
from MedAnalysisLib.progress import Reporter

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES = ("dicom", "convert", "plan", "train", "info", "configure", "ensemble", "predict", "evaluate",
                   "demo")

EXIT_OK, EXIT_UNEXPECTED, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 3
#: Exit code when the reader of stdout went away (128 + SIGPIPE, what ``cat`` or ``grep`` give in a pipeline).
EXIT_BROKEN_PIPE = 141


class _DefaultsMixin(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already states its default; flags (store_true)
    and options without a default (None) explain themselves in their help text."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" in text.lower() or not action.option_strings or action.nargs == 0
                or action.default in (None, argparse.SUPPRESS, [], "")):
            return text
        return text + " (default: %(default)s)"


class DefaultsHelpFormatter(_DefaultsMixin, argparse.HelpFormatter):
    """Defaults shown; description and epilog re-wrapped."""


class RawDescriptionDefaultsHelpFormatter(_DefaultsMixin, argparse.RawDescriptionHelpFormatter):
    """Defaults shown; description and epilog kept as written."""


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every sub-command parser below it a formatter that shows defaults."""
    raw = issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)
    parser.formatter_class = RawDescriptionDefaultsHelpFormatter if raw else DefaultsHelpFormatter
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public walk over sub-parsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in set(action.choices.values()):
                _show_defaults(child)


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
    parent.add_argument("-v", "--verbose", action="store_true",
                        help="more logging on stderr, TensorFlow's start-up messages included")
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
    _show_defaults(parser)
    return parser


def _stdout_gone() -> int:
    """After a BrokenPipeError on stdout: point stdout at the null device, so that the interpreter's final flush
    cannot raise again, and exit quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # stdout without a descriptor (a test's StringIO): nothing to flush
        pass
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``medanalysis`` with ``argv`` (default: the process's arguments) and return the exit code."""
    try:
        try:
            code = _run(argv)
        finally:  # also after --help (SystemExit): a closed pipe shows here, not at exit with a traceback
            sys.stdout.flush()
    except BrokenPipeError:
        return _stdout_gone()
    return code


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_INPUT
    verbose = bool(getattr(args, "verbose", False))
    if not verbose:
        from MedAnalysisLib.cli._quiet import quiet_tensorflow

        quiet_tensorflow()  # before anything can import TensorFlow
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from MedAnalysisLib.privacy import install_cli_logging

    install_cli_logging(verbose)  # third-party records and warnings pass the same PHI filter as ours
    reporter = Reporter(getattr(args, "progress", "none"))
    try:
        validate = getattr(args, "validate", None)
        if validate is not None:
            validate(args)
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
    except BrokenPipeError:
        raise  # the reader went away: nobody to tell, main() exits quietly
    except Exception as error:  # noqa: BLE001 - the parent must always get one error line
        reporter.error(error)
        if getattr(args, "verbose", False) or reporter.mode != "jsonl":
            raise
        return EXIT_UNEXPECTED
    return int(code or EXIT_OK)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
