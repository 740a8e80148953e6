"""Training callbacks: progress and cancellation, and the resumable checkpoint with best-model tracking.

:class:`ProgressCallback` reports every batch (fraction, ETA, loss) and every epoch's metrics through a
:class:`~MedAnalysisLib.progress.Reporter`, and polls a :class:`~MedAnalysisLib.progress.StopFlag` after each
batch: when it is set (SIGTERM, Cancel) training stops at that batch boundary.

:class:`CheckpointCallback` keeps, in one folder that is replaced atomically after every epoch, everything a killed
run needs to continue: the training model's weights, the optimizer's variables, the best inference weights so far,
the epoch history and the early-stopping counters (``state.json``), and the CSV log. Early stopping and the
best-model choice live here too, so they survive a resume.

Both work on every Keras backend (Keras and numpy only): weights go to Keras's HDF5 files and the optimizer's
variables to a numpy archive.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np

from MedAnalysisLib.io.atomic import atomic_directory
from MedAnalysisLib.progress import Reporter, StopFlag
from MedAnalysisLib.sanitize import csv_cell
from MedAnalysisLib.training.options import LAST_EPOCH

STATE_FILE = "state.json"
LAST_WEIGHTS = "last.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
LOG_FILE = "training_log.csv"


def _float_logs(logs: dict[str, Any] | None) -> dict[str, float]:
    result = {}
    for key, value in (logs or {}).items():
        with contextlib.suppress(TypeError, ValueError):
            result[key] = float(value)
    return result


class ProgressCallback(keras.callbacks.Callback):
    """Per-batch progress with ETA, per-epoch metrics, and cooperative stop at batch boundaries."""

    def __init__(self, reporter: Reporter, stop_flag: StopFlag | None, epochs: int, steps: int, initial_epoch: int = 0):
        super().__init__()
        self.reporter = reporter
        self.stop_flag = stop_flag
        self.epochs = epochs
        self.steps = max(int(steps), 1)
        self.initial_epoch = initial_epoch
        self.epoch = initial_epoch
        self.stopped = False

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        done = (self.epoch - self.initial_epoch) * self.steps + batch + 1
        total = (self.epochs - self.initial_epoch) * self.steps
        loss = _float_logs(logs).get("loss")
        message = f"epoch {self.epoch + 1}/{self.epochs} step {batch + 1}/{self.steps}"
        if loss is not None and math.isfinite(loss):
            message += f" loss {loss:.4f}"
        self.reporter.progress("train", done, total, message, epoch=self.epoch + 1, step=batch + 1, loss=loss)
        if self.stop_flag is not None and self.stop_flag.is_set() and not self.stopped:
            self.stopped = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self.stopped:
            self.reporter.metrics("train", epoch + 1, _float_logs(logs))


class CheckpointCallback(keras.callbacks.Callback):
    """Best-model tracking, early stopping and the atomic resume checkpoint (see the module docstring).

    Args:
        directory: Checkpoint folder (replaced as a whole after every epoch).
        inference_model: The model whose weights go into the bundle (shares layers with the trained model).
        monitor: Name of the metric to watch, e.g. ``"val_mean_dice"``; if absent from the logs, ``val_loss`` is
            used, and without validation metrics the last epoch is kept. ``"last"`` always keeps the last epoch.
        mode: ``"max"`` or ``"min"``.
        patience: Epochs without improvement before stopping (``None``: never).
        progress: The :class:`ProgressCallback`, to know whether an epoch ended early because of a stop request.
        state: State restored from a previous run (see :func:`load_checkpoint_state`), or None.
        signature: Identifies the run (model, data, plan, seed); a checkpoint of another run is not resumed.
    """

    def __init__(
        self,
        directory: Path,
        inference_model: keras.Model,
        *,
        monitor: str,
        mode: str,
        patience: int | None,
        progress: ProgressCallback,
        signature: str,
        state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.inference_model = inference_model
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.progress = progress
        self.signature = signature
        self.state: dict[str, Any] = state or {
            "signature": signature, "epochs_completed": 0, "history": [], "best_value": None, "best_epoch": None,
            "monitor": monitor, "wait": 0, "early_stopped": False, "partial_epoch": False,
        }

    def _monitored(self, logs: dict[str, float]) -> tuple[str, float | None]:
        """The monitored name and value, or ``("last", None)`` when the final epoch is to be kept.

        A run without validation data keeps its final epoch: under a learning rate that decays to zero the final
        weights are the converged ones, while the epoch of lowest *training* loss is mostly the one whose
        augmented batches happened to be easy.
        """
        if self.monitor != LAST_EPOCH:
            for key in (self.monitor, "val_loss"):
                if key in logs and math.isfinite(logs[key]):
                    return key, logs[key]
        return LAST_EPOCH, None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.progress.stopped:
            return  # a partial epoch: saved by save(partial=True) after fit returns
        values = {"epoch": epoch + 1, **_float_logs(logs)}
        values["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.state["history"].append(values)
        self.state["epochs_completed"] = epoch + 1
        key, value = self._monitored(values)
        mode = self.mode if key == self.monitor else "min"
        self.state["monitor"] = key
        best = self.state["best_value"]
        improved = key == LAST_EPOCH or (
            value is not None and (best is None or (value > best if mode == "max" else value < best)))
        # Ties (e.g. a validation AUC of 1.0 on a small validation set, reached early and kept) go to the epoch with
        # the lower validation loss, so an under-trained first epoch at the ceiling is not kept for good.
        tie_loss = values.get("val_loss") if key != "val_loss" else None
        tie_loss = tie_loss if tie_loss is not None and math.isfinite(tie_loss) else None
        best_loss = self.state.get("best_val_loss")
        if not improved and value is not None and value == best and tie_loss is not None and (
                best_loss is None or tie_loss < best_loss):
            improved = True
        if improved:
            self.state["best_value"], self.state["best_epoch"], self.state["wait"] = value, epoch + 1, 0
            self.state["best_val_loss"] = tie_loss
        else:
            self.state["wait"] += 1
            if self.patience is not None and self.state["wait"] >= self.patience:
                self.state["early_stopped"] = True
                self.model.stop_training = True
        self.save(best_improved=improved)

    def save(self, *, best_improved: bool = False, partial: bool = False) -> None:
        """Write the checkpoint folder atomically (``partial``: mid-epoch, after a stop request)."""
        self.state["partial_epoch"] = partial
        previous_best = self.directory / BEST_WEIGHTS
        # On JAX the jitted steps carry the weights and optimizer state outside the variables during an epoch;
        # reading Callback.model writes them back, and the inference model shares those variables.
        model = self.model
        with atomic_directory(self.directory) as folder:
            model.save_weights(str(folder / LAST_WEIGHTS))
            variables = [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables]
            with open(folder / OPTIMIZER_FILE, "wb") as handle:
                np.savez(handle, *variables)
            if best_improved or not previous_best.exists():
                self.inference_model.save_weights(str(folder / BEST_WEIGHTS))
            else:
                try:
                    os.link(previous_best, folder / BEST_WEIGHTS)
                except OSError:
                    shutil.copyfile(previous_best, folder / BEST_WEIGHTS)
            (folder / LOG_FILE).write_text(history_csv(self.state["history"]), encoding="utf-8")
            (folder / STATE_FILE).write_text(json.dumps(self.state, indent=1, allow_nan=False), encoding="utf-8")


def history_csv(history: list[dict[str, float]]) -> str:
    """One row per epoch, columns ``epoch`` then the metrics in first-seen order.

    Cells are numbers; the column names are metric names, which a resumed run reads back from ``state.json``, so
    they pass :func:`~MedAnalysisLib.sanitize.csv_cell` like every header a spreadsheet may open.
    """
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([csv_cell(column) for column in columns])
    for row in history:
        values = {k: (repr(float(v)) if k != "epoch" else int(v)) for k, v in row.items()}
        writer.writerow([values.get(column, "") for column in columns])
    return buffer.getvalue()


def load_checkpoint_state(directory: Path, signature: str) -> dict[str, Any] | None:
    """The saved state if ``directory`` holds a complete checkpoint of the same run, else None."""
    state_path = Path(directory) / STATE_FILE
    if not state_path.is_file():
        return None
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("signature") != signature:
        return None
    if not all((Path(directory) / name).is_file() for name in (LAST_WEIGHTS, OPTIMIZER_FILE, BEST_WEIGHTS)):
        return None
    return state


def restore_checkpoint(directory: Path, model: keras.Model) -> None:
    """Load the training model's weights and the optimizer's variables saved by :class:`CheckpointCallback`."""
    directory = Path(directory)
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    model.load_weights(str(directory / LAST_WEIGHTS))
    with np.load(directory / OPTIMIZER_FILE, allow_pickle=False) as saved:
        values = [saved[f"arr_{n}"] for n in range(len(saved.files))]
    if len(values) != len(optimizer.variables):
        raise ValueError(f"expected {len(optimizer.variables)} optimizer variables in the checkpoint, got {len(values)}")
    for variable, value in zip(optimizer.variables, values, strict=True):
        variable.assign(value)
