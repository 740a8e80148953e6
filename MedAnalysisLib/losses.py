"""Losses and metrics for segmentation and classification (backend-neutral: ``keras.ops`` only).

Conventions: predictions are probabilities (softmax over the last axis for segmentation and multi-class, one
sigmoid unit for binary), as every MedAnalysis model outputs; targets are integer class indices, ``(B, *spatial)``
or ``(B, *spatial, 1)`` for segmentation, ``(B,)``/``(B, 1)`` (or ``(B, S, 1)`` per slice) for classification.
All arithmetic runs in float32, also under mixed precision.

Losses: :class:`DiceCELoss` (soft Dice + cross-entropy, nnU-Net's default), :class:`FocalLoss` (binary and
multi-class), :class:`BinaryCrossEntropy`. Metrics: :class:`DiceMetric` (hard per-class or mean Dice accumulated
over an epoch), :class:`BinarySensitivity`, :class:`BinarySpecificity`, and Keras's ``AUC``/accuracy through
:func:`classification_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

_EPS = 1e-7


def _sparse_labels(y_true: Any, n_classes: int, spatial_rank: int) -> Any:
    """Integer labels ``(B, *spatial)`` from ``(B, *spatial)`` or ``(B, *spatial, 1)``."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == spatial_rank + 2 and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    return ops.cast(y_true, "int32")


@keras.saving.register_keras_serializable(package="MedAnalysis")
class DiceCELoss(keras.losses.Loss):
    """Soft Dice + categorical cross-entropy on softmax probabilities.

    ``loss = ce_weight * CE + dice_weight * (1 - mean_c Dice_c)`` where ``Dice_c = (2 sum p_c g_c + smooth) /
    (sum p_c + sum g_c + smooth)`` over the whole batch and all voxels ("batch Dice", as nnU-Net), averaged over the
    foreground classes (background too when ``include_background``).

    Args:
        n_classes: Number of classes including the background.
        include_background: Count class 0 in the Dice term.
        ce_weight: Weight of the cross-entropy term.
        dice_weight: Weight of the Dice term.
        smooth: Added to numerator and denominator (keeps empty classes finite).

    Call args:
        y_true: Integer labels ``(B, *spatial)`` or ``(B, *spatial, 1)``.
        y_pred: Probabilities ``(B, *spatial, n_classes)``.
    """

    def __init__(
        self,
        n_classes: int,
        include_background: bool = False,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1e-5,
        name: str = "dice_ce",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if n_classes < 2:
            raise ValueError(f"expected n_classes >= 2, got {n_classes}")
        self.n_classes = int(n_classes)
        self.include_background = bool(include_background)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.cast(y_pred, "float32")
        spatial_rank = len(y_pred.shape) - 2
        labels = _sparse_labels(y_true, self.n_classes, spatial_rank)
        one_hot = ops.one_hot(labels, self.n_classes, dtype="float32")
        probs = ops.clip(y_pred, _EPS, 1.0 - _EPS)
        ce = -ops.mean(ops.sum(one_hot * ops.log(probs), axis=-1))
        axes = tuple(range(spatial_rank + 1))
        intersection = ops.sum(one_hot * y_pred, axis=axes)
        denominator = ops.sum(one_hot, axis=axes) + ops.sum(y_pred, axis=axes)
        dice = (2.0 * intersection + self.smooth) / (denominator + self.smooth)
        if not self.include_background:
            dice = dice[1:]
        return self.ce_weight * ce + self.dice_weight * (1.0 - ops.mean(dice))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_classes": self.n_classes, "include_background": self.include_background,
                "ce_weight": self.ce_weight, "dice_weight": self.dice_weight, "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="MedAnalysis")
class FocalLoss(keras.losses.Loss):
    """Focal loss (Lin et al. 2017): ``-alpha_t (1 - p_t)^gamma log p_t``, down-weighting easy examples.

    Binary when ``y_pred`` has one unit (sigmoid probability of class 1; ``alpha`` weighs class 1 and ``1 - alpha``
    class 0), multi-class otherwise (softmax; ``alpha`` ignored unless a per-class sequence). Returns one value per
    prediction position (e.g. ``(B,)`` or ``(B, S)``), so sample weights (such as a slice mask) apply per position.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = 0.25, name: str = "focal",
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.gamma = float(gamma)
        self.alpha = list(alpha) if isinstance(alpha, (list, tuple)) else alpha

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.clip(ops.cast(y_pred, "float32"), _EPS, 1.0 - _EPS)
        units = y_pred.shape[-1]
        if units == 1:
            y = ops.cast(ops.reshape(y_true, ops.shape(y_pred)), "float32")
            p_t = y * y_pred + (1.0 - y) * (1.0 - y_pred)
            alpha_t = 1.0 if self.alpha is None else y * float(self.alpha) + (1.0 - y) * (1.0 - float(self.alpha))  # type: ignore[arg-type]
            loss = -alpha_t * ops.power(1.0 - p_t, self.gamma) * ops.log(p_t)
            return ops.squeeze(loss, axis=-1)
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):
            labels = ops.squeeze(labels, axis=-1)
        one_hot = ops.one_hot(labels, units, dtype="float32")
        p_t = ops.sum(one_hot * y_pred, axis=-1)
        loss = -ops.power(1.0 - p_t, self.gamma) * ops.log(p_t)
        if isinstance(self.alpha, list):
            loss = loss * ops.sum(one_hot * ops.convert_to_tensor(self.alpha, dtype="float32"), axis=-1)
        return loss

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="MedAnalysis")
class BinaryCrossEntropy(keras.losses.Loss):
    """Binary cross-entropy on sigmoid probabilities ``(..., 1)``; one value per prediction position.

    Args:
        pos_weight: Weight of the positive class (> 1 for rare positives).
    """

    def __init__(self, pos_weight: float = 1.0, name: str = "bce", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.pos_weight = float(pos_weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.clip(ops.cast(y_pred, "float32"), _EPS, 1.0 - _EPS)
        y = ops.cast(ops.reshape(y_true, ops.shape(y_pred)), "float32")
        loss = -(self.pos_weight * y * ops.log(y_pred) + (1.0 - y) * ops.log(1.0 - y_pred))
        return ops.squeeze(loss, axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pos_weight": self.pos_weight}


def get_loss(name: str, *, n_classes: int = 2, **kwargs: Any) -> keras.losses.Loss:
    """Loss by name: ``"dice_ce"`` (segmentation), ``"focal"``, ``"bce"`` (binary), ``"ce"`` (multi-class)."""
    if name == "dice_ce":
        return DiceCELoss(n_classes, **kwargs)
    if name == "focal":
        return FocalLoss(**kwargs)
    if name == "bce":
        return BinaryCrossEntropy(**kwargs)
    if name == "ce":
        return keras.losses.SparseCategoricalCrossentropy(**kwargs)
    raise ValueError(f"expected a loss among dice_ce, focal, bce, ce, got {name!r}")


@keras.saving.register_keras_serializable(package="MedAnalysis")
class DiceMetric(keras.metrics.Metric):
    """Hard Dice of the argmax prediction, accumulated over all batches of an epoch ("global Dice").

    ``Dice_c = 2 |P_c & G_c| / (|P_c| + |G_c|)`` per class, averaged over ``class_ids`` (default: all foreground
    classes). A class absent from both prediction and reference counts as 1.

    Args:
        n_classes: Classes including background.
        class_ids: Which classes to average (one id gives a per-class metric such as ``dice_1``).
    """

    def __init__(self, n_classes: int, class_ids: Sequence[int] | None = None, name: str = "mean_dice",
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.n_classes = int(n_classes)
        self.class_ids = list(range(1, self.n_classes)) if class_ids is None else [int(c) for c in class_ids]
        if not self.class_ids or any(not 0 <= c < self.n_classes for c in self.class_ids):
            raise ValueError(f"expected class ids in [0, {self.n_classes}), got {self.class_ids}")
        self.intersection = self.add_variable(shape=(self.n_classes,), initializer="zeros", name="intersection")
        self.total = self.add_variable(shape=(self.n_classes,), initializer="zeros", name="total")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        spatial_rank = len(y_pred.shape) - 2
        labels = _sparse_labels(y_true, self.n_classes, spatial_rank)
        predicted = ops.argmax(y_pred, axis=-1)
        truth = ops.one_hot(labels, self.n_classes, dtype="float32")
        guess = ops.one_hot(predicted, self.n_classes, dtype="float32")
        axes = tuple(range(spatial_rank + 1))
        self.intersection.assign_add(ops.sum(truth * guess, axis=axes))
        self.total.assign_add(ops.sum(truth, axis=axes) + ops.sum(guess, axis=axes))

    def result(self) -> Any:
        dice = ops.where(self.total > 0, 2.0 * self.intersection / ops.maximum(self.total, 1.0), 1.0)
        return ops.mean(ops.take(dice, ops.convert_to_tensor(self.class_ids, dtype="int32")))

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "n_classes": self.n_classes, "class_ids": self.class_ids}


class _BinaryCounts(keras.metrics.Metric):
    """Weighted confusion counts of thresholded sigmoid outputs."""

    def __init__(self, threshold: float = 0.5, name: str = "binary_counts", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.threshold = float(threshold)
        self.counts = self.add_variable(shape=(4,), initializer="zeros", name="counts")  # tp, fp, tn, fn

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_pred = ops.cast(y_pred, "float32")
        y = ops.cast(ops.reshape(y_true, ops.shape(y_pred)), "float32") > 0.5
        p = y_pred > self.threshold
        weight = ops.ones_like(y_pred) if sample_weight is None else ops.reshape(
            ops.cast(sample_weight, "float32"), ops.shape(y_pred))
        tp = ops.sum(ops.where(y & p, weight, 0.0))
        fp = ops.sum(ops.where(~y & p, weight, 0.0))
        tn = ops.sum(ops.where(~y & ~p, weight, 0.0))
        fn = ops.sum(ops.where(y & ~p, weight, 0.0))
        self.counts.assign_add(ops.stack([tp, fp, tn, fn]))

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="MedAnalysis")
class BinarySensitivity(_BinaryCounts):
    """Sensitivity (recall, true-positive rate) ``TP / (TP + FN)`` at ``threshold``; 0 when there are no positives."""

    def __init__(self, threshold: float = 0.5, name: str = "sensitivity", **kwargs: Any) -> None:
        super().__init__(threshold=threshold, name=name, **kwargs)

    def result(self) -> Any:
        tp, fn = self.counts[0], self.counts[3]
        return ops.where(tp + fn > 0, tp / ops.maximum(tp + fn, 1e-9), 0.0)


@keras.saving.register_keras_serializable(package="MedAnalysis")
class BinarySpecificity(_BinaryCounts):
    """Specificity (true-negative rate) ``TN / (TN + FP)`` at ``threshold``; 0 when there are no negatives."""

    def __init__(self, threshold: float = 0.5, name: str = "specificity", **kwargs: Any) -> None:
        super().__init__(threshold=threshold, name=name, **kwargs)

    def result(self) -> Any:
        fp, tn = self.counts[1], self.counts[2]
        return ops.where(tn + fp > 0, tn / ops.maximum(tn + fp, 1e-9), 0.0)


def segmentation_metrics(n_classes: int) -> list[keras.metrics.Metric]:
    """``mean_dice`` over the foreground classes plus ``dice_<c>`` for each foreground class."""
    metrics: list[keras.metrics.Metric] = [DiceMetric(n_classes, name="mean_dice")]
    if n_classes > 2:
        metrics += [DiceMetric(n_classes, [c], name=f"dice_{c}") for c in range(1, n_classes)]
    return metrics


def classification_metrics(n_classes: int) -> list[keras.metrics.Metric]:
    """Binary: ``auc``, ``accuracy``, ``sensitivity``, ``specificity``; multi-class: ``accuracy``."""
    if n_classes == 2:
        return [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy"),
                BinarySensitivity(), BinarySpecificity()]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
