"""Run a ``medanalysis`` command in a child process and follow it through the JSON-lines protocol.

This is how the Slicer panel trains and predicts without freezing Slicer: the work runs in
``python -m MedAnalysisLib <command> ... --progress jsonl`` (see :mod:`MedAnalysisLib.progress` for the protocol);
a reader thread parses the child's stdout into messages, and the GUI drains them with :meth:`WorkerJob.poll` from a
timer.

Cancelling is one protocol on every platform, sent through two channels at once (see
:mod:`MedAnalysisLib.progress`). The child is started with ``MEDANALYSIS_STOP_ON_STDIN=1`` and a pipe on its stdin,
and with ``MEDANALYSIS_STOP_FILE`` naming a not-yet-existing file in a private temporary folder of this job
(``tempfile.mkdtemp``). :meth:`WorkerJob.request_stop` writes the line ``stop`` to the pipe, which the child sees at
once where the pipe really is its stdin, and creates the stop file, which the child sees within about 0.2 s however
its stdin travels: inside 3D Slicer the interpreter is ``PythonSlicer``, a CTKAppLauncher that starts the real
interpreter with only stdout and stderr forwarded, so the stdin line never arrives there, while environment variables
do. Either channel sets the child's stop flag: the command stops at its next batch or case boundary, saves what it
can (training: the resume checkpoint) and exits with code 3. ``request_stop`` never blocks; it records a deadline,
and :meth:`WorkerJob.poll`, which the GUI keeps calling anyway, kills the whole process tree once the deadline has
passed and the child still runs. :meth:`WorkerJob.cancel` is the blocking form for scripts and tests. The hard kill
is ``killpg(SIGKILL)`` plus every descendant found on POSIX, where the child leads its own session and process group,
and ``taskkill /F /T`` on Windows. No signal is used for the clean stop, so it works the same on Windows, where
SIGTERM does not exist and CTRL_BREAK_EVENT could not be handled by the child. Parents other than ``WorkerJob``
(Slurm, a shell) can still stop a child with SIGTERM. The temporary folder is removed once the child has ended
(by :meth:`WorkerJob.poll`, :meth:`~WorkerJob.wait`, :meth:`~WorkerJob.cancel` or :meth:`~WorkerJob.kill`, or
when the job object is garbage collected).

Nothing here imports Qt or Slicer: any parent (Slicer, a notebook, a scheduler script) can use it.

Example::

    job = WorkerJob(["predict", "model.zip", "ct.nrrd", "--out", "out"])
    while job.running:
        for message in job.poll():
            print(message)
        time.sleep(0.1)
    job.poll()
    print(job.returncode, job.result, job.error)

    # From a GUI timer: ask once, then keep polling; the tree is killed if it has not stopped after 15 s.
    job.request_stop(grace_s=15.0)
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from MedAnalysisLib.progress import STOP_FILE_ENV, STOP_LINE, STOP_ON_STDIN_ENV

#: Folder that holds the ``MedAnalysisLib`` package; put on the child's PYTHONPATH so a source checkout works.
PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])

#: How many stderr lines are kept to explain a failure that sent no ``error`` message.
STDERR_TAIL_LINES = 40
#: How long :meth:`WorkerJob.cancel` waits for the readers to drain the ended child's output.
READER_JOIN_S = 5.0


class WorkerJob:
    """One ``medanalysis`` child process, started on construction.

    Args:
        argv: The sub-command and its arguments, e.g. ``["predict", bundle, image, "--out", folder]``. Do not pass
            ``--progress``: ``--progress jsonl`` is appended.
        python: The Python interpreter to run (default: this one, ``sys.executable``; inside Slicer pass
            ``PythonSlicer``).
        env: Extra environment variables for the child.
        cwd: Working directory of the child.

    Attributes:
        argv: The full command line that was started.
        result: The payload of the ``result`` message once it arrived (``None`` before or on failure).
        error: ``{"error_type": ..., "message": ...}`` of the ``error`` message, or one built from the exit code and
            the end of stderr when the child died without sending one; ``None`` while running or on success.
        progress: The latest ``progress`` message (stage, fraction 0..1, eta_s, message).
        metrics: Every ``metrics`` message received, in order (training curves).
        warnings: The text of every ``log`` message of level ``warning`` received, in order (a modality mismatch,
            a format a case cannot give, a failed case of a batch), for a panel to show beside the result.
        cancelled: ``True`` once :meth:`request_stop` (or :meth:`cancel`) was called.
        stop_file: The path of the stop file the child watches (in this job's private temporary folder); only
            :meth:`request_stop` creates it, and the folder is removed once the child has ended.
    """

    def __init__(self, argv: Sequence[str], *, python: str | None = None, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None) -> None:
        argv = [str(a) for a in argv]
        if not argv:
            raise ValueError("expected a medanalysis sub-command such as ['predict', ...], got an empty list")
        if "--progress" in argv:
            raise ValueError(f"expected argv without --progress (jsonl is added), got {argv}")
        self.argv = [python or sys.executable, "-m", "MedAnalysisLib", *argv, "--progress", "jsonl"]
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (PACKAGE_PARENT, child_env.get("PYTHONPATH", "")) if p
        )
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        child_env.update(env or {})
        child_env[STOP_ON_STDIN_ENV] = "1"  # the child watches its stdin for the stop line (see request_stop)
        # ... and a file that only this parent creates, for when stdin does not reach the child (PythonSlicer).
        self._stop_dir = tempfile.mkdtemp(prefix="medanalysis-stop-")
        self._remove_stop_dir = weakref.finalize(self, shutil.rmtree, self._stop_dir, ignore_errors=True)
        self.stop_file = os.path.join(self._stop_dir, "stop")
        child_env[STOP_FILE_ENV] = self.stop_file

        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.progress: dict[str, Any] | None = None
        self.metrics: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.cancelled = False
        self.started_at = time.monotonic()
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._finished = False
        self._stop_deadline: float | None = None  # time.monotonic() after which poll() kills the tree
        self._stop_tree: list[int] = []  # descendants seen when the stop was requested (they may be orphaned later)
        self._killed = False
        self._killer: subprocess.Popen[bytes] | None = None  # Windows: the running taskkill

        popen_options: dict[str, Any] = {}
        if os.name == "posix":
            popen_options["start_new_session"] = True  # own session and process group: killpg reaches the tree
        else:  # pragma: no cover - Windows
            # taskkill /T finds the tree by parent ids and needs no process group; the new group is kept so that a
            # Ctrl+C or Ctrl+Break in the parent's console never reaches the child: only the stdin line stops it.
            popen_options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(
                subprocess, "CREATE_NO_WINDOW", 0)
        try:
            self._process = subprocess.Popen(  # noqa: S603 - argv is our own interpreter and module
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                env=child_env,
                cwd=cwd,
                **popen_options,
            )
        except BaseException:
            self._remove_stop_dir()
            raise
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self._process.stdout,), daemon=True,
                             name="medanalysis-stdout"),
            threading.Thread(target=self._read_stderr, args=(self._process.stderr,), daemon=True,
                             name="medanalysis-stderr"),
        ]
        for reader in self._readers:
            reader.start()

    # ------------------------------------------------------------------ state
    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The child's exit code (0 ok, 2 bad input, 3 cancelled, 1 unexpected; negative: killed by a signal)."""
        return self._process.poll()

    @property
    def running(self) -> bool:
        """True until the child has exited *and* all its output has been read."""
        return self._process.poll() is None or any(reader.is_alive() for reader in self._readers)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    @property
    def stop_deadline_passed(self) -> bool:
        """True once a stop was requested and its grace period is over (:meth:`poll` then kills a running child)."""
        return self._stop_deadline is not None and time.monotonic() >= self._stop_deadline

    # ------------------------------------------------------------------ readers
    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
                if not isinstance(message, dict) or "type" not in message:
                    raise ValueError
            except ValueError:
                # Third-party libraries sometimes print to stdout; keep it as a log line, never lose it.
                message = {"type": "log", "level": "info", "message": line}
            self._messages.put(message)
        stream.close()

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self._stderr_tail.append(line.rstrip("\n"))
        stream.close()

    # ------------------------------------------------------------------ polling
    def poll(self) -> list[dict[str, Any]]:
        """Messages received since the last call, in order; updates :attr:`result`, :attr:`error`, etc.

        Never blocks. When a stop was requested (:meth:`request_stop`) and its deadline has passed while the child
        still runs, the whole process tree is killed here, so a GUI only has to keep polling. After the child exits
        and its output is drained, a missing ``error`` message is replaced by one built from the exit code and the
        end of stderr, so a crash is always explained.
        """
        if self._process.poll() is None:
            if self.stop_deadline_passed and not self._killed:
                self._kill_tree()
        else:
            self._close_stdin()
            self._remove_stop_dir()
        self._reap_killer()
        messages: list[dict[str, Any]] = []
        while True:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                break
            kind = message.get("type")
            if kind == "progress":
                self.progress = message
            elif kind == "metrics":
                self.metrics.append(message)
            elif kind == "log" and message.get("level") == "warning":
                self.warnings.append(str(message.get("message", "")))
            elif kind == "result":
                self.result = {k: v for k, v in message.items() if k != "type"}
            elif kind == "error":
                self.error = {"error_type": message.get("error_type", "Error"), "message": message.get("message", "")}
            messages.append(message)
        if not self._finished and not self.running and self._messages.empty():
            self._finished = True
            self._process.wait()
            code = self._process.returncode
            if code != 0 and self.error is None:
                self.error = {
                    "error_type": "CancelledError" if self.cancelled else "WorkerCrash",
                    "message": ("stopped on request" if self.cancelled else
                                f"the medanalysis process exited with code {code} without reporting an error")
                    + (f"; last output:\n{self.stderr_tail}" if self.stderr_tail else ""),
                }
                messages.append({"type": "error", **self.error})
        return messages

    def wait(self, timeout: float | None = None) -> int:
        """Block until the child exits and its output is read (for scripts and tests); returns the exit code.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout`` seconds (the child is left running).
        """
        code = self._process.wait(timeout)
        self._close_stdin()
        self._remove_stop_dir()
        for reader in self._readers:
            reader.join(timeout)
        return code

    # ------------------------------------------------------------------ stopping
    def request_stop(self, grace_s: float = 10.0) -> None:
        """Ask the child to stop cleanly; :meth:`poll` kills its process tree if it still runs after ``grace_s``.

        Writes the line ``stop`` to the child's stdin and creates the stop file (:attr:`stop_file`); whichever
        reaches the child first sets its stop flag: training saves a checkpoint at the next batch boundary and the
        child exits with code 3. Never blocks (one short line into an empty pipe, one empty file created), so the GUI
        thread may call it; a child that has already ended is fine. Calling it again sends nothing more and can only
        bring the deadline earlier.
        """
        deadline = time.monotonic() + max(float(grace_s), 0.0)
        first = self._stop_deadline is None
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline = deadline
        self.cancelled = True
        if not first or self._process.poll() is not None:
            return
        self._stop_tree = _descendants(self._process.pid)
        stdin = self._process.stdin
        try:
            if stdin is not None and not stdin.closed:
                stdin.write(STOP_LINE + "\n")
                stdin.flush()
        except (OSError, ValueError):  # BrokenPipeError: the child has just ended; ValueError: stdin was closed
            pass
        self._create_stop_file()

    def _create_stop_file(self) -> None:
        """Create :attr:`stop_file`, empty, in one step: ``O_CREAT | O_EXCL`` makes its existence atomic (the child
        only tests that) and refuses to follow anything already at that path (never raises)."""
        try:
            fd = os.open(self.stop_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:  # FileExistsError: already requested; FileNotFoundError: the folder was already removed
            return
        os.close(fd)

    def cancel(self, grace_s: float = 10.0) -> int:
        """:meth:`request_stop`, wait up to ``grace_s`` seconds, then kill the whole process tree (for scripts and
        tests; blocks). Returns the exit code: 3 when the child stopped cleanly, negative when it was killed."""
        self.request_stop(grace_s)
        remaining = (self._stop_deadline or 0.0) - time.monotonic()
        try:
            self._process.wait(max(remaining, 0.0))
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_stdin()
        self._remove_stop_dir()
        for reader in self._readers:  # the child's last lines are read, so `running` is False once this returns
            reader.join(READER_JOIN_S)
        return self._process.returncode

    def kill(self, known_descendants: Sequence[int] = ()) -> None:
        """Kill the child, its process group and every descendant found (no clean stop); blocks until it exited."""
        if self._process.poll() is None:
            self._kill_tree(known_descendants)
        self._process.wait()
        self._close_stdin()
        self._remove_stop_dir()
        if self._killer is not None:  # pragma: no cover - Windows
            self._killer.wait()
        self._reap_killer()

    def _kill_tree(self, known_descendants: Sequence[int] = ()) -> None:
        """Send the hard kill to the whole tree without waiting for it to take effect (never raises)."""
        self._killed = True
        tree = set(known_descendants) | set(self._stop_tree) | set(_descendants(self._process.pid))
        if os.name == "posix":
            if self._process.poll() is None:  # while the leader is unreaped its pid cannot name another group
                _ignore_os_errors(os.killpg, self._process.pid, signal.SIGKILL)
            for pid in tree:
                _ignore_os_errors(os.kill, pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows: taskkill /T is the only tree kill; started, not waited for
            try:
                self._killer = subprocess.Popen(  # noqa: S603, S607 - a fixed system command
                    ["taskkill", "/F", "/T", "/PID", str(self._process.pid)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            except OSError:
                self._killer = None
            _ignore_os_errors(self._process.kill)  # TerminateProcess: at least the child itself goes

    def _reap_killer(self) -> None:
        if self._killer is not None and self._killer.poll() is not None:  # pragma: no cover - Windows
            self._killer = None

    def _close_stdin(self) -> None:
        stdin = self._process.stdin
        if stdin is not None and not stdin.closed:
            try:
                stdin.close()
            except OSError:  # flushing into a pipe whose reader has gone
                pass


def _ignore_os_errors(call: Any, *args: Any) -> None:
    """Run a signalling call; a process that is already gone or not ours (ProcessLookupError, PermissionError and
    any other OSError) is not an error for a kill."""
    try:
        call(*args)
    except OSError:
        pass


def _descendants(pid: int) -> list[int]:
    """Every descendant process id of ``pid`` (Linux /proc; empty elsewhere, where the process group is used)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: the parent pid is the 2nd field after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1:
            children[int(fields[1])].append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


__all__ = ["WorkerJob"]
