"""Outputs that would cost the user something, and ordinary mistakes that used to end in tracebacks (issue 18,
classes 1 and 11).

Class 1: publishing a bundle or an output folder never removes anything it did not create. Every target a user might
name by mistake is built here, in ``tmp_path``: a folder of their own files, a file where a folder goes and the
reverse, a symbolic link to their folder (and a dangling one), the current directory, the root, a parent of the
input and the input itself, a bundle .zip named without .zip; the files are compared byte for byte afterwards.

Class 11: ordinary operating-system errors (a full disk, a file size limit, no permission, a read-only file
system, a name too long, a path under a file) and absurd training options end as exit code 2 with one "expected
..., got ..." line, no traceback and no temporary left behind.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers_cli import ROOT, run_cli
from helpers_inference import write_cube_msd

from MedAnalysisLib.bundles.storage import is_bundle_folder, publish
from MedAnalysisLib.cli import build_parser, main
from MedAnalysisLib.errors import InputError, OutputError
from MedAnalysisLib.io.atomic import atomic_directory, atomic_path, write_text_atomic


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (links not followed) with its bytes, and every link with its target."""
    found: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = b"-> " + os.fsencode(os.readlink(path))
        elif path.is_file():
            found[key] = path.read_bytes()
    return found


def leftovers(folder: Path) -> list[str]:
    """Temporaries (hidden ``.partial`` names) anywhere below ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".partial" in p.name or p.name.endswith(".old"))


def user_folder(path: Path) -> Path:
    """Someone's own files, where a command might be told to write."""
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "todo.txt").write_text("my own notes")
    (path / "scan.nii.gz").write_bytes(b"not ours")
    return path


def bundle_json() -> str:
    """A valid bundle.json (its weights are never loaded here)."""
    from helpers_inference import make_cube_plan

    from MedAnalysisLib.bundles import BundleConfig, default_labels

    return BundleConfig(name="b", task="segmentation", family="unet3d", hparams={"n_classes": 2},
                        plan=make_cube_plan(), labels=default_labels(["background", "organ"]),
                        input={"channels": [{"name": "image", "modality": "MR"}]}).to_json()


def fake_bundle(path: Path, marker: str = "bundle.json") -> Path:
    """An earlier bundle as far as publishing can tell: a valid marker file, and nothing but bundle files."""
    path.mkdir(parents=True)
    if marker == "ensemble.json":
        members = [{"folder": f"member-{n}", "weights_sha256": "0" * 64} for n in range(2)]
        (path / marker).write_text(json.dumps({"schema_version": 1, "name": "e", "members": members}))
        for n in range(2):
            fake_bundle(path / f"member-{n}")
        return path
    (path / marker).write_text(bundle_json())
    (path / "model.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n weights")
    return path


def zipped_bundle(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("bundle.json", bundle_json())
    return path


def _never(_: Path) -> None:
    raise AssertionError("write_folder ran for a refused target")


# --------------------------------------------------------------------------------- class 1: the writers
def _hostile_folder_targets(tmp_path: Path) -> dict[str, Path]:
    mine = user_folder(tmp_path / "mine")
    (tmp_path / "a-file").write_bytes(b"my file")
    (tmp_path / "link-to-mine").symlink_to(mine, target_is_directory=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return {"folder of other files": mine, "file": tmp_path / "a-file", "link to a folder": tmp_path / "link-to-mine",
            "dangling link": tmp_path / "dangling"}


@pytest.mark.parametrize("kind", ["folder of other files", "file", "link to a folder", "dangling link"])
def test_atomic_directory_never_replaces_what_it_did_not_create(tmp_path: Path, kind: str) -> None:
    target = _hostile_folder_targets(tmp_path)[kind]
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="expected .*, got"), atomic_directory(target):
        raise AssertionError("the body ran for a refused target")
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_atomic_directory_failures_leave_the_old_folder_and_no_temporaries(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # a new folder under missing parents: a failure removes the parents it created too
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "a" / "b" / "bundle") as folder:
        (folder / "bundle.json").write_text("{}")
        raise RuntimeError("writer crashed")
    assert list(tmp_path.iterdir()) == []
    # the rename onto an earlier bundle fails: the earlier bundle is put back
    old = fake_bundle(tmp_path / "bundle")
    before = snapshot(tmp_path)
    real_replace, calls = os.replace, []

    def failing_second_rename(source: str | Path, target: str | Path) -> None:
        calls.append(target)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_second_rename)
    with pytest.raises(OSError, match="No space") as raised, atomic_directory(old, replaceable=is_bundle_folder) as folder:
        (folder / "bundle.json").write_text('{"new": true}')
    monkeypatch.setattr(os, "replace", real_replace)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []
    assert any(str(old) in note for note in raised.value.__notes__)  # the error names the output, not a temporary


@pytest.mark.parametrize("kind", ["folder", "link", "dangling link"])
def test_atomic_path_refuses_folders_and_links(tmp_path: Path, kind: str) -> None:
    mine = user_folder(tmp_path / "mine")
    target = {"folder": mine, "link": tmp_path / "link", "dangling link": tmp_path / "dangling"}[kind]
    if kind == "link":
        target.symlink_to(mine / "scan.nii.gz")
    if kind == "dangling link":
        target.symlink_to(tmp_path / "nowhere")
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="expected a (file path|.*not a symbolic link)"), atomic_path(target):
        raise AssertionError("the body ran for a refused target")
    with pytest.raises(OutputError):
        write_text_atomic(target, "x")
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def _hostile_bundle_targets(tmp_path: Path) -> dict[str, Path]:
    targets = _hostile_folder_targets(tmp_path)
    fake_bundle(tmp_path / "bundle-folder.zip")  # a bundle folder whose name ends in .zip
    zipped_bundle(tmp_path / "zipped-without-suffix")
    (tmp_path / "report.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: not a bundle
    (tmp_path / "link.zip").symlink_to(zipped_bundle(tmp_path / "real.zip"))
    fake_bundle(tmp_path / "mine" / "marker-not-json")
    (tmp_path / "mine" / "marker-not-json" / "bundle.json").write_text("my own text, not a bundle")
    return {**targets, "folder named .zip": tmp_path / "bundle-folder.zip",
            "bundle zip without .zip": tmp_path / "zipped-without-suffix", "zip that is no bundle": tmp_path / "report.zip",
            "link to a bundle zip": tmp_path / "link.zip", "marker that is not JSON": tmp_path / "mine" / "marker-not-json"}


BUNDLE_TARGETS = ["folder of other files", "file", "link to a folder", "dangling link", "folder named .zip",
                  "bundle zip without .zip", "zip that is no bundle", "link to a bundle zip", "marker that is not JSON"]


@pytest.mark.parametrize("kind", BUNDLE_TARGETS)
def test_publish_refuses_every_target_it_would_destroy_even_when_overwriting(tmp_path: Path, kind: str) -> None:
    target = _hostile_bundle_targets(tmp_path)[kind]
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="expected .*, got"):
        publish(target, _never, overwrite=True)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["bundle", "bundle.zip", "ensemble"])
def test_publish_replaces_an_earlier_bundle_only_when_asked(tmp_path: Path, name: str) -> None:
    if name.endswith(".zip"):
        target = zipped_bundle(tmp_path / name)
    else:
        target = fake_bundle(tmp_path / name, "ensemble.json" if name == "ensemble" else "bundle.json")
    before = snapshot(tmp_path)

    def write_folder(folder: Path) -> None:
        (folder / "bundle.json").write_text('{"new": true}')

    with pytest.raises(OutputError, match="expected a path that does not exist yet, got an earlier bundle"):
        publish(target, write_folder, overwrite=False)
    assert snapshot(tmp_path) == before
    publish(target, write_folder, overwrite=True)
    if name.endswith(".zip"):
        with zipfile.ZipFile(target) as archive:
            assert archive.read("bundle.json") == b'{"new": true}'
    else:
        assert snapshot(target) == {"bundle.json": b'{"new": true}'}
    (tmp_path / "empty").mkdir()
    publish(tmp_path / "empty", write_folder, overwrite=False)  # an empty folder and a new path need no asking
    publish(tmp_path / "new" / "deeper", write_folder, overwrite=False)
    assert (tmp_path / "empty" / "bundle.json").is_file() and (tmp_path / "new" / "deeper" / "bundle.json").is_file()
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------------- class 1: the commands
@pytest.fixture
def members(tmp_path: Path) -> list[Path]:
    """Two bundles in a folder of the user's own, as ensemble and configure are handed them."""
    project = user_folder(tmp_path / "project")
    return [fake_bundle(project / "fold0"), fake_bundle(project / "fold1")]


def _bundle_command(command: str, members: list[Path], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    if command == "configure":  # the source is a valid bundle as far as these tests care; --out is what they check
        import MedAnalysisLib.bundles

        monkeypatch.setattr(MedAnalysisLib.bundles, "read_bundle_config", lambda path: None)
        return ["configure", str(members[0]), "--tta", "on"]
    return ["ensemble", *map(str, members)]


@pytest.mark.parametrize("command", ["configure", "ensemble"])
@pytest.mark.parametrize("kind", ["parent of the input", "the input", "current folder", "root", *BUNDLE_TARGETS])
def test_bundle_commands_refuse_hostile_outputs_before_any_work(tmp_path: Path, members: list[Path], command: str,
                                                                kind: str, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    targets = _hostile_bundle_targets(tmp_path)
    targets.update({"parent of the input": members[0].parent, "the input": members[0], "root": Path("/"),
                    "current folder": Path(".")})
    monkeypatch.chdir(targets["folder of other files"])
    before = snapshot(tmp_path)
    argv = [*_bundle_command(command, members, monkeypatch), "--out", str(targets[kind]), "--overwrite",
            "--progress", "none"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: expected ") and ", got" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["under a file", "name too long", "checkpoint of other files", "checkpoint is a link"])
def test_train_refuses_outputs_it_cannot_write_or_would_destroy(tmp_path: Path, kind: str) -> None:
    msd = write_cube_msd(tmp_path / "Task01")
    (tmp_path / "a-file").write_bytes(b"mine")
    out = {"under a file": tmp_path / "a-file" / "bundle", "name too long": tmp_path / ("b" * 250)}.get(
        kind, tmp_path / "bundle")
    if kind == "checkpoint of other files":
        user_folder(tmp_path / "bundle.checkpoint")
    if kind == "checkpoint is a link":
        (tmp_path / "bundle.checkpoint").symlink_to(user_folder(tmp_path / "mine"))
    before = snapshot(tmp_path)
    args = build_parser().parse_args(["train", str(msd), "--task", "segmentation", "--model", "unet3d", "--out",
                                      str(out), "--overwrite"])
    with pytest.raises(OutputError, match="expected .*, got"):
        args.validate(args)
    assert snapshot(tmp_path) == before


def test_folder_commands_refuse_a_file_or_links_where_they_write(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_bytes(b"mine")
    mine = user_folder(tmp_path / "mine")
    demo_out = tmp_path / "demo"
    demo_out.mkdir()
    (demo_out / "figures").symlink_to(mine, target_is_directory=True)
    before = snapshot(tmp_path)
    for argv in (["demo", "--out", str(tmp_path / "a-file")], ["demo", "--out", str(demo_out), "--overwrite"],
                 ["predict", str(tmp_path / "b"), str(tmp_path / "c"), "--out", str(tmp_path / "a-file")],
                 ["plan", str(tmp_path / "mine"), "--out", str(mine / "scan.nii.gz"), "--overwrite"]):
        assert main([*argv, "--progress", "none"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: expected ") and "Traceback" not in err, argv
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------- class 11: OS errors
def test_a_file_size_limit_ends_as_exit_2_without_a_partial_file(tmp_path: Path) -> None:
    """A real EFBIG: the child may write at most 64 bytes per file (SIGXFSZ ignored, so writes fail instead)."""
    msd = write_cube_msd(tmp_path / "Task01", n=2)
    out = tmp_path / "plans" / "plan.json"
    before = snapshot(tmp_path)

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    code = "import sys; from MedAnalysisLib.cli import main; sys.exit(main(sys.argv[1:]))"
    completed = subprocess.run([sys.executable, "-c", code, "plan", str(msd), "--out", str(out), "--progress", "none"],
                               capture_output=True, text=True, timeout=120, preexec_fn=limit_files, check=False,
                               env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"})
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr
    assert completed.stderr.startswith("error: expected a file size within the system's limit, got File too large "
                                       "(EFBIG) while writing ")
    assert str(out) in completed.stderr
    assert snapshot(tmp_path) == before and not (tmp_path / "plans").exists()


@pytest.mark.parametrize(("code", "expected"), [
    (errno.EACCES, "expected permission to use the path, got Permission denied (EACCES)"),
    (errno.EROFS, "expected a writable file system, got Read-only file system (EROFS)"),
    (errno.ENOSPC, "expected free space on the disk, got No space left on device (ENOSPC)"),
    (errno.EISDIR, "expected a file, not a folder, got Is a directory (EISDIR)"),
    (errno.ENOTDIR, "expected a folder, not a file, got Not a directory (ENOTDIR)"),
    (errno.ENAMETOOLONG, "expected names within the file system's length limit, got File name too long"),
    (errno.EEXIST, "expected a path that does not exist yet, got File exists (EEXIST)"),
])
def test_os_errors_anywhere_end_as_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], code: int,
                                                       expected: str) -> None:
    """Whatever the operating system refuses during a command (here: the final rename of the plan file, which the
    up-front checks cannot foresee) gives one line naming what was expected, the reason, the operation and path."""
    msd = write_cube_msd(tmp_path / "Task01", n=2)
    out = tmp_path / "plan.json"
    before = snapshot(tmp_path)

    def refuse(source: str | Path, target: str | Path) -> None:
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(os, "replace", refuse)
    capsys.readouterr()
    assert main(["plan", str(msd), "--out", str(out), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and f"while writing {out}" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_an_unwritable_folder_and_memory_exhaustion_are_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    msd = write_cube_msd(tmp_path / "Task01", n=2)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # root passes every permission check, so an ordinary user's view of a folder without write permission is shown
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode, **kw))
    for argv in (["plan", str(msd), "--out", str(locked / "plan.json")],
                 ["train", str(msd), "--task", "segmentation", "--model", "unet3d", "--out", str(locked / "b")],
                 ["evaluate", str(tmp_path / "b"), str(msd), "--out", str(locked)]):
        assert main([*argv, "--progress", "none"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: expected --out in a folder you may write to, got "), err
    monkeypatch.setattr(os, "access", real_access)
    import MedAnalysisLib.preprocessing.plan

    def exhausted(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(MedAnalysisLib.preprocessing.plan, "make_plan", exhausted)
    assert main(["plan", str(msd), "--out", str(tmp_path / "plan.json"), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: expected enough free memory") and "Traceback" not in err
    assert not (tmp_path / "plan.json").exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------------- class 11: training options
BAD_TRAINING_OPTIONS = [
    (["--learning-rate", "nan"], "expected learning_rate to be a finite number"),
    (["--learning-rate", "inf"], "expected learning_rate to be a finite number"),
    (["--learning-rate", "1e999"], "expected learning_rate to be a finite number"),
    (["--learning-rate", "-0.001"], "expected learning_rate > 0, got -0.001"),
    (["--learning-rate", "0"], "expected learning_rate > 0, got 0"),
    (["--learning-rate", "1000"], "expected learning_rate to be a finite number in"),
    (["--epochs", "0"], "expected epochs to be an integer >= 1, got 0"),
    (["--epochs", "-5"], "expected epochs to be an integer >= 1, got -5"),
    (["--epochs", "1000000000"], "expected epochs to be an integer from 1 to 100000, got 1000000000"),
    (["--batch-size", "0"], "expected batch_size to be an integer >= 1 or None, got 0"),
    (["--batch-size", "99999999"], "expected batch_size to be an integer from 1 to 4096"),
    (["--steps-per-epoch", "0"], "expected steps_per_epoch to be an integer >= 1"),
    (["--steps-per-epoch", "10000000000"], "expected steps_per_epoch to be an integer from 1 to"),
    (["--val-fraction", "nan"], r"expected val_fraction in \[0, 1\), got nan"),
    (["--val-fraction", "inf"], r"expected val_fraction in \[0, 1\), got inf"),
    (["--val-fraction", "-0.1"], r"expected val_fraction in \[0, 1\)"),
    (["--folds", "1"], "expected folds to be an integer >= 2"),
    (["--folds", "100000"], "expected folds to be an integer from 2 to 100"),
    (["--folds", "5", "--fold", "-1"], r"expected fold in \[0, 5\), got -1"),
    (["--seed", "-1"], "expected seed to be an integer >= 0"),
    (["--seed", str(2**40)], "expected seed to be an integer from 0 to 4294967295"),
    (["--patience", "0"], "expected patience to be an integer >= 1"),
    (["--workers", "0"], "expected workers to be an integer >= 1"),
    (["--workers", "100000"], "expected workers to be an integer from 1 to 256"),
    (["--threads", "0"], "expected threads to be an integer >= 1"),
    (["--hparam", "norm=sparkly"], "expected norm"),
    (["--hparam", "base_filters=0"], r"expected base_filters to be an integer in \[1, 4096\], got 0"),
    (["--hparam", "base_filters=-3"], "expected base_filters to be an integer"),
    (["--hparam", "base_filters=1.5"], "expected base_filters to be an integer"),
    (["--hparam", "base_filters=true"], "expected base_filters to be an integer"),
    (["--hparam", "base_filters=\"16\""], "expected base_filters to be an integer"),
    (["--hparam", "filters=[0, 8]"], "expected filters to be a list"),
    (["--hparam", "negative_slope=NaN"], "expected hparams with plain JSON values"),
    (["--hparam", "negative_slope=1e999"], "expected hparams with plain JSON values"),
    (["--hparam", "residual=maybe"], "expected residual to be true or false"),
    (["--hparam", "dropout=0.5"], r"expected hyper-parameters of a 'unet3d' model among .*, got unknown \['dropout'\]"),
    (["--hparam", "=5"], r"got unknown \[''\]"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_TRAINING_OPTIONS)
def test_absurd_training_options_are_refused_before_any_work(tmp_path: Path, extra: list[str], message: str) -> None:
    msd = write_cube_msd(tmp_path / "Task01", n=2)
    args = build_parser().parse_args(["train", str(msd), "--task", "segmentation", "--model", "unet3d", "--out",
                                      str(tmp_path / "bundle"), *extra])
    with pytest.raises(InputError, match=message):
        args.validate(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task01"]


@pytest.mark.parametrize(("family", "hparam", "message"), [
    ("cnn3d", "dropout=1.0", r"expected dropout to be a finite number in \[0.0, 1.0\)"),
    ("cnn3d", "filters=[]", "expected filters to be a list of 1 to"),
    ("cnn_rnn", "rnn=transformer", "expected rnn"),
    ("cnn_rnn", "rnn_units=0", "expected rnn_units to be an integer"),
    ("slice_cnn", "pooling=median", "expected pooling"),
    ("slice_cnn", "n_blocks=100", "expected n_blocks to be an integer"),
])
def test_classifier_hparams_keras_would_reject_are_refused(tmp_path: Path, family: str, hparam: str,
                                                           message: str) -> None:
    msd = write_cube_msd(tmp_path / "Task01", n=2)
    args = build_parser().parse_args(["train", str(msd), "--task", "classification", "--model", family, "--out",
                                      str(tmp_path / "bundle"), "--hparam", hparam])
    with pytest.raises(InputError, match=message):
        args.validate(args)


def test_a_nan_learning_rate_is_refused_before_tensorflow_is_imported(tmp_path: Path) -> None:
    msd = write_cube_msd(tmp_path / "Task01", n=2)
    completed, heavy = run_cli(tmp_path, "train", str(msd), "--task", "segmentation", "--model", "unet3d", "--out",
                               str(tmp_path / "bundle"), "--learning-rate", "nan", "--progress", "none")
    assert completed.returncode == 2 and heavy == []
    assert completed.stderr == "error: expected learning_rate to be a finite number in (0, 10], got nan\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["plan", "{msd}", "--workers", "0"], "expected --workers from 1 to 256, got 0"),
    (["plan", "{msd}", "--memory-budget-mb", "nan"], "expected --memory-budget-mb to be a finite number"),
    (["plan", "{msd}", "--memory-budget-mb", "-1"], "expected --memory-budget-mb to be a finite number"),
    (["evaluate", "{msd}", "{msd}", "--out", "{out}", "--bootstrap", "1000000000"],
     "expected --bootstrap from 0 to 100000"),
    (["evaluate", "{msd}", "{msd}", "--out", "{out}", "--max-cases", "0"], "expected --max-cases >= 1, got 0"),
    (["evaluate", "{msd}", "{msd}", "--out", "{out}", "--seed", "-1"], "expected --seed >= 0, got -1"),
    (["demo", "--out", "{out}", "--cases", "100000000"], "expected --cases from 4"),
    (["demo", "--out", "{out}", "--seed", "-1"], "expected --seed from 0"),
])
def test_numbers_of_other_commands_are_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               argv: list[str], message: str) -> None:
    msd = write_cube_msd(tmp_path / "Task01", n=2)
    filled = [part.format(msd=msd, out=tmp_path / "out") for part in argv]
    assert main([*filled, "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1, err
    args = build_parser().parse_args(filled)
    with pytest.raises(InputError, match=message):
        args.validate(args)
    assert not (tmp_path / "out").exists()


def test_checkpoint_guard_never_removes_a_folder_it_did_not_write(tmp_path: Path) -> None:
    """``--no-resume`` removes the old checkpoint; a folder of other files at that path is refused instead."""
    from MedAnalysisLib.training.runner import _check_checkpoint_folder

    mine = user_folder(tmp_path / "bundle.checkpoint")
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="got a folder holding other files"):
        _check_checkpoint_folder(mine)
    assert snapshot(tmp_path) == before
    own = tmp_path / "other.checkpoint"
    own.mkdir()
    for name in ("state.json", "last.weights.h5"):
        (own / name).write_text(json.dumps({}))
    _check_checkpoint_folder(own)  # an earlier checkpoint may go
