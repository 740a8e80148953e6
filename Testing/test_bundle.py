"""Bundles: save -> load gives identical predictions; hostile or broken bundles are refused before anything from
them is deserialised."""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
import subprocess
import sys
import zipfile
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from helpers_models import tiny_plan

from MedAnalysisLib.bundles import (
    BundleConfig,
    LabelInfo,
    copy_with_inference_defaults,
    default_labels,
    load_bundle,
    read_bundle_config,
    save_bundle,
)
from MedAnalysisLib.errors import BundleError, UnsafeArchiveError
from MedAnalysisLib.models import build_model
from MedAnalysisLib.safe_archive import safe_extract

HPARAMS = {"n_classes": 3, "patch_size": [8, 8, 8], "filters": [4, 8]}
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _config(**changes: object) -> BundleConfig:
    fields = dict(
        name="tiny", task="segmentation", family="unet3d", hparams=dict(HPARAMS),
        plan=tiny_plan(label_values=(0, 1, 2), patch_size=(8, 8, 8)),
        labels=(LabelInfo(0, "background", (0, 0, 0)),
                LabelInfo(1, "anterior", (216, 101, 79), {"category": {"scheme": "SCT", "code": "123037004"}}),
                LabelInfo(2, "posterior", (128, 174, 128))),
        input={"channels": [{"name": "T1", "modality": "MRI"}]},
        training={"epochs": 3, "final_metrics": {"val_mean_dice": 0.5}},
    )
    fields.update(changes)
    return BundleConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("bundles")
    model = build_model("unet3d", **HPARAMS)
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 8, 1)).astype("float32")
    expected = model(x, training=False).numpy()
    folder = save_bundle(root / "tiny", model, _config(), extra_files={"training_log.csv": "epoch,loss\n1,0.5\n"})
    archive = save_bundle(root / "tiny.zip", model, _config())
    return folder, archive, model, x, expected


def _copy_folder(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_save_then_load_gives_identical_predictions_from_folder_and_zip(saved: tuple) -> None:
    folder, archive, _, x, expected = saved
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json", "model.weights.h5", "training_log.csv"]
    for path in (folder, archive, folder / "bundle.json"):
        loaded = load_bundle(path)
        np.testing.assert_array_equal(loaded.model(x, training=False).numpy(), expected)
        assert loaded.weights_sha256 == loaded.config.weights["sha256"]
        assert loaded.plan == _config().plan
        assert [label.name for label in loaded.labels] == ["background", "anterior", "posterior"]
        assert loaded.labels[1].terminology == {"category": {"scheme": "SCT", "code": "123037004"}}
        loaded.cleanup()


def test_config_json_round_trip_and_validation() -> None:
    config = _config()
    again = BundleConfig.from_json(config.to_json())
    assert again == config
    with pytest.raises(BundleError, match="background"):
        _config(labels=(LabelInfo(1, "a"), LabelInfo(2, "b")))
    with pytest.raises(BundleError, match="RGB"):
        LabelInfo(1, "a", (300, 0, 0))
    with pytest.raises(BundleError, match="model family"):
        _config(family="resnet")
    with pytest.raises(BundleError, match="overlap"):
        _config(inference={"overlap": 1.5})
    assert default_labels(["background", "liver"])[1].color != (0, 0, 0)


def test_read_bundle_config_does_not_import_tensorflow(saved: tuple) -> None:
    folder, archive, *_ = saved
    code = ("import sys; from MedAnalysisLib.bundles import read_bundle_config; "
            f"c = read_bundle_config({str(archive)!r}); d = read_bundle_config({str(folder)!r}); "
            "print(c.family, d.name, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["unet3d", "tiny", "False", "False"]


def test_changed_weights_are_refused(saved: tuple, tmp_path: Path) -> None:
    bundle = _copy_folder(saved[0], tmp_path / "b")
    with open(bundle / "model.weights.h5", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(surprise=1), "unknown"),
        (lambda d: d.update(schema_version=3), "schema version 1 or 2"),
        (lambda d: d.update(schema_version="1"), "schema version 1"),
        (lambda d: d["plan"].update(patch_size="big"), "plan"),
        (lambda d: d["weights"].update(file="../model.weights.h5"), "plain file name"),
        (lambda d: d.pop("weights"), "missing"),
        (lambda d: d["labels"][1].update(evil="x"), "unknown"),
    ],
)
def test_broken_bundle_json_is_refused(saved: tuple, tmp_path: Path, edit: object, message: str) -> None:
    bundle = _copy_folder(saved[0], tmp_path / "b")
    data = json.loads((bundle / "bundle.json").read_text())
    edit(data)  # type: ignore[operator]
    (bundle / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        read_bundle_config(bundle)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_weights_that_do_not_fit_the_architecture_are_refused(saved: tuple, tmp_path: Path) -> None:
    bundle = _copy_folder(saved[0], tmp_path / "b")
    data = json.loads((bundle / "bundle.json").read_text())
    data["hparams"]["filters"] = [4, 16]
    (bundle / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="fit"):
        load_bundle(bundle)


def _zip_with(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]], bundle: Path | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        if bundle is not None:
            for file in bundle.iterdir():
                archive.write(file, file.name)
        for info, data in entries:
            archive.writestr(info, data)
    return path


def _symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (("../x", b"escape"), r"\.\."),
        (("sub/../../x", b"escape"), r"\.\."),
        (("/tmp/absolute_x", b"escape"), "absolute"),
        (("C:/windows/x", b"escape"), "absolute"),
        (("dir\\..\\x", b"escape"), "backslash"),
        (_symlink_entry("link", "/etc/passwd"), "link"),
        (("model.weights.h5", b"duplicate"), "unique"),
        (("zeros.bin", bytes(8 * 1024 * 1024)), "compression ratio"),
    ],
)
def test_unsafe_zip_bundles_are_refused_without_writing_anything(
    saved: tuple, tmp_path: Path, entry: tuple, message: str
) -> None:
    archive = _zip_with(tmp_path / "evil.zip", [entry], bundle=saved[0])
    with pytest.raises(UnsafeArchiveError, match=message):
        read_bundle_config(archive)
    with pytest.raises(BundleError, match=message):
        load_bundle(archive)
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "x").exists() and not Path("/tmp/absolute_x").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip"]


def test_size_caps_count_decompressed_bytes(tmp_path: Path) -> None:
    archive = _zip_with(tmp_path / "big.zip", [("a.bin", os.urandom(2048)), ("b.bin", os.urandom(2048))])
    with pytest.raises(UnsafeArchiveError, match="at most 3000 bytes"):
        safe_extract(archive, tmp_path / "out", max_total_bytes=3000)
    with pytest.raises(UnsafeArchiveError, match="at most 1 archive entries"):
        safe_extract(archive, tmp_path / "out", max_members=1)
    assert safe_extract(archive, tmp_path / "ok").is_dir()
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["a.bin", "b.bin"]


def test_keras_files_savedmodels_and_pickles_are_refused_before_reading(saved: tuple, tmp_path: Path) -> None:
    model = saved[2]
    keras_file = tmp_path / "model.keras"
    model.save(keras_file)
    saved_model = tmp_path / "exported"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"\x08\x01")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps(Exploit()))
    renamed = tmp_path / "bundle.dat"
    renamed.write_bytes(pickle.dumps(Exploit()))
    for path, message in ((keras_file, "Keras model file"), (saved_model, "SavedModel"), (pickled, "pickle"),
                          (renamed, "pickle")):
        with pytest.raises(BundleError, match=message):
            load_bundle(path)
        with pytest.raises(BundleError, match=message):
            read_bundle_config(path)
    assert not marker.exists()


def test_info_command_prints_a_model_card(saved: tuple) -> None:
    from MedAnalysisLib.cli import main

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(["info", str(saved[1]), "--progress", "none"])
    card = buffer.getvalue()
    assert code == 0
    assert "Task:         segmentation (unet3d)" in card
    assert "1 anterior" in card and "2 posterior" in card
    assert "Patch:        8 x 8 x 8 voxels" in card
    assert "val_mean_dice=0.5" in card
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(["info", str(saved[0]), "--json", "--progress", "none"]) == 0
    assert json.loads(buffer.getvalue())["weights"]["sha256"] == read_bundle_config(saved[0]).weights["sha256"]
    with redirect_stdout(io.StringIO()):
        assert main(["info", str(saved[0] / "model.weights.h5"), "--progress", "none"]) == 2


def test_configure_writes_a_copy_with_new_inference_defaults_and_the_same_weights(saved: tuple,
                                                                                 tmp_path: Path) -> None:
    """``medanalysis configure``: settings chosen after training (on validation cases) go into a copy of the
    bundle, weights byte for byte, sidecars kept, the change recorded; the source is untouched and bad values or
    an in-place target are refused."""
    from MedAnalysisLib.cli import main

    folder, archive, _, x, expected = saved
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "configured.zip"
    with redirect_stdout(io.StringIO()):
        assert main(["configure", str(folder), "--out", str(out), "--tta", "on", "--postprocess", "largest-component",
                     "--progress", "none"]) == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    loaded = load_bundle(out)
    assert loaded.config.inference == {"overlap": 0.5, "tta": True, "postprocess": "largest_component"}
    assert loaded.weights_sha256 == read_bundle_config(folder).weights["sha256"]
    assert (loaded.directory / "training_log.csv").read_bytes() == before["training_log.csv"]
    assert loaded.config.training["inference_defaults_changed"] == {
        "tta": [False, True], "postprocess": ["none", "largest_component"]}
    np.testing.assert_array_equal(loaded.model(x, training=False).numpy(), expected)
    loaded.cleanup()
    with pytest.raises(BundleError, match="never changed in place"):
        copy_with_inference_defaults(folder, folder, tta=True)
    with pytest.raises(BundleError, match=r"expected inference.overlap in \[0, 0.9\], got 1.5"):
        copy_with_inference_defaults(archive, tmp_path / "bad", overlap=1.5)
    with pytest.raises(BundleError, match="expected inference settings among"):
        copy_with_inference_defaults(archive, tmp_path / "bad", threshold=0.3)
    assert not (tmp_path / "bad").exists()
    with redirect_stdout(io.StringIO()):
        assert main(["configure", str(folder), "--out", str(tmp_path / "none"), "--progress", "none"]) == 2
