"""Shared by the demo tests: one quick demo run per test session, through the real command line.

``medanalysis demo --quick`` is the most expensive thing the demo tests do (about a minute), so the run is made once
and its output folder and printed text are shared by ``test_demo.py`` and ``test_readme_commands.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoRun:
    """A finished ``medanalysis demo --quick`` run: its working folder, output folder and what it printed."""

    workdir: Path
    out: Path
    returncode: int
    stdout: str
    stderr: str


_RUNS: dict[Path, DemoRun] = {}


def command_environment() -> dict[str, str]:
    """The environment the CLI runs in: quiet TensorFlow, the project importable from any working folder."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def quick_demo(base: Path) -> DemoRun:
    """Run ``medanalysis demo --quick --out demo-output`` in ``base`` (once per session) and return the run."""
    base = Path(base)
    if base not in _RUNS:
        base.mkdir(parents=True, exist_ok=True)
        completed = subprocess.run(
            [sys.executable, "-m", "MedAnalysisLib", "demo", "--quick", "--out", "demo-output", "--progress", "log"],
            cwd=base,
            env=command_environment(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        _RUNS[base] = DemoRun(base, base / "demo-output", completed.returncode, completed.stdout, completed.stderr)
    return _RUNS[base]
