"""Hostile scans not covered by test_io_hostile.py: scale factors, 5D and vector images, sheared NRRD/MetaImage
directions, unsigned DICOM pixels with a negative rescale, geometry at the tolerance edge, and the DICOM headers the
fuzzing harness found (each is a regression fixture built here).

Every refusal is a typed error whose message says what was expected and what was found; every accepted oddity has
exactly the documented result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers_io import CANARIES, write_dicom_series, write_nifti

from MedAnalysisLib.errors import (
    DicomSeriesError,
    GeometryError,
    ImageValidationError,
    MedAnalysisError,
    UnreadableFileError,
)
from MedAnalysisLib.io import load_volume, write_volume
from MedAnalysisLib.io.dicom import scan_dicom_folder
from MedAnalysisLib.volume import DEFAULT_ORIGIN_TOL, DEFAULT_SPACING_TOL, Volume


def _refused(error_type: type[MedAnalysisError], match: str, call, *args, **kwargs) -> str:
    with pytest.raises(error_type, match=match) as raised:
        call(*args, **kwargs)
    message = str(raised.value)
    assert "expected" in message and not any(canary in message for canary in CANARIES)
    return message


# ---------------------------------------------------------------------------------------------- NIfTI scaling
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize(
    ("scale", "slope", "intercept"),
    [((np.nan, 0.0), 1.0, 0.0), ((np.nan, np.nan), 1.0, 0.0), ((np.inf, 0.0), 1.0, 0.0), ((2.0, np.nan), 2.0, 0.0)],
    ids=["nan-slope", "nan-both", "inf-slope", "nan-intercept"],
)
def test_non_finite_nifti_scale_factors(tmp_path: Path, dtype: type, scale: tuple, slope: float, intercept: float) -> None:
    """Documented repair: a non-finite scl_slope counts as 1 and a non-finite scl_inter as 0, as ITK reads them
    (nibabel writes NaN for unused factors); with a non-zero intercept it is refused (test_hostile_readers_more.py). Before this was fixed, float voxels (read directly, not by ITK) became
    all NaN and the image was refused, while the same file with integer voxels loaded."""
    raw = (np.arange(60).reshape(3, 4, 5) - 20).astype(dtype)
    path = write_nifti(tmp_path / "scaled.nii", raw, np.eye(4), scale=scale)
    volume = load_volume(path)
    np.testing.assert_array_equal(volume.array, raw.astype(np.float64) * slope + intercept)
    if dtype is np.int16:  # ITK's own reading of the same file agrees
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), volume.array)


def test_five_dimensional_image(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "five.nii", np.zeros((2, 1, 3, 4, 5), np.int16), np.eye(4))
    _refused(ImageValidationError, r"expected a 2D, 3D or 4D image, got 5D in five\.nii", load_volume, path)
    _refused(ImageValidationError, "got 5D", load_volume, path, allow_4d=True)


def test_vector_image_as_a_label_map(tmp_path: Path) -> None:
    path = write_volume(Volume(np.ones((3, 4, 5, 3), np.uint8)), tmp_path / "rgb.nrrd")
    assert load_volume(path).array.shape == (3, 4, 5, 3)
    _refused(ImageValidationError, r"expected a label map with one value per voxel, got 3 values per voxel in rgb\.nrrd",
             load_volume, path, kind="label")


# ------------------------------------------------------------------------------------------ sheared directions
def test_sheared_nrrd_and_metaimage_directions(tmp_path: Path) -> None:
    nrrd = tmp_path / "shear.nrrd"
    nrrd.write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 5 4 3\n"
        b"space directions: (1,0,0) (0.3,1,0) (0,0,2)\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
        b"space origin: (0,0,0)\n\n" + bytes(120)
    )
    _refused(GeometryError, r"expected an orthonormal direction matrix .*no shear.*deviate from orthonormal by 0\.287",
             load_volume, nrrd)
    mha = tmp_path / "shear.mha"
    mha.write_bytes(
        b"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        b"TransformMatrix = 1 0 0 0.3 1 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 1 1 2\nDimSize = 5 4 3\n"
        b"ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + bytes(120)
    )
    _refused(GeometryError, "deviate from orthonormal by 0.3", load_volume, mha)


# ----------------------------------------------------------------------------------------------- DICOM pixels
def test_unsigned_pixels_with_a_negative_rescale(tmp_path: Path) -> None:
    """uint16 pixels up to 65535 with intercept -1024 need a signed type wider than the stored one: int32, exact."""
    stored = np.array([[0, 1000], [4095, 65535]], dtype=np.uint16)
    paths = write_dicom_series(tmp_path, np.stack([stored] * 3).view(np.int16), intercept=-1024.0)
    for path in paths:
        dataset = pydicom.dcmread(path)
        dataset.PixelRepresentation = 0
        dataset.save_as(path)
    volume = load_volume(tmp_path)
    assert volume.array.dtype == np.int32
    np.testing.assert_array_equal(volume.array[1], [[-1024, -24], [3071, 64511]])


def _edit_header(path: Path, **values: object) -> None:
    dataset = pydicom.dcmread(path)
    for keyword, value in values.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    dataset.save_as(path)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"Rows": 0}, r"expected Rows and Columns >= 1, .*got 0x4, 16 bit, 1 sample\(s\) in slice001\.dcm"),
        ({"BitsAllocated": 255}, r"expected one BitsAllocated for every image of a series, got 2 values: 2 with 16, "
                                 r"1 with 255"),
        ({"SamplesPerPixel": 2}, r"got 4x4, 16 bit, 2 sample\(s\)"),
    ],
    ids=["zero-rows", "bits-allocated-255", "two-samples"],
)
def test_malformed_image_pixel_modules_found_by_fuzzing(tmp_path: Path, values: dict, message: str) -> None:
    """Regression fixtures: numpy raised TypeError ("data type 'u31' not understood", "cannot cast view with zeros
    in shape") out of load_volume before the scan blocked these series."""
    paths = write_dicom_series(tmp_path, np.zeros((3, 4, 4), np.int16))
    _edit_header(paths[1], **values)
    error = DicomSeriesError if "BitsAllocated" in values else UnreadableFileError
    _refused(error, message, load_volume, tmp_path)
    (info,) = scan_dicom_folder(tmp_path)
    assert not info.loadable


def test_series_without_any_position_found_by_fuzzing(tmp_path: Path) -> None:
    """Regression fixture: the refusal's message did not say what was expected."""
    paths = write_dicom_series(tmp_path, np.zeros((2, 4, 4), np.int16))
    for path in paths:
        _edit_header(path, ImagePositionPatient=None)
    _refused(DicomSeriesError, "expected images with ImagePositionPatient and ImageOrientationPatient to build a "
             "volume from, got none", load_volume, tmp_path)


@pytest.mark.parametrize("text", ["nan\\0\\0", "inf\\1\\2", "1e400\\0\\0", "abc", "1\\2"])
def test_non_numeric_or_non_finite_positions(tmp_path: Path, text: str) -> None:
    """A slice whose ImagePositionPatient cannot be a point blocks its series: leaving it out would silently cut the
    volume short, and placing it would be a guess."""
    paths = write_dicom_series(tmp_path, np.zeros((4, 4, 4), np.int16))
    dataset = pydicom.dcmread(paths[3])
    dataset["ImagePositionPatient"] = pydicom.dataelem.RawDataElement(
        pydicom.tag.Tag(0x00200032), "DS", len(text) + len(text) % 2, (text + " " * (len(text) % 2)).encode(), 0, False, True
    )
    dataset.save_as(paths[3])
    (info,) = scan_dicom_folder(tmp_path)
    assert not info.loadable
    _refused(GeometryError, r"expected ImagePositionPatient of three finite numbers \(mm\), got .* in slice003\.dcm",
             load_volume, tmp_path)


# ----------------------------------------------------------------------------------- geometry at the tolerance
@pytest.mark.parametrize(
    ("field", "tolerance"), [("origin", DEFAULT_ORIGIN_TOL), ("spacing", DEFAULT_SPACING_TOL)]
)
def test_label_geometry_at_the_tolerance_plus_and_minus_epsilon(field: str, tolerance: float) -> None:
    from helpers_inference import make_cube_plan

    from MedAnalysisLib.preprocessing.transforms import apply_plan

    image = Volume(np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32), spacing=(1.0, 1.2, 2.0),
                   origin=(10.0, -5.0, 3.0))
    plan = make_cube_plan(target_spacing=None, patch_size=(8, 8, 8))
    labels = np.zeros(image.shape, np.uint8)

    def shifted(delta: float) -> Volume:
        origin = np.add(image.origin, (delta, 0.0, 0.0)) if field == "origin" else image.origin
        spacing = np.add(image.spacing, (0.0, delta, 0.0)) if field == "spacing" else image.spacing
        return Volume(labels, spacing=tuple(spacing), origin=tuple(origin), direction=image.direction)

    inside = apply_plan(plan, image, shifted(tolerance * 0.9))
    assert inside.label is not None and inside.label.shape == inside.image.shape[:3]
    message = _refused(GeometryError, "expected the label on the image's grid", apply_plan, plan, image,
                       shifted(tolerance * 1.1))
    assert f"differences: {field}" in message
