"""Run a model bundle on one scan and return the result in the scan's own geometry.

``predict(bundle, images)`` does, for every task and family:

1. validate the input (Volumes, channel count, finite voxels, a real 3D volume for 3D models);
2. apply the bundle's preprocessing plan (:func:`~MedAnalysisLib.preprocessing.transforms.apply_plan`, or
   :func:`~MedAnalysisLib.preprocessing.transforms.prepare_slices` for 2D and slice-sequence models);
3. run the model: sliding windows for ``unet3d``, batches of slices for ``unet2d`` and ``slice_cnn``, the whole
   sequence for ``cnn_rnn``, the whole volume for ``cnn3d``;
4. invert the plan (probabilities are interpolated, then the arg-max is taken on the input grid), map class indices
   to label values, post-process;
5. build tables with label names (volumes per label for segmentation, probabilities per class for classifiers).

Segmentation results have exactly the input's shape, spacing, origin and direction.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib.errors import ImageValidationError, InputError, MemoryBudgetError, PlanError
from MedAnalysisLib.volume import Volume

#: Families run with 3D sliding windows / slice by slice / whole sequence / whole volume.
SLIDING_3D = {"unet3d"}
SLICE_SEGMENTATION = {"unet2d"}
SLICE_CLASSIFIERS = {"slice_cnn"}
SEQUENCE_CLASSIFIERS = {"cnn_rnn"}
VOLUME_CLASSIFIERS = {"cnn3d"}

#: Source metadata kept on results (needed to reference the source series in DICOM SEG); never patient data, and no
#: free text from the headers (a series description can name the patient, the site or the protocol).
SOURCE_KEYS = ("Modality", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")


@dataclass
class Prediction:
    """The result of :func:`predict` for one case.

    Attributes:
        task: ``"segmentation"`` or ``"classification"``.
        label: Segmentation label map on the input grid (uint8/uint16 label *values*, 0 = background), else None.
        probabilities: ``(k, j, i, n_classes)`` float32 on the input grid when requested, else None.
        table: Rows with label names: per label ``value, name, voxels, volume_mm3, volume_ml`` (segmentation), or
            per class ``value, name, probability`` (whole-scan classification), or the per-slice rows.
        per_slice: Per-slice rows for slice classifiers (``slice`` index along the input's k axis where the plan
            keeps it, ``position_lps`` of the slice centre, one probability per class, ``predicted``).
        scan: Whole-scan result for ``cnn_rnn``/``cnn3d``: ``{"predicted": name, "value": int, "probabilities":
            {name: p}}``.
        timings: Seconds per stage (``preprocess``, ``model``, ``postprocess``, ``total``).
        bundle_name: The bundle's name.
        bundle_sha256: sha256 of the bundle weights that produced this result.
        details: How it ran (precision, overlap, tta, windows, batch size, post-processing, output mode).
        source: Non-identifying facts about the input (Modality and UIDs when it was DICOM).
    """

    task: str
    label: Volume | None
    probabilities: Volume | None
    table: list[dict[str, Any]]
    per_slice: list[dict[str, Any]] | None
    scan: dict[str, Any] | None
    timings: dict[str, float]
    bundle_name: str
    bundle_sha256: str
    details: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)


def label_volume_table(label_volume: Volume, labels: Sequence[Any] | dict[int, str]) -> list[dict[str, Any]]:
    """One row per foreground label: ``value``, ``name``, ``voxels``, ``volume_mm3``, ``volume_ml``.

    Args:
        label_volume: Integer label map with its spacing (mm).
        labels: ``LabelInfo`` objects or a ``{value: name}`` dict; the background (0) is left out.
    """
    names = labels if isinstance(labels, dict) else {int(label.value): str(label.name) for label in labels}
    counts = np.bincount(np.asarray(label_volume.array).ravel().astype(np.int64), minlength=max(names, default=0) + 1)
    voxel_mm3 = float(np.prod(label_volume.spacing))
    rows = []
    for value, name in sorted(names.items()):
        if value == 0:
            continue
        voxels = int(counts[value]) if value < len(counts) else 0
        rows.append({"value": int(value), "name": name, "voxels": voxels, "volume_mm3": voxels * voxel_mm3,
                     "volume_ml": voxels * voxel_mm3 / 1000.0})
    return rows


def _as_volumes(images: Volume | Sequence[Volume]) -> list[Volume]:
    if isinstance(images, Volume):
        return [images]
    if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
        raise InputError(
            f"expected a Volume or a list of Volumes (one per channel), got {type(images).__name__}; wrap arrays "
            "with MedAnalysisLib.Volume(array, spacing, origin, direction) so the result keeps their geometry"
        )
    volumes = list(images)
    if not volumes or not all(isinstance(v, Volume) for v in volumes):
        raise InputError(f"expected one Volume per channel, got {[type(v).__name__ for v in volumes]}")
    return volumes


def _validate(volumes: list[Volume], family: str, plan: Any) -> None:
    channels = sum(v.n_components for v in volumes)
    if channels != plan.n_channels:
        raise InputError(
            f"expected {plan.n_channels} image channel(s) {list(plan.channel_names)} for this model, got {channels}"
        )
    for volume in volumes:
        bad = int(np.size(volume.array) - np.count_nonzero(np.isfinite(volume.array)))
        if bad:
            raise ImageValidationError(f"expected finite voxel values, got {bad} NaN/Inf voxels in the input image")
        _check_resampled_size(volume, plan, volume.n_components)
        if family in SLIDING_3D | VOLUME_CLASSIFIERS and min(volume.shape) < 2:
            raise ImageValidationError(
                f"expected a 3D volume for the 3D model {family!r}, got a 2D image of shape (k, j, i) {volume.shape}; "
                "use a 2D model (unet2d, slice_cnn) for single slices"
            )


#: Largest axis a resampled grid may have (ITK sizes are unsigned 32-bit; far larger than any scan).
MAX_RESAMPLED_AXIS = 2**31 - 1


def _check_resampled_size(volume: Volume, plan: Any, channels: int) -> None:
    """Refuse an input whose grid, resampled to the plan's voxel size, would not fit in memory: a header claiming
    1e30 mm voxels (or 1000 mm ones) asks the resampler for an absurd grid, which would overflow it or exhaust the
    machine. Judged from the header alone (shape and spacing), before anything is allocated.

    Raises:
        MemoryBudgetError: The resampled image (float32, every channel) needs more than half the physical memory,
            or an axis longer than :data:`MAX_RESAMPLED_AXIS`.
    """
    if plan.target_spacing is None:
        return
    from MedAnalysisLib.io.validate import default_memory_budget, format_bytes

    size_ijk = np.array(volume.shape[:3][::-1], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        ratio = np.asarray(volume.spacing, np.float64) / np.asarray(plan.target_spacing, np.float64)
        new_size = np.where(size_ijk == 1, 1.0, np.maximum(1.0, np.round(size_ijk * ratio)))
        needed = float(np.prod(new_size)) * channels * 4.0
    limit = default_memory_budget()
    if (np.all(np.isfinite(new_size)) and new_size.max() <= MAX_RESAMPLED_AXIS
            and (limit is None or needed <= limit)):
        return
    spacing = ", ".join(f"{s:g}" for s in volume.spacing)
    target = ", ".join(f"{s:g}" for s in plan.target_spacing)
    grid = " x ".join(f"{s:g}" for s in new_size)
    raise MemoryBudgetError(
        f"expected an image whose grid, resampled to the plan's ({target}) mm voxels, fits in memory"
        f"{f' ({format_bytes(limit)})' if limit is not None else ''}, got voxels of ({spacing}) mm over "
        f"{volume.shape[:3][::-1]} (i, j, k), which would resample to {grid} voxels; check the spacing in the "
        "file's header"
    )


def _load(bundle: Any) -> Any:
    from MedAnalysisLib.bundles import LoadedBundle, load_bundle

    if isinstance(bundle, LoadedBundle):
        return bundle
    if isinstance(bundle, (str, os.PathLike)):
        return load_bundle(Path(bundle))
    raise InputError(f"expected a LoadedBundle or a bundle path, got {type(bundle).__name__}")


def _class_values(config: Any) -> np.ndarray:
    """Label value of each model output channel: for segmentation the plan's label_values order, as in training; a
    classifier's outputs are its own classes (a slice classifier trained on label maps with values 0 and 3 still
    answers 0 or 1, "absent" or "present")."""
    values = list(config.plan.label_values) if config.task == "segmentation" else []
    if len(values) != config.n_classes:
        values = sorted(label.value for label in config.labels)
    return np.asarray(values, dtype=np.int64)


def _label_dtype(values: np.ndarray) -> type:
    return np.uint8 if values.max(initial=0) <= 255 else np.uint16


class _Runner:
    """A cached ``predict_fn`` per (model, precision, output key): tracing happens once per model and process.

    Entries hold the model itself, so an ``id`` is never reused for another model while its entry exists.
    """

    _cache: dict[tuple[int, str, str | None], tuple[Any, Any]] = {}

    @classmethod
    def get(cls, model: Any, precision: str, output_key: str | None = None,
            patch: tuple[int, ...] | None = None) -> Any:
        from MedAnalysisLib.inference.model_runner import keras_predict_fn

        key = (id(model), precision, output_key)
        cached = cls._cache.get(key)
        if cached is None or cached[0] is not model:
            if len(cls._cache) >= 8:
                cls._cache.clear()
            function = keras_predict_fn(model, precision=precision, output_key=output_key,  # type: ignore[arg-type]
                                        patch_size=patch)
            cls._cache[key] = (model, function)
        return cls._cache[key][1]


def _settings(config: Any, overlap: float | None, tta: bool | None,
              postprocess: str | Sequence[str] | None) -> tuple[float, bool, tuple[str, ...]]:
    """Overlap, TTA and post-processing steps: the caller's where given, else the bundle's inference defaults."""
    from MedAnalysisLib.inference.postprocess import normalise_steps

    defaults = config.inference
    return (float(defaults["overlap"] if overlap is None else overlap), bool(defaults["tta"] if tta is None else tta),
            normalise_steps(defaults["postprocess"] if postprocess is None else postprocess))


#: Flips that slice test-time augmentation averages over: none, H, W, both (axes of a ``(B, H, W, C)`` batch).
_SLICE_FLIPS: tuple[tuple[int, ...], ...] = ((), (1,), (2,), (1, 2))


def _flip_tta_2d(predict_fn: Any, x: np.ndarray, tta: bool, *, maps: bool = True) -> np.ndarray:
    """Predict a batch of slices ``(B, H, W, C)``, averaging over H/W flips when ``tta``.

    ``maps``: the output is a map on the slice grid, flipped back before averaging; otherwise (class scores) the
    outputs of the flipped slices are averaged as they are.
    """
    flips = _SLICE_FLIPS if tta else _SLICE_FLIPS[:1]
    total = None
    for axes in flips:
        y = np.asarray(predict_fn(np.ascontiguousarray(np.flip(x, axes)) if axes else x), np.float32)
        y = np.flip(y, axes) if axes and maps else y
        total = y if total is None else total + y
    assert total is not None
    return total / len(flips)


def _class_probabilities(raw: np.ndarray, n_classes: int) -> np.ndarray:
    """``(..., n_classes)`` probabilities from a sigmoid ``(..., 1)`` (binary) or soft-max output."""
    raw = np.asarray(raw, np.float32)
    if raw.shape[-1] == 1 and n_classes == 2:
        return np.concatenate([1.0 - raw, raw], axis=-1)
    if raw.shape[-1] != n_classes:
        raise InputError(f"expected the model to output {n_classes} classes, got {raw.shape[-1]}")
    return raw


def predict(
    bundle: Any,
    images: Volume | Sequence[Volume],
    *,
    overlap: float | None = None,
    tta: bool | None = None,
    postprocess: str | Sequence[str] | None = None,
    batch_size: int | None = None,
    precision: str = "float32",
    memory_budget_mb: float | None = None,
    return_probabilities: bool = False,
    reporter: Any = None,
    stop_flag: Any = None,
) -> Prediction:
    """Run ``bundle`` on one case.

    Args:
        bundle: A :class:`~MedAnalysisLib.bundles.LoadedBundle` or a bundle path (folder or .zip); an ensemble
            (:mod:`MedAnalysisLib.bundles.ensemble`) runs every member and averages their probabilities.
        images: One Volume per input channel (or one multi-component Volume), any geometry.
        overlap: Sliding-window overlap in [0, 1) (default: the bundle's).
        tta: Test-time augmentation by flips (default: the bundle's).
        postprocess: ``"largest_component"``/``"fill_holes"`` or a list of both (default: the bundle's).
        batch_size: Windows or slices per model call (default: the plan's batch size for 3D, 16 slices for 2D).
        precision: ``"float32"``, ``"bfloat16"`` or ``"auto"`` (bfloat16 on CPUs with AVX-512 BF16).
        memory_budget_mb: Cap on the sliding-window buffers; above it the batch shrinks, then only the label map
            is accumulated (no probability map).
        return_probabilities: Also return the probability map on the input grid (segmentation).
        reporter: A :class:`~MedAnalysisLib.progress.Reporter` for progress lines, or None.
        stop_flag: A :class:`~MedAnalysisLib.progress.StopFlag`; when set, :class:`CancelledError` is raised at the
            next model call.

    Returns:
        A :class:`Prediction`.

    Raises:
        InputError: Wrong channel count, non-Volume input, a 2D image for a 3D model (ImageValidationError), NaN/Inf;
            an input whose grid resampled to the plan's spacing would not fit in memory, as a header with an absurd
            spacing asks (MemoryBudgetError, before anything is allocated).
        BundleError: The bundle fails its checks.
    """
    started = time.perf_counter()
    loaded = _load(bundle)
    options = {"overlap": overlap, "tta": tta, "postprocess": postprocess, "batch_size": batch_size,
               "precision": precision, "memory_budget_mb": memory_budget_mb,
               "return_probabilities": return_probabilities, "reporter": reporter, "stop_flag": stop_flag}
    if len(loaded.members) > 1:  # an ensemble: every member runs, and their probabilities are averaged
        return _predict_ensemble(loaded, images, **options)
    job = _Job.start(loaded, images, started, **options)
    config, family = job.config, job.family
    if config.task == "classification":
        return _classify(job)
    if family in SLIDING_3D:
        label_array, probabilities, inverted_at = _segment_windows(job)
    elif family in SLICE_SEGMENTATION:
        label_array, probabilities, inverted_at = _segment_slices(job)
    else:
        raise PlanError(f"expected a segmentation family {sorted(SLIDING_3D | SLICE_SEGMENTATION)} or a "
                        f"classification task, got task {config.task!r} with family {family!r}")
    return _finish_segmentation(job, label_array, probabilities, inverted_at)


@dataclass
class _Job:
    """One single-bundle prediction: the bundle, the validated input and the settings the steps of :func:`predict`
    share, with the timings and details they fill in."""

    loaded: Any
    volumes: list[Volume]
    overlap: float
    tta: bool
    steps: tuple[str, ...]
    batch_size: int | None
    precision: str
    memory_budget_mb: float | None
    return_probabilities: bool
    reporter: Any
    stop_flag: Any
    started: float
    values: np.ndarray = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = _class_values(self.config)
        self.details.update(family=self.family, overlap=self.overlap, tta=self.tta, postprocess=list(self.steps))

    @classmethod
    def start(cls, loaded: Any, images: Volume | Sequence[Volume], started: float, *, overlap: float | None,
              tta: bool | None, postprocess: str | Sequence[str] | None, **options: Any) -> _Job:
        """Validate the input against the bundle and resolve the settings against its defaults."""
        volumes = _as_volumes(images)
        _validate(volumes, loaded.config.family, loaded.config.plan)
        overlap, tta, steps = _settings(loaded.config, overlap, tta, postprocess)
        return cls(loaded, volumes, overlap, tta, steps, started=started, **options)

    @property
    def config(self) -> Any:
        return self.loaded.config

    @property
    def plan(self) -> Any:
        return self.loaded.config.plan

    @property
    def family(self) -> str:
        return str(self.loaded.config.family)

    @property
    def names(self) -> dict[int, str]:
        return self.config.label_names()

    @property
    def class_names(self) -> list[str]:
        names = self.names
        return [names.get(int(v), str(int(v))) for v in self.values]

    @property
    def source(self) -> dict[str, Any]:
        """Non-identifying facts about the input (see :data:`SOURCE_KEYS`)."""
        return {k: self.volumes[0].metadata[k] for k in SOURCE_KEYS if k in self.volumes[0].metadata}

    @property
    def should_stop(self) -> Any:
        return self.stop_flag.is_set if self.stop_flag is not None else None

    def progress(self, done: int, total: int) -> None:
        if self.reporter is not None:
            self.reporter.progress("predict", done, total, f"{done}/{total} model calls")

    def check_stop(self) -> None:
        if self.stop_flag is not None and self.stop_flag.is_set():
            from MedAnalysisLib.errors import CancelledError

            raise CancelledError("prediction stopped on request")

    def prediction(self, label: Volume | None, probabilities: Volume | None, table: list[dict[str, Any]],
                   per_slice: list[dict[str, Any]] | None = None, scan: dict[str, Any] | None = None) -> Prediction:
        self.timings["total"] = time.perf_counter() - self.started
        return Prediction(self.config.task, label, probabilities, table, per_slice, scan, self.timings,
                          self.config.name, self.loaded.weights_sha256, self.details, self.source)


def _segment_windows(job: _Job) -> tuple[np.ndarray, Volume | None, float]:
    """3D sliding windows over the prepared volume; the label values (and probabilities) back on the input grid.

    Returns ``(label values, probabilities or None, time the inversion started)``.
    """
    from MedAnalysisLib.inference.sliding_window import make_grid, sliding_window_predict
    from MedAnalysisLib.preprocessing.transforms import apply_plan, invert_plan

    plan, values = job.plan, job.values
    t0 = time.perf_counter()
    prepared = apply_plan(plan, job.volumes)
    job.timings["preprocess"] = time.perf_counter() - t0
    patch = tuple(int(p) for p in plan.patch_size)
    predict_fn = _Runner.get(job.loaded.model, job.precision, None, patch)
    padded = [max(s, p) for s, p in zip(prepared.image.shape[:3], patch, strict=True)]
    job.details.update(precision=predict_fn.precision, patch_size=list(patch),
                       windows=len(make_grid(padded, patch, job.overlap)))
    t0 = time.perf_counter()
    output = "probabilities"
    window_options = {"n_classes": job.config.n_classes, "overlap": job.overlap,
                      "batch_size": int(job.batch_size or plan.batch_size), "tta_flips": job.tta,
                      "memory_budget_mb": job.memory_budget_mb, "progress": job.progress,
                      "should_stop": job.should_stop}
    try:
        result = sliding_window_predict(predict_fn, prepared.image, patch, **window_options)
    except MemoryBudgetError:
        if job.return_probabilities:
            raise
        output = "labels"  # the probability volume does not fit: accumulate the arg-max only
        result = sliding_window_predict(predict_fn, prepared.image, patch, output="labels", **window_options)
    job.timings["model"] = time.perf_counter() - t0
    job.details["output"] = output
    t0 = time.perf_counter()
    probabilities = None
    if output == "probabilities":
        restored = invert_plan(plan, result, prepared.inverse, kind="probability")
        classes = np.argmax(restored.array, axis=-1)
        if job.return_probabilities:
            probabilities = restored
    else:
        classes = invert_plan(plan, result, prepared.inverse, kind="label").array
    return values[classes].astype(_label_dtype(values)), probabilities, t0


def _segment_slices(job: _Job) -> tuple[np.ndarray, Volume | None, float]:
    """2D segmentation slice by slice (batches of slices); as :func:`_segment_windows`."""
    from MedAnalysisLib.preprocessing.transforms import invert_plan, prepare_slices

    values = job.values
    t0 = time.perf_counter()
    slices, inverse = prepare_slices(job.plan, job.volumes)
    job.timings["preprocess"] = time.perf_counter() - t0
    predict_fn = _Runner.get(job.loaded.model, job.precision)
    job.details.update(precision=predict_fn.precision, slices=int(slices.shape[0]))
    batch = int(job.batch_size or 16)
    t0 = time.perf_counter()
    outputs = []
    for start in range(0, len(slices), batch):
        job.check_stop()
        raw = _flip_tta_2d(predict_fn, slices[start : start + batch], job.tta)
        outputs.append(_class_probabilities(raw, job.config.n_classes))
        job.progress(min(start + batch, len(slices)), len(slices))
    result = np.concatenate(outputs, axis=0)
    job.timings["model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    restored = invert_plan(job.plan, result, inverse, kind="probability")
    job.details["output"] = "probabilities"
    label_array = values[np.argmax(restored.array, axis=-1)].astype(_label_dtype(values))
    return label_array, restored if job.return_probabilities else None, t0


def _finish_segmentation(job: _Job, label_array: np.ndarray, probabilities: Volume | None,
                         inverted_at: float) -> Prediction:
    """Post-process the label map, give it the input's geometry, and count each label's volume."""
    from MedAnalysisLib.inference.postprocess import postprocess_labels

    label_array = postprocess_labels(label_array, job.steps, label_values=[v for v in job.values.tolist() if v != 0])
    label = job.volumes[0].with_array(label_array)
    label = Volume(label.array, label.spacing, label.origin, label.direction,
                   metadata={"bundle": job.config.name, "kind": "label"})
    table = label_volume_table(label, job.names)
    job.timings["postprocess"] = time.perf_counter() - inverted_at
    return job.prediction(label, probabilities, table)


def _scan_result(probs: np.ndarray, class_names: Sequence[str], values: np.ndarray) -> dict[str, Any]:
    best = int(np.argmax(probs))
    return {"predicted": class_names[best], "value": int(values[best]),
            "probabilities": {name: float(p) for name, p in zip(class_names, probs, strict=True)}}


def _classify(job: _Job) -> Prediction:
    """Classification: per-slice rows (slice and sequence classifiers) and/or a whole-scan result."""
    family, values, class_names = job.family, job.values, job.class_names
    per_slice: list[dict[str, Any]] | None = None
    scan: dict[str, Any] | None = None
    if family in SLICE_CLASSIFIERS | SEQUENCE_CLASSIFIERS:
        per_slice, scan = _classify_slices(job)
        table = per_slice
    elif family in VOLUME_CLASSIFIERS:
        probs = _classify_volume(job)
        scan = _scan_result(probs, class_names, values)
        table = [{"value": int(v), "name": n, "probability": float(p)}
                 for v, n, p in zip(values, class_names, probs, strict=True)]
    else:
        raise PlanError(f"expected a classification family among "
                        f"{sorted(SLICE_CLASSIFIERS | SEQUENCE_CLASSIFIERS | VOLUME_CLASSIFIERS)}, got {family!r}")
    if scan is not None and family in SEQUENCE_CLASSIFIERS:
        table = [{"value": int(v), "name": n, "probability": scan["probabilities"][n]}
                 for v, n in zip(values, class_names, strict=True)]
    return job.prediction(None, None, table, per_slice, scan)


def _classify_slices(job: _Job) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Per-slice probabilities (and, for sequence models, the whole-scan result) with each slice's position."""
    from MedAnalysisLib.preprocessing.transforms import prepare_slices

    n_classes, class_names = job.config.n_classes, job.class_names
    scan: dict[str, Any] | None = None
    t0 = time.perf_counter()
    slices, inverse = prepare_slices(job.plan, job.volumes)
    job.timings["preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if job.family in SEQUENCE_CLASSIFIERS:
        # A traced call (slice count left free), not an eager one: eager Keras runs the recurrent loop op by op.
        sequence_fn = _Runner.get(job.loaded.model, "float32")
        mask = np.ones((1, len(slices)), bool)
        flips = _SLICE_FLIPS if job.tta else _SLICE_FLIPS[:1]  # shifted by one: H, W of (1, S, H, W, C)
        runs = [sequence_fn({"slices": np.ascontiguousarray(np.flip(slices[None], tuple(a + 1 for a in axes))),
                             "mask": mask}) for axes in flips]
        slice_probs = np.mean([_class_probabilities(np.asarray(o["slices"])[0], n_classes) for o in runs], axis=0)
        scan = _scan_result(np.mean([_class_probabilities(np.asarray(o["scan"]), n_classes)[0] for o in runs],
                                    axis=0), class_names, job.values)
        job.details.update(precision="float32")
    else:
        predict_fn = _Runner.get(job.loaded.model, job.precision)
        job.details.update(precision=predict_fn.precision)
        batch = int(job.batch_size or 32)
        chunks = []
        for start in range(0, len(slices), batch):
            job.check_stop()
            chunks.append(_class_probabilities(_flip_tta_2d(predict_fn, slices[start : start + batch], job.tta,
                                                            maps=False), n_classes))
            job.progress(min(start + batch, len(slices)), len(slices))
        slice_probs = np.concatenate(chunks, axis=0)
    job.timings["model"] = time.perf_counter() - t0
    per_slice = []
    original = job.volumes[0]
    centre_ij = ((inverse.prepared.shape[2] - 1) / 2.0, (inverse.prepared.shape[1] - 1) / 2.0)
    for s, probs in enumerate(slice_probs):
        position = inverse.prepared.index_to_physical((centre_ij[0], centre_ij[1], float(s)))
        k_original = float(original.physical_to_index(position)[2])
        row: dict[str, Any] = {"slice": int(round(k_original)) if abs(k_original - round(k_original)) < 0.25 else s,
                               "position_lps": [round(float(c), 3) for c in position]}
        row.update({f"p_{name}": float(p) for name, p in zip(class_names, probs, strict=True)})
        row["predicted"] = class_names[int(np.argmax(probs))]
        per_slice.append(row)
    job.details["slices"] = len(per_slice)
    return per_slice, scan


def _classify_volume(job: _Job) -> np.ndarray:
    """The class probabilities of a volume classifier (input centre-cropped or padded to the model's fixed size)."""
    from MedAnalysisLib.preprocessing.transforms import apply_plan

    n_classes = job.config.n_classes
    t0 = time.perf_counter()
    image = apply_plan(job.plan, job.volumes).image
    fixed = job.loaded.model.input_shape[1:4]
    if all(s is not None for s in fixed):  # centre crop/pad to a fixed input size
        pads = [(max(0, (f - s) // 2), max(0, f - s - (f - s) // 2))
                for s, f in zip(image.shape[:3], fixed, strict=True)]
        image = np.pad(image, [*pads, (0, 0)])
        starts = [(s - f) // 2 for s, f in zip(image.shape[:3], fixed, strict=True)]
        image = image[tuple(slice(a, a + f) for a, f in zip(starts, fixed, strict=True))]
    job.timings["preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    predict_fn = _Runner.get(job.loaded.model, job.precision)
    job.details.update(precision=predict_fn.precision)
    probs = _class_probabilities(predict_fn(image[None]), n_classes)[0]
    if job.tta:
        for axes in ((1,), (2,), (3,)):
            flipped = np.ascontiguousarray(np.flip(image[None], axes))
            probs = probs + _class_probabilities(predict_fn(flipped), n_classes)[0]
        probs = probs / 4
    job.timings["model"] = time.perf_counter() - t0
    return probs


def _predict_ensemble(
    ensemble: Any, images: Volume | Sequence[Volume], *, overlap: float | None, tta: bool | None,
    postprocess: str | Sequence[str] | None, batch_size: int | None, precision: str, memory_budget_mb: float | None,
    return_probabilities: bool, reporter: Any, stop_flag: Any,
) -> Prediction:
    """Run every member of an ensemble with the ensemble's settings and average their probabilities on the input grid.

    Segmentation: the members' probability maps (each member's own plan inverted) are summed as they come, so memory
    holds the running sum and one member's map whatever the number of members; the arg-max and the post-processing
    run once on the mean. Classification: per-slice and whole-scan probabilities are averaged.
    """
    started = time.perf_counter()
    config = ensemble.config
    overlap, tta, steps = _settings(config, overlap, tta, postprocess)
    values = _class_values(config)
    member_options = {"overlap": overlap, "tta": tta, "postprocess": "none", "batch_size": batch_size,
                      "precision": precision, "memory_budget_mb": memory_budget_mb, "reporter": reporter,
                      "stop_flag": stop_flag}
    results, summed = _run_members(ensemble, images, values, member_options)
    timings: dict[str, float] = {}
    for result in results:
        for stage, seconds in result.timings.items():
            if stage != "total":
                timings[stage] = timings.get(stage, 0.0) + seconds
    details: dict[str, Any] = {
        "family": config.family, "overlap": overlap, "tta": tta, "postprocess": list(steps),
        "precision": results[0].details.get("precision"), "output": "probabilities",
        "ensemble": {"members": len(results), "combine": "mean",
                     "member_weights_sha256": [r.bundle_sha256 for r in results]},
    }
    t0 = time.perf_counter()
    if summed is not None:
        combined = _mean_segmentation(config, summed, len(results), values, steps, return_probabilities)
    else:
        combined = _mean_classification(config, results, values, details)
    timings["combine"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    return dataclasses.replace(combined, timings=timings, bundle_sha256=ensemble.weights_sha256, details=details,
                               source=dict(results[0].source))


def _run_members(ensemble: Any, images: Volume | Sequence[Volume], values: np.ndarray,
                 options: dict[str, Any]) -> tuple[list[Prediction], Volume | None]:
    """Each member's prediction (without its probability map) and, for segmentation, the sum of the members'
    probability maps on the input grid."""
    from MedAnalysisLib.errors import BundleError

    segmentation = ensemble.config.task == "segmentation"
    reporter = options["reporter"]
    results: list[Prediction] = []
    summed: Volume | None = None
    for number, member in enumerate(ensemble.members):
        if not np.array_equal(_class_values(member.config), values):
            raise BundleError(f"expected every ensemble member to order its output classes as {values.tolist()}, got "
                              f"{_class_values(member.config).tolist()} in {member.config.name!r}")
        if reporter is not None:
            reporter.log(f"ensemble member {number + 1}/{len(ensemble.members)}: {member.config.name}")
        try:
            result = predict(member, images, return_probabilities=segmentation, **options)
        except MemoryBudgetError as error:
            raise MemoryBudgetError(f"an ensemble averages probability maps, which do not fit the memory budget: "
                                    f"{error}") from error
        if segmentation:
            assert result.probabilities is not None
            if summed is None:  # the first member's own map (float32) becomes the running sum
                summed = result.probabilities.with_array(np.asarray(result.probabilities.array, dtype=np.float32))
            else:
                summed.array[...] += result.probabilities.array
            result = dataclasses.replace(result, probabilities=None)
        results.append(result)
    return results, summed


def _mean_segmentation(config: Any, summed: Volume, n_members: int, values: np.ndarray, steps: tuple[str, ...],
                       return_probabilities: bool) -> Prediction:
    """Arg-max and post-processing of the members' mean probabilities (``summed`` becomes the mean, in place)."""
    from MedAnalysisLib.inference.postprocess import postprocess_labels

    summed.array[...] /= n_members
    label_array = values[np.argmax(summed.array, axis=-1)].astype(_label_dtype(values))
    label_array = postprocess_labels(label_array, steps, label_values=[v for v in values.tolist() if v != 0])
    volume = summed.with_array(label_array)
    label = Volume(volume.array, volume.spacing, volume.origin, volume.direction,
                   metadata={"bundle": config.name, "kind": "label"})
    table = label_volume_table(label, config.label_names())
    return Prediction(config.task, label, summed if return_probabilities else None, table, None, None, {},
                      config.name, "")


def _mean_classification(config: Any, results: Sequence[Prediction], values: np.ndarray,
                         details: dict[str, Any]) -> Prediction:
    """Per-slice and whole-scan probabilities averaged over the members."""
    from MedAnalysisLib.errors import BundleError

    names = config.label_names()
    class_names = [names.get(int(v), str(int(v))) for v in values]
    first = results[0]
    per_slice: list[dict[str, Any]] | None = None
    scan: dict[str, Any] | None = None
    if first.per_slice is not None:
        slices = [[row["slice"] for row in (r.per_slice or [])] for r in results]
        if any(s != slices[0] for s in slices[1:]):
            raise BundleError("expected every ensemble member to classify the same slices, got "
                              f"{[len(s) for s in slices]} slices; the members' plans resample the slice axis "
                              "differently")
        per_slice = []
        for index, row in enumerate(first.per_slice):
            probs = np.mean([[r.per_slice[index][f"p_{n}"] for n in class_names] for r in results  # type: ignore[index]
                             ], axis=0)
            merged = {"slice": row["slice"], "position_lps": row["position_lps"]}
            merged.update({f"p_{n}": float(p) for n, p in zip(class_names, probs, strict=True)})
            merged["predicted"] = class_names[int(np.argmax(probs))]
            per_slice.append(merged)
        details["slices"] = len(per_slice)
    if first.scan is not None:
        probs = np.mean([[r.scan["probabilities"][n] for n in class_names] for r in results], axis=0)  # type: ignore[index]
        scan = _scan_result(probs, class_names, values)
    if scan is not None:
        table = [{"value": int(v), "name": n, "probability": scan["probabilities"][n]}
                 for v, n in zip(values, class_names, strict=True)]
    else:
        table = per_slice or []
    return Prediction(config.task, None, None, table, per_slice, scan, {}, config.name, "")
