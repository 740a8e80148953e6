"""DICOM series: scan folders reading headers only, then load one series as a Volume with exact geometry.

How a series becomes a volume:

1. :func:`scan_dicom_folder` reads only the header tags it needs from every file (pydicom, pixel data not read;
   patient name/ID/birth date are only compared between images, as one-way digests), groups the images by
   SeriesInstanceUID and, inside a series, leaves out localizer images (ImageType ``LOCALIZER``) and images without
   position/orientation, reporting what it left out.
2. Slices are sorted by the projection of ImagePositionPatient on the slice normal (the cross product of the two
   ImageOrientationPatient rows), never by file name or InstanceNumber.
3. The stack is checked: one orientation and one image size, no two slices at the same position, uniform spacing
   (a gap of about a whole multiple of the spacing is reported as missing slices), no gantry tilt (slice positions
   must move along the normal). A series that fails a check is listed with its problem and refused on load with a
   :class:`DicomSeriesError` or :class:`GeometryError`; nothing is resampled or guessed.
4. :func:`load_dicom_series` reads the pixels of the sorted files: uncompressed little-endian data straight from
   the byte offsets found in step 1; compressed series (JPEG, JPEG-LS, JPEG 2000, RLE), big endian and color through
   SimpleITK's ``ImageSeriesReader`` (GDCM) with the same sorted file list, whose geometry is checked against ours;
   series whose slices carry different modality LUTs, enhanced multi-frame images, and files GDCM cannot decode
   through pydicom (stored values). The modality LUT (RescaleSlope/RescaleIntercept, per slice or per frame) is
   applied: CT comes back in HU, with the same voxel type whatever the transfer syntax.
5. Enhanced multi-frame images are split into one slice per frame with the frame's own position, orientation,
   pixel spacing and LUT from the functional groups, then sorted and checked like single-frame slices.

Geometry: origin = ImagePositionPatient of the first sorted slice; direction columns = the row direction (i), the
column direction (j) and the slice normal (k), all in LPS; spacing = (column spacing, row spacing, slice distance)
in mm. Voxels are ``(k, j, i)``.

Privacy: no function here reads, logs or raises with patient names, IDs or birth dates. :class:`SeriesInfo` holds
Modality, SeriesDescription (for ``medanalysis dicom ls``), the Study/Series/FrameOfReference UIDs and the file list;
``Volume.metadata`` holds the same without SeriesDescription, whose text a loaded series also hands to the PHI filter
(:func:`MedAnalysisLib.privacy.remember`). Messages name series by index, modality, slice count and UID.

Files: only regular files are opened (:func:`open_regular` checks the open descriptor, so a FIFO or device never
blocks a read); links are followed only to regular files inside the folder the user named. FIFOs, devices, sockets,
directories named ``*.dcm``, links leading outside, link loops and unreadable files are left out, counted in
:class:`ScanReport` ``not_opened`` and in a warning.

Header values are never repaired: a RescaleSlope of 0 or text, one of RescaleSlope/RescaleIntercept without the
other, PixelSpacing that is missing or not two positive numbers, unusable positions or orientations, orientation
rows that are not unit vectors, BitsStored above BitsAllocated, palette or colour pixels in a grey image, and
attributes that differ between the images of one series (Modality, StudyInstanceUID, FrameOfReferenceUID,
SOPClassUID, PatientID, PatientName, PatientBirthDate, photometric interpretation, bits, pixel representation, size,
spacing, orientation), pixel data of another size than the header declares (native PixelData lengths; RLE segments
and JPEG/JPEG-LS/JPEG 2000 frame headers before decoding), UIDs that are not UIDs, a Modality that is not a code
string and positions beyond 1 km each make the series refused, with the attribute named (never a patient value).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import struct
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib.errors import (
    DicomSeriesError,
    GeometryError,
    ImageValidationError,
    UnreadableFileError,
)
from MedAnalysisLib.io.files import SIMPLEITK_IO_LOCK
from MedAnalysisLib.io.small_files import file_kind, open_regular_descriptor
from MedAnalysisLib.io.validate import check_finite, check_memory_budget, origin_problem
from MedAnalysisLib.volume import Volume, check_direction, orientation_code

logger = logging.getLogger(__name__)

#: The only header elements read from each file. Patient-identifying elements are deliberately absent.
HEADER_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "ImageType",
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "SeriesDescription",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "PixelData",
)
#: Patient attributes that must be the same in every image of a series. They are read only to compare them and kept
#: only as a one-way digest (:func:`_patient_digests`); no message ever shows their values.
PATIENT_TAGS = ("PatientID", "PatientName", "PatientBirthDate")
#: Metadata keys copied into ``Volume.metadata`` (besides ``source_files``). Nothing that identifies a patient.
METADATA_KEYS = ("Modality", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")

_NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_TRANSFER_SYNTAX_NAMES = {
    "1.2.840.10008.1.2": "implicit little endian",
    "1.2.840.10008.1.2.1": "explicit little endian",
    "1.2.840.10008.1.2.2": "explicit big endian",
    "1.2.840.10008.1.2.1.99": "deflated",
    "1.2.840.10008.1.2.5": "RLE",
    "1.2.840.10008.1.2.4.50": "JPEG baseline",
    "1.2.840.10008.1.2.4.51": "JPEG extended",
    "1.2.840.10008.1.2.4.57": "JPEG lossless",
    "1.2.840.10008.1.2.4.70": "JPEG lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
}
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC", "RWV"}

#: Relative tolerance on slice distances (plus an absolute 0.01 mm): positions are often stored with few decimals.
SPACING_REL_TOL = 0.01
SPACING_ABS_TOL = 0.01
#: Largest in-plane drift of the slice stack, in mm, before it is called a gantry tilt / sheared stack.
TILT_ABS_TOL = 0.02
#: Tolerance between SimpleITK's geometry and ours (mm for origin/spacing, cosine for direction).
SITK_GEOMETRY_TOL = 0.01


@dataclass(frozen=True)
class _Frame:
    """Geometry and modality LUT of one frame of a multi-frame (enhanced) image, from its functional groups."""

    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    slope: float
    intercept: float
    problem: str | None = None


@dataclass(frozen=True)
class _Slice:
    """Header facts of one image file (no patient data)."""

    path: str
    instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    frame_uid: str
    modality: str
    description: str
    series_number: int | None
    instance_number: int | None
    transfer_syntax: str
    image_type: tuple[str, ...]
    rows: int
    columns: int
    samples_per_pixel: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    n_frames: int
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    slope: float
    intercept: float
    pixel_offset: int | None
    pixel_length: int | None
    damage: str | None = None
    frames: tuple[_Frame, ...] | None = None
    frame_index: int = 0
    #: Header values present but unusable (``(kind, "expected ..., got ...")``); kind is the error class name.
    invalid: tuple[tuple[str, str], ...] = ()
    #: sha256 digests of the PATIENT_TAGS values (never the values themselves).
    patient: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM image series as found by :func:`scan_dicom_folder` (headers only, no patient data).

    Attributes:
        index: Position in the scan's list; usable as ``series=`` in :func:`load_dicom_series`.
        series_instance_uid, study_instance_uid, frame_of_reference_uid: DICOM UIDs.
        modality: ``"CT"``, ``"MR"``, ...
        series_description: As stored (may be empty).
        series_number: As stored, or None.
        size: ``(columns, rows, slices)`` = ITK ``(i, j, k)`` order.
        spacing: ``(i, j, k)`` in mm, or None when it cannot be determined.
        origin: LPS mm of the first voxel of the sorted stack, or None.
        direction: 3x3 tuple-of-tuples (columns i, j, k in LPS), or None.
        transfer_syntaxes: Human names of the transfer syntaxes used by the files.
        files: Image files in slice order (along the slice normal).
        excluded: ``(file, reason)`` for images of this series left out (localizers, no position).
        problems: Human-readable findings; the ones that block loading come first.
        blocking: The subset of ``problems`` that make :func:`load_dicom_series` refuse the series.
        is_localizer: Every image of the series is a localizer (listed only on request).
        tilt_shift: For a gantry-tilted stack whose drift is linear: the in-plane shift (LPS mm) from one slice to
            the next, which ``load_dicom_series(..., resample_tilt=True)`` removes; None otherwise.
    """

    index: int
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    series_description: str
    series_number: int | None
    size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    origin: tuple[float, float, float] | None
    direction: tuple[tuple[float, float, float], ...] | None
    transfer_syntaxes: tuple[str, ...]
    files: tuple[str, ...]
    excluded: tuple[tuple[str, str], ...] = ()
    problems: tuple[str, ...] = ()
    blocking: tuple[str, ...] = ()
    is_localizer: bool = False
    tilt_shift: tuple[float, float, float] | None = None
    _slices: tuple[_Slice, ...] = field(default=(), repr=False, compare=False)
    _error_type: str = field(default="DicomSeriesError", repr=False, compare=False)

    @property
    def n_slices(self) -> int:
        return len(self.files)

    @property
    def loadable(self) -> bool:
        return not self.blocking

    @property
    def orientation(self) -> str:
        """Three-letter LPS-style orientation code of the (i, j, k) axes, e.g. ``"LPS"``; empty when unknown."""
        return orientation_code(np.array(self.direction)) if self.direction is not None else ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (file names are not included, only their count)."""
        return {
            "index": self.index,
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "modality": self.modality,
            "series_description": self.series_description,
            "series_number": self.series_number,
            "size": list(self.size),
            "n_slices": self.n_slices,
            "spacing": list(self.spacing) if self.spacing else None,
            "origin": list(self.origin) if self.origin else None,
            "orientation": self.orientation,
            "transfer_syntaxes": list(self.transfer_syntaxes),
            "n_excluded": len(self.excluded),
            "problems": list(self.problems),
            "loadable": self.loadable,
            "is_localizer": self.is_localizer,
        }

    def describe(self) -> str:
        """One line for error messages (no patient data, and no SeriesDescription: free text that sites fill with
        names and dates; ``medanalysis dicom ls`` lists it for the user who asks)."""
        modality = self.modality if is_code_string(self.modality) else "?"
        uid = self.series_instance_uid if is_valid_uid(self.series_instance_uid) else "(malformed, not shown)"
        return f"[{self.index}] {modality}, {self.n_slices} slice(s), uid {uid}"


# ------------------------------------------------------------------------------------------------ header reading
def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in (value if isinstance(value, Iterable) and not isinstance(value, str) else [value]))
    except (TypeError, ValueError):
        return None
    return values if len(values) == n and all(np.isfinite(values)) else None


def _int_or(value: Any, default: int | None) -> int | None:
    try:
        return int(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def _float_or(value: Any, default: float | None) -> float | None:
    try:
        result = float(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default
    return result if result is None or np.isfinite(result) else default


_BINARY_US = {"Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation"}
_SEQUENCES = {"SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"}
_TAGS: dict[str, int] = {}


def _header_values(dataset: Any) -> dict[str, Any]:
    """The HEADER_TAGS values as strings / string lists / ints, decoded from the raw bytes.

    pydicom's general value conversion (DSfloat, IS, validation) is most of the scan time and buys nothing here:
    the few values needed are decoded directly. Elements that are not raw any more use pydicom's own value.
    """
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement

    if not _TAGS:
        _TAGS.update({keyword: int(tag_for_keyword(keyword)) for keyword in HEADER_TAGS})  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for keyword, tag in _TAGS.items():
        if keyword == "PixelData" or keyword in _SEQUENCES:
            continue
        element = dataset.get_item(tag, keep_deferred=True)
        if element is None:
            values[keyword] = None
        elif isinstance(element, RawDataElement):
            raw = element.value or b""
            if keyword in _BINARY_US:
                values[keyword] = struct.unpack("<H" if element.is_little_endian else ">H", raw[:2])[0] if len(raw) >= 2 else None
            else:
                parts = [part.strip(" \x00") for part in raw.decode("latin-1").split("\\")]
                values[keyword] = parts if len(parts) > 1 else (parts[0] or None)
        else:
            values[keyword] = element.value
    return values


def _patient_digests(dataset: Any) -> tuple[str, ...]:
    """One-way digests of the PATIENT_TAGS values (raw bytes, padding removed), so that a series mixing patients can
    be refused without keeping, comparing as text or ever showing a patient's name, ID or birth date."""
    from pydicom.dataelem import RawDataElement

    digests = []
    for keyword in PATIENT_TAGS:
        element = dataset.get_item(keyword) if keyword in dataset else None
        if element is None:
            raw = b""
        elif isinstance(element, RawDataElement):
            raw = bytes(element.value or b"")
        else:
            raw = str(element.value).encode("utf-8", "replace")
        digests.append(hashlib.sha256(raw.strip(b" \x00")).hexdigest())
    return tuple(digests)


#: A DICOM UID: components of digits separated by dots, at most 64 characters (PS3.5 9.1).
_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
#: A DICOM code string such as a Modality: upper-case letters, digits, space and underscore, at most 16 characters.
_CODE_STRING_PATTERN = re.compile(r"[A-Z0-9 _]{1,16}")
#: UID attributes read from each image; each must be a valid UID when present.
UID_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def is_valid_uid(value: Any) -> bool:
    """True for a DICOM UID (digits and dots, no empty component, at most 64 characters)."""
    return isinstance(value, str) and len(value) <= 64 and _UID_PATTERN.fullmatch(value) is not None


def is_code_string(value: Any) -> bool:
    """True for a DICOM code string value (upper-case letters, digits, space, underscore; 1 to 16 characters)."""
    return isinstance(value, str) and _CODE_STRING_PATTERN.fullmatch(value) is not None


def _identifier_problems(v: dict[str, Any]) -> list[tuple[str, str]]:
    """UIDs that are not UIDs and a Modality that is not a code string. The values are never shown: a malformed one
    may hold anything, patient names and terminal escape sequences included."""
    problems: list[tuple[str, str]] = []
    for keyword in UID_TAGS:
        value = v[keyword]
        if value not in (None, "") and not is_valid_uid(value):
            length = len(value) if isinstance(value, str) else len(list(value))
            problems.append(("DicomSeriesError", f"expected {keyword} to be a DICOM UID (digits and dots, at most 64 "
                                                 f"characters), got a value of {length} character(s) that is not one "
                                                 "(not shown)"))
    modality = v["Modality"]
    if modality not in (None, "") and not is_code_string(modality):
        length = len(modality) if isinstance(modality, str) else len(list(modality))
        problems.append(("DicomSeriesError", "expected Modality to be a DICOM code string such as CT or MR (upper-case "
                                             "letters, digits, space, underscore; at most 16 characters), got a value "
                                             f"of {length} character(s) that is not one (not shown)"))
    return problems


def _expected_pixel_bytes(rows: int, columns: int, samples: int, bits: int, frames: int) -> int:
    """Bytes of native (uncompressed) pixel data the header declares, before the padding byte of an odd length."""
    return rows * columns * samples * frames * (bits // 8)


def _pixel_length_problem(s: _Slice) -> tuple[str, str] | None:
    """A native PixelData element must hold exactly the pixels the header declares (one padding byte allowed after
    an odd length): longer data read with a smaller header gives a cropped or garbled image without a word."""
    if (s.pixel_length is None or min(s.rows, s.columns) < 1 or s.bits_allocated not in (8, 16, 32, 64)
            or s.samples_per_pixel not in (1, 3)):
        return None  # encapsulated (checked after decoding) or malformed (refused with the layout)
    expected = _expected_pixel_bytes(s.rows, s.columns, s.samples_per_pixel, s.bits_allocated, s.n_frames)
    if s.pixel_length == expected or (expected % 2 == 1 and s.pixel_length == expected + 1):
        return None
    return ("UnreadableFileError",
            f"expected a PixelData element of {expected} bytes ({s.n_frames} frame(s) of {s.columns}x{s.rows}, "
            f"{s.samples_per_pixel} sample(s), {s.bits_allocated} bit allocated), got {s.pixel_length} bytes: the "
            "header does not describe the pixel data")


def _functional(item: Any, sequence: str, keyword: str) -> Any:
    if item is None:
        return None
    found = item.get(sequence)
    return found[0].get(keyword) if found else None


def _frame_geometry(dataset: Any, n_frames: int, slope: float, intercept: float) -> tuple[_Frame, ...] | None:
    """Per-frame position, orientation, pixel spacing and rescale of an enhanced multi-frame image (per-frame
    functional groups first, then the shared ones, then the top-level attributes); None without functional groups."""
    shared_groups = dataset.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else None
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    if shared is None and not per_frame:
        return None
    if per_frame and len(per_frame) != n_frames:
        return None
    frames = []
    for index in range(n_frames):
        item = per_frame[index] if per_frame else None

        def pick(sequence: str, keyword: str, item: Any = item) -> Any:
            value = _functional(item, sequence, keyword)
            return value if value is not None else _functional(shared, sequence, keyword)

        frames.append(
            _Frame(
                position=_floats(pick("PlanePositionSequence", "ImagePositionPatient"), 3),  # type: ignore[arg-type]
                orientation=_floats(pick("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                pixel_spacing=_floats(pick("PixelMeasuresSequence", "PixelSpacing"), 2),  # type: ignore[arg-type]
                slice_thickness=_float_or(pick("PixelMeasuresSequence", "SliceThickness"), None),
                **_frame_rescale(pick("PixelValueTransformationSequence", "RescaleSlope"),
                                 pick("PixelValueTransformationSequence", "RescaleIntercept"), slope, intercept),
            )
        )
    return tuple(frames)


def _shown(value: Any) -> str:
    """A header value for a message: short, quoted, never more than 24 characters."""
    text = repr(list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value)
    return text if len(text) <= 24 else text[:21] + "..."


def _shown_identifier(keyword: str, value: Any) -> str:
    """A UID or code string for a message, or a placeholder when it is malformed (it may hold anything)."""
    if keyword.endswith("UID"):
        return _shown(value) if value == "" or is_valid_uid(value) else "(a malformed UID, not shown)"
    if keyword == "Modality":
        return _shown(value) if value == "" or is_code_string(value) else "(a malformed code, not shown)"
    return _shown(value)


def _number(value: Any) -> float | None:
    """One finite number from a header value, or None (absent, several values, text, NaN or infinity)."""
    if value is None or isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if np.isfinite(number) else None


def _rescale(slope_value: Any, intercept_value: Any) -> tuple[float, float, str | None]:
    """``(slope, intercept, problem)`` of a modality LUT. Both absent: the identity. One without the other, a slope
    of 0 and values that are not one finite number are problems (the pair is never guessed)."""
    if slope_value in (None, "") and intercept_value in (None, ""):
        return 1.0, 0.0, None
    slope, intercept = _number(slope_value), _number(intercept_value)
    if slope_value in (None, "") or intercept_value in (None, ""):
        present = "RescaleIntercept" if slope_value in (None, "") else "RescaleSlope"
        return 1.0, 0.0, f"expected RescaleSlope and RescaleIntercept together, got only {present}"
    if slope is None or slope == 0:
        return 1.0, 0.0, f"expected a finite, non-zero RescaleSlope, got {_shown(slope_value)}"
    if intercept is None:
        return 1.0, 0.0, f"expected a finite RescaleIntercept, got {_shown(intercept_value)}"
    return slope, intercept, None


def _frame_rescale(slope_value: Any, intercept_value: Any, slope: float, intercept: float) -> dict[str, Any]:
    """A frame's LUT from its functional groups, else the image's; a malformed one is a problem, never replaced."""
    if slope_value is None and intercept_value is None:
        return {"slope": slope, "intercept": intercept}
    frame_slope, frame_intercept, problem = _rescale(slope_value, intercept_value)
    return {"slope": frame_slope, "intercept": frame_intercept, "problem": problem}


def _header_problems(v: dict[str, Any]) -> list[tuple[str, str]]:
    """Header values that are present but unusable: each would otherwise be silently replaced by a guess."""
    problems: list[tuple[str, str]] = []
    checks = (("ImagePositionPatient", 3, "three finite numbers (mm)", "GeometryError"),
              ("ImageOrientationPatient", 6, "six finite numbers (direction cosines)", "GeometryError"))
    for keyword, count, what, kind in checks:
        if v[keyword] not in (None, "") and _floats(v[keyword], count) is None:
            problems.append((kind, f"expected {keyword} of {what}, got {_shown(v[keyword])}"))
    position = _floats(v["ImagePositionPatient"], 3)
    if position is not None and origin_problem(position, "ImagePositionPatient", "the image") is not None:
        problems.append(("GeometryError", origin_problem(position, "ImagePositionPatient", "the image")))  # type: ignore[arg-type]
    spacing = v["PixelSpacing"]
    if spacing not in (None, ""):
        values = _floats(spacing, 2)
        if values is None or min(values) <= 0:
            problems.append(("GeometryError", f"expected PixelSpacing of two positive finite numbers (mm), got "
                                              f"{_shown(spacing)}"))
    for keyword in ("BitsAllocated", "BitsStored", "PixelRepresentation", "PhotometricInterpretation"):
        if v[keyword] in (None, ""):
            problems.append(("DicomSeriesError", f"expected {keyword} (required for every image), got none"))
    allocated, stored = _int_or(v["BitsAllocated"], None), _int_or(v["BitsStored"], None)
    if allocated is not None and stored is not None and not 1 <= stored <= allocated:
        problems.append(("DicomSeriesError", f"expected BitsStored from 1 to BitsAllocated ({allocated}), got {stored}"))
    representation = _int_or(v["PixelRepresentation"], None)
    if v["PixelRepresentation"] not in (None, "") and representation not in (0, 1):
        problems.append(("DicomSeriesError", f"expected PixelRepresentation 0 (unsigned) or 1 (signed), got "
                                             f"{_shown(v['PixelRepresentation'])}"))
    return problems


def _read_slice(path: str) -> _Slice | str:
    """Header facts of ``path``, or the reason it is not an image we can use (a short string)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open_regular(path) as handle, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            size = os.fstat(handle.fileno()).st_size
            dataset = pydicom.dcmread(handle, defer_size=1024, specific_tags=[*HEADER_TAGS, *PATIENT_TAGS])
            truncated = any("End of file" in str(w.message) or "delimiter" in str(w.message) for w in caught)
            if truncated:  # the partial read may lack header elements: read the header alone again
                handle.seek(0)
                dataset = pydicom.dcmread(handle, stop_before_pixels=True,
                                          specific_tags=[*HEADER_TAGS[:-1], *PATIENT_TAGS])
    except UnreadableFileError:
        return "not opened (no longer a regular file, or not readable)"
    except InvalidDicomError:
        return "not a DICOM file"
    except Exception as error:  # noqa: BLE001 - pydicom raises many types (struct.error, BytesLengthException, ...)
        return f"unreadable DICOM header ({type(error).__name__})"
    try:
        meta = getattr(dataset, "file_meta", None)
        transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
        if str(getattr(meta, "MediaStorageSOPClassUID", "")) == "1.2.840.10008.1.3.10":
            return "DICOMDIR (a directory record, not an image)"
        v = _header_values(dataset)
        modality = str(v["Modality"] or "")
        pixel = dataset.get_item("PixelData", keep_deferred=True) if "PixelData" in dataset else None
        damage = None
        if truncated:
            damage = "pixel data truncated (end of file before the end of the encapsulated frames)"
        elif pixel is None and v["Rows"] is not None and modality not in _NON_IMAGE_MODALITIES:
            damage = "no pixel data"
        if (pixel is None and damage is None) or modality in _NON_IMAGE_MODALITIES or v["Rows"] is None:
            return f"not an image ({modality or 'no pixel data'})"
        length = getattr(pixel, "length", None)
        defined = length is not None and length != 0xFFFFFFFF
        offset = getattr(pixel, "value_tell", None)
        if defined and offset is not None and damage is None:
            available = size - int(offset)
            if available < int(length):  # type: ignore[arg-type]
                damage = f"pixel data truncated ({max(available, 0)} of {length} bytes present)"
        image_type = v["ImageType"] or ()
        image_type = (image_type,) if isinstance(image_type, str) else image_type
        bits_allocated = _int_or(v["BitsAllocated"], 16) or 16
        n_frames = _int_or(v["NumberOfFrames"], 1) or 1
        slope, intercept, lut_problem = _rescale(v["RescaleSlope"], v["RescaleIntercept"])
        invalid = (_header_problems(v) + _identifier_problems(v)
                   + ([("DicomSeriesError", lut_problem)] if lut_problem else []))
        frames = _frame_geometry(dataset, n_frames, slope, intercept) if n_frames > 1 else None
        found = _Slice(
            path=path,
            instance_uid=str(v["SOPInstanceUID"] or ""),
            sop_class_uid=str(v["SOPClassUID"] or ""),
            series_uid=str(v["SeriesInstanceUID"] or ""),
            study_uid=str(v["StudyInstanceUID"] or ""),
            frame_uid=str(v["FrameOfReferenceUID"] or ""),
            modality=modality,
            description=str(v["SeriesDescription"] or ""),
            series_number=_int_or(v["SeriesNumber"], None),
            instance_number=_int_or(v["InstanceNumber"], None),
            transfer_syntax=transfer_syntax,
            image_type=tuple(str(t).upper() for t in image_type),
            rows=int(v["Rows"]),
            columns=_int_or(v["Columns"], 0) or 0,
            samples_per_pixel=_int_or(v["SamplesPerPixel"], 1) or 1,
            photometric=str(v["PhotometricInterpretation"] or ""),
            bits_allocated=bits_allocated,
            bits_stored=_int_or(v["BitsStored"], None) or bits_allocated,
            pixel_representation=_int_or(v["PixelRepresentation"], 0) or 0,
            invalid=tuple(invalid),
            n_frames=n_frames,
            orientation=_floats(v["ImageOrientationPatient"], 6),
            position=_floats(v["ImagePositionPatient"], 3),  # type: ignore[arg-type]
            pixel_spacing=_floats(v["PixelSpacing"], 2),  # type: ignore[arg-type]
            slice_thickness=_float_or(v["SliceThickness"], None),
            spacing_between_slices=_float_or(v["SpacingBetweenSlices"], None),
            slope=slope,
            intercept=intercept,
            pixel_offset=int(offset) if defined and offset is not None else None,
            pixel_length=int(length) if defined else None,  # type: ignore[arg-type]
            damage=damage,
            frames=frames,
            patient=_patient_digests(dataset),
        )
        size_problem = _pixel_length_problem(found)
        return replace(found, invalid=found.invalid + (size_problem,)) if size_problem else found
    except Exception as error:  # noqa: BLE001 - any value pydicom cannot decode makes the header unusable
        return f"malformed DICOM header ({type(error).__name__})"


def open_regular(path: str | os.PathLike[str]) -> Any:
    """Open ``path`` for binary reading only if it is a regular file, without ever blocking.

    The file is opened non-blocking and checked on the open descriptor, so a FIFO, device or socket (also one that
    replaced a regular file after the folder was listed) is refused instead of hanging the read.

    Raises:
        UnreadableFileError: Not a regular file, or it cannot be opened (permission, symlink loop, gone).
    """
    name = Path(path).name
    try:
        descriptor, mode = open_regular_descriptor(path)
    except OSError as error:
        raise UnreadableFileError(f"expected a readable file, got {type(error).__name__} opening {name}") from None
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise UnreadableFileError(f"expected a regular file, got {file_kind(mode)} at {name}")
    # named after the path (not the descriptor), so that pydicom can re-open it for a deferred element
    return open(str(path), "rb", opener=lambda _name, _flags: descriptor)  # noqa: SIM115 - the caller closes it


def _skip_reason(path: Path, root: Path) -> str | None:
    """Why a listed entry is not opened (None: a regular file to read).

    Symbolic links are followed only to regular files inside the folder the user named (``root``); links leading
    outside it, broken links and loops are skipped, as are FIFOs, devices, sockets, directories named like files and
    files this process may not read.
    """
    try:
        info = os.stat(path)  # follows links; a loop or a broken link raises
    except OSError as error:
        return "symbolic link loop" if error.errno == errno.ELOOP else "unreadable (cannot be examined)"
    if not stat.S_ISREG(info.st_mode):
        return f"not a regular file ({file_kind(info.st_mode)[2:]})"
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return "symbolic link loop"
        if not target.is_relative_to(root):
            return "symbolic link leading outside the folder"
    if not os.access(path, os.R_OK):
        return "unreadable (permission denied)"
    return None


def _candidate_files(root: Path, recursive: bool, skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """The regular files to examine under ``root`` (hidden names left out), in name order.

    Entries that are not regular files, or links that leave ``root`` (see :func:`_skip_reason`), are never opened:
    they are appended to ``skipped`` as ``(path, reason)``. Linked sub-folders are not descended into (their files
    inside ``root`` are found anyway; those outside are not read).
    """
    skipped = skipped if skipped is not None else []
    if root.is_file():
        return [root]
    if not root.is_dir():
        if root.exists():
            kind = file_kind(os.stat(root).st_mode)
            raise UnreadableFileError(f"expected a DICOM folder or a regular file, got {kind} at {root.name}")
        raise UnreadableFileError(f"expected a DICOM folder or file, got nothing at {root}")
    resolved = root.resolve()
    found: list[Path] = []
    for folder, folders, names in os.walk(root) if recursive else [(str(root), [], [])]:
        found += [Path(folder) / name for name in names]
        skipped += [(str(Path(folder) / d), "linked folder (not followed)") for d in folders
                    if os.path.islink(Path(folder) / d) and not d.startswith(".")]
    if not recursive:
        for entry in root.iterdir():
            if entry.is_symlink() or not entry.is_dir():
                found.append(entry)
            elif entry.name.lower().endswith(_DICOM_SUFFIXES) and not entry.name.startswith("."):
                skipped.append((str(entry), "not a regular file (folder)"))
    regular = []
    for path in sorted(p for p in found if not p.name.startswith(".")):
        reason = _skip_reason(path, resolved)
        if reason is None:
            regular.append(path)
        elif not (recursive is False and reason == "not a regular file (folder)"
                  and not path.name.lower().endswith(_DICOM_SUFFIXES)):
            skipped.append((str(path), reason))
    return regular


# ------------------------------------------------------------------------------------------------ series analysis
def _normal(orientation: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row = np.array(orientation[:3], dtype=np.float64)
    column = np.array(orientation[3:], dtype=np.float64)
    row /= np.linalg.norm(row) or 1.0
    column /= np.linalg.norm(column) or 1.0
    return row, column, np.cross(row, column)


def _orientation_key(s: _Slice) -> tuple[float, ...]:
    return tuple(round(v, 3) + 0.0 for v in s.orientation or ())


def _analyse(index: int, uid: str, slices: list[_Slice], skipped: list[tuple[str, str]]) -> SeriesInfo:
    """Sort and check the slices of one series; collect problems instead of raising."""
    excluded = list(skipped)
    problems: list[str] = []
    blocking: list[str] = []
    kinds: list[str] = []
    tilt_shift = None
    tilt_message = None

    def block(message: str, kind: str = "DicomSeriesError") -> None:
        blocking.append(message)
        kinds.append(kind)

    images = []
    unplaceable: list[_Slice] = []
    seen: set[str] = set()
    for s in slices:
        if s.instance_uid and s.instance_uid in seen:
            excluded.append((s.path, "duplicate of an instance already in the series (same SOPInstanceUID)"))
        elif "LOCALIZER" in s.image_type:
            excluded.append((s.path, "localizer"))
        elif s.n_frames > 1:
            expanded = _expand_frames(s)
            if expanded:
                images.extend(expanded)
            else:
                excluded.append((s.path, "multi-frame file without a position and orientation for every frame"))
        elif (s.orientation is None or s.position is None) and any("Patient of" in m for _, m in s.invalid):
            unplaceable.append(s)  # present but unusable: refused below, never left out quietly
        elif s.orientation is None or s.position is None:
            excluded.append((s.path, "no ImagePositionPatient/ImageOrientationPatient"))
        else:
            images.append(s)
        seen.add(s.instance_uid)
    is_localizer = not images and not unplaceable and bool(excluded) and all(r == "localizer" for _, r in excluded)
    reasons = Counter(reason for _, reason in excluded)
    for reason, count in sorted(reasons.items()):
        problems.append(f"{count} image(s) left out: {reason}")

    damaged = [s for s in images if s.damage]
    if damaged:
        names = ", ".join(f"{Path(s.path).name} ({s.damage})" for s in damaged[:3])
        block(
            f"expected complete pixel data in every file, got {len(damaged)} damaged file(s): {names}"
            f"{', ...' if len(damaged) > 3 else ''}",
            "UnreadableFileError",
        )
    _check_headers(unplaceable + images, block)
    first = (images or slices or [None])[0]
    assert first is not None  # a series always has at least one file
    size: tuple[int, int, int] = (first.columns, first.rows, len(images))
    spacing = origin = direction = None
    ordered = images

    if not images:
        block("expected images with ImagePositionPatient and ImageOrientationPatient to build a volume from, got none")
    malformed = [s for s in images if min(s.rows, s.columns) < 1 or s.bits_allocated not in (8, 16, 32, 64)
                 or s.samples_per_pixel not in (1, 3)]
    if malformed:  # found by fuzzing: these reached numpy as dtype 'u31' or zero-sized buffers
        bad = malformed[0]
        block(
            f"expected Rows and Columns >= 1, BitsAllocated 8, 16, 32 or 64 and 1 or 3 samples per pixel, got "
            f"{bad.rows}x{bad.columns}, {bad.bits_allocated} bit, {bad.samples_per_pixel} sample(s) in "
            f"{Path(bad.path).name}" + (f" and {len(malformed) - 1} more file(s)" if len(malformed) > 1 else ""),
            "UnreadableFileError",
        )
    groups = Counter((s.rows, s.columns, s.samples_per_pixel, _orientation_key(s)) for s in images)
    if len(groups) > 1:
        listing = "; ".join(
            f"{n} of {c}x{r} oriented {list(o)}" for (r, c, _, o), n in groups.most_common()
        )
        block(f"expected one image size and orientation, got {len(groups)} kinds: {listing}")

    if images and len(groups) == 1:
        row, column, normal = _normal(images[0].orientation)  # type: ignore[arg-type]
        lengths = [float(np.linalg.norm(images[0].orientation[a:a + 3])) for a in (0, 3)]  # type: ignore[index]
        if max(abs(length - 1.0) for length in lengths) > UNIT_TOL:
            block(f"expected unit ImageOrientationPatient rows, got lengths {lengths[0]:.4g} and {lengths[1]:.4g}",
                  "GeometryError")
        if abs(float(row @ column)) > 1e-3:
            block(
                f"expected orthogonal ImageOrientationPatient rows, got a cosine of {float(row @ column):.4g} between them",
                "GeometryError",
            )
        positions = np.array([s.position for s in images], dtype=np.float64)
        distances = positions @ normal
        order = np.argsort(distances, kind="stable")
        ordered = [images[i] for i in order]
        positions, distances = positions[order], distances[order]
        pixel_spacing = ordered[0].pixel_spacing
        if pixel_spacing is None:
            block("expected PixelSpacing (row and column spacing in mm), got none: the in-plane size of a voxel is "
                  "unknown and is not guessed", "GeometryError")
            pixel_spacing = (1.0, 1.0)
        if len({s.pixel_spacing for s in ordered}) > 1:
            block(
                f"expected one PixelSpacing, got {sorted({s.pixel_spacing for s in ordered if s.pixel_spacing})}"
            )
        gaps = np.diff(distances)
        if len(ordered) == 1:
            declared = [v for v in (ordered[0].spacing_between_slices, ordered[0].slice_thickness) if v is not None]
            slice_spacing = declared[0] if declared else 0.0
            if slice_spacing > 0:
                problems.append(f"single slice: slice spacing {slice_spacing:g} mm taken from the header")
            else:
                block(f"expected a positive SpacingBetweenSlices or SliceThickness for a single-slice series, got "
                      f"{_shown(declared[0]) if declared else 'none'}", "GeometryError")
                slice_spacing = 1.0
        else:
            # the smallest distance is the nominal step even when slices are missing (a median would not be)
            step = float(np.median(gaps)) if len(gaps) < 2 else float(np.min(gaps[gaps > SPACING_ABS_TOL], initial=np.inf))
            step = float(np.median(gaps)) if not np.isfinite(step) else step
            tolerance = SPACING_ABS_TOL + SPACING_REL_TOL * abs(step)
            duplicates = int(np.sum(gaps < tolerance))
            if duplicates:
                block(
                    f"expected one slice per position, got {duplicates} slice(s) sharing a position with another: the "
                    "series holds several volumes (echoes, phases or time points)"
                )
                slice_spacing = step
            else:
                slice_spacing = float((distances[-1] - distances[0]) / (len(ordered) - 1))
                irregular = np.flatnonzero(np.abs(gaps - step) > tolerance)
                if irregular.size:
                    ratios = gaps[irregular] / step
                    whole = np.abs(ratios - np.round(ratios)) < SPACING_REL_TOL * 5
                    missing = int(np.sum(np.round(ratios[whole]) - 1))
                    if whole.all() and missing > 0:
                        where = ", ".join(f"after slice {int(i)}" for i in irregular[:5])
                        block(
                            f"expected uniformly spaced slices {step:.4g} mm apart, got {irregular.size} gap(s) of "
                            f"{', '.join(f'{g:.4g}' for g in gaps[irregular][:5])} mm ({where}): about {missing} "
                            "slice(s) missing; the series is refused rather than interpolated"
                        )
                    else:
                        block(
                            f"expected uniformly spaced slices, got distances from {gaps.min():.4g} to "
                            f"{gaps.max():.4g} mm (median {step:.4g} mm) between neighbouring slices"
                        )
                    slice_spacing = step
            offsets = positions - positions[0]
            drift = offsets - np.outer(offsets @ normal, normal)
            worst = float(np.linalg.norm(drift, axis=1).max())
            if worst > TILT_ABS_TOL and slice_spacing > 0:  # no spacing: already refused above
                span = float(distances[-1] - distances[0]) or 1.0
                angle = float(np.degrees(np.arctan2(np.linalg.norm(drift[-1]), span)))
                steps = (distances - distances[0]) / slice_spacing
                per_slice = drift[-1] / steps[-1] if steps[-1] > 0 else drift[-1]
                linear = steps[-1] > 0 and float(np.linalg.norm(drift - np.outer(steps, per_slice), axis=1).max()) <= TILT_ABS_TOL
                tilt_message = (
                    f"expected slices stacked along their normal, got an in-plane drift of {worst:.3g} mm across the "
                    f"stack (gantry tilt of about {angle:.2f} degrees); a tilted stack is a sheared grid that a volume "
                    "cannot represent: "
                    + (
                        "load it with resample_tilt=True (--resample-tilt) to resample it onto an orthogonal grid"
                        if linear
                        else "the drift is not linear either, so it is not resampled"
                    )
                )
                block(tilt_message, "GeometryError")
                if linear:
                    tilt_shift = tuple(float(v) for v in per_slice)
        spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), float(slice_spacing))
        origin = tuple(float(v) for v in positions[0])
        direction = tuple(tuple(float(v) for v in r) for r in np.column_stack([row, column, normal]))
        if spacing[2] <= 0 or min(spacing) <= 0:
            block(f"expected positive spacing, got {spacing} mm")
        size = (ordered[0].columns, ordered[0].rows, len(ordered))

    syntaxes = sorted({_TRANSFER_SYNTAX_NAMES.get(s.transfer_syntax, s.transfer_syntax) for s in ordered or slices})
    return SeriesInfo(
        index=index,
        series_instance_uid=uid,
        study_instance_uid=first.study_uid,
        frame_of_reference_uid=first.frame_uid,
        modality=first.modality,
        series_description=first.description,
        series_number=first.series_number,
        size=size,
        spacing=spacing,  # type: ignore[arg-type]
        origin=origin,  # type: ignore[arg-type]
        direction=direction,
        transfer_syntaxes=tuple(syntaxes),
        files=tuple(s.path for s in ordered),
        excluded=tuple(excluded),
        problems=tuple(blocking + problems),
        blocking=tuple(blocking),
        is_localizer=is_localizer,
        tilt_shift=tilt_shift if tilt_message is not None and list(blocking) == [tilt_message] else None,
        _slices=tuple(ordered),
        _error_type=kinds[0] if kinds else "DicomSeriesError",
    )


#: Attributes that must be the same in every image of a series (the image size, samples per pixel, orientation and
#: pixel spacing are checked with the geometry).
SERIES_CONSTANTS = (("Modality", "modality"), ("StudyInstanceUID", "study_uid"),
                    ("FrameOfReferenceUID", "frame_uid"), ("SOPClassUID", "sop_class_uid"),
                    ("PhotometricInterpretation", "photometric"), ("BitsAllocated", "bits_allocated"),
                    ("BitsStored", "bits_stored"), ("PixelRepresentation", "pixel_representation"))
#: Photometric interpretations of grey images (one sample) and of colour images (three samples).
GREY_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2"})
COLOR_PHOTOMETRIC = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT",
                               "YBR_RCT"})
#: Largest deviation from 1 of the length of an ImageOrientationPatient row (values are stored with few decimals).
UNIT_TOL = 1e-3


def _check_headers(images: Sequence[_Slice], block: Callable[..., None]) -> None:
    """Refuse header values that would otherwise be guessed: unusable values in any image, attributes that differ
    between the images of one series, and pixels that are not intensities (palette indices)."""
    invalid = [(s, problem) for s in images for problem in s.invalid]
    if invalid:
        (bad, (kind, message)), files = invalid[0], {s.path for s, _ in invalid}
        block(f"{message} in {Path(bad.path).name}" + (f" and {len(files) - 1} more file(s)" if len(files) > 1 else ""),
              kind)
    for keyword, attribute in SERIES_CONSTANTS:
        values = Counter(getattr(s, attribute) for s in images)
        if len(values) > 1:
            listing = ", ".join(f"{n} with {_shown_identifier(keyword, value)}" for value, n in values.most_common(4))
            block(f"expected one {keyword} for every image of a series, got {len(values)} values: {listing}")
    for index, keyword in enumerate(PATIENT_TAGS):  # values never shown, not even as digests
        values = Counter(s.patient[index] if s.patient else "" for s in images)
        if len(values) > 1:
            block(f"expected one {keyword} for every image of a series, got {len(values)} different values in "
                  f"{len(images)} images (not shown: patient data); the files of several patients share a "
                  "SeriesInstanceUID")
    if not images:
        return
    first = images[0]
    allowed = GREY_PHOTOMETRIC if first.samples_per_pixel == 1 else COLOR_PHOTOMETRIC
    if first.photometric and first.photometric.upper() not in allowed:
        what = "grey" if first.samples_per_pixel == 1 else "colour"
        block(f"expected a {what} PhotometricInterpretation ({', '.join(sorted(allowed))}) for "
              f"{first.samples_per_pixel} sample(s) per pixel, got {_shown(first.photometric)}"
              + (": palette indices are not intensities" if "PALETTE" in first.photometric.upper() else ""))


def _expand_frames(s: _Slice) -> list[_Slice]:
    """One slice per frame of a multi-frame file, with that frame's geometry; empty when a frame cannot be placed."""
    if s.frames is None:
        return []
    expanded = []
    for index, frame in enumerate(s.frames):
        orientation = frame.orientation or s.orientation
        if frame.position is None or orientation is None:
            return []
        expanded.append(
            replace(
                s,
                position=frame.position,
                orientation=orientation,
                pixel_spacing=frame.pixel_spacing or s.pixel_spacing,
                slice_thickness=frame.slice_thickness or s.slice_thickness,
                slope=frame.slope,
                intercept=frame.intercept,
                frames=None,
                frame_index=index,
                invalid=s.invalid + ((("DicomSeriesError", frame.problem),) if frame.problem else ()),
            )
        )
    return expanded


@dataclass
class ScanReport:
    """What a scan found besides image series: files that are not DICOM images, and localizer-only series."""

    not_dicom: list[str] = field(default_factory=list)
    not_image: list[tuple[str, str]] = field(default_factory=list)
    localizer_series: list[SeriesInfo] = field(default_factory=list)
    not_opened: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.not_opened:
            parts.append(f"{len(self.not_opened)} entr(y/ies) not opened (not regular files, links leaving the folder "
                         "or unreadable)")
        if self.not_dicom:
            parts.append(f"{len(self.not_dicom)} file(s) not DICOM")
        if self.not_image:
            parts.append(f"{len(self.not_image)} DICOM file(s) without an image or unreadable")
        if self.localizer_series:
            parts.append(f"{len(self.localizer_series)} localizer series")
        return ", ".join(parts) or "nothing else"


def scan_dicom_folder(
    path: str | os.PathLike[str],
    recursive: bool = True,
    *,
    include_localizers: bool = False,
    report: ScanReport | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[SeriesInfo]:
    """List the DICOM image series under ``path`` from headers only.

    Args:
        path: Folder (or a single DICOM file).
        recursive: Descend into sub-folders.
        include_localizers: Also list series made only of localizer images (flagged ``is_localizer``).
        report: Filled with the files that were skipped (not DICOM, not images), the localizer series and the
            entries never opened (``not_opened``: FIFOs, devices, sockets, links leaving ``path``, loops,
            unreadable files), which are also counted in a warning.
        progress: Called as ``progress(files_done, files_total)`` every 100 files and at the end.

    Returns:
        Series ordered by StudyInstanceUID, SeriesNumber and SeriesInstanceUID, each with its index.
    """
    root = Path(path)
    report = report if report is not None else ScanReport()
    by_series: dict[str, list[_Slice]] = defaultdict(list)
    candidates = _candidate_files(root, recursive, report.not_opened)
    if report.not_opened:
        reasons = Counter(reason for _, reason in report.not_opened)
        logger.warning("DICOM scan: %d entr(y/ies) not opened: %s", len(report.not_opened),
                       ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())))
    for done, file in enumerate(candidates, start=1):
        if progress is not None and (done % 100 == 0 or done == len(candidates)):
            progress(done, len(candidates))
        result = _read_slice(str(file))
        if isinstance(result, str):
            if result == "not a DICOM file":
                report.not_dicom.append(str(file))
            else:
                report.not_image.append((str(file), result))
            continue
        by_series[result.series_uid].append(result)
    keys = sorted(
        by_series,
        key=lambda uid: (by_series[uid][0].study_uid, by_series[uid][0].series_number or 0, uid),
    )
    series: list[SeriesInfo] = []
    for uid in keys:
        info = _analyse(len(series), uid, by_series[uid], [])
        if info.is_localizer and not include_localizers:
            report.localizer_series.append(info)
            continue
        series.append(info)
    if report.not_dicom or report.not_image or report.localizer_series or report.not_opened:
        logger.debug("DICOM scan of %s: %d image series; skipped %s", root.name or str(root), len(series), report.summary())
    return series


# ------------------------------------------------------------------------------------------------ selection
def _choices(series: Sequence[SeriesInfo]) -> str:
    return "; ".join(s.describe() for s in series)


def select_series(path: str | os.PathLike[str], series: str | int | None = None, recursive: bool = True) -> SeriesInfo:
    """Scan ``path`` and return the series chosen by UID or index (None: the only one).

    Raises:
        DicomSeriesError: No image series, several series and none chosen, or an unknown UID/index; the message
            lists the series found (index, modality, slices, UID; never the description).
        UnreadableFileError: ``path`` is a single file that is not a readable DICOM image.
    """
    root = Path(path)
    report = ScanReport()
    found = scan_dicom_folder(root, recursive, report=report)
    if not found:
        if root.is_file():
            reason = (report.not_image[0][1] if report.not_image else "not a DICOM file")
            raise UnreadableFileError(f"expected a DICOM image file, got {root.name}: {reason}")
        raise DicomSeriesError(
            f"expected at least one DICOM image series in {root.name or root}, got none ({report.summary()})"
        )
    if series is None:
        if len(found) == 1:
            return found[0]
        raise DicomSeriesError(
            f"expected one series or a choice among the {len(found)} series found, got no choice; pass a "
            f"SeriesInstanceUID or an index ('medanalysis dicom ls' shows their descriptions): {_choices(found)}"
        )
    if isinstance(series, (int, np.integer)) or (isinstance(series, str) and series.strip().isdigit() and "." not in series):
        number = int(series)
        if 0 <= number < len(found):
            return found[number]
        raise DicomSeriesError(f"expected a series index from 0 to {len(found) - 1}, got {number}: {_choices(found)}")
    for info in found:
        if info.series_instance_uid == str(series).strip():
            return info
    raise DicomSeriesError(f"expected one of the series found, got unknown SeriesInstanceUID {series!r}: {_choices(found)}")


# ------------------------------------------------------------------------------------------------ pixels
def _raw_dtype(s: _Slice) -> np.dtype:
    kind = "i" if s.pixel_representation == 1 else "u"
    return np.dtype(f"<{kind}{s.bits_allocated // 8}")


def _native_ok(slices: Sequence[_Slice]) -> bool:
    first = slices[0]
    for s in slices:
        if (
            s.transfer_syntax not in _NATIVE_LITTLE_ENDIAN
            or s.samples_per_pixel != 1
            or s.bits_allocated not in (8, 16, 32)
            or s.pixel_offset is None
            or (s.bits_allocated, s.pixel_representation) != (first.bits_allocated, first.pixel_representation)
        ):
            return False
    return True


def _read_native(slices: Sequence[_Slice]) -> np.ndarray:
    """Stack uncompressed slices by reading each file's pixel bytes at the offset found in the header scan."""
    first = slices[0]
    dtype = _raw_dtype(first)
    out = np.empty((len(slices), first.rows, first.columns), dtype=dtype)
    expected = first.rows * first.columns * dtype.itemsize
    for index, s in enumerate(slices):
        if s.pixel_length is not None and s.pixel_length < expected * s.n_frames:
            raise UnreadableFileError(
                f"expected {expected * s.n_frames} bytes of pixel data ({s.n_frames} frame(s) of {first.columns}x"
                f"{first.rows}, {first.bits_allocated} bit) in {Path(s.path).name}, got a pixel data element of "
                f"{s.pixel_length} bytes"
            )
        with open_regular(s.path) as handle:
            handle.seek((s.pixel_offset or 0) + s.frame_index * expected)
            got = handle.readinto(memoryview(out[index]).cast("B"))
        if got != expected:
            raise UnreadableFileError(
                f"expected {expected} bytes of pixel data in {Path(s.path).name}, got {got}: the file is truncated"
            )
    bits = first.bits_stored
    if bits < first.bits_allocated:
        if first.pixel_representation == 0:
            np.bitwise_and(out, np.array((1 << bits) - 1, dtype=dtype), out=out)
        else:
            shift = np.array(first.bits_allocated - bits, dtype=dtype)
            if out.min() < -(1 << (bits - 1)) or out.max() >= (1 << (bits - 1)):
                np.left_shift(out, shift, out=out)
                np.right_shift(out, shift, out=out)
    return out


def _decode_with_pydicom(slices: Sequence[_Slice]) -> np.ndarray:
    """Decode files with pydicom (stored values, no modality LUT) and stack their frames in slice order.

    pydicom decodes RLE itself and JPEG, JPEG-LS and JPEG 2000 through the optional pylibjpeg plugins
    (``pip install medanalysis[dicom]``).
    """
    import pydicom

    from MedAnalysisLib.privacy import contain_third_party

    decoded: dict[str, np.ndarray] = {}
    planes = []
    for s in slices:
        if s.path not in decoded:
            try:
                with contain_third_party("decoding DICOM pixels with pydicom", quote=False):
                    with open_regular(s.path) as handle, warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        array = pydicom.dcmread(handle).pixel_array
                    messages = [str(w.message) for w in caught]
            except Exception as error:  # noqa: BLE001 - missing decoder plugins or damaged frames, many types
                raise UnreadableFileError(
                    f"expected decodable pixel data in {Path(s.path).name} ({_TRANSFER_SYNTAX_NAMES.get(s.transfer_syntax, s.transfer_syntax)}), "
                    f"got {type(error).__name__}: {str(error)[:200]} (compressed images need the "
                    "decoders of 'pip install medanalysis[dicom]')"
                ) from error
            _refuse_excess_segments(s, messages)
            array = array[np.newaxis] if s.n_frames == 1 else array
            expected = (s.n_frames, s.rows, s.columns) + ((s.samples_per_pixel,) if s.samples_per_pixel > 1 else ())
            if array.shape != expected:
                raise UnreadableFileError(
                    f"expected decoded frames of shape {expected} in {Path(s.path).name}, got {array.shape}"
                )
            decoded[s.path] = array
        planes.append(decoded[s.path][s.frame_index])
    return np.stack(planes)


_RLE = "1.2.840.10008.1.2.5"
_RLE_EXCESS = re.compile(r"non-conformant padding - (\d+) vs\. (\d+) bytes expected")


def _refuse_excess_segments(s: _Slice, messages: Sequence[str]) -> None:
    """pydicom crops an RLE segment that decodes to more than Rows x Columns bytes (with a warning): more than the
    one padding byte means the header does not describe the pixels (a 4x8 header on 8x8 pixels), so refuse."""
    for message in messages:
        found = _RLE_EXCESS.search(message)
        if found and int(found.group(1)) > int(found.group(2)) + 1:
            raise UnreadableFileError(
                f"expected RLE segments of {found.group(2)} bytes ({s.columns}x{s.rows}) in {Path(s.path).name}, got "
                f"{found.group(1)} bytes: the header does not describe the compressed pixel data"
            )


_JPEG_FAMILY = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                          "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
_J2K_FAMILY = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                         "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})
#: JPEG start-of-frame markers (SOF0-SOF15 without DHT, JPG and DAC) and JPEG-LS SOF55.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}


def _jpeg_frame_header(data: bytes) -> tuple[int, int, int, int] | None:
    """``(rows, columns, samples, precision)`` from a JPEG or JPEG-LS codestream's start-of-frame, or None."""
    if data[:2] != b"\xff\xd8":
        return None
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        (length,) = struct.unpack(">H", data[offset + 2:offset + 4])
        if marker in _SOF_MARKERS:
            if offset + 10 > len(data):
                return None
            precision, rows, columns, samples = struct.unpack(">BHHB", data[offset + 4:offset + 10])
            return rows, columns, samples, precision
        offset += 2 + length
    return None


def _j2k_frame_header(data: bytes) -> tuple[int, int, int, int] | None:
    """``(rows, columns, samples, precision)`` from a JPEG 2000 codestream's SIZ segment, or None."""
    if data[:4] != b"\xff\x4f\xff\x51" or len(data) < 43:
        return None
    x_size, y_size, x_offset, y_offset = struct.unpack(">IIII", data[8:24])
    (samples,) = struct.unpack(">H", data[40:42])
    precision = (data[42] & 0x7F) + 1
    return y_size - y_offset, x_size - x_offset, samples, precision


def _check_codestreams(slices: Sequence[_Slice]) -> None:
    """Compare the image size, samples and bit depth each JPEG, JPEG-LS or JPEG 2000 frame declares with the DICOM
    header before decoding: GDCM decodes by the codestream and returned a 4x8 header on 8x8 pixels as a cropped
    image, or 16-bit pixels under an 8-bit header as 16-bit values, without a word."""
    import pydicom
    from pydicom.encaps import generate_frames

    for s in {s.path: s for s in slices if s.transfer_syntax in _JPEG_FAMILY | _J2K_FAMILY}.values():
        parse = _jpeg_frame_header if s.transfer_syntax in _JPEG_FAMILY else _j2k_frame_header
        with open_regular(s.path) as handle:
            dataset = pydicom.dcmread(handle)
        try:
            first = next(iter(generate_frames(dataset.PixelData, number_of_frames=s.n_frames)))
        except Exception as error:  # noqa: BLE001 - damaged encapsulation, many types
            raise UnreadableFileError(f"expected encapsulated frames in {Path(s.path).name}, got damaged "
                                      f"encapsulation ({type(error).__name__})") from error
        found = parse(bytes(first))
        if found is None:
            raise UnreadableFileError(f"expected a {_TRANSFER_SYNTAX_NAMES.get(s.transfer_syntax, 'compressed')} "
                                      f"codestream in {Path(s.path).name}, got data without a readable frame header")
        rows, columns, samples, precision = found
        if (rows, columns, samples) != (s.rows, s.columns, s.samples_per_pixel) or precision > s.bits_allocated:
            raise UnreadableFileError(
                f"expected compressed frames of {s.columns}x{s.rows}, {s.samples_per_pixel} sample(s), at most "
                f"{s.bits_allocated} bit in {Path(s.path).name} (as its header declares), got {columns}x{rows}, "
                f"{samples} sample(s), {precision} bit: the header does not describe the compressed pixel data"
            )


def _read_with_sitk(info: SeriesInfo) -> np.ndarray:
    """Decode through SimpleITK/GDCM (compressed, big endian, color); returns rescaled values as GDCM does."""
    import SimpleITK as sitk

    from MedAnalysisLib.privacy import quiet_simpleitk

    quiet_simpleitk()  # GDCM's warnings go straight to stderr and may quote header values
    for file in dict.fromkeys(info.files):  # GDCM opens files by name: never hand it a FIFO or device
        open_regular(file).close()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(info.files))
    try:
        with SIMPLEITK_IO_LOCK:
            image = reader.Execute()
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise UnreadableFileError(
            f"expected decodable pixel data in series {info.series_instance_uid}, got a decoding error "
            f"({info.n_slices} file(s), {', '.join(info.transfer_syntaxes)}): {lines[-1][:200] if lines else error}"
        ) from error
    size = image.GetSize()
    expected_size = info.size if len(size) == 3 else info.size[:2]
    if tuple(size[: len(expected_size)]) != tuple(expected_size):
        raise GeometryError(f"expected SimpleITK to read a grid of size {info.size}, got {size}")
    if len(size) == 3 and info.spacing is not None and info.direction is not None and info.n_slices > 1:
        ours = np.array(info.direction)
        theirs = np.array(image.GetDirection()).reshape(3, 3)
        if (
            np.abs(np.subtract(image.GetOrigin(), info.origin)).max() > SITK_GEOMETRY_TOL
            or np.abs(np.subtract(image.GetSpacing()[:2], info.spacing[:2])).max() > SITK_GEOMETRY_TOL
            or np.abs(ours - theirs).max() > SITK_GEOMETRY_TOL
        ):
            raise GeometryError(
                "expected SimpleITK/GDCM to find the geometry computed from the headers (origin "
                f"{info.origin}, spacing {info.spacing}), got origin {image.GetOrigin()}, spacing {image.GetSpacing()}, "
                f"direction {np.round(theirs, 5).tolist()}"
            )
    array = sitk.GetArrayFromImage(image)
    return array if array.ndim >= 3 else array[np.newaxis]


def _rescaled(raw: np.ndarray, slices: Sequence[_Slice]) -> np.ndarray:
    """Apply each slice's RescaleSlope/RescaleIntercept; keep an integer type when the result is integral."""
    pairs = [(s.slope, s.intercept) for s in slices]
    if all(p == (1.0, 0.0) for p in pairs):
        return raw
    integral = all(float(a).is_integer() and float(b).is_integer() for a, b in pairs)
    if integral:
        low, high = int(raw.min()), int(raw.max())
        candidates = [a * v + b for a, b in set(pairs) for v in (low, high)]
        lo, hi = int(min(candidates)), int(max(candidates))
        fitting = [
            np.dtype(name)
            for name in (raw.dtype.name, "int16", "int32", "int64")
            if np.iinfo(name).min <= lo and hi <= np.iinfo(name).max
        ]
        if not fitting:
            integral = False
    if integral:
        dtype = fitting[0]
        out = raw if dtype == raw.dtype else raw.astype(dtype)
        for index, (a, b) in enumerate(pairs):
            if a != 1.0:
                out[index] *= dtype.type(a)
            if b != 0.0:
                out[index] += dtype.type(b)
        return out
    out = raw.astype(np.float32)
    slopes = np.array([a for a, _ in pairs], dtype=np.float32).reshape((-1,) + (1,) * (raw.ndim - 1))
    intercepts = np.array([b for _, b in pairs], dtype=np.float32).reshape(slopes.shape)
    out *= slopes
    out += intercepts
    return out


def _same_dtype_as_native(array: np.ndarray, slices: Sequence[_Slice]) -> np.ndarray:
    """Give GDCM's output the type the uncompressed path would give: integral values in the smallest of int16/int32
    (or the stored type when no LUT applies), fractional ones as float32."""
    if np.issubdtype(array.dtype, np.floating):
        integral_lut = all(float(s.slope).is_integer() and float(s.intercept).is_integer() for s in slices)
        if integral_lut and np.all(np.isfinite(array)) and np.array_equal(array, np.round(array)):
            low, high = float(array.min()), float(array.max())
            target = next((t for t in ("int16", "int32") if np.iinfo(t).min <= low and high <= np.iinfo(t).max), None)
            return array.astype(target) if target else array
        return array.astype(np.float32)
    if array.dtype.itemsize > 2 and array.size and any((s.slope, s.intercept) != (1.0, 0.0) for s in slices):
        low, high = int(array.min()), int(array.max())
        if np.iinfo(np.int16).min <= low and high <= np.iinfo(np.int16).max:
            return array.astype(np.int16)
    return array


def _raise_blocking(info: SeriesInfo) -> None:
    error_class = {"GeometryError": GeometryError, "UnreadableFileError": UnreadableFileError}.get(
        info._error_type, DicomSeriesError
    )
    raise error_class(f"series {info.describe()}: {info.blocking[0]}")


def load_dicom_series(
    path: str | os.PathLike[str],
    series: str | int | None = None,
    *,
    memory_budget_bytes: int | None = None,
    allow_2d: bool = False,
    info: SeriesInfo | None = None,
    resample_tilt: bool = False,
) -> Volume:
    """Load one DICOM series (or one DICOM file) as a :class:`Volume`.

    Args:
        path: Folder scanned recursively, or a single DICOM file (that file alone is loaded).
        series: SeriesInstanceUID, or the index from :func:`scan_dicom_folder` / ``medanalysis dicom ls``; None
            when there is exactly one series.
        memory_budget_bytes: Largest voxel array allowed, checked from the headers (None = half the RAM).
        allow_2d: Accept a single-slice series as a one-slice volume ``(1, j, i)``.
        info: A :class:`SeriesInfo` from an earlier scan (skips scanning again; ``path``/``series`` are ignored).
        resample_tilt: Resample a gantry-tilted stack (linear in-plane drift) onto an orthogonal grid with linear
            interpolation (slice normal kept, in-plane extent grown to hold every slice); refused otherwise.

    Returns:
        Voxels ``(k, j, i)`` (``(k, j, i, 3)`` for color) after the modality LUT (HU for CT), slices ordered along
        the normal; LPS geometry; ``metadata`` with Modality, the UIDs and ``source_files`` (no SeriesDescription).

    Raises:
        DicomSeriesError: No/ambiguous/unknown series, mixed sizes, orientations or other per-series attributes,
            missing slices, several volumes, an unusable modality LUT, palette colour or bit layout.
        GeometryError: Gantry tilt or inconsistent geometry.
        UnreadableFileError: Truncated or undecodable pixel data; a file that is not DICOM.
        ImageValidationError: One slice without ``allow_2d``; non-finite values.
        MemoryBudgetError: The volume would exceed the budget.
    """
    info = info or select_series(path, series)
    tilted = resample_tilt and info.tilt_shift is not None
    if not info.loadable and not tilted:
        _raise_blocking(info)
    if info.n_slices == 1 and not allow_2d:
        raise ImageValidationError(
            f"expected a 3D series, got a single slice ({info.describe()}); pass allow_2d=True to load it as a "
            "one-slice volume"
        )
    slices = info._slices
    first = slices[0]
    rescaling = any((s.slope, s.intercept) != (1.0, 0.0) for s in slices)
    item = 4 if rescaling else max(first.bits_allocated // 8, 1)
    shape = (info.n_slices, first.rows, first.columns) + ((first.samples_per_pixel,) if first.samples_per_pixel > 1 else ())
    _check_codestreams(slices)  # a header that does not describe its pixels is refused before the budget is asked
    check_memory_budget(shape, np.dtype(f"u{item}"), memory_budget_bytes)
    if _native_ok(slices):
        array = _rescaled(_read_native(slices), slices)
    elif (any(s.n_frames > 1 for s in slices) or len({(s.slope, s.intercept) for s in slices}) > 1
          or all(s.transfer_syntax == _RLE for s in slices)):
        # RLE: pydicom decodes it without plugins and, unlike GDCM, reports segments longer than the header says
        # GDCM applies a modality LUT per slice but casts every slice to the first slice's pixel type (a slice
        # with another intercept wraps around): decode stored values and apply each slice's own LUT instead
        array = _rescaled(_decode_with_pydicom(slices), slices)
    else:
        try:
            array = _read_with_sitk(info)  # one LUT for the whole series: GDCM applies it correctly
        except UnreadableFileError as gdcm_error:
            try:
                array = _rescaled(_decode_with_pydicom(slices), slices)
            except UnreadableFileError as pydicom_error:
                raise UnreadableFileError(f"{gdcm_error}; pydicom could not decode it either: {pydicom_error}") from gdcm_error
        array = _same_dtype_as_native(array, slices)
    if array.shape[:3] != shape[:3]:
        raise GeometryError(f"expected voxels of shape {shape} (k, j, i), got {array.shape}")
    _remember_free_text(info)
    metadata: dict[str, Any] = {
        "Modality": info.modality,
        "SeriesInstanceUID": info.series_instance_uid,
        "StudyInstanceUID": info.study_instance_uid,
        "FrameOfReferenceUID": info.frame_of_reference_uid,
        "source_files": list(dict.fromkeys(info.files)),
    }
    assert info.spacing is not None and info.origin is not None and info.direction is not None
    direction = np.array(info.direction)
    check_direction(direction)
    volume = Volume(array, spacing=info.spacing, origin=info.origin, direction=direction, metadata=metadata)
    check_finite(volume, what=f"series {info.series_instance_uid}")
    if tilted:
        volume = _remove_tilt(volume, np.array(info.tilt_shift))
    return volume


def _remember_free_text(info: SeriesInfo) -> None:
    """Hand the series' free text (SeriesDescription, which sites fill with names and dates) to the PHI filter, so
    that no message, log line or summary written after loading can carry it."""
    from MedAnalysisLib.privacy import remember

    remember({s.description for s in info._slices if s.description})


def _remove_tilt(stacked: Volume, shift: np.ndarray) -> Volume:
    """Resample a tilted stack onto an orthogonal grid.

    ``stacked`` holds the slices on the grid they would have without tilt (origin at the first slice, k along the
    normal); slice k really lies ``k * shift`` mm further (``shift`` is in-plane, LPS). The output keeps spacing and
    direction and grows in i and j so that every slice fits; voxels outside the acquired slices get the minimum value.
    """
    import SimpleITK as sitk

    spacing = np.array(stacked.spacing)
    row, column, normal = stacked.direction.T
    last = stacked.shape[0] - 1
    # in-plane offset of the first and last slice, in voxels along i and j
    offsets_i = np.array([0.0, last * float(shift @ row) / spacing[0]])
    offsets_j = np.array([0.0, last * float(shift @ column) / spacing[1]])
    low_i, high_i = int(np.floor(offsets_i.min())), int(np.ceil(offsets_i.max()))
    low_j, high_j = int(np.floor(offsets_j.min())), int(np.ceil(offsets_j.max()))
    k, j, i = stacked.shape
    origin = np.array(stacked.origin) + low_i * spacing[0] * row + low_j * spacing[1] * column
    reference = sitk.Image([i + high_i - low_i, j + high_j - low_j, k], sitk.sitkFloat32)
    reference.SetSpacing(tuple(spacing))
    reference.SetOrigin(tuple(origin))
    reference.SetDirection(tuple(stacked.direction.ravel()))
    # a physical point p lies on true slice k = (p - o).n / dz, where the untilted grid has it at p - k * shift
    matrix = np.eye(3) - np.outer(shift, normal) / spacing[2]
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(matrix.ravel()))
    transform.SetTranslation(tuple(shift * float(np.array(stacked.origin) @ normal) / spacing[2]))
    source = Volume(stacked.array.astype(np.float32), stacked.spacing, stacked.origin, stacked.direction).to_sitk()
    fill = float(stacked.array.min())
    resampled = sitk.GetArrayFromImage(sitk.Resample(source, reference, transform, sitk.sitkLinear, fill))
    if np.issubdtype(stacked.array.dtype, np.integer):
        resampled = np.rint(resampled).astype(stacked.array.dtype)
    else:
        resampled = resampled.astype(stacked.array.dtype)
    return Volume(resampled, stacked.spacing, tuple(origin), stacked.direction, stacked.metadata)  # type: ignore[arg-type]

