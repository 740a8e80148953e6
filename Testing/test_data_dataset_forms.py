"""``medanalysis plan`` takes every dataset form the other commands take: an MSD folder or its dataset.json, a CSV
manifest, a folder of DICOM series, image files (``evaluate``'s forms are tested in test_evaluation_report.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from MedAnalysisLib.cli import main
from MedAnalysisLib.data.sources import load_source
from MedAnalysisLib.errors import InputError


def small_hippocampus(shared_data: Path, folder: Path, n: int = 6) -> Path:
    """An MSD folder of the first ``n`` hippocampus cases (files copied to a temporary folder of the test)."""
    source = shared_data / "hippocampus"
    meta = json.loads((source / "dataset.json").read_text())
    entries = sorted(meta["training"], key=lambda e: e["image"])[:n]
    for entry in entries:
        for key in ("image", "label"):
            target = folder / entry[key]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / entry[key], target)
    meta.update(training=entries, numTraining=n, test=[], numTest=0)
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def plan_of(data: Path, out: Path, *extra: str) -> dict:
    assert main(["plan", str(data), "--out", str(out), "--progress", "none", *extra]) == 0
    return json.loads(out.read_text())


def test_plan_accepts_the_msd_folder_its_dataset_json_and_a_manifest(shared_data: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """The same six cases given three ways give the same plan (before, dataset.json was refused)."""
    folder = small_hippocampus(shared_data, tmp_path / "hippocampus")
    from_folder = plan_of(folder, tmp_path / "a.json")
    assert plan_of(folder / "dataset.json", tmp_path / "b.json") == from_folder
    meta = json.loads((folder / "dataset.json").read_text())
    rows = [f"{folder / e['image']},{folder / e['label']},MRI" for e in meta["training"]]
    (tmp_path / "cases.csv").write_text("image,label,modality\n" + "\n".join(rows) + "\n")
    from_csv = plan_of(tmp_path / "cases.csv", tmp_path / "c.json")
    assert from_csv["target_spacing"] == from_folder["target_spacing"]
    assert from_csv["patch_size"] == from_folder["patch_size"]
    assert from_csv["label_values"] == from_folder["label_values"]
    capsys.readouterr()


def test_plan_accepts_dicom_and_image_files(shared_data: Path, tmp_path: Path) -> None:
    plan = plan_of(shared_data / "dicom" / "ct_head_slicer_64x64", tmp_path / "plan.json")
    assert plan["modality"] == "CT"
    folder = small_hippocampus(shared_data, tmp_path / "hippocampus", n=3)
    images = plan_of(folder / "imagesTr", tmp_path / "images.json", "--modality", "MRI")
    one = plan_of(sorted((folder / "imagesTr").iterdir())[0], tmp_path / "one.json", "--modality", "MRI")
    assert images["modality"] == one["modality"] == "MRI" and images["target_spacing"] == [1.0, 1.0, 1.0]


def test_a_group_column_is_refused_for_data_that_has_no_columns(shared_data: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    folder = small_hippocampus(shared_data, tmp_path / "hippocampus", n=2)
    with pytest.raises(InputError, match="expected a CSV manifest for a group column"):
        load_source(folder / "dataset.json", group_column="patient_id")
    assert main(["plan", str(folder), "--group-column", "patient_id", "--progress", "none"]) == 2
    assert "expected a CSV manifest for a group column ('patient_id')" in capsys.readouterr().err
    assert len(load_source(folder / "dataset.json").cases) == 2
