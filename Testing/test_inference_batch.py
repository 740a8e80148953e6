"""Batch prediction: case discovery, shards, resume, a bad case in the middle, the CLI with JSON lines, canaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_inference import cube_volume, shared_cube_bundle, write_cube_msd
from helpers_io import CANARIES, write_dicom_series

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.inference.batch import BatchOptions, discover_cases, run_batch, select_shard
from MedAnalysisLib.io import write_volume
from MedAnalysisLib.volume import Volume

ROOT = Path(__file__).resolve().parents[1]


def write_cases(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for m in range(n):
        image, _ = cube_volume((12, 14, 16), rng)
        paths.append(write_volume(Volume(image, spacing=(1.5, 1.5, 1.5)), folder / f"case{m:02d}.nii.gz"))
    return paths


def test_shards_cover_every_case_exactly_once(tmp_path: Path) -> None:
    write_cases(tmp_path / "cases", 7)
    cases = discover_cases([tmp_path / "cases"])
    assert [c.case_id for c in cases] == [f"case{m:02d}" for m in range(7)]
    shards = [select_shard(cases, (i, 3)) for i in (1, 2, 3)]
    names = [c.case_id for shard in shards for c in shard]
    assert sorted(names) == sorted(c.case_id for c in cases) and len(names) == len(set(names))
    assert [len(s) for s in shards] == [3, 2, 2]
    assert select_shard(list(reversed(cases)), (2, 3)) == shards[1]  # independent of input order
    with pytest.raises(InputError, match="1 <= i <= n"):
        select_shard(cases, (4, 3))


def test_discovery_of_files_dicom_series_and_duplicates(tmp_path: Path) -> None:
    pixels = np.zeros((4, 8, 8), np.int16)
    write_dicom_series(tmp_path / "study" / "a", pixels, series_number=3)
    write_dicom_series(tmp_path / "study" / "a", pixels + 5, series_number=7, file_names=[f"b{k}.dcm" for k in range(4)])
    cases = discover_cases([tmp_path / "study"])
    assert [c.case_id for c in cases] == ["study_a_s3", "study_a_s7"]
    assert all(c.series for c in cases)
    write_cases(tmp_path / "x", 1)
    write_cases(tmp_path / "y", 1)
    with pytest.raises(InputError, match="unique case names"):
        discover_cases([tmp_path / "x" / "case00.nii.gz", tmp_path / "y" / "case00.nii.gz"])
    with pytest.raises(InputError, match="got nothing at"):
        discover_cases([tmp_path / "missing.nii.gz"])


def test_resume_and_a_bad_case_in_the_middle(tmp_path: Path) -> None:
    from MedAnalysisLib.bundles import load_bundle

    cases = tmp_path / "cases"
    write_cases(cases, 3)
    (cases / "case01b.nii.gz").write_bytes(b"not an image at all")  # sorts between case01 and case02
    bundle = load_bundle(shared_cube_bundle())
    out = tmp_path / "out"
    first = run_batch(bundle, [cases], out, BatchOptions(formats=("nifti", "seg.nrrd")))
    assert first.done == ["case00", "case01", "case02"]
    assert [f["case_id"] for f in first.failed] == ["case01b"]
    assert first.failed[0]["error_type"] == "UnreadableFileError"
    assert (out / "case02_label.nii.gz").is_file() and (out / "case02.seg.nrrd").is_file()
    written = (out / "case00_label.nii.gz").stat().st_mtime_ns
    again = run_batch(bundle, [cases], out, BatchOptions(formats=("nifti", "seg.nrrd")))
    assert again.done == [] and again.skipped == ["case00", "case01", "case02"] and len(again.failed) == 1
    assert (out / "case00_label.nii.gz").stat().st_mtime_ns == written
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["skipped"] == ["case00", "case01", "case02"]


def test_cli_predict_on_dicom_with_jsonl_progress_leaks_no_patient_data(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).normal(0, 10, size=(8, 20, 20)).round() + 1024
    pixels[2:6, 5:12, 6:14] = 2024
    write_dicom_series(tmp_path / "PATIENT_FOLDER", pixels.astype(np.int16), modality="MR")  # the bundle's modality
    out = tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "MedAnalysisLib", "predict", str(shared_cube_bundle()), str(tmp_path / "PATIENT_FOLDER"),
         "--out", str(out), "--format", "nifti", "--format", "dicom-seg", "--progress", "jsonl"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    messages = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    assert messages[-1]["type"] == "result" and messages[-1]["done"] == ["PATIENT_FOLDER"]
    assert any(m["type"] == "progress" for m in messages)
    for text in (completed.stdout, completed.stderr):
        assert not any(canary in text for canary in CANARIES)
    assert (out / "PATIENT_FOLDER_seg.dcm").is_file() and (out / "PATIENT_FOLDER_label.nii.gz").is_file()
    for path in out.iterdir():
        if not path.name.endswith("_seg.dcm"):
            assert not any(canary.encode() in path.read_bytes() for canary in CANARIES), path.name


def test_sigterm_stops_cleanly_and_keeps_finished_cases(tmp_path: Path) -> None:
    import signal

    write_cases(tmp_path / "cases", 6)
    out = tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "MedAnalysisLib", "predict", str(shared_cube_bundle()), str(tmp_path / "cases"),
         "--out", str(out), "--tta", "on", "--progress", "jsonl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    messages = []
    assert process.stdout is not None
    for line in process.stdout:
        messages.append(json.loads(line))
        if messages[-1].get("stage") == "cases" and 0 < messages[-1]["fraction"] < 1:
            process.send_signal(signal.SIGTERM)
            break
    remaining, _ = process.communicate(timeout=120)
    messages += [json.loads(line) for line in remaining.splitlines() if line.startswith("{")]
    assert process.returncode == 3
    assert messages[-1]["type"] == "error" and messages[-1]["error_type"] == "CancelledError"
    finished = sorted(p.name for p in out.glob("case??.json"))
    assert 1 <= len(finished) < 6
    for sidecar in finished:  # every finished case is complete
        assert (out / sidecar.replace(".json", "_label.nii.gz")).is_file()
    assert not list(out.glob("*.partial*"))


# ---------------------------------------------------------------------------------------------- issue 19
def _series_without_frame_of_reference(folder: Path) -> Path:
    import pydicom

    pixels = np.random.default_rng(2).normal(0, 10, size=(6, 16, 18)).round() + 1024
    for path in write_dicom_series(folder, pixels.astype(np.int16), modality="MR"):  # the bundle's modality
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    return folder


def test_dicom_seg_needs_are_checked_before_any_work_and_cost_no_other_format(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19.4: a series without FrameOfReferenceUID ran the model, then failed the DICOM SEG, and the .seg.nrrd
    asked for in the same run (after it) was never written. Now the problem is reported before the first model
    call, every other output is written, the sidecar and the summary say what was left out, and the exit code is 1."""
    from MedAnalysisLib.cli import main

    series = _series_without_frame_of_reference(tmp_path / "scan")
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["predict", str(shared_cube_bundle()), str(series), "--out", str(out), "--format", "dicom-seg",
                 "--format", "seg.nrrd", "--probabilities", "--progress", "jsonl"])
    messages = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 1
    warnings = [n for n, m in enumerate(messages) if m["type"] == "log" and "dicom-seg" in m["message"]]
    assert warnings, f"no early report of the DICOM SEG problem: {messages}"
    warning = warnings[0]
    assert "FrameOfReferenceUID" in messages[warning]["message"]
    first_case = next(n for n, m in enumerate(messages) if m["type"] == "progress" and m["stage"] == "cases")
    assert warning < first_case  # reported before the first case (and its model call) started
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "batch_summary.json", "scan.json", "scan.seg.nrrd", "scan_probability_1_cube.nii.gz", "scan_table.csv",
        "scan_table.json"])
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["done"] == ["scan"] and summary["failed"] == []
    assert [(n["case_id"], n["output"]) for n in summary["not_written"]] == [("scan", "label_dicom-seg")]
    assert json.loads((out / "scan.json").read_text())["not_written"]["label_dicom-seg"].startswith("the DICOM")
    # the same holds for image files: DICOM SEG cannot be made from them, the NIfTI still is
    write_cases(tmp_path / "files", 1)
    assert main(["predict", str(shared_cube_bundle()), str(tmp_path / "files"), "--out", str(tmp_path / "out2"),
                 "--format", "dicom-seg", "--format", "nifti", "--progress", "none"]) == 1
    assert (tmp_path / "out2" / "case00_label.nii.gz").is_file()


def test_a_bundle_that_cannot_give_a_format_is_refused_before_any_case(tmp_path: Path) -> None:
    from helpers_inference import train_classifier_bundle

    from MedAnalysisLib.bundles import load_bundle

    write_cases(tmp_path / "cases", 2)
    bundle = load_bundle(train_classifier_bundle(tmp_path / "classifier", "cnn3d"))
    with pytest.raises(InputError, match="segmentation bundle for --format dicom-seg"):
        run_batch(bundle, [tmp_path / "cases"], tmp_path / "out", BatchOptions(formats=("dicom-seg",)))
    assert not (tmp_path / "out" / "batch_summary.json").exists()
    with pytest.raises(InputError, match="formats among"):
        run_batch(bundle, [tmp_path / "cases"], tmp_path / "out", BatchOptions(formats=("png",)))


def test_predict_accepts_every_dataset_form_the_other_commands_accept(tmp_path: Path) -> None:
    """Issue 19.7: predict took dataset.json but refused the MSD folder ("expected DICOM image series"), while plan,
    train and evaluate took the folder and refused dataset.json. Every form now gives the same cases."""
    msd = write_cube_msd(tmp_path / "Task99_Toy", label="liver", case="hip_{:03d}")
    names = ["hip_000", "hip_001", "hip_002"]
    assert [c.case_id for c in discover_cases([msd])] == names
    assert [c.case_id for c in discover_cases([msd / "dataset.json"])] == names
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image\n" + "".join(f"Task99_Toy/imagesTr/{n}.nii.gz\n" for n in names))
    assert [c.case_id for c in discover_cases([manifest])] == names
    assert [c.case_id for c in discover_cases([msd / "imagesTr"])] == names  # a folder of image files
    assert [c.case_id for c in discover_cases([msd / "imagesTr" / "hip_001.nii.gz"])] == ["hip_001"]
    files = write_dicom_series(tmp_path / "dicom" / "scan", np.zeros((3, 8, 8), np.int16))
    assert [c.case_id for c in discover_cases([files[0]])] == ["slice000"]  # one DICOM file
    assert [c.case_id for c in discover_cases([tmp_path / "dicom"])] == ["dicom_scan"]
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="MSD folder .or its dataset.json., a CSV manifest, a DICOM"):
        discover_cases([tmp_path / "notes.txt"])
    summary = run_batch(shared_cube_bundle(), [msd], tmp_path / "out", BatchOptions(formats=("nifti",)))
    assert summary.done == names
