"""Writing prediction results: label maps (NIfTI, NRRD, Slicer ``.seg.nrrd``, DICOM SEG), probability maps, tables
(CSV and JSON) and a JSON sidecar with provenance.

Every file is written atomically (temporary name, then rename). Nothing written here carries patient names, IDs or
birth dates, with one deliberate exception: a DICOM SEG is a DICOM object of the source study, so (as the standard
requires, and as PACS need to file it) it carries the source images' required patient and study attributes:
PatientName, PatientID, PatientBirthDate, PatientSex (Patient module, Type 2), StudyInstanceUID, StudyDate, StudyTime,
StudyID, AccessionNumber (General Study module), plus the FrameOfReferenceUID and the referenced series/instance UIDs;
ReferringPhysicianName (Type 2, a person who is not the patient) is written empty. highdicom is handed a copy of each
source image reduced to that allow-list and the geometry (:data:`SEG_SOURCE_ALLOWED`), so nothing else of the source
reaches the SEG: no optional (Type 3) patient or study attribute (age, weight, comments, study description, other
IDs, ...), no specimen module, and no
ContributingEquipmentSequence item naming the source's institution, address, department, station or device serial
number. Tables written as CSV have every cell made formula-safe (:func:`rows_to_csv`).
The sidecar JSON records the bundle (name, weights sha256), library versions, timings and how inference ran, and
describes the input only by its grid and modality.

What each format needs is checked before any work (:func:`check_formats` for the bundle and the options,
:func:`format_problems` for one case's input), and one format that cannot be written never costs the others:
:func:`write_prediction` writes every output it can and records in the sidecar (``not_written``) what it could not
write and why. Probability maps are written as one scalar float32 file per foreground class, named after the class
(``<case>_probability_<value>_<name>.nii.gz``), which Slicer, ITK and every NIfTI reader open as an ordinary volume
(see ``docs/outputs.md``). Uncertainty maps (``<case>_uncertainty.nii.gz``, ``<case>_disagreement.nii.gz``) and a
classifier's explanation heatmap (``<case>_explanation.nii.gz``) are scalar float32 volumes on the input grid,
written the same way.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib.errors import GeometryError, InputError, MedAnalysisError
from MedAnalysisLib.io.atomic import atomic_path, write_text_atomic
from MedAnalysisLib.volume import Volume

#: ``--format`` name -> file suffix of the label map.
LABEL_SUFFIXES = {"nifti": "_label.nii.gz", "nrrd": "_label.nrrd", "seg.nrrd": ".seg.nrrd", "dicom-seg": "_seg.dcm"}
SIDECAR_SUFFIX = ".json"
#: Probability map of one class: ``<case>`` + this + ``<value>_<name>.nii.gz``.
PROBABILITY_INFIX = "_probability_"
#: Tables of a case: ``<case>`` + this, as CSV and (same name, ``.json``) JSON; ``slices`` only for slice models.
TABLE_SUFFIXES = {"table": "_table.csv", "slices": "_slices.csv"}
#: Uncertainty map of a case: ``<case>`` + this (float32 in [0, 1]); ``disagreement`` only with several passes.
UNCERTAINTY_SUFFIXES = {"entropy": "_uncertainty.nii.gz", "disagreement": "_disagreement.nii.gz"}
#: A classifier's explanation heatmap: ``<case>`` + this (float32 in [0, 1]).
EXPLANATION_SUFFIX = "_explanation.nii.gz"


def uncertainty_file_name(case_id: str, measure: str) -> str:
    """The file name of a case's ``measure`` map (:data:`UNCERTAINTY_SUFFIXES`); its sidecar key is
    ``uncertainty_<measure>``."""
    return f"{case_id}{UNCERTAINTY_SUFFIXES[measure]}"


def explanation_file_name(case_id: str) -> str:
    """The file name of a case's explanation heatmap; its sidecar key is ``explanation``."""
    return f"{case_id}{EXPLANATION_SUFFIX}"


def table_file_names(case_id: str, kind: str) -> tuple[str, str]:
    """The CSV and JSON file names of a case's ``kind`` table (:data:`TABLE_SUFFIXES`), as :func:`write_table`
    writes them."""
    csv_name = f"{case_id}{TABLE_SUFFIXES[kind]}"
    return csv_name, str(Path(csv_name).with_suffix(".json"))


def is_case_output_name(case_id: str, name: str) -> bool:
    """True when ``name`` is a file name :func:`write_prediction` writes for ``case_id`` under some options: a label
    map of any format, a probability map, an uncertainty map, the explanation heatmap, a table (CSV or JSON). A
    re-run removes only such names, so a hand-edited sidecar cannot make it delete any other file."""
    import re

    if not name.startswith(case_id) or name != Path(name).name:
        return False
    tables = {n for kind in TABLE_SUFFIXES for n in table_file_names(case_id, kind)}
    fixed = {*(case_id + s for s in LABEL_SUFFIXES.values()), *(case_id + s for s in UNCERTAINTY_SUFFIXES.values()),
             explanation_file_name(case_id), *tables}
    rest = name[len(case_id):]
    return name in fixed or re.fullmatch(re.escape(PROBABILITY_INFIX) + r"-?[0-9]{1,9}_[A-Za-z0-9._-]+\.nii\.gz",
                                         rest) is not None


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a result (those already imported, plus ours)."""
    import importlib.metadata as metadata
    import sys

    from MedAnalysisLib import __version__

    versions = {"medanalysis": __version__, "python": platform.python_version()}
    for name, module in (("numpy", "numpy"), ("SimpleITK", "SimpleITK"), ("tensorflow", "tensorflow"),
                         ("keras", "keras"), ("pydicom", "pydicom"), ("highdicom", "highdicom")):
        if module in sys.modules or name in ("numpy", "SimpleITK"):
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
    return versions


def segments_for(labels: Sequence[Any]) -> list[dict[str, Any]]:
    """Slicer segment descriptions (name, colour, label value) for every foreground :class:`LabelInfo`."""
    segments = []
    for label in labels:
        if label.value == 0:
            continue
        segment: dict[str, Any] = {"label_value": int(label.value), "name": label.name, "color": tuple(label.color),
                                   "id": f"Segment_{label.value}"}
        terminology = slicer_terminology(label.terminology)
        if terminology:
            segment["terminology"] = terminology
        segments.append(segment)
    return segments


def slicer_terminology(terminology: dict[str, Any] | None) -> str | None:
    """Slicer's ``TerminologyEntry`` tag value from a label's terminology (see :mod:`MedAnalysisLib.terminology`):
    ``context~category~type~type modifier~anatomic context~region~region modifier``, codes as ``SCHEME^CODE^Meaning``.
    """
    from MedAnalysisLib.terminology import normalize_terminology

    try:
        canonical = normalize_terminology(terminology) if terminology else None
    except InputError:
        return None
    if not canonical:
        return None

    def triplet(key: str) -> str:
        entry = canonical.get(key)
        return f"{entry['scheme']}^{entry['code']}^{entry['meaning']}" if entry else "^^"

    return (f"Segmentation category and type - 3D Slicer General Anatomy list~{triplet('category')}~"
            f"{triplet('type')}~{triplet('type_modifier')}~Anatomic codes - DICOM master list~"
            f"{triplet('anatomic_region')}~{triplet('anatomic_region_modifier')}")


def write_label(label: Volume, path: Path, fmt: str, labels: Sequence[Any]) -> Path:
    """Write a label map as NIfTI, NRRD or Slicer ``.seg.nrrd`` (with segment names, colours, values)."""
    from MedAnalysisLib.io import write_volume

    if fmt == "nifti" or fmt == "nrrd":
        return write_volume(label, path)
    if fmt == "seg.nrrd":
        return write_volume(label, path, segments=segments_for(labels))
    raise InputError(f"expected a label format among {sorted(LABEL_SUFFIXES)}, got {fmt!r}")


#: Patient and study attributes a SEG must carry (DICOM Type 2: present, possibly empty).
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "StudyID", "AccessionNumber")
#: Type 2 attributes the SEG must have but that filing does not need: always written empty, never copied (the
#: referring physician is a person other than the patient, named nowhere else in the SEG).
_TYPE2_EMPTY = ("ReferringPhysicianName",)
#: Source UIDs the SEG references or copies: each must be a valid UID, or the SEG would carry whatever they hold.
_SOURCE_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
#: Optional (Type 3) patient/study attributes that highdicom copies from the source images, removed from the SEG:
#: only what the Patient and General Study modules require to file the SEG with its study is kept.
_OPTIONAL_PATIENT_PREFIXES = ("Patient", "OtherPatient", "IssuerOfPatientID", "ClinicalTrial", "ResponsiblePerson",
                              "ResponsibleOrganization")
_OPTIONAL_STUDY_KEYWORDS = frozenset({
    "StudyDescription", "EthnicGroup", "Occupation", "AdditionalPatientHistory", "MedicalAlerts", "Allergies",
    "SmokingStatus", "PregnancyStatus", "LastMenstrualDate", "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence", "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy", "ConsultingPhysicianName", "ReferencedPatientSequence", "ReferencedStudySequence",
    "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence", "AdmissionID", "IssuerOfAdmissionIDSequence",
    "ServiceEpisodeID", "ServiceEpisodeDescription", "MilitaryRank", "BranchOfService", "SpecialNeeds",
    "CountryOfResidence", "RegionOfResidence", "QualityControlSubject", "StrainDescription",
})
_KEPT_PATIENT_KEYWORDS = frozenset(_TYPE2_COPIED) | frozenset(_TYPE2_EMPTY) | {
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence"}


#: Attributes of a source image that a SEG may carry or needs to place its frames (besides :data:`_TYPE2_COPIED`):
#: UIDs, geometry, the image pixel layout and the lossy-compression flag. Nothing that names a site, a device or a
#: person: the source is reduced to these before highdicom sees it (see :func:`_filing_copy`).
_SOURCE_KEPT = ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                "FrameOfReferenceUID", "Modality", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                "SliceThickness", "SpacingBetweenSlices", "Rows", "Columns", "SamplesPerPixel",
                "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod")
#: Every source attribute whose value may appear in a SEG: the documented allow-list (docs/security.md).
SEG_SOURCE_ALLOWED = frozenset(_SOURCE_KEPT) | frozenset(_TYPE2_COPIED)


def _filing_copy(source: Any) -> Any:
    """A copy of a source image holding only :data:`SEG_SOURCE_ALLOWED` (top level, no sequences).

    highdicom copies whole modules from its source images: the Patient and Study modules (optional attributes too),
    the Specimen module and, when the source names a Manufacturer, a ContributingEquipmentSequence item with the
    source's institution name and address, department, station name and device serial number. Handing it this copy
    instead makes the SEG carry exactly the allow-list, whatever the source holds.
    """
    from pydicom.dataset import Dataset, FileMetaDataset

    copy = Dataset()
    for keyword in SEG_SOURCE_ALLOWED:
        element = source.data_element(keyword) if keyword in source else None
        if element is not None and element.VR != "SQ":
            copy.add(element)
    copy.file_meta = FileMetaDataset()
    meta = getattr(source, "file_meta", None)
    copy.file_meta.TransferSyntaxUID = getattr(meta, "TransferSyntaxUID", None) or "1.2.840.10008.1.2.1"
    copy.file_meta.MediaStorageSOPClassUID = source.get("SOPClassUID", "")
    copy.file_meta.MediaStorageSOPInstanceUID = source.get("SOPInstanceUID", "")
    return copy


def _check_source_identifiers(datasets: Sequence[Any]) -> None:
    """Refuse source images whose UIDs are not UIDs or whose Modality is not a DICOM code string, before highdicom
    sees them: the SEG would carry them (ReferencedSeriesSequence) or highdicom would fail half-way with its own
    error. The values are not shown: a malformed one may hold anything, patient names included."""
    from MedAnalysisLib.io.dicom import is_code_string, is_valid_uid

    for number, ds in enumerate(datasets):
        for keyword in _SOURCE_UIDS:
            value = str(ds.get(keyword, "") or "")
            if value and not is_valid_uid(value):
                raise InputError(f"expected source image {number} to have a {keyword} of digits and dots (at most 64 "
                                 f"characters), got a value of {len(value)} character(s) that is not a UID (not "
                                 "shown); no DICOM SEG was written")
        modality = str(ds.get("Modality", "") or "")
        if not is_code_string(modality):
            raise InputError(f"expected source image {number} to have a Modality code such as CT or MR, got a value "
                             f"of {len(modality)} character(s) that is not a DICOM code string (not shown); no DICOM "
                             "SEG was written")


def _strip_optional_patient_attributes(dataset: Any) -> None:
    """Delete the Type 3 patient and study attributes (see :data:`_OPTIONAL_STUDY_KEYWORDS`) from a SEG."""
    for element in list(dataset):
        keyword = element.keyword
        if keyword in _KEPT_PATIENT_KEYWORDS:
            continue
        if keyword.startswith(_OPTIONAL_PATIENT_PREFIXES) or keyword in _OPTIONAL_STUDY_KEYWORDS:
            del dataset[element.tag]


def _code(entry: dict[str, str]) -> Any:
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(value=entry["code"], scheme_designator=entry["scheme"], meaning=entry["meaning"])


def seg_coding(label: Any) -> dict[str, Any]:
    """The codes a DICOM SEG segment gets: the label's terminology (validated), or the generic SCT Tissue / Tissue
    when it has none (DICOM requires a category and a type; the model card says which labels have no code)."""
    from MedAnalysisLib.terminology import GENERIC, normalize_terminology

    return normalize_terminology(label.terminology, label.name) or dict(GENERIC)


def display_color(rgb: Sequence[int]) -> Any:
    """highdicom's CIELab colour of an RGB colour given as integers 0-255 (what ``CIELabColor.from_rgb`` expects)."""
    import highdicom as hd

    r, g, b = (int(c) for c in rgb)
    if not all(0 <= c <= 255 for c in (r, g, b)):
        raise InputError(f"expected an RGB colour of integers 0-255, got {tuple(rgb)}")
    return hd.color.CIELabColor.from_rgb(r, g, b)


def check_formats(formats: Sequence[str], task: str, labels: Sequence[Any]) -> None:
    """Check what every requested format needs from the bundle and the options, before any work.

    Raises:
        InputError: An unknown format; ``dicom-seg`` with a classification bundle, without foreground labels, with
            a malformed label terminology or without highdicom; a label name Slicer's ``.seg.nrrd`` cannot hold.
    """
    unknown = [fmt for fmt in formats if fmt not in LABEL_SUFFIXES]
    if unknown:
        raise InputError(f"expected formats among {sorted(LABEL_SUFFIXES)}, got {unknown}")
    if "seg.nrrd" in formats:
        bad = [label.name for label in labels if any(c in label.name for c in "|\n\r")]
        if bad:
            raise InputError(f"expected label names without '|' or line breaks for --format seg.nrrd, got {bad}")
    if "dicom-seg" not in formats:
        return
    if task != "segmentation":
        raise InputError("expected a segmentation bundle for --format dicom-seg, got a classification bundle")
    if not [label for label in labels if label.value != 0]:
        raise InputError("expected at least one foreground label to write a DICOM SEG, got only the background")
    for label in labels:
        if label.value != 0:
            seg_coding(label)
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise InputError("expected the highdicom package for --format dicom-seg (pip install highdicom), it is not "
                         "installed") from None


def format_problems(formats: Sequence[str], input_volume: Volume) -> dict[str, str]:
    """What keeps a requested format from being written for this input: ``{format: reason}`` (empty when none).

    Only ``dicom-seg`` depends on the input: it references the source series, so it needs DICOM input, a
    FrameOfReferenceUID, and one single-frame image per slice of the grid.
    """
    problems: dict[str, str] = {}
    if "dicom-seg" in formats:
        files = input_volume.metadata.get("source_files") or []
        if not files:
            problems["dicom-seg"] = "the input is not a DICOM series (a DICOM SEG references its source images)"
        elif not input_volume.metadata.get("FrameOfReferenceUID"):
            problems["dicom-seg"] = ("the DICOM series has no FrameOfReferenceUID, which a DICOM SEG needs to place "
                                     "its frames")
        elif len(files) != input_volume.shape[0]:
            problems["dicom-seg"] = (f"expected one single-frame DICOM image per slice, got {len(files)} file(s) for "
                                     f"{input_volume.shape[0]} slices (enhanced multi-frame or resampled input)")
    return problems


def write_dicom_seg(
    label: Volume,
    path: Path,
    source_files: Sequence[str | Path],
    labels: Sequence[Any],
    *,
    bundle_name: str,
    bundle_sha256: str,
    series_description: str | None = None,
) -> Path:
    """Write a binary DICOM Segmentation that references the source series (highdicom).

    Args:
        label: Label map on the grid of the DICOM series it was predicted from.
        path: Target ``.dcm`` file.
        source_files: The series' image files (``Volume.metadata["source_files"]`` of the loaded series).
        labels: :class:`LabelInfo` per class (0 = background is not written): name, display colour (RGB 0-255,
            stored as CIELab) and terminology codes (:func:`seg_coding`; SCT Tissue / Tissue when a label has none).
        bundle_name: Recorded as the algorithm name.
        bundle_sha256: Recorded as an algorithm parameter (weights hash).
        series_description: Of the SEG series (default: ``"<bundle name> segmentation"``).

    Patient data: the source files are read whole (the SEG must carry the patient module), so their identifying
    values are handed to :func:`MedAnalysisLib.privacy.remember_dataset` first, and pydicom's and highdicom's
    warnings and log records are contained (:func:`MedAnalysisLib.privacy.contain_third_party`): none is printed,
    and ``-v`` shows them redacted.

    Raises:
        GeometryError: The label map is not on the grid of the source images.
        InputError: No source files, no FrameOfReferenceUID, no foreground label, a malformed terminology.
    """
    from MedAnalysisLib.privacy import contain_third_party

    if not source_files:
        raise InputError("expected the DICOM source files of the series to reference, got none (input was not DICOM)")
    present = [lab for lab in labels if lab.value != 0]
    if not present:
        raise InputError("expected at least one foreground label to write a DICOM SEG, got only the background")
    codings = [seg_coding(lab) for lab in present]
    with contain_third_party("writing the DICOM SEG"):
        seg = _build_dicom_seg(label, source_files, present, codings, bundle_name=bundle_name,
                               bundle_sha256=bundle_sha256, series_description=series_description)
        with atomic_path(path) as temporary:
            seg.save_as(str(temporary))
    return Path(path)


def _build_dicom_seg(label: Volume, source_files: Sequence[str | Path], present: Sequence[Any],
                     codings: Sequence[dict[str, Any]], *, bundle_name: str, bundle_sha256: str,
                     series_description: str | None) -> Any:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from MedAnalysisLib import __version__
    from MedAnalysisLib.io.dicom import open_regular
    from MedAnalysisLib.privacy import remember_dataset

    datasets = []
    for file in source_files:
        with open_regular(file) as handle:
            dataset = pydicom.dcmread(handle, stop_before_pixels=True)
        remember_dataset(dataset)
        datasets.append(_filing_copy(dataset))
    if not all(str(ds.get("FrameOfReferenceUID", "") or "") for ds in datasets):
        raise InputError("expected source images with a FrameOfReferenceUID (a DICOM SEG needs it to place its "
                         "frames), got a series without one")
    _check_source_identifiers(datasets)
    for ds in datasets:  # Type 2 patient/study attributes highdicom copies: present (empty) if the source omits them
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
        for keyword in _TYPE2_EMPTY:
            setattr(ds, keyword, "")
    n_k = label.shape[0]
    frames = np.zeros((len(datasets), label.shape[1], label.shape[2]), dtype=label.array.dtype)
    for n, ds in enumerate(datasets):
        ijk = label.physical_to_index(np.asarray(ds.ImagePositionPatient, dtype=np.float64))
        k = int(round(float(ijk[2])))
        if abs(ijk[0]) > 1e-2 or abs(ijk[1]) > 1e-2 or abs(ijk[2] - k) > 1e-2 or not 0 <= k < n_k:
            raise GeometryError(
                f"expected the label map on the source series grid, got source image {n} at index (i, j, k) "
                f"{np.round(ijk, 3).tolist()} of the label grid"
            )
        if (int(ds.Rows), int(ds.Columns)) != label.shape[1:]:
            raise GeometryError(f"expected source images of {label.shape[1:]} (rows, columns), got "
                                f"{(int(ds.Rows), int(ds.Columns))}")
        frames[n] = label.array[k]
    # One binary plane per segment, numbered 1..n in the order of `present`.
    masks = np.stack([frames == lab.value for lab in present], axis=-1).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=bundle_name[:64], family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters={"weights_sha256": bundle_sha256},
    )
    descriptions = []
    for number, (lab, coding) in enumerate(zip(present, codings, strict=True), start=1):
        region = coding.get("anatomic_region")
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=lab.name[:64],
            segmented_property_category=_code(coding["category"]),
            segmented_property_type=_code(coding["type"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[_code(region)] if region else None,
            display_color=display_color(lab.color),  # RGB 0-255, as CIELabColor.from_rgb expects
        )
        if coding.get("type_modifier"):  # nested in the type item, where dcmqi and Slicer read it
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _code(coding["type_modifier"])]
        if region and coding.get("anatomic_region_modifier"):
            description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
                _code(coding["anatomic_region_modifier"])]
        descriptions.append(description)
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MedAnalysis",
        manufacturer_model_name=bundle_name[:64],
        software_versions=f"medanalysis {__version__}",
        device_serial_number="none",
        series_description=(series_description or f"{bundle_name} segmentation")[:64],
        omit_empty_frames=False,
    )
    _strip_optional_patient_attributes(seg)
    return seg


def _safe_name(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("._") or "class"


def probability_file_name(case_id: str, label: Any) -> str:
    """``<case>_probability_<value>_<name>.nii.gz`` (the name with file-unsafe characters as ``_``)."""
    return f"{case_id}{PROBABILITY_INFIX}{int(label.value)}_{_safe_name(str(label.name))}.nii.gz"


def write_probabilities(probabilities: Volume, out_dir: Path, case_id: str, labels: Sequence[Any],
                        on_written: Callable[[str], None] | None = None) -> dict[int, str]:
    """Write one scalar float32 NIfTI per foreground class (the background, 1 minus their sum for soft-max models, is
    left out).

    Args:
        probabilities: ``(k, j, i, n_classes)`` on the input grid; channel ``n`` belongs to ``labels[n]`` (the
            bundle's label order).
        out_dir: Output folder.
        case_id: Case name (file name prefix).
        labels: The bundle's labels, in channel order.
        on_written: Called with each file name right after that file is in place (see :func:`write_prediction`).

    Returns:
        ``{label value: file name}``.
    """
    from MedAnalysisLib.io import write_volume

    array = np.asarray(probabilities.array)
    if array.ndim != 4 or array.shape[-1] != len(labels):
        raise InputError(f"expected probabilities of shape (k, j, i, {len(labels)}) (one channel per label), got "
                         f"{array.shape}")
    written = {}
    for channel, label in enumerate(labels):
        if label.value == 0:
            continue
        name = probability_file_name(case_id, label)
        write_volume(probabilities.with_array(np.ascontiguousarray(array[..., channel], dtype=np.float32)),
                     Path(out_dir) / name)
        written[int(label.value)] = name
        _landed(on_written, name)
    return written


def probability_files(record: dict[str, Any]) -> dict[int, str]:
    """``{label value: file name}`` of the probability maps a sidecar lists (``outputs["probability_<value>"]``)."""
    prefix = "probability_"
    return {int(kind[len(prefix):]): name for kind, name in record.get("outputs", {}).items()
            if kind.startswith(prefix) and kind[len(prefix):].isdigit()}


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text of dict rows (columns in first-seen order; lists as JSON).

    Label names and other text come from bundles and files someone else wrote: every cell and column name passes
    :func:`MedAnalysisLib.sanitize.csv_cell`, so text a spreadsheet would run as a formula (``=HYPERLINK(...)``,
    ``@SUM(1)``, ``-2+3``, ``+cmd|...``) is written as text; numbers stay numbers. The JSON twin keeps the values
    as they are.
    """
    from MedAnalysisLib.sanitize import csv_cell

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    minimal = csv.writer(buffer, lineterminator="\n")
    # the csv module quotes only the line terminator's "\n": a row with a bare "\r" (a line break to a spreadsheet)
    # is quoted whole, so that no cell can start a row of its own
    quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def write(cells: list[Any]) -> None:
        (quoted if any(isinstance(c, str) and "\r" in c for c in cells) else minimal).writerow(cells)

    write([csv_cell(str(column)) for column in columns])
    for row in rows:
        cells = [row.get(column, "") for column in columns]
        write([csv_cell(json.dumps(v) if isinstance(v, (list, dict)) else v) for v in cells])
    return buffer.getvalue()


def write_table(rows: Sequence[dict[str, Any]], path_csv: Path,
                on_written: Callable[[str], None] | None = None) -> tuple[Path, Path]:
    """Write rows as CSV and, beside it, the same rows as JSON (``.json`` instead of ``.csv``); ``on_written`` is
    called with each file name as soon as that file is in place."""
    write_text_atomic(path_csv, rows_to_csv(rows))
    _landed(on_written, path_csv.name)
    path_json = path_csv.with_suffix(".json")
    write_text_atomic(path_json, json.dumps(_json_safe(list(rows)), indent=2, allow_nan=False) + "\n")
    _landed(on_written, path_json.name)
    return path_csv, path_json


def _landed(on_written: Callable[[str], None] | None, name: str) -> None:
    """Tell ``on_written`` (when given) that the output ``name`` is now in place."""
    if on_written is not None:
        on_written(name)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def describe_input(volume: Volume) -> dict[str, Any]:
    """Non-identifying description of an input scan: grid and modality only."""
    return {
        "shape_kji": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "orientation": volume.orientation_code(),
        "components": volume.n_components,
        "modality": str(volume.metadata.get("Modality", "")) or None,
    }


#: Parts of a prediction's details that the sidecar records at its top level, beside ``inference``.
_TOP_LEVEL_DETAILS = ("uncertainty", "explanation")


def sidecar(prediction: Any, *, case_id: str, input_volume: Volume, outputs: dict[str, str],
            not_written: dict[str, str] | None = None) -> dict[str, Any]:
    """The provenance record of one case (see the module docstring for what it holds and leaves out); with
    uncertainty or an explanation, ``uncertainty`` (passes, measures, the case's entropy, why a measure is absent)
    and ``explanation`` (target value and name, method, layer) beside ``inference``."""
    import datetime

    details = dict(prediction.details)
    top = {key: details.pop(key) for key in _TOP_LEVEL_DETAILS if key in details}
    record = {
        "case_id": case_id,
        "task": prediction.task,
        "bundle": {"name": prediction.bundle_name, "weights_sha256": prediction.bundle_sha256},
        "inference": details,
        "timings_s": {k: round(v, 4) for k, v in prediction.timings.items()},
        "input": describe_input(input_volume),
        "outputs": outputs,
        "versions": library_versions(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    record.update(top)
    if not_written:
        record["not_written"] = dict(not_written)
    if prediction.scan is not None:
        record["scan"] = prediction.scan
    if prediction.task == "segmentation":
        record["volumes"] = prediction.table
    return _json_safe(record)


def _float_maps(prediction: Any, case_id: str) -> list[tuple[str, Volume, str]]:
    """``(sidecar key, volume, file name)`` of a prediction's uncertainty maps and explanation heatmap."""
    maps = [(f"uncertainty_{measure}", volume, uncertainty_file_name(case_id, measure))
            for measure, volume in (getattr(prediction, "uncertainty", None) or {}).items()]
    explanation = getattr(prediction, "explanation", None)
    if explanation is not None:
        maps.append(("explanation", explanation.heatmap, explanation_file_name(case_id)))
    return maps


def write_float_map(volume: Volume, path: Path, input_volume: Volume) -> Path:
    """Write a scalar map (uncertainty, heatmap) as float32 with the input's exact grid, atomically and read back.

    Raises:
        GeometryError: The map is not on the input's grid (shape, spacing, origin or direction differ).
    """
    from MedAnalysisLib.io import write_volume

    same = (volume.shape[:3] == input_volume.shape[:3]
            and np.allclose(volume.spacing, input_volume.spacing, rtol=0, atol=1e-6)
            and np.allclose(volume.origin, input_volume.origin, rtol=0, atol=1e-5)
            and np.allclose(volume.direction, input_volume.direction, rtol=0, atol=1e-6))
    if not same or np.ndim(volume.array) != 3:
        raise GeometryError(f"expected a scalar map on the input grid {tuple(input_volume.shape[:3])} (k, j, i) to "
                            f"write {Path(path).name}, got shape {tuple(np.shape(volume.array))} on another grid")
    return write_volume(volume.with_array(np.ascontiguousarray(volume.array, dtype=np.float32)), path)


def write_prediction(
    prediction: Any,
    out_dir: Path,
    case_id: str,
    *,
    input_volume: Volume,
    labels: Sequence[Any],
    formats: Sequence[str] = ("nifti",),
    write_probability_map: bool = False,
    unavailable: dict[str, str] | None = None,
    on_written: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Write every output of one case into ``out_dir``; the sidecar ``<case_id>.json`` is written last.

    ``on_written`` is called with each output's file name (not the sidecar's) right after that file is in place, and
    never before: batch prediction records there what it wrote, so that a re-run after a stop knows exactly those
    files for its own (:func:`MedAnalysisLib.inference.batch.note_written`).

    Each format is written on its own: one that fails does not stop the others, the tables or the probability maps.
    Formats in ``unavailable`` (``{format: reason}``, from :func:`format_problems`), and formats whose input needs
    are not met, are not attempted; the sidecar lists them under ``not_written`` with the reason, and the case is
    complete. A format that fails while being written (a disk error, a file in the way) leaves no sidecar, so a
    re-run redoes the case; the first such error is raised after everything else was written.

    Returns:
        ``{kind: file name}`` of what was written (file names relative to ``out_dir``); ``probability_<value>`` for
        the per-class probability maps, ``uncertainty_<measure>`` for the uncertainty maps, ``explanation`` for a
        classifier's heatmap.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str] = {}
    not_written: dict[str, str] = {}
    errors: list[BaseException] = []
    if prediction.label is not None:
        unknown = [fmt for fmt in formats if fmt not in LABEL_SUFFIXES]
        if unknown:
            raise InputError(f"expected formats among {sorted(LABEL_SUFFIXES)}, got {unknown}")
        problems = {**format_problems(formats, input_volume), **(unavailable or {})}
        for fmt in formats:
            if fmt in problems:
                not_written[f"label_{fmt}"] = problems[fmt]
                continue
            target = out_dir / f"{case_id}{LABEL_SUFFIXES[fmt]}"
            try:
                if fmt == "dicom-seg":
                    write_dicom_seg(prediction.label, target, input_volume.metadata["source_files"], labels,
                                    bundle_name=prediction.bundle_name, bundle_sha256=prediction.bundle_sha256)
                else:
                    write_label(prediction.label, target, fmt, labels)
            except (MedAnalysisError, OSError, ValueError, RuntimeError) as error:
                errors.append(error)
                continue
            outputs[f"label_{fmt}"] = target.name
            _landed(on_written, target.name)
    try:
        if write_probability_map and prediction.probabilities is not None:
            for value, name in write_probabilities(prediction.probabilities, out_dir, case_id, labels,
                                                     on_written).items():
                outputs[f"probability_{value}"] = name
    except (MedAnalysisError, OSError, ValueError, RuntimeError) as error:
        errors.append(error)
    for key, volume, name in _float_maps(prediction, case_id):
        try:
            write_float_map(volume, out_dir / name, input_volume)
            outputs[key] = name
            _landed(on_written, name)
        except (MedAnalysisError, OSError, ValueError, RuntimeError) as error:
            errors.append(error)
    if prediction.table:
        csv_path, json_path = write_table(prediction.table, out_dir / table_file_names(case_id, "table")[0],
                                          on_written)
        outputs["table_csv"], outputs["table_json"] = csv_path.name, json_path.name
    per_slice = getattr(prediction, "per_slice", None)
    if per_slice and per_slice is not prediction.table:  # sequence models: per-slice rows besides the scan table
        csv_path, json_path = write_table(per_slice, out_dir / table_file_names(case_id, "slices")[0], on_written)
        outputs["slices_csv"], outputs["slices_json"] = csv_path.name, json_path.name
    if errors:
        raise errors[0]
    record = sidecar(prediction, case_id=case_id, input_volume=input_volume, outputs=outputs,
                     not_written=not_written)
    write_text_atomic(out_dir / f"{case_id}{SIDECAR_SUFFIX}", json.dumps(record, indent=2, allow_nan=False) + "\n")
    outputs["sidecar"] = f"{case_id}{SIDECAR_SUFFIX}"
    return outputs
