"""A background ``medanalysis`` run and what the logic needs to bring its outputs into the scene.

Plain Python (no Qt). The panel's timer calls :meth:`MedAnalysisJob.poll`; Cancel calls
:meth:`MedAnalysisJob.requestStop`, which never blocks: the child is asked to stop through its stdin (the same way on
every platform), and a later ``poll`` kills the whole process tree if the child has not stopped by the deadline.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from MedAnalysisLib.worker import WorkerJob

#: Seconds a job may take to stop cleanly before its process tree is killed: training saves a checkpoint first.
STOP_GRACE_S = {"train": 15.0}
DEFAULT_STOP_GRACE_S = 5.0


class MedAnalysisJob:
    """One background run.

    Attributes:
        kind: "segment", "classify", "train" or "evaluate".
        worker: The :class:`MedAnalysisLib.worker.WorkerJob` (the child process).
        context: What :meth:`SceneLogic.finishJob` needs (input nodes, output nodes, ``scratch`` folder).
    """

    def __init__(self, kind: str, worker: WorkerJob, context: dict[str, Any]) -> None:
        self.kind = kind
        self.worker = worker
        self.context = context

    @property
    def running(self) -> bool:
        return self.worker.running

    @property
    def stopRequested(self) -> bool:
        return self.worker.cancelled

    def poll(self) -> list[dict[str, Any]]:
        """New messages from the child; never blocks (kills the child once a requested stop is overdue)."""
        return self.worker.poll()

    def requestStop(self, grace_s: float | None = None) -> None:
        """Ask the child to stop at its next safe point; never blocks. Idempotent."""
        self.worker.request_stop(STOP_GRACE_S.get(self.kind, DEFAULT_STOP_GRACE_S) if grace_s is None else grace_s)

    def cancel(self, grace_s: float | None = None) -> int | None:
        """Stop and wait (for scripts, tests and module shutdown): returns the child's exit code."""
        return self.worker.cancel(STOP_GRACE_S.get(self.kind, DEFAULT_STOP_GRACE_S) if grace_s is None else grace_s)

    def wait(self, timeout: float | None = None) -> int:
        code = self.worker.wait(timeout)
        self.worker.poll()
        return code

    def discardScratch(self) -> None:
        """Remove the job's scratch folder (inputs written for the child and its outputs), if it has one."""
        scratch = self.context.get("scratch")
        if scratch is not None:
            shutil.rmtree(Path(scratch), ignore_errors=True)
