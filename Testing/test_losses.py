"""Losses and metrics against plain numpy formulas."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from MedAnalysisLib.losses import (
    BinaryCrossEntropy,
    BinarySensitivity,
    BinarySpecificity,
    DiceCELoss,
    DiceMetric,
    FocalLoss,
    classification_metrics,
    get_loss,
    segmentation_metrics,
)

RNG = np.random.default_rng(3)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_dice_ce_matches_numpy() -> None:
    labels = RNG.integers(0, 3, size=(2, 4, 5, 6))
    probs = _softmax(RNG.normal(size=(2, 4, 5, 6, 3))).astype("float32")
    onehot = np.eye(3)[labels]
    ce = -np.mean(np.sum(onehot * np.log(np.clip(probs, 1e-7, 1)), -1))
    inter = (onehot * probs).sum((0, 1, 2, 3))
    dice = (2 * inter + 1e-5) / (onehot.sum((0, 1, 2, 3)) + probs.sum((0, 1, 2, 3)) + 1e-5)
    expected = ce + 1 - dice[1:].mean()
    got = float(DiceCELoss(3)(labels, probs))
    assert got == pytest.approx(expected, rel=1e-4)
    # (B, ..., 1) labels are accepted too, and background can be included.
    with_bg = float(DiceCELoss(3, include_background=True)(labels[..., None], probs))
    assert with_bg == pytest.approx(ce + 1 - dice.mean(), rel=1e-4)


def test_dice_ce_is_near_zero_for_a_perfect_prediction_and_large_for_a_wrong_one() -> None:
    labels = RNG.integers(0, 2, size=(1, 6, 6))
    perfect = np.eye(2)[labels].astype("float32") * 0.999998 + 1e-6
    wrong = np.eye(2)[1 - labels].astype("float32") * 0.999998 + 1e-6
    assert float(DiceCELoss(2)(labels, perfect)) < 1e-3
    assert float(DiceCELoss(2)(labels, wrong)) > 10


def test_focal_and_bce_match_numpy_and_keep_positions_for_sample_weights() -> None:
    y = RNG.integers(0, 2, size=(3, 4, 1)).astype("float32")
    p = RNG.uniform(0.05, 0.95, size=(3, 4, 1)).astype("float32")
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))[..., 0]
    got_bce = BinaryCrossEntropy().call(y, p)
    assert tuple(got_bce.shape) == (3, 4)
    np.testing.assert_allclose(np.asarray(got_bce), bce, rtol=1e-5)
    p_t = y * p + (1 - y) * (1 - p)
    alpha_t = y * 0.25 + (1 - y) * 0.75
    focal = (-alpha_t * (1 - p_t) ** 2 * np.log(p_t))[..., 0]
    np.testing.assert_allclose(np.asarray(FocalLoss(gamma=2, alpha=0.25).call(y, p)), focal, rtol=1e-5)
    # A masked position contributes nothing to the reduced loss.
    weights = np.ones((3, 4), "float32")
    weights[:, 2:] = 0
    reduced = float(BinaryCrossEntropy()(y, p, sample_weight=weights))
    assert reduced == pytest.approx(bce[:, :2].sum() / bce.size, rel=1e-5)


def test_multiclass_focal_matches_numpy() -> None:
    labels = RNG.integers(0, 4, size=(5,))
    probs = _softmax(RNG.normal(size=(5, 4))).astype("float32")
    p_t = probs[np.arange(5), labels]
    expected = -(1 - p_t) ** 1.5 * np.log(p_t)
    np.testing.assert_allclose(np.asarray(FocalLoss(gamma=1.5, alpha=None).call(labels, probs)), expected, rtol=1e-5)


def test_dice_metric_accumulates_hard_dice_over_batches() -> None:
    metric = DiceMetric(3, name="mean_dice")
    per_class = DiceMetric(3, [2], name="dice_2")
    truths, guesses = [], []
    for _ in range(3):
        labels = RNG.integers(0, 3, size=(2, 5, 5))
        probs = _softmax(RNG.normal(size=(2, 5, 5, 3)) + 2 * np.eye(3)[labels])
        metric.update_state(labels, probs)
        per_class.update_state(labels, probs)
        truths.append(labels)
        guesses.append(probs.argmax(-1))
    truth, guess = np.concatenate(truths), np.concatenate(guesses)
    dice = [2 * np.sum((truth == c) & (guess == c)) / (np.sum(truth == c) + np.sum(guess == c)) for c in range(3)]
    assert float(metric.result()) == pytest.approx(np.mean(dice[1:]), rel=1e-5)
    assert float(per_class.result()) == pytest.approx(dice[2], rel=1e-5)
    metric.reset_state()
    assert float(metric.result()) == 1.0  # nothing seen: both empty
    clone = DiceMetric.from_config(per_class.get_config())
    assert (clone.n_classes, clone.class_ids, clone.name) == (3, [2], "dice_2")


def test_sensitivity_and_specificity_match_confusion_counts_with_weights() -> None:
    y = RNG.integers(0, 2, size=(40, 1))
    p = RNG.uniform(size=(40, 1)).astype("float32")
    w = RNG.integers(0, 2, size=(40,)).astype("float32")
    sens, spec = BinarySensitivity(), BinarySpecificity(threshold=0.4)
    sens.update_state(y, p, sample_weight=w)
    spec.update_state(y, p, sample_weight=w)
    keep = w > 0
    yk, pk = y[keep, 0] > 0, p[keep, 0]
    assert float(sens.result()) == pytest.approx(np.sum(yk & (pk > 0.5)) / np.sum(yk), rel=1e-6)
    assert float(spec.result()) == pytest.approx(np.sum(~yk & (pk <= 0.4)) / np.sum(~yk), rel=1e-6)


def test_metric_and_loss_factories() -> None:
    assert [m.name for m in segmentation_metrics(3)] == ["mean_dice", "dice_1", "dice_2"]
    assert [m.name for m in segmentation_metrics(2)] == ["mean_dice"]
    names = [m.name for m in classification_metrics(2)]
    assert names == ["auc", "accuracy", "sensitivity", "specificity"]
    assert [m.name for m in classification_metrics(5)] == ["accuracy"]
    assert isinstance(get_loss("dice_ce", n_classes=4), DiceCELoss)
    assert isinstance(get_loss("ce"), keras.losses.SparseCategoricalCrossentropy)
    with pytest.raises(ValueError, match="expected a loss"):
        get_loss("hinge")
    restored = keras.losses.deserialize(keras.losses.serialize(DiceCELoss(4, ce_weight=0.5)))
    assert isinstance(restored, DiceCELoss) and (restored.n_classes, restored.ce_weight) == (4, 0.5)
