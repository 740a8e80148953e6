"""Bad input: every case gets a typed error that says what was expected and what was found, never a crash or a guess.

The hostile files are built inside the tests. Every message is also checked for the planted patient data.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_io import CANARIES, write_dicom_series, write_nifti

from MedAnalysisLib.errors import (
    DicomSeriesError,
    GeometryError,
    ImageValidationError,
    MedAnalysisError,
    MemoryBudgetError,
    UnreadableFileError,
)
from MedAnalysisLib.io import load_volume, read_header, read_volume, write_volume
from MedAnalysisLib.io.dicom import ScanReport, scan_dicom_folder
from MedAnalysisLib.volume import Volume


def _refused(error_type: type[MedAnalysisError], match: str, call, *args, **kwargs) -> str:
    with pytest.raises(error_type, match=match) as raised:
        call(*args, **kwargs)
    message = str(raised.value)
    assert "expected" in message
    for canary in CANARIES:
        assert canary not in message
    return message


@pytest.mark.parametrize("name", ["empty.nii", "empty.nii.gz", "empty.nrrd", "empty.mha", "empty.dcm"])
def test_zero_byte_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    _refused(UnreadableFileError, "empty file|not a DICOM file", load_volume, path)


def test_zero_byte_file_in_a_dicom_folder_is_reported_not_fatal(tmp_path: Path) -> None:
    write_dicom_series(tmp_path, np.zeros((3, 4, 4), np.int16))
    (tmp_path / "zero.dcm").write_bytes(b"")
    report = ScanReport()
    assert len(scan_dicom_folder(tmp_path, report=report)) == 1
    assert [Path(p).name for p in report.not_dicom] == ["zero.dcm"]
    assert load_volume(tmp_path).shape == (3, 4, 4)


def test_random_bytes_named_dcm(tmp_path: Path) -> None:
    path = tmp_path / "noise.dcm"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _refused(UnreadableFileError, r"expected a DICOM image file, got noise\.dcm: not a DICOM file", load_volume, path)
    _refused(DicomSeriesError, r"got none \(1 file\(s\) not DICOM\)", load_volume, tmp_path)


@pytest.mark.parametrize("keep", [133, 141, 150, 400])
def test_dicom_cut_inside_its_header(tmp_path: Path, keep: int) -> None:
    """Cut inside the file meta group or the dataset: a clean refusal, never a parser exception."""
    (path,) = write_dicom_series(tmp_path, np.zeros((1, 4, 4), np.int16))
    path.write_bytes(path.read_bytes()[:keep])
    _refused(UnreadableFileError, r"expected a DICOM image file, got slice000\.dcm", load_volume, path, allow_2d=True)


def test_random_bytes_named_nii(tmp_path: Path) -> None:
    path = tmp_path / "noise.nii"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _refused(UnreadableFileError, "expected a NIfTI file", load_volume, path)


def test_truncated_dicom_pixel_data(tmp_path: Path) -> None:
    paths = write_dicom_series(tmp_path, np.ones((4, 16, 16), np.int16))
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-100])
    message = _refused(UnreadableFileError, "pixel data truncated", load_volume, tmp_path)
    assert "slice002.dcm" in message and "412 of 512 bytes" in message
    (info,) = scan_dicom_folder(tmp_path)
    assert not info.loadable  # the listing already shows the problem


def test_truncated_compressed_dicom(tmp_path: Path, shared_data: Path) -> None:
    source = shared_data / "dicom" / "dicom2nifti_vendor_samples" / "generic" / "compressed_rle" / "001"
    folder = tmp_path / "rle"
    shutil.copytree(source, folder)
    victim = sorted(folder.iterdir())[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    _refused(UnreadableFileError, "pixel data truncated", load_volume, folder)


def test_truncated_nii_gz(tmp_path: Path) -> None:
    volume = Volume(np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32))
    path = write_volume(volume, tmp_path / "cut.nii.gz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    _refused(UnreadableFileError, "truncated", load_volume, path)


def test_huge_declared_size_with_tiny_payload_is_refused_before_allocating(tmp_path: Path) -> None:
    # 4096^3 float32 = 256 GiB declared, 64 bytes stored
    nifti = write_nifti(tmp_path / "huge.nii", np.zeros((1, 4, 4), np.float32), np.eye(4), dims=(4096, 4096, 4096), payload=b"\0" * 64)
    message = _refused(UnreadableFileError, "as its header declares", read_header, nifti)
    assert "274877907296" in message  # 352 + 4096**3 * 4 bytes expected
    packed = tmp_path / "huge.nii.gz"
    packed.write_bytes(gzip.compress(nifti.read_bytes()))
    _refused(UnreadableFileError, "as its header declares", load_volume, packed)
    nrrd = tmp_path / "huge.nrrd"
    nrrd.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 100000 100000 100000\nencoding: raw\n\n" + b"\0" * 64)
    _refused(UnreadableFileError, "as its header declares", load_volume, nrrd)
    mha = tmp_path / "huge.mha"
    mha.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 50000 50000 50000\nElementType = MET_SHORT\nElementDataFile = LOCAL\n" + b"\0" * 64)
    _refused(UnreadableFileError, "as its header declares", load_volume, mha)
    # a compressed stream too small to inflate to the declared size is refused before anything is decompressed
    packed_nrrd = tmp_path / "huge_gz.nrrd"
    packed_nrrd.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 100000 100000 100000\nendian: little\nencoding: gzip\n\n" + gzip.compress(b"\0" * 64))
    _refused(UnreadableFileError, "as its header declares", load_volume, packed_nrrd)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("NDims", "99999999999999999999", "ndims"),  # MetaIO itself segfaults on this one
        ("NDims", "7", "NDims 2 to 4"),
        ("DimSize", "6 5", "3 value"),
        ("DimSize", "6 5 -4", "DimSize values"),
        ("ElementSpacing", "1 nan 2", "finite values"),
        ("ElementType", "MET_STRING", "ElementType"),
        ("ElementNumberOfChannels", "0", "elementnumberofchannels"),
        ("CompressedData", "maybe", "True or False"),
    ],
)
def test_malformed_metaimage_headers_never_reach_the_native_parser(tmp_path: Path, field: str, value: str, match: str) -> None:
    path = write_volume(Volume(np.zeros((4, 5, 6), np.int16)), tmp_path / "ok.mha")
    header, payload = path.read_bytes().split(b"ElementDataFile = LOCAL\n", 1)
    lines = [line for line in header.decode().splitlines() if not line.startswith(field + " ")]
    lines.insert(2, f"{field} = {value}")
    bad = tmp_path / "bad.mha"
    bad.write_bytes(("\n".join(lines) + "\nElementDataFile = LOCAL\n").encode() + payload)
    _refused(UnreadableFileError, match, load_volume, bad)


@pytest.mark.parametrize("offset", [float("nan"), float("inf"), -400.0])
def test_nifti_with_a_non_finite_voxel_offset(tmp_path: Path, offset: float) -> None:
    path = write_nifti(tmp_path / "v.nii", np.zeros((2, 2, 2), np.int16), np.eye(4))
    data = bytearray(path.read_bytes())
    data[108:112] = np.float32(offset).tobytes()
    path.write_bytes(bytes(data))
    _refused(UnreadableFileError, "vox_offset", load_volume, path)


def test_folder_with_two_series_and_a_localizer(tmp_path: Path, capsys) -> None:
    from MedAnalysisLib.cli import main

    pixels = np.zeros((5, 6, 6), np.int16)
    write_dicom_series(tmp_path / "ct", pixels, description="chest", series_number=2)
    write_dicom_series(tmp_path / "ct2", pixels, description="chest thin", series_number=3, slice_spacing=1.0)
    write_dicom_series(tmp_path / "scout", pixels[:1], description="scout", series_number=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    report = ScanReport()
    series = scan_dicom_folder(tmp_path, report=report)
    assert [s.series_description for s in series] == ["chest", "chest thin"]
    assert [s.series_description for s in report.localizer_series] == ["scout"]
    assert [s.series_description for s in scan_dicom_folder(tmp_path, include_localizers=True)] == ["scout", "chest", "chest thin"]
    message = _refused(DicomSeriesError, "2 series found, got no choice", load_volume, tmp_path)
    # series are named by index, modality, size and UID: descriptions are free text that can hold patient data
    # (issue 19), and `dicom ls` lists them for the user who asks
    assert f"[1] CT, 5 slice(s), uid {series[1].series_instance_uid}" in message and "dicom ls" in message
    assert "chest" not in message and "scout" not in message
    assert load_volume(tmp_path, series=1).spacing[2] == pytest.approx(1.0)
    assert main(["dicom", "ls", str(tmp_path), "--progress", "none"]) == 0
    listing = capsys.readouterr().out
    assert "skipped: 1 localizer series" in listing and "scout" not in listing
    assert main(["dicom", "ls", str(tmp_path), "--all", "--progress", "none"]) == 0
    assert "(localizer series)" in capsys.readouterr().out


def test_localizer_images_inside_a_series_are_left_out_and_reported(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.77"
    write_dicom_series(tmp_path / "a", np.ones((4, 6, 6), np.int16), series_uid=uid)
    write_dicom_series(
        tmp_path / "b", np.ones((1, 8, 8), np.int16), series_uid=uid, row=(0, 1, 0), column=(0, 0, -1),
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), file_names=["scout.dcm"],
    )
    (info,) = scan_dicom_folder(tmp_path)
    assert info.loadable and info.n_slices == 4
    assert info.problems == ("1 image(s) left out: localizer",)
    assert [Path(f).name for f, _ in info.excluded] == ["scout.dcm"]
    assert load_volume(tmp_path).shape == (4, 6, 6)


def test_series_with_one_slice_missing(tmp_path: Path) -> None:
    paths = write_dicom_series(tmp_path, np.zeros((8, 4, 4), np.int16), slice_spacing=1.25)
    paths[5].unlink()
    message = _refused(DicomSeriesError, "about 1 slice.s. missing", load_volume, tmp_path)
    assert "1.25 mm apart" in message and "2.5 mm" in message


def test_non_uniform_spacing_and_stacked_volumes(tmp_path: Path) -> None:
    positions = [(0, 0, z) for z in (0.0, 1.0, 2.0, 3.7, 4.7)]
    write_dicom_series(tmp_path / "uneven", np.zeros((5, 4, 4), np.int16), positions=positions)
    _refused(DicomSeriesError, "expected uniformly spaced slices, got distances from 1 to 1.7 mm", load_volume, tmp_path / "uneven")
    twice = [(0, 0, z) for z in (0.0, 2.0, 4.0)] * 2
    write_dicom_series(tmp_path / "echoes", np.zeros((6, 4, 4), np.int16), positions=twice)
    _refused(DicomSeriesError, "several volumes", load_volume, tmp_path / "echoes")


def test_gantry_tilt_is_refused_as_geometry(tmp_path: Path) -> None:
    tilt = np.tan(np.radians(12.0))
    positions = [(0.0, z * tilt, z) for z in np.arange(6) * 2.0]  # each slice shifted along y: a tilted gantry
    write_dicom_series(tmp_path, np.zeros((6, 4, 4), np.int16), positions=positions)
    message = _refused(GeometryError, "gantry tilt of about 12.00 degrees", load_volume, tmp_path)
    assert "sheared" in message and "resample_tilt=True" in message
    curved = [(0.0, (z / 10.0) ** 2, z) for z in np.arange(6) * 2.0]  # drift that is not linear: never resampled
    write_dicom_series(tmp_path / "curved", np.zeros((6, 4, 4), np.int16), positions=curved)
    _refused(GeometryError, "not linear", load_volume, tmp_path / "curved", resample_tilt=True)


def test_mixed_orientations_and_sizes_in_one_series(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.78"
    write_dicom_series(tmp_path / "a", np.ones((3, 6, 6), np.int16), series_uid=uid)
    write_dicom_series(tmp_path / "b", np.ones((3, 6, 6), np.int16), series_uid=uid, row=(0, 1, 0), column=(0, 0, -1))
    _refused(DicomSeriesError, "one image size and orientation, got 2 kinds", load_volume, tmp_path)
    write_dicom_series(tmp_path / "c", np.ones((2, 8, 8), np.int16), series_uid=uid, origin=(0.0, 0.0, 99.0))
    _refused(DicomSeriesError, "got 3 kinds", load_volume, tmp_path)


@pytest.mark.parametrize("with_qform", [False, True], ids=["sform-only", "sform-and-qform"])
def test_sheared_nifti_affine(tmp_path: Path, with_qform: bool) -> None:
    """SimpleITK raises on the first and silently falls back to the qform on the second: both must be refused."""
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[0, 1] = 0.3  # j axis leans along x: 16.7 degrees of shear
    path = write_nifti(tmp_path / "shear.nii", np.zeros((3, 4, 5), np.float32), affine, qform_code=int(with_qform))
    message = _refused(GeometryError, "expected a NIfTI sform without shear", load_volume, path)
    assert "16.7 degrees" in message
    _refused(GeometryError, "without shear", read_header, path)


def test_4d_file(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "dyn.nii", np.zeros((3, 2, 4, 5), np.int16), np.eye(4))
    _refused(ImageValidationError, r"expected a 3D image, got a 4D image of size \(5, 4, 2, 3\)", load_volume, path)
    assert load_volume(path, allow_4d=True).array.shape == (2, 4, 5, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_voxels(tmp_path: Path, bad: float) -> None:
    array = np.zeros((3, 4, 5), np.float32)
    array[1, 2, 3] = bad
    for suffix in (".nii.gz", ".nrrd"):
        path = write_volume(Volume(array), tmp_path / f"bad{suffix}")
        message = _refused(ImageValidationError, "expected finite voxel values", load_volume, path)
        assert "(1, 2, 3)" in message
    _refused(ImageValidationError, "expected finite", load_volume, tmp_path / "bad.nrrd", kind="label")


def test_nan_stays_visible_in_nifti_with_a_unit_time_axis(tmp_path: Path) -> None:
    """dim[0] = 4 with one time point is read as 3D; its NaN must still be found (the NIfTI library zeroes them)."""
    array = np.zeros((1, 3, 4, 5), np.float32)
    array[0, 2, 1, 0] = np.nan
    path = write_nifti(tmp_path / "t1.nii", array, np.eye(4))
    message = _refused(ImageValidationError, "1 NaN", load_volume, path)
    assert "(2, 1, 0)" in message


def test_label_map_with_fractional_values(tmp_path: Path) -> None:
    labels = np.zeros((3, 4, 5), np.float32)
    labels[0, 0, :2] = 0.5
    labels[2, 2, 2] = 1.0
    path = write_volume(Volume(labels), tmp_path / "soft.nii.gz")
    message = _refused(ImageValidationError, "expected integer class values", load_volume, path, kind="label")
    assert "2 voxel(s) with fractional values (0.5)" in message
    assert load_volume(path).array.dtype == np.float32  # as an image it is fine


def test_unsupported_suffix_and_missing_paths(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG....")
    _refused(UnreadableFileError, "expected a file ending in", read_volume, path)
    _refused(UnreadableFileError, "got no file", read_volume, tmp_path / "gone.nii")
    folder = tmp_path / "folder.nii"
    folder.mkdir()
    _refused(UnreadableFileError, "folder or special file", read_volume, folder)


def test_memory_budget_for_dicom_is_checked_from_headers(tmp_path: Path) -> None:
    write_dicom_series(tmp_path, np.zeros((4, 32, 32), np.int16))
    _refused(MemoryBudgetError, "memory budget of 1.0 KiB", load_volume, tmp_path, memory_budget_bytes=1024)
    assert os.path.isdir(tmp_path)
