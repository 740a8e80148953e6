"""The training engine: devices, model, loss and metrics, callbacks, resume, and the bundle at the end.

:func:`fit_and_bundle` is shared by :func:`MedAnalysisLib.training.train` (datasets of scans) and
:func:`train_on_arrays` (already prepared numpy arrays). A run, step by step:

1. :func:`_start_runtime`: checks the Keras backend (TensorFlow or JAX), sizes its thread pool
   (:func:`MedAnalysisLib.runtime.configure_threads`), turns on op determinism when asked, seeds everything
   (:func:`MedAnalysisLib.keras_compat.set_random_seed`) and chooses devices
   (:func:`~MedAnalysisLib.training.device.setup_devices`);
2. :func:`_resume_state`: finds ``<out>.checkpoint/`` when it holds a checkpoint of the same run (same model,
   hyper-parameters, plan, labels, data and seed);
3. :func:`_build_models`: builds the model from code inside the distribution strategy's scope and compiles it
   (Adam, polynomial learning-rate decay as nnU-Net, ``jit_compile=False`` on CPU with TensorFlow, XLA on JAX),
   restoring the checkpoint;
4. :func:`_fit`: trains with per-batch progress, per-epoch metrics, best-model tracking on the validation metric,
   early stopping and an atomic checkpoint after every epoch; a stop request ends the epoch at the next batch
   boundary, saves the checkpoint and raises :class:`~MedAnalysisLib.errors.CancelledError`;
5. :func:`_write_bundle`: writes the bundle with the best weights, the training log (``training_log.csv``) and the
   provenance (:func:`_provenance`), then removes the checkpoint.

The engine itself is backend-neutral (Keras, ``keras.ops`` and numpy): TensorFlow is imported only on its backend,
by the thread, determinism and device setup, so ``KERAS_BACKEND=jax`` trains on a machine without TensorFlow. The
weights files are Keras's own HDF5 format, so a bundle written on either backend loads on the other.
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

from MedAnalysisLib.bundles import TRAINING_LOG_FILE, BundleConfig, save_bundle
from MedAnalysisLib.errors import CancelledError, InputError
from MedAnalysisLib.labels import LabelInfo
from MedAnalysisLib.progress import Reporter, StopFlag
from MedAnalysisLib.training.options import LAST_EPOCH, TrainingOptions

#: Default validation metric per (task, output kind): name in the Keras logs and whether higher is better.
SEGMENTATION_MONITOR = ("val_mean_dice", "max")
BINARY_MONITOR = ("val_auc", "max")
MULTICLASS_MONITOR = ("val_accuracy", "max")
__all__ = ["LAST_EPOCH", "FitSpec", "TrainResult", "checkpoint_dir_for", "fit_and_bundle", "train_on_arrays"]


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
    """What :func:`fit_and_bundle` needs: the run's options and what the data decided.

    ``make_feeders(setup)`` returns ``(train_feeder, val_feeder_or_None)`` (PyDatasets), called after the devices
    are set up so that batch sizes can follow the number of replicas. ``hparams``, ``plan`` and ``labels`` are the
    resolved ones (filled in from the data), which the bundle stores; ``monitor`` overrides the task's default
    validation metric (e.g. ``("val_slices_loss", "min")`` when a sequence model's scan targets are all one class).
    ``card`` holds what the data says for the model card (its ``training_data``); :func:`_model_card` completes it.
    """

    options: TrainingOptions
    hparams: dict[str, Any]
    plan: Any
    labels: tuple[LabelInfo, ...]
    input_spec: dict[str, Any]
    make_feeders: Callable[[Any], tuple[Any, Any]]
    data_signature: str
    name: str
    provenance: dict[str, Any] = field(default_factory=dict)
    monitor: tuple[str, str] | None = None
    description: str = ""
    inference_defaults: dict[str, Any] | None = None
    card: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    """Where a run stands: devices, thread count, checkpoint folder, the run's signature and the models."""

    setup: Any
    threads: int
    checkpoint_dir: Path
    signature: str
    scratch: Path | None = None
    state: dict[str, Any] | None = None
    inference_model: Any = None
    training_model: Any = None
    monitor: tuple[str, str] = SEGMENTATION_MONITOR


def checkpoint_dir_for(out: Path) -> Path:
    """Where the resume checkpoint of a run writing ``out`` lives: ``<out without .zip>.checkpoint``."""
    from MedAnalysisLib.io.atomic import absolute_target

    out = absolute_target(out) if Path(out).name in ("", ".", "..") else Path(out)
    base = out.with_suffix("") if out.suffix.lower() == ".zip" else out
    return base.with_name(base.name + ".checkpoint")


def _library_versions(backend: str) -> dict[str, str]:
    """Versions of what computed the weights: MedAnalysis, Keras, the backend's libraries, numpy and Python."""
    import importlib

    import keras

    from MedAnalysisLib import __version__

    versions = {"medanalysis": __version__, "keras": keras.__version__}
    for module in ("jax", "jaxlib") if backend == "jax" else ("tensorflow",):
        versions[module] = str(importlib.import_module(module).__version__)
    return {**versions, "numpy": np.__version__, "python": platform.python_version()}


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
    options = spec.options
    plan = spec.plan.to_dict() if hasattr(spec.plan, "to_dict") else spec.plan
    payload = {"family": options.family, "task": options.task, "hparams": spec.hparams, "plan": plan,
               "labels": [label.to_dict() for label in spec.labels], "data": spec.data_signature,
               "seed": options.seed, "loss": options.loss, "augment": spec.provenance.get("augment")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _history_columns(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "epoch":
                columns.setdefault(key, []).append(value)
    return columns


def fit_and_bundle(spec: FitSpec, *, reporter: Reporter | None = None, stop_flag: StopFlag | None = None) -> TrainResult:
    """Run training as described in the module docstring and write the bundle to ``spec.options.out``."""
    import keras

    options = spec.options
    reporter = reporter or Reporter("none")
    if options.tensorboard_dir:
        _check_tensorboard()
    run = _start_runtime(spec, reporter)
    try:
        _check_outputs(options, run.setup.is_chief)
        _resume_state(run, options, reporter)
        _build_models(run, spec)
        checkpoint, seconds = _fit(run, spec, reporter, stop_flag)
        return _write_bundle(run, spec, checkpoint, seconds, reporter)
    finally:
        if run.scratch is not None:
            shutil.rmtree(run.scratch, ignore_errors=True)
        with contextlib.suppress(Exception):
            keras.mixed_precision.set_global_policy("float32")


def _check_tensorboard() -> None:
    """TensorBoard logs need the tensorboard package, and TensorFlow too (Keras writes them with ``tf.summary``).

    Raises:
        InputError: One of them is not installed (checked before training, not at the first epoch's end).
    """
    from MedAnalysisLib.runtime import keras_backend

    needed = ["tensorboard"] + (["tensorflow"] if keras_backend() != "tensorflow" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"expected {' and '.join(needed)} installed for TensorBoard logs (Keras writes them with "
                         f"TensorFlow's summaries), got no {' and no '.join(missing)} (pip install "
                         f"{' '.join(missing)}); the CSV log (training_log.csv in the bundle) is written in every case")


def _start_runtime(spec: FitSpec, reporter: Reporter) -> _Run:
    """Backend, threads, determinism, seeds and devices, in the order the backends need them (thread pools and XLA
    flags are fixed when the backend starts); and where the checkpoint goes."""
    from MedAnalysisLib.keras_compat import set_random_seed
    from MedAnalysisLib.runtime import configure_threads, enable_op_determinism, keras_backend
    from MedAnalysisLib.training.device import setup_devices

    options = spec.options
    keras_backend()  # an unsupported backend is refused before anything else
    threads = configure_threads(options.threads)  # before any backend op: the pools are fixed at first use
    if options.deterministic:
        enable_op_determinism()
    set_random_seed(options.seed)
    setup = setup_devices(mixed_precision=options.mixed_precision, strategy=options.strategy, reporter=reporter)
    run = _Run(setup=setup, threads=threads, checkpoint_dir=checkpoint_dir_for(options.out),
               signature=_signature(spec))
    if not setup.is_chief:  # other workers keep their (identical) checkpoints out of the chief's way
        run.scratch = Path(tempfile.mkdtemp(prefix=f"medanalysis-worker{setup.worker_index}-"))
        run.checkpoint_dir = run.scratch / "checkpoint"
    return run


def _resume_state(run: _Run, options: TrainingOptions, reporter: Reporter) -> None:
    """The checkpoint state of the same run, when resuming (a checkpoint of another run is ignored)."""
    from MedAnalysisLib.training.callbacks import load_checkpoint_state

    run.state = load_checkpoint_state(run.checkpoint_dir, run.signature) if options.resume else None
    if not options.resume and run.checkpoint_dir.exists() and run.setup.is_chief:
        _check_checkpoint_folder(run.checkpoint_dir)
        shutil.rmtree(run.checkpoint_dir)
    if run.state is not None and _finished(run.state, options.epochs):
        reporter.log(f"checkpoint at {run.checkpoint_dir} has finished training; writing its bundle")


def _check_checkpoint_folder(folder: Path) -> None:
    """Refuse a checkpoint path that holds anything but a checkpoint (or nothing): training replaces it after each
    epoch and removes it at the end, and must never remove what it did not write.

    Raises:
        OutputError: A link, a file, or a folder of other files at the checkpoint's path.
    """
    from MedAnalysisLib.io.atomic import check_directory_target, is_own_output

    check_directory_target(folder, replaceable=is_own_output)


def _check_outputs(options: TrainingOptions, is_chief: bool) -> None:
    """Before any training: the bundle target and the checkpoint folder must be ones this run may write, so that a
    refusal comes now and not after hours of training."""
    from MedAnalysisLib.bundles.storage import check_publish_target

    if is_chief:
        check_publish_target(options.out, overwrite=True)
        _check_checkpoint_folder(checkpoint_dir_for(options.out))


def _finished(state: dict[str, Any] | None, epochs: int) -> bool:
    return state is not None and bool(state.get("early_stopped") or state["epochs_completed"] >= epochs)


def _build_models(run: _Run, spec: FitSpec) -> None:
    """Build and compile inside the strategy's scope; restore the checkpoint's weights and optimizer state."""
    from MedAnalysisLib.models import build_training_model
    from MedAnalysisLib.training.callbacks import restore_checkpoint

    options = spec.options
    with run.setup.strategy.scope():
        run.inference_model, run.training_model = build_training_model(options.family, **spec.hparams)
        run.monitor = _compile(options.family, str(options.task), len(spec.labels), run.training_model,
                               run.inference_model, loss_name=options.loss, learning_rate=options.learning_rate,
                               jit_compile=run.setup.jit_compile)
        if spec.monitor is not None:
            run.monitor = spec.monitor
        if run.state is not None:
            restore_checkpoint(run.checkpoint_dir, run.training_model)


def _fit(run: _Run, spec: FitSpec, reporter: Reporter, stop_flag: StopFlag | None) -> tuple[Any, float]:
    """``model.fit`` with the callbacks, from the checkpoint's epoch; returns the checkpoint callback and the seconds.

    Raises:
        CancelledError: A stop request ended the run (the checkpoint was saved first).
    """
    import keras

    from MedAnalysisLib.keras_compat import multi_worker_fit
    from MedAnalysisLib.training.callbacks import CheckpointCallback, ProgressCallback

    options, state = spec.options, run.state
    initial_epoch = int(state["epochs_completed"]) if state else 0
    if state is not None:
        reporter.log(f"resuming from the checkpoint after epoch {initial_epoch} ({run.checkpoint_dir})")
    train_feeder, val_feeder = spec.make_feeders(run.setup)
    progress = ProgressCallback(reporter, stop_flag, options.epochs, len(train_feeder), initial_epoch)
    monitor, mode = run.monitor
    checkpoint = CheckpointCallback(run.checkpoint_dir, run.inference_model, monitor=monitor, mode=mode,
                                    patience=options.patience, progress=progress, signature=run.signature, state=state)
    base_lr, epochs = options.learning_rate, options.epochs
    callbacks: list[Any] = [
        keras.callbacks.LearningRateScheduler(lambda epoch: base_lr * (1 - epoch / epochs) ** 0.9),
        progress,
        checkpoint,
    ]
    if options.tensorboard_dir and run.setup.is_chief:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=options.tensorboard_dir, write_graph=False))
    started = time.monotonic()
    if not _finished(state, options.epochs):
        if hasattr(train_feeder, "epoch"):
            train_feeder.epoch = initial_epoch
        multi_worker = run.setup.multi_worker
        with run.setup.strategy.scope() if multi_worker else contextlib.nullcontext(), \
                multi_worker_fit(run.training_model) if multi_worker else contextlib.nullcontext():
            run.training_model.fit(train_feeder, validation_data=val_feeder, epochs=options.epochs,
                                   initial_epoch=initial_epoch, callbacks=callbacks, verbose=0)
    if progress.stopped:
        checkpoint.save(partial=True)
        raise CancelledError(
            f"training stopped on request during epoch {checkpoint.state['epochs_completed'] + 1}; checkpoint saved "
            f"in {run.checkpoint_dir} (run the same command again to resume)"
        )
    return checkpoint, time.monotonic() - started


def _kept_metrics(run: _Run, spec: FitSpec, history: list[dict[str, float]], best_epoch: int | None) -> dict[str, float]:
    """Metrics of the kept epoch, under their plain names."""
    best_row = next((row for row in history if row["epoch"] == best_epoch), history[-1])
    metrics = {k: v for k, v in best_row.items() if k not in ("epoch", "learning_rate")}
    if spec.options.task == "segmentation" and len(run.training_model.outputs) > 1:
        # Deep supervision prefixes the main output's metrics with its name; the card shows plain names.
        main = f"{run.training_model.output_names[0]}_"
        metrics = {k.replace(main, ""): v for k, v in metrics.items() if main in k or k in ("loss", "val_loss")}
    return metrics


def _provenance(run: _Run, spec: FitSpec, state: dict[str, Any], metrics: dict[str, float],
                seconds: float) -> dict[str, Any]:
    """What the bundle records about how it was trained (``bundle.json`` ``training``)."""
    options = spec.options
    default_loss = "dice_ce" if options.task == "segmentation" else "bce" if len(spec.labels) == 2 else "ce"
    return {
        **spec.provenance,
        "epochs": options.epochs,
        "epochs_completed": state["epochs_completed"],
        "early_stopped": bool(state.get("early_stopped")),
        "best_epoch": state.get("best_epoch"),
        "monitor": state.get("monitor", run.monitor[0]),
        "final_metrics": metrics,
        "seed": options.seed,
        "learning_rate": options.learning_rate,
        "optimizer": "adam, polynomial decay 0.9",
        "loss": options.loss or default_loss,
        "device": run.setup.description,
        "replicas": run.setup.n_replicas,
        "precision": run.setup.precision,
        "intra_op_threads": run.threads,
        "deterministic": options.deterministic,
        "keras_backend": run.setup.backend,
        "library_versions": _library_versions(run.setup.backend),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_seconds_this_session": round(seconds, 2),
    }


def _model_card(spec: FitSpec, metrics: dict[str, float], provenance: dict[str, Any]) -> dict[str, Any]:
    """The bundle's model card: what the run knows (the data's description and number of training cases, the kept
    epoch's validation metrics without intervals, version 1.0.0 and a "trained" changelog entry), then the fields the
    options give (``--card`` and the card options), which win. Clinical use stays "not for clinical use" unless the
    options state it."""
    from MedAnalysisLib.bundles.card import (
        DEFAULT_VERSION,
        default_card,
        evaluation_from_run,
        merge_cards,
        with_change,
    )

    n_val = provenance.get("n_val")
    inferred = {**spec.card, "version": DEFAULT_VERSION,
                "evaluation": evaluation_from_run(metrics, int(n_val or 0), provenance.get("best_epoch"))}
    inferred.setdefault("training_data", {})
    if "n_cases" not in inferred["training_data"] and isinstance(provenance.get("n_train"), int):
        inferred["training_data"] = {**inferred["training_data"], "n_cases": provenance["n_train"]}
    given = spec.options.card or {}
    card = merge_cards(default_card(), inferred, given)
    return card if "changelog" in given else with_change(card, "trained")


def _write_bundle(run: _Run, spec: FitSpec, checkpoint: Any, seconds: float, reporter: Reporter) -> TrainResult:
    """The bundle with the best epoch's weights, the training log and the provenance; the checkpoint goes."""
    from MedAnalysisLib.training.callbacks import BEST_WEIGHTS, history_csv

    state = checkpoint.state
    history, best_epoch = state["history"], state.get("best_epoch")
    run.inference_model.load_weights(str(run.checkpoint_dir / BEST_WEIGHTS))
    metrics = _kept_metrics(run, spec, history, best_epoch)
    provenance = _provenance(run, spec, state, metrics, seconds)
    config = BundleConfig(name=spec.name, task=str(spec.options.task), family=spec.options.family,
                          hparams=spec.hparams, plan=spec.plan, labels=spec.labels, input=spec.input_spec,
                          inference=spec.inference_defaults or {}, training=provenance, description=spec.description,
                          card=_model_card(spec, metrics, provenance))
    out = spec.options.out
    target = out if run.setup.is_chief else (run.scratch or Path(tempfile.mkdtemp())) / out.name
    save_bundle(target, run.inference_model, config,
                extra_files={TRAINING_LOG_FILE: history_csv(history).encode("utf-8")})
    if run.setup.is_chief:
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
        reporter.log(f"bundle written to {target} (best epoch {best_epoch}, {provenance['monitor']})")
    return TrainResult(target, _history_columns(history), metrics, best_epoch, config)


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


_ARRAY_IGNORED = ("val_fraction", "folds", "fold", "steps_per_epoch", "val_batches", "plan_overrides")


def _split_arrays(x: Any, y: Any, family: str, labels: tuple[LabelInfo, ...]) -> tuple[Any, Any, Any]:
    """Inputs, targets and sample weights in the form the family's training model takes."""
    from MedAnalysisLib.models import family_task

    if family == "cnn_rnn":
        mask = np.asarray(x["mask"], dtype=bool)
        weights = {"slices": mask.astype("float32"), "scan": np.ones(len(mask), "float32")}
        targets = {"slices": np.asarray(y["slices"], "float32")[..., None],
                   "scan": np.asarray(y["scan"], "float32")[:, None]}
        if len(labels) > 2:
            targets = {"slices": np.asarray(y["slices"], "int32"), "scan": np.asarray(y["scan"], "int32")}
        return {"slices": np.asarray(x["slices"], "float32"), "mask": mask}, targets, weights
    if family_task(family) == "classification":
        y = np.asarray(y)
        y = y.reshape(-1, 1).astype("float32") if len(labels) == 2 else y.astype("int32")
        return np.asarray(x, "float32"), y, None
    return np.asarray(x, "float32"), np.asarray(y, "int32"), None


def _arrays_options(options: TrainingOptions) -> TrainingOptions:
    """Refuse options that choose how scans are split, sampled or augmented: prepared arrays are used as given."""
    defaults = TrainingOptions(family=options.family, out=options.out)
    changed = [name for name in _ARRAY_IGNORED if getattr(options, name) != getattr(defaults, name)]
    if options.augment is not None and options.augment != defaults.augment:
        changed.append("augment")
    if changed:
        raise InputError(f"expected no {changed} when training on prepared arrays (arrays are used as given), got "
                         f"{ {name: getattr(options, name) for name in changed} }")
    if options.plan is None or options.labels is None:
        raise InputError("expected the plan the arrays were prepared with and the labels, got "
                         f"plan={options.plan!r}, labels={options.labels!r}")
    return options


def train_on_arrays(
    x: Any,
    y: Any,
    options: TrainingOptions | Mapping[str, Any] | None = None,
    *,
    validation: tuple[Any, Any] | None = None,
    channels: Sequence[Mapping[str, str]] | None = None,
    reporter: Reporter | None = None,
    stop_flag: StopFlag | None = None,
    **fields: Any,
) -> TrainResult:
    """Train on prepared arrays (already preprocessed with the plan) and write a bundle.

    Array layouts (channels-last, float32 images):

    * ``unet3d``: ``x (N, k, j, i, C)`` patches, ``y (N, k, j, i)`` integer labels;
    * ``unet2d``: ``x (N, H, W, C)``, ``y (N, H, W)``;
    * ``slice_cnn``: ``x (N, H, W, C)``, ``y (N,)`` class indices; ``cnn3d``: ``x (N, k, j, i, C)``, ``y (N,)``;
    * ``cnn_rnn``: ``x = {"slices": (N, S, H, W, C), "mask": (N, S) bool}``, ``y = {"slices": (N, S), "scan":
      (N,)}``.

    Args:
        x, y: Training arrays.
        options: A :class:`~MedAnalysisLib.training.options.TrainingOptions` (or the keyword form, ``fields``).
            ``plan`` (the :class:`~MedAnalysisLib.preprocessing.plan.Plan` the arrays were prepared with, stored in
            the bundle so inference prepares scans the same way) and ``labels`` are required; ``batch_size``
            defaults to 2; options about splitting, sampling and augmenting scans are refused.
        validation: ``(x_val, y_val)`` in the same layout, or None (then the final epoch is kept).
        channels: ``[{"name", "modality"}]`` per input channel (default from the plan).
        reporter, stop_flag: As :func:`MedAnalysisLib.training.train`.
    """
    from MedAnalysisLib.models import family_task
    from MedAnalysisLib.training.feeders import ArrayFeeder

    options = _arrays_options(TrainingOptions.build(options, **fields))
    family, plan, labels = options.family, options.plan, options.labels
    assert labels is not None
    hparams = default_hparams(family, dict(options.hparams), len(labels), _array_shape(x, family), plan)
    transform = batch_transform(family, hparams)
    batch_size = options.batch_size or 2

    def make_feeders(setup: Any) -> tuple[Any, Any]:
        tx, ty, tw = _split_arrays(x, y, family, labels)
        train_feeder = ArrayFeeder(tx, ty, batch_size, sample_weight=tw, shuffle=True, seed=options.seed,
                                   transform=transform, workers=options.workers)
        val_feeder = None
        if validation is not None:
            vx, vy, vw = _split_arrays(*validation, family, labels)
            val_feeder = ArrayFeeder(vx, vy, batch_size, sample_weight=vw, shuffle=False, transform=transform)
        return train_feeder, val_feeder

    spec = FitSpec(
        options=options, hparams=hparams, plan=plan, labels=labels,
        input_spec={"channels": [dict(c) for c in (channels or _channels_from_plan(plan))], "layout": "channels_last",
                    "dtype": "float32"},
        make_feeders=make_feeders, data_signature=_array_signature(x, y, *(validation or ())),
        name=options.name or f"{family}-{family_task(family)}", monitor=options.monitored,
        provenance={"data": "arrays", "n_train": _array_len(x), "n_val": _array_len(validation[0]) if validation else 0},
    )
    return fit_and_bundle(spec, reporter=reporter, stop_flag=stop_flag)


def _array_len(x: Any) -> int:
    return len(x["slices"]) if isinstance(x, Mapping) else len(x)


def _array_shape(x: Any, family: str) -> tuple[int, ...]:
    return tuple(np.shape(x["slices"] if isinstance(x, Mapping) else x))


def _channels_from_plan(plan: Any) -> list[dict[str, str]]:
    return [{"name": name, "modality": plan.modality} for name in plan.channel_names]


def default_hparams(family: str, hparams: dict[str, Any], n_classes: int, shape: tuple[int, ...],
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
    check_completed_hparams(family, hparams)
    return hparams


def check_completed_hparams(family: str, hparams: Mapping[str, Any]) -> None:
    """The completed hyper-parameters (the user's and those filled in from the plan), checked before the backend
    builds anything: every value of the type and range the family's builder accepts, and for the U-Nets a depth the
    patch allows (the same arithmetic the builder uses).

    Raises:
        InputError: A value the builder or Keras would reject, naming it.
    """
    from MedAnalysisLib.models.topology import unet_topology
    from MedAnalysisLib.training.options import check_user_hparams

    check_user_hparams(family, hparams)
    if family in ("unet3d", "unet2d"):
        keys = ("patch_size", "filters", "base_filters", "max_filters", "n_stages", "min_feature_size")
        try:
            unet_topology(3 if family == "unet3d" else 2, **{key: hparams[key] for key in keys if key in hparams})
        except ValueError as error:
            raise InputError(f"{error} (hyper-parameters of the {family!r} model to train)") from None


def batch_transform(family: str, hparams: dict[str, Any]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]] | None:
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
