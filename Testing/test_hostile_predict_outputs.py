"""``medanalysis predict`` against a careless or hostile user: failures said on stderr with ``--progress none``,
damaged sidecar values refused before any case runs, outputs of an earlier run with other options removed by
``--overwrite`` (only those), and refusals worded in command-line terms with values quoted once, as typed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_inference import cube_volume, shared_cube_bundle, train_classifier_bundle

from MedAnalysisLib.cli import main
from MedAnalysisLib.io import write_volume
from MedAnalysisLib.progress import Reporter
from MedAnalysisLib.volume import Volume


def write_cases(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    for m in range(n):
        image, _ = cube_volume((12, 14, 16), rng)
        write_volume(Volume(image, spacing=(1.5, 1.5, 1.5)), folder / f"case{m:02d}.nii.gz")
    return folder


def predict(bundle: Path, *argv: str) -> int:
    return main(["predict", str(bundle), *argv, "--progress", "none"])


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and not p.is_symlink()}


# ------------------------------------------------------------------------------------------------ --progress none
BROKEN = {
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:60]),
    "not an image": lambda path: path.write_bytes(b"\x1b[2J not a NIfTI file at all"),
    "a folder": lambda path: (path.unlink(), path.mkdir()),
}


@pytest.mark.parametrize("damage", sorted(BROKEN))
def test_progress_none_still_says_why_a_case_failed(tmp_path: Path, damage: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cases = write_cases(tmp_path / "cases", 3)
    BROKEN[damage](cases / "case01.nii.gz")
    capsys.readouterr()
    assert predict(shared_cube_bundle(), str(cases), "--out", str(tmp_path / "out")) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == ""
    assert len(lines) == 2, lines  # one line for the failed case, one closing line; nothing for progress
    assert lines[0].startswith("warning: case01: failed (") and "\x1b" not in captured.err
    assert lines[1] == "error: 1 of 3 cases failed, see batch_summary.json"


def test_progress_none_drops_information_only() -> None:
    import contextlib
    import io

    stream = io.StringIO()
    with contextlib.redirect_stderr(stream):
        reporter = Reporter("none")
        reporter.progress("cases", 1, 3, "case01")
        reporter.log("case00: done in 1.0 s")
        reporter.log("case01: failed (x\x1b[2J)", "warning")
    assert stream.getvalue() == "warning: case01: failed (x\\x1b[2J)\n"


# ------------------------------------------------------------------------------------------------ damaged sidecars
def _set_entropy(value: object):  # noqa: ANN202 - a small editor of the record
    def edit(record: dict) -> None:
        record["uncertainty"]["foreground_entropy"] = value
    return edit


SIDECAR_DAMAGE = {
    "entropy text": (_set_entropy("abc"), "uncertainty.foreground_entropy 'abc', expected a number in [0, 1]"),
    "entropy NaN": (_set_entropy(float("nan")), "uncertainty.foreground_entropy NaN, expected a number in [0, 1]"),
    "entropy negative": (_set_entropy(-5), "uncertainty.foreground_entropy -5, expected a number in [0, 1]"),
    "entropy null": (_set_entropy(None), "uncertainty.foreground_entropy null, expected a number in [0, 1]"),
    "entropy true": (_set_entropy(True), "uncertainty.foreground_entropy true, expected a number in [0, 1]"),
    "entropy above 1": (_set_entropy(1.5), "uncertainty.foreground_entropy 1.5, expected a number in [0, 1]"),
    "entropy deleted": (lambda r: r["uncertainty"].pop("foreground_entropy"),
                        "no uncertainty.foreground_entropy, expected a number in [0, 1]"),
    "record deleted": (lambda r: r.pop("uncertainty"), "uncertainty null, expected a record with foreground_entropy"),
    "record a list": (lambda r: r.update(uncertainty=[0.2]), "uncertainty [0.2], expected a record"),
    "task changed": (lambda r: r.update(task="classification"), "no uncertainty.entropy"),
    "task forged": (lambda r: r.update(task="x\x1b[2J"), "task 'x\\x1b[2J', expected 'segmentation'"),
    "table unlisted": (lambda r: r["outputs"].pop("table_csv"), "lists table_csv null, expected 'case00_table.csv'"),
    "map unlisted": (lambda r: r["outputs"].pop("uncertainty_entropy"),
                     "lists uncertainty_entropy null, expected 'case00_uncertainty.nii.gz'"),
    "label elsewhere": (lambda r: r["outputs"].update(label_nifti="../elsewhere.nii.gz"),
                        "lists 'label_nifti': '../elsewhere.nii.gz', expected a file name of case case00"),
    "other case's file": (lambda r: r["outputs"].update(table_json="case01_table.json"),
                          "lists 'table_json': 'case01_table.json', expected a file name of case case00"),
    "outputs a list": (lambda r: r.update(outputs=["case00_label.nii.gz"]), "expected a record of file names"),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Cases and a finished --uncertainty run over them (copied by each test that damages it)."""
    root = tmp_path_factory.mktemp("finished")
    cases = write_cases(root / "cases", 2)
    assert predict(shared_cube_bundle(), str(cases), "--out", str(root / "out"), "--uncertainty") == 0
    return cases, root / "out"


def test_every_damaged_summary_value_is_refused_before_any_case_runs(tmp_path: Path, finished: tuple[Path, Path],
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cases, made = finished
    for variant, (edit, expected) in SIDECAR_DAMAGE.items():
        out = tmp_path / variant.replace(" ", "_").replace("'", "")
        shutil.copytree(made, out)
        record = json.loads((out / "case00.json").read_text())
        edit(record)
        (out / "case00.json").write_text(json.dumps(record))
        before = files(out)
        capsys.readouterr()
        assert predict(shared_cube_bundle(), str(cases), "--out", str(out), "--uncertainty") == 2, variant
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: expected the finished cases in"), (variant, err)
        assert "case00: its sidecar case00.json " in err[0] and expected in err[0], (variant, err[0])
        assert "--overwrite" in err[0] and "\x1b" not in err[0]
        assert files(out) == before, variant  # refused before any case ran: nothing written, summary included
    out = tmp_path / "entropy_text"  # --overwrite recomputes the case, which is in the summary again
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out), "--uncertainty", "--overwrite") == 0
    summary = json.loads((out / "batch_summary.json").read_text())
    assert sorted(summary["uncertainty"]) == ["case00", "case01"] and summary["done"] == ["case00", "case01"]


# ------------------------------------------------------------------------------------------------ --overwrite
def test_overwrite_with_other_options_removes_only_what_the_earlier_run_listed(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "cases", 2)
    out = tmp_path / "out"
    bundle = shared_cube_bundle()
    assert predict(bundle, str(cases), "--out", str(out), "--uncertainty", "--tta", "on", "--probabilities",
                   "--format", "nifti", "--format", "nrrd", "--format", "seg.nrrd") == 0
    earlier = set(files(out))
    gone = {name for name in earlier
            if name.endswith(("_uncertainty.nii.gz", "_disagreement.nii.gz", ".nrrd")) or "_probability_" in name}
    assert len(gone) == 10  # per case: 2 maps, 2 label formats, 1 probability map
    # what MedAnalysis did not list, or must never remove, is planted next to the outputs
    (out / "notes.txt").write_text("mine")
    (out / "case00_probability_7_mine.nii.gz").write_text("not listed by any sidecar")
    (tmp_path / "target.nii.gz").write_text("outside --out")
    (out / "case00_probability_9_link.nii.gz").symlink_to(tmp_path / "target.nii.gz")
    record = json.loads((out / "case00.json").read_text())
    record["outputs"].update(extra="notes.txt", link="case00_probability_9_link.nii.gz", other="case01_label.nii.gz",
                             up="../target.nii.gz")
    (out / "case00.json").write_text(json.dumps(record))
    assert predict(bundle, str(cases), "--out", str(out), "--tta", "off", "--overwrite") == 0
    now = set(files(out))
    assert now == (earlier - gone) | {"notes.txt", "case00_probability_7_mine.nii.gz"}
    assert {"case00_label.nii.gz", "case01_label.nii.gz", "case00_table.csv", "case00.json"} <= now
    assert (out / "case00_probability_9_link.nii.gz").is_symlink()
    assert (tmp_path / "target.nii.gz").read_text() == "outside --out"
    listed = set(json.loads((out / "case00.json").read_text())["outputs"].values())
    leftovers = {n for n in now if n.startswith("case00") and n not in listed} - {"case00.json"}
    assert leftovers == {"case00_probability_7_mine.nii.gz"}  # only the file no sidecar of ours listed


def test_without_overwrite_nothing_is_removed(tmp_path: Path, finished: tuple[Path, Path]) -> None:
    cases, made = finished
    out = tmp_path / "out"
    shutil.copytree(made, out)
    before = files(out)
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out)) == 2
    assert files(out) == before


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_classifier_bundle(tmp_path_factory.mktemp("c") / "cnn3d", "cnn3d", seed=2)


def write_scan(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(5).normal(0, 1, (16, 16, 16)).astype(np.float32)
    return write_volume(Volume(image, spacing=(1.0, 1.0, 1.0)), folder / "scan.nii.gz")


def test_explanation_record_damage_and_overwrite_without_explain(tmp_path: Path, classifier: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    write_scan(tmp_path / "cases")
    out = tmp_path / "out"
    argv = (str(tmp_path / "cases"), "--out", str(out), "--explain", "--explain-class", "box", "--uncertainty")
    assert predict(classifier, *argv) == 0
    good = (out / "scan.json").read_text()
    damage = {
        "target forged": (lambda r: r["explanation"].update(target_name="no box"),
                          "explanation.target_name 'no box', expected 'box'"),
        "record deleted": (lambda r: r.pop("explanation"), "explanation null, expected a record"),
        "value text": (lambda r: r["explanation"].update(target_value="1"), "target_value '1' and target_name"),
        "heatmap unlisted": (lambda r: r["outputs"].pop("explanation"),
                             "lists explanation null, expected 'scan_explanation.nii.gz'"),
        "entropy text": (lambda r: r["uncertainty"].update(entropy="abc"), "uncertainty.entropy 'abc', expected"),
    }
    for variant, (edit, expected) in damage.items():
        record = json.loads(good)
        edit(record)
        (out / "scan.json").write_text(json.dumps(record))
        capsys.readouterr()
        assert predict(classifier, *argv) == 2, variant
        err = capsys.readouterr().err
        assert "scan: its sidecar scan.json " in err and expected in err, (variant, err)
    (out / "scan.json").write_text(good)
    capsys.readouterr()
    assert predict(classifier, *argv[:3], "--uncertainty") == 2
    assert "scan: made with --explain-class 'box', now without --explain" in capsys.readouterr().err
    assert predict(classifier, *argv[:3], "--uncertainty", "--overwrite") == 0
    assert not (out / "scan_explanation.nii.gz").exists()
    assert "explanation" not in json.loads((out / "scan.json").read_text())["outputs"]


# ------------------------------------------------------------------------------------------------ messages
def test_resume_refusals_speak_in_options(tmp_path: Path, finished: tuple[Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cases, made = finished
    out = tmp_path / "out"
    shutil.copytree(made, out)
    capsys.readouterr()
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out), "--tta", "on") == 2
    err = capsys.readouterr().err
    assert "case00: made with TTA off, now with TTA on; made with --uncertainty, now without --uncertainty" in err
    assert "True" not in err and "None" not in err and "(now" not in err
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out), "--uncertainty", "--probabilities",
                   "--format", "nrrd") == 2
    err = capsys.readouterr().err
    assert "made with --format nifti, now with --format nrrd" in err
    assert "made without --probabilities, now with --probabilities" in err


def test_a_forged_version_is_quoted_once(tmp_path: Path, finished: tuple[Path, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    cases, made = finished
    out = tmp_path / "out"
    shutil.copytree(made, out)
    record = json.loads((out / "case00.json").read_text())
    record["inference"]["requested"]["version"] = "ok\x1b[2J\\n"
    (out / "case00.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out), "--uncertainty") == 2
    err = capsys.readouterr().err
    assert "made by MedAnalysis 'ok\\x1b[2J\\n' (this is " in err and "\\\\" not in err and "\x1b" not in err


@pytest.mark.parametrize("typed", [" box", "box ", "Box", "box\x1b[2J", "\\x1b", ""])
def test_an_explain_class_is_quoted_as_typed(tmp_path: Path, classifier: Path, typed: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    write_scan(tmp_path / "cases")
    capsys.readouterr()
    assert predict(classifier, str(tmp_path / "cases"), "--out", str(tmp_path / "out"), "--explain",
                   "--explain-class", typed) == 2
    err = capsys.readouterr().err
    shown = typed.replace("\x1b", "\\x1b")
    assert err == (f"error: expected a class to explain among ['box', 'no box'] (name or value [0, 1]), got "
                   f"--explain-class '{shown}'\n")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ pending records
MANUAL = b"MY MANUAL SEGMENTATION"


def _one_case(tmp_path: Path, readable: bool = True) -> Path:
    """A folder with one case, ``case00``: a real scan, or a file that is not an image."""
    cases = write_cases(tmp_path / "cases", 1)
    if not readable:
        (cases / "case00.nii.gz").write_bytes(b"not an image")
    return cases


def _with_manual_file(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "case00_label.nii.gz").write_bytes(MANUAL)  # the user's own file, under a name predict writes
    return out


def _refused_but_kept(cases: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run with the same options and no --overwrite is refused (exit 2, naming the file); the file is untouched."""
    capsys.readouterr()
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "error: expected --out without files MedAnalysis did not write" in err and "case00_label.nii.gz" in err
    assert (out / "case00_label.nii.gz").read_bytes() == MANUAL


def test_a_failed_case_never_claims_the_users_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _with_manual_file(tmp_path)
    bad = _one_case(tmp_path / "bad", readable=False)
    assert predict(shared_cube_bundle(), str(bad), "--out", str(out), "--overwrite") == 1
    assert not (out / ".case00.pending.json").exists() and (out / "case00_label.nii.gz").read_bytes() == MANUAL
    cases = _one_case(tmp_path)
    _refused_but_kept(cases, out, capsys)
    capsys.readouterr()
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out), "--format", "seg.nrrd") == 0
    assert (out / "case00_label.nii.gz").read_bytes() == MANUAL and "removed" not in capsys.readouterr().err
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out), "--format", "nrrd", "--overwrite") == 0
    assert (out / "case00_label.nii.gz").read_bytes() == MANUAL  # never listed as ours: kept even with --overwrite


def test_a_stop_before_the_first_output_never_claims_the_users_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import MedAnalysisLib.inference.batch as batch
    from MedAnalysisLib.errors import CancelledError

    out = _with_manual_file(tmp_path)
    cases = _one_case(tmp_path)

    def stopped(*args: object) -> None:
        raise CancelledError("stopped")

    with monkeypatch.context() as patch:
        patch.setattr(batch, "_run_case", stopped)
        with pytest.raises(CancelledError):
            batch.run_batch(shared_cube_bundle(), [cases], out, batch.BatchOptions(overwrite=True))
    assert not (out / ".case00.pending.json").exists()
    _refused_but_kept(cases, out, capsys)
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out), "--format", "seg.nrrd") == 0
    assert (out / "case00_label.nii.gz").read_bytes() == MANUAL


def _stamp_of_other_file(out: Path) -> dict[str, object]:
    """A record whose stamp was true for a file MedAnalysis wrote, since replaced by the user (same size)."""
    from MedAnalysisLib.inference.batch import note_written

    (out / "case00_label.nii.gz").write_bytes(b"x" * len(MANUAL))
    note_written(out, "case00", "case00_label.nii.gz")
    record = json.loads((out / ".case00.pending.json").read_text())
    (out / "case00_label.nii.gz").unlink()
    (out / "case00_label.nii.gz").write_bytes(MANUAL)
    os.utime(out / "case00_label.nii.gz", ns=(record["written"]["case00_label.nii.gz"]["mtime_ns"] - 10**12,) * 2)
    return record


FORGED_RECORDS = {
    "earlier layout, names only": lambda out: {"case_id": "case00", "outputs": ["case00_label.nii.gz"]},
    "stamp of a replaced file": _stamp_of_other_file,
    "stamp of wrong types": lambda out: {"case_id": "case00", "written": {"case00_label.nii.gz": {
        "size": str(len(MANUAL)), "mtime_ns": "0", "inode": "0"}}},
    "stamp as a list": lambda out: {"case_id": "case00", "written": {"case00_label.nii.gz": [len(MANUAL)]}},
    "another case's record": lambda out: {"case_id": "case01", "written": {}},
}


@pytest.mark.parametrize("kind", sorted(FORGED_RECORDS))
def test_a_pending_record_that_does_not_match_its_files_claims_nothing(
        tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = _with_manual_file(tmp_path)
    cases = _one_case(tmp_path)
    record = FORGED_RECORDS[kind](out)
    (out / ".case00.pending.json").write_text(json.dumps(record))
    if record.get("case_id") == "case00":  # a record of ours: its file may be replaced, never its claims trusted
        _refused_but_kept(cases, out, capsys)
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out), "--format", "seg.nrrd",
                   "--overwrite") == 0
    assert (out / "case00_label.nii.gz").read_bytes() == MANUAL
    assert not (out / ".case00.pending.json").exists()


def _stopped_after_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, bytes]:
    """A genuine run stopped right after its label map landed (and was recorded): returns cases, out, its bytes."""
    import MedAnalysisLib.inference.batch as batch
    from MedAnalysisLib.errors import CancelledError

    cases = _one_case(tmp_path)
    out = tmp_path / "out"
    real = batch.note_written

    def stop_after_label(folder: Path, case_id: str, name: str) -> None:
        real(folder, case_id, name)
        if name.endswith("_label.nii.gz"):
            raise CancelledError("stopped")

    with monkeypatch.context() as patch:
        patch.setattr(batch, "note_written", stop_after_label)
        with pytest.raises(CancelledError):
            batch.run_batch(shared_cube_bundle(), [cases], out, batch.BatchOptions())
    assert (out / ".case00.pending.json").is_file() and not (out / "case00.json").exists()
    return cases, out, (out / "case00_label.nii.gz").read_bytes()


def test_a_stopped_runs_own_files_are_replaced_by_a_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases, out, _ = _stopped_after_label(tmp_path, monkeypatch)
    inode = (out / "case00_label.nii.gz").stat().st_ino
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out)) == 0
    assert (out / "case00_label.nii.gz").stat().st_ino != inode  # written anew, no --overwrite needed
    assert not (out / ".case00.pending.json").exists()


def test_a_stopped_runs_files_are_kept_without_overwrite_and_removed_with_it_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cases, out, label = _stopped_after_label(tmp_path, monkeypatch)
    capsys.readouterr()
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out), "--format", "seg.nrrd") == 0
    err = capsys.readouterr().err
    assert (out / "case00_label.nii.gz").read_bytes() == label  # without --overwrite nothing is removed
    assert "warning: case00: kept 1 file(s) an earlier stopped run wrote" in err
    assert "case00_label.nii.gz" in json.loads((out / ".case00.pending.json").read_text())["written"]
    assert predict(shared_cube_bundle(), str(cases), "--out", str(out), "--format", "seg.nrrd",
                   "--overwrite") == 0
    err = capsys.readouterr().err
    assert not (out / "case00_label.nii.gz").exists() and not (out / ".case00.pending.json").exists()
    assert "warning: case00: removed 1 earlier output(s) this run does not make: case00_label.nii.gz" in err
