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


def test_hd95_matches_a_brute_force_computation() -> None:
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(12)] * 3, indexing="ij"), -1)
    a = (np.linalg.norm(grid - [5, 6, 6], axis=-1) < 4 + rng.normal(0, 0.3, (12, 12, 12))).astype(np.uint8)
    b = (np.linalg.norm(grid - [6, 5, 7], axis=-1) < 3.5).astype(np.uint8)
    spacing = (0.8, 1.2, 2.5)
    scale = np.array(spacing[::-1])  # (k, j, i) mm per voxel
    surface_a = np.argwhere(metrics._surface(a.astype(bool))) * scale
    surface_b = np.argwhere(metrics._surface(b.astype(bool))) * scale
    pairwise = np.linalg.norm(surface_a[:, None] - surface_b[None], axis=-1)
    expected = max(np.percentile(pairwise.min(1), 95), np.percentile(pairwise.min(0), 95))
    assert metrics.hausdorff95(a, b, spacing) == pytest.approx(expected, rel=1e-4)


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
