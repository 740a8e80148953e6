"""Evaluation end to end: a trained tiny bundle on a small MSD-layout dataset; CSV, summary, figures; the CLI;
labels matched by name or refused; intervals by patient; every dataset form."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers_inference import cube_volume, shared_cube_bundle, write_cube_msd

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.evaluation import figures, metrics
from MedAnalysisLib.evaluation.report import EvaluationOptions, evaluate_bundle
from MedAnalysisLib.io import write_volume
from MedAnalysisLib.volume import Volume, rotation_about_axis

PNG = b"\x89PNG\r\n\x1a\n"


def write_msd(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` oblique, anisotropic cube cases labelled "cube" in an MSD folder named as ``root``."""
    return write_cube_msd(root, n, case="cube_{:03d}", shape=(14, 20, 22), seed=seed, modality="MR",
                          spacing=(1.2, 1.4, 2.0), origin=(5.0, -3.0, 2.0), direction=rotation_about_axis("z", 15.0))

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
    assert summary["labels"] == [{"name": "cube", "bundle_value": 1, "truth_value": 1, "truth_name": "cube",
                                  "matched_by": "name"}]
    assert summary["bootstrap"]["unit"] == "case" and summary["bootstrap"]["n_units"] == 5
    assert (out / "summary.txt").read_text().strip() == result["text"]


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
    image = Volume(np.random.default_rng(0).normal(size=(4, 10, 12)).astype(np.float32), spacing=(0.5, 1.0, 3.0))
    panel = figures.pick_slice(image, truth, np.roll(truth, 1, axis=2), "case", 0.8, {"cube": 0.8})
    assert panel.slice_index in (1, 2) and panel.spacing_ji == (1.0, 0.5)
    assert figures.overlay_montage([panel], [], tmp_path / "m.png").read_bytes()[:8] == PNG
    log = tmp_path / "training_log.csv"
    log.write_text("epoch,loss,val_loss,val_dice_1\n0,1.0,1.1,0.2\n1,0.5,0.7,0.6\n")
    assert figures.read_training_log(log)["val_dice_1"] == [0.2, 0.6]
    curves = figures.training_curves({"model": figures.read_training_log(log)}, tmp_path / "t.png",
                                     label_names={1: "cube"})
    assert curves.read_bytes()[:8] == PNG


def write_hippocampus_like(root: Path, n: int) -> Path:
    """The cube cases of :func:`write_msd`, but the dataset names its labels as the hippocampus data does."""
    data = write_msd(root, n)
    meta = json.loads((data / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "anterior", "2": "posterior"}
    (data / "dataset.json").write_text(json.dumps(meta))
    return data


def test_evaluate_refuses_labels_the_data_does_not_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A bundle of 'cube' on data of 'anterior'/'posterior' used to be scored as dice_cube against 'anterior' with
    exit 0. Now it is refused before any case runs (exit 2, nothing written); --label-map pairs them on purpose."""
    from MedAnalysisLib.cli import main

    data = write_hippocampus_like(tmp_path / "hippo", 3)
    out = tmp_path / "report"
    with pytest.raises(InputError, match=r"expected the labels of 'hippo' to include the bundle's labels \['cube'\] "
                                         r"by name, got anterior \(1\), posterior \(2\)"):
        evaluate_bundle(shared_cube_bundle(), data, out, EvaluationOptions(bootstrap=0, figures=False))
    assert not out.exists()
    code = main(["evaluate", str(shared_cube_bundle()), str(data), "--out", str(out), "--progress", "none"])
    assert code == 2 and "expected the labels of 'hippo'" in capsys.readouterr().err
    code = main(["evaluate", str(shared_cube_bundle()), str(data), "--out", str(out), "--label-map", "cube=anterior",
                 "--bootstrap", "100", "--no-figures", "--progress", "none"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"][0]["truth_name"] == "anterior" and summary["labels"][0]["matched_by"] == "label-map"
    assert summary["unscored_truth_labels"] == {"2": "posterior"}
    printed = capsys.readouterr().out
    stats = summary["metrics"]["dice_cube"]
    assert f"{stats['mean']:.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]" in printed  # the headline, printed
    assert "anterior (1), by label-map" in printed and "posterior (2)" in printed


def test_truth_values_the_bundle_does_not_have_are_refused(tmp_path: Path) -> None:
    """A CSV manifest names no labels, so labels are matched by value; a truth value 2 for a bundle of one label
    means the numberings differ, which is refused (not a silently unscored structure)."""
    rng = np.random.default_rng(3)
    image, label = cube_volume((14, 20, 22), rng)
    label[label == 1] = 2
    write_volume(Volume(image), tmp_path / "image.nii.gz")
    write_volume(Volume(label), tmp_path / "label.nii.gz")
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,label\nimage.nii.gz,label.nii.gz\n")
    with pytest.raises(InputError, match=r"expected truth values among the bundle's labels \[0, 1\] \(matched by value"):
        evaluate_bundle(shared_cube_bundle(), manifest, tmp_path / "r", EvaluationOptions(bootstrap=0, figures=False))
    result = evaluate_bundle(shared_cube_bundle(), manifest, tmp_path / "r",
                             EvaluationOptions(bootstrap=0, figures=False, label_map={"cube": "2"}))
    assert result["failed"] == 0 and result["headline"]["dice_cube"] > 0.5


def test_intervals_resample_patients_when_the_manifest_has_them(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """Four patients with three scans each (here: the same scan listed three times, so its copies are perfectly
    correlated). The manifest's patient_id column makes the interval resample patients: it matches the cluster
    bootstrap of the per-case Dice computed in the test, and it is wider than the case-level interval that
    --group-column none gives."""
    from MedAnalysisLib.cli import main

    data = write_msd(tmp_path / "cubes", 4, seed=5)
    lines = ["case_id,image,label,patient_id"]
    for m in range(4):
        for copy in range(3):
            lines.append(f"p{m}_{copy},cubes/imagesTr/cube_{m:03d}.nii.gz,cubes/labelsTr/cube_{m:03d}.nii.gz,P{m}")
    manifest = tmp_path / "cases.csv"
    manifest.write_text("\n".join(lines) + "\n")
    assert data.is_dir()
    out = tmp_path / "by-patient"
    assert main(["evaluate", str(shared_cube_bundle()), str(manifest), "--out", str(out), "--bootstrap", "500",
                 "--no-figures", "--progress", "none"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bootstrap"]["unit"] == "group" and summary["bootstrap"]["n_units"] == 4
    assert "bootstrap over 4 groups of cases" in capsys.readouterr().out
    with open(out / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert "patient_id" not in rows[0] and not any("P1" in v for r in rows for v in r.values())  # no patient IDs out
    dice = np.array([float(r["dice_cube"]) for r in rows])
    groups = np.array([r["case_id"].split("_")[0] for r in rows])
    expected = cluster_bootstrap(dice, groups, 500, 0)
    stats = summary["metrics"]["dice_cube"]
    assert (stats["ci_low"], stats["ci_high"]) == pytest.approx(expected, abs=1e-12)
    assert stats["n_groups"] == 4
    flat = tmp_path / "by-case"
    assert main(["evaluate", str(shared_cube_bundle()), str(manifest), "--out", str(flat), "--bootstrap", "500",
                 "--no-figures", "--group-column", "none", "--progress", "none"]) == 0
    case_level = json.loads((flat / "summary.json").read_text())
    assert case_level["bootstrap"]["unit"] == "case"
    case_stats = case_level["metrics"]["dice_cube"]
    assert case_stats["ci_high"] - case_stats["ci_low"] < stats["ci_high"] - stats["ci_low"]
    with pytest.raises(InputError, match="expected the group column 'hospital'"):
        evaluate_bundle(shared_cube_bundle(), manifest, tmp_path / "x", EvaluationOptions(group_column="hospital"))


def cluster_bootstrap(values: np.ndarray, groups: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    """Resample groups with replacement (as many as there are), take all their cases; 2.5 and 97.5 percentiles."""
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n):
        drawn = rng.choice(unique, size=len(unique), replace=True)
        means.append(np.concatenate([values[groups == g] for g in drawn]).mean())
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


@pytest.mark.parametrize("form", ["folder", "dataset.json", "csv"])
def test_evaluate_accepts_every_labelled_dataset_form(form: str, tmp_path: Path) -> None:
    """The MSD folder, its dataset.json and a CSV manifest of the same cases give the same per-case Dice."""
    from MedAnalysisLib.cli import main

    data = write_msd(tmp_path / "cubes", 2, seed=2)
    target = {"folder": data, "dataset.json": data / "dataset.json", "csv": tmp_path / "cases.csv"}[form]
    (tmp_path / "cases.csv").write_text("image,label\n" + "".join(
        f"cubes/imagesTr/cube_{m:03d}.nii.gz,cubes/labelsTr/cube_{m:03d}.nii.gz\n" for m in range(2)))
    out = tmp_path / "report"
    assert main(["evaluate", str(shared_cube_bundle()), str(target), "--out", str(out), "--bootstrap", "0",
                 "--no-figures", "--progress", "none"]) == 0
    with open(out / "per_case.csv", newline="") as handle:
        dice = [float(r["dice_cube"]) for r in csv.DictReader(handle)]
    assert len(dice) == 2 and all(math.isfinite(d) and d > 0.3 for d in dice)


def test_evaluate_on_unlabelled_forms_says_they_have_no_labels(shared_data: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """DICOM folders and image files are forms every command takes; they hold no labels, and evaluate says so."""
    from MedAnalysisLib.cli import main

    images = write_msd(tmp_path / "cubes", 2) / "imagesTr"
    for data, count in ((shared_data / "dicom" / "ct_head_slicer_64x64", 1), (images, 2)):
        code = main(["evaluate", str(shared_cube_bundle()), str(data), "--out", str(tmp_path / "r"), "--progress",
                     "none"])
        assert code == 2
        err = capsys.readouterr().err
        assert f"expected cases with label maps to evaluate a segmentation bundle, got {count} case(s) without " \
               "label maps" in err and "hold no labels" in err
    assert not (tmp_path / "r").exists()


def test_ct_slices_get_patient_level_intervals(shared_data: Path, tmp_path: Path) -> None:
    """The chest CT data has several slices per patient; evaluating a slice classifier on a manifest with its
    patient_id column resamples patients (the benchmarks did this outside the library before). The AUC and accuracy
    intervals equal the cluster bootstrap computed here from per_case.csv and the manifest's patient ids."""
    from helpers_inference import train_classifier_bundle

    with (shared_data / "ct_contrast" / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["patient_id"]] = counts.get(row["patient_id"], 0) + 1
    several = [r for r in rows if counts[r["patient_id"]] > 1]
    chosen = [r for r in several if r["contrast"] == "0"][:6] + [r for r in several if r["contrast"] == "1"][:6]
    manifest = tmp_path / "ct.csv"
    manifest.write_text("case_id,image,target,patient_id\n" + "".join(
        f"slice{n:02d},{shared_data / 'ct_contrast' / r['file']},{r['contrast']},{r['patient_id']}\n"
        for n, r in enumerate(chosen)))
    bundle = train_classifier_bundle(tmp_path / "slice_cnn", "slice_cnn")
    result = evaluate_bundle(bundle, manifest, tmp_path / "report", EvaluationOptions(bootstrap=300, figures=False))
    assert result["failed"] == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    patients = {r["case_id"]: c["patient_id"] for r, c in zip(
        csv.DictReader(manifest.open(newline="")), chosen, strict=True)}
    assert summary["bootstrap"]["unit"] == "group"
    assert summary["bootstrap"]["n_units"] == len(set(patients.values())) < len(chosen)
    with open(tmp_path / "report" / "per_case.csv", newline="") as handle:
        per_case = list(csv.DictReader(handle))
    groups = np.array([patients[r["case_id"]] for r in per_case])
    correct = np.array([float(r["target"] == r["predicted"]) for r in per_case])
    low, high = cluster_bootstrap(correct, groups, 300, 0)
    assert (summary["accuracy_ci"]["ci_low"], summary["accuracy_ci"]["ci_high"]) == pytest.approx((low, high))
    assert "bootstrap over" in result["text"] and "groups of cases" in result["text"]
