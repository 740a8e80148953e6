"""The training engine: devices, model, loss and metrics, callbacks, resume, and the bundle at the end.

:func:`fit_and_bundle` is shared by :func:`MedAnalysisLib.training.train` (datasets of scans) and
:func:`train_on_arrays` (already prepared numpy arrays). A run

1. seeds everything (``keras.utils.set_random_seed``) and chooses devices (:func:`setup_devices`);
2. builds the model from code inside the distribution strategy's scope and compiles it (Adam, polynomial
   learning-rate decay as nnU-Net, ``jit_compile=False`` on CPU);
3. resumes from ``<out>.checkpoint/`` when it holds a checkpoint of the same run (same model, hyper-parameters,
   plan, labels, data and seed);
4. trains with per-batch progress, per-epoch metrics, best-model tracking on the validation metric, early stopping
   and an atomic checkpoint after every epoch; a stop request ends the epoch at the next batch boundary, saves the
   checkpoint and raises :class:`~MedAnalysisLib.errors.CancelledError`;
5. writes the bundle with the best weights, the training log (``training_log.csv``) and the provenance, then
   removes the checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib.bundle import TRAINING_LOG_FILE, BundleConfig, LabelInfo, save_bundle
from MedAnalysisLib.errors import CancelledError, InputError
from MedAnalysisLib.progress import Reporter, StopFlag

#: Default validation metric per (task, output kind): name in the Keras logs and whether higher is better.
SEGMENTATION_MONITOR = ("val_mean_dice", "max")
BINARY_MONITOR = ("val_auc", "max")
MULTICLASS_MONITOR = ("val_accuracy", "max")
#: Monitor name (and mode) that keeps the final epoch's weights instead of choosing one on validation data.
LAST_EPOCH = "last"


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        bundle_path: The bundle written (folder or .zip).
        history: Metric name -> one value per completed epoch (also in the bundle's ``training_log.csv``).
        metrics: Metrics of the epoch whose weights were kept (the best on the monitored validation metric).
        best_epoch: 1-based epoch of the kept weights.
        config: The bundle's configuration.
    """

    bundle_path: Path
    history: dict[str, list[float]]
    metrics: dict[str, float]
    best_epoch: int | None = None
    config: BundleConfig | None = None


@dataclass
class FitSpec:
    """Everything :func:`fit_and_bundle` needs besides the data.

    ``make_feeders(setup)`` returns ``(train_feeder, val_feeder_or_None)`` (PyDatasets), called after the devices
    are set up so that batch sizes can follow the number of replicas.
    """

    family: str
    task: str
    hparams: dict[str, Any]
    plan: Any
    labels: tuple[LabelInfo, ...]
    input_spec: dict[str, Any]
    make_feeders: Callable[[Any], tuple[Any, Any]]
    data_signature: str
    epochs: int
    name: str
    learning_rate: float = 1e-3
    patience: int | None = None
    loss: str | None = None
    seed: int = 0
    mixed_precision: str = "auto"
    strategy: str = "auto"
    tensorboard_dir: str | None = None
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    inference_defaults: dict[str, Any] | None = None
    #: Validation metric name and ``"max"``/``"min"`` for best-epoch selection and early stopping, overriding the
    #: task's default (e.g. ``("val_slices_loss", "min")`` when a sequence model's scan targets are all one class).
    monitor: tuple[str, str] | None = None


def checkpoint_dir_for(out: Path) -> Path:
    """Where the resume checkpoint of a run writing ``out`` lives: ``<out without .zip>.checkpoint``."""
    base = out.with_suffix("") if out.suffix.lower() == ".zip" else out
    return base.with_name(base.name + ".checkpoint")


def _library_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    from MedAnalysisLib import __version__

    return {"medanalysis": __version__, "keras": keras.__version__, "tensorflow": tf.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _compile(family: str, task: str, n_classes: int, training_model: Any, inference_model: Any, *,
             loss_name: str | None, learning_rate: float, jit_compile: bool | str) -> tuple[str, str]:
    """Compile the training model; return the monitored metric and its mode."""
    import keras

    from MedAnalysisLib.losses import classification_metrics, get_loss, segmentation_metrics

    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    if task == "segmentation":
        n_outputs = len(training_model.outputs)
        loss = get_loss(loss_name or "dice_ce", n_classes=n_classes)
        if n_outputs == 1:
            training_model.compile(optimizer=optimizer, loss=loss, metrics=segmentation_metrics(n_classes),
                                   jit_compile=jit_compile)
            return SEGMENTATION_MONITOR
        weights = np.array([0.5**n for n in range(n_outputs)])
        weights = (weights / weights.sum()).tolist()
        main_name = training_model.output_names[0]
        training_model.compile(
            optimizer=optimizer,
            loss=[get_loss(loss_name or "dice_ce", n_classes=n_classes) for _ in range(n_outputs)],
            loss_weights=weights,
            metrics=[segmentation_metrics(n_classes)] + [[] for _ in range(n_outputs - 1)],
            jit_compile=jit_compile,
        )
        return f"val_{main_name}_mean_dice", "max"
    binary = n_classes == 2
    default_loss = "bce" if binary else "ce"
    if family == "cnn_rnn":
        training_model.compile(
            optimizer=optimizer,
            loss={"slices": get_loss(loss_name or default_loss), "scan": get_loss(loss_name or default_loss)},
            metrics={"slices": classification_metrics(n_classes)[:2] if binary else classification_metrics(n_classes),
                     "scan": classification_metrics(n_classes)},
            jit_compile=jit_compile,
        )
        return ("val_scan_auc", "max") if binary else ("val_scan_accuracy", "max")
    training_model.compile(optimizer=optimizer, loss=get_loss(loss_name or default_loss),
                           metrics=classification_metrics(n_classes), jit_compile=jit_compile)
    return BINARY_MONITOR if binary else MULTICLASS_MONITOR


def _signature(spec: FitSpec) -> str:
    plan = spec.plan.to_dict() if hasattr(spec.plan, "to_dict") else spec.plan
    payload = {"family": spec.family, "task": spec.task, "hparams": spec.hparams, "plan": plan,
               "labels": [label.to_dict() for label in spec.labels], "data": spec.data_signature, "seed": spec.seed,
               "loss": spec.loss, "augment": spec.provenance.get("augment")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _history_columns(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "epoch":
                columns.setdefault(key, []).append(value)
    return columns


def fit_and_bundle(
    spec: FitSpec,
    out: str | Path,
    *,
    reporter: Reporter | None = None,
    stop_flag: StopFlag | None = None,
    resume: bool = True,
) -> TrainResult:
    """Run training as described in the module docstring and write the bundle to ``out``."""
    import keras

    from MedAnalysisLib.models import build_training_model
    from MedAnalysisLib.training.callbacks import (
        CheckpointCallback,
        ProgressCallback,
        load_checkpoint_state,
        restore_checkpoint,
    )
    from MedAnalysisLib.training.device import setup_devices

    reporter = reporter or Reporter("none")
    out = Path(out)
    if spec.epochs < 1:
        raise InputError(f"expected epochs >= 1, got {spec.epochs}")
    if spec.tensorboard_dir and importlib.util.find_spec("tensorboard") is None:
        raise InputError("expected the tensorboard package for TensorBoard logs (pip install tensorboard), it is not "
                         "installed; the CSV log (training_log.csv in the bundle) is written in every case")
    keras.utils.set_random_seed(spec.seed)
    setup = setup_devices(mixed_precision=spec.mixed_precision, strategy=spec.strategy, reporter=reporter)
    signature = _signature(spec)
    checkpoint_dir = checkpoint_dir_for(out)
    scratch: Path | None = None
    if not setup.is_chief:  # other workers keep their (identical) checkpoints out of the chief's way
        scratch = Path(tempfile.mkdtemp(prefix=f"medanalysis-worker{setup.worker_index}-"))
        checkpoint_dir = scratch / "checkpoint"
    state = load_checkpoint_state(checkpoint_dir, signature) if resume else None
    if not resume and checkpoint_dir.exists() and setup.is_chief:
        shutil.rmtree(checkpoint_dir)
    if state is not None and (state.get("early_stopped") or state["epochs_completed"] >= spec.epochs):
        reporter.log(f"checkpoint at {checkpoint_dir} has finished training; writing its bundle")
    n_classes = len(spec.labels)
    try:
        with setup.strategy.scope():
            inference_model, training_model = build_training_model(spec.family, **spec.hparams)
            monitor, mode = _compile(spec.family, spec.task, n_classes, training_model, inference_model,
                                     loss_name=spec.loss, learning_rate=spec.learning_rate,
                                     jit_compile=setup.jit_compile)
            if spec.monitor is not None:
                monitor, mode = spec.monitor
            if state is not None:
                restore_checkpoint(checkpoint_dir, training_model)
        initial_epoch = int(state["epochs_completed"]) if state else 0
        if state is not None:
            reporter.log(f"resuming from the checkpoint after epoch {initial_epoch} ({checkpoint_dir})")
        train_feeder, val_feeder = spec.make_feeders(setup)
        steps = len(train_feeder)
        progress = ProgressCallback(reporter, stop_flag, spec.epochs, steps, initial_epoch)
        checkpoint = CheckpointCallback(checkpoint_dir, inference_model, monitor=monitor, mode=mode,
                                        patience=spec.patience, progress=progress, signature=signature, state=state)
        base_lr, epochs = spec.learning_rate, spec.epochs
        callbacks: list[Any] = [
            keras.callbacks.LearningRateScheduler(lambda epoch: base_lr * (1 - epoch / epochs) ** 0.9),
            progress,
            checkpoint,
        ]
        if spec.tensorboard_dir and setup.is_chief:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=spec.tensorboard_dir, write_graph=False))
        finished = state is not None and (state.get("early_stopped") or initial_epoch >= spec.epochs)
        started = time.monotonic()
        if not finished:
            if hasattr(train_feeder, "epoch"):
                train_feeder.epoch = initial_epoch
            multi_worker = setup.multi_worker
            if multi_worker:
                # Keras 3 reduces a first distributed batch for its symbolic build, which fails for
                # MultiWorkerMirroredStrategy (keras-team/keras#20585); leaving the strategy to the scope below
                # defers the build to the first traced step, which runs under the same strategy.
                training_model._distribute_strategy = None
                _patch_keras_multi_worker_reduction()
            with setup.strategy.scope() if multi_worker else contextlib.nullcontext():
                training_model.fit(train_feeder, validation_data=val_feeder, epochs=spec.epochs,
                                   initial_epoch=initial_epoch, callbacks=callbacks, verbose=0)
        if progress.stopped:
            checkpoint.save(partial=True)
            done = checkpoint.state["epochs_completed"]
            raise CancelledError(
                f"training stopped on request during epoch {done + 1}; checkpoint saved in {checkpoint_dir} (run "
                "the same command again to resume)"
            )
        history_rows = checkpoint.state["history"]
        best_epoch = checkpoint.state.get("best_epoch")
        inference_model.load_weights(str(checkpoint_dir / "best.weights.h5"))
        best_row = next((row for row in history_rows if row["epoch"] == best_epoch), history_rows[-1])
        metrics = {k: v for k, v in best_row.items() if k not in ("epoch", "learning_rate")}
        if spec.task == "segmentation" and len(training_model.outputs) > 1:
            # Deep supervision prefixes the main output's metrics with its name; the card shows plain names.
            main = f"{training_model.output_names[0]}_"
            metrics = {k.replace(main, ""): v for k, v in metrics.items() if main in k or k in ("loss", "val_loss")}
        from MedAnalysisLib.training.callbacks import history_csv

        provenance = {
            **spec.provenance,
            "epochs": spec.epochs,
            "epochs_completed": checkpoint.state["epochs_completed"],
            "early_stopped": bool(checkpoint.state.get("early_stopped")),
            "best_epoch": best_epoch,
            "monitor": checkpoint.state.get("monitor", monitor),
            "final_metrics": metrics,
            "seed": spec.seed,
            "learning_rate": spec.learning_rate,
            "optimizer": "adam, polynomial decay 0.9",
            "loss": spec.loss or ("dice_ce" if spec.task == "segmentation" else "bce" if n_classes == 2 else "ce"),
            "device": setup.description,
            "replicas": setup.n_replicas,
            "precision": setup.precision,
            "library_versions": _library_versions(),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "train_seconds_this_session": round(time.monotonic() - started, 2),
        }
        config = BundleConfig(
            name=spec.name,
            task=spec.task,
            family=spec.family,
            hparams=spec.hparams,
            plan=spec.plan,
            labels=spec.labels,
            input=spec.input_spec,
            inference=spec.inference_defaults or {},
            training=provenance,
            description=spec.description,
        )
        target = out if setup.is_chief else (scratch or Path(tempfile.mkdtemp())) / out.name
        save_bundle(target, inference_model, config,
                    extra_files={TRAINING_LOG_FILE: history_csv(history_rows).encode("utf-8")})
        if setup.is_chief:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            reporter.log(f"bundle written to {target} (best epoch {best_epoch}, {provenance['monitor']})")
        return TrainResult(target, _history_columns(history_rows), metrics, best_epoch, config)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(Exception):
            keras.mixed_precision.set_global_policy("float32")


def _patch_keras_multi_worker_reduction() -> None:
    """Work around Keras 3 reducing per-step scalar logs across workers with ``axis=0`` (an error for scalars).

    Under MultiWorkerMirroredStrategy each worker holds one replica; the per-step logs are then reduced over the
    local replica only (the epoch-end metrics Keras reports are read from synchronised metric variables and stay
    global). Applied only for multi-worker runs, and only while Keras still has the failing helper.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if hasattr(tf_trainer, "_collective_all_reduce_multi_worker"):
        tf_trainer._collective_all_reduce_multi_worker = lambda strategy: False


def _array_signature(*arrays: Any) -> str:
    digest = hashlib.sha256()
    for value in arrays:
        if value is None:
            continue
        items = sorted(value.items()) if isinstance(value, Mapping) else [("", value)]
        for key, array in items:
            array = np.ascontiguousarray(array)
            digest.update(f"{key}{array.shape}{array.dtype}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def train_on_arrays(
    x: Any,
    y: Any,
    *,
    family: str,
    out: str | Path,
    plan: Any,
    labels: Sequence[LabelInfo] | Mapping[int, str] | Sequence[str],
    epochs: int = 1,
    validation: tuple[Any, Any] | None = None,
    hparams: dict[str, Any] | None = None,
    batch_size: int = 2,
    channels: Sequence[Mapping[str, str]] | None = None,
    learning_rate: float = 1e-3,
    patience: int | None = None,
    loss: str | None = None,
    seed: int = 0,
    workers: int = 1,
    mixed_precision: str = "auto",
    strategy: str = "auto",
    tensorboard_dir: str | None = None,
    name: str | None = None,
    reporter: Reporter | None = None,
    stop_flag: StopFlag | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train on prepared arrays (already preprocessed with ``plan``) and write a bundle.

    Array layouts (channels-last, float32 images):

    * ``unet3d``: ``x (N, k, j, i, C)`` patches, ``y (N, k, j, i)`` integer labels;
    * ``unet2d``: ``x (N, H, W, C)``, ``y (N, H, W)``;
    * ``slice_cnn``: ``x (N, H, W, C)``, ``y (N,)`` class indices; ``cnn3d``: ``x (N, k, j, i, C)``, ``y (N,)``;
    * ``cnn_rnn``: ``x = {"slices": (N, S, H, W, C), "mask": (N, S) bool}``, ``y = {"slices": (N, S), "scan":
      (N,)}``.

    Args:
        x, y: Training arrays.
        family: Model family.
        out: Bundle folder or .zip to write.
        plan: The :class:`~MedAnalysisLib.preprocessing.plan.Plan` the arrays were prepared with (stored in the
            bundle so inference prepares scans the same way).
        labels: LabelInfo per class, or names (``{value: name}`` or a list for values 0, 1, ...).
        epochs: Maximum epochs.
        validation: ``(x_val, y_val)`` in the same layout, or None (then the training loss is monitored).
        hparams: Model hyper-parameters (``n_classes`` and channel/shape defaults are filled in).
        batch_size: Global batch size (split across replicas).
        channels: ``[{"name", "modality"}]`` per input channel (default from the plan).
        seed: Seed of initialisation and shuffling.
        Other arguments: as :func:`MedAnalysisLib.training.train`.
    """
    from MedAnalysisLib.bundle import default_labels
    from MedAnalysisLib.models import family_task
    from MedAnalysisLib.training.feeders import ArrayFeeder

    task = family_task(family)
    label_infos = _as_labels(labels, default_labels)
    hparams = _default_hparams(family, dict(hparams or {}), len(label_infos), _array_shape(x, family), plan)
    transform = _batch_transform(family, hparams)

    def split(xv: Any, yv: Any) -> tuple[Any, Any, Any]:
        if family == "cnn_rnn":
            mask = np.asarray(xv["mask"], dtype=bool)
            weights = {"slices": mask.astype("float32"), "scan": np.ones(len(mask), "float32")}
            targets = {"slices": np.asarray(yv["slices"], "float32")[..., None],
                       "scan": np.asarray(yv["scan"], "float32")[:, None]}
            if len(label_infos) > 2:
                targets = {"slices": np.asarray(yv["slices"], "int32"), "scan": np.asarray(yv["scan"], "int32")}
            return {"slices": np.asarray(xv["slices"], "float32"), "mask": mask}, targets, weights
        if task == "classification":
            yv = np.asarray(yv)
            yv = yv.reshape(-1, 1).astype("float32") if len(label_infos) == 2 else yv.astype("int32")
            return np.asarray(xv, "float32"), yv, None
        return np.asarray(xv, "float32"), np.asarray(yv, "int32"), None

    def make_feeders(setup: Any) -> tuple[Any, Any]:
        tx, ty, tw = split(x, y)
        train_feeder = ArrayFeeder(tx, ty, batch_size, sample_weight=tw, shuffle=True, seed=seed,
                                   transform=transform, workers=workers)
        val_feeder = None
        if validation is not None:
            vx, vy, vw = split(*validation)
            val_feeder = ArrayFeeder(vx, vy, batch_size, sample_weight=vw, shuffle=False, transform=transform)
        return train_feeder, val_feeder

    spec = FitSpec(
        family=family, task=task, hparams=hparams, plan=plan, labels=label_infos,
        input_spec={"channels": [dict(c) for c in (channels or _channels_from_plan(plan))], "layout": "channels_last",
                    "dtype": "float32"},
        make_feeders=make_feeders, data_signature=_array_signature(x, y, *(validation or ())), epochs=epochs,
        name=name or f"{family}-{task}", learning_rate=learning_rate, patience=patience, loss=loss, seed=seed,
        mixed_precision=mixed_precision, strategy=strategy, tensorboard_dir=tensorboard_dir,
        provenance={"data": "arrays", "n_train": _array_len(x), "n_val": _array_len(validation[0]) if validation else 0},
    )
    return fit_and_bundle(spec, out, reporter=reporter, stop_flag=stop_flag, resume=resume)


def _array_len(x: Any) -> int:
    return len(x["slices"]) if isinstance(x, Mapping) else len(x)


def _array_shape(x: Any, family: str) -> tuple[int, ...]:
    return tuple(np.shape(x["slices"] if isinstance(x, Mapping) else x))


def _as_labels(labels: Any, default_labels: Callable[..., tuple[LabelInfo, ...]]) -> tuple[LabelInfo, ...]:
    if isinstance(labels, Mapping):
        return default_labels(dict(labels))
    labels = list(labels)
    if labels and all(isinstance(label, LabelInfo) for label in labels):
        return tuple(labels)
    return default_labels([str(label) for label in labels])


def _channels_from_plan(plan: Any) -> list[dict[str, str]]:
    return [{"name": name, "modality": plan.modality} for name in plan.channel_names]


def _default_hparams(family: str, hparams: dict[str, Any], n_classes: int, shape: tuple[int, ...],
                     plan: Any) -> dict[str, Any]:
    """Fill in ``n_classes``, channel counts and sizes from the data and the plan (explicit values win)."""
    hparams.setdefault("n_classes", n_classes)
    if hparams["n_classes"] != n_classes:
        raise InputError(f"expected hparams n_classes = {n_classes} (one per label), got {hparams['n_classes']}")
    channels = int(shape[-1]) if shape else plan.n_channels
    if family in ("unet3d", "unet2d"):
        hparams.setdefault("in_channels", channels)
        default_patch = list(plan.patch_size) if family == "unet3d" else list(plan.slice_shape)
        hparams.setdefault("patch_size", default_patch)
    elif family == "slice_cnn":
        hparams.setdefault("preset", "basic")
        if hparams["preset"] == "basic":
            hparams.setdefault("input_shape", [int(shape[1]), int(shape[2]), channels] if len(shape) == 4 else
                               [*plan.slice_shape, channels])
        else:
            hparams.setdefault("in_channels", channels)
    elif family == "cnn3d":
        hparams.setdefault("in_channels", channels)
    elif family == "cnn_rnn":
        hparams.setdefault("in_channels", channels)
        hparams.setdefault("slice_shape", [int(shape[2]), int(shape[3])] if len(shape) == 5 else list(plan.slice_shape))
    for key, value in list(hparams.items()):
        if isinstance(value, tuple):
            hparams[key] = list(value)
    return hparams


def _batch_transform(family: str, hparams: dict[str, Any]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]] | None:
    """Deep-supervision label pyramids for U-Nets trained with auxiliary outputs."""
    if family not in ("unet3d", "unet2d") or not hparams.get("deep_supervision"):
        return None
    from MedAnalysisLib.models.unet import deep_supervision_strides
    from MedAnalysisLib.training.feeders import downsample_labels

    strides = deep_supervision_strides(3 if family == "unet3d" else 2, **hparams)

    def transform(batch: tuple[Any, ...]) -> tuple[Any, ...]:
        x, y, *rest = batch
        return (x, downsample_labels(np.asarray(y), strides), *rest)

    return transform
