"""Every PNG figure MedAnalysis draws (evaluation reports and the demo), with matplotlib's Agg canvas (no display,
no global pyplot state).

* :func:`overlay_montage`: the best and worst cases of an evaluation, each as the axial slice with the most truth;
* :func:`overlay_slices`: several slices of one case (the demo's ``overlay.png``);
* :func:`training_curves`: losses and validation Dice/AUC per epoch of one or more trained models;
* :func:`slice_probabilities`: a slice classifier's probability along the scan, with the true slices shaded;
* :func:`roc_figure`: the ROC curve of a binary classifier with its AUC.

Conventions shared by all of them:

* **Label colours** come from the bundle (the colours Slicer shows) when they stay apart for viewers with the common
  colour-vision deficiencies; otherwise the Okabe-Ito palette is used in label order (:func:`label_styles`). Truth
  and prediction are told apart by line style, never by hue: truth solid, prediction dashed, in the label's colour.
* **Label names** everywhere: legends name labels, and training metrics such as ``val_dice_1`` read
  ``Dice organ (validation)`` (:func:`metric_label`).
* **Geometry**: slices are drawn in millimetres (the in-plane spacing sets the aspect), with the patient direction
  letters at the image edges, a 10 mm scale bar where it fits, and the slice position as Slicer shows it (the RAS
  coordinate along the slice normal, e.g. ``S -12.5 mm``) besides its index ``k``.
* **Text is text**: names come from bundles and data (label names, case IDs, training-log columns). Every figure is
  drawn with matplotlib's math parsing and TeX rendering off (:func:`_plain_text`), so ``$...$`` in a name is shown
  as written, never parsed (a malformed formula would fail the whole report; TeX would run LaTeX on it), and
  control characters in names are shown as escapes (:func:`~MedAnalysisLib.sanitize.terminal_field`).
"""

from __future__ import annotations

import csv
import functools
import itertools
import math
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from MedAnalysisLib.io.atomic import atomic_path
from MedAnalysisLib.sanitize import terminal_field

#: The longest name drawn on a figure (a longer one ends with how many characters were left out).
NAME_LIMIT = 60

_Drawing = TypeVar("_Drawing", bound=Callable[..., Any])


def _plain_text(draw: _Drawing) -> _Drawing:
    """Run ``draw`` with matplotlib's math parsing and TeX off, whatever the user's matplotlibrc says, so that
    every text of the figure is drawn as written (see the module docstring)."""

    @functools.wraps(draw)
    def plain(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return draw(*args, **kwargs)

    return plain  # type: ignore[return-value]


def _name(value: Any) -> str:
    """A name from a bundle or the data, drawn on one line with its control characters shown as escapes."""
    return terminal_field(value, NAME_LIMIT)

#: Okabe & Ito's colour-blind-safe palette (black left out: it vanishes on dark image background), in the order used.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")

#: Colour-vision deficiency simulation: Machado, Oliveira & Fernandes (2009), severity 1.0, on linear RGB.
CVD_MATRICES = {
    "protanopia": ((0.152286, 1.052583, -0.204868), (0.114503, 0.786281, 0.099216), (-0.003882, -0.048116, 1.051998)),
    "deuteranopia": ((0.367322, 0.860646, -0.227968), (0.280085, 0.672501, 0.047413), (-0.011820, 0.042940, 0.968881)),
}
#: Smallest CIELAB distance (Delta E 1976) two label colours must keep, with normal vision and under each simulated
#: deficiency, for the bundle's colours to be used; the Slicer-style defaults (red-brown, green, tan) reach only 18.
MIN_COLOR_DISTANCE = 30.0

TRUTH_STYLE = "solid"
PREDICTION_STYLE = (0, (3.0, 2.0))  # dashed
LINE_WIDTH = 1.8
TEXT_OUTLINE = "#000000"


# ------------------------------------------------------------------------------------------------ colours
@dataclass(frozen=True)
class LabelStyle:
    """How one label is drawn: its name and a matplotlib colour."""

    name: str
    color: str


def _hex(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(c):02X}" for c in rgb)


def _rgb(color: str) -> tuple[int, int, int]:
    text = color.lstrip("#")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def _lab(rgb: Sequence[int], deficiency: str | None = None) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour (0-255), optionally as seen with a simulated deficiency."""
    srgb = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    if deficiency is not None:
        linear = np.clip(np.asarray(CVD_MATRICES[deficiency]) @ linear, 0.0, 1.0)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def color_distance(a: Sequence[int], b: Sequence[int], deficiency: str | None = None) -> float:
    """CIELAB Delta E (1976) between two sRGB colours (0-255), optionally under a simulated deficiency
    (``"protanopia"`` or ``"deuteranopia"``)."""
    return float(np.linalg.norm(_lab(a, deficiency) - _lab(b, deficiency)))


def colors_distinguishable(colors: Sequence[Sequence[int]], minimum: float = MIN_COLOR_DISTANCE) -> bool:
    """Whether every pair of colours stays at least ``minimum`` apart (Delta E) with normal vision, protanopia and
    deuteranopia."""
    return all(color_distance(a, b, deficiency) >= minimum
               for a, b in itertools.combinations(colors, 2) for deficiency in (None, *CVD_MATRICES))


def label_styles(labels: Any) -> dict[int, LabelStyle]:
    """Name and colour of each foreground label, for every figure.

    Args:
        labels: The bundle's labels: :class:`~MedAnalysisLib.bundles.LabelInfo` objects, or a mapping value ->
            ``(name, (r, g, b))``.

    Returns:
        Label value -> :class:`LabelStyle`. The bundle's colours when they pass :func:`colors_distinguishable`,
        else the :data:`OKABE_ITO` colours in label order.
    """
    if isinstance(labels, Mapping):
        items = [(int(v), _name(n), tuple(c)) for v, (n, c) in labels.items()]
    else:
        items = [(int(info.value), _name(info.name), tuple(info.color)) for info in labels]
    items = sorted(item for item in items if item[0] != 0)
    colors = [item[2] for item in items]
    if colors_distinguishable(colors):
        return {value: LabelStyle(name, _hex(color)) for value, name, color in items}
    return {value: LabelStyle(name, OKABE_ITO[n % len(OKABE_ITO)]) for n, (value, name, _) in enumerate(items)}


# ------------------------------------------------------------------------------------------------ geometry
_RAS_OF_LPS = (("R", -1.0), ("A", -1.0), ("S", 1.0))  # RAS letter and sign of each LPS axis
_OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}


def slice_positions(direction: np.ndarray, origin: Sequence[float], spacing: Sequence[float],
                    shape_kji: Sequence[int]) -> tuple[str, np.ndarray]:
    """Where each k slice lies, as Slicer labels it: the RAS axis closest to the slice normal and the RAS
    coordinate (mm) of each slice centre along it.

    Args:
        direction: 3x3, columns are the i, j, k axis directions in LPS.
        origin: LPS position of voxel (0, 0, 0) in mm.
        spacing: ``(i, j, k)`` in mm.
        shape_kji: Array shape ``(k, j, i)``.

    Returns:
        ``("S", positions)`` for an axial stack, and so on.
    """
    direction = np.asarray(direction, np.float64)
    axis = int(np.argmax(np.abs(direction[:, 2])))
    letter, sign = _RAS_OF_LPS[axis]
    k = np.arange(int(shape_kji[0]), dtype=np.float64)
    centre = np.array([(int(shape_kji[2]) - 1) / 2.0, (int(shape_kji[1]) - 1) / 2.0])
    points = (np.asarray(origin, np.float64)[None, :]
              + direction[:, 0][None] * centre[0] * spacing[0]
              + direction[:, 1][None] * centre[1] * spacing[1]
              + direction[:, 2][None] * k[:, None] * spacing[2])
    return letter, sign * points[:, axis]


def edge_letters(direction: np.ndarray) -> tuple[str, str, str, str]:
    """Patient direction letters at the (left, right, top, bottom) edges of a ``(j, i)`` slice drawn with i to the
    right and j downwards (as :func:`overlay_montage` draws it)."""
    from MedAnalysisLib.volume import orientation_code

    code = orientation_code(np.asarray(direction, np.float64))
    return _OPPOSITE[code[0]], code[0], _OPPOSITE[code[1]], code[1]


# ------------------------------------------------------------------------------------------------ slice panels
@dataclass(frozen=True)
class MontageCase:
    """One panel: an axial slice ``(j, i)`` of a case with its truth and prediction, and what the panel says.

    Attributes:
        case_id: Shown as the panel title.
        score: Mean Dice over labels (ranks the cases; shown under the title).
        image: ``(j, i)`` intensities.
        truth: ``(j, i)`` label values, in the bundle's numbering.
        prediction: ``(j, i)`` label values.
        spacing_ji: Row and column spacing in mm (for the aspect ratio and the scale bar).
        slice_index: k index of the slice in the input.
        position: Slice position as Slicer shows it, e.g. ``"S -12.5 mm"`` (empty when unknown).
        edges: Patient direction letters at the left, right, top and bottom edges (empty when unknown).
        label_scores: Label name -> Dice of the case (shown under the title).
    """

    case_id: str
    score: float
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    spacing_ji: tuple[float, float]
    slice_index: int
    position: str = ""
    edges: tuple[str, str, str, str] = ("", "", "", "")
    label_scores: dict[str, float] = field(default_factory=dict)


def _slice_case(image: Any, truth: np.ndarray, prediction: np.ndarray, k: int, case_id: str, score: float,
                label_scores: Mapping[str, float] | None) -> MontageCase:
    """The panel of slice ``k``; ``image`` is a :class:`~MedAnalysisLib.volume.Volume` (geometry) or an array."""
    array = np.asarray(getattr(image, "array", image))
    if array.ndim == 4:
        array = array[..., 0]
    spacing = tuple(float(s) for s in getattr(image, "spacing", (1.0, 1.0, 1.0)))
    position, edges = "", ("", "", "", "")
    if hasattr(image, "direction"):
        letter, positions = slice_positions(image.direction, image.origin, spacing, array.shape)
        position = f"{letter} {positions[k]:.1f} mm"
        edges = edge_letters(image.direction)
    return MontageCase(_name(case_id), float(score), array[k].astype(np.float32), np.asarray(truth)[k],
                       np.asarray(prediction)[k], (spacing[1], spacing[0]), int(k), position, edges,
                       {_name(name): value for name, value in (label_scores or {}).items()})


def pick_slice(image: Any, truth: np.ndarray, prediction: np.ndarray, case_id: str, score: float,
               label_scores: Mapping[str, float] | None = None) -> MontageCase:
    """The axial slice (along k) with the most truth voxels (else the most predicted, else the middle one).

    Args:
        image: The case's image as a :class:`~MedAnalysisLib.volume.Volume` (for the slice position and direction
            letters), ``(k, j, i)`` or ``(k, j, i, C)`` (channel 0 is shown).
        truth: ``(k, j, i)`` labels in the bundle's numbering.
        prediction: ``(k, j, i)`` labels.
        case_id: Panel title.
        score: Mean Dice of the case.
        label_scores: Label name -> Dice of the case.
    """
    area = (np.asarray(truth) > 0).sum(axis=(1, 2))
    if not area.any():
        area = (np.asarray(prediction) > 0).sum(axis=(1, 2))
    k = int(np.argmax(area)) if area.any() else np.asarray(truth).shape[0] // 2
    return _slice_case(image, truth, prediction, k, case_id, score, label_scores)


def _save(figure: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    return path


def _outlined(artist: Any) -> Any:
    from matplotlib import patheffects

    artist.set_path_effects([patheffects.withStroke(linewidth=2.2, foreground=TEXT_OUTLINE)])
    return artist


def _draw_contours(axis: Any, labels: np.ndarray, styles: Mapping[int, LabelStyle], spacing_ji: tuple[float, float],
                   linestyle: Any) -> None:
    """Contours of each label at voxel centres in mm (row j downwards, column i to the right)."""
    rows, cols = labels.shape
    y = (np.arange(rows) + 0.5) * spacing_ji[0]
    x = (np.arange(cols) + 0.5) * spacing_ji[1]
    xp = np.r_[x[0] - spacing_ji[1], x, x[-1] + spacing_ji[1]]
    yp = np.r_[y[0] - spacing_ji[0], y, y[-1] + spacing_ji[0]]
    for value in [int(v) for v in np.unique(labels) if v != 0]:
        style = styles.get(value, LabelStyle(f"label {value}", "#FFFFFF"))
        mask = np.pad((labels == value).astype(np.float32), 1)  # closed contours at the image border
        # No dark outline: a solid outline under a dashed line would make it look solid.
        axis.contour(xp, yp, mask, levels=[0.5], colors=[style.color], linewidths=LINE_WIDTH,
                     linestyles=[linestyle])


def _scale_bar(axis: Any, width_mm: float, height_mm: float) -> None:
    """A white bar of 10 mm (or 5 or 2 mm on small images) at the bottom left, labelled."""
    length = next((v for v in (50.0, 20.0, 10.0, 5.0, 2.0, 1.0) if v <= width_mm / 4), None)
    if length is None:
        return
    x0, y0 = 0.05 * width_mm, 0.93 * height_mm
    axis.plot([x0, x0 + length], [y0, y0], color="white", linewidth=2.0, solid_capstyle="butt")
    _outlined(axis.text(x0 + length / 2, y0 - 0.02 * height_mm, f"{length:g} mm", color="white", fontsize=6,
                        ha="center", va="bottom"))


def _draw_panel(axis: Any, case: MontageCase, styles: Mapping[int, LabelStyle], *, contours: bool = True) -> None:
    """Grey image in mm with truth (solid) and prediction (dashed) contours, edge letters and a scale bar."""
    height = case.image.shape[0] * case.spacing_ji[0]
    width = case.image.shape[1] * case.spacing_ji[1]
    low, high = np.percentile(case.image, (1, 99)) if case.image.size else (0.0, 1.0)
    axis.imshow(case.image, cmap="gray", vmin=low, vmax=high if high > low else low + 1,
                extent=(0.0, width, height, 0.0), interpolation="nearest")
    if contours:
        _draw_contours(axis, case.truth, styles, case.spacing_ji, TRUTH_STYLE)
        _draw_contours(axis, case.prediction, styles, case.spacing_ji, PREDICTION_STYLE)
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)
    axis.set_xticks([])
    axis.set_yticks([])
    left, right, top, bottom = case.edges
    for text, x, y, ha, va in ((left, 0.02, 0.5, "left", "center"), (right, 0.98, 0.5, "right", "center"),
                               (top, 0.5, 0.98, "center", "top"), (bottom, 0.5, 0.02, "center", "bottom")):
        if text:
            _outlined(axis.text(x, y, text, transform=axis.transAxes, color="white", fontsize=7, ha=ha, va=va,
                                fontweight="bold"))
    _scale_bar(axis, width, height)


def _number(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _panel_title(case: MontageCase, *, with_case: bool = True) -> str:
    where = f"k={case.slice_index}" + (f", {case.position}" if case.position else "")
    lines = [case.case_id] if with_case else []
    if case.label_scores:
        per_label = ", ".join(f"{name} {_number(value)}" for name, value in case.label_scores.items())
        text = f"Dice {_number(case.score)} ({per_label})" if len(case.label_scores) > 1 else f"Dice {per_label}"
        lines += textwrap.wrap(text, width=40)
    elif math.isfinite(case.score):
        lines.append(f"Dice {_number(case.score)}")
    lines.append(where)
    return "\n".join(lines)


def _legend(figure: Any, styles: Mapping[int, LabelStyle], used: set[int]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=style.color, linewidth=4, label=style.name)
               for value, style in sorted(styles.items()) if value in used or not used]
    handles += [Line2D([], [], color="0.25", linestyle=TRUTH_STYLE, linewidth=LINE_WIDTH, label="truth (solid)"),
                Line2D([], [], color="0.25", linestyle=PREDICTION_STYLE, linewidth=LINE_WIDTH,
                       label="prediction (dashed)")]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)


@_plain_text
def overlay_montage(best: Sequence[MontageCase], worst: Sequence[MontageCase], path: Path,
                    styles: Mapping[int, LabelStyle] | None = None,
                    title: str = "Best and worst cases") -> Path:
    """Two rows (best, worst) of panels: image, truth contours (solid) and prediction contours (dashed) in each
    label's colour; returns ``path``.

    Args:
        best: Panels of the best cases (left to right).
        worst: Panels of the worst cases.
        path: PNG to write.
        styles: Label value -> :class:`LabelStyle` (see :func:`label_styles`); default: Okabe-Ito by value.
        title: Figure title.
    """
    from matplotlib.figure import Figure

    rows = [(name, list(cases)) for name, cases in (("best", best), ("worst", worst)) if cases]
    styles = dict(styles or _default_styles([*best, *worst]))
    columns = max((len(cases) for _, cases in rows), default=1)
    figure = Figure(figsize=(2.9 * columns, 3.2 * max(len(rows), 1) + 0.9))
    figure.suptitle(title, fontsize=10)
    used: set[int] = set()
    for r, (name, cases) in enumerate(rows):
        for c in range(columns):
            axis = figure.add_subplot(len(rows), columns, r * columns + c + 1)
            if c >= len(cases):
                axis.set_axis_off()
                continue
            case = cases[c]
            used |= {int(v) for v in np.unique(case.truth)} | {int(v) for v in np.unique(case.prediction)}
            _draw_panel(axis, case, styles)
            axis.set_title(_panel_title(case), fontsize=7)
            if c == 0:
                axis.set_ylabel(name)
    _legend(figure, styles, used - {0})
    figure.subplots_adjust(bottom=0.1, top=0.86, hspace=0.45, wspace=0.08)
    return _save(figure, path)


def _default_styles(cases: Sequence[MontageCase]) -> dict[int, LabelStyle]:
    values = sorted({int(v) for case in cases for v in (*np.unique(case.truth), *np.unique(case.prediction))} - {0})
    return {v: LabelStyle(f"label {v}", OKABE_ITO[n % len(OKABE_ITO)]) for n, v in enumerate(values)}


def choose_slices(truth: np.ndarray, count: int = 3) -> list[int]:
    """Axial (k) slices worth showing: the one with the most foreground and ones spread through the structures."""
    foreground = (np.asarray(truth) > 0).sum(axis=(1, 2))
    present = np.flatnonzero(foreground)
    if present.size == 0:
        return sorted({int(round(q * (truth.shape[0] - 1))) for q in np.linspace(0.25, 0.75, count)})
    chosen = [int(np.argmax(foreground))]
    # Then slices spread through the foreground, outer quantiles first, skipping ones already chosen.
    for q in (0.2, 0.8, 0.35, 0.65, 0.5, 0.1, 0.9, 0.0, 1.0):
        k = int(present[int(round(q * (present.size - 1)))])
        if len(chosen) < count and k not in chosen:
            chosen.append(k)
    for k in present:  # a structure only a few slices thick
        if len(chosen) < count and int(k) not in chosen:
            chosen.append(int(k))
    return sorted(chosen)


@_plain_text
def overlay_slices(image: Any, truth: np.ndarray, prediction: np.ndarray, path: Path,
                   styles: Mapping[int, LabelStyle], *, slices: Sequence[int] | None = None, title: str = "",
                   label_scores: Mapping[str, float] | None = None) -> Path:
    """Slices of one case: the image alone (top row) and with truth (solid) and prediction (dashed) contours.

    Args:
        image: The case's :class:`~MedAnalysisLib.volume.Volume` (``(k, j, i)``, LPS geometry).
        truth: ``(k, j, i)`` labels in the bundle's numbering.
        prediction: ``(k, j, i)`` labels.
        path: PNG to write.
        styles: Label value -> :class:`LabelStyle`.
        slices: k indices (default :func:`choose_slices`).
        title: Figure title.
        label_scores: Label name -> Dice of the case (shown in the title).
    """
    from matplotlib.figure import Figure

    truth, prediction = np.asarray(truth), np.asarray(prediction)
    chosen = list(slices) if slices else choose_slices(truth)
    figure = Figure(figsize=(3.0 * len(chosen), 6.9))
    heading = title
    if label_scores:
        heading += ("\n" if heading else "") + "Dice " + ", ".join(f"{_name(n)} {_number(v)}" for n, v in label_scores.items())
    if heading:
        figure.suptitle(heading, fontsize=10)
    axes = figure.subplots(2, len(chosen), squeeze=False)
    for column, k in enumerate(chosen):
        case = _slice_case(image, truth, prediction, k, "", float("nan"), None)
        _draw_panel(axes[0, column], case, styles, contours=False)
        axes[0, column].set_title(f"k={case.slice_index}" + (f", {case.position}" if case.position else ""),
                                  fontsize=8)
        _draw_panel(axes[1, column], case, styles)
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("truth and prediction")
    used = {int(v) for v in np.unique(truth)} | {int(v) for v in np.unique(prediction)}
    _legend(figure, styles, used - {0})
    figure.subplots_adjust(bottom=0.1, top=0.86, hspace=0.2, wspace=0.06)
    return _save(figure, path)


# ------------------------------------------------------------------------------------------------ training curves
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


#: Training-log columns that are not drawn (they are not metrics of the model).
_NOT_METRICS = ("epoch", "lr", "learning_rate", "time_s")
#: Metrics drawn beside the losses: Dice and AUC (others stay in the CSV log).
CURVE_METRICS = ("dice", "auc")


def metric_label(name: str, label_names: Mapping[int, str] | None = None) -> str:
    """A training-log column as a legend entry, with label names: ``val_dice_1`` -> ``Dice organ (validation)``,
    ``mean_dice`` -> ``mean Dice (training)``, ``val_slices_auc`` -> ``AUC per slice (validation)``."""
    label_names = label_names or {}
    validation = name.startswith("val_")
    base = name[4:] if validation else name
    words = []
    if base.startswith("slices_"):
        base, words = base[len("slices_"):], ["per slice"]
    elif base.startswith("scan_"):
        base, words = base[len("scan_"):], ["per scan"]
    match = re.fullmatch(r"dice_(\d+)", base)
    if match:
        value = int(match.group(1))
        text = f"Dice {_name(label_names.get(value, f'label {value}'))}"
    elif base == "mean_dice":
        text = "mean Dice"
    elif base == "auc":
        text = "AUC"
    else:
        text = _name(base.replace("_", " "))
    return " ".join([text, *words]) + (" (validation)" if validation else " (training)")


@_plain_text
def training_curves(histories: Mapping[str, Mapping[str, Sequence[float]]], path: Path, *,
                    label_names: Mapping[int, str] | Mapping[str, Mapping[int, str]] | None = None) -> Path:
    """One panel per trained model: training loss (solid) and validation loss (dashed) on the left axis, the Dice
    and AUC curves (validation ones when the log has them, else training ones) on the right axis, named by label.

    Args:
        histories: Model title -> column -> one value per epoch (Keras' ``History.history`` or
            :func:`read_training_log`; an ``epoch`` column, when present, is the x axis).
        path: PNG to write.
        label_names: Label value -> name for every model, or model title -> (label value -> name).

    Raises:
        ValueError: A history holds no loss and no metric.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(5.6 * max(len(histories), 1), 5.0), layout="constrained")
    axes = figure.subplots(1, max(len(histories), 1), squeeze=False)[0]
    for ax, (title, history) in zip(axes, histories.items(), strict=False):
        names = _names_for(title, label_names)
        columns = {k: list(v) for k, v in history.items()
                   if k.lower() not in _NOT_METRICS and np.isfinite(np.asarray(v, dtype=float)).any()}
        if not columns:
            raise ValueError(f"expected loss or metric columns with numbers in the training log of {title!r}, "
                             f"found none among {sorted(history)}")
        n = len(next(iter(columns.values())))
        epochs = list(history["epoch"]) if "epoch" in history else list(range(1, n + 1))
        losses = [k for k in columns if k.endswith("loss")]
        curves = [k for k in columns if k not in losses and any(w in k for w in CURVE_METRICS)]
        if any(k.startswith("val_") for k in curves):
            curves = [k for k in curves if k.startswith("val_")]
        # One colour per quantity (training solid, validation dashed); losses and scores draw on separate palettes.
        loss_colors = _colors_by_base(losses, ("0.15", OKABE_ITO[4], OKABE_ITO[5], OKABE_ITO[6]), first="loss")
        curve_colors = _colors_by_base(curves, (*OKABE_ITO[:3], OKABE_ITO[4], OKABE_ITO[5], OKABE_ITO[6]),
                                       first=None)
        marker = "o" if n < 15 else None
        for key in losses:
            ax.plot(epochs, columns[key], linestyle="--" if key.startswith("val_") else "-",
                    color=loss_colors[_base(key)], marker=marker, markersize=3, label=metric_label(key, names))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(_name(title), fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if curves:
            twin = ax.twinx()
            for key in curves:
                mean = _base(key) == "mean_dice"
                twin.plot(epochs, columns[key], color="0.45" if mean else curve_colors[_base(key)], linewidth=1.8,
                          linestyle=":" if mean else "--" if key.startswith("val_") else "-", marker=marker,
                          markersize=3, label=metric_label(key, names))
            twin.set_ylabel("Dice / AUC")
            twin.set_ylim(0, 1.02)
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if handles:
            ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
                      frameon=False)
    return _save(figure, path)


def _base(name: str) -> str:
    return name[4:] if name.startswith("val_") else name


def _colors_by_base(keys: Sequence[str], palette: Sequence[str], first: str | None) -> dict[str, str]:
    """One colour per metric whatever its split (``loss`` and ``val_loss`` share one); ``first`` gets palette[0]."""
    bases = list(dict.fromkeys(_base(k) for k in keys))
    if first in bases:
        bases.remove(first)
        bases.insert(0, first)
    elif first is not None:
        palette = palette[1:]
    return {base: palette[n % len(palette)] for n, base in enumerate(bases)}


def _names_for(title: str, label_names: Any) -> dict[int, str]:
    if not label_names:
        return {}
    if all(isinstance(k, int) for k in label_names):
        return dict(label_names)
    return dict(label_names.get(title, {}))


# ------------------------------------------------------------------------------------------------ classifiers
@_plain_text
def slice_probabilities(probabilities: Sequence[float], targets: Sequence[int], path: Path, *,
                        class_name: str = "class 1", scan_probability: float | None = None,
                        positions: tuple[str, Sequence[float]] | None = None, title: str = "") -> Path:
    """A slice classifier's probability along the scan, with the slices that truly hold the class shaded.

    Args:
        probabilities: P(class) per k slice.
        targets: 0/1 truth per k slice.
        path: PNG to write.
        class_name: The class, for the axis and legend.
        scan_probability: The whole-scan probability, shown in the title.
        positions: ``(letter, mm)`` from :func:`slice_positions`: the x axis is then the slice position in mm.
        title: Figure title.
    """
    class_name = _name(class_name)
    from matplotlib.figure import Figure

    p = np.asarray(probabilities, dtype=float)
    t = np.asarray(targets, dtype=int)
    if positions is not None:
        letter, where = positions[0], np.asarray(positions[1], dtype=float)
        x, xlabel = where, f"slice position, RAS {letter} (mm)"
        width = float(np.median(np.abs(np.diff(where)))) if len(where) > 1 else 1.0
    else:
        x, xlabel, width = np.arange(p.size, dtype=float), "slice index k", 1.0
    figure = Figure(figsize=(7.0, 3.4), layout="constrained")
    ax = figure.subplots()
    ax.bar(x, t, width=width, color=OKABE_ITO[1], alpha=0.35, label=f"slice holds {class_name} (truth)")
    ax.plot(x, p, color=OKABE_ITO[5], marker="o", markersize=3, label=f"predicted P({class_name})")
    ax.axhline(0.5, color="gray", linewidth=0.8, linestyle="--")
    if x.size:
        ax.set_xlim(float(x.min()) - width / 2, float(x.max()) + width / 2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("probability")
    heading = title
    if scan_probability is not None:
        heading = f"{title}\nwhole scan: P({class_name}) = {scan_probability:.2f}".strip()
    ax.set_title(heading, fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    return _save(figure, path)


@_plain_text
def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: Path, title: str = "ROC curve",
               ci: tuple[float, float] | None = None) -> Path:
    """The ROC curve with the chance diagonal; the legend gives the AUC (and its CI when given)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.8, 4.8))
    axis = figure.add_subplot(1, 1, 1)
    label = f"AUC {auc:.3f}" if math.isfinite(auc) else "AUC n/a"
    if ci is not None and all(math.isfinite(v) for v in ci):
        label += f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})"
    axis.plot(fpr, tpr, drawstyle="steps-post", color=OKABE_ITO[4], label=label)
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
