"""Run a ``medanalysis`` command in a child process and follow it through the JSON-lines protocol.

This is how the Slicer panel trains and predicts without freezing Slicer: the work runs in
``python -m MedAnalysisLib <command> ... --progress jsonl`` (see :mod:`MedAnalysisLib.progress` for the protocol);
a reader thread parses the child's stdout into messages, and the GUI drains them with :meth:`WorkerJob.poll` from a
timer. The child runs in its own process group (its own session on POSIX), so :meth:`WorkerJob.cancel` can stop it
cleanly (SIGTERM: the command stops at the next batch or case boundary and saves what it can) and then kill the
whole process tree if it does not stop within the grace period.

Nothing here imports Qt or Slicer: any parent (Slicer, a notebook, a scheduler script) can use it.

Example::

    job = WorkerJob(["predict", "model.zip", "ct.nrrd", "--out", "out"])
    while job.running:
        for message in job.poll():
            print(message)
        time.sleep(0.1)
    job.poll()
    print(job.returncode, job.result, job.error)
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

#: Folder that holds the ``MedAnalysisLib`` package; put on the child's PYTHONPATH so a source checkout works.
PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])

#: How many stderr lines are kept to explain a failure that sent no ``error`` message.
STDERR_TAIL_LINES = 40


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
        cancelled: ``True`` once :meth:`cancel` was called.
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

        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.progress: dict[str, Any] | None = None
        self.metrics: list[dict[str, Any]] = []
        self.cancelled = False
        self.started_at = time.monotonic()
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._finished = False

        popen_options: dict[str, Any] = {}
        if os.name == "posix":
            popen_options["start_new_session"] = True  # own session and process group: killpg reaches the tree
        else:  # pragma: no cover - Windows
            popen_options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(
                subprocess, "CREATE_NO_WINDOW", 0)
        self._process = subprocess.Popen(  # noqa: S603 - argv is our own interpreter and module
            self.argv,
            stdin=subprocess.DEVNULL,
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
    def succeeded(self) -> bool:
        return not self.running and self.returncode == 0 and self.result is not None

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

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

        Never blocks. After the child exits and its output is drained, a missing ``error`` message is replaced by
        one built from the exit code and the end of stderr, so a crash is always explained.
        """
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
        for reader in self._readers:
            reader.join(timeout)
        return code

    # ------------------------------------------------------------------ stopping
    def cancel(self, grace_s: float = 10.0) -> int:
        """Ask the child to stop (SIGTERM), then kill its whole process tree after ``grace_s`` seconds.

        SIGTERM sets the child's stop flag: training saves a checkpoint at the next batch boundary and exits with
        code 3. Blocks at most about ``grace_s`` seconds; returns the exit code.
        """
        self.cancelled = True
        if self._process.poll() is not None:
            return self._process.returncode
        tree = _descendants(self._process.pid)
        _signal_group(self._process, signal.SIGTERM)
        try:
            self._process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill(tree)
        return self._process.returncode

    def kill(self, known_descendants: Sequence[int] = ()) -> None:
        """Kill the child, its process group and every descendant found (no clean stop)."""
        tree = set(known_descendants) | set(_descendants(self._process.pid))
        _signal_group(self._process, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        self._process.wait()


def _signal_group(process: subprocess.Popen[str], sig: int) -> None:
    if process.poll() is not None:
        return
    try:
        if os.name == "posix":
            os.killpg(process.pid, sig)  # the child leads its own process group
        elif sig == signal.SIGTERM:  # pragma: no cover - Windows
            process.send_signal(signal.CTRL_BREAK_EVENT)
        else:  # pragma: no cover - Windows
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], check=False, capture_output=True)
    except ProcessLookupError:
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
