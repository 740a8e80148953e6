"""PNG figures of an evaluation, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

* :func:`overlay_montage`: best and worst cases side by side, each as the axial slice with the most truth, the
  image in grey with the truth contour (green) and the prediction contour (red), in physical proportions;
* :func:`training_curves`: the bundle's ``training_log.csv`` (losses on the left, other metrics on the right);
* :func:`roc_figure`: the ROC curve of a binary classifier with its AUC.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib.io.atomic import atomic_path

TRUTH_COLOR = "#33cc55"
PREDICTION_COLOR = "#ff3b30"


@dataclass(frozen=True)
class MontageCase:
    """One panel of the montage: an axial slice ``(j, i)`` with its truth and prediction, and the in-plane spacing.

    Attributes:
        case_id: Shown as the panel title.
        score: Shown under the title (e.g. mean Dice).
        image: ``(j, i)`` intensities.
        truth: ``(j, i)`` label values.
        prediction: ``(j, i)`` label values.
        spacing_ji: Row and column spacing in mm (for the aspect ratio).
        slice_index: k index of the slice in the input.
    """

    case_id: str
    score: float
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    spacing_ji: tuple[float, float]
    slice_index: int


def pick_slice(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
               case_id: str, score: float) -> MontageCase:
    """The axial slice (along k) with the most truth voxels (else the most predicted, else the middle one).

    Args:
        image: ``(k, j, i)`` or ``(k, j, i, C)`` intensities (channel 0 is shown).
        truth: ``(k, j, i)`` labels.
        prediction: ``(k, j, i)`` labels.
        spacing: ``(i, j, k)`` mm.
    """
    image = np.asarray(image)
    if image.ndim == 4:
        image = image[..., 0]
    area = (np.asarray(truth) > 0).sum(axis=(1, 2))
    if not area.any():
        area = (np.asarray(prediction) > 0).sum(axis=(1, 2))
    k = int(np.argmax(area)) if area.any() else image.shape[0] // 2
    return MontageCase(case_id, float(score), image[k].astype(np.float32), np.asarray(truth)[k],
                       np.asarray(prediction)[k], (float(spacing[1]), float(spacing[0])), k)


def _save(figure: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    return path


def _draw_contours(axis: Any, labels: np.ndarray, color: str, spacing_ji: tuple[float, float]) -> None:
    """Contours of each label at voxel centres in mm (row j downwards, column i to the right)."""
    rows, cols = labels.shape
    y = (np.arange(rows) + 0.5) * spacing_ji[0]
    x = (np.arange(cols) + 0.5) * spacing_ji[1]
    for value in [v for v in np.unique(labels) if v != 0]:
        mask = np.pad((labels == value).astype(np.float32), 1)  # closed contours at the image border
        if mask.any():
            xp = np.r_[x[0] - spacing_ji[1], x, x[-1] + spacing_ji[1]]
            yp = np.r_[y[0] - spacing_ji[0], y, y[-1] + spacing_ji[0]]
            axis.contour(xp, yp, mask, levels=[0.5], colors=[color], linewidths=1.2)


def overlay_montage(best: Sequence[MontageCase], worst: Sequence[MontageCase], path: Path,
                    title: str = "Best and worst cases") -> Path:
    """Two rows (best, worst) of image + truth (green) + prediction (red) contour panels; returns ``path``."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = [("best", list(best)), ("worst", list(worst))]
    rows = [(name, cases) for name, cases in rows if cases]
    columns = max((len(cases) for _, cases in rows), default=1)
    figure = Figure(figsize=(2.6 * columns, 2.9 * max(len(rows), 1) + 0.6))
    figure.suptitle(title)
    for r, (name, cases) in enumerate(rows):
        for c in range(columns):
            axis = figure.add_subplot(len(rows), columns, r * columns + c + 1)
            axis.set_xticks([])
            axis.set_yticks([])
            if c >= len(cases):
                axis.set_axis_off()
                continue
            case = cases[c]
            height = case.image.shape[0] * case.spacing_ji[0]
            width = case.image.shape[1] * case.spacing_ji[1]
            extent = (0.0, width, height, 0.0)
            low, high = np.percentile(case.image, (1, 99)) if case.image.size else (0, 1)
            axis.imshow(case.image, cmap="gray", vmin=low, vmax=high if high > low else low + 1, extent=extent,
                        interpolation="nearest")
            _draw_contours(axis, case.truth, TRUTH_COLOR, case.spacing_ji)
            _draw_contours(axis, case.prediction, PREDICTION_COLOR, case.spacing_ji)
            axis.set_xlim(0, width)
            axis.set_ylim(height, 0)
            score = "n/a" if not math.isfinite(case.score) else f"{case.score:.3f}"
            axis.set_title(f"{case.case_id}\nDice {score}, slice {case.slice_index}", fontsize=8)
            if c == 0:
                axis.set_ylabel(name)
    figure.legend(handles=[Line2D([], [], color=TRUTH_COLOR, label="truth"),
                           Line2D([], [], color=PREDICTION_COLOR, label="prediction")],
                  loc="lower center", ncol=2, fontsize=8, frameon=False)
    return _save(figure, path)


def read_training_log(path: Path) -> dict[str, list[float]]:
    """Columns of a ``training_log.csv`` (one row per epoch) as float lists; empty cells become nan."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                number = float(value) if value not in ("", None) else float("nan")
            except ValueError:
                number = float("nan")
            columns.setdefault(key, []).append(number)
    return columns


def training_curves(log_path: Path, path: Path, title: str = "Training") -> Path:
    """Losses (left) and other metrics (right) per epoch from a training log CSV."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    columns = read_training_log(log_path)
    epochs = columns.pop("epoch", None)
    if not columns:
        raise ValueError(f"expected metric columns in {Path(log_path).name}, found none")
    n = len(next(iter(columns.values())))
    x = epochs if epochs is not None else list(range(n))
    losses = {k: v for k, v in columns.items() if "loss" in k.lower()}
    others = {k: v for k, v in columns.items() if k not in losses and k.lower() not in ("lr", "learning_rate", "time_s")}
    figure = Figure(figsize=(10 if others else 5.5, 4))
    figure.suptitle(title)
    panels = [("loss", losses)] + ([("metric", others)] if others else [])
    for index, (name, series) in enumerate(panels, start=1):
        axis = figure.add_subplot(1, len(panels), index)
        for key, values in series.items():
            axis.plot(x, values, marker="o" if n < 30 else None, markersize=3, label=key)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        if series:
            axis.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: Path, title: str = "ROC curve",
               ci: tuple[float, float] | None = None) -> Path:
    """The ROC curve with the chance diagonal; the legend gives the AUC (and its CI when given)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.8, 4.8))
    axis = figure.add_subplot(1, 1, 1)
    label = f"AUC {auc:.3f}" if math.isfinite(auc) else "AUC n/a"
    if ci is not None and all(math.isfinite(v) for v in ci):
        label += f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})"
    axis.plot(fpr, tpr, drawstyle="steps-post", color="#1f5fbf", label=label)
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.01)
    axis.set_xlabel("1 - specificity (false-positive rate)")
    axis.set_ylabel("sensitivity (true-positive rate)")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    axis.set_aspect("equal")
    figure.tight_layout()
    return _save(figure, path)
