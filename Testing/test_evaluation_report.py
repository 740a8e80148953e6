"""Evaluation end to end: a trained tiny bundle on a small MSD-layout dataset; CSV, summary, figures; the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers_inference import cube_volume, shared_cube_bundle

from MedAnalysisLib.evaluation import figures, metrics
from MedAnalysisLib.evaluation.report import EvaluationOptions, evaluate_bundle
from MedAnalysisLib.io import write_volume
from MedAnalysisLib.volume import Volume, rotation_about_axis

PNG = b"\x89PNG\r\n\x1a\n"


def write_msd(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    direction = rotation_about_axis("z", 15.0)
    for m in range(n):
        image, label = cube_volume((14, 20, 22), rng)
        geometry = {"spacing": (1.2, 1.4, 2.0), "origin": (5.0, -3.0, 2.0), "direction": direction}
        write_volume(Volume(image, **geometry), root / "imagesTr" / f"cube_{m:03d}.nii.gz")
        write_volume(Volume(label, **geometry), root / "labelsTr" / f"cube_{m:03d}.nii.gz")
        training.append({"image": f"./imagesTr/cube_{m:03d}.nii.gz", "label": f"./labelsTr/cube_{m:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "cubes", "modality": {"0": "MR"}, "labels": {"0": "background", "1": "cube"}, "training": training,
    }))
    return root


def test_segmentation_report_with_figures(tmp_path: Path) -> None:
    data = write_msd(tmp_path / "cubes", 5)
    out = tmp_path / "report"
    result = evaluate_bundle(shared_cube_bundle(), data, out, EvaluationOptions(bootstrap=200))
    assert result["cases"] == 5 and result["failed"] == 0
    with open(out / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case_id"] for r in rows] == [f"cube_{m:03d}" for m in range(5)]
    assert {"dice_cube", "hd95_mm_cube", "volume_ml_pred_cube", "volume_ml_true_cube", "volume_diff_ml_cube"} <= set(rows[0])
    dice = np.array([float(r["dice_cube"]) for r in rows])
    assert dice.mean() > 0.6
    summary = json.loads((out / "summary.json").read_text())
    stats = summary["metrics"]["dice_cube"]
    assert stats["mean"] == pytest.approx(dice.mean(), rel=1e-6)
    assert stats["ci_low"] <= stats["mean"] <= stats["ci_high"] and stats["n"] == 5
    assert summary["bundle"]["name"] == "cube-finder" and len(summary["bundle"]["weights_sha256"]) == 64
    for name in ("montage.png", "training_curves.png"):
        assert (out / name).read_bytes()[:8] == PNG and (out / name).stat().st_size > 5000
    assert summary["files"]["montage"] == "montage.png"


def test_cli_evaluate_shard_and_max_cases(tmp_path: Path) -> None:
    from MedAnalysisLib.cli import main

    data = write_msd(tmp_path / "cubes", 4, seed=1)
    out = tmp_path / "report"
    code = main(["evaluate", str(shared_cube_bundle()), str(data), "--out", str(out), "--shard", "2/2",
                 "--bootstrap", "50", "--no-figures", "--postprocess", "largest-component", "--progress", "none"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inference"] == {"overlap": 0.5, "tta": False, "postprocess": ["largest_component"]}
    with open(out / "per_case.csv", newline="") as handle:
        assert [r["case_id"] for r in csv.DictReader(handle)] == ["cube_001", "cube_003"]
    assert not (out / "montage.png").exists()


def test_roc_and_montage_figures_draw(tmp_path: Path) -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0, 1, 0])
    s = np.array([0.1, 0.3, 0.8, 0.6, 0.4, 0.9, 0.35, 0.2, 0.7, 0.5])
    fpr, tpr, _ = metrics.roc_curve(y, s)
    path = figures.roc_figure(fpr, tpr, metrics.roc_auc(y, s), tmp_path / "roc.png", ci=(0.6, 0.95))
    assert path.read_bytes()[:8] == PNG
    truth = np.zeros((4, 10, 12), np.uint8)
    truth[1:3, 2:7, 3:9] = 1
    panel = figures.pick_slice(np.random.default_rng(0).normal(size=(4, 10, 12)), truth, np.roll(truth, 1, axis=2),
                               (0.5, 1.0, 3.0), "case", 0.8)
    assert panel.slice_index in (1, 2) and panel.spacing_ji == (1.0, 0.5)
    assert figures.overlay_montage([panel], [], tmp_path / "m.png").read_bytes()[:8] == PNG
    log = tmp_path / "training_log.csv"
    log.write_text("epoch,loss,val_loss,val_dice\n0,1.0,1.1,0.2\n1,0.5,0.7,0.6\n")
    assert figures.read_training_log(log)["val_dice"] == [0.2, 0.6]
    assert figures.training_curves(log, tmp_path / "t.png").read_bytes()[:8] == PNG
