"""One answer to "what is this input?" for every command (issue 19.7): resolve_source and load_source, and train
accepting the forms predict accepts (an MSD folder and its dataset.json alike, CSV, DICOM, image files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_inference import write_cube_msd
from helpers_io import write_dicom_series

from MedAnalysisLib.errors import InputError

#: The MSD folder these tests read: three cases c0, c1, c2 of a box labelled "spleen".
SPLEEN = {"label": "spleen", "case": "c{}", "shape": (10, 12, 14), "seed": 0}

def test_every_form_resolves_and_loads(tmp_path: Path) -> None:
    from MedAnalysisLib.data.sources import load_source, resolve_source

    msd = write_cube_msd(tmp_path / "Task09", **SPLEEN)
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,label\n" + "".join(f"Task09/imagesTr/c{m}.nii.gz,Task09/labelsTr/c{m}.nii.gz\n"
                                                  for m in range(3)))
    files = write_dicom_series(tmp_path / "dicom" / "a", np.zeros((3, 6, 6), np.int16))
    (tmp_path / "blob.bin").write_bytes(b"\0" * 200)
    expected = {
        msd: ("msd", msd), msd / "dataset.json": ("msd", msd), manifest: ("csv", manifest),
        tmp_path / "dicom": ("dicom", tmp_path / "dicom"), files[0]: ("dicom", files[0]),
        msd / "imagesTr" / "c1.nii.gz": ("image", msd / "imagesTr" / "c1.nii.gz"),
        msd / "imagesTr": ("images", msd / "imagesTr"),
    }
    for given, (kind, path) in expected.items():
        source = resolve_source(given)
        assert (source.kind, source.path) == (kind, path), given
    folder, description = load_source(msd), load_source(msd / "dataset.json")
    assert [c.case_id for c in folder.cases] == [c.case_id for c in description.cases] == ["c0", "c1", "c2"]
    assert folder.labels == description.labels == {0: "background", 1: "spleen"}
    assert [c.label is not None for c in load_source(manifest).cases] == [True] * 3
    images = load_source(msd / "imagesTr", modality="MRI")
    assert [c.case_id for c in images.cases] == ["c0", "c1", "c2"] and images.modality == "MRI"
    assert all(c.label is None for c in images.cases)
    assert [c.case_id for c in load_source(files[0]).cases] == ["slice000"]
    assert len(load_source(tmp_path / "dicom").cases) == 1
    with pytest.raises(InputError, match="CSV manifest for a group column"):
        load_source(msd / "dataset.json", group_column="patient_id")
    for missing, message in ((tmp_path / "nothing", "got nothing at"), (tmp_path / "blob.bin", "of none of these")):
        with pytest.raises(InputError, match=message):
            resolve_source(missing)


def test_train_accepts_an_msd_folder_its_dataset_json_a_csv_and_image_files(tmp_path: Path) -> None:
    """Before, train(dataset.json) was refused ("expected an MSD folder with dataset.json ...") and a folder of
    images was scanned as DICOM. Each form is now read; the split then counts the cases it found (3 groups), which
    is what the deliberately impossible --folds 9 reports, before any preprocessing or model is built."""
    from MedAnalysisLib.training import train

    msd = write_cube_msd(tmp_path / "Task09", **SPLEEN)
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,label\n" + "".join(f"Task09/imagesTr/c{m}.nii.gz,Task09/labelsTr/c{m}.nii.gz\n"
                                                  for m in range(3)))
    for data in (msd, msd / "dataset.json", manifest):
        with pytest.raises(InputError, match=r"2 <= k <= number of groups \(3\), got k=9"):
            train(data, task="segmentation", family="unet3d", out=tmp_path / "b", epochs=1, folds=9)
    for data in (msd / "imagesTr", msd / "imagesTr" / "c0.nii.gz"):  # read, then refused for what they lack
        with pytest.raises(InputError, match="expected a label map for every case"):
            train(data, task="segmentation", family="unet3d", out=tmp_path / "b", epochs=1)


def test_cli_train_resolves_its_input_and_labels_file_before_any_work(tmp_path: Path) -> None:
    from MedAnalysisLib.cli import main

    msd = write_cube_msd(tmp_path / "Task09", **SPLEEN)
    argv = ["train", str(msd / "dataset.json"), "--task", "segmentation", "--model", "unet3d", "--out",
            str(tmp_path / "b"), "--progress", "none"]
    (tmp_path / "labels.json").write_text('[{"value": 1, "name": "spleen", "colour": [1, 2, 3]}]')
    assert main([*argv, "--labels", str(tmp_path / "labels.json")]) == 2  # a typo in the labels file: refused
    assert main(["train", str(tmp_path / "nothing"), *argv[2:]]) == 2
    assert not (tmp_path / "b").exists()
