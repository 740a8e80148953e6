"""``train``: from a dataset of scans to a model bundle (the Python form of ``medanalysis train``).

Steps, each a function below: load the dataset (MSD folder, CSV manifest or DICOM folders; :func:`_load_dataset`),
check that every case has what the task needs (:func:`_check_targets`), split it by group (seeded; or one fold of a
k-fold split; :func:`_split`), plan the preprocessing from the training cases' fingerprint unless a plan is given
(:func:`_plan_for`), name the labels (:func:`_labels_for`), prepare every case with the plan (:func:`_prepare`),
and hand over to :func:`MedAnalysisLib.training.runner.fit_and_bundle` with the batches each family trains on
(:class:`~MedAnalysisLib.training.feeding.Feeding`) for the training loop, resume and the bundle.

What to train is one :class:`~MedAnalysisLib.training.options.TrainingOptions`, validated before any scan is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.labels import LabelInfo, default_labels
from MedAnalysisLib.progress import Reporter, StopFlag
from MedAnalysisLib.training.feeding import Feeding
from MedAnalysisLib.training.options import (
    DEFAULT_VAL_BATCHES,
    TrainingOptions,
    augment_settings,
    monitor_setting,
)
from MedAnalysisLib.training.runner import FitSpec, TrainResult, batch_transform, default_hparams, fit_and_bundle

SLICE_FAMILIES = ("unet2d", "slice_cnn", "cnn_rnn")
__all__ = ["DEFAULT_VAL_BATCHES", "SLICE_FAMILIES", "augment_settings", "monitor_setting", "train"]


def _prepare(plan: Any, cases: Sequence[Any], family: str, *, workers: int, reporter: Reporter,
             stop_flag: StopFlag | None, stage: str) -> list[Any]:
    """Read every case and apply the plan (slices resized for 2D/sequence families)."""
    from MedAnalysisLib.data.datasets import read_case
    from MedAnalysisLib.preprocessing.transforms import apply_plan

    slice_shape = tuple(plan.slice_shape) if family in SLICE_FAMILIES else None

    def one(case: Any) -> Any:
        if stop_flag is not None:
            stop_flag.raise_if_set()
        images, label = read_case(case)
        prepared = apply_plan(plan, images, label, slice_shape=slice_shape)
        return dataclasses.replace(prepared, target=case.target, case_id=case.case_id)

    results = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, prepared in enumerate(pool.map(one, cases), start=1):
            results.append(prepared)
            reporter.progress(stage, done, len(cases), f"{done}/{len(cases)} cases")
    return results


def _data_signature(train_cases: Sequence[Any], val_cases: Sequence[Any]) -> str:
    payload = [[(c.case_id, list(c.images), c.label, c.target) for c in cases] for cases in (train_cases, val_cases)]
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()


def _slice_foreground_targets(dataset: Any) -> bool:
    """True when every case has a label map and none has a class target: slice classifiers then learn per-slice
    "the label map has foreground in this slice" targets."""
    return bool(dataset.cases) and all(c.label is not None and c.target is None for c in dataset.cases)


def _load_dataset(dataset: Any, options: TrainingOptions) -> Any:
    """The :class:`~MedAnalysisLib.data.datasets.Dataset` to train on, loaded with what the family learns from."""
    from MedAnalysisLib.data.datasets import Dataset
    from MedAnalysisLib.data.sources import load_source

    if isinstance(dataset, Dataset):
        return dataset
    family, task = options.family, options.task
    # cnn_rnn learns from label maps (per-slice targets) as well as from class targets: load what is there.
    loaded = load_source(dataset, task=None if family in ("cnn_rnn", "slice_cnn") else task)
    # slice_cnn learns per-slice targets from label maps when no case has a class target, else the class.
    if family == "slice_cnn" and loaded.task != task and not _slice_foreground_targets(loaded) and any(
            c.target is not None for c in loaded.cases):
        loaded = load_source(dataset, task=task)
    return loaded


def _check_targets(dataset: Any, options: TrainingOptions) -> bool:
    """Refuse cases without what the task needs; return whether slice classifiers learn foreground targets."""
    foreground_targets = options.family == "slice_cnn" and _slice_foreground_targets(dataset)
    if options.task == "segmentation" and any(c.label is None for c in dataset.cases):
        raise InputError("expected a label map for every case to train segmentation, some cases have none")
    if options.task == "classification" and options.family != "cnn_rnn" and not foreground_targets and any(
            c.target is None for c in dataset.cases):
        raise InputError("expected a class target for every case to train classification, some cases have none")
    return foreground_targets


def _split(dataset: Any, options: TrainingOptions) -> tuple[list[Any], list[Any]]:
    """Training and validation cases: one fold of a k-fold split, or a seeded split by group."""
    from MedAnalysisLib.data.datasets import kfold_splits, split_cases

    if options.folds:
        train_cases, val_cases = kfold_splits(dataset.cases, options.folds, options.seed)[options.fold]
    else:
        train_cases, val_cases = split_cases(dataset.cases, options.val_fraction, options.seed)
    if not train_cases:
        raise InputError("expected at least one training case after the split, got none")
    return list(train_cases), list(val_cases)


def _plan_for(dataset: Any, train_cases: Sequence[Any], options: TrainingOptions, reporter: Reporter,
              stop_flag: StopFlag | None) -> Any:
    """The given plan (with the overrides), or one planned from the training cases' fingerprint."""
    plan = options.plan
    if plan is None:
        from MedAnalysisLib.preprocessing.fingerprint import fingerprint_dataset
        from MedAnalysisLib.preprocessing.plan import make_plan

        train_dataset = dataclasses.replace(dataset, cases=list(train_cases))
        fingerprint = fingerprint_dataset(train_dataset, workers=options.workers, reporter=reporter,
                                          stop_flag=stop_flag, seed=options.seed)
        plan = make_plan(fingerprint, dict(options.plan_overrides) or None)
    elif options.plan_overrides:
        plan = plan.replace(**options.plan_overrides)
    if plan.n_channels != dataset.n_channels:
        raise InputError(f"expected a plan for {dataset.n_channels} channel(s), got one for {plan.n_channels}")
    return plan


def _labels_for(dataset: Any, plan: Any, task: str, family: str,
                given: Sequence[LabelInfo] | None = None) -> tuple[LabelInfo, ...]:
    """One LabelInfo per model output, in output order.

    Segmentation: one per plan label value. A label in ``given`` (``--labels``) is taken as it is; the others are
    named from the dataset (MSD ``dataset.json`` names) and coded from the built-in terminology table when the name
    is known there (:func:`MedAnalysisLib.terminology.coded_label`). ``given`` values the data does not hold are
    refused.
    """
    from MedAnalysisLib.terminology import coded_label

    names = {int(k): str(v) for k, v in (dataset.labels or {}).items()}
    chosen = {label.value: label for label in (given or ())}
    if task == "segmentation":
        unknown = sorted(set(chosen) - {int(v) for v in plan.label_values})
        if unknown:
            raise InputError(f"expected labels among the values in the data {sorted(int(v) for v in plan.label_values)}"
                             f", got labels for {unknown}")
        defaults = default_labels(list(range(len(plan.label_values))))
        return tuple(
            chosen.get(int(value)) or coded_label(
                int(value), names.get(int(value), "background" if value == 0 else f"label {value}"), info.color)
            for value, info in zip(plan.label_values, defaults, strict=True)
        )
    if given:
        return tuple(given)
    if (family == "cnn_rnn" and dataset.task == "segmentation") or (family == "slice_cnn"
                                                                     and _slice_foreground_targets(dataset)):
        return default_labels({0: "absent", 1: "present"})
    if not names:
        targets = sorted({int(float(c.target)) for c in dataset.cases if c.target is not None})
        names = {t: f"class {t}" for t in targets}
    if sorted(names) != list(range(len(names))):
        raise InputError(f"expected classification classes numbered 0..n-1, got {sorted(names)}")
    return default_labels(names)


def _input_shape(family: str, plan: Any) -> tuple[int, ...]:
    """One model input's shape (batch 1, channels last) as the plan prepares it."""
    if family in ("unet3d", "cnn3d"):
        return (1, *plan.patch_size, plan.n_channels)
    if family == "cnn_rnn":
        return (1, plan.sequence_length, *plan.slice_shape, plan.n_channels)
    return (1, *plan.slice_shape, plan.n_channels)


def _provenance(dataset: Any, options: TrainingOptions, train_cases: Sequence[Any],
                val_cases: Sequence[Any]) -> dict[str, Any]:
    split = (f"fold {options.fold} of {options.folds}" if options.folds
             else f"val_fraction {options.val_fraction}, by group")
    if all(c.target is not None for c in dataset.cases):
        split += ", stratified by class"
    return {
        "data": Path(str(dataset.root)).name if dataset.root else "dataset",
        "n_train": len(train_cases),
        "n_val": len(val_cases),
        "split": split,
        "val_case_ids": [c.case_id for c in val_cases],
        "augment": options.augment.to_dict() if options.augment is not None else False,
    }


def train(
    dataset: Any,
    options: TrainingOptions | Mapping[str, Any] | None = None,
    *,
    reporter: Reporter | None = None,
    stop_flag: StopFlag | None = None,
    **fields: Any,
) -> TrainResult:
    """Train a model on a dataset and write a bundle.

    Args:
        dataset: A :class:`~MedAnalysisLib.data.datasets.Dataset` or a path in any form
            :func:`MedAnalysisLib.data.sources.resolve_source` knows (an MSD folder or its dataset.json, a CSV
            manifest, DICOM, image files).
        options: What to train: a :class:`~MedAnalysisLib.training.options.TrainingOptions` (or a mapping of its
            fields). The keyword form, ``train(dataset, task="segmentation", family="unet3d", out="model.zip",
            epochs=50, ...)``, builds it from ``fields``; fields given next to ``options`` replace its values.
        reporter: Progress, metrics and logs (JSON lines for the Slicer panel).
        stop_flag: Polled at every batch; when set, the run saves its checkpoint and raises CancelledError.

    Returns:
        :class:`~MedAnalysisLib.training.runner.TrainResult`.

    Raises:
        InputError: Invalid options (before any scan is read), cases without what the task needs, a plan for
            another number of channels, labels the data does not hold.
    """
    options = TrainingOptions.build(options, **fields)
    reporter = reporter or Reporter("none")
    dataset = _load_dataset(dataset, options)
    foreground_targets = _check_targets(dataset, options)
    train_cases, val_cases = _split(dataset, options)
    reporter.log(f"{len(train_cases)} training and {len(val_cases)} validation cases")
    plan = _plan_for(dataset, train_cases, options, reporter, stop_flag)
    family, task = options.family, str(options.task)
    labels = _labels_for(dataset, plan, task, family, options.labels)
    train_prepared = _prepare(plan, train_cases, family, workers=options.workers, reporter=reporter,
                              stop_flag=stop_flag, stage="prepare")
    val_prepared = _prepare(plan, val_cases, family, workers=options.workers, reporter=reporter, stop_flag=stop_flag,
                            stage="prepare-val") if val_cases else []
    hparams = default_hparams(family, dict(options.hparams), len(labels), _input_shape(family, plan), plan)
    feeding = Feeding(family=family, plan=plan, train_cases=train_prepared, val_cases=val_prepared,
                      n_classes=len(labels), seed=options.seed, batch_size=options.batch_size,
                      steps_per_epoch=options.steps_per_epoch, val_batches=options.val_batches,
                      augment=options.augment, workers=options.workers, foreground_targets=foreground_targets,
                      label_transform=batch_transform(family, hparams))
    # Sequence models on label maps: the scan target ("any slice positive") is one class for nearly every scan, so
    # its validation AUC says nothing (Keras reports 0). Choose epochs on the per-slice validation loss: the
    # per-slice AUC saturates within an epoch or two, long before the probabilities are calibrated.
    slice_loss = family == "cnn_rnn" and len(labels) == 2 and dataset.task == "segmentation"
    spec = FitSpec(
        options=options, hparams=hparams, plan=plan, labels=labels,
        input_spec={"channels": [{"name": name, "modality": dataset.modality} for name in plan.channel_names],
                    "layout": "channels_last", "dtype": "float32"},
        make_feeders=feeding.make, data_signature=_data_signature(train_cases, val_cases),
        name=options.name or f"{Path(str(dataset.root or 'data')).name}-{family}",
        monitor=options.monitored or (("val_slices_loss", "min") if slice_loss else None),
        provenance=_provenance(dataset, options, train_cases, val_cases),
    )
    return fit_and_bundle(spec, reporter=reporter, stop_flag=stop_flag)
