"""Outputs that would still cost the user something (issue 18, second round of the output side).

Each hostile target is built here, tiny, in ``tmp_path``, and compared byte for byte afterwards:

* predict writing over files it did not write (a label, table, probability map or batch summary of the user's, a
  broken pending record), into or over its own inputs, and under names the file system refuses or two cases share;
* configure/ensemble ``--overwrite`` onto an "earlier bundle" that is not one (``bundle.json`` = ``{}``) or that
  also holds the user's files (a folder or a .zip);
* every command with a DATA input writing inside an input folder or over a file a dataset.json or CSV manifest
  lists, convert writing over its own input (also through a link);
* escape sequences and line breaks of output names reaching the terminal in "written to" lines;
* an ensemble of one bundle twice (the same path, a link, a copy with the same weights), outputs inside a source
  bundle.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers_inference import make_cube_plan, shared_cube_bundle, write_cube_msd

from MedAnalysisLib.bundles.storage import foreign_bundle_entries, publish
from MedAnalysisLib.cli import main
from MedAnalysisLib.errors import CancelledError, OutputError
from MedAnalysisLib.io import write_volume
from MedAnalysisLib.volume import Volume

WEIGHTS = b"\x89HDF\r\n\x1a\n not loaded by these tests"
HOSTILE = "x\x1b[31m\x1b]0;T\x07\nforged"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (links not followed) with its bytes, and every link with its target."""
    found: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = b"-> " + bytes(str(path.readlink()), "utf-8")
        elif path.is_file():
            found[key] = path.read_bytes()
    return found


def config_bundle(path: Path, *, label: str = "cube", weights: bytes = WEIGHTS) -> Path:
    """A bundle whose bundle.json is valid and whose weights are never loaded: enough for every check made before a
    model is loaded (configure, ensemble and predict read bundle.json only until then)."""
    from MedAnalysisLib.bundles import BundleConfig, LabelInfo

    config = BundleConfig(
        name="cube-finder", task="segmentation", family="unet3d",
        hparams={"n_classes": 2, "in_channels": 1, "patch_size": [16, 16, 16], "filters": [4, 8], "norm": "batch"},
        plan=make_cube_plan(), labels=(LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, label, (230, 80, 60))),
        input={"channels": [{"name": "image", "modality": "MR"}]},
        weights={"file": "model.weights.h5", "sha256": hashlib.sha256(weights).hexdigest()},
    )
    path.mkdir(parents=True)
    (path / "bundle.json").write_text(config.to_json())
    (path / "model.weights.h5").write_bytes(weights)
    (path / "training_log.csv").write_text("epoch,loss\n0,1.0\n")
    return path


def image(path: Path, seed: int = 0) -> Path:
    """A tiny image file."""
    rng = np.random.default_rng(seed)
    write_volume(Volume(rng.normal(0, 1, (6, 7, 8)).astype(np.float32), spacing=(1.5, 1.5, 1.5)), path)
    return path


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    """Run the command, expect exit code 2 with one "expected ..., got ..." line naming ``expected``."""
    capsys.readouterr()
    assert main([*argv, "--progress", "none"]) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("error: expected ") and ", got" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, (text, err)
    return err


# --------------------------------------------------------------------- predict: files it did not write
@pytest.mark.parametrize("name", ["in_label.nii.gz", "in_table.csv", "in_table.json", "in_probability_1_cube.nii.gz",
                                  "batch_summary.json", ".in.pending.json"])
def test_predict_refuses_files_it_did_not_write_before_any_work(tmp_path: Path, name: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    bundle = config_bundle(tmp_path / "cube")
    source = image(tmp_path / "in.nii.gz")
    out = tmp_path / "res"
    out.mkdir()
    (out / name).write_text("mine")
    before = snapshot(tmp_path)
    refused(["predict", str(bundle), str(source), "--out", str(out), "--probabilities"], capsys, name,
            "MedAnalysis did not write", "--overwrite")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["link", "folder"])
def test_predict_never_replaces_a_link_or_folder_under_an_output_name(tmp_path: Path, kind: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    bundle = config_bundle(tmp_path / "cube")
    source = image(tmp_path / "in.nii.gz")
    out = tmp_path / "res"
    out.mkdir()
    (tmp_path / "mine.txt").write_text("mine")
    if kind == "link":
        (out / "in_label.nii.gz").symlink_to(tmp_path / "mine.txt")
    else:
        (out / "in_table.csv").mkdir()
    before = snapshot(tmp_path)
    refused(["predict", str(bundle), str(source), "--out", str(out), "--overwrite"], capsys, "never replaced")
    assert snapshot(tmp_path) == before


def _overlapping_outs(tmp_path: Path) -> dict[str, tuple[list[Path], Path]]:
    """Inputs and an --out that is, holds or lies inside one of them."""
    imgs = tmp_path / "imgs"
    image(imgs / "a.nii.gz")
    gt = tmp_path / "gt"
    image(gt / "x.nii.gz")
    (gt / "x_label.nii.gz").write_bytes(b"the user's ground truth")
    (gt / "x.json").write_text("{}")
    image(tmp_path / "data" / "scan.nii.gz")
    manifest = tmp_path / "man.csv"
    manifest.write_text("image\ndata/scan.nii.gz\n")
    msd = write_cube_msd(tmp_path / "msd", n=1)
    return {"the input folder": ([imgs], imgs), "the folder of an input file": ([gt / "x.nii.gz"], gt),
            "inside an input folder": ([imgs], imgs / "res"), "inside the bundle": ([imgs], tmp_path / "cube" / "res"),
            "the folder of a file a manifest lists": ([manifest], tmp_path / "data"),
            "inside an MSD folder": ([msd / "dataset.json"], msd / "predictions")}


@pytest.mark.parametrize("kind", ["the input folder", "the folder of an input file", "inside an input folder",
                                  "inside the bundle", "the folder of a file a manifest lists", "inside an MSD folder"])
def test_predict_refuses_an_out_that_overlaps_an_input_even_with_overwrite(tmp_path: Path, kind: str,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bundle = config_bundle(tmp_path / "cube")
    inputs, out = _overlapping_outs(tmp_path)[kind]
    before = snapshot(tmp_path)
    refused(["predict", str(bundle), *map(str, inputs), "--out", str(out), "--overwrite"], capsys,
            "apart from the inputs")
    assert snapshot(tmp_path) == before


def test_predict_refuses_names_over_the_limit_or_shared_by_two_cases(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    long_label = config_bundle(tmp_path / "cube", label="l" * 128)
    long_input = image(tmp_path / ("c" * 200 + ".nii.gz"))
    refused(["predict", str(long_label), str(long_input), "--out", str(tmp_path / "o1"), "--probabilities"], capsys,
            "at most 255 bytes", "got 350 bytes")  # fits without --probabilities; the probability map does not
    assert not (tmp_path / "o1").exists()
    very_long = image(tmp_path / ("d" * 246 + ".nii.gz"))
    refused(["predict", str(long_label), str(very_long), "--out", str(tmp_path / "o2")], capsys, "at most 255 bytes")
    pair = tmp_path / "pair"
    image(pair / "x.nii.gz")
    image(pair / "x_table.nii.gz")  # its sidecar x_table.json is the table JSON of case x
    refused(["predict", str(long_label), str(pair), "--out", str(tmp_path / "o3")], capsys,
            "x_table.json", "belong to one case")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_predict_replaces_what_a_stopped_run_left_and_foreign_files_only_with_overwrite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A run stopped in the middle of a case leaves its pending record: the re-run knows those outputs for its own
    and needs no --overwrite; files nobody recorded need it."""
    import MedAnalysisLib.inference.batch as batch

    bundle = shared_cube_bundle()
    source = image(tmp_path / "in.nii.gz")
    out = tmp_path / "res"

    def stopped(loaded: object, case: batch.CaseInput, folder: Path, *args: object) -> float:
        (folder / f"{case.case_id}_label.nii.gz").write_bytes(b"half written")
        batch.note_written(folder, case.case_id, f"{case.case_id}_label.nii.gz")  # as the writer records it
        raise CancelledError("stopped")

    real = batch._run_case
    monkeypatch.setattr(batch, "_run_case", stopped)
    with pytest.raises(CancelledError):
        batch.run_batch(bundle, [source], out)
    assert (out / ".in.pending.json").is_file() and not (out / "in.json").exists()
    monkeypatch.setattr(batch, "_run_case", real)
    summary = batch.run_batch(bundle, [source], out)
    assert summary.done == ["in"] and not summary.failed
    assert (out / "in_label.nii.gz").read_bytes() != b"half written" and not (out / ".in.pending.json").exists()
    (out / "in.json").unlink()  # the sidecar gone, nothing records the outputs: they are no longer known as ours
    refused(["predict", str(bundle), str(source), "--out", str(out)], capsys, "in_label.nii.gz", "--overwrite")
    assert main(["predict", str(bundle), str(source), "--out", str(out), "--overwrite", "--progress", "none"]) == 0
    assert json.loads((out / "in.json").read_text())["outputs"]["label_nifti"] == "in_label.nii.gz"


# --------------------------------------------------------------------- configure / ensemble --overwrite
def _not_quite_bundles(tmp_path: Path) -> dict[str, Path]:
    """Targets with a marker file that are not (only) an earlier bundle."""
    notes = shutil.copytree(config_bundle(tmp_path / "src"), tmp_path / "realb")
    (notes / "NOTES.md").write_text("precious")
    (notes / "eval").mkdir()
    (notes / "eval" / "report.txt").write_text("x")
    empty_marker = tmp_path / "emptyb"
    empty_marker.mkdir()
    (empty_marker / "bundle.json").write_text("{}")
    (empty_marker / "thesis.docx").write_text("years of work")
    with zipfile.ZipFile(tmp_path / "thesis.zip", "w") as archive:
        archive.writestr("bundle.json", "{}")
        archive.writestr("my_thesis.docx", "years of work")
    with zipfile.ZipFile(tmp_path / "extra.zip", "w") as archive:
        for item in (tmp_path / "src").iterdir():
            archive.write(item, f"b/{item.name}")
        archive.writestr("b/NOTES.md", "precious")
    ensemble = tmp_path / "ens"
    ensemble.mkdir()
    (ensemble / "ensemble.json").write_text(json.dumps({"schema_version": 1, "name": "e", "members": [
        {"folder": f"member-{n}", "weights_sha256": hashlib.sha256(WEIGHTS).hexdigest()} for n in range(2)]}))
    for n in range(2):
        shutil.copytree(tmp_path / "src", ensemble / f"member-{n}")
    (ensemble / "member-1" / "notes.txt").write_text("mine")
    return {"bundle with other files": notes, "bundle.json {} with other files": empty_marker,
            "zip with bundle.json {}": tmp_path / "thesis.zip", "zipped bundle with other files": tmp_path / "extra.zip",
            "ensemble member with other files": ensemble}


@pytest.mark.parametrize("command", ["configure", "ensemble"])
@pytest.mark.parametrize("kind", ["bundle with other files", "bundle.json {} with other files",
                                  "zip with bundle.json {}", "zipped bundle with other files",
                                  "ensemble member with other files"])
def test_overwrite_never_replaces_a_bundle_holding_other_files(tmp_path: Path, command: str, kind: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    target = _not_quite_bundles(tmp_path)[kind]
    one = config_bundle(tmp_path / "one")
    two = config_bundle(tmp_path / "two", weights=WEIGHTS + b"2")
    before = snapshot(tmp_path)
    argv = ["configure", str(one), "--tta", "on"] if command == "configure" else ["ensemble", str(one), str(two)]
    err = refused([*argv, "--out", str(target), "--overwrite"], capsys, "even with --overwrite")
    if "other files" in kind and "{}" not in kind:
        assert "NOTES.md" in err or "notes.txt" in err
    assert snapshot(tmp_path) == before
    with pytest.raises(OutputError, match="never replaced"):
        publish(target, lambda folder: None, overwrite=True)
    assert snapshot(tmp_path) == before


def test_an_earlier_bundle_of_its_own_files_only_is_recognised(tmp_path: Path) -> None:
    clean = config_bundle(tmp_path / "clean")
    assert foreign_bundle_entries(clean) == []
    with zipfile.ZipFile(tmp_path / "clean.zip", "w") as archive:
        archive.writestr("clean/", "")
        for item in clean.iterdir():
            archive.write(item, f"clean/{item.name}")
    assert foreign_bundle_entries(tmp_path / "clean.zip") == []
    (clean / "bundle.json").write_text("{}")
    assert foreign_bundle_entries(clean) is None  # a marker that is not a bundle document
    assert foreign_bundle_entries(tmp_path / "nothing") is None


def test_configure_replaces_an_earlier_bundle_and_copies_only_bundle_files(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    source = shutil.copytree(shared_cube_bundle(), tmp_path / "cube")
    (source / "NOTES.md").write_text("the user's notes beside their bundle")
    out = tmp_path / "configured"
    assert main(["configure", str(source), "--out", str(out), "--tta", "on", "--progress", "none"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "model.weights.h5", "training_log.csv"]
    assert main(["configure", str(source), "--out", str(out), "--tta", "off", "--overwrite", "--progress",
                 "none"]) == 0  # the copy is an earlier bundle of its own files: replaced on request
    assert json.loads((out / "bundle.json").read_text())["inference"]["tta"] is False
    assert (source / "NOTES.md").read_text() == "the user's notes beside their bundle"


# --------------------------------------------------------------------- outputs inside the inputs
def _data_commands(tmp_path: Path) -> dict[str, list[str]]:
    msd = write_cube_msd(tmp_path / "msd", n=2)
    listed = image(tmp_path / "elsewhere" / "scan.nii.gz")
    (tmp_path / "man.csv").write_text("image,label\nelsewhere/scan.nii.gz,elsewhere/scan.nii.gz\n")
    plan = tmp_path / "plan.json"
    plan.write_text(make_cube_plan().to_json())
    bundle = config_bundle(tmp_path / "cube")
    image(tmp_path / "in2.nii.gz")
    (tmp_path / "lnk.nii.gz").symlink_to(tmp_path / "in2.nii.gz")
    return {
        "plan --out an image of the dataset": ["plan", str(msd), "--out", str(msd / "imagesTr" / "box_000.nii.gz")],
        "plan --fingerprint-out a label": ["plan", str(msd), "--fingerprint-out",
                                           str(msd / "labelsTr" / "box_001.nii.gz")],
        "plan --out dataset.json": ["plan", str(msd / "dataset.json"), "--out", str(msd / "dataset.json")],
        "plan --out a file the manifest lists": ["plan", str(tmp_path / "man.csv"), "--out", str(listed)],
        "preprocess into the dataset": ["preprocess", str(msd), "--plan", str(plan), "--out", str(msd / "cache")],
        "evaluate into the dataset": ["evaluate", str(bundle), str(msd), "--out", str(msd / "eval")],
        "evaluate into the bundle": ["evaluate", str(bundle), str(msd), "--out", str(bundle / "eval")],
        "train into the dataset": ["train", str(msd), "--task", "segmentation", "--model", "unet3d", "--out",
                                   str(msd / "bundle")],
        "convert onto its input": ["convert", str(tmp_path / "in2.nii.gz"), str(tmp_path / "in2.nii.gz")],
        "convert through a link onto its input": ["convert", str(tmp_path / "lnk.nii.gz"), str(tmp_path / "in2.nii.gz")],
        "convert into a DICOM-like input folder": ["convert", str(msd / "imagesTr"), str(msd / "imagesTr" / "o.nrrd")],
        "configure inside the source": ["configure", str(bundle), "--tta", "on", "--out", str(bundle / "inner")],
        "ensemble inside a member": ["ensemble", str(bundle), str(config_bundle(tmp_path / "two", weights=b"2")),
                                     "--out", str(bundle / "inner")],
    }


@pytest.mark.parametrize("kind", ["plan --out an image of the dataset", "plan --fingerprint-out a label",
                                  "plan --out dataset.json", "plan --out a file the manifest lists",
                                  "preprocess into the dataset", "evaluate into the dataset", "evaluate into the bundle",
                                  "train into the dataset", "convert onto its input",
                                  "convert through a link onto its input", "convert into a DICOM-like input folder",
                                  "configure inside the source", "ensemble inside a member"])
def test_no_command_writes_into_or_over_its_inputs(tmp_path: Path, kind: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = _data_commands(tmp_path)[kind]
    overwrite = [] if argv[0] in ("preprocess",) else ["--overwrite"]
    before = snapshot(tmp_path)
    refused([*argv, *overwrite], capsys, "apart from the inputs")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------- escape sequences in "written" lines
def test_written_lines_escape_control_characters_of_output_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import MedAnalysisLib.bundles as bundles

    source = image(tmp_path / "in.nii.gz")
    msd = write_cube_msd(tmp_path / "msd", n=2)
    one = config_bundle(tmp_path / "one")
    two = config_bundle(tmp_path / "two", weights=WEIGHTS + b"2")
    monkeypatch.setattr(bundles, "copy_with_inference_defaults", lambda source, out, **changes: Path(out))
    monkeypatch.setattr(bundles, "make_ensemble", lambda members, out, **options: Path(out))
    runs = [["convert", str(source), str(tmp_path / f"o{HOSTILE}.nii.gz")],
            ["configure", str(one), "--tta", "on", "--out", str(tmp_path / f"c{HOSTILE}")],
            ["ensemble", str(one), str(two), "--out", str(tmp_path / f"e{HOSTILE}")],
            ["plan", str(msd), "--out", str(tmp_path / f"p{HOSTILE}.json"), "--progress", "log"]]
    for argv in runs:
        capsys.readouterr()
        assert main(argv) == 0, argv
        captured = capsys.readouterr()
        written = [line for line in (captured.out + captured.err).splitlines() if "written" in line or "wrote" in line]
        assert len(written) == 1, (argv, written)
        assert "\\x1b[31m" in written[0] and "\\x07" in written[0] and "\\x0aforged" in written[0]
        for raw in ("\x1b", "\x07"):
            assert raw not in captured.out + captured.err, argv
        assert not any(line.startswith("forged") for line in (captured.out + captured.err).splitlines()), argv


# --------------------------------------------------------------------- ensembles of one bundle twice
@pytest.mark.parametrize("kind", ["the same path", "a link", "a copy"])
def test_ensemble_refuses_a_member_given_twice(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    one = config_bundle(tmp_path / "cube")
    other = {"the same path": one, "a link": tmp_path / "link"}.get(kind, tmp_path / "copy")
    if kind == "a link":
        other.symlink_to(one, target_is_directory=True)
    if kind == "a copy":
        shutil.copytree(one, other)
    before = snapshot(tmp_path)
    what = "the same weights sha256" if kind == "a copy" else "the same bundle"
    refused(["ensemble", str(one), str(other), "--out", str(tmp_path / "ens")], capsys, "distinct ensemble members",
            what)
    assert snapshot(tmp_path) == before


def test_make_ensemble_refuses_a_member_given_twice(tmp_path: Path) -> None:
    from MedAnalysisLib.bundles import make_ensemble
    from MedAnalysisLib.errors import BundleError

    one = config_bundle(tmp_path / "cube")
    (tmp_path / "link").symlink_to(one, target_is_directory=True)
    with pytest.raises(BundleError, match="expected distinct ensemble members, got"):
        make_ensemble([one, tmp_path / "link"], tmp_path / "ens")
    with pytest.raises(BundleError, match="outside it"):
        make_ensemble([one, config_bundle(tmp_path / "two", weights=b"2")], one / "inner")
    assert not (tmp_path / "ens").exists() and not (one / "inner").exists()


# --------------------------------------------------------------------- checkpoints: a marker is not enough
def test_a_checkpoint_marker_beside_other_files_is_never_replaced(tmp_path: Path) -> None:
    from MedAnalysisLib.io.atomic import atomic_directory, is_own_output

    checkpoint = tmp_path / "b.checkpoint"
    checkpoint.mkdir()
    for name in ("state.json", "last.weights.h5", "optimizer.npz"):
        (checkpoint / name).write_text("{}")
    assert is_own_output(checkpoint)
    (checkpoint / "thesis.docx").write_text("years of work")
    marker_only = tmp_path / "marker-only"
    marker_only.mkdir()
    (marker_only / "bundle.json").write_text("{}")
    (marker_only / "thesis.docx").write_text("years of work")
    before = snapshot(tmp_path)
    for target in (checkpoint, marker_only):
        assert not is_own_output(target)
        with pytest.raises(OutputError, match="expected a new or empty folder"), atomic_directory(target):
            raise AssertionError("the body ran for a refused target")
    assert snapshot(tmp_path) == before


def test_info_refuses_an_ensemble_member_that_is_a_link_as_predict_does(tmp_path: Path) -> None:
    """``info`` reads the members' bundle.json: a member folder that is a symbolic link (to a bundle anywhere) is
    refused, the rule ``predict`` follows, so neither reads outside the ensemble."""
    from MedAnalysisLib.bundles import read_ensemble_config
    from MedAnalysisLib.errors import BundleError

    ensemble = tmp_path / "ens"
    ensemble.mkdir()
    (ensemble / "ensemble.json").write_text(json.dumps({"schema_version": 1, "name": "e", "members": [
        {"folder": f"member-{n}", "weights_sha256": hashlib.sha256(WEIGHTS).hexdigest()} for n in range(2)]}))
    shutil.copytree(config_bundle(tmp_path / "src"), ensemble / "member-0")
    outside = shutil.copytree(tmp_path / "src", tmp_path / "outside-member")
    (ensemble / "member-1").symlink_to(outside)
    with pytest.raises(BundleError, match="expected the member folder 'member-1' in the ensemble, found none"):
        read_ensemble_config(ensemble)


@pytest.mark.parametrize("where", ["the bundle", "inside the bundle", "the checkpoint", "holding the bundle"])
def test_train_refuses_a_cache_that_overlaps_its_other_outputs(tmp_path: Path, where: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """--cache, --out and OUT.checkpoint are each replaced as a whole: a cache at or around the bundle's path was
    prepared in full, then the bundle refused, leaving a cache where the user's bundle was to go."""
    data = write_cube_msd(tmp_path / "msd", n=4)
    out = tmp_path / "runs" / "model"
    cache = {"the bundle": out, "inside the bundle": out / "cache", "the checkpoint": tmp_path / "runs" /
             "model.checkpoint", "holding the bundle": tmp_path / "runs"}[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["train", str(data), "--task", "segmentation", "--model", "unet3d", "--out", str(out), "--cache",
                 str(cache), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: expected ") and "--cache to be separate paths" in err and err.count("\n") == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
