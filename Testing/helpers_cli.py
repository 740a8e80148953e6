"""Running the real command line in a child and seeing what it imported (shared by the CLI tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The child: the real ``MedAnalysisLib.cli.main``; at exit it writes the TensorFlow and Keras modules it imported.
WRAPPER = """
import atexit, json, os, sys

def _report():
    heavy = sorted(n for n in sys.modules if n.split(".")[0] in ("tensorflow", "keras"))
    with open(os.environ["MEDANALYSIS_TEST_IMPORTS"], "w") as handle:
        json.dump(heavy, handle)

atexit.register(_report)
from MedAnalysisLib.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: The child: the real ``MedAnalysisLib.cli.main``; at exit it writes the TensorFlow and Keras modules it imported.
def run_cli(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list]:
    """Run ``medanalysis *argv`` in a child; return the finished process and the TensorFlow/Keras modules it had
    imported when it exited."""
    wrapper = tmp_path / "cli_wrapper.py"
    wrapper.write_text(WRAPPER)
    imports = tmp_path / f"imports-{len(list(tmp_path.glob('imports-*')))}.json"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "MEDANALYSIS_TEST_IMPORTS": str(imports), **(env or {})}
    completed = subprocess.run([sys.executable, str(wrapper), *argv], capture_output=True, text=True,
                               env=environment, timeout=300, check=False)
    return completed, json.loads(imports.read_text()) if imports.is_file() else ["<no report>"]
