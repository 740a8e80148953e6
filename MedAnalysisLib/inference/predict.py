"""Run a model bundle on one scan and return the result in the scan's own geometry.

``predict(bundle, images)`` does, for every task and family:

1. validate the input (Volumes, channel count, finite voxels, a real 3D volume for 3D models);
2. apply the bundle's preprocessing plan (:func:`~MedAnalysisLib.preprocessing.transforms.apply_plan`, or
   :func:`~MedAnalysisLib.preprocessing.transforms.prepare_slices` for 2D and slice-sequence models);
3. run the model: sliding windows for ``unet3d``, batches of slices for ``unet2d`` and ``slice_cnn``, the whole
   sequence for ``cnn_rnn``, the whole volume for ``cnn3d``;
4. invert the plan (probabilities are interpolated, then the arg-max is taken on the input grid), map class indices
   to label values, post-process;
5. build tables with label names (volumes per label for segmentation, probabilities per class for classifiers);
6. on request, measure how sure the prediction is (``uncertainty=True``: entropy and, over several test-time flips or
   ensemble members, disagreement; see :mod:`MedAnalysisLib.inference.uncertainty`) and explain a classifier's answer
   (``explain=True``: a heatmap from :mod:`MedAnalysisLib.inference.explain`).

Segmentation results, uncertainty maps and heatmaps have exactly the input's shape, spacing, origin and direction.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib.errors import InputError, MemoryBudgetError, PlanError
from MedAnalysisLib.inference import as_volumes, class_values, validate_input
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
        details: How it ran (precision, overlap, tta, windows, batch size, post-processing, output mode); with
            uncertainty, ``details["uncertainty"]`` (``passes``, ``measures``, the case's ``foreground_entropy`` or
            classification ``entropy``, and a ``note`` when one pass allows no disagreement); with an explanation,
            ``details["explanation"]`` (``target_value``, ``target_name``, ``method``, ``layer``).
        source: Non-identifying facts about the input (Modality and UIDs when it was DICOM).
        uncertainty: Segmentation with ``uncertainty=True``: ``{"entropy": Volume}`` and, with more than one pass
            (test-time flips or ensemble members), ``"disagreement"``: float32 in [0, 1] on the input grid (exact
            input geometry). None otherwise (classification uncertainty is in the tables and ``scan``).
        explanation: The :class:`~MedAnalysisLib.inference.explain.Explanation` of a classifier with
            ``explain=True``, else None.
        pass_stats: Classification with ``uncertainty=True``: the per-pass sums (``"slices"``, ``"scan"``:
            :class:`~MedAnalysisLib.inference.uncertainty.PassStats`) from which the columns were computed, kept so
            that an ensemble merges its members' passes exactly.
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
    uncertainty: dict[str, Volume] | None = None
    explanation: Any | None = None
    pass_stats: dict[str, Any] | None = field(default=None, repr=False)


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


def _load(bundle: Any) -> Any:
    from MedAnalysisLib.bundles import LoadedBundle, load_bundle

    if isinstance(bundle, LoadedBundle):
        return bundle
    if isinstance(bundle, (str, os.PathLike)):
        return load_bundle(Path(bundle))
    raise InputError(f"expected a LoadedBundle or a bundle path, got {type(bundle).__name__}")


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


def _flip_passes_2d(predict_fn: Any, x: np.ndarray, tta: bool, *, maps: bool = True) -> list[np.ndarray]:
    """The model's output on a batch of slices ``(B, H, W, C)``, one array per H/W flip (just one without ``tta``).

    ``maps``: the output is a map on the slice grid, flipped back; otherwise (class scores) it is kept as it is.
    """
    flips = _SLICE_FLIPS if tta else _SLICE_FLIPS[:1]
    runs = []
    for axes in flips:
        y = np.asarray(predict_fn(np.ascontiguousarray(np.flip(x, axes)) if axes else x), np.float32)
        runs.append(np.flip(y, axes) if axes and maps else y)
    return runs


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
    uncertainty: bool = False,
    explain: bool = False,
    explain_target: int | str | None = None,
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
        uncertainty: Also measure how sure the prediction is (:attr:`Prediction.uncertainty` maps for segmentation,
            ``entropy``/``spread``/``disagreement`` columns; the maps count in ``memory_budget_mb``).
        explain: Also explain a classifier's answer (:attr:`Prediction.explanation`, a heatmap on the input grid).
        explain_target: The class to explain, by label value or name (default: the second class of a
            two-class model, else the predicted class).

    Returns:
        A :class:`Prediction`.

    Raises:
        InputError: Wrong channel count, non-Volume input, a 2D image for a 3D model (ImageValidationError), NaN/Inf;
            an input whose grid resampled to the plan's spacing would not fit in memory, as a header with an absurd
            spacing asks (MemoryBudgetError, before anything is allocated); ``explain`` for a segmentation bundle or
            an ``explain_target`` that is not one of its classes (before the model runs).
        BundleError: The bundle fails its checks.
    """
    started = time.perf_counter()
    loaded = _load(bundle)
    if explain:
        explain_target = check_explain_target(loaded.config, explain_target)
    options = {"overlap": overlap, "tta": tta, "postprocess": postprocess, "batch_size": batch_size,
               "precision": precision, "memory_budget_mb": memory_budget_mb,
               "return_probabilities": return_probabilities, "reporter": reporter, "stop_flag": stop_flag,
               "uncertainty": bool(uncertainty)}
    if len(loaded.members) > 1:  # an ensemble: every member runs, and their probabilities are averaged
        result = _predict_ensemble(loaded, images, **options)
    else:
        result = _predict_single(loaded, images, started, options)
    if explain:
        result = _explained(result, loaded, images, explain_target, batch_size, reporter, stop_flag)
    return result


def check_explain_target(config: Any, target: int | str | None) -> str | None:
    """The name of the class ``target`` names (a label name, or a label value as a number or its digits), or None
    for the explainer's default class; checked against ``bundle.json`` alone, before any work.

    Raises:
        InputError: A segmentation bundle (explanations are for classifiers), or a target that names no class.
    """
    if config.task != "classification":
        raise InputError(f"expected a classification bundle for explanations, got a {config.task} bundle "
                         f"({config.family}); use uncertainty maps to judge a segmentation")
    if target is None:
        return None
    names = {int(label.value): str(label.name) for label in config.labels}
    if isinstance(target, str) and target in names.values():
        return target
    text = str(target)  # as given: " 1" or "box " name no class, as the explainer itself says
    if not isinstance(target, bool) and re.fullmatch(r"-?[0-9]{1,9}", text):  # ASCII digits only: int() would
        value = int(text)  # also read other scripts' digits, and True is not the value 1
        if value in names:
            return names[value]
    from MedAnalysisLib.sanitize import terminal_field

    shown = ", ".join(f"'{terminal_field(name, 60)}'" for name in sorted(names.values()))
    raise InputError(f"expected a class to explain among [{shown}] (name or value {sorted(names)}), got "
                     f"'{terminal_field(text, 60)}'")


def _explained(result: Prediction, loaded: Any, images: Volume | Sequence[Volume], target: str | None,
               batch_size: int | None, reporter: Any, stop_flag: Any) -> Prediction:
    """``result`` with its explanation (:mod:`MedAnalysisLib.inference.explain`), recorded in ``details`` and, for
    sequence models, as a ``contribution`` column of the per-slice rows."""
    from MedAnalysisLib.inference.explain import explain as run_explain

    t0 = time.perf_counter()
    explanation = run_explain(loaded, as_volumes(images), target=target, batch_size=batch_size,
                              stop_flag=stop_flag, reporter=reporter)
    timings = {**result.timings, "explain": time.perf_counter() - t0}
    timings["total"] = timings.get("total", 0.0) + timings["explain"]
    details = {**result.details, "explanation": {
        "target_value": int(explanation.target_value), "target_name": str(explanation.target_name),
        "method": str(explanation.method), "layer": explanation.layer}}
    per_slice = result.per_slice
    contributions = getattr(explanation, "slice_contributions", None)
    if per_slice and contributions:
        by_slice = {int(item["slice"]): float(item["contribution"]) for item in contributions}
        per_slice = [{**row, "contribution": by_slice.get(int(row["slice"]))} for row in per_slice]
    table = per_slice if result.table is result.per_slice and per_slice is not None else result.table
    return dataclasses.replace(result, explanation=explanation, details=details, timings=timings,
                               per_slice=per_slice, table=table)


def _predict_single(loaded: Any, images: Volume | Sequence[Volume], started: float,
                    options: dict[str, Any]) -> Prediction:
    """:func:`predict` for one bundle (not an ensemble)."""
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
    uncertainty: bool = False
    values: np.ndarray = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    #: Uncertainty maps on the input grid (``entropy``, ``mean_entropy``), filled by the segmentation steps.
    maps: dict[str, Volume] = field(default_factory=dict)
    #: Per-pass sums of a classification (``slices``, ``scan``), filled by the classification steps.
    pass_stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = class_values(self.config)
        self.details.update(family=self.family, overlap=self.overlap, tta=self.tta, postprocess=list(self.steps))

    @classmethod
    def start(cls, loaded: Any, images: Volume | Sequence[Volume], started: float, *, overlap: float | None,
              tta: bool | None, postprocess: str | Sequence[str] | None, **options: Any) -> _Job:
        """Validate the input against the bundle and resolve the settings against its defaults."""
        volumes = as_volumes(images)
        validate_input(volumes, loaded.config.family, loaded.config.plan)
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

    @property
    def passes(self) -> int:
        """Passes one prediction averages: the test-time flips (8 for 3D windows, 4 for slices, 4 for cnn3d)."""
        if not self.tta:
            return 1
        return 8 if self.family in SLIDING_3D else 4

    def invert_maps(self, maps: dict[str, np.ndarray], inverse: Any) -> None:
        """Put uncertainty maps from the prepared grid on the input grid (linear, like probabilities; 0 outside the
        crop, where the prediction is a certain background)."""
        from MedAnalysisLib.preprocessing.transforms import invert_plan

        for name, array in maps.items():
            self.maps[name] = invert_plan(self.plan, array, inverse, kind="probability")

    def prediction(self, label: Volume | None, probabilities: Volume | None, table: list[dict[str, Any]],
                   per_slice: list[dict[str, Any]] | None = None, scan: dict[str, Any] | None = None,
                   uncertainty: dict[str, Volume] | None = None) -> Prediction:
        self.timings["total"] = time.perf_counter() - self.started
        return Prediction(self.config.task, label, probabilities, table, per_slice, scan, self.timings,
                          self.config.name, self.loaded.weights_sha256, self.details, self.source,
                          uncertainty=uncertainty, pass_stats=self.pass_stats or None)


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
                      "should_stop": job.should_stop, "uncertainty": job.uncertainty}
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
    if job.uncertainty:
        result, maps = result
        job.invert_maps(maps, prepared.inverse)
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
    from MedAnalysisLib.inference.uncertainty import normalised_entropy
    from MedAnalysisLib.preprocessing.transforms import invert_plan, prepare_slices

    values = job.values
    t0 = time.perf_counter()
    slices, inverse = prepare_slices(job.plan, job.volumes)
    job.timings["preprocess"] = time.perf_counter() - t0
    predict_fn = _Runner.get(job.loaded.model, job.precision)
    job.details.update(precision=predict_fn.precision, slices=int(slices.shape[0]))
    batch = int(job.batch_size or 16)
    t0 = time.perf_counter()
    outputs, mean_entropy = [], []
    for start in range(0, len(slices), batch):
        job.check_stop()
        runs = [_class_probabilities(raw, job.config.n_classes)
                for raw in _flip_passes_2d(predict_fn, slices[start : start + batch], job.tta)]
        outputs.append(np.mean(runs, axis=0).astype(np.float32))
        if job.uncertainty and len(runs) > 1:
            mean_entropy.append(np.mean([normalised_entropy(run) for run in runs], axis=0))
        job.progress(min(start + batch, len(slices)), len(slices))
    result = np.concatenate(outputs, axis=0)
    job.timings["model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if job.uncertainty:
        maps = {"entropy": normalised_entropy(result)}
        if mean_entropy:
            maps["mean_entropy"] = np.concatenate(mean_entropy, axis=0)
        job.invert_maps(maps, inverse)
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
    uncertainty = None
    if job.uncertainty:
        entropy = job.maps["entropy"]
        mean_entropy = job.maps.get("mean_entropy")
        uncertainty = segmentation_uncertainty(label, table, entropy.array,
                                               None if mean_entropy is None else mean_entropy.array,
                                               job.passes, job.details)
    job.timings["postprocess"] = time.perf_counter() - inverted_at
    return job.prediction(label, probabilities, table, uncertainty=uncertainty)


#: Why a one-pass prediction has no disagreement map (recorded in the sidecar instead of a map of zeros).
NO_DISAGREEMENT_NOTE = ("one pass (no test-time augmentation, one model): only the entropy is measured; turn test-time "
                 "augmentation on or use an ensemble for the disagreement")


def segmentation_uncertainty(label: Volume, table: list[dict[str, Any]], entropy: np.ndarray,
                             mean_entropy: np.ndarray | None, passes: int,
                             details: dict[str, Any]) -> dict[str, Volume]:
    """The uncertainty volumes of a segmentation (float32, the label map's exact geometry), the table's
    ``mean_entropy``/``mean_disagreement`` columns (added in place, after the existing ones) and
    ``details["uncertainty"]``.

    Args:
        label: The final label map (its values decide which voxels each row averages).
        table: The per-label rows of :func:`label_volume_table`.
        entropy: Normalised entropy of the mean probabilities on the label's grid.
        mean_entropy: Normalised mean per-pass entropy on the same grid, or None with one pass.
        passes: Number of passes (flips x members).
        details: The prediction's details.
    """
    from MedAnalysisLib.inference.uncertainty import disagreement, foreground_entropy, label_means

    maps = {"entropy": np.asarray(entropy, np.float32)}
    if mean_entropy is not None and passes > 1:
        maps["disagreement"] = disagreement(maps["entropy"], mean_entropy)
    means = label_means(label.array, maps, [int(row["value"]) for row in table])
    for row in table:
        row.update(means[int(row["value"])])
    record: dict[str, Any] = {"passes": int(passes), "measures": list(maps),
                              "foreground_entropy": foreground_entropy(label.array, maps["entropy"])}
    if "disagreement" not in maps:
        record["note"] = NO_DISAGREEMENT_NOTE
    details["uncertainty"] = record
    return {name: Volume(array, label.spacing, label.origin, label.direction,
                         metadata={"bundle": label.metadata.get("bundle"), "kind": f"uncertainty_{name}"})
            for name, array in maps.items()}


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
    if job.uncertainty:
        table = classification_uncertainty(job.pass_stats, per_slice, scan, table, job.details)
    return job.prediction(None, None, table, per_slice, scan)


def classification_uncertainty(stats: dict[str, Any], per_slice: list[dict[str, Any]] | None,
                               scan: dict[str, Any] | None, table: list[dict[str, Any]],
                               details: dict[str, Any]) -> list[dict[str, Any]]:
    """Add the uncertainty columns (``entropy``, and with P > 1 ``spread`` and ``disagreement``, after the existing
    ones) to the per-slice rows, the scan result and the whole-scan rows (in place), and ``details["uncertainty"]``.

    The whole-scan rows (one per class) carry the scan's entropy and disagreement and the spread of their own
    class; per-slice rows the spread of their predicted class. Returns the table (the same list).
    """
    from MedAnalysisLib.inference.uncertainty import classification_columns

    passes = 1
    if per_slice is not None and "slices" in stats:
        passes = stats["slices"].passes
        for row, columns in zip(per_slice, classification_columns(stats["slices"]), strict=True):
            row.update(columns)
    case_entropy = float(np.mean([row["entropy"] for row in per_slice])) if per_slice else 0.0
    if scan is not None and "scan" in stats:
        passes = stats["scan"].passes
        columns = classification_columns(stats["scan"])[0]
        scan.update(columns)
        case_entropy = columns["entropy"]
        spreads = np.atleast_1d(stats["scan"].spread())
        if table is not per_slice:
            for index, row in enumerate(table):
                row.update({key: (round(float(spreads[index]), 6) if key == "spread" else value)
                            for key, value in columns.items()})
    record: dict[str, Any] = {"passes": int(passes), "measures": ["entropy", *(["spread", "disagreement"]
                                                                              if passes > 1 else [])],
                              "entropy": round(case_entropy, 6)}
    if passes == 1:
        record["note"] = NO_DISAGREEMENT_NOTE
    details["uncertainty"] = record
    return table


def _classify_slices(job: _Job) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Per-slice probabilities (and, for sequence models, the whole-scan result) with each slice's position."""
    from MedAnalysisLib.inference.uncertainty import PassStats
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
        slice_runs = [_class_probabilities(np.asarray(o["slices"])[0], n_classes) for o in runs]
        scan_runs = [_class_probabilities(np.asarray(o["scan"]), n_classes)[0] for o in runs]
        slice_probs = np.mean(slice_runs, axis=0)
        scan = _scan_result(np.mean(scan_runs, axis=0), class_names, job.values)
        job.details.update(precision="float32")
        if job.uncertainty:
            job.pass_stats.update(slices=PassStats.of(slice_runs), scan=PassStats.of(scan_runs))
    else:
        predict_fn = _Runner.get(job.loaded.model, job.precision)
        job.details.update(precision=predict_fn.precision)
        batch = int(job.batch_size or 32)
        chunks: list[list[np.ndarray]] = []  # per batch, one (B, C) array per flip
        for start in range(0, len(slices), batch):
            job.check_stop()
            chunks.append([_class_probabilities(run, n_classes) for run in
                           _flip_passes_2d(predict_fn, slices[start : start + batch], job.tta, maps=False)])
            job.progress(min(start + batch, len(slices)), len(slices))
        slice_runs = [np.concatenate([chunk[f] for chunk in chunks], axis=0) for f in range(len(chunks[0]))]
        slice_probs = np.mean(slice_runs, axis=0)
        if job.uncertainty:
            job.pass_stats["slices"] = PassStats.of(slice_runs)
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
    runs = [_class_probabilities(predict_fn(image[None]), n_classes)[0]]
    if job.tta:
        for axes in ((1,), (2,), (3,)):
            flipped = np.ascontiguousarray(np.flip(image[None], axes))
            runs.append(_class_probabilities(predict_fn(flipped), n_classes)[0])
    if job.uncertainty:
        from MedAnalysisLib.inference.uncertainty import PassStats

        job.pass_stats["scan"] = PassStats.of(runs)
    job.timings["model"] = time.perf_counter() - t0
    return np.mean(runs, axis=0)


def _predict_ensemble(
    ensemble: Any, images: Volume | Sequence[Volume], *, overlap: float | None, tta: bool | None,
    postprocess: str | Sequence[str] | None, batch_size: int | None, precision: str, memory_budget_mb: float | None,
    return_probabilities: bool, reporter: Any, stop_flag: Any, uncertainty: bool = False,
) -> Prediction:
    """Run every member of an ensemble with the ensemble's settings and average their probabilities on the input grid.

    Segmentation: the members' probability maps (each member's own plan inverted) are summed as they come, so memory
    holds the running sum and one member's map whatever the number of members; the arg-max and the post-processing
    run once on the mean. Classification: per-slice and whole-scan probabilities are averaged.

    Uncertainty: the passes are every member's flips. Segmentation sums each member's mean per-pass entropy map
    (its entropy minus its disagreement; its entropy with one flip) beside the probabilities, one more running
    volume; the entropy of the mean probabilities and the disagreement are computed once on the mean.
    Classification merges the members' per-pass sums.
    """
    started = time.perf_counter()
    config = ensemble.config
    overlap, tta, steps = _settings(config, overlap, tta, postprocess)
    values = class_values(config)
    member_options = {"overlap": overlap, "tta": tta, "postprocess": "none", "batch_size": batch_size,
                      "precision": precision, "memory_budget_mb": memory_budget_mb, "reporter": reporter,
                      "stop_flag": stop_flag, "uncertainty": uncertainty}
    results, summed, summed_entropy = _run_members(ensemble, images, values, member_options)
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
        if summed_entropy is not None:
            combined = _ensemble_segmentation_uncertainty(combined, summed, summed_entropy, results, details)
    else:
        combined = _mean_classification(config, results, values, details)
        if uncertainty:
            combined = _ensemble_classification_uncertainty(combined, results, details)
    timings["combine"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    return dataclasses.replace(combined, timings=timings, bundle_sha256=ensemble.weights_sha256, details=details,
                               source=dict(results[0].source))


def _run_members(ensemble: Any, images: Volume | Sequence[Volume], values: np.ndarray,
                 options: dict[str, Any]) -> tuple[list[Prediction], Volume | None, Volume | None]:
    """Each member's prediction (without its probability map) and, for segmentation, the sum of the members'
    probability maps on the input grid and, with uncertainty, the sum of their mean per-pass entropy maps."""
    from MedAnalysisLib.errors import BundleError

    segmentation = ensemble.config.task == "segmentation"
    reporter = options["reporter"]
    results: list[Prediction] = []
    summed: Volume | None = None
    summed_entropy: Volume | None = None
    for number, member in enumerate(ensemble.members):
        if not np.array_equal(class_values(member.config), values):
            raise BundleError(f"expected every ensemble member to order its output classes as {values.tolist()}, got "
                              f"{class_values(member.config).tolist()} in {member.config.name!r}")
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
            if result.uncertainty is not None:
                summed_entropy = _add_mean_entropy(summed_entropy, result.uncertainty)
            result = dataclasses.replace(result, probabilities=None, uncertainty=None)
        results.append(result)
    return results, summed, summed_entropy


def _add_mean_entropy(total: Volume | None, maps: dict[str, Volume]) -> Volume:
    """``total`` plus a member's mean per-pass entropy (entropy minus disagreement; the entropy with one pass)."""
    mean_entropy = np.asarray(maps["entropy"].array, np.float32)
    if "disagreement" in maps:
        mean_entropy = mean_entropy - maps["disagreement"].array
    if total is None:
        return maps["entropy"].with_array(np.array(mean_entropy, dtype=np.float32))
    total.array[...] += mean_entropy
    return total


def _ensemble_segmentation_uncertainty(combined: Prediction, mean: Volume, summed_entropy: Volume,
                                       results: Sequence[Prediction], details: dict[str, Any]) -> Prediction:
    """The ensemble's uncertainty maps from the mean probabilities and the summed member mean entropies."""
    from MedAnalysisLib.inference.uncertainty import normalised_entropy

    assert combined.label is not None
    summed_entropy.array[...] /= len(results)
    passes = sum(int(r.details.get("uncertainty", {}).get("passes", 1)) for r in results)
    maps = segmentation_uncertainty(combined.label, combined.table, normalised_entropy(mean.array),
                                    summed_entropy.array, passes, details)
    return dataclasses.replace(combined, uncertainty=maps)


def _ensemble_classification_uncertainty(combined: Prediction, results: Sequence[Prediction],
                                         details: dict[str, Any]) -> Prediction:
    """The ensemble's classification columns from every member's passes together."""
    merged: dict[str, Any] = {}
    for result in results:
        for key, stats in (result.pass_stats or {}).items():
            merged[key] = stats if key not in merged else merged[key].merged(stats)
    table = classification_uncertainty(merged, combined.per_slice, combined.scan, combined.table, details)
    return dataclasses.replace(combined, table=table, pass_stats=merged or None)


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
