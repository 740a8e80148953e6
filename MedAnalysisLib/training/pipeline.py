"""``train``: from a dataset of scans to a model bundle (the Python form of ``medanalysis train``).

Steps: load the dataset (MSD folder, CSV manifest or DICOM folders), split it by group (seeded; or one fold of a
k-fold split), plan the preprocessing from the training cases' fingerprint (unless a plan is given), prepare every
case with the plan, feed batches through samplers on worker threads, and hand over to
:func:`MedAnalysisLib.training.runner.fit_and_bundle` for the training loop, resume and the bundle.

How each family is fed:

* ``unet3d``: random patches ``plan.patch_size`` with foreground oversampling and augmentation; validation on a
  fixed set of patches from the validation cases;
* ``unet2d``: axial slices resized to ``plan.slice_shape`` with their label slices;
* ``slice_cnn``: axial slices with the case's class as target (every slice of the validation cases once); when
  the cases have label maps and no class targets, the target of each slice is whether its label map has
  foreground there (classes "absent"/"present", e.g. "this slice contains the hippocampus");
* ``cnn3d``: each case centre-cropped or zero-padded to ``plan.patch_size``;
* ``cnn_rnn``: whole scans as slice sequences (``plan.sequence_length`` slices at most, zero-padded with a mask);
  per-slice targets say whether a slice holds foreground of the label map, the scan target is the case's class
  (or "any slice positive" when the case has none).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib.bundle import LabelInfo, default_labels
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.preprocessing.augment import AugmentConfig, Augmenter
from MedAnalysisLib.progress import Reporter, StopFlag
from MedAnalysisLib.training.runner import (
    LAST_EPOCH,
    FitSpec,
    TrainResult,
    _batch_transform,
    _default_hparams,
    fit_and_bundle,
)

SLICE_FAMILIES = ("unet2d", "slice_cnn", "cnn_rnn")
#: Validation batches drawn once (fixed) for patch- and slice-based segmentation.
DEFAULT_VAL_BATCHES = 4


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


def _label_lookup(values: Sequence[int]) -> np.ndarray | None:
    """Lookup table label value -> class index when the values are not already 0..n-1."""
    values = [int(v) for v in values]
    if values == list(range(len(values))):
        return None
    table = np.zeros(max(values) + 1, dtype=np.int32)
    for index, value in enumerate(values):
        table[value] = index
    return table


def _center_crop_or_pad(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``(k, j, i, C)`` centre-cropped or zero-padded to ``size`` (k, j, i)."""
    out = np.zeros((*size, image.shape[-1]), dtype=np.float32)
    src, dst = [], []
    for have, want in zip(image.shape[:3], size, strict=True):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = image[tuple(src)]
    return out


def _class_index(target: Any, n_classes: int, case_id: str) -> int:
    if target is None or float(target) != int(float(target)) or not 0 <= int(float(target)) < n_classes:
        raise InputError(f"expected a class index in [0, {n_classes}) as target of case {case_id!r}, got {target!r}")
    return int(float(target))


def monitor_setting(monitor: str) -> tuple[str, str]:
    """``(metric, mode)`` for a monitored metric name: ``"min"`` for losses, ``"max"`` for the rest.

    ``"last"`` keeps the final epoch's weights whatever the validation says (mode ``"last"``), as nnU-Net does.

    Raises:
        InputError: A name that is not a validation metric (``val_...``) nor ``last``.
    """
    if monitor == LAST_EPOCH:
        return LAST_EPOCH, LAST_EPOCH
    if not monitor.startswith("val_"):
        raise InputError(f"expected a validation metric to monitor (a name starting with 'val_', such as val_loss "
                         f"or val_auc) or 'last', got {monitor!r}")
    return monitor, "min" if monitor.endswith("loss") else "max"


def augment_settings(augment: bool | Mapping[str, Any] | AugmentConfig) -> AugmentConfig | None:
    """The augmentation a training run uses: None (off), the defaults, or the defaults with some fields changed.

    Raises:
        PlanError: A field that :class:`AugmentConfig` does not have, or a value out of its range.
    """
    if isinstance(augment, AugmentConfig):
        return augment
    if isinstance(augment, Mapping):
        return AugmentConfig.from_dict({**AugmentConfig().to_dict(), **dict(augment)})
    if isinstance(augment, bool):
        return AugmentConfig() if augment else None
    raise InputError(f"expected augment as True, False, a mapping of AugmentConfig fields or an AugmentConfig, "
                     f"got {type(augment).__name__}")


def _data_signature(train_cases: Sequence[Any], val_cases: Sequence[Any]) -> str:
    payload = [[(c.case_id, list(c.images), c.label, c.target) for c in cases] for cases in (train_cases, val_cases)]
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()


def _slice_foreground_targets(dataset: Any) -> bool:
    """True when every case has a label map and none has a class target: slice classifiers then learn per-slice
    "the label map has foreground in this slice" targets."""
    return bool(dataset.cases) and all(c.label is not None and c.target is None for c in dataset.cases)


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


def train(
    dataset: Any,
    *,
    task: str,
    family: str,
    out: str | os.PathLike[str],
    epochs: int,
    plan: Any = None,
    hparams: Mapping[str, Any] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    reporter: Reporter | None = None,
    stop_flag: StopFlag | None = None,
    resume: bool = True,
    plan_overrides: Mapping[str, Any] | None = None,
    folds: int | None = None,
    fold: int = 0,
    batch_size: int | None = None,
    steps_per_epoch: int | None = None,
    val_batches: int = DEFAULT_VAL_BATCHES,
    learning_rate: float | None = None,
    patience: int | None = None,
    loss: str | None = None,
    augment: bool | Mapping[str, Any] | AugmentConfig = True,
    monitor: str | None = None,
    workers: int = 2,
    mixed_precision: str = "auto",
    strategy: str = "auto",
    tensorboard_dir: str | None = None,
    name: str | None = None,
    labels: Sequence[LabelInfo] | None = None,
) -> TrainResult:
    """Train a model on a dataset and write a bundle.

    Args:
        dataset: A :class:`~MedAnalysisLib.data.datasets.Dataset` or a path in any form
            :func:`MedAnalysisLib.data.sources.resolve_source` knows (an MSD folder or its dataset.json, a CSV
            manifest, DICOM, image files).
        task: ``"segmentation"`` or ``"classification"``; must match the family.
        family: ``unet3d``, ``unet2d``, ``slice_cnn``, ``cnn3d`` or ``cnn_rnn``.
        out: Bundle folder, or a path ending in ``.zip``.
        epochs: Maximum number of epochs.
        plan: A preprocessing plan; by default planned from the training cases' fingerprint.
        hparams: Model hyper-parameters (``n_classes``, channels and sizes are filled in from the plan).
        val_fraction: Share of cases (whole groups) held out for validation, stratified by class when every case has
            a class target; ignored with ``folds`` (whose folds are stratified the same way).
        seed: Seed of the split, the initialisation, sampling and augmentation.
        reporter: Progress, metrics and logs (JSON lines for the Slicer panel).
        stop_flag: Polled at every batch; when set, the run saves its checkpoint and raises CancelledError.
        resume: Continue from ``<out>.checkpoint`` when it belongs to the same run.
        plan_overrides: Plan fields to override (``{"patch_size": "32,32,32"}``).
        folds: k for k-fold cross-validation (train fold ``fold``), or None.
        batch_size: Global batch size (default: the plan's, at least one per replica).
        steps_per_epoch: Training batches per epoch (default: about four passes over the training cases, at most
            250).
        val_batches: Fixed validation batches for patch/slice segmentation.
        learning_rate: Initial learning rate (default 1e-3).
        patience: Early-stopping patience in epochs (default: no early stopping).
        loss: ``"dice_ce"``, ``"focal"``, ``"bce"``, ``"ce"`` (default by task).
        augment: Augmentation of training batches: True for the defaults of
            :class:`~MedAnalysisLib.preprocessing.augment.AugmentConfig`, False for none, or a mapping of the fields
            to change (``{"p_gamma": 0, "p_brightness": 0}`` keeps CT intensities quantitative) or a whole config.
        workers: Threads for case preparation and batch loading.
        monitor: Validation metric that chooses the epoch whose weights are kept, e.g. ``"val_loss"`` (lowest
            wins for names ending in ``loss``, highest otherwise; default: mean Dice for segmentation, AUC for
            binary classification, accuracy otherwise). A name the run does not log falls back to ``val_loss``.
            ``"last"`` keeps the final epoch; so does a run without validation cases (``val_fraction=0``).
        mixed_precision, strategy: See :func:`MedAnalysisLib.training.device.setup_devices`.
        tensorboard_dir: Also write TensorBoard logs there.
        name: Model name for the bundle.
        labels: LabelInfo per class (names, colours, terminology; :func:`MedAnalysisLib.terminology.read_labels_file`
            reads them from a labels file), overriding the dataset's names for the values they cover. Without it,
            segmentation labels take the dataset's names and, where the built-in table knows a name, its codes
            and colour.

    Returns:
        :class:`~MedAnalysisLib.training.runner.TrainResult`.
    """
    from MedAnalysisLib.data.datasets import Dataset, kfold_splits, split_cases
    from MedAnalysisLib.data.sources import load_source
    from MedAnalysisLib.models import MODEL_FAMILIES, family_task
    from MedAnalysisLib.training.feeders import ArrayFeeder, SamplerFeeder

    augment_config = augment_settings(augment)
    monitored = monitor_setting(monitor) if monitor else None

    reporter = reporter or Reporter("none")
    if family not in MODEL_FAMILIES:
        raise InputError(f"expected a model family among {sorted(MODEL_FAMILIES)}, got {family!r}")
    if family_task(family) != task:
        raise InputError(f"expected a {family_task(family)} task for model {family!r}, got {task!r}")
    if not isinstance(dataset, Dataset):
        # cnn_rnn learns from label maps (per-slice targets) as well as from class targets: load what is there.
        source = dataset
        dataset = load_source(source, task=None if family in ("cnn_rnn", "slice_cnn") else task)
        # slice_cnn learns per-slice targets from label maps when no case has a class target, else the class.
        if family == "slice_cnn" and dataset.task != task and not _slice_foreground_targets(dataset) and any(
                c.target is not None for c in dataset.cases):
            dataset = load_source(source, task=task)
    foreground_targets = family == "slice_cnn" and _slice_foreground_targets(dataset)
    if task == "segmentation" and any(c.label is None for c in dataset.cases):
        raise InputError("expected a label map for every case to train segmentation, some cases have none")
    if task == "classification" and family != "cnn_rnn" and not foreground_targets and any(
            c.target is None for c in dataset.cases):
        raise InputError("expected a class target for every case to train classification, some cases have none")
    if folds:
        splits = kfold_splits(dataset.cases, folds, seed)
        if not 0 <= fold < folds:
            raise InputError(f"expected fold in [0, {folds}), got {fold}")
        train_cases, val_cases = splits[fold]
    else:
        train_cases, val_cases = split_cases(dataset.cases, val_fraction, seed)
    if not train_cases:
        raise InputError("expected at least one training case after the split, got none")
    reporter.log(f"{len(train_cases)} training and {len(val_cases)} validation cases")

    if plan is None:
        from MedAnalysisLib.preprocessing.fingerprint import fingerprint_dataset
        from MedAnalysisLib.preprocessing.plan import make_plan

        train_dataset = dataclasses.replace(dataset, cases=list(train_cases))
        fingerprint = fingerprint_dataset(train_dataset, workers=workers, reporter=reporter, stop_flag=stop_flag,
                                          seed=seed)
        plan = make_plan(fingerprint, dict(plan_overrides) if plan_overrides else None)
    elif plan_overrides:
        plan = plan.replace(**plan_overrides)
    if plan.n_channels != dataset.n_channels:
        raise InputError(f"expected a plan for {dataset.n_channels} channel(s), got one for {plan.n_channels}")

    label_infos = _labels_for(dataset, plan, task, family, labels)
    n_classes = len(label_infos)
    train_prepared = _prepare(plan, train_cases, family, workers=workers, reporter=reporter, stop_flag=stop_flag,
                              stage="prepare")
    val_prepared = _prepare(plan, val_cases, family, workers=workers, reporter=reporter, stop_flag=stop_flag,
                            stage="prepare-val") if val_cases else []
    channels = plan.n_channels
    if family == "unet3d" or family == "cnn3d":
        shape: tuple[int, ...] = (1, *plan.patch_size, channels)
    elif family == "cnn_rnn":
        shape = (1, plan.sequence_length, *plan.slice_shape, channels)
    else:
        shape = (1, *plan.slice_shape, channels)
    hparams = _default_hparams(family, dict(hparams or {}), n_classes, shape, plan)
    lookup = _label_lookup(plan.label_values) if task == "segmentation" else None
    ds_transform = _batch_transform(family, hparams)
    binary = n_classes == 2

    def seg_transform(batch: tuple[Any, ...]) -> tuple[Any, ...]:
        x, y = batch[0], np.asarray(batch[1])
        if lookup is not None:
            y = lookup[np.clip(y, 0, len(lookup) - 1)]
        batch = (x, y.astype(np.int32))
        return ds_transform(batch) if ds_transform else batch

    def cls_target(values: Any) -> np.ndarray:
        values = np.asarray(values)
        return values.reshape(-1, 1).astype(np.float32) if binary else values.astype(np.int32)

    def make_feeders(setup: Any) -> tuple[Any, Any]:
        replicas = setup.n_replicas
        default_bs = plan.batch_size if family in ("unet3d", "cnn3d") else (
            min(plan.batch_size, 4) if family == "cnn_rnn" else plan.slice_batch_size)
        bs = max(int(batch_size or default_bs), replicas)
        bs = int(math.ceil(bs / replicas) * replicas)
        steps = steps_per_epoch or int(min(250, max(1, math.ceil(4 * len(train_prepared) / bs))))
        augmenter = Augmenter(augment_config, seed=seed) if augment_config is not None else None
        val_rng = [np.random.default_rng([seed, 7919, b]) for b in range(val_batches)]
        if family in ("unet3d", "unet2d"):
            from MedAnalysisLib.data.samplers import PatchSampler, SliceSampler

            if family == "unet3d":
                sampler = PatchSampler(train_prepared, plan.patch_size, bs, foreground_fraction=plan.foreground_fraction,
                                       augmenter=augmenter, seed=seed)
                val_sampler = PatchSampler(val_prepared, plan.patch_size, bs, seed=seed) if val_prepared else None
            else:
                sampler = SliceSampler(train_prepared, bs, slice_shape=plan.slice_shape, target="mask",
                                       foreground_fraction=plan.foreground_fraction, augmenter=augmenter, seed=seed)
                val_sampler = SliceSampler(val_prepared, bs, slice_shape=plan.slice_shape, target="mask",
                                           seed=seed) if val_prepared else None
            train_feeder = SamplerFeeder(sampler.batch, steps, seed=seed, transform=seg_transform, workers=workers)
            val_feeder = None
            if val_sampler is not None:
                batches = [seg_transform(val_sampler.batch(rng)) for rng in val_rng]
                vx = np.concatenate([b[0] for b in batches])
                vy = [np.concatenate([b[1][n] for b in batches]) for n in range(len(batches[0][1]))] \
                    if isinstance(batches[0][1], tuple) else np.concatenate([b[1] for b in batches])
                val_feeder = ArrayFeeder(vx, tuple(vy) if isinstance(vy, list) else vy, bs, shuffle=False)
            return train_feeder, val_feeder
        if family == "slice_cnn":
            from MedAnalysisLib.data.samplers import SliceSampler, slice_foreground

            if not foreground_targets:
                for case in [*train_prepared, *val_prepared]:
                    _class_index(case.target, n_classes, case.case_id)
            sampler = SliceSampler(train_prepared, bs, slice_shape=plan.slice_shape,
                                   target="slice_foreground" if foreground_targets else "case",
                                   foreground_fraction=plan.foreground_fraction, augmenter=augmenter, seed=seed)
            train_feeder = SamplerFeeder(sampler.batch, steps, seed=seed,
                                         transform=lambda b: (b[0], cls_target(b[1])), workers=workers)
            val_feeder = None
            if val_prepared:
                vx = np.concatenate([c.image for c in val_prepared]).astype(np.float32)
                if foreground_targets:
                    vy = np.concatenate([slice_foreground(c.label).astype(np.int32) for c in val_prepared])
                else:
                    vy = np.concatenate([[int(float(c.target))] * c.image.shape[0] for c in val_prepared])
                val_feeder = ArrayFeeder(vx, cls_target(vy), bs, shuffle=False)
            return train_feeder, val_feeder
        if family == "cnn3d":
            def arrays(cases: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
                x = np.stack([_center_crop_or_pad(c.image, plan.patch_size) for c in cases])
                return x, cls_target([_class_index(c.target, n_classes, c.case_id) for c in cases])

            tx, ty = arrays(train_prepared)
            train_feeder = ArrayFeeder(tx, ty, bs, shuffle=True, seed=seed, workers=workers)
            val_feeder = ArrayFeeder(*arrays(val_prepared), bs, shuffle=False) if val_prepared else None
            return train_feeder, val_feeder
        # cnn_rnn
        from MedAnalysisLib.data.samplers import SequenceSampler

        def to_model(batch: tuple[np.ndarray, ...]) -> tuple[Any, ...]:
            x, mask, y_slices, y_scan = batch
            weights = {"slices": mask.astype(np.float32), "scan": np.ones(len(mask), np.float32)}
            if binary:
                targets = {"slices": y_slices.astype(np.float32)[..., None],
                           "scan": np.asarray(y_scan, np.float32).reshape(-1, 1)}
            else:
                targets = {"slices": y_slices.astype(np.int32), "scan": np.asarray(y_scan).astype(np.int32)}
            return {"slices": x, "mask": mask}, targets, weights

        sampler = SequenceSampler(train_prepared, bs, max_slices=plan.sequence_length, slice_shape=plan.slice_shape,
                                  seed=seed)
        train_feeder = SamplerFeeder(sampler.batch, steps, seed=seed, transform=to_model, workers=workers)
        val_feeder = None
        if val_prepared:
            val_sampler = SequenceSampler(val_prepared, bs, max_slices=plan.sequence_length,
                                          slice_shape=plan.slice_shape, seed=seed)
            parts = [to_model(b) for b in val_sampler.ordered_batches()]
            vx = {k: np.concatenate([p[0][k] for p in parts]) for k in ("slices", "mask")}
            vy = {k: np.concatenate([p[1][k] for p in parts]) for k in ("slices", "scan")}
            vw = {k: np.concatenate([p[2][k] for p in parts]) for k in ("slices", "scan")}
            val_feeder = ArrayFeeder(vx, vy, bs, sample_weight=vw, shuffle=False)
        return train_feeder, val_feeder

    spec = FitSpec(
        family=family,
        task=task,
        hparams=hparams,
        plan=plan,
        labels=label_infos,
        input_spec={"channels": [{"name": name_, "modality": dataset.modality} for name_ in plan.channel_names],
                    "layout": "channels_last", "dtype": "float32"},
        make_feeders=make_feeders,
        data_signature=_data_signature(train_cases, val_cases),
        epochs=epochs,
        name=name or f"{Path(str(dataset.root or 'data')).name}-{family}",
        learning_rate=learning_rate or 1e-3,
        patience=patience,
        loss=loss,
        seed=seed,
        mixed_precision=mixed_precision,
        strategy=strategy,
        tensorboard_dir=tensorboard_dir,
        # Sequence models on label maps: the scan target ("any slice positive") is one class for nearly every scan,
        # so its validation AUC says nothing (Keras reports 0). Choose epochs on the per-slice validation loss: the
        # per-slice AUC saturates within an epoch or two, long before the probabilities are calibrated.
        monitor=monitored or (("val_slices_loss", "min")
                              if family == "cnn_rnn" and binary and dataset.task == "segmentation" else None),
        provenance={
            "data": Path(str(dataset.root)).name if dataset.root else "dataset",
            "n_train": len(train_cases),
            "n_val": len(val_cases),
            "split": (f"fold {fold} of {folds}" if folds else f"val_fraction {val_fraction}, by group")
            + (", stratified by class" if all(c.target is not None for c in dataset.cases) else ""),
            "val_case_ids": [c.case_id for c in val_cases],
            "augment": augment_config.to_dict() if augment_config is not None else False,
        },
    )
    return fit_and_bundle(spec, out, reporter=reporter, stop_flag=stop_flag, resume=resume)
