"""The ``medanalysis`` command line.

Each sub-command lives in its own module of this package and exposes ``register(subparsers, parents)``, which adds
its parser and sets ``func(args, reporter) -> int | None`` as the default. Nothing heavy (TensorFlow) is imported
until a command runs, so ``medanalysis --help`` stays fast.

Exit codes: 0 success, 2 bad input or refused bundle (a :class:`MedAnalysisError`), 3 cancelled (the line ``stop``
on stdin from a parent that set ``MEDANALYSIS_STOP_ON_STDIN=1``, or the creation of the file named by
``MEDANALYSIS_STOP_FILE``, as the Slicer panel's Cancel does with both; or SIGTERM or Ctrl+C; see
:mod:`MedAnalysisLib.progress`), 1 anything unexpected (one ``error:`` line and a note; the traceback only with
``--verbose``), 141 stdout closed early (``medanalysis info B | head``: the
command stops quietly, as the shell's own tools do on SIGPIPE).

Ordinary operating-system errors (permission denied, a read-only or full disk, a file size limit, a name too long,
a file where a folder is expected or the reverse) and running out of memory are bad input too: exit code 2 with one
line that names what was expected, the operation, the path and the system's reason (:func:`describe_os_error`),
never a traceback; the atomic writers have removed their temporaries by then. Before any command's own checks,
every output option is checked where that is cheap (:func:`_check_output_options`).

Before a command runs, its ``validate(args)`` hook (when its parser sets one) checks inputs and outputs, so a mistake
is refused before TensorFlow is imported (:mod:`MedAnalysisLib.cli._validate`, which also states the overwrite
policy every command follows); TensorFlow's start-up lines stay off stderr unless ``--verbose``
(:mod:`MedAnalysisLib.cli._quiet`). Every ``--help`` shows the defaults.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from MedAnalysisLib import __version__
from MedAnalysisLib.errors import CancelledError, InputError, MedAnalysisError, MemoryBudgetError, OutputError
from MedAnalysisLib.progress import Reporter

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES = ("dicom", "convert", "plan", "preprocess", "train", "info", "models", "configure", "ensemble",
                   "predict", "evaluate", "demo")

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


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with its error line made safe for a terminal: it quotes what was typed, and a file name
    from a shell glob can hold escape sequences or line breaks."""

    def error(self, message: str) -> NoReturn:
        from MedAnalysisLib.sanitize import terminal_field

        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"{self.prog}: error: {terminal_field(message)}\n")


def common_parent() -> argparse.ArgumentParser:
    """Options every long-running sub-command shares."""
    parent = _Parser(add_help=False)
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
    parser = _Parser(
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


#: Output options every command may have: attribute -> the option as typed.
OUTPUT_OPTIONS = {"out": "--out", "fingerprint_out": "--fingerprint-out", "tensorboard": "--tensorboard",
                  "output": "OUTPUT"}
#: Commands whose --out is a folder they write files into (created when missing).
FOLDER_OUTPUT_COMMANDS = ("predict", "evaluate", "demo")


def _check_output_options(args: argparse.Namespace) -> None:
    """Where each output goes, before anything else: names within the file system's limit, no file above it, a
    folder that may be written; and a folder where a command writes into one (see
    :func:`MedAnalysisLib.cli._validate.check_output_location`)."""
    from MedAnalysisLib.cli._validate import check_folder_location, check_output_location

    for attribute, option in OUTPUT_OPTIONS.items():
        value = getattr(args, attribute, None)
        if isinstance(value, (str, os.PathLike)):
            check_output_location(value, option)
    if getattr(args, "command", None) in FOLDER_OUTPUT_COMMANDS and getattr(args, "out", None) is not None:
        check_folder_location(args.out, "--out")


#: What an operation needed, by the errno of its failure.
_EXPECTED_BY_ERRNO = {
    errno.EACCES: "permission to use the path", errno.EPERM: "permission to use the path",
    errno.EROFS: "a writable file system", errno.ENOSPC: "free space on the disk",
    errno.EDQUOT: "free space within the disk quota", errno.EFBIG: "a file size within the system's limit",
    errno.ENAMETOOLONG: "names within the file system's length limit", errno.EISDIR: "a file, not a folder",
    errno.ENOTDIR: "a folder, not a file", errno.EEXIST: "a path that does not exist yet",
    errno.ENOENT: "an existing file or folder", errno.ENOTEMPTY: "an empty folder",
    errno.EMFILE: "fewer open files", errno.ENFILE: "fewer open files", errno.EIO: "a working disk",
}
#: The operation, by the name of the innermost function that failed.
_OPERATIONS = {
    "mkdir": "creating a folder", "makedirs": "creating a folder", "open": "opening a file",
    "write": "writing a file", "write_text": "writing a file", "write_bytes": "writing a file",
    "read_text": "reading a file", "read_bytes": "reading a file", "replace": "renaming into place",
    "rename": "renaming into place", "mkstemp": "creating a temporary file", "mkdtemp": "creating a temporary folder",
    "copyfile": "copying a file", "copy2": "copying a file", "chmod": "setting permissions",
    "iterdir": "listing a folder", "scandir": "listing a folder", "stat": "reading a file's status",
    "stream": "writing a download into the model cache",
}


def _innermost_operation(error: BaseException) -> str:
    """What was being done when ``error`` was raised: a note an atomic writer added ("while writing PATH"), else the
    innermost function's name."""
    notes = [note for note in getattr(error, "__notes__", []) if note.startswith("while ")]
    if notes:
        return notes[0]
    traceback = error.__traceback__
    name = ""
    while traceback is not None:
        name = traceback.tb_frame.f_code.co_name
        traceback = traceback.tb_next
    return "while " + _OPERATIONS.get(name.lstrip("_"), f"running {name or 'the command'}")


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error: what was expected, what the system said, the operation and the path
    (control characters escaped)."""
    from MedAnalysisLib.sanitize import terminal_field

    expected = _EXPECTED_BY_ERRNO.get(error.errno or -1, "the operation to succeed")
    reason = error.strerror or str(error) or type(error).__name__
    code = errno.errorcode.get(error.errno or -1, type(error).__name__)
    paths = [os.fsdecode(p) for p in (error.filename, error.filename2) if p is not None and not isinstance(p, int)]
    where = f" on {' and '.join(terminal_field(p) for p in paths)}" if paths else ""
    return (f"expected {expected}, got {terminal_field(reason[:200])} ({code}) "
            f"{terminal_field(_innermost_operation(error))}{where}")


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
        _check_output_options(args)
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
    except OSError as error:
        logging.getLogger(__name__).debug("operating-system error", exc_info=True)
        writing = any(note.startswith("while ") for note in getattr(error, "__notes__", []))
        reporter.error((OutputError if writing else InputError)(describe_os_error(error)))
        return EXIT_INPUT
    except MemoryError:
        logging.getLogger(__name__).debug("out of memory", exc_info=True)
        reporter.error(MemoryBudgetError(
            "expected enough free memory for this command, got an allocation that failed (out of memory); lower "
            "--batch-size or --memory-budget-mb where the command has them, or use a machine with more memory"))
        return EXIT_INPUT
    except Exception as error:  # noqa: BLE001 - the parent must always get one error line
        reporter.error(error)
        if getattr(args, "verbose", False):
            raise  # the traceback, for a bug report
        if reporter.mode not in ("jsonl", "none"):
            print("note: this is a fault in MedAnalysis, not in your input; run the command again with --verbose "
                  "for the details to report", file=sys.stderr, flush=True)
        return EXIT_UNEXPECTED
    return int(code or EXIT_OK)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
