"""Segmentation and classification metrics, with bootstrap confidence intervals.

Segmentation metrics take label maps as arrays in ``(k, j, i)`` order with the voxel spacing in ITK ``(i, j, k)``
order in millimetres (as :class:`~MedAnalysisLib.volume.Volume` stores it), so distances and volumes are physical.
The definitions, stated so that numbers can be compared with other tools (``docs/evaluation.md`` has the details):

* **Dice** of one label is ``2|P & T| / (|P| + |T|)`` over voxels. A label absent from both maps gives ``nan``
  (nothing to find, nothing found; summaries leave it out), present in only one ``0``. nnU-Net v2 computes the same;
  MONAI's ``DiceMetric`` (``ignore_empty=True``) gives ``nan`` whenever the truth is empty, even for a false positive.
* **HD95** is the larger of the two directed 95th percentiles of boundary-to-boundary distances, in mm:
  ``max(P95{d(p, dT) : p in dP}, P95{d(t, dP) : t in dT})``. The boundary ``dX`` of a mask is its voxels with at
  least one of their 6 face neighbours outside the mask (the image border counts as outside); distances are
  Euclidean between voxel centres with the real spacing; percentiles interpolate linearly (numpy's default). This is
  MONAI's ``compute_hausdorff_distance(..., percentile=95)``. MedPy's ``hd95`` takes one 95th percentile of the
  distances of both directions pooled (it lies between the two directed ones), and DeepMind's surface-distance
  measures between surface elements on the voxel-corner grid and weights them by their area; both give smaller values
  on the same masks (a matter of definition, not an error). nnU-Net computes no HD95. When exactly one map has the
  label HD95 is ``inf``; when neither has it, ``nan``.
* **Volumes** count voxels times the voxel volume (1 mL = 1000 mm^3).
* **Bootstrap intervals** are percentile intervals over resamples of cases, or of whole groups of cases (patients)
  when groups are given (:func:`bootstrap_ci`): cases of one patient are not independent, and resampling them one
  by one gives intervals that are too narrow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from MedAnalysisLib.errors import GeometryError, InputError


def _check_pair(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise GeometryError(f"expected prediction and truth of the same shape, got {prediction.shape} and {truth.shape}")
    return prediction, truth


def dice(prediction: np.ndarray, truth: np.ndarray, label: int = 1, truth_label: int | None = None) -> float:
    """Dice coefficient ``2|P & T| / (|P| + |T|)`` of one label; ``nan`` when the label is in neither map.

    Args:
        prediction: Label map (any shape).
        truth: Label map of the same shape.
        label: Value of the label in ``prediction``.
        truth_label: Value of the same structure in ``truth`` (default: ``label``).
    """
    prediction, truth = _check_pair(prediction, truth)
    return dice_of_masks(prediction == label, truth == (label if truth_label is None else truth_label))


def dice_of_masks(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape; ``nan`` when both are empty."""
    p, t = _check_pair(prediction, truth)
    p, t = p.astype(bool, copy=False), t.astype(bool, copy=False)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one 6-connected neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (-1, 1):
            interior &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~interior


def _distance_to(surface: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Euclidean distance in mm from every voxel to the nearest voxel of ``surface`` ((k, j, i) array)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(surface.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing))
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    # Surface voxels are the "object": 0 on them (|negative| inside thin objects is below one voxel).
    return np.abs(sitk.GetArrayFromImage(distance)) * (~surface)


def surface_distances(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], label: int = 1,
    truth_label: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances in mm: (prediction boundary -> truth boundary, truth boundary -> prediction boundary).

    Args:
        prediction: Label map ``(k, j, i)``.
        truth: Label map ``(k, j, i)`` on the same grid.
        spacing: Voxel size ``(i, j, k)`` in mm.
        label: The label whose boundaries are compared.
        truth_label: Its value in ``truth`` (default: ``label``).
    """
    prediction, truth = _check_pair(prediction, truth)
    return _mask_surface_distances(prediction == label, truth == (label if truth_label is None else truth_label),
                                   spacing)


def _mask_surface_distances(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    if prediction.ndim != 3:
        raise InputError(f"expected 3D label maps (k, j, i), got shape {prediction.shape}")
    if len(spacing) != 3:
        raise InputError(f"expected a spacing of three values (i, j, k) in mm, got {tuple(spacing)}")
    p_surface, t_surface = _surface(prediction), _surface(truth)
    if not p_surface.any() or not t_surface.any():
        return np.empty(0), np.empty(0)
    to_truth = _distance_to(t_surface, spacing)[p_surface]
    to_prediction = _distance_to(p_surface, spacing)[t_surface]
    return to_truth, to_prediction


def hausdorff95(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], label: int = 1,
    truth_label: int | None = None,
) -> float:
    """95% Hausdorff distance in mm as defined in the module notes (``inf`` or ``nan`` for empty labels).

    Args:
        prediction: Label map ``(k, j, i)``.
        truth: Label map ``(k, j, i)`` on the same grid.
        spacing: Voxel size ``(i, j, k)`` in mm.
        label: Value of the label in ``prediction``.
        truth_label: Value of the same structure in ``truth`` (default: ``label``).
    """
    prediction, truth = _check_pair(prediction, truth)
    return hausdorff95_of_masks(prediction == label, truth == (label if truth_label is None else truth_label),
                                spacing)


def hausdorff95_of_masks(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """HD95 in mm of two boolean ``(k, j, i)`` masks on one grid with spacing ``(i, j, k)`` mm."""
    prediction, truth = _check_pair(prediction, truth)
    prediction, truth = prediction.astype(bool, copy=False), truth.astype(bool, copy=False)
    has_p, has_t = bool(prediction.any()), bool(truth.any())
    if not has_p and not has_t:
        return float("nan")
    if has_p != has_t:
        return float("inf")
    forward, backward = _mask_surface_distances(prediction, truth, spacing)
    return float(max(np.percentile(forward, 95), np.percentile(backward, 95)))


def volume_ml(label_map: np.ndarray, spacing: Sequence[float], label: int = 1) -> float:
    """Volume of one label in millilitres (1 mL = 1000 mm^3)."""
    return float((np.asarray(label_map) == label).sum()) * float(np.prod(spacing)) / 1000.0


def segmentation_metrics(
    prediction: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    labels: dict[int, str],
    truth_values: dict[int, int] | None = None,
) -> dict[str, float]:
    """Per-label Dice, HD95 (mm), predicted and true volume (mL) and their difference, keyed ``"<metric>_<name>"``.

    Args:
        prediction: Label map ``(k, j, i)``.
        truth: Label map ``(k, j, i)``, same grid.
        spacing: ``(i, j, k)`` in mm.
        labels: Label value in ``prediction`` -> name (background 0 is skipped).
        truth_values: Label value in ``prediction`` -> the value of the same structure in ``truth`` (default: the
            same value); labels missing here are scored against the same value.
    """
    prediction, truth = _check_pair(prediction, truth)
    truth_values = truth_values or {}
    row: dict[str, float] = {}
    for value, name in sorted(labels.items()):
        if value == 0:
            continue
        p, t = prediction == value, truth == truth_values.get(value, value)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        predicted, true = float(p.sum()) * voxel_ml, float(t.sum()) * voxel_ml
        row[f"dice_{name}"] = dice_of_masks(p, t)
        row[f"hd95_mm_{name}"] = hausdorff95_of_masks(p, t, spacing)
        row[f"volume_ml_pred_{name}"] = predicted
        row[f"volume_ml_true_{name}"] = true
        row[f"volume_diff_ml_{name}"] = predicted - true
    return row


# ----------------------------------------------------------------------------------------------- classification
def roc_curve(targets: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and thresholds (descending) of a binary classifier.

    Args:
        targets: 0/1 truth per case.
        scores: Score per case, larger = more likely class 1.
    """
    y, s = _binary_inputs(targets, scores)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    positives, negatives = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    fpr = np.r_[0.0, fps / negatives]
    tpr = np.r_[0.0, tps / positives]
    thresholds = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thresholds


def roc_auc(targets: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (ties count one half); ``nan`` when only one class is present."""
    y, s = _binary_inputs(targets, scores)
    positives, negatives = s[y == 1], s[y == 0]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    # Mann-Whitney U from average ranks handles ties exactly.
    ranks = _average_ranks(np.r_[positives, negatives])
    u = ranks[: len(positives)].sum() - len(positives) * (len(positives) + 1) / 2
    return float(u / (len(positives) * len(negatives)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def _binary_inputs(targets: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(targets).astype(np.int64).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise InputError(f"expected one score per target, got {s.size} scores and {y.size} targets")
    if not np.isin(y, (0, 1)).all():
        raise InputError(f"expected binary targets 0/1, got values {sorted(set(y.tolist()))}")
    if not np.isfinite(s).all():
        raise InputError("expected finite scores, got NaN or Inf")
    return y, s


def confusion_matrix(targets: Sequence[int], predicted: Sequence[int], n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts; rows are the true class, columns the predicted class."""
    y, p = np.asarray(targets, np.int64).ravel(), np.asarray(predicted, np.int64).ravel()
    if y.shape != p.shape:
        raise InputError(f"expected one prediction per target, got {p.size} and {y.size}")
    for name, values in (("targets", y), ("predictions", p)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise InputError(f"expected {name} in 0..{n_classes - 1}, got values {sorted(set(values.tolist()))}")
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (y, p), 1)
    return matrix


def classification_metrics(
    targets: Sequence[int], probabilities: np.ndarray, *, threshold: float = 0.5
) -> dict[str, object]:
    """Accuracy, confusion matrix and, for two classes, AUC, sensitivity and specificity.

    Args:
        targets: True class per case (0..n-1).
        probabilities: ``(n_cases,)`` P(class 1) for binary models, or ``(n_cases, n_classes)``.
        threshold: Decision threshold on P(class 1) for binary models.
    """
    y = np.asarray(targets, np.int64).ravel()
    probs = np.asarray(probabilities, np.float64)
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = probs[:, 0]
    if probs.ndim == 1:
        predicted = (probs >= threshold).astype(np.int64)
        n_classes = 2
    elif probs.ndim == 2:
        predicted = probs.argmax(axis=1)
        n_classes = probs.shape[1]
    else:
        raise InputError(f"expected probabilities of shape (n,) or (n, n_classes), got {probs.shape}")
    if len(probs) != len(y):
        raise InputError(f"expected one prediction per target, got {len(probs)} and {len(y)}")
    matrix = confusion_matrix(y, predicted, n_classes)
    result: dict[str, object] = {
        "n": int(len(y)),
        "accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
        "confusion_matrix": matrix.tolist(),
    }
    if n_classes == 2:
        score = probs if probs.ndim == 1 else probs[:, 1]
        tn, fp, fn, tp = matrix.ravel()
        result["auc"] = roc_auc(y, score)
        result["sensitivity"] = float(tp / (tp + fn)) if tp + fn else float("nan")
        result["specificity"] = float(tn / (tn + fp)) if tn + fp else float("nan")
        result["threshold"] = threshold
    return result


# ----------------------------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap percentile confidence interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high, "ci_level": self.level}


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,  # type: ignore[assignment]
    *,
    groups: Sequence[object] | np.ndarray | None = None,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over cases, or over groups of cases (a cluster bootstrap).

    Without ``groups`` each resample draws ``n`` cases with replacement (rows of ``values`` stay together). With
    ``groups`` (one group key per row, e.g. a patient) each resample draws as many groups as there are, with
    replacement, and takes every case of each drawn group, so cases of one patient enter or leave a resample
    together; the statistic is computed over the cases of the resample. The point estimate is always the statistic
    over all cases.

    Args:
        values: 1D (one number per case; non-finite values are dropped with their group) or 2D (e.g. columns
            target and score, for AUC).
        statistic: Function of the (resampled) rows.
        groups: One hashable key per row, or None for case resampling.
        n_resamples: Number of resamples; 0 gives the point estimate only.
        level: Confidence level in (0, 1).
        seed: Seed of the resampling.

    Returns:
        The estimate with its interval; the interval is ``nan`` with fewer than two cases (or groups), and resamples
        where the statistic is undefined (``nan``, e.g. an AUC of one class) are skipped.
    """
    data = np.asarray(values, dtype=np.float64)
    keys = None if groups is None else np.asarray([str(g) for g in groups], dtype=object)
    if keys is not None and len(keys) != len(data):
        raise InputError(f"expected one group per case, got {len(keys)} groups for {len(data)} cases")
    if data.ndim == 1:
        finite = np.isfinite(data)
        data = data[finite]
        keys = None if keys is None else keys[finite]
    if len(data) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), level)
    if not 0 < level < 1:
        raise InputError(f"expected a confidence level in (0, 1), got {level}")
    point = float(statistic(data))
    rng = np.random.default_rng(seed)
    if keys is None:
        if n_resamples <= 0 or len(data) < 2:
            return Interval(point, float("nan"), float("nan"), level)
        samples = np.array([statistic(data[rng.integers(0, len(data), len(data))]) for _ in range(n_resamples)], float)
    else:
        unique = sorted(set(keys.tolist()))
        members = [np.flatnonzero(keys == key) for key in unique]
        if n_resamples <= 0 or len(unique) < 2:
            return Interval(point, float("nan"), float("nan"), level)
        samples = np.array([
            statistic(data[np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])])
            for _ in range(n_resamples)
        ], float)
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return Interval(point, float("nan"), float("nan"), level)
    alpha = (1 - level) / 2
    return Interval(point, float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha)), level)


def summarize(
    values: Sequence[float], *, groups: Sequence[object] | None = None, n_resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Mean (with bootstrap 95% CI), median, standard deviation, min, max and counts of one per-case column.

    Non-finite values (absent labels, infinite HD95) are left out of the statistics and counted in ``n_excluded``.
    With ``groups`` (one key per value) the interval resamples groups (see :func:`bootstrap_ci`) and ``n_groups``
    counts the groups that have a finite value.
    """
    data = np.asarray(values, dtype=np.float64)
    finite = data[np.isfinite(data)]
    interval = bootstrap_ci(data, np.mean, groups=groups, n_resamples=n_resamples, seed=seed)  # type: ignore[arg-type]
    has = len(finite) > 0
    result = {
        "mean": interval.value,
        "ci_low": interval.low,
        "ci_high": interval.high,
        "median": float(np.median(finite)) if has else float("nan"),
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan"),
        "min": float(finite.min()) if has else float("nan"),
        "max": float(finite.max()) if has else float("nan"),
        "n": int(len(finite)),
        "n_excluded": int(len(data) - len(finite)),
    }
    if groups is not None:
        keys = [str(g) for g, v in zip(groups, data, strict=True) if np.isfinite(v)]
        result["n_groups"] = len(set(keys))
    return result


def auc_statistic(pairs: np.ndarray) -> float:
    """AUC of an ``(n, 2)`` array of (target, score) rows, for :func:`bootstrap_ci`."""
    return roc_auc(pairs[:, 0].astype(np.int64), pairs[:, 1])
