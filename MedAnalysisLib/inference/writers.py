"""Writing prediction results: label maps (NIfTI, NRRD, Slicer ``.seg.nrrd``, DICOM SEG), probability maps, tables
(CSV and JSON) and a JSON sidecar with provenance.

Every file is written atomically (temporary name, then rename). Nothing written here carries patient names, IDs or
birth dates, with one deliberate exception: a DICOM SEG is a DICOM object of the source study, so (as the standard
requires, and as PACS need to file it) it carries the source images' required patient and study attributes:
PatientName, PatientID, PatientBirthDate, PatientSex (Patient module, Type 2), StudyInstanceUID, StudyDate, StudyTime,
ReferringPhysicianName, StudyID, AccessionNumber (General Study module), plus the FrameOfReferenceUID and the
referenced series/instance UIDs. Optional (Type 3) patient and study attributes that highdicom would copy (age,
weight, comments, study description, other IDs, ...) are removed.
The sidecar JSON records the bundle (name, weights sha256), library versions, timings and how inference ran, and
describes the input only by its grid and modality.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib.errors import GeometryError, InputError
from MedAnalysisLib.io.atomic import atomic_path, write_text_atomic
from MedAnalysisLib.volume import Volume

#: ``--format`` name -> file suffix of the label map.
LABEL_SUFFIXES = {"nifti": "_label.nii.gz", "nrrd": "_label.nrrd", "seg.nrrd": ".seg.nrrd", "dicom-seg": "_seg.dcm"}
SIDECAR_SUFFIX = ".json"


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
    """Slicer's ``TerminologyEntry`` tag value from ``{"category": {scheme, code, meaning}, "type": {...}}``."""
    if not terminology or "category" not in terminology or "type" not in terminology:
        return None

    def triplet(entry: dict[str, Any]) -> str:
        return f"{entry['scheme']}^{entry['code']}^{entry['meaning']}"

    modifier = triplet(terminology["modifier"]) if terminology.get("modifier") else "^^"
    return (f"Segmentation category and type - MedAnalysis~{triplet(terminology['category'])}~"
            f"{triplet(terminology['type'])}~{modifier}~Anatomic codes - DICOM master list~^^~^^")


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
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")
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
_KEPT_PATIENT_KEYWORDS = frozenset(_TYPE2_COPIED) | {"PatientIdentityRemoved", "DeidentificationMethod",
                                                     "DeidentificationMethodCodeSequence"}


def _strip_optional_patient_attributes(dataset: Any) -> None:
    """Delete the Type 3 patient and study attributes (see :data:`_OPTIONAL_STUDY_KEYWORDS`) from a SEG."""
    for element in list(dataset):
        keyword = element.keyword
        if keyword in _KEPT_PATIENT_KEYWORDS:
            continue
        if keyword.startswith(_OPTIONAL_PATIENT_PREFIXES) or keyword in _OPTIONAL_STUDY_KEYWORDS:
            del dataset[element.tag]


def _code(entry: dict[str, Any] | None, default: Any) -> Any:
    from highdicom.sr.coding import CodedConcept

    if not entry:
        return default
    return CodedConcept(value=str(entry["code"]), scheme_designator=str(entry["scheme"]), meaning=str(entry["meaning"]))


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
        labels: :class:`LabelInfo` per class (0 = background is not written); terminology codes are used when set,
            else SCT "Anatomical Structure" / "Tissue".
        bundle_name: Recorded as the algorithm name.
        bundle_sha256: Recorded as an algorithm parameter (weights hash).
        series_description: Of the SEG series (default: ``"<bundle name> segmentation"``).

    Raises:
        GeometryError: The label map is not on the grid of the source images.
        InputError: No source files.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from MedAnalysisLib import __version__

    if not source_files:
        raise InputError("expected the DICOM source files of the series to reference, got none (input was not DICOM)")
    datasets = [pydicom.dcmread(str(f)) for f in source_files]
    for ds in datasets:  # Type 2 patient/study attributes highdicom copies: present (empty) if the source omits them
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
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
    present = [lab for lab in labels if lab.value != 0]
    if not present:
        raise InputError("expected at least one foreground label to write a DICOM SEG, got only the background")
    # One binary plane per segment, numbered 1..n in the order of `present`.
    masks = np.stack([frames == lab.value for lab in present], axis=-1).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=bundle_name[:64], family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters={"weights_sha256": bundle_sha256},
    )
    descriptions = []
    for number, lab in enumerate(present, start=1):
        terminology = lab.terminology or {}
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=lab.name[:64],
            segmented_property_category=_code(terminology.get("category"), codes.SCT.AnatomicalStructure),
            segmented_property_type=_code(terminology.get("type"), codes.SCT.Tissue),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*[c / 255.0 for c in lab.color])
            if hasattr(hd.color.CIELabColor, "from_rgb") else None,
        ))
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
    with atomic_path(path) as temporary:
        seg.save_as(str(temporary))
    return Path(path)


def write_probabilities(probabilities: Volume, path: Path) -> Path:
    """Write the ``(k, j, i, n_classes)`` probability map (NIfTI with one component per class)."""
    from MedAnalysisLib.io import write_volume

    return write_volume(probabilities.with_array(probabilities.array.astype(np.float32, copy=False)), path)


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text of dict rows (columns in first-seen order; lists as JSON)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return buffer.getvalue()


def write_table(rows: Sequence[dict[str, Any]], path_csv: Path) -> tuple[Path, Path]:
    """Write rows as CSV and, beside it, the same rows as JSON (``.json`` instead of ``.csv``)."""
    write_text_atomic(path_csv, rows_to_csv(rows))
    path_json = path_csv.with_suffix(".json")
    write_text_atomic(path_json, json.dumps(_json_safe(list(rows)), indent=2, allow_nan=False) + "\n")
    return path_csv, path_json


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


def sidecar(prediction: Any, *, case_id: str, input_volume: Volume, outputs: dict[str, str]) -> dict[str, Any]:
    """The provenance record of one case (see the module docstring for what it holds and leaves out)."""
    import datetime

    record = {
        "case_id": case_id,
        "task": prediction.task,
        "bundle": {"name": prediction.bundle_name, "weights_sha256": prediction.bundle_sha256},
        "inference": prediction.details,
        "timings_s": {k: round(v, 4) for k, v in prediction.timings.items()},
        "input": describe_input(input_volume),
        "outputs": outputs,
        "versions": library_versions(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if prediction.scan is not None:
        record["scan"] = prediction.scan
    if prediction.task == "segmentation":
        record["volumes"] = prediction.table
    return _json_safe(record)


def write_prediction(
    prediction: Any,
    out_dir: Path,
    case_id: str,
    *,
    input_volume: Volume,
    labels: Sequence[Any],
    formats: Sequence[str] = ("nifti",),
    write_probability_map: bool = False,
) -> dict[str, str]:
    """Write every output of one case into ``out_dir``; the sidecar ``<case_id>.json`` is written last.

    Returns:
        ``{kind: file name}`` of what was written (file names relative to ``out_dir``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str] = {}
    if prediction.label is not None:
        for fmt in formats:
            if fmt not in LABEL_SUFFIXES:
                raise InputError(f"expected a format among {sorted(LABEL_SUFFIXES)}, got {fmt!r}")
            target = out_dir / f"{case_id}{LABEL_SUFFIXES[fmt]}"
            if fmt == "dicom-seg":
                files = input_volume.metadata.get("source_files")
                if not files:
                    raise InputError(f"expected DICOM input for --format dicom-seg, got case {case_id!r} from a file")
                write_dicom_seg(prediction.label, target, files, labels, bundle_name=prediction.bundle_name,
                                bundle_sha256=prediction.bundle_sha256)
            else:
                write_label(prediction.label, target, fmt, labels)
            outputs[f"label_{fmt}"] = target.name
    if write_probability_map and prediction.probabilities is not None:
        target = out_dir / f"{case_id}_probabilities.nii.gz"
        write_probabilities(prediction.probabilities, target)
        outputs["probabilities"] = target.name
    if prediction.table:
        csv_path, json_path = write_table(prediction.table, out_dir / f"{case_id}_table.csv")
        outputs["table_csv"], outputs["table_json"] = csv_path.name, json_path.name
    per_slice = getattr(prediction, "per_slice", None)
    if per_slice and per_slice is not prediction.table:  # sequence models: per-slice rows besides the scan table
        csv_path, json_path = write_table(per_slice, out_dir / f"{case_id}_slices.csv")
        outputs["slices_csv"], outputs["slices_json"] = csv_path.name, json_path.name
    record = sidecar(prediction, case_id=case_id, input_volume=input_volume, outputs=outputs)
    write_text_atomic(out_dir / f"{case_id}{SIDECAR_SUFFIX}", json.dumps(record, indent=2, allow_nan=False) + "\n")
    outputs["sidecar"] = f"{case_id}{SIDECAR_SUFFIX}"
    return outputs
