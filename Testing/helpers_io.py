"""Builders for test inputs made inside the tests: small DICOM series (pydicom) and hand-written NIfTI files.

Nothing here is mocked: the files are real DICOM / NIfTI-1 files that any reader accepts.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Patient data planted in test files; it must never appear in a message, a log line or an output file.
CANARY_NAME = "PHI^CANARY"
CANARY_ID = "CANARY-ID-7731"
CANARY_BIRTH_DATE = "19010203"
CANARIES = (CANARY_NAME, "CANARY", CANARY_ID, CANARY_BIRTH_DATE)


def write_dicom_series(
    folder: Path,
    pixels: np.ndarray,
    *,
    spacing: tuple[float, float] = (0.7, 0.8),
    positions: Sequence[Sequence[float]] | None = None,
    slice_spacing: float = 2.5,
    origin: Sequence[float] = (-20.0, 15.0, 30.0),
    row: Sequence[float] = (1.0, 0.0, 0.0),
    column: Sequence[float] = (0.0, 1.0, 0.0),
    slope: float | Sequence[float] = 1.0,
    intercept: float | Sequence[float] = -1024.0,
    modality: str = "CT",
    description: str = "test series",
    series_uid: str | None = None,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    file_names: Sequence[str] | None = None,
    instance_numbers: Sequence[int] | None = None,
    series_number: int = 1,
    bits_stored: int = 16,
    signed: bool = True,
) -> list[Path]:
    """Write ``pixels`` (k, j, i) as 16-bit single-frame DICOM files, one per slice, with canary patient data.

    Slice ``k`` is placed at ``origin + k * slice_spacing * (row x column)`` unless ``positions`` are given.
    Returns the written paths (in slice order).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(pixels)
    n = pixels.shape[0]
    row_v, col_v = np.asarray(row, float), np.asarray(column, float)
    normal = np.cross(row_v, col_v)
    if positions is None:
        positions = [np.asarray(origin, float) + k * slice_spacing * normal for k in range(n)]
    slopes = [slope] * n if np.isscalar(slope) else list(slope)  # type: ignore[list-item]
    intercepts = [intercept] * n if np.isscalar(intercept) else list(intercept)  # type: ignore[list-item]
    series_uid = series_uid or generate_uid()
    frame_uid = "1.2.826.0.1.3680043.8.498.2"
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName = CANARY_NAME
        ds.PatientID = CANARY_ID
        ds.PatientBirthDate = CANARY_BIRTH_DATE
        ds.Modality = modality
        ds.ImageType = list(image_type)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesDescription = description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = instance_numbers[k] if instance_numbers is not None else k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_v, *col_v)]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (between rows), column spacing
        ds.SliceThickness = slice_spacing
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = int(signed)
        ds.RescaleSlope = f"{slopes[k]:g}"
        ds.RescaleIntercept = f"{intercepts[k]:g}"
        ds.PixelData = np.ascontiguousarray(pixels[k].astype("<i2" if signed else "<u2")).tobytes()
        name = file_names[k] if file_names is not None else f"slice{k:03d}.dcm"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


_NIFTI_CODES = {np.dtype("uint8"): 2, np.dtype("int16"): 4, np.dtype("int32"): 8, np.dtype("float32"): 16, np.dtype("float64"): 64}


def write_nifti(
    path: Path,
    array: np.ndarray,
    affine_ras: np.ndarray,
    *,
    sform_code: int = 1,
    qform_code: int = 0,
    dims: Sequence[int] | None = None,
    payload: bytes | None = None,
    scale: tuple[float, float] = (1.0, 0.0),
) -> Path:
    """Write a NIfTI-1 ``.nii`` by hand (header packed with struct), so that invalid headers can be made too.

    Args:
        array: Voxels in (k, j, i) order (written i-fastest, as NIfTI stores them) or (t, k, j, i) for 4D.
        affine_ras: 4x4 voxel (i, j, k) -> RAS mm matrix stored as the sform (any matrix, sheared ones included).
        dims: Dimensions to declare instead of the array's (i, j, k[, t]) (for "huge header, tiny payload").
        payload: Bytes to store instead of the array's.
        scale: ``(scl_slope, scl_inter)``.
    """
    array = np.asarray(array)
    declared = list(dims) if dims is not None else list(reversed(array.shape))
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    dim = [len(declared), *declared] + [1] * (7 - len(declared))
    struct.pack_into("<8h", header, 40, *dim)
    struct.pack_into("<h", header, 70, _NIFTI_CODES[array.dtype])
    struct.pack_into("<h", header, 72, array.dtype.itemsize * 8)
    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    zooms = np.linalg.norm(affine_ras[:3, :3], axis=0)
    struct.pack_into("<8f", header, 76, 1.0, *zooms, *([1.0] * 4))
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<2f", header, 112, *scale)  # scl_slope, scl_inter
    struct.pack_into("<h", header, 252, qform_code)
    struct.pack_into("<h", header, 254, sform_code)
    struct.pack_into("<12f", header, 280, *affine_ras[:3, :4].ravel())
    header[344:348] = b"n+1\x00"
    data = payload if payload is not None else np.ascontiguousarray(array).tobytes()
    path.write_bytes(bytes(header) + data)
    return path


def write_enhanced_multiframe(
    path: Path,
    pixels: np.ndarray,
    positions: Sequence[Sequence[float]],
    *,
    row: Sequence[float] = (1.0, 0.0, 0.0),
    column: Sequence[float] = (0.0, 1.0, 0.0),
    spacing: tuple[float, float] = (0.9, 0.8),
    rescale: Sequence[tuple[float, float]] | None = None,
    compress_rle: bool = False,
) -> Path:
    """Write ``pixels`` (frames, j, i) uint16 as one Enhanced MR multi-frame file.

    Frame ``n`` is placed at ``positions[n]`` (PlanePositionSequence per frame); orientation and pixel spacing are in
    the shared functional groups; ``rescale[n]`` = (slope, intercept) goes in each frame's
    PixelValueTransformationSequence. Carries the canary patient data.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    enhanced_mr = "1.2.840.10008.5.1.4.1.1.4.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = enhanced_mr
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = enhanced_mr, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = CANARY_NAME, CANARY_ID, CANARY_BIRTH_DATE
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.SeriesDescription = "enhanced"
    ds.NumberOfFrames = len(pixels)
    ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    measures = Dataset()
    measures.PixelSpacing = [spacing[1], spacing[0]]
    measures.SliceThickness = 2.0
    orientation = Dataset()
    orientation.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *column)]
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for n, position in enumerate(positions):
        plane = Dataset()
        plane.ImagePositionPatient = [f"{v:.6f}" for v in position]
        item = Dataset()
        item.PlanePositionSequence = DicomSequence([plane])
        if rescale is not None:
            transform = Dataset()
            transform.RescaleSlope, transform.RescaleIntercept = f"{rescale[n][0]:g}", f"{rescale[n][1]:g}"
            transform.RescaleType = "US"
            item.PixelValueTransformationSequence = DicomSequence([transform])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    data = np.ascontiguousarray(pixels.astype("<u2"))
    ds.PixelData = data.tobytes()
    if compress_rle:
        ds.compress(RLELossless, data)
    ds.save_as(path, enforce_file_format=True)
    return path
