"""Regressions found while measuring accuracy on the real data with ``medanalysis`` (train, evaluate, predict)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers_inference import train_classifier_bundle


def _ct_manifest(shared_data: Path, folder: Path, n: int) -> Path:
    """A CSV manifest of ``n`` single-slice CT DICOM files of ct_contrast (image, target, patient_id)."""
    with (shared_data / "ct_contrast" / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:n]
    lines = ["image,target,patient_id"]
    for row in rows:
        lines.append(f"{shared_data / 'ct_contrast' / row['file']},{row['contrast']},{row['patient_id']}")
    manifest = folder / "ct.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_evaluate_reads_single_slice_dicom_files(shared_data: Path, tmp_path: Path) -> None:
    """Training reads one-slice DICOM files as one-slice volumes; evaluation must read them the same way."""
    from MedAnalysisLib.evaluation.report import EvaluationOptions, evaluate_bundle

    bundle = train_classifier_bundle(tmp_path / "slice_cnn", "slice_cnn")
    manifest = _ct_manifest(shared_data, tmp_path, 3)
    result = evaluate_bundle(bundle, manifest, tmp_path / "report", EvaluationOptions(bootstrap=0, figures=False))
    assert result["failed"] == 0 and result["cases"] == 3
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["classification"]["n"] == 3


def test_predict_reads_single_slice_dicom_files(shared_data: Path, tmp_path: Path) -> None:
    from MedAnalysisLib.inference.batch import run_batch

    bundle = train_classifier_bundle(tmp_path / "slice_cnn", "slice_cnn")
    dicom = shared_data / "ct_contrast" / "dicom" / "ID_0000_AGE_0060_CONTRAST_1_CT.dcm"
    summary = run_batch(bundle, [dicom], tmp_path / "out")
    assert not summary.failed, summary.failed
    assert len(summary.done) == 1


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
