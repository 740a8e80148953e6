"""``medanalysis predict --explain``: the heatmap file, the sidecar record, the per-slice contribution column, and
the explain options in the resume and the checks before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_inference import train_classifier_bundle

from MedAnalysisLib.cli import main
from MedAnalysisLib.io import read_volume, write_volume
from MedAnalysisLib.volume import Volume


@pytest.fixture(scope="module")
def sequence_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_classifier_bundle(tmp_path_factory.mktemp("b") / "sequence", "cnn_rnn", seed=1)


def write_scan(folder: Path) -> Path:
    image = np.random.default_rng(4).normal(0, 1, (5, 16, 16)).astype(np.float32)
    image[1:3, 4:10, 5:11] = 100.0
    angle = np.deg2rad(15)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return write_volume(Volume(image, spacing=(1.2, 1.4, 2.5), origin=(-3.0, 7.5, 11.0), direction=direction),
                        folder / "scan.nii.gz")


def predict_cli(bundle: Path, *argv: str) -> int:
    return main(["predict", str(bundle), *argv, "--progress", "none"])


def test_explain_writes_the_heatmap_the_record_and_the_contribution_column(sequence_bundle: Path,
                                                                            tmp_path: Path) -> None:
    scan = read_volume(write_scan(tmp_path / "cases"))
    out = tmp_path / "out"
    assert predict_cli(sequence_bundle, str(tmp_path / "cases"), "--out", str(out), "--explain",
                       "--explain-class", "1", "--uncertainty") == 0
    heatmap = read_volume(out / "scan_explanation.nii.gz")
    assert heatmap.array.dtype == np.float32 and heatmap.shape == scan.shape
    assert np.allclose(heatmap.origin, scan.origin) and np.allclose(heatmap.direction, scan.direction)
    assert 0.0 <= heatmap.array.min() and heatmap.array.max() <= 1.0
    sidecar = json.loads((out / "scan.json").read_text())
    assert sidecar["outputs"]["explanation"] == "scan_explanation.nii.gz"
    assert sidecar["explanation"]["target_value"] == 1 and sidecar["explanation"]["target_name"] == "box"
    assert set(sidecar["explanation"]) == {"target_value", "target_name", "method", "layer"}
    assert sidecar["inference"]["requested"]["explain"] == "box"  # value 1 and name "box" are one request
    header = (out / "scan_slices.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "contribution" and "entropy" in header
    rows = json.loads((out / "scan_slices.json").read_text())
    assert len(rows) == scan.shape[0] and all(isinstance(r["contribution"], float) for r in rows)
    # the same request by name resumes; another request is refused, nothing touched
    assert predict_cli(sequence_bundle, str(tmp_path / "cases"), "--out", str(out), "--explain",
                       "--explain-class", "box", "--uncertainty") == 0
    assert json.loads((out / "batch_summary.json").read_text())["skipped"] == ["scan"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert predict_cli(sequence_bundle, str(tmp_path / "cases"), "--out", str(out), "--uncertainty") == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_unknown_class_to_explain_is_refused_before_any_work(sequence_bundle: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    write_scan(tmp_path / "cases")
    out = tmp_path / "out"
    for wrong in ("tumour", "7", "=cmd|x", "\u0661", "\u00b9", "1.0", "0x1", "", "box\x1b[2J"):
        assert predict_cli(sequence_bundle, str(tmp_path / "cases"), "--out", str(out), "--explain",
                           "--explain-class", wrong) == 2
        err = capsys.readouterr().err
        assert "expected a class to explain among ['box', 'no box'] (name or value [0, 1])" in err
        assert len(err.strip().splitlines()) == 1 and "\x1b" not in err
    assert not out.exists()


def test_a_file_of_someone_else_at_the_explanation_name_is_refused(sequence_bundle: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    write_scan(tmp_path / "cases")
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan_explanation.nii.gz").write_bytes(b"mine")
    assert predict_cli(sequence_bundle, str(tmp_path / "cases"), "--out", str(out), "--explain") == 2
    assert "scan_explanation.nii.gz" in capsys.readouterr().err
    assert (out / "scan_explanation.nii.gz").read_bytes() == b"mine"
    assert predict_cli(sequence_bundle, str(tmp_path / "cases"), "--out", str(out)) == 0  # not a name it writes
    assert (out / "scan_explanation.nii.gz").read_bytes() == b"mine"
