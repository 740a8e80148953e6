"""Builders for the security tests: a tiny (untrained) model bundle and DICOM series full of canary patient data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Canary patient data planted in DICOM inputs; none of it may reach a log, an error, a table, a sidecar, a NIfTI or
#: NRRD header or a file name. Only a DICOM SEG carries PatientName/ID/BirthDate (the standard requires them).
PHI_NAME = "PHI^CANARY"
PHI_ID = "CANARY-ID-123"
PHI_BIRTH_DATE = "19010101"
#: Optional attributes with canaries that no output may carry, the DICOM SEG included.
PHI_OPTIONAL = {
    "OtherPatientIDs": "CANARY-OTHER-ID",
    "PatientAddress": "1 CANARY STREET",
    "PatientTelephoneNumbers": "555-CANARY",
    "PatientComments": "CANARY COMMENT",
    "PatientAge": "099Y",
    "PatientWeight": "71.5",
    "EthnicGroup": "CANARY-GROUP",
    "StudyDescription": "CANARY STUDY",
    "InstitutionName": "CANARY HOSPITAL",
    "OperatorsName": "CANARY^OPERATOR",
}
#: Every string that must not appear outside a DICOM SEG's required patient/study attributes.
PHI_STRINGS = (PHI_NAME, PHI_ID, PHI_BIRTH_DATE, "CANARY", *PHI_OPTIONAL.values())


def write_canary_series(folder: Path, pixels: np.ndarray, **options: object) -> list[Path]:
    """A DICOM series (see ``helpers_io.write_dicom_series``) whose headers carry the canaries above."""
    import pydicom
    from helpers_io import write_dicom_series

    paths = write_dicom_series(folder, pixels, **options)  # type: ignore[arg-type]
    for path in paths:
        dataset = pydicom.dcmread(path)
        dataset.PatientName = PHI_NAME
        dataset.PatientID = PHI_ID
        dataset.PatientBirthDate = PHI_BIRTH_DATE
        dataset.PatientSex = "O"
        dataset.AccessionNumber = "ACC0001"
        dataset.StudyID = "S1"
        for keyword, value in PHI_OPTIONAL.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path)
    return paths


def leaks(data: bytes | str, strings: Sequence[str] = PHI_STRINGS) -> list[str]:
    """The canaries found in ``data`` (case-sensitive; bytes are searched as UTF-8 and Latin-1 text)."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    return [s for s in strings if s in text]


def make_tiny_bundle(path: Path) -> Path:
    """An untrained 3D U-Net segmentation bundle (4-8 filters, 16^3 patches, 1.5 mm): what it predicts is noise,
    but it runs the whole prediction and writing path in well under a second per small case."""
    from helpers_inference import make_cube_plan

    from MedAnalysisLib.bundles import BundleConfig, LabelInfo, save_bundle
    from MedAnalysisLib.models import build_model

    hparams = {"n_classes": 2, "in_channels": 1, "patch_size": [16, 16, 16], "filters": [4, 8], "norm": "batch"}
    config = BundleConfig(
        name="tiny", task="segmentation", family="unet3d", hparams=hparams, plan=make_cube_plan(),
        labels=(LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "organ", (200, 80, 60))),
        input={"channels": [{"name": "image", "modality": "CT"}]},
    )
    return save_bundle(path, build_model("unet3d", **hparams), config)
