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

#: Source metadata kept on results (needed to reference the source series in DICOM SEG); never patient data.
SOURCE_KEYS = ("Modality", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "SeriesDescription")


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
        if family in SLIDING_3D | VOLUME_CLASSIFIERS and min(volume.shape) < 2:
            raise ImageValidationError(
                f"expected a 3D volume for the 3D model {family!r}, got a 2D image of shape (k, j, i) {volume.shape}; "
                "use a 2D model (unet2d, slice_cnn) for single slices"
            )


def _load(bundle: Any) -> Any:
    from MedAnalysisLib.bundle import LoadedBundle, load_bundle

    if isinstance(bundle, LoadedBundle):
        return bundle
    if isinstance(bundle, (str, os.PathLike)):
        return load_bundle(Path(bundle))
    raise InputError(f"expected a LoadedBundle or a bundle path, got {type(bundle).__name__}")


def _class_values(config: Any) -> np.ndarray:
    """Label value of each model output channel (the plan's label_values order, as in training)."""
    values = list(config.plan.label_values)
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
        bundle: A :class:`~MedAnalysisLib.bundle.LoadedBundle` or a bundle path (folder or .zip); an ensemble
            (:mod:`MedAnalysisLib.ensemble`) runs every member and averages their probabilities.
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
        InputError: Wrong channel count, non-Volume input, a 2D image for a 3D model (ImageValidationError), NaN/Inf.
        BundleError: The bundle fails its checks.
    """
    from MedAnalysisLib.ensemble import LoadedEnsemble
    from MedAnalysisLib.inference.postprocess import postprocess_labels
    from MedAnalysisLib.inference.sliding_window import make_grid, sliding_window_predict
    from MedAnalysisLib.preprocessing.transforms import apply_plan, invert_plan, prepare_slices

    started = time.perf_counter()
    loaded = _load(bundle)
    if isinstance(loaded, LoadedEnsemble):
        return _predict_ensemble(loaded, images, overlap=overlap, tta=tta, postprocess=postprocess,
                                 batch_size=batch_size, precision=precision, memory_budget_mb=memory_budget_mb,
                                 return_probabilities=return_probabilities, reporter=reporter, stop_flag=stop_flag)
    config = loaded.config
    plan = config.plan
    family = config.family
    volumes = _as_volumes(images)
    _validate(volumes, family, plan)
    overlap, tta, steps = _settings(config, overlap, tta, postprocess)
    values = _class_values(config)
    names = config.label_names()
    n_classes = config.n_classes
    should_stop = stop_flag.is_set if stop_flag is not None else None
    timings: dict[str, float] = {}
    details: dict[str, Any] = {"family": family, "overlap": overlap, "tta": tta, "postprocess": list(steps)}
    source = {k: volumes[0].metadata[k] for k in SOURCE_KEYS if k in volumes[0].metadata}

    def progress(done: int, total: int) -> None:
        if reporter is not None:
            reporter.progress("predict", done, total, f"{done}/{total} model calls")

    label: Volume | None = None
    probabilities: Volume | None = None
    table: list[dict[str, Any]] = []
    per_slice: list[dict[str, Any]] | None = None
    scan: dict[str, Any] | None = None

    if config.task == "segmentation" and family in SLIDING_3D:
        t0 = time.perf_counter()
        prepared = apply_plan(plan, volumes)
        timings["preprocess"] = time.perf_counter() - t0
        patch = tuple(int(p) for p in plan.patch_size)
        predict_fn = _Runner.get(loaded.model, precision, None, patch)
        padded = [max(s, p) for s, p in zip(prepared.image.shape[:3], patch, strict=True)]
        details.update(precision=predict_fn.precision, patch_size=list(patch),
                       windows=len(make_grid(padded, patch, overlap)))
        batch = int(batch_size or plan.batch_size)
        t0 = time.perf_counter()
        output = "probabilities"
        window_options = {"n_classes": n_classes, "overlap": overlap, "batch_size": batch, "tta_flips": tta,
                          "memory_budget_mb": memory_budget_mb, "progress": progress, "should_stop": should_stop}
        try:
            result = sliding_window_predict(predict_fn, prepared.image, patch, **window_options)
        except MemoryBudgetError:
            if return_probabilities:
                raise
            output = "labels"  # the probability volume does not fit: accumulate the arg-max only
            result = sliding_window_predict(predict_fn, prepared.image, patch, output="labels", **window_options)
        timings["model"] = time.perf_counter() - t0
        details["output"] = output
        t0 = time.perf_counter()
        if output == "probabilities":
            restored = invert_plan(plan, result, prepared.inverse, kind="probability")
            classes = np.argmax(restored.array, axis=-1)
            if return_probabilities:
                probabilities = restored
        else:
            classes = invert_plan(plan, result, prepared.inverse, kind="label").array
        label_array = values[classes].astype(_label_dtype(values))
    elif config.task == "segmentation" and family in SLICE_SEGMENTATION:
        t0 = time.perf_counter()
        slices, inverse = prepare_slices(plan, volumes)
        timings["preprocess"] = time.perf_counter() - t0
        predict_fn = _Runner.get(loaded.model, precision)
        details.update(precision=predict_fn.precision, slices=int(slices.shape[0]))
        batch = int(batch_size or 16)
        t0 = time.perf_counter()
        outputs = []
        for start in range(0, len(slices), batch):
            if should_stop is not None and should_stop():
                from MedAnalysisLib.errors import CancelledError

                raise CancelledError("prediction stopped on request")
            raw = _flip_tta_2d(predict_fn, slices[start : start + batch], tta)
            outputs.append(_class_probabilities(raw, n_classes))
            progress(min(start + batch, len(slices)), len(slices))
        result = np.concatenate(outputs, axis=0)
        timings["model"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        restored = invert_plan(plan, result, inverse, kind="probability")
        if return_probabilities:
            probabilities = restored
        label_array = values[np.argmax(restored.array, axis=-1)].astype(_label_dtype(values))
        details["output"] = "probabilities"
    elif config.task == "classification":
        return _classify(loaded, volumes, plan, family, values, names, n_classes, batch_size, precision, tta,
                         details, timings, source, started, progress, should_stop)
    else:
        raise PlanError(f"expected a segmentation family {sorted(SLIDING_3D | SLICE_SEGMENTATION)} or a "
                        f"classification task, got task {config.task!r} with family {family!r}")

    label_array = postprocess_labels(label_array, steps, label_values=[v for v in values.tolist() if v != 0])
    label = volumes[0].with_array(label_array)
    label = Volume(label.array, label.spacing, label.origin, label.direction,
                   metadata={"bundle": config.name, "kind": "label"})
    table = label_volume_table(label, names)
    timings["postprocess"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    return Prediction(config.task, label, probabilities, table, per_slice, scan, timings, config.name,
                      loaded.weights_sha256, details, source)


def _scan_result(probs: np.ndarray, class_names: Sequence[str], values: np.ndarray) -> dict[str, Any]:
    best = int(np.argmax(probs))
    return {"predicted": class_names[best], "value": int(values[best]),
            "probabilities": {name: float(p) for name, p in zip(class_names, probs, strict=True)}}


def _classify(
    loaded: Any, volumes: list[Volume], plan: Any, family: str, values: np.ndarray, names: dict[int, str],
    n_classes: int, batch_size: int | None, precision: str, tta: bool, details: dict[str, Any],
    timings: dict[str, float], source: dict[str, Any], started: float, progress: Any, should_stop: Any,
) -> Prediction:
    from MedAnalysisLib.preprocessing.transforms import apply_plan, prepare_slices

    config = loaded.config
    class_names = [names.get(int(v), str(int(v))) for v in values]
    per_slice: list[dict[str, Any]] | None = None
    scan: dict[str, Any] | None = None

    def scan_result(probs: np.ndarray) -> dict[str, Any]:
        return _scan_result(probs, class_names, values)

    t0 = time.perf_counter()
    if family in SLICE_CLASSIFIERS | SEQUENCE_CLASSIFIERS:
        slices, inverse = prepare_slices(plan, volumes)
        timings["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if family in SEQUENCE_CLASSIFIERS:
            # A traced call (slice count left free), not an eager one: eager Keras runs the recurrent loop op by op.
            sequence_fn = _Runner.get(loaded.model, "float32")
            mask = np.ones((1, len(slices)), bool)
            flips = _SLICE_FLIPS if tta else _SLICE_FLIPS[:1]  # shifted by one: H, W of (1, S, H, W, C)
            runs = [sequence_fn({"slices": np.ascontiguousarray(np.flip(slices[None], tuple(a + 1 for a in axes))),
                                 "mask": mask}) for axes in flips]
            slice_probs = np.mean([_class_probabilities(np.asarray(o["slices"])[0], n_classes) for o in runs], axis=0)
            scan = scan_result(np.mean([_class_probabilities(np.asarray(o["scan"]), n_classes)[0] for o in runs],
                                       axis=0))
            details.update(precision="float32")
        else:
            predict_fn = _Runner.get(loaded.model, precision)
            details.update(precision=predict_fn.precision)
            batch = int(batch_size or 32)
            chunks = []
            for start in range(0, len(slices), batch):
                if should_stop is not None and should_stop():
                    from MedAnalysisLib.errors import CancelledError

                    raise CancelledError("prediction stopped on request")
                chunks.append(_class_probabilities(_flip_tta_2d(predict_fn, slices[start : start + batch], tta,
                                                                maps=False), n_classes))
                progress(min(start + batch, len(slices)), len(slices))
            slice_probs = np.concatenate(chunks, axis=0)
        timings["model"] = time.perf_counter() - t0
        per_slice = []
        original = volumes[0]
        centre_ij = ((inverse.prepared.shape[2] - 1) / 2.0, (inverse.prepared.shape[1] - 1) / 2.0)
        for s, probs in enumerate(slice_probs):
            position = inverse.prepared.index_to_physical((centre_ij[0], centre_ij[1], float(s)))
            k_original = float(original.physical_to_index(position)[2])
            row: dict[str, Any] = {"slice": int(round(k_original)) if abs(k_original - round(k_original)) < 0.25 else s,
                                   "position_lps": [round(float(c), 3) for c in position]}
            row.update({f"p_{name}": float(p) for name, p in zip(class_names, probs, strict=True)})
            row["predicted"] = class_names[int(np.argmax(probs))]
            per_slice.append(row)
        table = per_slice
        details["slices"] = len(per_slice)
    elif family in VOLUME_CLASSIFIERS:
        prepared = apply_plan(plan, volumes)
        image = prepared.image
        fixed = loaded.model.input_shape[1:4]
        if all(s is not None for s in fixed):  # centre crop/pad to a fixed input size
            pads = [(max(0, (f - s) // 2), max(0, f - s - (f - s) // 2))
                    for s, f in zip(image.shape[:3], fixed, strict=True)]
            image = np.pad(image, [*pads, (0, 0)])
            starts = [(s - f) // 2 for s, f in zip(image.shape[:3], fixed, strict=True)]
            image = image[tuple(slice(a, a + f) for a, f in zip(starts, fixed, strict=True))]
        timings["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        predict_fn = _Runner.get(loaded.model, precision)
        details.update(precision=predict_fn.precision)
        probs = _class_probabilities(predict_fn(image[None]), n_classes)[0]
        if tta:
            for axes in ((1,), (2,), (3,)):
                flipped = np.ascontiguousarray(np.flip(image[None], axes))
                probs = probs + _class_probabilities(predict_fn(flipped), n_classes)[0]
            probs = probs / 4
        timings["model"] = time.perf_counter() - t0
        scan = scan_result(probs)
        table = [{"value": int(v), "name": n, "probability": float(p)}
                 for v, n, p in zip(values, class_names, probs, strict=True)]
    else:
        raise PlanError(f"expected a classification family among "
                        f"{sorted(SLICE_CLASSIFIERS | SEQUENCE_CLASSIFIERS | VOLUME_CLASSIFIERS)}, got {family!r}")
    if scan is not None and family in SEQUENCE_CLASSIFIERS:
        table = [{"value": int(v), "name": n, "probability": scan["probabilities"][n]}
                 for v, n in zip(values, class_names, strict=True)]
    timings["total"] = time.perf_counter() - started
    return Prediction(config.task, None, None, table, per_slice, scan, timings, config.name, loaded.weights_sha256,
                      details, source)


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
    from MedAnalysisLib.errors import BundleError
    from MedAnalysisLib.inference.postprocess import postprocess_labels

    started = time.perf_counter()
    config = ensemble.config
    overlap, tta, steps = _settings(config, overlap, tta, postprocess)
    values = _class_values(config)
    names = config.label_names()
    class_names = [names.get(int(v), str(int(v))) for v in values]
    segmentation = config.task == "segmentation"
    results: list[Prediction] = []  # without their probability maps, which go into the running sum
    summed: Volume | None = None  # the members' probability maps added up, on the input grid
    for number, member in enumerate(ensemble.members):
        if not np.array_equal(_class_values(member.config), values):
            raise BundleError(f"expected every ensemble member to order its output classes as {values.tolist()}, got "
                              f"{_class_values(member.config).tolist()} in {member.config.name!r}")
        if reporter is not None:
            reporter.log(f"ensemble member {number + 1}/{len(ensemble.members)}: {member.config.name}")
        try:
            result = predict(member, images, overlap=overlap, tta=tta, postprocess="none", batch_size=batch_size,
                             precision=precision, memory_budget_mb=memory_budget_mb,
                             return_probabilities=segmentation, reporter=reporter, stop_flag=stop_flag)
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
    label: Volume | None = None
    probabilities: Volume | None = None
    per_slice: list[dict[str, Any]] | None = None
    scan: dict[str, Any] | None = None
    if segmentation:
        assert summed is not None
        summed.array[...] /= len(results)  # now the mean
        label_array = values[np.argmax(summed.array, axis=-1)].astype(_label_dtype(values))
        label_array = postprocess_labels(label_array, steps, label_values=[v for v in values.tolist() if v != 0])
        volume = summed.with_array(label_array)
        label = Volume(volume.array, volume.spacing, volume.origin, volume.direction,
                       metadata={"bundle": config.name, "kind": "label"})
        if return_probabilities:
            probabilities = summed
        table = label_volume_table(label, names)
    else:
        first = results[0]
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
        if first.scan is not None:
            probs = np.mean([[r.scan["probabilities"][n] for n in class_names] for r in results], axis=0)  # type: ignore[index]
            scan = _scan_result(probs, class_names, values)
        if scan is not None:
            table = [{"value": int(v), "name": n, "probability": scan["probabilities"][n]}
                     for v, n in zip(values, class_names, strict=True)]
        else:
            table = per_slice or []
        if per_slice is not None:
            details["slices"] = len(per_slice)
    timings["combine"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    return Prediction(config.task, label, probabilities, table, per_slice, scan, timings, config.name,
                      ensemble.weights_sha256, details, dict(results[0].source))
