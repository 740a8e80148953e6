"""``train``: from a dataset of scans to a model bundle (the Python form of ``medanalysis train``).

Steps, each a function below: load the dataset (MSD folder, CSV manifest or DICOM folders; :func:`_load_dataset`),
check that every case has what the task needs (:func:`_check_targets`), split it by group (seeded; or one fold of a
k-fold split; :func:`_split`), plan the preprocessing from the training cases' fingerprint unless a plan is given
(:func:`_plan_for`), name the labels (:func:`_labels_for`), prepare every case with the plan (:func:`_prepare`),
and hand over to :func:`MedAnalysisLib.training.runner.fit_and_bundle` with the batches each family trains on
(:class:`~MedAnalysisLib.training.feeding.Feeding`) for the training loop, resume and the bundle.

Prepared cases live in a preprocessed cache on disk (:mod:`MedAnalysisLib.data.cache`): by default the folder
``OUT.cache`` beside the output (OUT without .zip, like the checkpoint), or the one ``cache=`` names. Only cases the
cache does not hold for this plan and these source files are prepared (a second run on the same data and plan
prepares nothing, and a resumed run reuses the cache); the plan planned from the training cases is kept in the cache
too and reused while the training cases and plan overrides are the same. Training then reads patches, slices and
sequences lazily from the cache's arrays. ``dataset`` may itself be a cache folder (``medanalysis preprocess``):
training then needs neither the source files nor SimpleITK. ``cache=False`` prepares every case in memory as
before (kept for comparisons and for data that fits).

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

from MedAnalysisLib.data.cache import SLICE_FAMILIES, default_cache_dir
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

__all__ = ["DEFAULT_VAL_BATCHES", "SLICE_FAMILIES", "augment_settings", "monitor_setting", "train"]


def _slice_shape_for(plan: Any, family: str) -> tuple[int, int] | None:
    return tuple(plan.slice_shape) if family in SLICE_FAMILIES else None  # type: ignore[return-value]


def _prepare(plan: Any, cases: Sequence[Any], family: str, *, workers: int, reporter: Reporter,
             stop_flag: StopFlag | None, stage: str) -> list[Any]:
    """Read every case and apply the plan (slices resized for 2D/sequence families)."""
    from MedAnalysisLib.data.datasets import read_case
    from MedAnalysisLib.preprocessing.transforms import apply_plan

    slice_shape = _slice_shape_for(plan, family)

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


def _cache_signature(cache: Any, train_cases: Sequence[Any], val_cases: Sequence[Any]) -> str:
    """The data signature of a run from a cache: the same for ``train DATA`` and ``train CACHE`` on the same cases."""
    payload = [cache.signature(c.case_id for c in cases) for cases in (train_cases, val_cases)]
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()


def _auto_plan_key(train_cases: Sequence[Any], options: TrainingOptions) -> str:
    """What a plan planned from the training cases depends on: those cases' sources and the plan overrides."""
    from MedAnalysisLib.data.cache import source_identity

    payload = [[c.case_id, source_identity(c)] for c in train_cases], dict(options.plan_overrides)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _cached_plan(cache_dir: Path, key: str) -> Any:
    """The plan an earlier run planned from the same training cases and overrides, kept in the cache, or None."""
    from MedAnalysisLib.data.cache import is_cache, read_manifest_plan
    from MedAnalysisLib.errors import PlanError
    from MedAnalysisLib.preprocessing.plan import Plan

    if not is_cache(cache_dir):
        return None
    record = read_manifest_plan(cache_dir)
    if record.get("key") != key or not isinstance(record.get("plan"), dict):
        return None
    try:
        return Plan.from_dict(record["plan"])
    except PlanError:
        return None


def _prepare_into_cache(dataset: Any, plan: Any, family: str, cache_dir: Path, options: TrainingOptions,
                        reporter: Reporter, stop_flag: StopFlag | None, auto_plan: dict[str, Any] | None) -> Any:
    """Prepare what the cache lacks (in worker processes) and open it; reports how many cases were prepared."""
    from MedAnalysisLib.data.cache import build_cache, open_cache
    from MedAnalysisLib.data.datasets import read_case
    from MedAnalysisLib.preprocessing.transforms import apply_plan

    summary = build_cache(dataset, plan, cache_dir, prepare=apply_plan, read=read_case,
                          slice_shape=_slice_shape_for(plan, family), workers=options.workers, reporter=reporter,
                          stop_flag=stop_flag, auto_plan=auto_plan)
    reporter.log(f"preprocessed cache {summary.root}: {summary.prepared} case(s) prepared, {summary.reused} reused")
    return open_cache(cache_dir)


def _cache_dataset(cache: Any) -> Any:
    """A :class:`~MedAnalysisLib.data.datasets.Dataset` of a cache's cases (for the split and the labels); its
    cases name the cache, not source files, which are never read."""
    from MedAnalysisLib.data.datasets import Case, Dataset, about_from_json

    info = cache.dataset
    channels = [str(c) for c in info.get("channel_names") or ["image"]]
    cases = [Case(e.case_id, (f"cache:{e.key}",) * len(channels), f"cache:{e.key}" if e.has_label else None,
                  e.target, e.group) for e in cache.entries]
    try:
        labels = {int(k): str(v) for k, v in (info.get("labels") or {}).items()}
    except (TypeError, ValueError, AttributeError):
        raise InputError("expected label names by integer value in the cache manifest, got others") from None
    return Dataset(cases, task=str(info.get("task", "segmentation")), labels=labels,
                   modality=str(info.get("modality", "unknown")), channel_names=channels,
                   root=Path(str(info.get("name", "data"))), about=about_from_json(info.get("about")))


def _plan_of_cache(cache: Any, options: TrainingOptions, family: str) -> Any:
    """The cache's plan (with training-only overrides); a given plan or override that changes prepared arrays, or a
    family that needs other slices than the cache holds, is refused."""
    from MedAnalysisLib.data.cache import plan_key
    from MedAnalysisLib.preprocessing.plan import Plan

    plan = Plan.from_dict(cache.plan)
    if options.plan is not None:
        plan = options.plan
    if options.plan_overrides:
        plan = plan.replace(**options.plan_overrides)
    if plan_key(plan.to_dict()) != cache.plan_key:
        raise InputError("expected the plan the cache was prepared with (or changes of training-only fields such as "
                         "batch_size), got a plan that prepares other arrays: prepare the cache again with it")
    wanted = _slice_shape_for(plan, family)
    if wanted != cache.slice_shape:
        held = f"slices of {list(cache.slice_shape)}" if cache.slice_shape else "volumes (3D families)"
        need = f"slices of {list(wanted)}" if wanted else "volumes"
        raise InputError(f"expected a cache of {need} for the {family} family, got one of {held}: prepare it with "
                         "the family (medanalysis preprocess --family)")
    return plan


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


def _training_data(dataset: Any) -> dict[str, str]:
    """The model card's training data as the dataset describes itself (an MSD ``dataset.json``'s name, licence,
    reference and description, already made safe and bounded when read; nothing for other forms of data)."""
    about = getattr(dataset, "about", None) or {}
    return {key: str(about[key]) for key in ("name", "license", "reference", "description") if key in about}


def train(
    dataset: Any,
    options: TrainingOptions | Mapping[str, Any] | None = None,
    *,
    reporter: Reporter | None = None,
    stop_flag: StopFlag | None = None,
    cache: str | Path | bool | None = None,
    **fields: Any,
) -> TrainResult:
    """Train a model on a dataset and write a bundle.

    Args:
        dataset: A :class:`~MedAnalysisLib.data.datasets.Dataset`, a path in any form
            :func:`MedAnalysisLib.data.sources.resolve_source` knows (an MSD folder or its dataset.json, a CSV
            manifest, DICOM, image files), or a preprocessed cache folder (:mod:`MedAnalysisLib.data.cache`).
        options: What to train: a :class:`~MedAnalysisLib.training.options.TrainingOptions` (or a mapping of its
            fields). The keyword form, ``train(dataset, task="segmentation", family="unet3d", out="model.zip",
            epochs=50, ...)``, builds it from ``fields``; fields given next to ``options`` replace its values.
        reporter: Progress, metrics and logs (JSON lines for the Slicer panel).
        stop_flag: Polled at every batch; when set, the run saves its checkpoint and raises CancelledError.
        cache: Folder of the preprocessed cache (None or True: ``OUT.cache`` beside the output, see
            :func:`default_cache_dir`); False prepares every case in memory instead. Unused when ``dataset`` is a
            cache.

    Returns:
        :class:`~MedAnalysisLib.training.runner.TrainResult`.

    Raises:
        InputError: Invalid options (before any scan is read), cases without what the task needs, a plan for
            another number of channels, labels the data does not hold, a cache prepared with another plan or for
            another family, a cache whose files do not match their records.
        OutputError: The cache folder holds something other than a cache.
    """
    from MedAnalysisLib.data.cache import is_cache, open_cache

    options = TrainingOptions.build(options, **fields)
    reporter = reporter or Reporter("none")
    if isinstance(dataset, (str, Path)) and is_cache(dataset):
        return _train_from_cache(open_cache(dataset), options, reporter, stop_flag)
    dataset = _load_dataset(dataset, options)
    foreground_targets = _check_targets(dataset, options)
    train_cases, val_cases = _split(dataset, options)
    reporter.log(f"{len(train_cases)} training and {len(val_cases)} validation cases")
    family = options.family
    if cache is False:
        plan = _plan_for(dataset, train_cases, options, reporter, stop_flag)
        labels = _labels_for(dataset, plan, str(options.task), family, options.labels)
        train_prepared = _prepare(plan, train_cases, family, workers=options.workers, reporter=reporter,
                                  stop_flag=stop_flag, stage="prepare")
        val_prepared = _prepare(plan, val_cases, family, workers=options.workers, reporter=reporter,
                                stop_flag=stop_flag, stage="prepare-val") if val_cases else []
        signature = _data_signature(train_cases, val_cases)
    else:
        cache_dir = Path(cache) if isinstance(cache, (str, Path)) else default_cache_dir(options.out)
        auto = None
        plan = options.plan.replace(**options.plan_overrides) if options.plan and options.plan_overrides \
            else options.plan
        if plan is None:
            key = _auto_plan_key(train_cases, options)
            plan = _cached_plan(cache_dir, key)
            if plan is None:
                plan = _plan_for(dataset, train_cases, options, reporter, stop_flag)
            auto = {"key": key, "plan": plan.to_dict()}
        if plan.n_channels != dataset.n_channels:
            raise InputError(f"expected a plan for {dataset.n_channels} channel(s), got one for {plan.n_channels}")
        labels = _labels_for(dataset, plan, str(options.task), family, options.labels)
        opened = _prepare_into_cache(dataset, plan, family, cache_dir, options, reporter, stop_flag, auto)
        train_prepared = [opened.case(c.case_id) for c in train_cases]
        val_prepared = [opened.case(c.case_id) for c in val_cases]
        signature = _cache_signature(opened, train_cases, val_cases)
    return _fit(dataset, options, plan, labels, (train_cases, val_cases), (train_prepared, val_prepared), signature,
                foreground_targets, reporter, stop_flag)


def _train_from_cache(cache: Any, options: TrainingOptions, reporter: Reporter, stop_flag: StopFlag | None) -> Any:
    """Train on a cache's cases: the same split, plan and batches as ``train DATA`` with that cache."""
    dataset = _cache_dataset(cache)
    foreground_targets = _check_targets(dataset, options)
    train_cases, val_cases = _split(dataset, options)
    reporter.log(f"{len(train_cases)} training and {len(val_cases)} validation cases from the cache {cache.root}")
    plan = _plan_of_cache(cache, options, options.family)
    if plan.n_channels != dataset.n_channels:
        raise InputError(f"expected a plan for {dataset.n_channels} channel(s), got one for {plan.n_channels}")
    labels = _labels_for(dataset, plan, str(options.task), options.family, options.labels)
    prepared = ([cache.case(c.case_id) for c in train_cases], [cache.case(c.case_id) for c in val_cases])
    return _fit(dataset, options, plan, labels, (train_cases, val_cases), prepared,
                _cache_signature(cache, train_cases, val_cases), foreground_targets, reporter, stop_flag)


def _fit(dataset: Any, options: TrainingOptions, plan: Any, labels: tuple[LabelInfo, ...],
         split: tuple[list[Any], list[Any]],
         prepared: tuple[Sequence[Any], Sequence[Any]], signature: str, foreground_targets: bool,
         reporter: Reporter, stop_flag: StopFlag | None) -> TrainResult:
    """Labels, hyper-parameters, batches and the training loop, for prepared cases in memory or in a cache."""
    train_cases, val_cases = split
    family = options.family
    hparams = default_hparams(family, dict(options.hparams), len(labels), _input_shape(family, plan), plan)
    feeding = Feeding(family=family, plan=plan, train_cases=prepared[0], val_cases=prepared[1],
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
        make_feeders=feeding.make, data_signature=signature,
        name=options.name or f"{Path(str(dataset.root or 'data')).name}-{family}",
        monitor=options.monitored or (("val_slices_loss", "min") if slice_loss else None),
        provenance=_provenance(dataset, options, train_cases, val_cases),
        card={"training_data": {**_training_data(dataset), "n_cases": len(train_cases)}},
    )
    return fit_and_bundle(spec, reporter=reporter, stop_flag=stop_flag)
