"""The phantom generator: deterministic, anatomically plausible, exact geometry, consistent targets."""

from __future__ import annotations

import csv
import doctest
import json

import numpy as np
import pytest
import SimpleITK as sitk

import MedAnalysisLib.phantom as phantom_module
from MedAnalysisLib.errors import GeometryError
from MedAnalysisLib.phantom import (
    DEFAULT_DIRECTION,
    PHANTOM_LABELS,
    case_seed,
    make_phantom,
    phantom_targets,
    write_phantom_dataset,
)
from MedAnalysisLib.volume import Volume, rotation_about_axis, same_geometry

SMALL = {"shape": (16, 24, 28), "spacing": (1.5, 1.4, 2.5)}


def test_same_seed_same_voxels_and_other_seed_differs() -> None:
    image_a, label_a, info_a = make_phantom(7, **SMALL)
    image_b, label_b, info_b = make_phantom(7, **SMALL)
    assert np.array_equal(image_a.array, image_b.array)
    assert np.array_equal(label_a.array, label_b.array)
    assert info_a == info_b
    image_c, _, _ = make_phantom(8, **SMALL)
    assert not np.array_equal(image_a.array, image_c.array)


def test_label_set_dtype_and_every_structure_present() -> None:
    image, label, info = make_phantom(1, lesion=True)
    assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
    assert set(np.unique(label.array)) == {0, 1, 2, 3}
    assert info["has_lesion"] is True and info["scan_target"] == 1
    # Each structure is large enough to learn, and the organ is the largest.
    voxels = info["label_voxels"]
    assert voxels["organ"] > voxels["vessel"] > 0 and voxels["organ"] > voxels["lesion"] > 100


def test_forced_absence_of_lesion_keeps_the_rest_of_the_anatomy() -> None:
    _, with_lesion, _ = make_phantom(4, lesion=True)
    _, without, info = make_phantom(4, lesion=False)
    assert 3 not in np.unique(without.array)
    assert info["has_lesion"] is False and info["scan_target"] == 0 and sum(info["slice_target"]) == 0
    # Same seed, same organ and vessel: the lesion voxels are organ in the scan without one.
    assert np.array_equal(np.where(with_lesion.array == 3, 1, with_lesion.array), without.array)


def test_structures_have_distinct_contrast() -> None:
    image, label, _ = make_phantom(2, lesion=True)
    means = {value: float(image.array[label.array == value].mean()) for value in range(4)}
    # background (mostly air, some tissue) < lesion < organ < vessel, each step well above the noise.
    assert means[3] + 30 < means[1] < means[2] - 50
    assert means[0] < means[1] - 50


def test_default_geometry_is_oblique_anisotropic_and_centred() -> None:
    image, label, _ = make_phantom(0)
    assert image.shape == (40, 64, 64)
    assert image.spacing == (1.0, 1.0, 1.5)
    assert np.allclose(image.direction, DEFAULT_DIRECTION)
    assert not np.allclose(np.abs(image.direction), np.eye(3))  # oblique, not axis-aligned
    assert same_geometry(image, label, spacing_tol=0, origin_tol=0, direction_tol=0)
    centre = image.index_to_physical((np.array(image.size_ijk) - 1) / 2)
    assert np.allclose(centre, 0.0, atol=1e-9)


def test_custom_geometry_is_used_and_structures_are_physical_not_stretched() -> None:
    direction = rotation_about_axis("y", 30)
    fine, _, fine_info = make_phantom(5, shape=(48, 48, 48), spacing=(1.0, 1.0, 1.0), direction=direction)
    coarse, _, coarse_info = make_phantom(5, shape=(16, 48, 48), spacing=(1.0, 1.0, 3.0), direction=direction)
    assert np.allclose(coarse.direction, direction) and coarse.spacing == (1.0, 1.0, 3.0)
    # Same field of view in mm, so the organ's physical volume agrees within partial-volume error.
    fine_mm3, coarse_mm3 = fine_info["label_volume_mm3"]["organ"], coarse_info["label_volume_mm3"]["organ"]
    assert abs(fine_mm3 - coarse_mm3) / fine_mm3 < 0.12


def test_slice_and_scan_targets_match_the_label_map() -> None:
    _, label, info = make_phantom(3, **SMALL, lesion=True)
    for value, name in PHANTOM_LABELS.items():
        if value == 0:
            continue
        expected = [int((label.array[k] == value).any()) for k in range(label.shape[0])]
        assert info["slice_labels"][name] == expected
    assert info["slice_target"] == info["slice_labels"]["lesion"]
    assert 0 < sum(info["slice_target"]) < label.shape[0]  # the lesion is in some slices, not all
    assert phantom_targets(label.array)["scan_target"] == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"shape": (4, 24, 24)}, ValueError),
        ({"shape": (16, 24)}, ValueError),
        ({"spacing": (1.0, 0.0, 1.0)}, ValueError),
        ({"direction": [[1, 0.2, 0], [0, 1, 0], [0, 0, 1]]}, GeometryError),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error, match="expected"):
        make_phantom(0, **kwargs)


def test_dataset_files_are_byte_identical_for_the_same_seed(tmp_path) -> None:
    first = write_phantom_dataset(tmp_path / "a", 3, seed=11, **SMALL)
    second = write_phantom_dataset(tmp_path / "b", 3, seed=11, **SMALL)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 3 * 3 + 4
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    third = write_phantom_dataset(tmp_path / "c", 3, seed=12, **SMALL)
    assert (first / "imagesTr/phantom_000.nii.gz").read_bytes() != (third / "imagesTr/phantom_000.nii.gz").read_bytes()


def test_dataset_layout_geometry_and_manifest(tmp_path) -> None:
    out = write_phantom_dataset(tmp_path / "phantoms", 4, seed=3, **SMALL)
    description = json.loads((out / "dataset.json").read_text())
    assert description["labels"] == {"0": "background", "1": "organ", "2": "vessel", "3": "lesion"}
    assert description["numTraining"] == 4 and len(description["training"]) == 4
    for index, entry in enumerate(description["training"]):
        image = Volume.from_sitk(sitk.ReadImage(str(out / entry["image"])))
        label = Volume.from_sitk(sitk.ReadImage(str(out / entry["label"])))
        expected_image, expected_label, _ = make_phantom(case_seed(3, index), **SMALL, lesion=index % 2 == 0)
        assert np.array_equal(image.array, expected_image.array)
        assert np.array_equal(label.array, expected_label.array)
        assert same_geometry(image, expected_image) and same_geometry(label, expected_image)
    with open(out / "classification.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["target"] for row in rows] == ["1", "0", "1", "0"]  # alternating: both classes in any split
    assert all((out / row["image"]).is_file() and (out / row["label"]).is_file() for row in rows)
    for row in rows:  # the manifest's label is the binary lesion mask
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / row["label"])))
        full = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"{row['case_id']}.nii.gz")))
        assert np.array_equal(mask, (full == 3).astype(np.uint8)) and int(mask.any()) == int(row["target"])
    with open(out / "slices.csv", newline="") as handle:
        slices = list(csv.DictReader(handle))
    assert len(slices) == 4 * SMALL["shape"][0]
    infos = json.loads((out / "phantoms.json").read_text())
    lesion_slices = [int(row["contains_lesion"]) for row in slices if row["case_id"] == "phantom_002"]
    assert lesion_slices == infos["phantom_002"]["slice_target"] and sum(lesion_slices) > 0


def test_rewriting_a_dataset_replaces_it(tmp_path) -> None:
    out = write_phantom_dataset(tmp_path / "d", 3, seed=0, **SMALL)
    write_phantom_dataset(out, 2, seed=0, **SMALL)
    assert not (out / "imagesTr/phantom_002.nii.gz").exists()
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2
    with pytest.raises(ValueError, match="expected at least one case"):
        write_phantom_dataset(tmp_path / "e", 0)


def test_module_docstring_example_runs() -> None:
    failures, _ = doctest.testmod(phantom_module, verbose=False)
    assert failures == 0


def test_dataset_loads_as_segmentation_and_classification_data(tmp_path) -> None:
    from MedAnalysisLib.data.datasets import load_dataset

    out = write_phantom_dataset(tmp_path / "phantoms", 4, seed=5, **SMALL)
    segmentation = load_dataset(out)
    assert segmentation.task == "segmentation" and segmentation.modality == "MRI"
    assert segmentation.labels == {0: "background", 1: "organ", 2: "vessel", 3: "lesion"}
    assert [c.case_id for c in segmentation.cases] == [f"phantom_{n:03d}" for n in range(4)]
    classification = load_dataset(out / "classification.csv", task="classification")
    assert classification.task == "classification" and classification.modality == "MRI"
    assert [c.target for c in classification.cases] == [1, 0, 1, 0]
    assert all(c.label is not None and c.group == c.case_id for c in classification.cases)


def test_dicom_series_round_trips_voxels_and_oblique_geometry(tmp_path) -> None:
    import pydicom

    from MedAnalysisLib.io.dicom import load_dicom_series
    from MedAnalysisLib.phantom import write_phantom_dicom

    image, _, _ = make_phantom(6, **SMALL)
    first = write_phantom_dicom(image, tmp_path / "a", seed=6)
    second = write_phantom_dicom(image, tmp_path / "b", seed=6)
    names = sorted(p.name for p in first.iterdir())
    assert names == [f"slice_{k:03d}.dcm" for k in range(image.shape[0])]
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    loaded = load_dicom_series(first)
    assert np.array_equal(loaded.array, image.array)
    assert same_geometry(loaded, image, spacing_tol=1e-5, origin_tol=1e-4, direction_tol=1e-6)
    header = pydicom.dcmread(first / names[0])
    assert header.Modality == "MR" and header.SOPClassUID == pydicom.uid.MRImageStorage
    assert str(header.PatientName) == "Phantom^Demo" and header.PatientID == "PHANTOM"
    other = write_phantom_dicom(image, tmp_path / "c", seed=7)
    assert pydicom.dcmread(other / names[0]).SeriesInstanceUID != header.SeriesInstanceUID
    with pytest.raises(ValueError, match="expected a 3D integer"):
        write_phantom_dicom(image.with_array(image.array.astype(np.float32)), tmp_path / "d")
