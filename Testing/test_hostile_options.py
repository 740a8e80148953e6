"""Hostile option files and datasets: special files and oversized or deeply nested JSON given as options, augmentation
and plan values of the wrong type or out of range, ``dataset.json`` entries reaching outside their folder, ambiguous
labels files, and stop-file settings that cannot work.

Each hostile input is built here, tiny, in ``tmp_path``; no model is trained (every refusal comes before TensorFlow).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_cli import run_cli  # noqa: E402

from MedAnalysisLib.cli import main  # noqa: E402
from MedAnalysisLib.data.datasets import load_dataset  # noqa: E402
from MedAnalysisLib.data.sources import resolve_source  # noqa: E402
from MedAnalysisLib.errors import InputError, PlanError  # noqa: E402
from MedAnalysisLib.io.small_files import (  # noqa: E402
    MAX_CSV_BYTES,
    MAX_JSON_DEPTH,
    parse_json_text,
    read_json_file,
    read_small_text,
)
from MedAnalysisLib.preprocessing.augment import AugmentConfig  # noqa: E402
from MedAnalysisLib.preprocessing.plan import Plan  # noqa: E402
from MedAnalysisLib.progress import STOP_FILE_ENV, check_stop_file_setting  # noqa: E402
from MedAnalysisLib.terminology import parse_labels, read_labels_file  # noqa: E402
from MedAnalysisLib.training.options import TrainingOptions  # noqa: E402

DEEP = "[" * 5000 + "]" * 5000
TRAIN = ("train", "--task", "segmentation", "--model", "unet3d", "--progress", "none")


def _msd(root: Path, training: list[dict[str, object]] | None = None) -> Path:
    """A tiny MSD folder: a dataset.json and placeholder image/label files (nothing here reads voxels)."""
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / "a.nii.gz").write_bytes(b"placeholder")
    if training is None:
        training = [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]
    meta = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "cube"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _train(tmp_path: Path, *options: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``medanalysis train`` in-process on a tiny MSD folder; returns (exit code, stderr)."""
    data = _msd(tmp_path / "msd") if not (tmp_path / "msd").exists() else tmp_path / "msd"
    code = main([*TRAIN, str(data), "--out", str(tmp_path / "out"), *options])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- special files


def _special(tmp_path: Path, kind: str) -> Path:
    """A path of the given kind: a FIFO, a device, a folder, or a regular file larger than the JSON cap."""
    if kind == "fifo":
        path = tmp_path / "special.json"
        os.mkfifo(path)
        return path
    if kind == "folder":
        path = tmp_path / "folder.json"
        path.mkdir()
        return path
    if kind == "link":  # an innocent name linking to a device
        path = tmp_path / "labels.json"
        path.symlink_to("/dev/zero")
        return path
    if kind == "oversized":
        path = tmp_path / "big.json"
        with open(path, "wb") as handle:  # sparse: 17 MiB claimed, nothing written
            handle.truncate(17 * 1024**2)
        return path
    return Path({"zero": "/dev/zero", "urandom": "/dev/urandom"}[kind])


#: What each kind of path is called in the refusal.
EXPECTED_SPECIAL = {
    "fifo": "to be a regular file, got a FIFO (it is not opened)",
    "zero": "to be a regular file, got a character device (it is not opened)",
    "urandom": "to be a regular file, got a character device (it is not opened)",
    "folder": "to be a regular file, got a folder (it is not opened)",
    "link": "at labels.json to be a regular file, got a character device (it is not opened)",
    "oversized": "of at most 16 MiB at big.json, got a larger file",
}


@pytest.mark.parametrize("kind", ["fifo", "zero", "urandom", "folder", "link", "oversized"])
def test_small_file_reader_refuses_anything_but_a_small_regular_file(tmp_path: Path, kind: str) -> None:
    path = _special(tmp_path, kind)
    with pytest.raises(InputError, match=re.escape(EXPECTED_SPECIAL[kind])):
        read_small_text(path, "a labels file")


@pytest.mark.parametrize("option", ["--labels", "--plan"])
@pytest.mark.parametrize("kind", ["fifo", "zero", "urandom", "link", "oversized"])
def test_train_refuses_special_or_huge_option_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str,
                                                    kind: str) -> None:
    code, err = _train(tmp_path, option, str(_special(tmp_path, kind)), capsys=capsys)
    assert code == 2
    what = {"--labels": "a readable JSON labels file", "--plan": "a readable plan JSON file (--plan)"}[option]
    assert err.startswith(f"error: expected {what}") and EXPECTED_SPECIAL[kind] in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_special_or_huge_dataset_descriptions_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    os.mkfifo(folder / "dataset.json")
    with pytest.raises(InputError, match=r"expected a JSON dataset description .* regular file, got a FIFO"):
        load_dataset(folder)
    with pytest.raises(InputError, match="expected a regular file or a folder, got a FIFO"):
        resolve_source(folder / "dataset.json")
    os.mkfifo(tmp_path / "cases.csv")
    with pytest.raises(InputError, match="expected a regular file or a folder, got a FIFO"):
        resolve_source(tmp_path / "cases.csv")
    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as handle:  # sparse: 65 MiB claimed
        handle.truncate(MAX_CSV_BYTES + 1)
    with pytest.raises(InputError, match="expected a CSV manifest of at most 64 MiB at huge.csv, got a larger file"):
        load_dataset(huge)


def test_csv_manifest_reads_through_the_capped_reader(tmp_path: Path) -> None:
    (tmp_path / "img.nii.gz").write_bytes(b"x")
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,target\nimg.nii.gz,1\n" + "\x00" * 10)
    with pytest.raises(InputError, match="expected a CSV manifest at cases.csv, got text with NUL bytes"):
        load_dataset(manifest)
    manifest.write_text('image,target\n"img.nii.gz,1\n')  # a quoted field never closed
    with pytest.raises(InputError, match="expected a numeric target on line 2 of .*cases.csv, got .."):
        load_dataset(manifest)


# ---------------------------------------------------------------------------------------------- deep nesting


def test_json_parser_refuses_deep_nesting_and_nan() -> None:
    for text in (DEEP, "[" * 5000, '{"a":' * 3000 + "1" + "}" * 3000, "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)):
        with pytest.raises(InputError, match=f"expected x, got JSON nested deeper than {MAX_JSON_DEPTH} levels"):
            parse_json_text(text, "x")
    assert parse_json_text("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "x") is not None
    with pytest.raises(PlanError, match="does not parse as standard JSON: the non-standard constant NaN"):
        parse_json_text("[NaN]", "x", error=PlanError)


@pytest.mark.parametrize("option", ["--hparam", "--augment", "--set"])
def test_deep_json_in_key_value_options_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                option: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        _train(tmp_path, option, f"filters={DEEP}", capsys=capsys)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert f"expected a JSON value for filters, got JSON nested deeper than {MAX_JSON_DEPTH} levels" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("option", ["--labels", "--plan"])
def test_deep_json_in_option_files_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"labels": ' + DEEP + "}")
    code, err = _train(tmp_path, option, str(path), capsys=capsys)
    assert code == 2
    assert f"got JSON nested deeper than {MAX_JSON_DEPTH} levels" in err and "Traceback" not in err


def test_deep_json_in_dataset_json_and_plan_overrides(tmp_path: Path) -> None:
    root = _msd(tmp_path / "msd")
    (root / "dataset.json").write_text('{"training": ' + DEEP + "}")
    with pytest.raises(InputError, match="nested deeper than"):
        load_dataset(root)
    with pytest.raises(PlanError, match="nested deeper than"):
        Plan().replace(patch_size=DEEP)
    with pytest.raises(PlanError, match="nested deeper than"):
        Plan.from_json(DEEP)


# ---------------------------------------------------------------------------------------------- augmentation values

BAD_AUGMENT = {
    "noise_std list": ("noise_std", [1, 2], "expected noise_std in [0, 5] (a number), got list"),
    "noise_std text": ("noise_std", "x", "expected noise_std in [0, 5] (a number), got str"),
    "noise_std nan": ("noise_std", float("nan"), "expected noise_std in [0, 5] (a finite number), got nan"),
    "noise_std huge": ("noise_std", 1e6, "expected noise_std in [0, 5], got 1000000.0"),
    "p_flip null": ("p_flip", None, "expected augmentation probability p_flip in [0, 1] (a number), got NoneType None"),
    "p_gamma 2": ("p_gamma", 2, "expected augmentation probability p_gamma in [0, 1], got 2"),
    "p_blur bool": ("p_blur", True, "expected augmentation probability p_blur in [0, 1] (a number), got bool True"),
    "flip_axes text": ("flip_axes", "012", "expected flip_axes as a list of distinct axes from 0 to 2, got str"),
    "flip_axes 5": ("flip_axes", [5], "expected flip_axes as a list of distinct axes from 0 to 2, got [5]"),
    "flip_axes bool": ("flip_axes", [True], "expected flip_axes as a list of distinct axes from 0 to 2, got [True]"),
    "flip_axes negative": ("flip_axes", [-1], "got [-1]"),
    "flip_axes repeated": ("flip_axes", [0, 0], "got [0, 0]"),
    "gamma_range text": ("gamma_range", "ab", "expected gamma_range as a pair [min, max]"),
    "gamma_range reversed": ("gamma_range", [2, 1], "expected gamma_range as a pair [min, max] with 0 < min <= max"),
    "scale_range zero": ("scale_range", [0, 1], "expected scale_range as a pair"),
    "scale_range three": ("scale_range", [1, 1, 1], "expected scale_range as a pair"),
    "contrast_range nan": ("contrast_range", [1, float("nan")], "expected contrast_range[1] in [0, 4] (a finite number), got nan"),
    "elastic_grid list": ("elastic_grid", [1e9], "expected elastic_grid to be an integer from 1 to 32"),
    "elastic_grid huge": ("elastic_grid", 10**9, "expected elastic_grid to be an integer from 1 to 32"),
    "elastic_grid float": ("elastic_grid", 4.0, "expected elastic_grid to be an integer"),
    "rotate_degrees bool": ("rotate_degrees", True, "expected rotate_degrees in [0, 180] (a number), got bool True"),
    "rotate_degrees huge": ("rotate_degrees", 1e5, "expected rotate_degrees in [0, 180], got 100000.0"),
    "blur_sigma huge": ("blur_sigma", [100, 1000], "expected blur_sigma[0] in [0, 10], got 100"),
    "elastic_magnitude negative": ("elastic_magnitude", -1, "expected elastic_magnitude in [0, 20], got -1"),
}


@pytest.mark.parametrize("case", sorted(BAD_AUGMENT))
def test_augment_config_checks_every_field(case: str) -> None:
    key, value, message = BAD_AUGMENT[case]
    with pytest.raises(PlanError, match=re.escape(message)):
        AugmentConfig.from_dict({key: value})
    with pytest.raises(InputError, match=re.escape(message)):
        TrainingOptions(family="unet3d", out="m", augment={key: value})


def test_augment_config_keeps_valid_values_canonical() -> None:
    config = AugmentConfig.from_dict({"flip_axes": [2, 0], "p_flip": 1, "gamma_range": [1, 2], "elastic_grid": 8})
    assert config.flip_axes == (2, 0) and config.p_flip == 1.0 and config.gamma_range == (1.0, 2.0)
    assert AugmentConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("value", ["flip_axes=[5]", "noise_std=[1,2]", "blur_sigma=[100,1000]", "p_flip=null",
                                   "rotate_degrees=true", "noise_std=NaN"])
def test_train_refuses_bad_augment_values_before_tensorflow(tmp_path: Path, value: str) -> None:
    data = _msd(tmp_path / "msd")
    completed, heavy = run_cli(tmp_path, *TRAIN, str(data), "--out", str(tmp_path / "out"), "--augment", value)
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith("error: expected ") and "Traceback" not in completed.stderr
    assert heavy == []


# ---------------------------------------------------------------------------------------------- plan values

BAD_PLAN = {
    "label_values repeated": ({"label_values": "0,0"}, r"expected distinct plan.label_values in \[0, 65535\], got \[0\] more than once in \[0, 0\]"),
    "label_values negative": ({"label_values": "0,-1"}, r"expected distinct plan.label_values in \[0, 65535\], got \[0, -1\]"),
    "label_values too large": ({"label_values": "0,70000"}, r"expected distinct plan.label_values in \[0, 65535\], got \[0, 70000\]"),
    "patch_size huge": ({"patch_size": "2048,64,64"}, r"expected plan.patch_size within \[1, 1024\]"),
    "patch_size voxels": ({"patch_size": "1024,1024,1024"}, "expected a plan.patch_size of at most 134217728 voxels"),
    "slice_shape huge": ({"slice_shape": "8192,8192"}, r"expected plan.slice_shape within \[1, 4096\]"),
    "batch_size huge": ({"batch_size": "100000"}, r"expected plan.batch_size within \[1, 256\]"),
    "target_spacing tiny": ({"target_spacing": "0.001,1,1"}, r"expected plan.target_spacing within \[0.01, 100\]"),
    "pooling_levels huge": ({"pooling_levels": "40"}, r"expected plan.pooling_levels within \[0, 10\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLAN))
def test_plan_overrides_are_bounded_like_a_bundle_plan(case: str) -> None:
    overrides, message = BAD_PLAN[case]
    with pytest.raises(PlanError, match=message):
        Plan().replace(**overrides)


def test_train_refuses_bad_plan_overrides_before_reading_data(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(Plan().to_json())
    before = plan_file.read_bytes()
    code, err = _train(tmp_path, "--plan", str(plan_file), "--set", "label_values=[0,0]", capsys=capsys)
    assert code == 2 and "expected distinct plan.label_values in [0, 65535], got [0] more than once in [0, 0]" in err
    assert plan_file.read_bytes() == before
    code, err = _train(tmp_path, "--set", "patch_size=[4096,64,64]", capsys=capsys)  # planned from the data
    assert code == 2 and "expected plan.patch_size within [1, 1024], got [4096, 64, 64] (plan override)" in err
    code, err = _train(tmp_path, "--set", "no_such_field=1", capsys=capsys)
    assert code == 2 and "expected a plan field to override" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- dataset.json entries


@pytest.mark.parametrize("entry", ["/etc/hostname", "../secret/x.nii.gz", "imagesTr/../../x.nii.gz",
                                   "C:/secret.nii.gz", "imagesTr\\a.nii.gz", "~/x.nii.gz"])
def test_dataset_json_entries_must_stay_in_the_folder(tmp_path: Path, entry: str) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "x.nii.gz").write_bytes(b"not yours")
    root = _msd(tmp_path / "msd", [{"image": "./imagesTr/a.nii.gz", "label": entry}])
    with pytest.raises(InputError, match="expected the 'label' of a dataset.json training entry to be a relative path"):
        load_dataset(root)


def test_dataset_json_links_leading_out_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.nii.gz"
    secret.write_bytes(b"not yours")
    root = _msd(tmp_path / "msd")
    (root / "imagesTr" / "a.nii.gz").unlink()
    (root / "imagesTr" / "a.nii.gz").symlink_to(secret)
    with pytest.raises(InputError, match="to stay inside the dataset folder once links are followed"):
        load_dataset(root)
    (root / "imagesTr" / "a.nii.gz").unlink()
    (root / "imagesTr").rmdir()
    (root / "imagesTr").symlink_to(tmp_path, target_is_directory=True)  # a linked folder leading out
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    with pytest.raises(InputError, match="to stay inside the dataset folder once links are followed"):
        load_dataset(root)


@pytest.mark.parametrize("entry", [5, None, {"x": 1}, "", "imagesTr/a\x00.nii.gz"])
def test_dataset_json_entries_of_the_wrong_type(tmp_path: Path, entry: object) -> None:
    root = _msd(tmp_path / "msd", [{"image": entry, "label": "./labelsTr/a.nii.gz"}])
    with pytest.raises(InputError, match="expected the 'image' of a dataset.json training entry to be a file name"):
        load_dataset(root)


def test_dataset_json_inside_links_and_csv_manifests_still_work(tmp_path: Path) -> None:
    root = _msd(tmp_path / "msd")
    (root / "imagesTr" / "b.nii.gz").symlink_to(root / "imagesTr" / "a.nii.gz")  # a link inside the folder is fine
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "imagesTr/b.nii.gz", "label": "labelsTr/a.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    assert [case.case_id for case in load_dataset(root).cases] == ["a", "a"]
    elsewhere = tmp_path / "elsewhere.nii.gz"
    elsewhere.write_bytes(b"x")
    manifest = root / "cases.csv"  # a manifest the user wrote may name files anywhere, relative to its folder
    manifest.write_text(f"image,target\n../elsewhere.nii.gz,1\n{elsewhere},0\n")
    images = [case.images[0] for case in load_dataset(manifest).cases]
    assert images == [str(elsewhere), str(elsewhere)]


# ---------------------------------------------------------------------------------------------- labels files


@pytest.mark.parametrize("labels, message", [
    ([{"value": 0, "name": "liver"}], "expected value 0 in labels.json to be named 'background'"),
    ([{"value": 1, "name": "background"}], "expected the name 'background' only for value 0 in labels.json, got it for"),
    ([{"value": 1, "name": "Liver"}, {"value": 2, "name": " liver "}],
     "expected a different name for each label value in labels.json, got 'liver' for values 1 and 2"),
    ({"1": "BACKGROUND"}, "expected the name 'background' only for value 0"),
    ([{"value": 70000, "name": "x"}], "expected a label value of at most 65535"),
])
def test_labels_files_must_not_be_ambiguous(tmp_path: Path, labels: object, message: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(labels))
    with pytest.raises(InputError, match=message):
        read_labels_file(path)


def test_labels_files_that_are_clear_are_read() -> None:
    labels = parse_labels([{"value": 0, "name": "Background"}, {"value": 1, "name": "liver"}])
    assert [label.name for label in labels] == ["Background", "liver"]
    with pytest.raises(InputError, match="expected a different name for each label value"):
        TrainingOptions(family="unet3d", out="m", labels=["bg", "Bg"])


def test_read_json_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("{nope")
    with pytest.raises(InputError, match="expected a plan at plan.json, got text that does not parse as standard JSON"):
        read_json_file(path, "a plan")


# ---------------------------------------------------------------------------------------------- stop file


@pytest.mark.parametrize("setting, message", [
    ("relative/stop", "got the relative path relative/stop"),
    ("{tmp}/missing/stop", "got {tmp}/missing/stop whose folder does not exist"),
    ("{tmp}/exists", "got {tmp}/exists, which already exists from before this run"),
])
def test_stop_file_settings_that_cannot_work_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         setting: str, message: str) -> None:
    (tmp_path / "exists").write_bytes(b"")
    os.utime(tmp_path / "exists", (time.time() - 86400, time.time() - 86400))  # left by a run a day ago
    monkeypatch.setenv(STOP_FILE_ENV, setting.format(tmp=tmp_path))
    expected = f"expected {STOP_FILE_ENV} to be the absolute path of a file that does not exist yet, in an existing " \
               f"folder, {message.format(tmp=tmp_path)}"
    with pytest.raises(InputError, match=re.escape(expected)):
        check_stop_file_setting()
    monkeypatch.setenv(STOP_FILE_ENV, str(tmp_path / "fresh"))
    check_stop_file_setting()
    (tmp_path / "fresh").write_bytes(b"")  # a stop request made since this process started (Cancel at once)
    check_stop_file_setting()


@pytest.mark.parametrize("setting, found", [("stop-here", "got the relative path stop-here"),
                                            ("{tmp}/stale", "got {tmp}/stale, which already exists from before this run")])
def test_train_with_an_unusable_stop_file_exits_2(tmp_path: Path, setting: str, found: str) -> None:
    data = _msd(tmp_path / "msd")
    (tmp_path / "stale").write_bytes(b"")
    os.utime(tmp_path / "stale", (time.time() - 86400, time.time() - 86400))
    completed, heavy = run_cli(tmp_path, *TRAIN, str(data), "--out", str(tmp_path / "out"),
                               env={STOP_FILE_ENV: setting.format(tmp=tmp_path)})
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith(f"error: expected {STOP_FILE_ENV} to be the absolute path of a file that "
                                       f"does not exist yet, in an existing folder, {found.format(tmp=tmp_path)}")
    assert heavy == [] and not (tmp_path / "out").exists()
