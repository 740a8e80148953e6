"""Hostile inputs that readers used to take silently (second round): pixel data longer than the header declares,
series that mix studies, frames of reference or patients, NIfTI scale factors without a usable slope, geometry in
other units or spaces, aliased MetaImage fields, absurd origins, upper-case output suffixes, detached outputs over
the user's files, and identifiers (UIDs, Modality) that are not what DICOM allows. Every input is built here, tiny.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers_io import write_dicom_series, write_nifti
from helpers_security import PHI_BIRTH_DATE, PHI_ID, PHI_NAME, write_canary_series

from MedAnalysisLib.errors import (
    DicomSeriesError,
    GeometryError,
    InputError,
    OutputError,
    UnreadableFileError,
)
from MedAnalysisLib.io import read_volume, write_volume
from MedAnalysisLib.io.dicom import load_dicom_series, scan_dicom_folder
from MedAnalysisLib.volume import Volume

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning",
                                        "ignore:The value length:UserWarning")
PIXELS = (np.arange(5 * 8 * 8) % 97).astype(np.int16).reshape(5, 8, 8)


def _series(folder: Path, n: int = 5) -> list[Path]:
    return write_canary_series(folder, PIXELS[:n])


def _edit(paths: list[Path], **attributes: object) -> None:
    for path in paths:
        dataset = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path)


def _no_patient_data(message: str) -> None:
    assert all(value not in message for value in (PHI_NAME, PHI_ID, PHI_BIRTH_DATE, "CANARY", "\x1b")), message


# ------------------------------------------------------------------------------------ 1. pixel data of another size
@pytest.mark.parametrize(
    ("attributes", "declared"),
    [
        ({"Rows": 4}, 64),  # 4x8 header on 8x8 pixels: half the image would be read
        ({"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}, 64),  # 16-bit pixels read as 8-bit
        ({"Rows": 65535, "Columns": 65535}, 65535 * 65535 * 2),  # a size mismatch, not a memory budget question
        ({"Columns": 7, "Rows": 9}, 126),  # same byte count would be 128: 2 bytes too many
    ],
    ids=["rows", "bits", "huge", "two-extra"],
)
def test_dicom_pixel_data_of_another_size_than_declared_is_refused(tmp_path: Path, attributes: dict,
                                                                   declared: int) -> None:
    paths = _series(tmp_path / "s", n=3)
    _edit(paths, **attributes)
    with pytest.raises(UnreadableFileError) as raised:
        load_dicom_series(tmp_path / "s")
    assert f"expected a PixelData element of {declared} bytes" in str(raised.value)
    assert "got 128 bytes" in str(raised.value)


def test_dicom_odd_pixel_data_with_its_padding_byte_is_read(tmp_path: Path) -> None:
    """8-bit 3x3 pixels are 9 bytes, stored as 10 (DICOM values have even lengths): the padding byte is allowed."""
    paths = write_dicom_series(tmp_path / "s", np.zeros((3, 3, 3), np.int16))
    for k, path in enumerate(paths):
        dataset = pydicom.dcmread(path)
        dataset.BitsAllocated = dataset.BitsStored = 8
        dataset.HighBit = 7
        dataset.PixelRepresentation = 0
        dataset.PixelData = bytes(range(k, k + 9)) + b"\x00"
        dataset.save_as(path)
    volume = load_dicom_series(tmp_path / "s")
    assert volume.shape == (3, 3, 3)
    assert int(volume.array[0, 0, 0]) == -1024 and int(volume.array[2, 2, 2]) == 10 - 1024


def _compressed_series(folder: Path, syntax: str = "1.2.840.10008.1.2.5", **attributes: object) -> None:
    for path in write_dicom_series(folder, PIXELS[:3]):
        dataset = pydicom.dcmread(path)
        dataset.compress(syntax)
        for keyword, value in attributes.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path)


def test_dicom_compressed_pixel_data_longer_than_declared_is_refused(tmp_path: Path) -> None:
    """RLE decodes to as many bytes as it encodes: a 4x8 header on 8x8 segments was cropped without a word."""
    _compressed_series(tmp_path / "ok")
    np.testing.assert_array_equal(load_dicom_series(tmp_path / "ok").array, PIXELS[:3].astype(np.int32) - 1024)
    _compressed_series(tmp_path / "rows", Rows=4)
    with pytest.raises(UnreadableFileError, match=r"expected RLE segments of 32 bytes \(8x4\) in slice000.dcm, got 64"):
        load_dicom_series(tmp_path / "rows")


@pytest.mark.parametrize(
    ("attributes", "found"),
    [({"Rows": 4}, "got 8x8, 1 sample(s), 16 bit"), ({"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}, "16 bit")],
    ids=["rows", "bits"],
)
def test_dicom_jpeg_ls_frames_unlike_their_header_are_refused(tmp_path: Path, attributes: dict, found: str) -> None:
    """GDCM decodes by the codestream: a 4x8 header came back as a cropped image, an 8-bit one as 16-bit values."""
    pytest.importorskip("jpeg_ls", reason="the JPEG-LS encoder (pyjpegls, medanalysis[dicom]) is not installed")
    _compressed_series(tmp_path / "s", "1.2.840.10008.1.2.4.80", **attributes)
    with pytest.raises(UnreadableFileError, match="expected compressed frames of ") as raised:
        load_dicom_series(tmp_path / "s")
    assert found in str(raised.value)


def test_dicom_longer_pixel_data_fails_convert_with_exit_code_2(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from MedAnalysisLib.cli import main

    paths = _series(tmp_path / "s", n=3)
    _edit(paths, Rows=4)
    assert main(["convert", str(tmp_path / "s"), str(tmp_path / "out.nii.gz")]) == 2
    error = capsys.readouterr().err
    assert "expected a PixelData element of 64 bytes" in error
    assert not (tmp_path / "out.nii.gz").exists()


# ------------------------------------------------------------------------ 2. one SeriesInstanceUID, several things
@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyInstanceUID", "1.2.3.999"),
        ("FrameOfReferenceUID", "1.2.3.888"),
        ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.4"),
        ("PatientID", "OTHER-CANARY-ID"),
        ("PatientName", "OTHER^CANARY"),
        ("PatientBirthDate", "19020202"),
    ],
)
def test_series_mixing_studies_frames_or_patients_is_refused(tmp_path: Path, keyword: str, value: str) -> None:
    """Slices 3-4 of a 5-slice series differ in one attribute that must be constant in a series: refused, naming
    the attribute; a patient attribute's values are never shown."""
    paths = _series(tmp_path / "s")
    _edit(paths[3:], **{keyword: value})
    with pytest.raises(DicomSeriesError, match=f"expected one {keyword} for every image of a series") as raised:
        load_dicom_series(tmp_path / "s")
    message = str(raised.value)
    _no_patient_data(message)
    if keyword.startswith("Patient"):
        assert value not in message and "not shown: patient data" in message


def test_series_missing_its_frame_of_reference_in_some_slices_is_refused(tmp_path: Path) -> None:
    paths = _series(tmp_path / "s")
    for path in paths[:2]:
        dataset = pydicom.dcmread(path)
        del dataset.FrameOfReferenceUID
        dataset.save_as(path)
    with pytest.raises(DicomSeriesError, match="expected one FrameOfReferenceUID for every image"):
        load_dicom_series(tmp_path / "s")


# ------------------------------------------------------------------------------------- 3. NIfTI scale factors
def _scaled_nifti(path: Path, slope: float, inter: float) -> Path:
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    write_nifti(path, array, np.diag([-1.0, -1.0, 1.0, 1.0]))
    data = bytearray(path.read_bytes())
    data[112:120] = struct.pack("<ff", slope, inter)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("slope", [math.nan, math.inf, -math.inf, 0.0], ids=["nan", "inf", "-inf", "zero"])
def test_nifti_intercept_without_a_usable_slope_is_refused(tmp_path: Path, slope: float) -> None:
    path = _scaled_nifti(tmp_path / "v.nii", slope, 5.0)
    with pytest.raises(UnreadableFileError, match="expected a finite, non-zero NIfTI scl_slope when scl_inter is set"):
        read_volume(path)


@pytest.mark.parametrize(("slope", "inter"), [(math.nan, 0.0), (math.nan, math.nan), (0.0, math.inf), (1.0, 0.0)])
def test_nifti_documented_repair_reads_the_stored_values(tmp_path: Path, slope: float, inter: float) -> None:
    """Non-finite or zero slope without an intercept (or with a non-finite one) means no scaling."""
    volume = read_volume(_scaled_nifti(tmp_path / "v.nii", slope, inter))
    assert volume.array.ravel().tolist() == list(range(24))


# ----------------------------------------------------------------------------------- 4. geometry read silently wrong
NRRD = "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 3 2\nendian: little\nencoding: raw\n"
GEOMETRY = "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: {origin}\n"
VOXELS = np.arange(24, dtype="<i2").tobytes()


def _nrrd(path: Path, extra: str, origin: str = "(0,0,0)") -> Path:
    path.write_bytes((NRRD + extra + GEOMETRY.format(origin=origin) + "\n").encode() + VOXELS)
    return path


@pytest.mark.parametrize(
    "extra",
    ['space: left-posterior-superior\nspace units: "km" "km" "km"\n',
     'space: LPS\nspace units: "mm" "in" "mm"\n',
     'space: scanner-xyz\n', 'space: 3D-right-handed\n', 'space: 3D-left-handed\n',
     'space: left-posterior-superior-time\n'],
    ids=["km", "inch", "scanner", "right-handed", "left-handed", "lps-time"],
)
def test_nrrd_units_and_spaces_itk_would_read_as_lps_mm_are_refused(tmp_path: Path, extra: str) -> None:
    with pytest.raises(GeometryError, match="expected (NRRD space units of \"mm\"|a NRRD space ITK maps)"):
        read_volume(_nrrd(tmp_path / "v.nrrd", extra))


@pytest.mark.parametrize("space", ["left-posterior-superior", "RAS", "left-anterior-superior"])
def test_nrrd_anatomical_spaces_in_mm_are_read(tmp_path: Path, space: str) -> None:
    volume = read_volume(_nrrd(tmp_path / "v.nrrd", f'space: {space}\nspace units: "mm" "mm" "mm"\n'))
    assert volume.shape == (2, 3, 4)


MHA = "ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_SHORT\nElementSpacing = 1 1 1\n"


def _mha(path: Path, extra: str) -> Path:
    path.write_bytes((MHA + extra + "ElementDataFile = LOCAL\n").encode() + VOXELS)
    return path


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        ("Offset = 0 0 0\nOrigin = 5 0 0\n", UnreadableFileError, "expected one of the MetaImage aliases"),
        ("Position = 0 0 0\nOffset = 0 0 0\n", UnreadableFileError, "expected one of the MetaImage aliases"),
        ("TransformMatrix = 1 0 0 0 1 0 0 0 1\nRotation = -1 0 0 0 -1 0 0 0 1\n", UnreadableFileError,
         "expected one of the MetaImage aliases"),
        ("ElementSize = 2 2 2\n", GeometryError, "expected ElementSize to equal ElementSpacing"),
        ("Offset = 1e308 0 0\n", GeometryError, "within 1e\\+06 mm of the scanner origin"),
        ("Offset = 0 -2e6 0\n", GeometryError, "within 1e\\+06 mm of the scanner origin"),
    ],
    ids=["offset-origin", "position-offset", "matrix-rotation", "size-spacing", "1e308", "2e6"],
)
def test_metaimage_aliases_and_absurd_origins_are_refused(tmp_path: Path, extra: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        read_volume(_mha(tmp_path / "v.mha", extra))


def test_nrrd_and_dicom_absurd_origins_are_refused(tmp_path: Path) -> None:
    with pytest.raises(GeometryError, match="within 1e\\+06 mm"):
        read_volume(_nrrd(tmp_path / "far.nrrd", "space: LPS\n", origin="(0,3e7,0)"))
    paths = _series(tmp_path / "s", n=3)
    _edit(paths[1:2], ImagePositionPatient=["1e308", "0", "0"])
    with pytest.raises(GeometryError, match="expected ImagePositionPatient of finite coordinates within"):
        load_dicom_series(tmp_path / "s")


@pytest.mark.parametrize("name", ["out.NII.GZ", "out.Nrrd", "out.MHA"])
def test_upper_case_output_suffix_is_refused_before_writing(tmp_path: Path, name: str) -> None:
    volume = Volume(np.zeros((2, 3, 4), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    with pytest.raises(OutputError, match="expected a lower-case suffix"):
        write_volume(volume, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- 5. detached outputs over user files
@pytest.mark.parametrize(("header", "data"), [("mine.mhd", "mine.zraw"), ("mine2.nhdr", "mine2.raw.gz")])
def test_detached_output_never_replaces_a_users_data_file(tmp_path: Path, header: str, data: str) -> None:
    volume = Volume(np.ones((2, 3, 4), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    (tmp_path / data).write_text("precious\n")
    with pytest.raises(OutputError, match=f"expected no file at {data}"):
        write_volume(volume, tmp_path / header)
    assert (tmp_path / data).read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [data]
    write_volume(volume, tmp_path / header, overwrite=True)  # the caller says the name may be replaced
    assert read_volume(tmp_path / header).array.sum() == 24
    write_volume(volume.with_array(volume.array * 2), tmp_path / header)  # an earlier pair is one output
    assert read_volume(tmp_path / header).array.sum() == 48


def test_detached_output_never_replaces_a_link_at_the_data_file_name(tmp_path: Path) -> None:
    volume = Volume(np.ones((2, 3, 4), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    (tmp_path / "elsewhere.txt").write_text("precious\n")
    (tmp_path / "mine.zraw").symlink_to(tmp_path / "elsewhere.txt")
    with pytest.raises(OutputError, match="expected no symbolic link at mine.zraw"):
        write_volume(volume, tmp_path / "mine.mhd", overwrite=True)
    assert (tmp_path / "mine.zraw").is_symlink() and (tmp_path / "elsewhere.txt").read_text() == "precious\n"
    assert not (tmp_path / "mine.mhd").exists()


# ------------------------------------------------------------------------- 6, 7. identifiers that are not DICOM's
@pytest.mark.parametrize(
    ("keyword", "value"),
    [("SeriesInstanceUID", "\x1b[31m1.2.3 PHI^CANARY"), ("StudyInstanceUID", "1.2.CANARY"),
     ("FrameOfReferenceUID", "1." + "2" * 70), ("SOPInstanceUID", "1..2"),
     ("Modality", "PHI^CANARY"), ("Modality", "Mr"), ("Modality", "CT\x1b[0m")],
)
def test_malformed_uids_and_modality_are_refused_when_read_without_showing_them(tmp_path: Path, keyword: str,
                                                                                value: str) -> None:
    paths = _series(tmp_path / "s", n=3)
    _edit(paths, **{keyword: value})
    with pytest.raises(DicomSeriesError, match=f"expected {keyword} to be a DICOM") as raised:
        load_dicom_series(tmp_path / "s")
    message = str(raised.value)
    _no_patient_data(message)
    assert value not in message
    assert all(value not in info.describe() for info in scan_dicom_folder(tmp_path / "s"))


def test_dicom_seg_writer_refuses_malformed_source_uids_and_empties_the_referring_physician(tmp_path: Path) -> None:
    from MedAnalysisLib.bundles import LabelInfo
    from MedAnalysisLib.inference.writers import write_dicom_seg

    paths = _series(tmp_path / "s", n=3)
    _edit(paths, ReferringPhysicianName="CANARY^REFDOC")
    volume = load_dicom_series(tmp_path / "s")
    mask = np.zeros(volume.shape, np.uint8)
    mask[1, 2:4, 2:4] = 1
    labels = (LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "organ", (200, 80, 60)))
    target = write_dicom_seg(volume.with_array(mask), tmp_path / "seg.dcm", volume.metadata["source_files"], labels,
                             bundle_name="tiny", bundle_sha256="ab" * 32)
    seg = pydicom.dcmread(target)
    assert "ReferringPhysicianName" in seg and str(seg.ReferringPhysicianName) == ""
    assert b"REFDOC" not in target.read_bytes()
    _edit(paths, SeriesInstanceUID="\x1b[31m1.2.3 PHI^CANARY")  # changed after loading
    with pytest.raises(InputError, match="expected source image 0 to have a SeriesInstanceUID of digits") as raised:
        write_dicom_seg(volume.with_array(mask), tmp_path / "seg2.dcm", volume.metadata["source_files"], labels,
                        bundle_name="tiny", bundle_sha256="ab" * 32)
    _no_patient_data(str(raised.value))
    assert not (tmp_path / "seg2.dcm").exists()
