"""Nothing lost and nothing leaked: outputs appear whole or not at all, concurrent runs do not corrupt each other,
canary patient data never reaches logs, errors, tables, sidecars, image headers or file names, and file names
derived from inputs cannot escape the output folder.

The inputs are built here: a DICOM series carrying canary patient data (helpers_security) and a tiny untrained
bundle (what it predicts does not matter; every output path runs).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers_security import (
    PHI_BIRTH_DATE,
    PHI_ID,
    PHI_NAME,
    PHI_OPTIONAL,
    PHI_STRINGS,
    leaks,
    make_tiny_bundle,
    write_canary_series,
)

from MedAnalysisLib.cli import main
from MedAnalysisLib.errors import MedAnalysisError
from MedAnalysisLib.io import load_volume, write_volume
from MedAnalysisLib.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def _series(folder: Path, n: int = 6, **options: object) -> Path:
    pixels = np.random.default_rng(0).normal(40, 10, size=(n, 18, 20)).round().astype(np.int16)
    write_canary_series(folder, pixels, **options)
    return folder


def _scan_outputs(out: Path) -> dict[str, list[str]]:
    """Canaries found per output file (name and bytes, decompressed for .gz: the NIfTI header with its descrip,
    aux_file and intent_name fields is inside the gzip stream); DICOM SEG files are checked separately."""
    found = {}
    for path in sorted(out.rglob("*")):
        if path.is_file():
            data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
            hits = leaks(path.name) + ([] if path.name.endswith("_seg.dcm") else leaks(data))
            if hits:
                found[path.name] = hits
    return found


# -------------------------------------------------------------------------------------------------- privacy
def test_no_patient_data_in_any_output_log_or_error(bundle: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    series = _series(tmp_path / "study" / "series_a")
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    commands = [
        ["dicom", "ls", str(tmp_path / "study"), "-v"],
        ["dicom", "ls", str(tmp_path / "study"), "--json"],
        ["dicom", "info", str(series), "--progress", "jsonl"],
        ["convert", str(series), str(out / "converted.nii.gz"), "-v"],
        ["convert", str(series), str(out / "converted.nrrd")],
        ["convert", str(series), str(out / "converted.mha")],
        ["predict", str(bundle), str(series), "--out", str(out), "--format", "nifti", "--format", "nrrd",
         "--format", "seg.nrrd", "--format", "dicom-seg", "--probabilities", "--progress", "jsonl", "-v"],
    ]
    for argv in commands:
        assert main(argv) == 0, argv
    # an error about the canary series (a slice missing) goes through the same channels
    (series / "slice003.dcm").unlink()
    assert main(["convert", str(series), str(out / "broken.nii.gz"), "--progress", "jsonl"]) == 2
    with pytest.raises(MedAnalysisError) as raised:
        load_volume(series)
    captured = capfd.readouterr()
    assert "about 1 slice(s) missing" in captured.out + captured.err
    for channel, text in (("stdout", captured.out), ("stderr", captured.err), ("log", caplog.text),
                          ("exception", str(raised.value) + repr(raised.value.args))):
        assert leaks(text) == [], f"patient data in {channel}: {leaks(text)}"
    assert {p.name for p in out.iterdir()} >= {
        "converted.nii.gz", "converted.nrrd", "converted.mha", "series_a_label.nii.gz", "series_a_label.nrrd",
        "series_a.seg.nrrd", "series_a_seg.dcm", "series_a_probability_1_organ.nii.gz", "series_a_table.csv",
        "series_a_table.json", "series_a.json", "batch_summary.json"}
    assert _scan_outputs(out) == {}  # every output file name and every byte (headers included) is clean
    sidecar = json.loads((out / "series_a.json").read_text())
    assert sidecar["input"]["modality"] == "CT" and "source_files" not in json.dumps(sidecar)


def test_the_output_scan_finds_a_name_in_a_compressed_nifti_header(tmp_path: Path) -> None:
    """Positive control for the scan above: a canary in a .nii.gz header's descrip field is found."""
    from helpers_io import write_nifti

    header = bytearray(write_nifti(tmp_path / "leaky.nii", np.zeros((2, 3, 4), np.int16), np.eye(4)).read_bytes())
    header[148 : 148 + len(PHI_NAME)] = PHI_NAME.encode()  # descrip, char[80] at byte 148
    (tmp_path / "leaky.nii").unlink()
    (tmp_path / "leaky.nii.gz").write_bytes(gzip.compress(bytes(header)))
    assert load_volume(tmp_path / "leaky.nii.gz").shape == (2, 3, 4)
    assert _scan_outputs(tmp_path) == {"leaky.nii.gz": [PHI_NAME, "CANARY"]}


def test_dicom_seg_copies_only_the_required_patient_and_study_attributes(bundle: Path, tmp_path: Path) -> None:
    """The SEG must be filed with its study, so the Patient module's Type 2 attributes and the General Study module
    are copied from the source; nothing optional (age, weight, comments, other IDs, address, study description,
    institution, operators) is."""
    import highdicom as hd

    series = _series(tmp_path / "series", n=4)
    assert main(["predict", str(bundle), str(series), "--out", str(tmp_path / "out"), "--format", "dicom-seg"]) == 0
    seg = pydicom.dcmread(tmp_path / "out" / "series_seg.dcm")
    source = pydicom.dcmread(series / "slice000.dcm")
    required = {"PatientName": PHI_NAME, "PatientID": PHI_ID, "PatientBirthDate": PHI_BIRTH_DATE, "PatientSex": "O",
                "StudyInstanceUID": source.StudyInstanceUID, "AccessionNumber": "ACC0001", "StudyID": "S1",
                "FrameOfReferenceUID": source.FrameOfReferenceUID}
    assert {k: str(seg.get(k)) for k in required} == {k: str(v) for k, v in required.items()}
    for keyword in ("StudyDate", "StudyTime", "ReferringPhysicianName"):
        assert keyword in seg  # Type 2: present, empty when the source has none
    for keyword, value in PHI_OPTIONAL.items():
        assert keyword not in seg, keyword
        assert all(value not in str(element.value) for element in seg.iterall()), keyword
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(p).SOPInstanceUID for p in series.iterdir()}
    assert hd.seg.segread(tmp_path / "out" / "series_seg.dcm").number_of_segments == 1  # still a valid SEG


def test_output_names_from_manifests_and_tags_cannot_escape(bundle: Path, tmp_path: Path) -> None:
    """Case names come from manifests and folder names, never from tags; '/' and '..' are replaced, so every output
    lands inside --out, and a SeriesDescription full of path characters changes nothing."""
    images = tmp_path / "images"
    image = Volume(np.random.default_rng(1).normal(size=(10, 12, 14)).astype(np.float32), spacing=(1.5, 1.5, 1.5))
    write_volume(image, images / "a.nii.gz")
    write_volume(image, images / "b.nii.gz")
    manifest = tmp_path / "cases.csv"
    manifest.write_text("case_id,image\n../../escaped,images/a.nii.gz\nsub/../../../etc/passwd,images/b.nii.gz\n")
    _series(tmp_path / "dicom" / "scan", n=4, description="../../../escaped/..\\evil")
    out = tmp_path / "deep" / "out"
    assert main(["predict", str(bundle), str(manifest), str(tmp_path / "dicom"), "--out", str(out)]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
                     and not p.is_relative_to(images) and not p.is_relative_to(tmp_path / "dicom"))
    assert all(name.startswith("deep/out/") for name in written if name != "cases.csv"), written
    names = sorted(p.name for p in out.iterdir())
    assert "escaped_label.nii.gz" in names and "sub_.._.._.._etc_passwd_label.nii.gz" in names
    assert "dicom_scan_label.nii.gz" in names
    assert all("/" not in n and not n.startswith(".") for n in names)
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped_label.nii.gz").exists()


# ---------------------------------------------------------------------------------------------- nothing lost
def test_a_failing_writer_leaves_no_half_file_and_no_sidecar(bundle: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The NRRD output fails while it is written (the disk fills up): the NIfTI written before it stays complete,
    the outputs after it are still written (one format's failure costs no other), nothing half-written or temporary
    remains, and without a sidecar the case is redone next time. (A folder already holding an output's name is
    refused before any work: test_hostile_outputs_more.py.)"""
    import errno

    import MedAnalysisLib.io as io_module

    image = Volume(np.random.default_rng(2).normal(size=(10, 12, 14)).astype(np.float32), spacing=(1.5, 1.5, 1.5))
    write_volume(image, tmp_path / "cases" / "c1.nii.gz")
    out = tmp_path / "out"
    real_write = io_module.write_volume

    def disk_full_for_nrrd(volume, path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(path).endswith("_label.nrrd"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(volume, path, *args, **kwargs)

    monkeypatch.setattr(io_module, "write_volume", disk_full_for_nrrd)
    argv = ["predict", str(bundle), str(tmp_path / "cases"), "--out", str(out), "--format", "nifti", "--format", "nrrd"]
    assert main(argv) == 1  # the case failed, the batch reported it
    summary = json.loads((out / "batch_summary.json").read_text())
    assert [f["case_id"] for f in summary["failed"]] == ["c1"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "batch_summary.json", "c1_label.nii.gz", "c1_table.csv", "c1_table.json"]
    assert load_volume(out / "c1_label.nii.gz", kind="label").shape == image.shape
    monkeypatch.setattr(io_module, "write_volume", real_write)
    assert main(argv) == 0
    assert {"c1_label.nrrd", "c1.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if ".partial" in p.name]


def _write_cases(folder: Path, n: int) -> None:
    rng = np.random.default_rng(3)
    for m in range(n):
        write_volume(Volume(rng.normal(size=(12, 14, 16)).astype(np.float32), spacing=(1.5, 1.5, 1.5)),
                     folder / f"case{m:02d}.nii.gz")


def _predict(bundle: Path, cases: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "MedAnalysisLib", "predict", str(bundle), str(cases), "--out", str(out),
         "--format", "nifti", "--format", "seg.nrrd", "--progress", "jsonl", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )


def _complete(out: Path) -> dict[str, bytes]:
    """Every visible output is whole: label maps load with the case's shape, JSON parses; returns name -> bytes."""
    contents = {}
    for path in sorted(out.iterdir()):
        if path.name.startswith("."):
            continue
        if path.name.endswith((".nii.gz", ".seg.nrrd")):
            assert load_volume(path, kind="label").shape == (12, 14, 16), path.name
        elif path.suffix == ".json":
            json.loads(path.read_text())
        contents[path.name] = path.read_bytes()
    return contents


@pytest.mark.slow
def test_killed_predict_leaves_the_old_or_the_new_output_never_half(bundle: Path, tmp_path: Path) -> None:
    _write_cases(tmp_path / "cases", 6)
    out = tmp_path / "out"
    assert main(["predict", str(bundle), str(tmp_path / "cases"), "--out", str(out), "--format", "nifti",
                 "--format", "seg.nrrd"]) == 0
    old = _complete(out)
    assert len([n for n in old if n.endswith("_label.nii.gz")]) == 6
    process = _predict(bundle, tmp_path / "cases", out, "--overwrite", "--tta", "on")
    deadline = time.monotonic() + 300
    finished = (out / "batch_summary.json").stat().st_mtime_ns
    while time.monotonic() < deadline:  # kill as soon as the second run has completed a case (its sidecar is new)
        if any(p.stat().st_mtime_ns > finished for p in out.glob("case??.json")):
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    new = _complete(out)
    assert set(new) == set(old)  # nothing lost; every file is the old one or a complete new one (checked above)
    replaced = [name for name in new if new[name] != old[name]]
    assert replaced, "the kill came after the second run finished: nothing was tested"
    stale = [p.name for p in out.iterdir() if p.name.startswith(".") and ".partial" in p.name]
    assert all(name.startswith(".case") for name in stale)  # a SIGKILL can leave hidden temporaries, never more


@pytest.mark.slow
def test_two_processes_predicting_into_one_folder(bundle: Path, tmp_path: Path) -> None:
    _write_cases(tmp_path / "cases", 4)
    out = tmp_path / "out"
    runs = [_predict(bundle, tmp_path / "cases", out, "--overwrite", *extra) for extra in ([], ["--tta", "on"])]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-2000:]
    contents = _complete(out)
    assert sorted(n for n in contents if len(n) == len("case00.json") and n.endswith(".json")) == [
        f"case{m:02d}.json" for m in range(4)]
    assert not [p.name for p in out.iterdir() if ".partial" in p.name]
    for m in range(4):  # each sidecar describes outputs that exist
        sidecar = json.loads(contents[f"case{m:02d}.json"])
        assert all((out / name).is_file() for name in sidecar["outputs"].values())


# ---------------------------------------------------------------------------------------------- issue 19.3
SINGLE_NAME = "CANARYPATIENT"  # one component: highdicom warns about it, quoting it
SERIES_CANARY = "CANARY-SERIES-DESCRIPTION"


def test_third_party_warnings_and_logs_never_print_patient_data(bundle: Path, tmp_path: Path,
                                                                 shared_data: Path) -> None:
    """Issue 19.3: on the Slicer CT head series highdicom's UserWarning printed the PatientName, and its INFO lines
    (nine per SEG) reached the terminal. Run as a user runs it (a real process, real warnings and logging), with -v,
    on that real series and on canary series (a single-component name, a SeriesDescription canary, one series with a
    slice missing so that its error is reported): no identifying value appears on stdout or stderr, in the batch
    summary, in a sidecar, a table, a NIfTI/NRRD header or a file name, and highdicom's narration is gone."""
    import shutil

    ct_head = tmp_path / "study" / "ct_head"
    ct_head.mkdir(parents=True)
    for source in sorted((shared_data / "dicom" / "ct_head_slicer_64x64").glob("*.dcm")):
        dataset = pydicom.dcmread(source)
        dataset.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.77"  # it has none: added so that a SEG is written
        dataset.save_as(ct_head / source.name)
    real_name, real_id = str(dataset.PatientName), str(dataset.PatientID)
    for name, n in (("canary", 6), ("broken", 5)):
        folder = _series(tmp_path / "study" / name, n=n, description=SERIES_CANARY)
        for path in folder.iterdir():
            ds = pydicom.dcmread(path)
            ds.PatientName = SINGLE_NAME
            ds.save_as(path)
    (tmp_path / "study" / "broken" / "slice002.dcm").unlink()  # a missing slice: that case fails with an error
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "MedAnalysisLib", "predict", str(bundle), str(tmp_path / "study"), "--out", str(out),
         "--format", "dicom-seg", "--format", "nifti", "--format", "seg.nrrd", "--probabilities", "-v",
         "--progress", "log"], capture_output=True, text=True, env=ENV, timeout=600, check=False)
    assert completed.returncode == 1, completed.stderr[-3000:]  # the broken series failed, the others are done
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["done"] == ["study_canary", "study_ct_head"]
    assert [f["case_id"] for f in summary["failed"]] == ["study_broken"]
    secrets = [SINGLE_NAME, SERIES_CANARY, real_name, real_id, *PHI_STRINGS]
    for channel, text in (("stdout", completed.stdout), ("stderr", completed.stderr)):
        assert leaks(text, secrets) == [], f"patient data on {channel}: {leaks(text, secrets)}"
    assert "copy attributes of module" not in completed.stderr  # highdicom's INFO narration
    assert "[patient data]" in completed.stderr  # with -v the contained warning is shown, redacted
    assert "missing" in json.dumps(summary["failed"])  # the error itself still says what is wrong
    for path in out.iterdir():
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        assert leaks(path.name, secrets) == [], path.name
        if not path.name.endswith("_seg.dcm"):
            assert leaks(data, secrets) == [], (path.name, leaks(data, secrets))
    seg = pydicom.dcmread(out / "study_ct_head_seg.dcm")  # the SEG belongs to the patient's study, as DICOM requires
    assert str(seg.PatientName) == real_name and SERIES_CANARY not in str(seg.get("SeriesDescription"))
    shutil.rmtree(out)


def test_the_phi_filter_covers_our_messages_and_third_party_records() -> None:
    """One filter: values remembered from a SEG's sources are removed from Reporter messages, from log records
    passing the command line's handler filter, and from contained third-party warnings; short and placeholder
    values (which identify nobody and are common words) are left alone."""
    import io
    import warnings

    from MedAnalysisLib import privacy
    from MedAnalysisLib.progress import Reporter

    privacy.remember(["DOE^JANE^Q", "12345678", "1", "Unknown"])
    try:
        assert privacy.redact("case of DOE^JANE^Q, Jane? JANE DOE id 12345678 got None 1") == (
            "case of [patient data], Jane? [patient data] [patient data] id [patient data] got None 1")
        stream = io.StringIO()
        Reporter("jsonl", stream=stream).log("loaded DOE, JANE")
        assert "JANE" not in stream.getvalue() and "[patient data]" in stream.getvalue()
        record = logging.LogRecord("highdicom.base", logging.WARNING, __file__, 1, "name %s", ("DOE^JANE^Q",), None)
        assert privacy.PhiFilter().filter(record) and record.getMessage() == "name [patient data]"
        seen: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record.getMessage())

        handler = Keep(level=logging.DEBUG)
        privacy.logger.addHandler(handler)
        privacy.logger.setLevel(logging.DEBUG)
        try:
            with privacy.contain_third_party("testing"):
                warnings.warn("The string 'DOE^JANE^Q' is unlikely", UserWarning, stacklevel=1)
                logging.getLogger("highdicom.seg").info("copy attributes of DOE^JANE^Q")
                logging.getLogger("pydicom").warning("bad value 12345678")
        finally:
            privacy.logger.removeHandler(handler)
            privacy.logger.setLevel(logging.NOTSET)
        assert len(seen) == 2 and all("JANE" not in m and "12345678" not in m for m in seen), seen
        assert "UserWarning" in seen[0] and "pydicom WARNING" in seen[1]
    finally:
        privacy.forget_all()
