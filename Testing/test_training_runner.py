"""Training runs end to end: bundle and training log, progress lines, seeded reproducibility, cooperative stop with
a checkpoint, and resume after a run is killed (SIGKILL) or cancelled (SIGTERM) through the command line."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers_models import TINY_UNET, segmentation_arrays, tiny_plan

from MedAnalysisLib.bundles import load_bundle
from MedAnalysisLib.errors import CancelledError, InputError
from MedAnalysisLib.models import build_model
from MedAnalysisLib.progress import Reporter, StopFlag
from MedAnalysisLib.training import checkpoint_dir_for, train, train_on_arrays

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _run_arrays(out: Path, *, seed: int = 0, epochs: int = 1, reporter: Reporter | None = None,
                stop_flag: StopFlag | None = None, validation: bool = True, tensorboard: Path | None = None,
                **hparams: object) -> object:
    x, y = segmentation_arrays(4)
    return train_on_arrays(
        x, y, family="unet3d", out=out, plan=tiny_plan(), labels=["background", "cube"], epochs=epochs,
        validation=(x[:2], y[:2]) if validation else None, hparams={**TINY_UNET, **hparams}, batch_size=2, seed=seed,
        reporter=reporter, stop_flag=stop_flag, tensorboard_dir=str(tensorboard) if tensorboard else None,
    )


def test_training_writes_a_reproducible_bundle_with_log_provenance_and_progress(tmp_path: Path) -> None:
    stream = io.StringIO()
    result = _run_arrays(tmp_path / "model.zip", reporter=Reporter("jsonl", stream=stream))
    assert result.bundle_path == tmp_path / "model.zip"
    assert not checkpoint_dir_for(tmp_path / "model.zip").exists()
    loaded = load_bundle(result.bundle_path)
    training = loaded.config.training
    assert training["epochs_completed"] == 1 and training["best_epoch"] == 1
    assert training["monitor"] == "val_mean_dice"
    assert set(training["final_metrics"]) >= {"loss", "mean_dice", "val_loss", "val_mean_dice"}
    assert training["library_versions"]["keras"].startswith("3.")
    assert "CPU" in training["device"]
    assert training["intra_op_threads"] >= 1 and training["deterministic"] is False
    from MedAnalysisLib.bundles import bundle_summary

    assert f"intra_op_threads={training['intra_op_threads']}" in bundle_summary(loaded.config)
    rows = list(csv.DictReader(io.StringIO((loaded.directory / "training_log.csv").read_text())))
    assert [row["epoch"] for row in rows] == ["1"]
    assert float(rows[0]["val_mean_dice"]) == pytest.approx(result.metrics["val_mean_dice"])
    x = segmentation_arrays(1, seed=5)[0]
    probs = loaded.model(x, training=False).numpy()
    assert probs.shape == (1, 16, 16, 16, 2)
    # Seeded: the same run again gives exactly the same weights (a different seed gives other initial weights).
    again = load_bundle(_run_arrays(tmp_path / "again", reporter=Reporter("none")).bundle_path)
    for a, b in zip(loaded.model.get_weights(), again.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    keras.utils.set_random_seed(4)
    other = build_model("unet3d", n_classes=2, **TINY_UNET).get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(other, again.model.get_weights(), strict=True) if a.size > 1)
    messages = [json.loads(line) for line in stream.getvalue().splitlines()]
    progress = [m for m in messages if m["type"] == "progress" and m["stage"] == "train"]
    assert [m["step"] for m in progress] == [1, 2] and progress[-1]["fraction"] == 1.0
    assert all("eta_s" in m and m["loss"] > 0 for m in progress)
    metrics = [m for m in messages if m["type"] == "metrics"]
    assert metrics[0]["epoch"] == 1 and "val_mean_dice" in metrics[0]["metrics"]
    assert any(m["type"] == "log" and "training on CPU" in m["message"] for m in messages)
    loaded.cleanup()


def test_stop_request_saves_a_checkpoint_and_the_next_run_resumes(tmp_path: Path) -> None:
    """Also trains with deep supervision: the auxiliary output gets downsampled labels, the bundle keeps one."""
    out = tmp_path / "model"
    flag = StopFlag()
    flag.set("test stop")
    with pytest.raises(CancelledError, match="checkpoint saved"):
        _run_arrays(out, epochs=2, stop_flag=flag, deep_supervision=True)
    checkpoint = checkpoint_dir_for(out)
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["partial_epoch"] is True and state["epochs_completed"] == 0
    assert not out.exists()
    stream = io.StringIO()
    has_tensorboard = importlib.util.find_spec("tensorboard") is not None
    if not has_tensorboard:  # the option fails up front with a clear message, before any work
        with pytest.raises(InputError, match="pip install tensorboard"):
            _run_arrays(out, epochs=2, tensorboard=tmp_path / "tb", deep_supervision=True)
    result = _run_arrays(out, epochs=2, reporter=Reporter("jsonl", stream=stream),
                         tensorboard=tmp_path / "tb" if has_tensorboard else None, deep_supervision=True)
    assert len(result.history["loss"]) == 2
    assert {"val_mean_dice", "mean_dice", "loss"} <= set(result.metrics)
    loaded = load_bundle(out)
    assert loaded.config.hparams["deep_supervision"] is True and len(loaded.model.outputs) == 1
    assert bool(list((tmp_path / "tb").rglob("events.out.tfevents.*"))) == has_tensorboard
    assert any("resuming from the checkpoint after epoch 0" in line for line in stream.getvalue().splitlines())
    assert not checkpoint.exists()


def test_train_rejects_a_family_of_the_other_task(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="expected a segmentation task for model 'unet3d'"):
        train(tmp_path, task="classification", family="unet3d", out=tmp_path / "b", epochs=1)


def _cli(data: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "MedAnalysisLib", "train", str(data), "--task", "segmentation", "--model", "unet3d",
            "--out", str(out), "--epochs", str(epochs), "--steps-per-epoch", "2", "--workers", "1",
            "--set", "patch_size=16,16,16", "--set", "batch_size=2", "--hparam", "filters=[4,8]",
            "--progress", "jsonl"]


def _read_until(process: subprocess.Popen, predicate: object, timeout: float = 240) -> list[dict]:
    """JSON lines from the child until ``predicate(message)`` holds (or the child ends)."""
    messages = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        message = json.loads(line)
        messages.append(message)
        if predicate(message):  # type: ignore[operator]
            return messages
    raise AssertionError(f"the condition never held; got {messages[-3:]}")


@pytest.mark.slow
def test_killed_and_cancelled_cli_runs_resume_to_the_same_bundle_format(tmp_path: Path) -> None:
    from MedAnalysisLib.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", 4, seed=1, shape=(16, 20, 20))
    out = tmp_path / "model"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT_ROOT))
    popen = dict(cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    # 1. Killed without warning while epoch 2 runs: the epoch-1 checkpoint survives.
    first = subprocess.Popen(_cli(data, out, 3), **popen)
    try:
        _read_until(first, lambda m: m["type"] == "progress" and m.get("stage") == "train" and m.get("epoch") == 2)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=60)
    state = json.loads((checkpoint_dir_for(out) / "state.json").read_text())
    assert state["epochs_completed"] >= 1

    # 2. The same command resumes; SIGTERM stops it at a batch boundary with a fresh checkpoint and exit code 3.
    second = subprocess.Popen(_cli(data, out, 3), **popen)
    try:
        seen = _read_until(second, lambda m: m["type"] == "progress" and m.get("stage") == "train")
        assert any(m["type"] == "log" and "resuming from the checkpoint after epoch" in m["message"] for m in seen)
        second.send_signal(signal.SIGTERM)
        rest = [json.loads(line) for line in second.stdout]  # type: ignore[union-attr]
    finally:
        second.wait(timeout=120)
    assert second.returncode == 3
    assert rest[-1]["type"] == "error" and rest[-1]["error_type"] == "CancelledError"
    assert json.loads((checkpoint_dir_for(out) / "state.json").read_text())["partial_epoch"] is True
    assert not out.exists()

    # 3. A third run (here through the Python API with the same settings) finishes all three epochs.
    result = train(data, task="segmentation", family="unet3d", out=out, epochs=3, steps_per_epoch=2, workers=1,
                   plan_overrides={"patch_size": [16, 16, 16], "batch_size": 2}, hparams={"filters": [4, 8]})
    rows = list(csv.DictReader(io.StringIO((out / "training_log.csv").read_text())))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert load_bundle(result.bundle_path).config.training["epochs_completed"] == 3
    assert not checkpoint_dir_for(out).exists()
