"""Distributed training on CPU: MirroredStrategy over two logical CPU devices, and MultiWorkerMirroredStrategy with
two worker processes on 127.0.0.1. Each run is a separate process (device configuration and cluster setup are
per process) and must produce the ordinary bundle format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_models import free_port

from MedAnalysisLib.bundles import load_bundle

HELPER = Path(__file__).with_name("helpers_models.py")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT_ROOT))
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _check_bundle(path: Path, replicas: int) -> None:
    loaded = load_bundle(path)
    assert loaded.config.family == "unet3d"
    assert loaded.config.training["replicas"] == replicas
    assert (loaded.directory / "training_log.csv").is_file()
    loaded.cleanup()


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpu_devices(tmp_path: Path) -> None:
    out = tmp_path / "mirrored"
    run = subprocess.run([sys.executable, str(HELPER), "mirrored", str(out)], capture_output=True, text=True,
                         env=_env(), cwd=PROJECT_ROOT, timeout=TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    _check_bundle(out, 2)


@pytest.mark.slow
def test_two_workers_on_localhost_write_one_bundle(tmp_path: Path) -> None:
    out = tmp_path / "multiworker"
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen([sys.executable, str(HELPER), "worker", str(out)], env=_env(TF_CONFIG=tf_config),
                                          cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT_S))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    chief, other = (json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs)
    assert chief["bundle"] == str(out) and chief["replicas"] == 2
    # The second worker trains in lock-step but writes nothing next to the chief's bundle.
    assert other["bundle"] != str(out) and not Path(other["bundle"]).exists()
    assert chief["metrics"]["loss"] == pytest.approx(other["metrics"]["loss"], rel=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multiworker"]
    _check_bundle(out, 2)
