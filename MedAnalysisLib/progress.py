"""Progress reporting and cooperative cancellation, shared by every long command.

The JSON-lines protocol (``--progress jsonl``) is how the Slicer panel and any other parent process follow a
``medanalysis`` child. Every line on stdout is one JSON object with a ``"type"`` key:

* ``{"type": "progress", "stage": str, "fraction": float 0..1, "eta_s": float|null, "message": str, ...}``
* ``{"type": "metrics", "stage": str, "epoch": int, "step": int|null, "metrics": {name: float}}``
* ``{"type": "log", "level": "info"|"warning", "message": str}``
* ``{"type": "result", ...}`` exactly once on success (paths of the outputs, summary figures)
* ``{"type": "error", "error_type": str, "message": str}`` exactly once on failure

Human-readable logging goes to stderr in every mode, so stdout stays machine-readable. Messages never carry
patient identifiers: callers pass only paths, counts and figures, and every message, error and result still passes
:func:`MedAnalysisLib.privacy.redact` (the filter third-party log records pass too).

Messages quote names from files (label names, file names, DICOM descriptions), so what reaches a terminal (modes
``bar`` and ``log``) passes :mod:`MedAnalysisLib.sanitize` first: an escape sequence or a line break inside a name
is shown as ``\x1b`` or ``\x0a`` and can neither act on the terminal nor forge a line (the bar and every error are
one line; a log message keeps its own line breaks, its continuation lines indented). JSON lines carry the text
as it is: JSON escapes every control character, and the parent needs the real names.

Stopping a child cleanly works the same on every platform, through two channels that set the same stop flag;
:class:`MedAnalysisLib.worker.WorkerJob` uses both, because neither alone reaches the child in every setting:

* **The stdin line.** A parent that sets the environment variable ``MEDANALYSIS_STOP_ON_STDIN=1`` keeps a pipe to
  the child's stdin and writes the line ``stop`` to it. :meth:`StopFlag.install` then starts a daemon thread that
  reads stdin and sets the flag on that line. It is immediate, but only where the parent's pipe really is the
  child's stdin: a launcher in between that does not forward its stdin (3D Slicer's ``PythonSlicer``, a
  CTKAppLauncher that starts the real interpreter with forwarded stdout/stderr only) never passes the line on.
  End of file on stdin (the parent closed the pipe, or stdin is ``/dev/null``) is not a stop request: the thread
  just ends. Other lines are ignored.
* **The stop file.** A parent that sets ``MEDANALYSIS_STOP_FILE`` to the absolute path of a file that does not
  exist yet, in a private folder of its own, creates that file to ask for the stop. :meth:`StopFlag.install` then
  starts a daemon thread that checks ``os.path.exists`` on exactly that path every
  :data:`STOP_FILE_POLL_S` seconds and sets the flag once it exists. Environment variables pass through launchers,
  so this reaches the child however stdin travels, at the cost of up to one polling interval. The child only looks
  at the path: it never creates, writes, opens or deletes it (the parent creates it and removes its folder). A
  relative path, a path whose folder does not exist and a file older than the process (a stale request) are
  refused (exit code 2, :func:`check_stop_file_setting`): each would make Cancel do nothing or stop at once.

Either way the flag is set exactly as SIGTERM does, with the reason ``stopped on request``; the long loops notice it
at their next batch or case boundary, save what they can (training: its resume checkpoint) and the command exits
with code 3. The child removes both variables from its environment when it reads them (at the first
:meth:`StopFlag.install`), so processes it starts neither read the same pipe nor watch the same file. Without the
variables stdin and the file system are left alone, and SIGTERM/SIGINT (Slurm, a terminal's Ctrl+C, ``kill``) stop
the work as before.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import IO, Any

from MedAnalysisLib.errors import CancelledError, InputError
from MedAnalysisLib.privacy import redact, redact_value
from MedAnalysisLib.sanitize import terminal_field, terminal_message

PROTOCOL_VERSION = 1

#: Environment variable by which a parent asks the child to watch its stdin for :data:`STOP_LINE`.
STOP_ON_STDIN_ENV = "MEDANALYSIS_STOP_ON_STDIN"

#: The line (surrounding whitespace ignored) that a parent writes to the child's stdin to stop it cleanly.
STOP_LINE = "stop"

#: Environment variable by which a parent names a file (absolute path, not existing yet) whose creation stops the
#: child cleanly.
STOP_FILE_ENV = "MEDANALYSIS_STOP_FILE"

#: How often, in seconds, the child checks whether the stop file exists.
STOP_FILE_POLL_S = 0.2

#: The reason a stop requested by a parent (stdin line or stop file) gives.
STOP_REQUEST_REASON = "stopped on request"


def _clean(value: Any) -> Any:
    """Make a value JSON-safe: numpy scalars to Python, NaN/Inf to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Reporter:
    """Sends progress, metrics, logs and the final result to the chosen sink.

    Args:
        mode: ``"jsonl"`` (one JSON object per line on ``stream``), ``"bar"`` (a one-line bar with ETA on stderr,
            for terminals), ``"log"`` (plain lines on stderr) or ``"none"``. ``"auto"`` picks ``"bar"`` when stderr
            is a terminal and ``"log"`` otherwise.
        stream: Where JSON lines go (stdout by default).
    """

    def __init__(self, mode: str = "auto", stream: IO[str] | None = None) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        if mode not in ("jsonl", "bar", "log", "none"):
            raise ValueError(f"expected progress mode jsonl, bar, log, none or auto, got {mode!r}")
        self.mode = mode
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()
        self._stage_start: dict[str, float] = {}
        self._last_log = 0.0
        self._bar_open = False  # a bar line is on the terminal without its line break yet

    def _emit(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.stream.write(json.dumps(redact_value(_clean(message)), separators=(",", ":")) + "\n")
            self.stream.flush()

    def progress(self, stage: str, done: float, total: float, message: str = "", **extra: Any) -> None:
        """Report ``done`` of ``total`` units of ``stage``; the ETA is extrapolated from the stage's start."""
        now = time.monotonic()
        start = self._stage_start.setdefault(stage, now)
        fraction = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
        eta = (now - start) * (1 - fraction) / fraction if fraction > 0 else None
        if self.mode == "jsonl":
            self._emit({"type": "progress", "stage": stage, "fraction": fraction, "eta_s": eta, "message": message, **extra})
        elif self.mode == "bar":
            eta_text = f" ETA {format_duration(eta)}" if eta is not None else ""
            sys.stderr.write("\r" + format_bar(terminal_field(stage), fraction, eta_text, terminal_field(redact(message)),
                                                terminal_columns()))
            self._bar_open = fraction < 1
            if not self._bar_open:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif self.mode == "log" and (fraction >= 1 or now - self._last_log > 5 or done == 0):
            self._last_log = now
            eta_text = f", ETA {format_duration(eta)}" if eta is not None and fraction < 1 else ""
            line = f"[{terminal_field(stage)}] {fraction:.0%}{eta_text} {terminal_field(redact(message))}"
            print(line.rstrip(), file=sys.stderr, flush=True)

    def metrics(self, stage: str, epoch: int, metrics: dict[str, float], step: int | None = None) -> None:
        if self.mode == "jsonl":
            self._emit({"type": "metrics", "stage": stage, "epoch": epoch, "step": step, "metrics": metrics})
        elif self.mode != "none":
            text = ", ".join(f"{terminal_field(redact(k))}={v:.4g}" for k, v in metrics.items()
                             if isinstance(v, (int, float)))
            self._end_bar(always=True)
            print(f"[{terminal_field(stage)}] epoch {epoch}: {text}", file=sys.stderr, flush=True)

    def log(self, message: str, level: str = "info") -> None:
        """A message at ``level``; ``none`` turns off progress and information only: warnings and errors (a failed
        case, an output left out) are still printed, so that an exit code other than 0 never comes without a
        reason on stderr."""
        if self.mode == "jsonl":
            self._emit({"type": "log", "level": level, "message": message})
        elif self.mode != "none" or level in ("warning", "error"):
            message = terminal_message(redact(message))
            level = terminal_field(level)
            self._end_bar()
            print(f"{level}: {message}" if level != "info" else message, file=sys.stderr, flush=True)

    def _end_bar(self, always: bool = False) -> None:
        """In bar mode, end the open bar line (or, with ``always``, any bar line), so the next line starts at the
        left margin instead of after the bar."""
        if self.mode == "bar" and (self._bar_open or always):
            sys.stderr.write("\n")
            self._bar_open = False

    def result(self, **payload: Any) -> None:
        if self.mode == "jsonl":
            self._emit({"type": "result", "protocol": PROTOCOL_VERSION, **payload})

    def error(self, error: BaseException) -> None:
        if self.mode == "jsonl":
            self._emit({"type": "error", "error_type": type(error).__name__, "message": str(error)})
        else:
            self._end_bar()
            print(f"error: {terminal_field(redact(error))}", file=sys.stderr, flush=True)


def terminal_columns() -> int:
    """Width of the terminal the bar is drawn on: ``COLUMNS`` when set, else stderr's terminal, else stdout's, else
    80 (:func:`shutil.get_terminal_size` asks stdout only, which is often redirected while stderr is not)."""
    if not os.environ.get("COLUMNS", "").strip().isdigit():
        try:
            columns = os.get_terminal_size(sys.stderr.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        if columns > 0:
            return columns
    return shutil.get_terminal_size((80, 24)).columns


def format_bar(stage: str, fraction: float, eta_text: str, message: str, columns: int) -> str:
    """One bar line that fits ``columns`` (one column is left free, so terminals never wrap it): stage, a bar of up
    to 30 cells, percentage, ETA, then as much of the message as fits; padded so it overwrites a longer line."""
    room = max(columns - 1, 1)
    head = f"{stage:>10} "
    tail = f" {fraction:6.1%}{eta_text}"
    cells = min(30, room - len(head) - len(tail) - 2 - 12)  # keep at least 12 columns for the message
    bar = ""
    if cells >= 5:
        filled = int(round(cells * fraction))
        bar = f"[{'#' * filled}{'.' * (cells - filled)}]"
    line = f"{head}{bar}{tail} {message}"
    return line[:room].ljust(room)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class StopFlag:
    """Set by SIGTERM, by a ``stop`` line on stdin or the creation of the stop file (see the module docstring) or by
    a caller; long loops poll it at safe points (batch or case boundaries).

    ``install()`` replaces the SIGTERM and SIGINT handlers for the life of the process; the first signal only sets
    the flag so the work can stop cleanly and save a checkpoint, a second SIGINT raises KeyboardInterrupt. When the
    parent set ``MEDANALYSIS_STOP_ON_STDIN=1``, it also points the stdin watcher at this flag, and when it set
    ``MEDANALYSIS_STOP_FILE``, the stop-file watcher.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str = "stop requested") -> None:
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def raise_if_set(self) -> None:
        if self._event.is_set():
            raise CancelledError(self.reason or "stopped on request")

    def install(self) -> StopFlag:
        def handler(signum: int, _frame: Any) -> None:
            if signum == signal.SIGINT and self.is_set():
                raise KeyboardInterrupt
            self.set(f"stopped by {signal.Signals(signum).name}")

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)
        _StdinStopWatcher.watch(self)
        _StopFileWatcher.watch(self)
        return self


class _StdinStopWatcher:
    """At most one per process: a daemon thread that reads stdin and sets the latest installed flag on ``stop``.

    It reads the raw file descriptor with ``os.read`` rather than ``sys.stdin``: a daemon thread blocked inside a
    buffered reader can abort the interpreter at exit, one blocked in ``os.read`` cannot.
    """

    _instance: _StdinStopWatcher | None = None
    _requested: bool | None = None
    _lock = threading.Lock()

    def __init__(self, fd: int) -> None:
        self.flag: StopFlag | None = None
        self._fd = fd
        self._thread = threading.Thread(target=self._run, daemon=True, name="medanalysis-stdin-stop")

    @classmethod
    def watch(cls, flag: StopFlag) -> None:
        with cls._lock:
            if cls._requested is None:  # decided once; the variable is consumed so grandchildren never inherit it
                cls._requested = os.environ.pop(STOP_ON_STDIN_ENV, "") == "1"
            if not cls._requested:
                return
            if cls._instance is None:
                try:
                    fd = sys.stdin.fileno() if sys.stdin is not None else -1
                except (OSError, ValueError):  # no usable stdin (e.g. replaced by a StringIO): nothing to watch
                    fd = -1
                if fd < 0:
                    cls._requested = False
                    return
                cls._instance = cls(fd)
                cls._instance.flag = flag
                cls._instance._thread.start()
            else:
                cls._instance.flag = flag  # the latest install wins, as it does for the signal handlers

    def _run(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._fd, 1024)
            except OSError:
                return  # stdin closed or unreadable: nothing more to watch, and not a stop request
            if not chunk:
                return  # EOF: the parent closed the pipe; that alone is not a cancel
            pending += chunk
            *lines, pending = pending.split(b"\n")
            pending = pending[-1024:]  # a parent that never sends a newline cannot grow this without bound
            for line in lines:
                if line.strip().decode("ascii", "replace") == STOP_LINE and self.flag is not None:
                    self.flag.set(STOP_REQUEST_REASON)


#: When this module was first imported: the start of the process where the system does not say (see
#: :func:`process_start_time`).
_IMPORTED_AT = time.time()


def process_start_time() -> float:
    """When this process started (seconds since the epoch): from ``/proc`` on Linux, else when this module was first
    imported (a little later than the start, which only narrows what counts as a stop request made for this run)."""
    try:
        with open("/proc/self/stat", encoding="ascii", errors="replace") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii", errors="replace") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


def check_stop_file_setting() -> None:
    """Refuse a ``MEDANALYSIS_STOP_FILE`` that cannot work as the protocol says, before any work starts.

    The path must be absolute (only that names one file whatever the working directory becomes) and its folder
    must exist (else the parent could never create the file, and Cancel would silently do nothing). A file already
    there that is older than this process is a stale request (left by an earlier run, or a path shared by two runs)
    and would stop this run at once: it is refused too. One created since this process started is a real stop
    request made before the command got going (Cancel pressed at once): the run stops at its first boundary, as
    for a later request. Each refusal is an error (exit code 2), never a watcher that silently never fires.

    Raises:
        InputError: Naming the variable, what was expected and what was found.
    """
    path = os.environ.get(STOP_FILE_ENV, "")
    if not path:
        return
    expected = (f"expected {STOP_FILE_ENV} to be the absolute path of a file that does not exist yet, in an existing "
                "folder")
    if not os.path.isabs(path):
        raise InputError(f"{expected}, got the relative path {terminal_field(path)}")
    if not os.path.isdir(os.path.dirname(path)):
        raise InputError(f"{expected}, got {terminal_field(path)} whose folder does not exist")
    try:
        modified = os.lstat(path).st_mtime
    except FileNotFoundError:
        return
    except OSError as error:
        raise InputError(f"{expected}, got {terminal_field(path)}, which cannot be checked: {error.strerror}") from None
    if modified < process_start_time() - 1.0:  # a second of slack for file systems with coarse times
        raise InputError(f"{expected}, got {terminal_field(path)}, which already exists from before this run (a "
                         "stop request left from an earlier run?); remove it or choose another path")


class _StopFileWatcher:
    """At most one per process: a daemon thread that sets the latest installed flag once the stop file exists.

    It only calls ``os.path.exists`` on the exact path the parent gave; it never creates, opens, writes or deletes
    anything. It keeps watching after the file appeared, so a flag installed later is set too.
    """

    _instance: _StopFileWatcher | None = None
    _requested: bool | None = None
    _lock = threading.Lock()

    def __init__(self, path: str) -> None:
        self.flag: StopFlag | None = None
        self.path = path
        self._thread = threading.Thread(target=self._run, daemon=True, name="medanalysis-stop-file")

    @classmethod
    def watch(cls, flag: StopFlag) -> None:
        with cls._lock:
            if cls._requested is None:  # decided once; the variable is consumed so grandchildren never inherit it
                check_stop_file_setting()
                path = os.environ.pop(STOP_FILE_ENV, "")
                cls._requested = bool(path)
                if cls._requested:
                    cls._instance = cls(path)
                    cls._instance.flag = flag
                    cls._instance._thread.start()
                return
            if cls._instance is not None:
                cls._instance.flag = flag  # the latest install wins, as it does for the signal handlers

    def _run(self) -> None:
        while True:
            flag = self.flag
            try:
                found = os.path.exists(self.path)
            except (OSError, ValueError):  # e.g. a path the platform cannot represent: never a stop request
                found = False
            if found and flag is not None and not flag.is_set():
                flag.set(STOP_REQUEST_REASON)
            time.sleep(STOP_FILE_POLL_S)
