"""The figure module: colour-blind-safe label colours, label names in legends, slice positions in mm with patient
direction letters, and one module for the demo and the evaluation."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from MedAnalysisLib.evaluation import figures
from MedAnalysisLib.volume import Volume

PNG = b"\x89PNG\r\n\x1a\n"
#: The Slicer-style colours bundles get by default: red-brown organ, green vessel, tan lesion.
DEFAULT_BUNDLE_COLORS = {1: ("organ", (216, 101, 79)), 2: ("vessel", (128, 174, 128)), 3: ("lesion", (241, 214, 145))}


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The matplotlib figures the module saves, kept for inspection."""
    kept: list[Any] = []
    save = figures._save

    def keep(figure: Any, path: Path) -> Path:
        kept.append(figure)
        return save(figure, path)

    monkeypatch.setattr(figures, "_save", keep)
    return kept


def texts(figure: Any) -> list[str]:
    return [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]


def test_red_and_green_are_not_told_apart_with_deuteranopia() -> None:
    """The colour model: pure red and green are far apart with normal vision and close for a deuteranope."""
    assert figures.color_distance((255, 0, 0), (0, 200, 0)) > 80
    assert figures.color_distance((255, 0, 0), (0, 200, 0), "deuteranopia") < 30
    assert figures.color_distance((255, 255, 255), (255, 255, 255), "protanopia") == pytest.approx(0, abs=1e-6)


def test_label_colours_come_from_the_bundle_only_when_colour_blind_safe() -> None:
    styles = figures.label_styles(DEFAULT_BUNDLE_COLORS)
    assert [s.name for s in styles.values()] == ["organ", "vessel", "lesion"]
    assert [s.color for s in styles.values()] == list(figures.OKABE_ITO[:3])  # red-brown vs green fails: replaced
    safe = {1: ("liver", (230, 159, 0)), 2: ("spleen", (0, 114, 178))}  # orange and blue
    assert [s.color for s in figures.label_styles(safe).values()] == ["#E69F00", "#0072B2"]
    assert figures.colors_distinguishable([figures._rgb(c) for c in figures.OKABE_ITO[:3]])
    assert not figures.colors_distinguishable([c for _, c in DEFAULT_BUNDLE_COLORS.values()])


def phantom_slices(direction: np.ndarray, origin: tuple[float, float, float]) -> tuple[Volume, np.ndarray, np.ndarray]:
    image = Volume(np.random.default_rng(0).normal(size=(6, 20, 24)).astype(np.float32), spacing=(0.8, 1.0, 2.5),
                   origin=origin, direction=direction)
    truth = np.zeros((6, 20, 24), np.uint8)
    truth[2:5, 4:12, 5:15] = 1
    truth[3, 14:17, 16:20] = 2
    prediction = np.roll(truth, 1, axis=2)
    return image, truth, prediction


def test_montage_draws_each_label_in_its_colour_truth_solid_prediction_dashed(tmp_path: Path,
                                                                              drawn: list[Any]) -> None:
    image, truth, prediction = phantom_slices(np.eye(3), (-5.0, 10.0, 2.0))
    styles = figures.label_styles(DEFAULT_BUNDLE_COLORS)
    panel = figures.pick_slice(image, truth, prediction, "case_1", 0.7, {"organ": 0.8, "vessel": 0.6})
    path = figures.overlay_montage([panel], [panel], tmp_path / "montage.png", styles, title="t")
    assert path.read_bytes()[:8] == PNG
    figure = drawn[-1]
    contours = [c for ax in figure.axes for c in ax.collections if c.__class__.__name__ == "QuadContourSet"]
    colours = {tuple(np.round(c.get_edgecolor()[0][:3], 3)) for c in contours}
    expected = {tuple(np.round(np.array(figures._rgb(styles[v].color)) / 255, 3)) for v in (1, 2)}
    assert colours == expected  # one colour per label, not one red/green pair for truth and prediction
    dashed = {c.get_linestyle()[0][1] is not None for c in contours}
    assert dashed == {True, False}  # truth solid, prediction dashed, in the same label colours
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["organ", "vessel", "truth (solid)", "prediction (dashed)"]


def test_slice_position_in_mm_with_patient_letters() -> None:
    """Axial, LPS identity: k=3 of origin z 2.0 mm with 2.5 mm slices lies at S 9.5 mm; i points to L, j to P, so
    the left edge is R and the bottom edge is P (the radiological view). The hippocampus data (direction
    diag(-1, -1, 1)) is drawn mirrored: R on the right, A at the bottom. A sagittal stack (k along L) is
    positioned on Slicer's R axis: LPS x = 10 mm is R -10 mm."""
    image, truth, prediction = phantom_slices(np.eye(3), (-5.0, 10.0, 2.0))
    panel = figures._slice_case(image, truth, prediction, 3, "case", 0.5, None)
    assert panel.position == "S 9.5 mm" and panel.edges == ("R", "L", "A", "P")
    flipped, *_ = phantom_slices(np.diag([-1.0, -1.0, 1.0]), (0.0, 0.0, -4.0))
    panel = figures._slice_case(flipped, truth, prediction, 0, "case", 0.5, None)
    assert panel.position == "S -4.0 mm" and panel.edges == ("L", "R", "P", "A")
    sagittal = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # i -> P, j -> S, k -> L
    letter, positions = figures.slice_positions(sagittal, (10.0, 0.0, 0.0), (1.0, 1.0, 2.0), (4, 8, 8))
    assert letter == "R" and positions.tolist() == [-10.0, -12.0, -14.0, -16.0]
    assert "k=3, S 9.5 mm" in figures._panel_title(figures._slice_case(image, truth, prediction, 3, "c", 0.5, None))


def test_training_curve_legends_name_the_labels(tmp_path: Path, drawn: list[Any]) -> None:
    log = {"epoch": [1, 2, 3], "loss": [1.0, 0.8, 0.6], "val_loss": [1.1, 0.9, 0.7], "dice_1": [0.2, 0.4, 0.6],
           "val_dice_1": [0.1, 0.3, 0.5], "val_dice_2": [0.0, 0.2, 0.4], "val_mean_dice": [0.05, 0.25, 0.45],
           "learning_rate": [1e-3, 1e-3, 1e-4]}
    figures.training_curves({"segmentation": log, "classifier": {"loss": [0.7, 0.5], "val_slices_auc": [0.6, 0.8]}},
                            tmp_path / "curves.png", label_names={"segmentation": {1: "organ", 2: "vessel"}})
    legends = [t for ax in drawn[-1].axes if ax.get_legend() for t in
               [x.get_text() for x in ax.get_legend().get_texts()]]
    assert "Dice organ (validation)" in legends and "Dice vessel (validation)" in legends
    assert "mean Dice (validation)" in legends and "AUC per slice (validation)" in legends
    assert not [t for t in legends if re.search(r"dice_\d|val_", t)]
    assert figures.metric_label("dice_3") == "Dice label 3 (training)"
    with pytest.raises(ValueError, match="expected loss or metric columns with numbers"):
        figures.training_curves({"broken": {"epoch": [1.0], "loss": [float("nan")]}}, tmp_path / "x.png")


def test_slice_probabilities_on_a_mm_axis(tmp_path: Path, drawn: list[Any]) -> None:
    positions = figures.slice_positions(np.eye(3), (0.0, 0.0, -10.0), (1.0, 1.0, 5.0), (5, 4, 4))
    figures.slice_probabilities([0.1, 0.2, 0.9, 0.8, 0.1], [0, 0, 1, 1, 0], tmp_path / "p.png", class_name="lesion",
                                scan_probability=0.9, positions=positions, title="scan")
    axis = drawn[-1].axes[0]
    assert axis.get_xlabel() == "slice position, RAS S (mm)"
    assert axis.get_xlim()[0] < -10 and axis.get_xlim()[1] > 10
    assert "P(lesion) = 0.90" in axis.get_title()


def test_the_demo_draws_with_the_evaluation_figure_module() -> None:
    """One figure module: the demo has no plotting code of its own."""
    from MedAnalysisLib import demo

    source = inspect.getsource(demo)
    assert "matplotlib" not in source and "figures.overlay_slices(" in source
    assert "figures.training_curves(" in source and "figures.slice_probabilities(" in source
