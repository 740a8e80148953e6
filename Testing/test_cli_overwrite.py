"""One overwrite policy for every command (issue 20, item 7): an existing output is refused (exit code 2, before any
work) unless ``--overwrite``; a path holding what the command never writes is refused even then, so nothing the
command did not create is deleted; ``train`` resumes its own checkpoint and ``predict`` skips only the cases the same
bundle and options made.

Each hostile output is built here, in ``tmp_path``; the files the user had are compared byte for byte afterwards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_cli import run_cli
from helpers_inference import cube_volume, shared_cube_bundle, write_cube_msd

from MedAnalysisLib.cli import build_parser, main
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.io import write_volume
from MedAnalysisLib.volume import Volume


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(path: Path) -> Path:
    """A folder of someone's own files, where a command might be told to write."""
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "plan.txt").write_text("my own notes")
    (path / "scan.nii.gz").write_bytes(b"not ours")
    return path


def fake_bundle(path: Path) -> Path:
    """A finished bundle as far as the policy can tell (a valid bundle.json, nothing but bundle files), with bytes to
    compare."""
    from helpers_inference import make_cube_plan

    from MedAnalysisLib.bundles import BundleConfig, default_labels

    path.mkdir(parents=True)
    (path / "bundle.json").write_text(BundleConfig(
        name="b", task="segmentation", family="unet3d", hparams={"n_classes": 2}, plan=make_cube_plan(),
        labels=default_labels(["background", "organ"]), input={"channels": [{"name": "image", "modality": "MR"}]},
    ).to_json())
    (path / "model.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n weights")
    return path


def write_case(folder: Path, name: str = "case00", seed: int = 0) -> Path:
    image, _ = cube_volume((12, 14, 16), np.random.default_rng(seed))
    return write_volume(Volume(image, spacing=(1.5, 1.5, 1.5)), folder / f"{name}.nii.gz")


# ------------------------------------------------------------------------------------------- bundles
def test_train_refuses_a_finished_bundle_unless_overwrite(tmp_path: Path) -> None:
    msd = write_cube_msd(tmp_path / "Task01")
    bundle = fake_bundle(tmp_path / "bundle")
    before = snapshot(bundle)
    argv = ["train", str(msd), "--task", "segmentation", "--model", "unet3d", "--out", str(bundle)]
    completed, heavy = run_cli(tmp_path, *argv)
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "got an existing bundle at" in completed.stderr and "pass --overwrite" in completed.stderr
    assert heavy == [] and snapshot(bundle) == before
    args = build_parser().parse_args([*argv, "--overwrite"])
    args.validate(args)  # with --overwrite the run may replace it (training itself is the train tests' business)
    args = build_parser().parse_args([*argv[:-1], str(tmp_path / "new-bundle")])
    args.validate(args)  # a new path is fine, and so is an empty folder
    (tmp_path / "empty").mkdir()
    args = build_parser().parse_args([*argv[:-1], str(tmp_path / "empty")])
    args.validate(args)


@pytest.mark.parametrize("command", ["train", "configure", "ensemble"])
def test_a_bundle_never_replaces_other_files_even_with_overwrite(tmp_path: Path, command: str) -> None:
    target = user_folder(tmp_path / "results")
    before = snapshot(target)
    (tmp_path / "report.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: not a bundle
    source = shared_cube_bundle()
    argv = {
        "train": ["train", str(write_cube_msd(tmp_path / "Task01")), "--task", "segmentation", "--model", "unet3d"],
        "configure": ["configure", str(source), "--tta", "on"],
        "ensemble": ["ensemble", str(source), str(source)],
    }[command]
    for out in (target, tmp_path / "report.zip"):
        assert main([*argv, "--out", str(out), "--overwrite", "--progress", "none"]) == 2
    assert snapshot(target) == before
    assert (tmp_path / "report.zip").read_bytes() == b"PK\x05\x06" + b"\0" * 18


def test_configure_refuses_an_existing_bundle_unless_overwrite(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    source = shared_cube_bundle()
    out = tmp_path / "tuned"
    assert main(["configure", str(source), "--out", str(out), "--tta", "on", "--progress", "none"]) == 0
    first = json.loads((out / "bundle.json").read_text())
    assert first["inference"]["tta"] is True
    capsys.readouterr()
    assert main(["configure", str(source), "--out", str(out), "--tta", "off", "--progress", "none"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert json.loads((out / "bundle.json").read_text()) == first  # untouched
    assert main(["configure", str(source), "--out", str(out), "--tta", "off", "--overwrite",
                 "--progress", "none"]) == 0
    assert json.loads((out / "bundle.json").read_text())["inference"]["tta"] is False
    # the source is never the output, with or without --overwrite
    assert main(["configure", str(out), "--out", str(out), "--tta", "on", "--overwrite", "--progress", "none"]) == 2
    assert "other than the source bundle" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- files
def test_convert_refuses_an_existing_file_unless_overwrite(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    scan = write_case(tmp_path)
    out = tmp_path / "converted.nrrd"
    out.write_bytes(b"someone's file")
    capsys.readouterr()
    assert main(["convert", str(scan), str(out), "--progress", "none"]) == 2
    assert "got an existing file at" in capsys.readouterr().err and out.read_bytes() == b"someone's file"
    assert main(["convert", str(scan), str(out), "--overwrite", "--progress", "none"]) == 0
    assert out.read_bytes().startswith(b"NRRD")
    folder = user_folder(tmp_path / "a-folder.nii.gz")
    before = snapshot(folder)
    assert main(["convert", str(scan), str(folder), "--overwrite", "--progress", "none"]) == 2
    assert snapshot(folder) == before


def test_plan_refuses_existing_outputs_before_reading_any_case(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    msd = write_cube_msd(tmp_path / "Task01")
    plan = tmp_path / "plan.json"
    plan.write_text("my plan")
    capsys.readouterr()
    # DATA is read only after the outputs passed: a refused run never reads a case (a missing DATA shows it)
    assert main(["plan", str(tmp_path / "missing"), "--out", str(plan), "--progress", "none"]) == 2
    assert "--out" in capsys.readouterr().err and plan.read_text() == "my plan"
    assert main(["plan", str(msd), "--fingerprint-out", str(plan), "--progress", "none"]) == 2
    assert plan.read_text() == "my plan"
    assert main(["plan", str(msd), "--out", str(plan), "--overwrite", "--progress", "none"]) == 0
    assert json.loads(plan.read_text())["task"] == "segmentation"


# ------------------------------------------------------------------------------------------- folders
def test_predict_resumes_only_what_the_same_bundle_and_options_made(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Before, any existing sidecar made predict skip the case: a re-run with other options (or another bundle)
    reported success and left the old outputs."""
    cases = tmp_path / "cases"
    write_case(cases, "case00", 0)
    write_case(cases, "case01", 1)
    out = tmp_path / "out"
    bundle = shared_cube_bundle()
    base = ["predict", str(bundle), str(cases), "--out", str(out), "--progress", "jsonl"]

    def run(*extra: str) -> tuple[int, dict]:
        capsys.readouterr()
        code = main([*base, *extra])
        messages = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        return code, messages[-1]

    code, result = run()
    assert code == 0 and result["done"] == ["case00", "case01"]
    made = snapshot(out)
    code, result = run()  # the same bundle and options: both skipped, nothing rewritten
    assert code == 0 and result["skipped"] == ["case00", "case01"] and result["done"] == []
    assert {k: v for k, v in snapshot(out).items() if "batch_summary" not in k} == {
        k: v for k, v in made.items() if "batch_summary" not in k}
    code, result = run("--tta", "on")  # other options: refused before any case, the outputs stay as they were
    assert code == 2 and result["type"] == "error"
    assert "case00: made with TTA off, now with TTA on" in result["message"] and "--overwrite" in result["message"]
    assert (out / "case00.json").read_bytes() == made["case00.json"]
    assert (out / "case01_label.nii.gz").read_bytes() == made["case01_label.nii.gz"]
    code, result = run("--tta", "on", "--overwrite")
    assert code == 0 and result["done"] == ["case00", "case01"]
    assert json.loads((out / "case00.json").read_text())["inference"]["requested"]["tta"] is True
    code, result = run("--tta", "on")  # now the same options again: skipped
    assert code == 0 and result["skipped"] == ["case00", "case01"]
    # a sidecar another bundle wrote, and one without recorded options (an older version), are not skipped
    record = json.loads((out / "case01.json").read_text())
    record["bundle"]["weights_sha256"] = "0" * 64
    (out / "case01.json").write_text(json.dumps(record))
    del record["inference"]["requested"]
    record["bundle"]["weights_sha256"] = json.loads((out / "case00.json").read_text())["bundle"]["weights_sha256"]
    (out / "case00.json").write_text(json.dumps(record))
    code, result = run("--tta", "on")
    assert code == 2
    assert "case00: made by a version that did not record its options" in result["message"]
    assert "case01: made by another bundle" in result["message"]
    # outputs that no sidecar (nor a stopped run's pending record) lists are not known as ours: --overwrite
    (out / "case01.json").unlink()
    (out / "case00.json").unlink()
    code, result = run("--tta", "on")
    assert code == 2 and "case00_label.nii.gz" in result["message"] and "--overwrite" in result["message"]
    code, result = run("--tta", "on", "--overwrite")
    assert code == 0 and result["done"] == ["case00", "case01"]


def test_evaluate_refuses_an_earlier_evaluation_unless_overwrite(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from MedAnalysisLib.cli.evaluate import EVALUATION_FILES

    msd = write_cube_msd(tmp_path / "Task01")
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    argv = ["evaluate", str(shared_cube_bundle()), str(msd), "--out", str(out), "--bootstrap", "20",
            "--progress", "none"]
    assert main(argv) == 0
    written = {p.name for p in out.iterdir()} - {"mine.txt"}
    assert written and written <= set(EVALUATION_FILES)  # the policy guards every file an evaluation writes
    summary = (out / "summary.json").read_bytes()
    capsys.readouterr()
    completed, heavy = run_cli(tmp_path, *argv)
    assert completed.returncode == 2 and "pass --overwrite" in completed.stderr and heavy == []
    assert (out / "summary.json").read_bytes() == summary
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "mine.txt").read_text() == "keep me"


def test_demo_replaces_only_an_earlier_demo_and_only_with_overwrite(tmp_path: Path) -> None:
    def validate(out: Path, *extra: str) -> None:
        args = build_parser().parse_args(["demo", "--out", str(out), *extra])
        args.validate(args)

    validate(tmp_path / "new")
    validate(user_folder(tmp_path / "unrelated"))  # no demo name there: nothing of it is touched
    earlier = tmp_path / "earlier"
    (earlier / "data" / "train").mkdir(parents=True)
    (earlier / "data" / "train" / "dataset.json").write_text(json.dumps({"name": "MedAnalysisPhantom"}))
    (earlier / "plan.json").write_text("{}")
    with pytest.raises(InputError, match="earlier demo run.*pass --overwrite"):
        validate(earlier)
    validate(earlier, "--overwrite")
    theirs = user_folder(tmp_path / "theirs")
    (theirs / "data").mkdir()
    (theirs / "data" / "train.csv").write_text("their data")
    before = snapshot(theirs)
    with pytest.raises(InputError, match="refused even with --overwrite"):
        validate(theirs, "--overwrite")
    assert main(["demo", "--quick", "--out", str(theirs), "--overwrite", "--progress", "none"]) == 2
    assert snapshot(theirs) == before


def test_ensemble_refuses_an_existing_bundle_unless_overwrite(tmp_path: Path) -> None:
    existing = fake_bundle(tmp_path / "ensemble")
    before = snapshot(existing)
    completed, heavy = run_cli(tmp_path, "ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                               str(existing))
    assert completed.returncode == 2 and "pass --overwrite" in completed.stderr and heavy == []
    assert snapshot(existing) == before
    shutil.rmtree(existing)
