"""Metrics: Dice, HD95 in physical mm, volumes, ROC/AUC, confusion matrix, bootstrap intervals."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from MedAnalysisLib.errors import GeometryError, InputError
from MedAnalysisLib.evaluation import metrics


def test_dice_counts_overlap_and_empty_labels() -> None:
    a = np.zeros((4, 5, 6), np.uint8)
    b = np.zeros_like(a)
    a[1:3, 1:3, 1:3] = 1  # 8 voxels
    b[1:3, 1:3, 2:4] = 1  # 8 voxels, 4 shared
    assert metrics.dice(a, b) == pytest.approx(0.5)
    assert metrics.dice(a, a) == 1.0
    assert math.isnan(metrics.dice(a, b, label=2))
    with pytest.raises(GeometryError, match="same shape"):
        metrics.dice(a, b[:3])


def test_hd95_uses_physical_spacing_in_itk_order() -> None:
    a = np.zeros((10, 10, 10), np.uint8)
    b = np.zeros_like(a)
    a[2, 2, 2] = 1
    b[2 + 3, 2 + 2, 2 + 1] = 1  # moved 1 voxel along i, 2 along j, 3 along k
    spacing = (0.5, 1.0, 2.0)  # (i, j, k) mm
    expected = math.sqrt(0.5**2 + 2.0**2 + 6.0**2)
    assert metrics.hausdorff95(a, b, spacing) == pytest.approx(expected, rel=1e-5)
    assert metrics.hausdorff95(a, a, spacing) == 0.0
    assert metrics.hausdorff95(a, np.zeros_like(a), spacing) == math.inf
    assert math.isnan(metrics.hausdorff95(a, b, spacing, label=3))


def boundary_voxels_oracle(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """Boundary voxels of a (k, j, i) mask, found without the library: a voxel of the mask is on the boundary when
    one of its six face neighbours is not in the mask or lies outside the image."""
    inside = {tuple(int(c) for c in index) for index in np.argwhere(mask)}
    steps = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    return sorted(v for v in inside if any((v[0] + a, v[1] + b, v[2] + c) not in inside for a, b, c in steps))


def hd95_oracle(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> tuple[float, float]:
    """HD95 by brute force, as docs/evaluation.md defines it, and MedPy's pooled variant on the same distances.

    All pairs of boundary voxel centres, in mm ((k, j, i) index times (k, j, i) spacing); for each boundary voxel
    the distance to the nearest boundary voxel of the other mask; the larger of the two directed 95th percentiles
    (ours), and the 95th percentile of both directions pooled (MedPy's hd95).
    """
    scale = np.array([spacing[2], spacing[1], spacing[0]])
    points_a = np.array(boundary_voxels_oracle(a), float) * scale
    points_b = np.array(boundary_voxels_oracle(b), float) * scale
    pairwise = np.sqrt(((points_a[:, None, :] - points_b[None, :, :]) ** 2).sum(axis=-1))
    a_to_b, b_to_a = pairwise.min(axis=1), pairwise.min(axis=0)
    ours = max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))
    return float(ours), float(np.percentile(np.r_[a_to_b, b_to_a], 95))


def noisy_ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float,
               rng: np.random.Generator) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return (np.linalg.norm(grid - np.array(centre), axis=-1) < radius + rng.normal(0, 0.4, shape)).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_an_independent_brute_force_oracle(seed: int) -> None:
    """The library's boundary and distance code is not used by the oracle; the masks are irregular (noisy balls,
    one touching the image border) on an anisotropic grid, so a boundary of another connectivity, distances in
    voxels instead of mm, swapped spacing axes or pooled percentiles would all give other numbers."""
    rng = np.random.default_rng(seed)
    shape = (11, 13, 12)
    a = noisy_ball(shape, (5, 6, 6), 4.0, rng)
    b = noisy_ball(shape, (6, 5, 8), 3.5, rng)
    a[:, :, 0] = a[:, :, 1]  # reaches the border: the border counts as outside
    spacing = (0.8, 1.3, 2.5)  # (i, j, k) mm
    ours, pooled = hd95_oracle(a, b, spacing)
    assert metrics.hausdorff95(a, b, spacing) == pytest.approx(ours, rel=1e-5)
    # The definition differs from MedPy's pooled percentile, never the other way round on these masks.
    assert pooled <= ours + 1e-9


def test_hd95_is_the_larger_directed_percentile_not_the_pooled_one() -> None:
    """The prediction is the truth (a 10x10 slab through all 4 slices, 272 boundary voxels) plus a small far blob
    (24 boundary voxels). The truth's boundary and 272 of the prediction's lie on each other (distance 0): pooled,
    the zeros are 544 of 568 distances (96%), so MedPy's pooled 95th percentile is 0. From the prediction, the blob is
    24 of 296 distances (8%), so the directed 95th percentile, and HD95, is a blob distance: at least
    sqrt(13^2 + 13^2) = 18.38 mm, the blob's nearest corner to the slab's."""
    truth = np.zeros((4, 30, 30), np.uint8)
    truth[:, 2:12, 2:12] = 1
    prediction = truth.copy()
    prediction[:, 24:26, 24:27] = 1
    spacing = (1.0, 1.0, 1.0)
    assert len(boundary_voxels_oracle(truth)) == 272 and len(boundary_voxels_oracle(prediction)) == 296
    ours, pooled = hd95_oracle(prediction, truth, spacing)
    assert pooled == 0.0
    assert ours >= math.hypot(13, 13) - 1e-9
    assert metrics.hausdorff95(prediction, truth, spacing) == pytest.approx(ours, rel=1e-6)


def test_surface_of_a_cube_is_its_shell() -> None:
    cube = np.zeros((7, 7, 7), bool)
    cube[1:6, 1:6, 1:6] = True
    surface = metrics._surface(cube)
    assert surface.sum() == 5**3 - 3**3
    assert not surface[3, 3, 3]


def test_segmentation_metrics_row_has_volumes_in_ml() -> None:
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[:5] = 1
    prediction = truth.copy()
    prediction[5:6] = 1
    row = metrics.segmentation_metrics(prediction, truth, (2.0, 2.0, 2.0), {0: "background", 1: "organ"})
    assert row["volume_ml_true_organ"] == pytest.approx(500 * 8 / 1000)
    assert row["volume_diff_ml_organ"] == pytest.approx(100 * 8 / 1000)
    assert row["dice_organ"] == pytest.approx(2 * 500 / 1100)
    assert row["hd95_mm_organ"] == pytest.approx(2.0)
    assert not any(key.endswith("background") for key in row)
    # The truth may number the same structure differently (labels matched by name): value 7 in the truth is organ.
    renumbered = metrics.segmentation_metrics(prediction, truth * 7, (2.0, 2.0, 2.0), {1: "organ"}, {1: 7})
    assert renumbered == row
    assert metrics.segmentation_metrics(prediction, truth * 7, (2.0, 2.0, 2.0), {1: "organ"})["dice_organ"] == 0.0


def test_auc_and_roc_against_pairwise_counting() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounding makes ties
    pairs = [(sp, sn) for sp, sn in itertools.product(s[y == 1], s[y == 0])]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert metrics.roc_auc(y, s) == pytest.approx(expected)
    fpr, tpr, thresholds = metrics.roc_curve(y, s)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thresholds) < 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(expected)
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))
    with pytest.raises(InputError, match="binary targets"):
        metrics.roc_auc([0, 2], [0.1, 0.2])


def test_classification_metrics_binary_and_multiclass() -> None:
    result = metrics.classification_metrics([0, 0, 1, 1, 1], [0.1, 0.7, 0.8, 0.4, 0.9])
    assert result["confusion_matrix"] == [[1, 1], [1, 2]]
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["sensitivity"] == pytest.approx(2 / 3)
    assert result["specificity"] == pytest.approx(1 / 2)
    assert result["auc"] == pytest.approx(5 / 6)
    multi = metrics.classification_metrics([0, 1, 2, 2], np.eye(3)[[0, 1, 1, 2]])
    assert multi["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert "auc" not in multi


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible() -> None:
    values = np.random.default_rng(2).normal(0.8, 0.05, 40)
    first = metrics.bootstrap_ci(values, n_resamples=500, seed=3)
    again = metrics.bootstrap_ci(values, n_resamples=500, seed=3)
    assert first == again
    assert first.value == pytest.approx(values.mean())
    assert first.low < first.value < first.high
    assert first.high - first.low < 0.05
    summary = metrics.summarize([0.5, 0.7, float("nan"), float("inf"), 0.9], n_resamples=200)
    assert summary["n"] == 3 and summary["n_excluded"] == 2
    assert summary["mean"] == pytest.approx(0.7) and summary["median"] == pytest.approx(0.7)
    pairs = np.c_[[0, 0, 1, 1, 0, 1, 1, 0], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.6, 0.5]]
    auc = metrics.bootstrap_ci(pairs, metrics.auc_statistic, n_resamples=200)
    assert auc.value == pytest.approx(metrics.roc_auc(pairs[:, 0], pairs[:, 1]))
    assert 0 <= auc.low <= auc.value <= auc.high <= 1


def cluster_bootstrap_oracle(values: np.ndarray, groups: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    """The patient-level bootstrap the accuracy benchmarks used (bench/accuracy_common.py before the library had
    it): draw as many patients as there are, with replacement, take all their cases, 2.5/97.5 percentiles."""
    unique = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in unique}
    rng = np.random.default_rng(seed)
    means = [values[np.concatenate([members[g] for g in rng.choice(unique, size=len(unique), replace=True)])].mean()
             for _ in range(n)]
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def test_bootstrap_by_group_resamples_patients_not_cases() -> None:
    """Ten patients with four identical slices each: the slices add no information, so the patient-level interval
    must be as wide as the interval of the ten patient values, while resampling slices makes it about half as
    wide (too narrow). The group interval equals the benchmarks' cluster bootstrap (an independent
    implementation) exactly."""
    patient_values = np.random.default_rng(4).normal(0.8, 0.1, 10)
    values = np.repeat(patient_values, 4)
    groups = np.repeat([f"patient{n:02d}" for n in range(10)], 4)
    by_group = metrics.bootstrap_ci(values, groups=groups, n_resamples=2000, seed=7)
    by_case = metrics.bootstrap_ci(values, n_resamples=2000, seed=7)
    alone = metrics.bootstrap_ci(patient_values, n_resamples=2000, seed=7)
    assert by_group.value == pytest.approx(values.mean())
    assert (by_group.low, by_group.high) == pytest.approx(cluster_bootstrap_oracle(values, groups, 2000, 7), abs=1e-12)
    assert (by_group.low, by_group.high) == pytest.approx((alone.low, alone.high), abs=1e-12)
    assert (by_case.high - by_case.low) < 0.7 * (by_group.high - by_group.low)
    summary = metrics.summarize([*values, float("nan")], groups=[*groups, "patient99"], n_resamples=500, seed=1)
    assert summary["n"] == 40 and summary["n_groups"] == 10 and summary["n_excluded"] == 1
    pairs = np.c_[np.tile([0, 1], 20), np.linspace(0, 1, 40)]
    grouped_auc = metrics.bootstrap_ci(pairs, metrics.auc_statistic, groups=groups, n_resamples=200)
    assert grouped_auc.value == pytest.approx(metrics.roc_auc(pairs[:, 0], pairs[:, 1]))
    with pytest.raises(InputError, match="one group per case"):
        metrics.bootstrap_ci(values, groups=groups[:-1])
