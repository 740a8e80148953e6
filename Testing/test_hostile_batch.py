"""Careless and hostile inputs to batch prediction: one bad case never stops the others, stale outputs are never
taken for finished ones, no header text reaches a batch output, and a bundle never runs silently on another
modality.

Every hostile input is built here, tiny, in ``tmp_path``; one small trained bundle serves every test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from helpers_inference import cube_volume, shared_cube_bundle
from helpers_io import CANARIES, write_dicom_series

from MedAnalysisLib.errors import CancelledError, InputError
from MedAnalysisLib.inference.batch import BatchOptions, discover_cases, run_batch
from MedAnalysisLib.io import write_volume
from MedAnalysisLib.volume import Volume

#: The shape of the hostile middle case "b" where the model is made to fail (the good cases are 12 x 14 x 16).
ODD_SHAPE = (13, 14, 16)


@pytest.fixture(scope="module")
def bundle() -> Any:
    from MedAnalysisLib.bundles import load_bundle

    return load_bundle(shared_cube_bundle())


def good_case(path: Path, seed: int, shape: tuple[int, int, int] = (12, 14, 16)) -> Path:
    image, _ = cube_volume(shape, np.random.default_rng(seed))
    return write_volume(Volume(image, spacing=(1.5, 1.5, 1.5)), path)


def noise_image(spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.random.default_rng(3).normal(size=(12, 14, 16)).astype(np.float32))
    image.SetSpacing(spacing)
    return image


def _huge_spacing(folder: Path) -> None:
    sitk.WriteImage(noise_image((1e30, 1.5, 1.5)), str(folder / "b.nii.gz"))


def _metre_voxels(folder: Path) -> None:
    sitk.WriteImage(noise_image((1000.0, 1000.0, 1000.0)), str(folder / "b.mha"))


def _nan_direction(folder: Path) -> None:
    sitk.WriteImage(noise_image(), str(folder / "b.mha"))
    text = (folder / "b.mha").read_bytes()
    assert b"TransformMatrix = 1 0 0" in text
    (folder / "b.mha").write_bytes(text.replace(b"TransformMatrix = 1 0 0", b"TransformMatrix = nan 0 0"))


def _truncated(folder: Path) -> None:
    sitk.WriteImage(noise_image(), str(folder / "b.nii"))
    data = (folder / "b.nii").read_bytes()
    (folder / "b.nii").write_bytes(data[: len(data) // 2])


def _fifo(folder: Path) -> None:
    os.mkfifo(folder / "b.nii.gz")


def _folder(folder: Path) -> None:
    (folder / "b.nii.gz").mkdir()
    good_case(folder / "b.nii.gz" / "inner.nii.gz", 9)


def _odd_case(folder: Path) -> None:
    good_case(folder / "b.nii.gz", 9, ODD_SHAPE)


def _tf_out_of_memory() -> BaseException:
    import tensorflow as tf

    return tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor of shape [2,16,16,16,4]")


#: variant -> (how "b" is made, the error the model raises on "b" or None, the error type recorded, message part)
HOSTILE: dict[str, tuple[Callable[[Path], None], Callable[[], BaseException] | None, str, str]] = {
    "1e30 mm spacing": (_huge_spacing, None, "MemoryBudgetError", "resample to"),
    "1000 mm voxels": (_metre_voxels, None, "MemoryBudgetError", "check the spacing in the file's header"),
    "NaN direction": (_nan_direction, None, "UnreadableFileError", "expected finite values"),
    "truncated file": (_truncated, None, "UnreadableFileError", "truncated"),
    "FIFO named like an image": (_fifo, None, "UnreadableFileError", "got a FIFO named 'b.nii.gz'"),
    "folder named like an image": (_folder, None, "UnreadableFileError", "got a folder named 'b.nii.gz'"),
    "model out of memory (TensorFlow)": (_odd_case, _tf_out_of_memory, "ResourceExhaustedError", "OOM when"),
    "MemoryError": (_odd_case, lambda: MemoryError(), "MemoryError", "no message"),
    "OverflowError": (_odd_case, lambda: OverflowError("int too large to convert"), "OverflowError", "too large"),
    "TypeError from a wrapped library": (_odd_case, lambda: TypeError("in method 'Resample', argument 2\nline two"),
                                         "TypeError", "in method 'Resample', argument 2"),
}


def fail_on_odd_case(monkeypatch: pytest.MonkeyPatch, make_error: Callable[[], BaseException]) -> None:
    """The model raises ``make_error()`` on the case of :data:`ODD_SHAPE`, and runs normally on the others."""
    import MedAnalysisLib.inference.predict as predict_module

    real = predict_module.predict

    def predict(bundle: Any, images: Any, **options: Any) -> Any:
        if tuple(images[0].shape) == ODD_SHAPE:
            raise make_error()
        return real(bundle, images, **options)

    monkeypatch.setattr(predict_module, "predict", predict)


def three_cases(folder: Path, make_b: Callable[[Path], None]) -> Path:
    folder.mkdir(parents=True)
    good_case(folder / "a.nii.gz", 1)
    make_b(folder)
    good_case(folder / "c.nii.gz", 2)
    return folder


# ------------------------------------------------------------------------------------------------ isolation
@pytest.mark.parametrize("variant", list(HOSTILE))
def test_one_hostile_case_fails_alone_and_the_others_run(tmp_path: Path, bundle: Any, variant: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    make_b, model_error, error_type, message = HOSTILE[variant]
    if model_error is not None:
        fail_on_odd_case(monkeypatch, model_error)
    cases = three_cases(tmp_path / "cases", make_b)
    out = tmp_path / "out"
    summary = run_batch(bundle, [cases], out)
    assert summary.done == ["a", "c"]
    assert [(f["case_id"], f["error_type"]) for f in summary.failed] == [("b", error_type)]
    assert message in summary.failed[0]["message"]
    assert "\n" not in summary.failed[0]["message"]
    written = json.loads((out / "batch_summary.json").read_text())
    assert written["done"] == ["a", "c"] and written["failed"] == summary.failed
    assert (out / "a_label.nii.gz").is_file() and (out / "c_label.nii.gz").is_file()
    assert not list(out.glob("b.*")) and not list(out.glob("b_*"))


def test_the_command_exits_1_with_every_other_case_done(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from MedAnalysisLib.cli import main

    cases = three_cases(tmp_path / "cases", _huge_spacing)
    capsys.readouterr()
    code = main(["predict", str(shared_cube_bundle()), str(cases), "--out", str(tmp_path / "out"),
                 "--progress", "jsonl"])
    messages = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 1
    assert messages[-1]["type"] == "result" and messages[-1]["done"] == ["a", "c"]
    assert [f["case_id"] for f in messages[-1]["failed"]] == ["b"]
    assert any(m["type"] == "log" and m["level"] == "warning" and m["message"].startswith("b: failed (MemoryBudget")
               for m in messages)


@pytest.mark.parametrize("stop", ["KeyboardInterrupt", "CancelledError"])
def test_a_stop_still_ends_the_batch(tmp_path: Path, bundle: Any, monkeypatch: pytest.MonkeyPatch,
                                     stop: str) -> None:
    errors = {"KeyboardInterrupt": KeyboardInterrupt, "CancelledError": CancelledError}
    fail_on_odd_case(monkeypatch, lambda: errors[stop]())
    cases = three_cases(tmp_path / "cases", _odd_case)
    with pytest.raises(errors[stop]):
        run_batch(bundle, [cases], tmp_path / "out")
    assert (tmp_path / "out" / "a.json").is_file()
    assert not (tmp_path / "out" / "c.json").exists() and not (tmp_path / "out" / "batch_summary.json").exists()


def test_a_fifo_given_as_input_is_refused_without_being_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "scan.nii.gz")
    with pytest.raises(InputError, match="expected a regular file or a folder, got a FIFO at"):
        discover_cases([tmp_path / "scan.nii.gz"])
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image\nscan.nii.gz\n")
    cases = discover_cases([manifest])  # a manifest row naming a FIFO is a case, which fails when it is loaded
    assert [c.case_id for c in cases] == ["scan"]


# ------------------------------------------------------------------------------------------------ stale outputs
def two_cases(folder: Path) -> Path:
    folder.mkdir(parents=True)
    good_case(folder / "a.nii.gz", 1)
    good_case(folder / "c.nii.gz", 2)
    return folder


def stamps(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.iterdir()) if p.name != "batch_summary.json"}


def test_a_rerun_resumes_only_what_the_same_bundle_and_options_made(tmp_path: Path, bundle: Any) -> None:
    cases = two_cases(tmp_path / "cases")
    out = tmp_path / "out"
    assert run_batch(bundle, [cases], out).done == ["a", "c"]
    before = stamps(out)
    assert run_batch(bundle, [cases], out).skipped == ["a", "c"]
    refusals = {
        "formats": BatchOptions(formats=("nifti", "seg.nrrd")),
        "tta": BatchOptions(tta=True),
        "overlap": BatchOptions(overlap=0.25),
        "postprocess": BatchOptions(postprocess=("largest-component",)),
        "probabilities": BatchOptions(write_probabilities=True),
    }
    for changed, options in refusals.items():
        words = {"formats": "with --format nifti, now with --format nifti --format seg.nrrd",
                 "tta": "with TTA off, now with TTA on", "overlap": "with overlap 0.5, now with overlap 0.25",
                 "postprocess": "with post-processing none, now with post-processing largest",
                 "probabilities": "without --probabilities, now with --probabilities"}
        with pytest.raises(InputError, match=f"got 2 made otherwise: a: made {words[changed]}"):
            run_batch(bundle, [cases], out, options)
        assert stamps(out) == before, changed
    again = run_batch(bundle, [cases], out, BatchOptions(formats=("nifti", "seg.nrrd"), overwrite=True))
    assert again.done == ["a", "c"] and (out / "a.seg.nrrd").is_file() and (out / "c.seg.nrrd").is_file()
    assert run_batch(bundle, [cases], out, BatchOptions(formats=("seg.nrrd", "nifti"))).skipped == ["a", "c"]


def test_a_bundle_with_the_same_weights_but_other_settings_is_another_bundle(tmp_path: Path, bundle: Any) -> None:
    from MedAnalysisLib.bundles import load_bundle

    cases = two_cases(tmp_path / "cases")
    out = tmp_path / "out"
    run_batch(bundle, [cases], out)
    edited = Path(shutil.copytree(shared_cube_bundle(), tmp_path / "edited"))
    config = json.loads((edited / "bundle.json").read_text())
    config["labels"][1]["name"] = "box"
    (edited / "bundle.json").write_text(json.dumps(config))
    other = load_bundle(edited)
    assert other.weights_sha256 == bundle.weights_sha256
    before = stamps(out)
    with pytest.raises(InputError, match="same weights but other settings in bundle.json"):
        run_batch(other, [cases], out)
    assert stamps(out) == before


@pytest.mark.parametrize("damage, reason", [
    ("truncated", "not readable JSON (corrupt or truncated)"),
    ("not an object", "not a JSON object"),
    ("bundle as text", "made by another bundle"),
    ("older version", "made by MedAnalysis '0.0.1'"),
    ("no recorded options", "made by a version that did not record its options"),
    ("oversized", "larger than 1048576 bytes"),
])
def test_a_damaged_or_foreign_sidecar_is_never_trusted(tmp_path: Path, bundle: Any, damage: str,
                                                       reason: str) -> None:
    cases = two_cases(tmp_path / "cases")
    out = tmp_path / "out"
    run_batch(bundle, [cases], out)
    sidecar = out / "a.json"
    text = sidecar.read_text()
    record = json.loads(text)
    if damage == "truncated":
        sidecar.write_text(text[: len(text) // 2])
    elif damage == "not an object":
        sidecar.write_text("[1, 2]")
    elif damage == "bundle as text":
        sidecar.write_text(json.dumps({**record, "bundle": "cube-finder"}))
    elif damage == "older version":
        record["inference"]["requested"]["version"] = "0.0.1"
        sidecar.write_text(json.dumps(record))
    elif damage == "no recorded options":
        del record["inference"]["requested"]
        sidecar.write_text(json.dumps(record))
    else:
        sidecar.write_text(json.dumps({**record, "padding": "x" * (1 << 20)}))
    before = stamps(out)
    with pytest.raises(InputError, match=f"got 1 made otherwise: a: [^;]*{re.escape(reason)}"):
        run_batch(bundle, [cases], out)
    assert stamps(out) == before
    assert run_batch(bundle, [cases], out, BatchOptions(overwrite=True)).done == ["a", "c"]
    assert json.loads(sidecar.read_text())["case_id"] == "a"


def test_a_case_whose_listed_outputs_are_gone_is_done_again(tmp_path: Path, bundle: Any) -> None:
    cases = two_cases(tmp_path / "cases")
    out = tmp_path / "out"
    run_batch(bundle, [cases], out)
    (out / "a_label.nii.gz").unlink()
    summary = run_batch(bundle, [cases], out)
    assert summary.done == ["a"] and summary.skipped == ["c"]
    assert (out / "a_label.nii.gz").is_file()


def test_the_command_refuses_stale_outputs_with_exit_code_2(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from MedAnalysisLib.cli import main

    cases = two_cases(tmp_path / "cases")
    out = tmp_path / "out"
    bundle_path = str(shared_cube_bundle())
    assert main(["predict", bundle_path, str(cases), "--out", str(out), "--progress", "none"]) == 0
    before = stamps(out)
    capsys.readouterr()
    assert main(["predict", bundle_path, str(cases), "--out", str(out), "--tta", "on", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: expected the finished cases in") and "--overwrite" in err[0]
    assert stamps(out) == before


# ------------------------------------------------------------------------------------------------ privacy
#: Header text planted in the DICOM source; none of it may reach a batch output or a message.
TEXT_CANARIES = {"SeriesDescription": "CANARY-SERIES-DESCRIPTION", "ProtocolName": "CANARY-PROTOCOL",
                 "InstitutionName": "CANARY-INSTITUTION", "StudyDescription": "CANARY-STUDY",
                 "InstitutionalDepartmentName": "CANARY-DEPARTMENT", "StationName": "CANARY-STATION"}
ALL_CANARIES = (*CANARIES, *TEXT_CANARIES.values())

#: The documented outputs, key by key: a dict maps each allowed key to the schema of its value, a one-item list is
#: "a list of", ``ANY_KEY`` allows any key (output names, label names), and None is a leaf (number, text, null).
ANY_KEY = "*"
FAILED = [{"case_id": None, "error_type": None, "message": None}]
SUMMARY_SCHEMA = {
    "shard": [None], "total_cases": None, "done": [None], "skipped": [None], "failed": FAILED, "out_dir": None,
    "not_written": [{"case_id": None, "output": None, "reason": None}],
    "modality_mismatch": [{"case_id": None, "bundle_modality": None, "input_modality": None}],
    "uncertainty": {ANY_KEY: {"foreground_entropy": None, "entropy": None, "high": None}}, "review_first": [None],
}
REQUESTED = {key: None for key in ("bundle", "version", "probabilities", "overlap", "tta", "precision", "series",
                                   "uncertainty", "explain")}
SIDECAR_SCHEMA = {
    "case_id": None, "task": None, "bundle": {"name": None, "weights_sha256": None},
    "inference": {"family": None, "overlap": None, "tta": None, "postprocess": [None], "precision": None,
                  "patch_size": [None], "windows": None, "output": None,
                  "requested": {**REQUESTED, "formats": [None], "postprocess": [None]}},
    "timings_s": {ANY_KEY: None}, "input": {"shape_kji": [None], "spacing_mm": [None], "orientation": None,
                                            "components": None, "modality": None},
    "outputs": {ANY_KEY: None}, "versions": {ANY_KEY: None}, "created_utc": None, "not_written": {ANY_KEY: None},
    "volumes": [{"value": None, "name": None, "voxels": None, "volume_mm3": None, "volume_ml": None}],
}
TABLE_SCHEMA = [{"value": None, "name": None, "voxels": None, "volume_mm3": None, "volume_ml": None}]


def walk(value: Any, schema: Any, where: str) -> list[str]:
    """Every place in ``value`` that the schema does not allow, and every text holding a canary."""
    problems: list[str] = []
    if isinstance(value, dict):
        if not isinstance(schema, dict):
            return [f"{where}: an object where {schema!r} is allowed"]
        for key, item in value.items():
            if key not in schema and ANY_KEY not in schema:
                problems.append(f"{where}.{key}: key not in the allow-list")
                continue
            problems += walk(item, schema.get(key, schema.get(ANY_KEY)), f"{where}.{key}")
    elif isinstance(value, list):
        if not isinstance(schema, list):
            return [f"{where}: a list where {schema!r} is allowed"]
        for n, item in enumerate(value):
            problems += walk(item, schema[0], f"{where}[{n}]")
    else:
        if schema is not None:
            problems.append(f"{where}: a leaf where {schema!r} is expected")
        problems += [f"{where}: holds {canary!r}" for canary in ALL_CANARIES if canary in str(value)]
    return problems


def canary_series(folder: Path) -> None:
    import pydicom

    pixels = np.random.default_rng(1).normal(0, 10, size=(8, 20, 20)).round()
    pixels[2:6, 5:12, 6:14] = 1000
    for path in write_dicom_series(folder, pixels.astype(np.int16), modality="MR", intercept=0.0,
                                   description=TEXT_CANARIES["SeriesDescription"]):
        ds = pydicom.dcmread(path)
        for keyword, value in TEXT_CANARIES.items():
            setattr(ds, keyword, value)
        ds.save_as(path)


def test_batch_outputs_hold_exactly_the_allow_list_and_no_header_text(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from MedAnalysisLib.cli import main
    from MedAnalysisLib.privacy import forget_all

    forget_all()  # nothing remembered by earlier tests helps here
    canary_series(tmp_path / "study" / "scan1")
    (tmp_path / "files").mkdir()
    _truncated(tmp_path / "files")
    good_case(tmp_path / "files" / "z.nii.gz", 3)
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["predict", str(shared_cube_bundle()), str(tmp_path / "study"), str(tmp_path / "files"),
                 "--out", str(out), "--format", "nifti", "--format", "seg.nrrd", "--format", "dicom-seg",
                 "--progress", "jsonl"])
    captured = capsys.readouterr()
    assert code == 1  # the truncated file failed; DICOM SEG cannot be made from the NIfTI case
    messages = [json.loads(line) for line in captured.out.splitlines()]
    result = messages[-1]
    assert result["type"] == "result" and result["done"] == ["study_scan1", "z"]
    assert [f["case_id"] for f in result["failed"]] == ["b"]
    for text in (captured.out, captured.err):
        assert not [canary for canary in ALL_CANARIES if canary in text]
    problems: list[str] = []
    schemas = {"batch_summary.json": SUMMARY_SCHEMA, "study_scan1.json": SIDECAR_SCHEMA, "z.json": SIDECAR_SCHEMA,
               "study_scan1_table.json": TABLE_SCHEMA, "z_table.json": TABLE_SCHEMA}
    assert sorted(p.name for p in out.glob("*.json")) == sorted(schemas)
    for name, schema in schemas.items():
        problems += walk(json.loads((out / name).read_text()), schema, name)
    envelope = ("type", "protocol")  # the JSON-lines message's own keys; the rest is the summary
    problems += walk({k: v for k, v in result.items() if k not in envelope}, SUMMARY_SCHEMA, "result message")
    assert problems == []
    assert json.loads((out / "study_scan1.json").read_text())["input"]["modality"] == "MR"
    for path in out.iterdir():  # nor in any other output but the DICOM SEG, which files the patient module
        if not path.name.endswith("_seg.dcm"):
            assert not [c for c in ALL_CANARIES if c.encode() in path.read_bytes()], path.name


def test_header_text_in_a_volume_never_reaches_the_model_or_the_writers(tmp_path: Path) -> None:
    from MedAnalysisLib.inference.batch import passed_metadata
    from MedAnalysisLib.privacy import forget_all, redact

    forget_all()
    volume = Volume(np.zeros((2, 3, 4), np.float32), metadata={
        "Modality": "PHI^CANARY", "SeriesDescription": "CANARY-SERIES-DESCRIPTION", "SeriesInstanceUID": "1.2.3",
        "StudyInstanceUID": "CANARY-ID-7731", "FrameOfReferenceUID": "1.2.4", "source_files": ["x.dcm"],
        "ProtocolName": "CANARY-PROTOCOL"})
    kept = passed_metadata(volume).metadata
    assert kept == {"SeriesInstanceUID": "1.2.3", "FrameOfReferenceUID": "1.2.4", "source_files": ["x.dcm"]}
    assert redact("see CANARY-PROTOCOL") == "see [patient data]"  # remembered: no later message quotes it
    forget_all()


# ------------------------------------------------------------------------------------------------ modality
def ct_series(folder: Path) -> Path:
    pixels = np.random.default_rng(5).normal(0, 10, size=(6, 16, 18)).round()
    write_dicom_series(folder, pixels.astype(np.int16), modality="CT")
    return folder


def test_a_modality_mismatch_is_refused_unless_allowed_and_then_warned(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from MedAnalysisLib.cli import main

    ct_series(tmp_path / "study" / "ct")
    out = tmp_path / "out"
    bundle_path = str(shared_cube_bundle())  # an MR bundle (its plan was measured on MR)
    capsys.readouterr()
    assert main(["predict", bundle_path, str(tmp_path / "study"), "--out", str(out), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: expected MR input for this bundle")
    assert "got 1 case(s) of another modality: study_ct (CT)" in err[0] and "--allow-modality-mismatch" in err[0]
    assert not out.exists()
    assert main(["predict", bundle_path, str(tmp_path / "study"), "--out", str(out), "--allow-modality-mismatch",
                 "--progress", "jsonl"]) == 0
    messages = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    warnings = [m["message"] for m in messages if m["type"] == "log" and m["level"] == "warning"]
    assert warnings == ["study_ct: modality mismatch: the bundle expects MR images, this case is CT; its results may "
                        "be wrong (run on purpose with --allow-modality-mismatch)"]
    assert messages[-1]["modality_mismatch"] == [{"case_id": "study_ct", "bundle_modality": "MR",
                                                  "input_modality": "CT"}]


def test_the_modality_an_msd_dataset_states_is_compared_and_unknown_is_not_judged(tmp_path: Path,
                                                                                 bundle: Any) -> None:
    from helpers_inference import write_cube_msd

    ct = write_cube_msd(tmp_path / "Task98_CT", n=1, modality="CT")
    with pytest.raises(InputError, match=r"expected MR input .* got 1 case\(s\) of another modality: box_000 \(CT\)"):
        run_batch(bundle, [ct], tmp_path / "out")
    mr = write_cube_msd(tmp_path / "Task97_MR", n=1, modality="T2")  # an MR sequence name (nnU-Net style)
    assert run_batch(bundle, [mr], tmp_path / "out_mr").modality_mismatch == []
    files = two_cases(tmp_path / "files")  # NIfTI without metadata: no judgement, no warning
    summary = run_batch(bundle, [files], tmp_path / "out_files")
    assert summary.done == ["a", "c"] and summary.modality_mismatch == []


def test_a_dicom_file_whose_modality_only_its_loaded_header_tells_fails_as_its_own_case(tmp_path: Path,
                                                                                       bundle: Any) -> None:
    files = ct_series(tmp_path / "ct")
    first = sorted(files.iterdir())[0]
    folder = two_cases(tmp_path / "files")
    summary = run_batch(bundle, [folder, first], tmp_path / "out")
    assert summary.done == ["a", "c"]
    assert [(f["case_id"], f["error_type"]) for f in summary.failed] == [("slice000", "InputError")]
    assert summary.failed[0]["message"].startswith("expected MR input for this bundle")


def test_the_worker_collects_the_warnings_for_the_panel(tmp_path: Path) -> None:
    from MedAnalysisLib.worker import WorkerJob

    ct_series(tmp_path / "study" / "ct")
    job = WorkerJob(["predict", str(shared_cube_bundle()), str(tmp_path / "study"), "--out", str(tmp_path / "out"),
                     "--allow-modality-mismatch"])
    assert job.wait(timeout=240) == 0
    job.poll()
    assert [w.split(":")[0] + ": " + w.split(": ", 2)[1] for w in job.warnings] == ["study_ct: modality mismatch"]
    assert job.result is not None and job.result["modality_mismatch"][0]["input_modality"] == "CT"


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path: Path, bundle: Any) -> None:
    cases = two_cases(tmp_path / "cases")
    (tmp_path / "out").write_text("mine")
    with pytest.raises(InputError, match="expected --out to name a folder, got the file 'out'"):
        run_batch(bundle, [cases], tmp_path / "out")
    assert (tmp_path / "out").read_text() == "mine"
