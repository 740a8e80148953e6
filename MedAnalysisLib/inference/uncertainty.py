"""How sure a prediction is: entropy and disagreement over the passes of one prediction.

A prediction is made of P *passes*: the test-time augmentation flips of every ensemble member (and, for sliding
windows, the overlapping windows that cover a voxel, weighted as their probabilities are). With ``p_pass`` the class
probabilities of one pass and ``p̄`` their (weighted) mean:

* ``entropy`` = H(p̄) / log(C): the total predictive uncertainty, 0 for a one-hot mean, 1 for a uniform one;
* ``disagreement`` = (H(p̄) - mean_pass H(p_pass)) / log(C): the mutual information between the prediction and the
  pass, 0 when every pass says the same and large when confident passes contradict each other. It needs P > 1:
  with one pass (no TTA, one model) only ``entropy`` exists;
* ``spread`` (classification): the standard deviation over passes of the probability of the predicted class.

``C`` is the number of classes (a single sigmoid output counts as two). Logarithms are natural; every measure is in
[0, 1]. Everything here is plain numpy on arrays whose last axis holds the classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Probabilities below this count as 0 in ``p log p`` (avoids log(0); far below any meaningful probability).
_EPS = 1e-12
#: Default of ``medanalysis predict --uncertainty-threshold``: a case whose entropy (segmentation: mean over the
#: voxels predicted foreground) is above it is flagged for review (see docs/outputs.md for the measurements).
DEFAULT_UNCERTAINTY_THRESHOLD = 0.3


def class_axis(probabilities: np.ndarray) -> np.ndarray:
    """``probabilities`` as float32 with at least two classes on the last axis (a sigmoid ``p`` becomes
    ``[1 - p, p]``)."""
    p = np.asarray(probabilities, dtype=np.float32)
    if p.shape[-1] == 1:
        p = np.concatenate([1.0 - p, p], axis=-1)
    return p


def entropy_nats(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy (natural log) over the last axis; the probabilities are clipped to [0, 1] first."""
    p = np.clip(class_axis(probabilities), 0.0, 1.0)
    return -np.sum(p * np.log(np.maximum(p, _EPS)), axis=-1, dtype=np.float32)


def log_classes(n_classes: int) -> float:
    """The largest entropy of ``n_classes`` classes (a single sigmoid output counts as two)."""
    return float(np.log(max(int(n_classes), 2)))


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """H(p) / log(C) over the last axis, in [0, 1] (float32)."""
    p = class_axis(probabilities)
    return np.clip(entropy_nats(p) / log_classes(p.shape[-1]), 0.0, 1.0).astype(np.float32)


def disagreement(entropy: np.ndarray, mean_pass_entropy: np.ndarray) -> np.ndarray:
    """(H(p̄) - mean H(p_pass)), both already normalised, clipped to [0, 1] (interpolation and rounding can make the
    difference a hair below 0 where all passes agree)."""
    return np.clip(np.asarray(entropy, np.float32) - np.asarray(mean_pass_entropy, np.float32), 0.0, 1.0)


@dataclass
class PassStats:
    """Running sums over the passes of a classification (per slice or per scan): enough to give the mean, the
    entropy, the disagreement and the spread of any class, and to merge the passes of ensemble members exactly.

    Attributes:
        sum_p: Sum over passes of the probabilities, ``(..., C)``.
        sum_p2: Sum over passes of the squared probabilities, ``(..., C)``.
        sum_h: Sum over passes of the normalised entropy of each pass, ``(...)``.
        passes: Number of passes summed.
    """

    sum_p: np.ndarray
    sum_p2: np.ndarray
    sum_h: np.ndarray
    passes: int

    @classmethod
    def of(cls, runs: list[np.ndarray] | np.ndarray) -> PassStats:
        """Statistics of a stack of passes ``(P, ..., C)``."""
        p = np.stack([class_axis(run) for run in runs]).astype(np.float64)
        return cls(p.sum(axis=0), (p * p).sum(axis=0), normalised_entropy(p).astype(np.float64).sum(axis=0), len(p))

    def merged(self, other: PassStats) -> PassStats:
        """The statistics of both sets of passes together (ensemble members)."""
        return PassStats(self.sum_p + other.sum_p, self.sum_p2 + other.sum_p2, self.sum_h + other.sum_h,
                         self.passes + other.passes)

    @property
    def mean(self) -> np.ndarray:
        return self.sum_p / self.passes

    def spread(self) -> np.ndarray:
        """Standard deviation over passes of each class's probability, ``(..., C)`` (0 with one pass)."""
        mean = self.mean
        return np.sqrt(np.maximum(self.sum_p2 / self.passes - mean * mean, 0.0))

    def measures(self) -> dict[str, np.ndarray]:
        """``entropy`` always; ``spread`` (of the arg-max class of the mean) and ``disagreement`` when P > 1."""
        mean = self.mean
        entropy = normalised_entropy(mean).astype(np.float64)
        result = {"entropy": entropy}
        if self.passes > 1:
            best = np.argmax(mean, axis=-1)[..., None]
            result["spread"] = np.take_along_axis(self.spread(), best, axis=-1)[..., 0]
            result["disagreement"] = disagreement(entropy, self.sum_h / self.passes).astype(np.float64)
        return result


def classification_columns(stats: PassStats) -> list[dict[str, float]]:
    """One dict of columns per row of ``stats`` (``entropy``, then ``spread`` and ``disagreement`` when P > 1),
    rounded to 6 decimals; a scan's statistics (no row axis) give one dict."""
    measures = stats.measures()
    order = [key for key in ("entropy", "spread", "disagreement") if key in measures]
    rows = np.atleast_1d(measures["entropy"]).shape[0]
    flat = {key: np.atleast_1d(measures[key]) for key in order}
    return [{key: round(float(flat[key][n]), 6) for key in order} for n in range(rows)]


def label_means(label: np.ndarray, maps: dict[str, np.ndarray], values: list[int]) -> dict[int, dict[str, Any]]:
    """Per label value, the mean of each map over that label's voxels (``mean_entropy``, ``mean_disagreement``);
    None for a label with no voxel. One pass over the volume per map (``np.bincount``)."""
    flat = np.asarray(label).ravel().astype(np.int64)
    length = max([*values, int(flat.max(initial=0))]) + 1
    counts = np.bincount(flat, minlength=length)
    result: dict[int, dict[str, Any]] = {int(v): {} for v in values}
    for measure, volume in maps.items():
        sums = np.bincount(flat, weights=np.asarray(volume, np.float64).ravel(), minlength=length)
        for value in values:
            mean = sums[value] / counts[value] if counts[value] else None
            result[int(value)][f"mean_{measure}"] = None if mean is None else round(float(mean), 6)
    return result


def foreground_entropy(label: np.ndarray, entropy: np.ndarray) -> float:
    """Mean entropy over the voxels predicted foreground (label != 0), or over the whole volume when none is: the
    one number per case that says how sure the segmentation is where it found something."""
    entropy = np.asarray(entropy, np.float64)
    foreground = np.asarray(label) != 0
    chosen = entropy[foreground] if foreground.any() else entropy
    return round(float(chosen.mean()) if chosen.size else 0.0, 6)
