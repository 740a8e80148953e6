"""Hostile and careless DICOM input: special files in a study folder, header values that used to be silently
repaired, attributes that differ inside one series, what a DICOM SEG copies from its source, and CSV cells.

Every input is built here, tiny, in ``tmp_path``. Anything that could hang (a FIFO) runs in a child process with a
timeout, so that a regression fails instead of blocking the suite.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers_io import CANARIES, write_dicom_series
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement

from MedAnalysisLib.errors import DicomSeriesError, GeometryError
from MedAnalysisLib.io.dicom import load_dicom_series, open_regular, scan_dicom_folder

TESTING = Path(__file__).resolve().parent
DESCRIPTION = "CANARY DESCRIPTION Smith"


@pytest.fixture(autouse=True)
def _clean_phi_filter() -> Iterator[None]:
    """Loading a series teaches the PHI filter its description; leave no remembered value to later tests."""
    from MedAnalysisLib.privacy import forget_all

    yield
    forget_all()


def _series(folder: Path, n: int = 3, **options: object) -> list[Path]:
    pixels = np.arange(n * 4 * 5, dtype=np.int16).reshape(n, 4, 5)
    return write_dicom_series(folder, pixels, description=DESCRIPTION, **options)  # type: ignore[arg-type]


def _edit(paths: list[Path], **values: object) -> None:
    """Set (or delete, with None) header values in ``paths``; text a numeric VR cannot hold is stored as LO, as a
    careless writer would leave it."""
    for path in paths:
        dataset = pydicom.dcmread(path)
        for keyword, value in values.items():
            tag = tag_for_keyword(keyword)
            if value is None:
                if keyword in dataset:
                    del dataset[tag]
                continue
            try:
                with warnings.catch_warnings(), pytest.MonkeyPatch.context() as patch:
                    warnings.simplefilter("ignore", UserWarning)  # pydicom: "invalid value for VR DS", the point here
                    patch.setattr(pydicom_config.settings, "writing_validation_mode", pydicom_config.IGNORE)
                    dataset.add(DataElement(tag, dictionary_VR(tag), value))
            except (ValueError, TypeError):
                dataset.add(DataElement(tag, "LO", str(value)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset.save_as(path)


def _refusal(folder: Path, error: type[Exception], **load: object) -> str:
    with pytest.raises(error) as raised:
        load_dicom_series(folder, **load)  # type: ignore[arg-type]
    message = str(raised.value)
    assert type(raised.value) is error, message
    for canary in (*CANARIES, DESCRIPTION, "Smith"):
        assert canary not in message
    return message


# ------------------------------------------------------------------------------------------------ special files
_CHILD = """
import json, sys
from pathlib import Path
from MedAnalysisLib.io.dicom import ScanReport, load_dicom_series, scan_dicom_folder
from MedAnalysisLib.errors import UnreadableFileError
root = Path(sys.argv[1])
report = ScanReport()
series = scan_dicom_folder(root / "study", report=report)
flat = ScanReport()
scan_dicom_folder(root / "study" / "series", recursive=False, report=flat)
volume = load_dicom_series(root / "study")
try:
    load_dicom_series(root / "study" / "series" / "pipe.dcm")
    fifo_error = None
except UnreadableFileError as error:
    fifo_error = str(error)
print(json.dumps({"slices": [s.n_slices for s in series], "shape": list(volume.shape),
                  "reasons": sorted(reason for _, reason in report.not_opened),
                  "flat": sorted(reason for _, reason in flat.not_opened),
                  "summary": report.summary(), "fifo_error": fifo_error}))
"""


def _run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTING.parent), str(TESTING)])}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


def test_special_entries_in_a_study_folder_are_skipped_and_counted_never_opened(tmp_path: Path) -> None:
    """A FIFO, a socket, a directory named *.dcm, links leaving the folder (to a file and to a folder), a broken link
    and a link loop sit beside a real series: the scan and the load never open them (a FIFO would block forever),
    count them in the report and a warning, and the series loads; a link to a slice inside the folder is followed
    (and left out as a duplicate instance). A FIFO named as the input is refused with the reason."""
    series = tmp_path / "study" / "series"
    paths = _series(series)
    outside = tmp_path / "outside"
    _series(outside)
    os.mkfifo(series / "pipe.dcm")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(series / "sock.dcm"))
        (series / "folder.dcm").mkdir()
        os.symlink(outside / "slice000.dcm", series / "outside.dcm")
        os.symlink(outside, series / "linked_folder")
        os.symlink(series / "missing.dcm", series / "broken.dcm")
        os.symlink(series / "loop.dcm", series / "loop.dcm")
        os.symlink(paths[0], series / "inside.dcm")
        result = _run_child(_CHILD, str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["slices"] == [3] and found["shape"] == [3, 4, 5]
    assert found["reasons"] == sorted([
        "linked folder (not followed)", "not a regular file (FIFO)", "not a regular file (socket)",
        "symbolic link leading outside the folder", "symbolic link loop", "unreadable (cannot be examined)",
    ])
    assert found["flat"] == sorted([
        "not a regular file (FIFO)", "not a regular file (folder)", "not a regular file (socket)",
        "symbolic link leading outside the folder", "symbolic link loop", "unreadable (cannot be examined)",
    ])
    assert found["summary"].startswith("6 entr(y/ies) not opened")
    assert "DICOM scan: 6 entr(y/ies) not opened" in result.stderr
    assert found["fifo_error"] == "expected a DICOM folder or a regular file, got a FIFO at pipe.dcm"


def test_open_regular_refuses_a_fifo_and_a_device_without_blocking(tmp_path: Path) -> None:
    """The descriptor is checked after a non-blocking open, so a FIFO swapped in after the listing cannot block a
    header or pixel read (nor the DICOM SEG writer, which reads its sources the same way)."""
    os.mkfifo(tmp_path / "swapped.dcm")
    code = textwrap.dedent("""
        import sys
        from MedAnalysisLib.io.dicom import open_regular
        from MedAnalysisLib.errors import UnreadableFileError
        for path in sys.argv[1:]:
            try:
                open_regular(path)
            except UnreadableFileError as error:
                print(error)
    """)
    result = _run_child(code, str(tmp_path / "swapped.dcm"), os.devnull, timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "expected a regular file, got a FIFO at swapped.dcm",
        f"expected a regular file, got a character device at {Path(os.devnull).name}",
    ]
    with open_regular(_series(tmp_path / "s", n=1)[0]) as handle:
        assert handle.name.endswith("slice000.dcm") and handle.read(132)[128:] == b"DICM"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files without permission")
def test_an_unreadable_file_is_counted_and_skipped(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    secret = tmp_path / "secret.dcm"
    secret.write_bytes(paths[0].read_bytes())
    secret.chmod(0)
    from MedAnalysisLib.io.dicom import ScanReport

    report = ScanReport()
    assert [s.n_slices for s in scan_dicom_folder(tmp_path, report=report)] == [3]
    assert report.not_opened == [(str(secret), "unreadable (permission denied)")]


# ------------------------------------------------------------------------------------------------ silent repairs
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"RescaleSlope": "0"}, "expected a finite, non-zero RescaleSlope, got '0'"),
        ({"RescaleSlope": "abc"}, "expected a finite, non-zero RescaleSlope, got 'abc'"),
        ({"RescaleSlope": "NaN"}, "expected a finite, non-zero RescaleSlope, got 'NaN'"),
        ({"RescaleSlope": "-Inf"}, "expected a finite, non-zero RescaleSlope, got '-Inf'"),
        ({"RescaleSlope": "1\\2"}, "expected a finite, non-zero RescaleSlope, got ['1', '2']"),
        ({"RescaleIntercept": "x"}, "expected a finite RescaleIntercept, got 'x'"),
        ({"RescaleSlope": None}, "expected RescaleSlope and RescaleIntercept together, got only RescaleIntercept"),
        ({"RescaleIntercept": None}, "expected RescaleSlope and RescaleIntercept together, got only RescaleSlope"),
    ],
)
def test_an_unusable_modality_lut_is_refused_not_replaced_by_one(tmp_path: Path, values: dict, expected: str) -> None:
    paths = _series(tmp_path)
    _edit(paths[1:2], **values)
    message = _refusal(tmp_path, DicomSeriesError)
    assert f"{expected} in slice001.dcm" in message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"PixelSpacing": "0\\0.7"}, "expected PixelSpacing of two positive finite numbers (mm), got ['0', '0.7']"),
        ({"PixelSpacing": "-1\\1"}, "expected PixelSpacing of two positive finite numbers (mm), got ['-1', '1']"),
        ({"PixelSpacing": "NaN\\1"}, "expected PixelSpacing of two positive finite numbers (mm), got ['NaN', '1']"),
        ({"PixelSpacing": "0.7"}, "expected PixelSpacing of two positive finite numbers (mm), got '0.7'"),
        ({"ImageOrientationPatient": "1\\0\\0\\0\\NaN\\0"},
         "expected ImageOrientationPatient of six finite numbers (direction cosines), got ['1', '0', '0', '0',"),
        ({"ImagePositionPatient": "1\\2"}, "expected ImagePositionPatient of three finite numbers (mm), got ['1', '2']"),
    ],
)
def test_unusable_geometry_values_are_refused_not_guessed(tmp_path: Path, values: dict, expected: str) -> None:
    paths = _series(tmp_path)
    _edit(paths, **values)
    assert expected in _refusal(tmp_path, GeometryError)


def test_missing_pixel_spacing_is_refused_not_taken_as_one_millimetre(tmp_path: Path) -> None:
    _edit(_series(tmp_path), PixelSpacing=None)
    assert "expected PixelSpacing (row and column spacing in mm), got none" in _refusal(tmp_path, GeometryError)


@pytest.mark.parametrize(
    ("row", "column", "expected"),
    [
        ((2.0, 0.0, 0.0), (0.0, 1.0, 0.0), "expected unit ImageOrientationPatient rows, got lengths 2 and 1"),
        ((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), "expected unit ImageOrientationPatient rows, got lengths 0 and 1"),
        ((1.0, 0.0, 0.0), (0.6, 0.8, 0.0), "expected orthogonal ImageOrientationPatient rows, got a cosine of 0.6"),
    ],
)
def test_orientation_that_is_not_a_rotation_is_refused(tmp_path: Path, row: tuple, column: tuple, expected: str) -> None:
    paths = _series(tmp_path)
    _edit(paths, ImageOrientationPatient=[*row, *column])
    assert expected in _refusal(tmp_path, GeometryError)


@pytest.mark.parametrize("thickness", [None, "0", "-2.5"])
def test_a_single_slice_needs_a_positive_declared_thickness(tmp_path: Path, thickness: str | None) -> None:
    _edit(_series(tmp_path, n=1), SliceThickness=thickness, SpacingBetweenSlices=None)
    shown = "none" if thickness is None else f"{float(thickness)!r}"
    assert (f"expected a positive SpacingBetweenSlices or SliceThickness for a single-slice series, got {shown}"
            in _refusal(tmp_path, GeometryError, allow_2d=True))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"PhotometricInterpretation": "PALETTE COLOR"},
         "expected a grey PhotometricInterpretation (MONOCHROME1, MONOCHROME2) for 1 sample(s) per pixel, got "
         "'PALETTE COLOR': palette indices are not intensities"),
        ({"PhotometricInterpretation": "RGB"},
         "expected a grey PhotometricInterpretation (MONOCHROME1, MONOCHROME2) for 1 sample(s) per pixel, got 'RGB'"),
        ({"PhotometricInterpretation": "YBR_FULL"}, "for 1 sample(s) per pixel, got 'YBR_FULL'"),
        ({"PhotometricInterpretation": None}, "expected PhotometricInterpretation (required for every image), got none"),
        ({"BitsStored": 17}, "expected BitsStored from 1 to BitsAllocated (16), got 17"),
        ({"BitsStored": 0}, "expected BitsStored from 1 to BitsAllocated (16), got 0"),
        ({"PixelRepresentation": 2}, "expected PixelRepresentation 0 (unsigned) or 1 (signed), got 2"),
        ({"BitsAllocated": None}, "expected BitsAllocated (required for every image), got none"),
    ],
)
def test_pixels_that_are_not_grey_intensities_are_refused(tmp_path: Path, values: dict, expected: str) -> None:
    _edit(_series(tmp_path), **values)
    assert expected in _refusal(tmp_path, DicomSeriesError)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"Modality": "MR"}, "expected one Modality for every image of a series, got 2 values: 2 with 'CT', 1 with 'MR'"),
        ({"PhotometricInterpretation": "MONOCHROME1"},
         "expected one PhotometricInterpretation for every image of a series, got 2 values"),
        ({"BitsStored": 12}, "expected one BitsStored for every image of a series, got 2 values: 2 with 16, 1 with 12"),
        ({"PixelRepresentation": 0},
         "expected one PixelRepresentation for every image of a series, got 2 values: 2 with 1, 1 with 0"),
        ({"PixelSpacing": [0.5, 0.5]}, "expected one PixelSpacing, got"),
    ],
)
def test_attributes_differing_between_slices_of_one_series_are_named(tmp_path: Path, values: dict,
                                                                     expected: str) -> None:
    """CT and MR slices (or one flipped sign, bit depth or photometric) under one SeriesInstanceUID never load as
    one volume; the message names the attribute and counts the values, nothing else of the headers."""
    paths = _series(tmp_path)
    _edit(paths[2:], **values)
    assert expected in _refusal(tmp_path, DicomSeriesError)


def test_a_healthy_series_still_loads_with_its_lut(tmp_path: Path) -> None:
    _series(tmp_path, slope=2.0, intercept=-1000.0)
    volume = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(volume.array, np.arange(60).reshape(3, 4, 5) * 2 - 1000)


# ------------------------------------------------------------------------------------------------ free text
def test_series_description_stays_out_of_the_volume_and_is_redacted_after_loading(tmp_path: Path) -> None:
    from MedAnalysisLib.privacy import REDACTED, redact

    _series(tmp_path)
    assert scan_dicom_folder(tmp_path)[0].series_description == DESCRIPTION  # `dicom ls` still lists it
    assert redact(f"failed: {DESCRIPTION}") == f"failed: {DESCRIPTION}"  # scanning alone teaches the filter nothing
    volume = load_dicom_series(tmp_path)
    assert "SeriesDescription" not in volume.metadata
    assert DESCRIPTION not in repr(volume.metadata)
    assert redact(f"failed: {DESCRIPTION}") == f"failed: {REDACTED}"


# ------------------------------------------------------------------------------------------------ DICOM SEG
#: A canary in every identifying attribute of PS3.15 Annex E's basic profile that a CT image can carry (and some
#: more): none may reach a SEG, except the allow-list below.
SEG_CANARIES = {
    "InstitutionName": "CANARY INSTITUTION", "InstitutionAddress": "CANARY ADDRESS 1",
    "InstitutionalDepartmentName": "CANARY DEPARTMENT", "StationName": "CANARY-STATION",
    "DeviceSerialNumber": "CANARY-SERIAL", "Manufacturer": "CANARY-VENDOR", "ManufacturerModelName": "CANARY-MODEL",
    "SoftwareVersions": "CANARY-SOFTWARE", "OperatorsName": "CANARY^OPERATOR",
    "PerformingPhysicianName": "CANARY^PERFORMER", "NameOfPhysiciansReadingStudy": "CANARY^READER",
    "PhysiciansOfRecord": "CANARY^RECORD", "RequestingPhysician": "CANARY^REQUESTER",
    "StudyDescription": "CANARY STUDY DESCRIPTION", "SeriesDescription": "CANARY SERIES DESCRIPTION",
    "ProtocolName": "CANARY PROTOCOL", "ImageComments": "CANARY IMAGE COMMENT",
    "PerformedProcedureStepDescription": "CANARY STEP", "RequestedProcedureDescription": "CANARY REQUEST",
    "AdmittingDiagnosesDescription": "CANARY DIAGNOSIS", "AdditionalPatientHistory": "CANARY HISTORY",
    "PatientComments": "CANARY PATIENT COMMENT", "OtherPatientIDs": "CANARY-OTHER-ID",
    "OtherPatientNames": "CANARY^OTHERNAME", "PatientBirthName": "CANARY^BIRTHNAME",
    "PatientMotherBirthName": "CANARY^MOTHER", "PatientAddress": "CANARY STREET 2",
    "PatientTelephoneNumbers": "555-CANARY", "PatientAge": "077Y", "PatientSize": "1.777",
    "PatientWeight": "77.7", "EthnicGroup": "CANARY-GROUP", "Occupation": "CANARY JOB",
    "MilitaryRank": "CANARY RANK", "BranchOfService": "CANARY BRANCH", "CountryOfResidence": "CANARY COUNTRY",
    "RegionOfResidence": "CANARY REGION", "MedicalRecordLocator": "CANARY-MRL", "ResponsiblePerson": "CANARY^RESP",
    "IssuerOfPatientID": "CANARY-ISSUER", "PatientBirthTime": "121314", "SeriesDate": "18880101",
    "AcquisitionDate": "18880102", "ContentDate": "18880103", "AcquisitionDateTime": "18880104101010",
    "AcquisitionTime": "101112", "ContentTime": "101113", "SeriesTime": "101114", "DetectorID": "CANARY-DETECTOR",
    "GantryID": "CANARY-GANTRY", "ClinicalTrialSponsorName": "CANARY SPONSOR",
    "ClinicalTrialSubjectID": "CANARY-SUBJECT", "ClinicalTrialSiteName": "CANARY SITE",
    "ClinicalTrialProtocolID": "CANARY-TRIAL", "ClinicalTrialSiteID": "CANARY-SITE-ID",
    "PatientIdentityRemoved": "NO", "ReasonForTheRequestedProcedure": "CANARY REASON",
    "ContentCreatorName": "CANARY^CREATOR", "DeviceUID": "1.2.3.999.123456789", "StudyComments": "CANARY STUDY NOTE",
}
#: The documented allow-list (docs/security.md): patient and study attributes the standard needs to file a SEG.
SEG_ALLOWED = {"PatientName": "CANARY^ALLOWED", "PatientID": "CANARY-ALLOWED-ID", "PatientBirthDate": "18770707",
               "PatientSex": "O", "StudyDate": "18990909", "StudyTime": "090909",
               "StudyID": "CANARY-STUDY", "AccessionNumber": "CANARY-ACC"}
#: Type 2 attributes the SEG must have but never copies: written empty (the referring physician is not the patient).
SEG_EMPTIED = {"ReferringPhysicianName": "CANARY^REFERRER"}


def _canary_sequences(dataset: pydicom.Dataset) -> None:
    """Sequences and a private block that carry canaries too (nested identifying values)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    request = Dataset()
    request.RequestedProcedureID = "CANARY-RPID"
    request.ScheduledProcedureStepID = "CANARY-SPSID"
    request.ScheduledProcedureStepDescription = "CANARY SCHEDULED"
    dataset.RequestAttributesSequence = Sequence([request])
    other = Dataset()
    other.PatientID = "CANARY-OTHER-SEQ-ID"
    other.IssuerOfPatientID = "CANARY-OTHER-ISSUER"
    dataset.OtherPatientIDsSequence = Sequence([other])
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    referenced.ReferencedSOPInstanceUID = "1.2.3.999.424242"
    dataset.ReferencedStudySequence = Sequence([referenced])
    specimen = Dataset()
    specimen.SpecimenIdentifier = "CANARY-SPECIMEN"
    specimen.SpecimenUID = "1.2.3.999.777"
    dataset.SpecimenDescriptionSequence = Sequence([specimen])
    dataset.add_new(0x00090010, "LO", "CANARY PRIVATE CREATOR")
    dataset.add_new(0x00091001, "LO", "CANARY PRIVATE VALUE")


def test_dicom_seg_carries_exactly_the_allow_list_of_its_source(tmp_path: Path) -> None:
    """The source carries a canary in every identifying attribute (institution, address, department, station,
    device serial, vendor, operators, physicians, descriptions, dates and times, trial, nested sequences, a private
    block): the SEG holds none of them anywhere (every element of every sequence item, and the raw file bytes), and
    each allowed value sits only in its own top-level attribute."""
    from MedAnalysisLib.bundles import LabelInfo
    from MedAnalysisLib.inference.writers import SEG_SOURCE_ALLOWED, write_dicom_seg

    paths = _series(tmp_path / "series")
    for path in paths:
        dataset = pydicom.dcmread(path)
        for keyword, value in {**SEG_CANARIES, **SEG_ALLOWED, **SEG_EMPTIED}.items():
            setattr(dataset, keyword, value)
        _canary_sequences(dataset)
        dataset.save_as(path)
    source = pydicom.dcmread(paths[0])
    volume = load_dicom_series(tmp_path / "series")
    mask = np.zeros(volume.shape, np.uint8)
    mask[1, 1:3, 1:4] = 1
    target = write_dicom_seg(volume.with_array(mask), tmp_path / "out_seg.dcm", volume.metadata["source_files"],
                             (LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "organ", (200, 80, 60))),
                             bundle_name="tiny", bundle_sha256="ab" * 32)
    seg = pydicom.dcmread(target)
    forbidden = [*SEG_CANARIES.values(), *SEG_EMPTIED.values(), "CANARY-RPID", "CANARY-SPSID", "CANARY SCHEDULED", "CANARY-OTHER-SEQ-ID",
                 "CANARY-OTHER-ISSUER", "1.2.3.999.424242", "CANARY-SPECIMEN", "1.2.3.999.777",
                 "CANARY PRIVATE CREATOR", "CANARY PRIVATE VALUE"]
    forbidden = [value for value in forbidden if value not in ("NO",)]
    raw = target.read_bytes().decode("latin-1")
    assert [value for value in forbidden if value in raw] == []
    allowed_values = {value: keyword for keyword, value in SEG_ALLOWED.items() if len(value) > 1}

    def walk(dataset: pydicom.Dataset, depth: int) -> Iterator[tuple[int, str, str]]:
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    yield from walk(item, depth + 1)
            elif element.keyword != "PixelData":
                yield depth, element.keyword, str(element.value)

    misplaced = [(depth, keyword, value) for depth, keyword, text in walk(seg, 0)
                 for value, owner in allowed_values.items() if value in text and (depth, keyword) != (0, owner)]
    assert misplaced == []
    assert {k: str(seg.get(k)) for k in SEG_ALLOWED} == SEG_ALLOWED
    assert {k: str(seg.get(k)) for k in SEG_EMPTIED} == dict.fromkeys(SEG_EMPTIED, "")
    assert set(SEG_EMPTIED).isdisjoint(SEG_SOURCE_ALLOWED)
    assert str(seg.StudyInstanceUID) == str(source.StudyInstanceUID)
    # the one equipment item is the writer's own (highdicom), none describes the source's acquisition
    assert [item.Manufacturer for item in seg.ContributingEquipmentSequence] == ["Highdicom open-source contributors"]
    assert {"InstitutionName", "StationName", "DeviceSerialNumber", "StudyDescription"}.isdisjoint(SEG_SOURCE_ALLOWED)


# ------------------------------------------------------------------------------------------------ CSV cells
def test_table_cells_cannot_become_spreadsheet_formulas(tmp_path: Path) -> None:
    """Label names come from bundles: in the CSV twin every text cell (and column name) that a spreadsheet would run
    is written as text; numbers, and text that reads as a number, stay as they are; the JSON keeps the values."""
    from MedAnalysisLib.inference.writers import write_table

    names = ['=HYPERLINK("http://example.invalid","x")', "@SUM(1)", "-2+3", "+cmd|' /C calc'!A0", "\t=1+1",
             "\r=1", "\uff1d1+1", "liver"]
    rows = [{"value": n + 1, "name": name, "volume_ml": -1.5, "text_number": "-1.5", "list": [1, 2]}
            for n, name in enumerate(names)]
    rows[0]["=column"] = "=1"
    csv_path, json_path = write_table(rows, tmp_path / "case_table.csv")
    with csv_path.open(newline="") as handle:
        read = list(csv.reader(handle))
    assert read[0] == ["value", "name", "volume_ml", "text_number", "list", "'=column"]
    assert [row[1] for row in read[1:]] == ["'" + name for name in names[:-1]] + ["liver"]
    assert {row[2] for row in read[1:]} == {"-1.5"} and {row[3] for row in read[1:]} == {"-1.5"}
    assert [row[0] for row in read[1:]] == [str(n + 1) for n in range(len(names))]
    assert read[1][5] == "'=1" and read[1][4] == "[1, 2]"
    assert [row["name"] for row in json.loads(json_path.read_text())] == names
