"""The demo: configuration, summary and figure helpers, and one real ``medanalysis demo --quick`` run."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers_demo import quick_demo

from MedAnalysisLib.cli import build_parser
from MedAnalysisLib.demo import DemoConfig, DemoSummary
from MedAnalysisLib.evaluation.figures import (
    choose_slices,
    label_styles,
    overlay_slices,
    slice_positions,
    slice_probabilities,
    training_curves,
)
from MedAnalysisLib.phantom import make_phantom

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_cli_parses_demo_options() -> None:
    args = build_parser().parse_args(["demo", "--quick", "--out", "somewhere", "--seed", "3", "--cases", "12"])
    assert args.quick and args.out == Path("somewhere") and args.seed == 3 and args.cases == 12
    defaults = build_parser().parse_args(["demo"])
    assert not defaults.quick and defaults.out == Path("demo-output") and defaults.cases is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--cases", "0"])


def test_config_presets_and_case_split() -> None:
    full, quick = DemoConfig.full(), DemoConfig.quick()
    assert quick.is_quick and not full.is_quick
    assert quick.n_train < full.n_train and quick.segmentation_epochs < full.segmentation_epochs
    assert np.prod(quick.shape) < np.prod(full.shape)
    split = full.with_cases(20)
    assert (split.n_train, split.n_test) == (16, 4)
    assert DemoConfig.quick().with_cases(5).n_test == 2
    with pytest.raises(ValueError, match="expected at least 2"):
        full.with_cases(3)
    with pytest.raises(ValueError, match="expected at least one epoch"):
        full.replace(segmentation_epochs=0)


def test_summary_text_names_figures_and_files() -> None:
    summary = DemoSummary(
        dice=0.9312, dice_per_label={"organ": 0.97, "vessel": 0.9, "lesion": float("nan")}, auc=None,
        slice_auc=0.98765, accuracy=0.75,
        n_train=6, n_test=2, elapsed_s=75.0, stage_seconds={"plan": 1.0}, files={"label map": "out/x.nii.gz"},
    )
    text = summary.format_text()
    assert "Dice: 0.931" in text and "lesion n/a" in text and "AUC: n/a" in text and "accuracy: 0.750" in text
    assert "per-slice AUC: 0.988" in text
    assert "out/x.nii.gz" in text and "1m15s" in text
    assert json.loads(json.dumps(summary.to_dict(), default=str))["n_train"] == 6


def test_choose_slices_prefers_foreground() -> None:
    truth = np.zeros((20, 8, 8), np.uint8)
    truth[5:9, 2:5, 2:5] = 1
    truth[7, :, :] = 2
    slices = choose_slices(truth)
    assert 7 in slices and all(5 <= k <= 8 for k in slices) and len(slices) == 3
    assert len(choose_slices(np.zeros((10, 4, 4)))) == 3


def test_figures_are_written_as_png(tmp_path) -> None:
    image, label, info = make_phantom(0, shape=(16, 24, 24), lesion=True)
    moved = np.roll(label.array, 1, axis=2)
    colors = {1: ("organ", (216, 101, 79)), 2: ("vessel", (128, 174, 128)), 3: ("lesion", (241, 214, 145))}
    paths = [
        overlay_slices(image, label.array, moved, tmp_path / "overlay.png", label_styles(colors), title="t",
                       label_scores={"organ": 0.9}),
        training_curves(
            {"a": {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "val_dice_1": [0.3, 0.6]}, "b": {"loss": [0.7]}},
            tmp_path / "curves.png", label_names={"a": {1: "organ"}},
        ),
        slice_probabilities(
            list(np.linspace(0, 1, 16)), info["slice_target"], tmp_path / "slices.png", class_name="lesion",
            scan_probability=0.8, positions=slice_positions(image.direction, image.origin, image.spacing, (16, 24, 24)),
        ),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    assert not list(tmp_path.glob("*.partial*"))


def test_read_training_log(tmp_path) -> None:
    # The demo's figures read the bundle's log with the evaluation module's reader (one reader for both).
    from MedAnalysisLib.evaluation.figures import read_training_log

    log = tmp_path / "training_log.csv"
    log.write_text("epoch,loss,val_loss\n0,1.5,1.6\n1,0.9,\n")
    columns = read_training_log(log)
    assert columns["loss"] == [1.5, 0.9] and columns["val_loss"][0] == 1.6 and math.isnan(columns["val_loss"][1])
    with pytest.raises(FileNotFoundError):
        read_training_log(tmp_path / "missing.csv")


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = quick_demo(tmp_path_factory.getbasetemp() / "quick-demo")
    assert run.returncode == 0, f"medanalysis demo --quick failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    match = re.search(r"held-out Dice: (\S+)", run.stdout)
    assert match, f"expected the summary to print the Dice, got:\n{run.stdout}"
    dice = float(match.group(1))
    assert math.isfinite(dice) and 0.0 <= dice <= 1.0
    assert re.search(r"scan AUC: ([0-9.]+|n/a), accuracy: ([0-9.]+|n/a); per-slice AUC: ([0-9.]+|n/a)", run.stdout)
    out = run.out
    for relative in (
        "summary.json", "summary.txt", "plan.json", "fingerprint.json",
        "data/train/dataset.json", "data/test/classification.csv",
        "bundles/segmentation/bundle.json", "bundles/segmentation/model.weights.h5",
        "bundles/classification/bundle.json", "bundles/classification/model.weights.h5",
        "data/dicom/phantom_000/slice_000.dcm",
        "prediction/phantom_000_label.nii.gz", "prediction/phantom_000.seg.nrrd", "prediction/phantom_000_seg.dcm",
        "prediction/phantom_000_table.csv", "prediction/phantom_000.json",
        "prediction/phantom_000_lesion_table.csv", "prediction/phantom_000_lesion_slices.csv",
        "figures/overlay.png", "figures/training_curves.png", "figures/slice_probabilities.png",
    ):
        assert (out / relative).is_file(), f"expected {relative} in the demo output"
    for figure in (out / "figures").glob("*.png"):
        assert figure.read_bytes()[:8] == PNG_MAGIC
    assert list((out / "evaluation" / "segmentation").glob("*.csv"))
    assert list((out / "evaluation" / "classification").glob("*.csv"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dice"] == pytest.approx(dice, abs=5e-4) and summary["quick"] is True
    assert all(Path(run.workdir / p).exists() or Path(p).exists() for p in summary["files"].values())
    # The label map sits exactly on the segmented scan's grid (oblique, anisotropic).
    label = sitk.ReadImage(str(out / "prediction/phantom_000_label.nii.gz"))
    image = sitk.ReadImage(str(out / "data/test/imagesTr/phantom_000.nii.gz"))
    assert label.GetSize() == image.GetSize()
    assert np.allclose(label.GetSpacing(), image.GetSpacing()) and np.allclose(label.GetOrigin(), image.GetOrigin())
    assert np.allclose(label.GetDirection(), image.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(label))) <= {0, 1, 2, 3}
    # The Dice is the model's, not any number in [0, 1]: recomputed here from the label map the demo wrote and the
    # phantom's truth, it matches the evaluation's row for that scan, the printed mean is the mean of the per-label
    # means of per_case.csv, and the organ is found far better than by calling the whole phantom organ (a model that
    # did not learn, or scores the wrong labels, reaches neither).
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "data/test/labelsTr/phantom_000.nii.gz")))
    predicted = sitk.GetArrayFromImage(label)
    with open(out / "evaluation/segmentation/per_case.csv", newline="") as handle:
        per_case = list(csv.DictReader(handle))
    row = next(r for r in per_case if r["case_id"] == "phantom_000")
    for value, name in ((1, "organ"), (2, "vessel"), (3, "lesion")):
        both = int(np.sum((truth == value) & (predicted == value)))
        total = int(np.sum(truth == value) + np.sum(predicted == value))
        if total:
            assert float(row[f"dice_{name}"]) == pytest.approx(2 * both / total, abs=0.01)
    label_means = []
    for name in ("organ", "vessel", "lesion"):
        values = [float(r[f"dice_{name}"]) for r in per_case if r[f"dice_{name}"] not in ("", "nan")]
        if values:
            label_means.append(np.mean(values))
    assert dice == pytest.approx(np.mean(label_means), abs=5e-4)
    organ = summary["dice_per_label"]["organ"]
    intensities = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "data/test/imagesTr/phantom_000.nii.gz")))
    body = intensities > intensities.mean()  # the phantom without its dark background
    everything_organ = 2 * np.sum(truth == 1) / (np.sum(truth == 1) + np.sum(body))
    assert organ >= 0.45 and organ > everything_organ + 0.2, (organ, everything_organ)
    # Tables: label volumes with names, and one lesion probability per slice of the scan.
    with open(out / "prediction/phantom_000_table.csv", newline="") as handle:
        assert {row["name"] for row in csv.DictReader(handle)} == {"organ", "vessel", "lesion"}
    with open(out / "prediction/phantom_000_lesion_slices.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == image.GetSize()[2] and all(0.0 <= float(row["p_lesion"]) <= 1.0 for row in rows)
