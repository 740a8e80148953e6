"""Dataset fingerprint: what a preprocessing plan needs to know about a training set, measured in one pass.

For every case (read once, two at a time on worker threads: reading and most numpy work release the GIL) the
fingerprint records spacing, shape, orientation, the shape after the plan's crop (the body for CT, else the
non-zero region), label values and voxel counts, and a seeded random sample of intensities inside the foreground
(the label's non-zero voxels, or the image's non-zero voxels when there is no label). Pooled, the samples give the
dataset's foreground intensity statistics (percentiles 0.5/99.5, mean, std), which CT normalisation uses. Unlabelled
CT uses the body (voxels above -500 HU) as its foreground, so air and the padding outside the field of view do not
set the clip range.

Axis conventions: spacings (i, j, k) mm, shapes (k, j, i) voxels.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from MedAnalysisLib.data.datasets import Case, Dataset, read_case
from MedAnalysisLib.errors import GeometryError, PlanError
from MedAnalysisLib.preprocessing.plan import CT_BODY_THRESHOLD_HU
from MedAnalysisLib.preprocessing.transforms import crop_box
from MedAnalysisLib.progress import Reporter, StopFlag
from MedAnalysisLib.volume import geometry_differences

FINGERPRINT_SCHEMA_VERSION = 1

#: Foreground intensities sampled per case and channel (as nnU-Net: enough for stable percentiles, small to pool).
SAMPLES_PER_CASE = 10_000


@dataclass(frozen=True)
class Fingerprint:
    """Measurements of a dataset (see the module docstring). Lists are per case, in the dataset's case order.

    Attributes:
        schema_version: Layout version (:data:`FINGERPRINT_SCHEMA_VERSION`).
        task: ``"segmentation"`` or ``"classification"``.
        modality: Dataset modality.
        channel_names: One name per channel.
        case_ids: Case names.
        spacings: Per case (i, j, k) mm.
        shapes: Per case (k, j, i) voxels.
        shapes_after_crop: Per case (k, j, i) voxels of the plan's crop box (CT: the body; otherwise the non-zero
            voxels).
        orientations: Orientation code -> number of cases.
        label_values: Segmentation label values including 0, or classification classes.
        class_voxel_fraction: Label value (text) -> share of all label voxels.
        class_case_fraction: Label value (text) -> share of cases in which it occurs.
        target_counts: Classification target (text) -> number of cases.
        foreground_intensity: Pooled foreground statistics over all channels: mean, std, median, min, max,
            percentile_00_5, percentile_99_5, and mean_clipped/std_clipped (after clipping to the percentiles).
        foreground_intensity_per_channel: The same per channel.
        dtypes: Stored voxel type -> number of cases.
        warnings: Things worth a look (constant images, empty labels, undeclared label values).
    """

    schema_version: int
    task: str
    modality: str
    channel_names: tuple[str, ...]
    case_ids: tuple[str, ...]
    spacings: tuple[tuple[float, float, float], ...]
    shapes: tuple[tuple[int, int, int], ...]
    shapes_after_crop: tuple[tuple[int, int, int], ...]
    orientations: dict[str, int]
    label_values: tuple[int, ...]
    class_voxel_fraction: dict[str, float]
    class_case_fraction: dict[str, float]
    target_counts: dict[str, int]
    foreground_intensity: dict[str, float]
    foreground_intensity_per_channel: tuple[dict[str, float], ...]
    dtypes: dict[str, int]
    warnings: tuple[str, ...] = field(default=())

    @property
    def n_cases(self) -> int:
        return len(self.case_ids)

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def crop_fraction_median(self) -> float:
        """Median share of voxels kept by the crop (the body for CT, else the non-zero box)."""
        kept = [float(np.prod(c)) / float(np.prod(s)) for c, s in zip(self.shapes_after_crop, self.shapes, strict=True)]
        return float(np.median(kept)) if kept else 1.0

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        """Rebuild from :meth:`to_dict`; unknown or missing keys and other schema versions raise PlanError."""
        if not isinstance(data, dict):
            raise PlanError(f"expected a JSON object for the fingerprint, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(data) - names), sorted(names - set(data) - {"warnings"})
        if unknown or missing:
            raise PlanError(f"expected the fingerprint keys {sorted(names)}, got unknown {unknown} and missing {missing}")
        if data["schema_version"] != FINGERPRINT_SCHEMA_VERSION:
            raise PlanError(f"expected fingerprint schema_version {FINGERPRINT_SCHEMA_VERSION}, got {data['schema_version']!r}")
        try:
            return cls(
                schema_version=int(data["schema_version"]),
                task=str(data["task"]),
                modality=str(data["modality"]),
                channel_names=tuple(str(c) for c in data["channel_names"]),
                case_ids=tuple(str(c) for c in data["case_ids"]),
                spacings=tuple(tuple(float(v) for v in s) for s in data["spacings"]),  # type: ignore[misc]
                shapes=tuple(tuple(int(v) for v in s) for s in data["shapes"]),  # type: ignore[misc]
                shapes_after_crop=tuple(tuple(int(v) for v in s) for s in data["shapes_after_crop"]),  # type: ignore[misc]
                orientations={str(k): int(v) for k, v in data["orientations"].items()},
                label_values=tuple(int(v) for v in data["label_values"]),
                class_voxel_fraction={str(k): float(v) for k, v in data["class_voxel_fraction"].items()},
                class_case_fraction={str(k): float(v) for k, v in data["class_case_fraction"].items()},
                target_counts={str(k): int(v) for k, v in data["target_counts"].items()},
                foreground_intensity={str(k): float(v) for k, v in data["foreground_intensity"].items()},
                foreground_intensity_per_channel=tuple(
                    {str(k): float(v) for k, v in d.items()} for d in data["foreground_intensity_per_channel"]
                ),
                dtypes={str(k): int(v) for k, v in data["dtypes"].items()},
                warnings=tuple(str(w) for w in data.get("warnings", ())),
            )
        except (TypeError, ValueError, AttributeError) as error:
            raise PlanError(f"expected fingerprint values of the documented types, got: {error}") from None

    def summary(self) -> dict[str, Any]:
        """A short JSON-ready summary (medians and ranges) for people and the progress protocol."""
        spacings = np.asarray(self.spacings)
        shapes = np.asarray(self.shapes)
        return {
            "n_cases": self.n_cases,
            "task": self.task,
            "modality": self.modality,
            "channels": list(self.channel_names),
            "median_spacing_ijk_mm": np.round(np.median(spacings, axis=0), 4).tolist(),
            "min_spacing_ijk_mm": np.round(spacings.min(axis=0), 4).tolist(),
            "max_spacing_ijk_mm": np.round(spacings.max(axis=0), 4).tolist(),
            "median_shape_kji": np.median(shapes, axis=0).tolist(),
            "min_shape_kji": shapes.min(axis=0).tolist(),
            "max_shape_kji": shapes.max(axis=0).tolist(),
            "orientations": dict(self.orientations),
            "label_values": list(self.label_values),
            "class_voxel_fraction": dict(self.class_voxel_fraction),
            "target_counts": dict(self.target_counts),
            "foreground_intensity": {k: round(v, 4) for k, v in self.foreground_intensity.items()},
            "median_crop_fraction": round(self.crop_fraction_median, 4),
            "warnings": list(self.warnings),
        }

    def summary_lines(self) -> list[str]:
        """The summary as a few human-readable lines."""
        s = self.summary()
        lines = [
            f"{s['n_cases']} cases, {s['task']}, modality {s['modality']}, channels {s['channels']}",
            f"spacing (i,j,k) mm: median {s['median_spacing_ijk_mm']}, range {s['min_spacing_ijk_mm']} - {s['max_spacing_ijk_mm']}",
            f"shape (k,j,i): median {s['median_shape_kji']}, range {s['min_shape_kji']} - {s['max_shape_kji']}",
            f"orientations {s['orientations']}; crop keeps {s['median_crop_fraction']:.0%} (median)",
            f"foreground intensity: {s['foreground_intensity']}",
        ]
        if self.task == "segmentation":
            lines.append(f"label values {s['label_values']}, voxel fractions {s['class_voxel_fraction']}")
        else:
            lines.append(f"targets {s['target_counts']}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class _CaseFacts:
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    crop_shape: tuple[int, int, int]
    orientation: str
    dtype: str
    modality: str
    label_counts: dict[int, int]
    samples: list[np.ndarray]
    warnings: list[str]



def _measure_case(case: Case, index: int, seed: int, modality: str) -> _CaseFacts:
    images, label = read_case(case)
    first = images[0]
    is_ct = (modality if modality not in ("", "unknown") else str(first.metadata.get("Modality", ""))).upper() == "CT"
    warnings: list[str] = []
    for n, other in enumerate(images[1:], start=1):
        differences = geometry_differences(first, other)
        if differences:
            raise GeometryError(
                f"expected every channel of case {case.case_id!r} on one grid, channel {n} differs: "
                f"{'; '.join(differences)}"
            )
    if label is not None:
        differences = geometry_differences(first, label)
        if differences:
            raise GeometryError(
                f"expected the label of case {case.case_id!r} on the image's grid ({first.describe_geometry()}), got "
                f"({label.describe_geometry()}); differences: {'; '.join(differences)}"
            )
    arrays = [np.asarray(v.array) for v in images]
    # the crop that the plan will apply: the body for CT, the non-zero voxels otherwise
    box = crop_box(arrays, first.spacing, CT_BODY_THRESHOLD_HU if is_ct else None)
    crop_shape = first.shape if box is None else tuple(stop - start for start, stop in box)
    label_counts: dict[int, int] = {}
    if label is not None:
        values, counts = np.unique(label.array, return_counts=True)
        label_counts = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
        foreground = label.array > 0
        if not foreground.any():
            warnings.append(f"case {case.case_id!r}: the label map is empty")
    else:
        foreground = np.zeros(first.shape, dtype=bool)
        for array in arrays:
            foreground |= (array > CT_BODY_THRESHOLD_HU) if is_ct else (array != 0)
    if not foreground.any():
        foreground = np.ones(first.shape, dtype=bool)
    rng = np.random.default_rng([seed, index])
    flat = np.flatnonzero(foreground)
    if flat.size > SAMPLES_PER_CASE:
        flat = np.sort(rng.choice(flat, SAMPLES_PER_CASE, replace=False))
    samples = []
    for n, array in enumerate(arrays):
        values = array.reshape(-1)[flat].astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise PlanError(f"expected finite intensities in case {case.case_id!r} channel {n}, found NaN or Inf")
        if values.size and values.min() == values.max() and np.all(array == array.flat[0]):
            warnings.append(f"case {case.case_id!r} channel {n}: the image is constant ({values[0]:g})")
        samples.append(values)
    return _CaseFacts(
        spacing=first.spacing,
        shape=first.shape,
        crop_shape=tuple(int(s) for s in crop_shape),  # type: ignore[arg-type]
        orientation=first.orientation_code(),
        dtype=str(arrays[0].dtype),
        modality=str(first.metadata.get("Modality", "") or ""),
        label_counts=label_counts,
        samples=samples,
        warnings=warnings,
    )


def _intensity_stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {k: 0.0 for k in ("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5", "mean_clipped", "std_clipped")}
    low, high = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
        "percentile_00_5": float(low),
        "percentile_99_5": float(high),
        "mean_clipped": float(clipped.mean()),
        "std_clipped": float(clipped.std()),
    }


def fingerprint_dataset(
    dataset_or_cases: Dataset | Sequence[Case],
    *,
    workers: int = 2,
    reporter: Reporter | None = None,
    stop_flag: StopFlag | None = None,
    seed: int = 0,
    modality: str | None = None,
) -> Fingerprint:
    """Measure a dataset; every case is read exactly once.

    Args:
        dataset_or_cases: A :class:`Dataset`, or a list of cases (then the task is inferred from labels/targets
            and the modality is ``modality`` or ``"unknown"``).
        workers: Threads reading and measuring cases in parallel.
        reporter: Receives ``progress("fingerprint", done, total)`` after each case.
        stop_flag: Polled between cases; when set, raises CancelledError.
        seed: Seed of the intensity sampling (same seed and data -> identical fingerprint).
        modality: Overrides the dataset's modality.

    Raises:
        GeometryError: A case's label or channels are not on the image's grid (the message names both grids).
        PlanError: No cases, or non-finite intensities.
    """
    if isinstance(dataset_or_cases, Dataset):
        dataset = dataset_or_cases
    else:
        cases = list(dataset_or_cases)
        if not cases:
            raise PlanError("expected at least one case to fingerprint, got none")
        task = "classification" if all(c.label is None and c.target is not None for c in cases) else "segmentation"
        dataset = Dataset(cases, task, {}, modality or "unknown", [f"channel{n}" for n in range(len(cases[0].images))])
    cases = dataset.cases
    if not cases:
        raise PlanError("expected at least one case to fingerprint, got none")
    reporter = reporter or Reporter("none")
    total = len(cases)
    facts: list[_CaseFacts | None] = [None] * total
    reporter.progress("fingerprint", 0, total, "reading cases")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(_measure_case, case, n, seed, modality or dataset.modality) for n, case in enumerate(cases)]
        try:
            for n, future in enumerate(futures):
                facts[n] = future.result()
                reporter.progress("fingerprint", n + 1, total, cases[n].case_id)
                if stop_flag is not None and stop_flag.is_set():
                    stop_flag.raise_if_set()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    measured: list[_CaseFacts] = [f for f in facts if f is not None]
    warnings = [w for f in measured for w in f.warnings]

    n_channels = len(dataset.channel_names)
    per_channel = [np.concatenate([f.samples[c] for f in measured]) for c in range(n_channels)]
    pooled = np.concatenate(per_channel)

    label_total: Counter[int] = Counter()
    label_cases: Counter[int] = Counter()
    for f in measured:
        label_total.update(f.label_counts)
        label_cases.update(v for v, c in f.label_counts.items() if c > 0)
    target_counts: Counter[str] = Counter(str(c.target) for c in cases if c.target is not None)
    if dataset.task == "classification":
        label_values = tuple(sorted(dataset.labels)) or tuple(sorted({int(float(t)) for t in target_counts}))
    else:
        declared = set(dataset.labels)
        found = set(label_total)
        undeclared = sorted(found - declared) if declared else []
        if undeclared:
            warnings.append(f"label values {undeclared} occur in the label maps but are not declared in the dataset")
        label_values = tuple(sorted(declared | found | {0}))
    voxel_sum = float(sum(label_total.values())) or 1.0
    orientations = Counter(f.orientation for f in measured)
    dtypes = Counter(f.dtype for f in measured)
    if modality is None and dataset.modality in ("", "unknown"):
        # The files may say what the dataset description does not (DICOM Modality).
        found = Counter(f.modality for f in measured if f.modality)
        if found:
            modality = found.most_common(1)[0][0]
    for message in warnings:
        reporter.log(message, "warning")
    return Fingerprint(
        schema_version=FINGERPRINT_SCHEMA_VERSION,
        task=dataset.task,
        modality=modality or dataset.modality,
        channel_names=tuple(dataset.channel_names),
        case_ids=tuple(c.case_id for c in cases),
        spacings=tuple(tuple(float(round(s, 6)) for s in f.spacing) for f in measured),  # type: ignore[misc]
        shapes=tuple(f.shape for f in measured),
        shapes_after_crop=tuple(f.crop_shape for f in measured),
        orientations=dict(sorted(orientations.items())),
        label_values=label_values,
        class_voxel_fraction={str(v): label_total[v] / voxel_sum for v in sorted(label_total)},
        class_case_fraction={str(v): label_cases[v] / total for v in sorted(label_cases)},
        target_counts=dict(sorted(target_counts.items())),
        foreground_intensity=_intensity_stats(pooled),
        foreground_intensity_per_channel=tuple(_intensity_stats(v) for v in per_channel),
        dtypes=dict(sorted(dtypes.items())),
        warnings=tuple(warnings),
    )

