"""The cancel protocol of :class:`MedAnalysisLib.worker.WorkerJob`, the same on every platform: a ``stop`` line on
the child's stdin and a stop file the parent creates (which reaches a child behind a launcher that does not forward
stdin, as PythonSlicer does), a non-blocking ``request_stop`` whose deadline ``poll`` enforces with a tree kill, a
closed stdin that is not a cancel, and the stop file's private folder removed once the job ended. Real child
processes throughout."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from MedAnalysisLib.progress import STOP_FILE_ENV, STOP_ON_STDIN_ENV
from MedAnalysisLib.training import checkpoint_dir_for
from MedAnalysisLib.worker import PACKAGE_PARENT, WorkerJob

TIMEOUT_S = 240
MAX_POLL_S = 0.5


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory) -> Path:
    from MedAnalysisLib.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "data", 4, seed=1, shape=(16, 20, 20))


def train_argv(data: Path, out: Path, epochs: int) -> list[str]:
    """The tiniest training run the training tests use (unet3d, filters [4, 8], 16^3 patches, 2 steps an epoch)."""
    return ["train", str(data), "--task", "segmentation", "--model", "unet3d", "--out", str(out),
            "--epochs", str(epochs), "--steps-per-epoch", "2", "--workers", "1", "--set", "patch_size=16,16,16",
            "--set", "batch_size=2", "--hparam", "filters=[4,8]"]


def timed_poll(job: WorkerJob) -> list[dict]:
    start = time.monotonic()
    messages = job.poll()
    took = time.monotonic() - start
    assert took < MAX_POLL_S, f"poll() blocked for {took:.2f} s"
    return messages


def follow(job: WorkerJob, until=lambda message: False, timeout_s: float = TIMEOUT_S) -> list[dict]:
    """Poll like the panel's timer (never blocking) until the job ends or ``until(message)`` holds."""
    messages: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while job.running:
        for message in timed_poll(job):
            messages.append(message)
            if until(message):
                return messages
        assert time.monotonic() < deadline, f"job still running after {timeout_s} s: {job.stderr_tail}"
        time.sleep(0.05)
    return messages + timed_poll(job)


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid`` (the child's group, which holds its whole tree)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text()
            except OSError:
                continue
            fields_after_name = fields[fields.rfind(")") + 2:].split()
            if int(fields_after_name[2]) == pgid and fields_after_name[0] != "Z":
                members.append(int(entry.name))
    return members


def test_request_stop_from_a_polling_loop_saves_the_checkpoint_and_exits_3(phantom_data, tmp_path):
    out = tmp_path / "model"
    job = WorkerJob(train_argv(phantom_data, out, epochs=50))
    follow(job, until=lambda m: m["type"] == "progress" and m.get("stage") == "train")
    assert job.running, job.stderr_tail
    start = time.monotonic()
    job.request_stop(grace_s=120.0)  # long grace: the clean stop must happen, not the kill
    job.request_stop(grace_s=120.0)  # idempotent: nothing more is sent
    assert time.monotonic() - start < MAX_POLL_S
    assert job.cancelled and not job.stop_deadline_passed
    messages = follow(job)
    assert job.returncode == 3, job.stderr_tail
    assert job.error["error_type"] == "CancelledError" and "stopped on request" in job.error["message"]
    assert [m for m in messages if m["type"] == "error"][-1]["error_type"] == "CancelledError"
    assert job.result is None and not out.exists()
    state = json.loads((checkpoint_dir_for(out) / "state.json").read_text())
    assert state["partial_epoch"] is True
    assert job._process.stdin.closed  # no ResourceWarning for the pipe
    if os.name == "posix":
        assert group_members(job.pid) == []


@pytest.mark.skipif(os.name != "posix", reason="the stuck stand-in child is a script with a #! line")
def test_poll_kills_the_whole_tree_of_a_child_that_ignores_the_stop_line(tmp_path):
    stuck = tmp_path / "stuck-python"
    stuck.write_text(
        f"#!{sys.executable}\n"
        "import subprocess, sys, time\n"
        "# Ignores its arguments and its stdin; leaves a grandchild in its process group.\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "print('{\"type\": \"log\", \"level\": \"info\", \"message\": \"started\"}', flush=True)\n"
        "time.sleep(300)\n",
        encoding="utf-8",
    )
    stuck.chmod(stuck.stat().st_mode | stat.S_IXUSR)
    job = WorkerJob(["train", "anything"], python=str(stuck))
    follow(job, until=lambda m: m.get("message") == "started", timeout_s=60)
    pgid = job.pid
    assert len(group_members(pgid)) == 2  # the child and its grandchild
    job.request_stop(grace_s=1.0)
    assert job.running and not job.stop_deadline_passed
    started = time.monotonic()
    follow(job, timeout_s=30)  # poll() alone enforces the deadline
    assert time.monotonic() - started >= 1.0 - 0.05
    assert job.stop_deadline_passed
    assert job.returncode is not None and job.returncode < 0  # killed, not a clean stop
    assert job.error["error_type"] == "CancelledError"
    assert group_members(pgid) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pgid, 0)
    job.request_stop()  # after the end: no error
    job.request_stop(grace_s=0.0)
    assert job.cancel(grace_s=0.0) == job.returncode


def test_request_stop_after_the_child_exited_does_not_raise():
    job = WorkerJob(["no-such-command"])  # argparse rejects it and the child exits at once
    assert job.wait(timeout=60) == 2
    job.request_stop(grace_s=0.0)
    job.request_stop(grace_s=5.0)
    follow(job, timeout_s=10)
    assert job.cancelled and job.returncode == 2
    assert job.cancel(grace_s=0.0) == 2
    assert job._process.stdin.closed


def test_end_of_file_on_stdin_is_not_a_cancel(phantom_data, tmp_path):
    out = tmp_path / "model"
    job = WorkerJob(train_argv(phantom_data, out, epochs=1))
    job._process.stdin.close()  # the parent closes the pipe: the child's watcher sees EOF and just ends
    follow(job)
    assert job.returncode == 0, job.stderr_tail
    assert job.result is not None and job.error is None and not job.cancelled
    assert Path(job.result["bundle"]) == out and out.exists()
    job.request_stop()  # stdin already closed and the child ended: still no error


@pytest.mark.skipif(os.name != "posix", reason="the stand-in launcher is a script with a #! line")
def test_the_stop_file_stops_a_child_behind_a_launcher_that_does_not_forward_stdin(phantom_data, tmp_path):
    # Like PythonSlicer (a CTKAppLauncher): the real interpreter is its child, with stdout and stderr forwarded and the
    # environment passed on, but stdin not forwarded, so the stop line written to the launcher never reaches it.
    launcher = tmp_path / "launcher-python"
    launcher.write_text(
        f"#!{sys.executable}\n"
        "import subprocess, sys\n"
        "sys.exit(subprocess.run([sys.executable, *sys.argv[1:]], stdin=subprocess.DEVNULL).returncode)\n",
        encoding="utf-8",
    )
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "model"
    job = WorkerJob(train_argv(phantom_data, out, epochs=50), python=str(launcher))
    stop_dir = Path(job.stop_file).parent
    assert stop_dir.is_dir() and not Path(job.stop_file).exists()
    follow(job, until=lambda m: m["type"] == "progress" and m.get("stage") == "train")
    assert job.running, job.stderr_tail
    pgid = job.pid
    assert len(group_members(pgid)) >= 2  # the launcher and the real interpreter
    started = time.monotonic()
    job.request_stop(grace_s=60.0)  # the kill would come only after 60 s: a clean stop must come long before
    assert time.monotonic() - started < MAX_POLL_S
    assert Path(job.stop_file).is_file()
    follow(job, timeout_s=60)
    took = time.monotonic() - started
    assert job.returncode == 3, job.stderr_tail  # the real child stopped cleanly; a kill would give a negative code
    assert took < 30, f"the clean stop took {took:.1f} s"
    assert not job.stop_deadline_passed and not job._killed
    assert job.error["error_type"] == "CancelledError" and "stopped on request" in job.error["message"]
    assert job.result is None and not out.exists()
    state = json.loads((checkpoint_dir_for(out) / "state.json").read_text())
    assert state["partial_epoch"] is True
    assert not stop_dir.exists()  # the private folder went with the job
    assert group_members(pgid) == []


def test_the_stop_folder_is_removed_once_the_job_ended_on_every_path(tmp_path):
    for end in ("poll", "wait", "cancel", "kill"):
        job = WorkerJob(["no-such-command"])  # argparse rejects it and the child exits at once
        stop_dir = Path(job.stop_file).parent
        assert stop_dir.is_dir() and stop_dir.name.startswith("medanalysis-stop-")
        if os.name == "posix":
            assert stat.S_IMODE(stop_dir.stat().st_mode) == 0o700  # private: only this user can create the file
        if end == "poll":
            follow(job, timeout_s=60)
        elif end == "wait":
            assert job.wait(timeout=60) == 2
        elif end == "cancel":
            assert job.cancel(grace_s=60.0) == 2  # the stop file may be created or not: the folder still goes
        else:
            job.kill()
        assert not stop_dir.exists(), end
        job.request_stop()  # after the end: nothing is created and nothing raises
        job.poll()
        assert not stop_dir.exists(), end


def test_the_child_only_looks_at_the_stop_file_and_consumes_both_variables(tmp_path):
    stop_dir = tmp_path / "private"
    stop_dir.mkdir()
    stop_file = stop_dir / "stop"
    script = (
        "import os, sys\n"
        "from MedAnalysisLib.progress import StopFlag\n"
        "flag = StopFlag().install()\n"
        f"print(os.environ.get({STOP_FILE_ENV!r}), os.environ.get({STOP_ON_STDIN_ENV!r}), flush=True)\n"
        "flag._event.wait(60)\n"
        "print(flag.reason, flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": PACKAGE_PARENT, STOP_FILE_ENV: str(stop_file), STOP_ON_STDIN_ENV: "1"}
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert child.stdout.readline().split() == ["None", "None"]  # grandchildren watch nothing
        assert child.poll() is None  # stdin at end of file is not a stop
        time.sleep(0.5)
        assert child.poll() is None and not stop_file.exists()  # the child never creates the file
        stop_file.write_bytes(b"")
        assert child.stdout.readline().strip() == "stopped on request"
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()
    assert stop_file.is_file() and stop_file.read_bytes() == b""  # left as it was: neither deleted nor written
