"""Reading and writing scans: image files (NIfTI, NRRD, MetaImage) and DICOM series, always as a Volume.

``load_volume`` is the one entry point for "whatever the user pointed at": a folder or a ``.dcm`` file goes to the
DICOM reader, anything else to the file reader, which refuses data files outside a detached header's folder, payloads
that are not the size their header declares and geometry a reader would silently repair. ``write_volume`` writes
NIfTI/NRRD/MetaImage atomically, without metadata from the source, and reads the result back before renaming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from MedAnalysisLib.errors import UnreadableFileError
from MedAnalysisLib.io.files import ImageHeader, is_image_file, read_header, read_volume, write_volume
from MedAnalysisLib.volume import Volume

__all__ = [
    "ImageHeader",
    "is_dicom_path",
    "load_volume",
    "read_header",
    "read_volume",
    "write_volume",
]


def is_dicom_path(path: str | os.PathLike[str]) -> bool:
    """True for a folder, a ``.dcm``/``.dicom``/``.ima`` file, or a file with the DICOM preamble (``DICM`` at 128)."""
    path = Path(path)
    if path.is_dir():
        return True
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    if path.is_file() and not is_image_file(path):
        try:
            with path.open("rb") as handle:
                handle.seek(128)
                return handle.read(4) == b"DICM"
        except OSError:
            return False
    return False


def load_volume(
    path: str | os.PathLike[str],
    *,
    series: str | int | None = None,
    kind: Literal["image", "label"] = "image",
    memory_budget_bytes: int | None = None,
    allow_2d: bool = False,
    allow_4d: bool = False,
    resample_tilt: bool = False,
) -> Volume:
    """Load a scan from a DICOM folder/file or an image file.

    Args:
        path: A folder of DICOM files (scanned recursively), a single DICOM file (one slice or a multi-frame
            image), or a ``.nii``/``.nii.gz``/``.nrrd``/``.seg.nrrd``/``.nhdr``/``.mha``/``.mhd`` file.
        series: For DICOM folders holding several series: a SeriesInstanceUID or the index shown by
            ``medanalysis dicom ls``. Must be None for image files.
        kind: ``"image"`` or ``"label"`` (integer class values required and returned).
        memory_budget_bytes: Largest array allowed, checked from the header before any pixel is read or
            decompressed (None = half the RAM).
        allow_2d: Accept a single 2D image as a one-slice volume ``(1, j, i)``.
        allow_4d: Accept a 4D image file as a multi-component volume ``(k, j, i, t)``.
        resample_tilt: For a gantry-tilted DICOM series, resample it onto an orthogonal grid instead of refusing it.

    Returns:
        A :class:`Volume` in ``(k, j, i)`` order with LPS geometry; DICOM intensities have the modality LUT applied
        (HU for CT).
    """
    from MedAnalysisLib.io.validate import require_integer_labels

    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(f"expected a file or folder, got nothing at {path}")
    if is_dicom_path(path):
        from MedAnalysisLib.io.dicom import load_dicom_series

        volume = load_dicom_series(
            path, series, memory_budget_bytes=memory_budget_bytes, allow_2d=allow_2d, resample_tilt=resample_tilt
        )
        return require_integer_labels(volume) if kind == "label" else volume
    if series is not None:
        raise UnreadableFileError(f"expected a DICOM folder when a series is given, got the image file {path.name}")
    return read_volume(path, kind=kind, memory_budget_bytes=memory_budget_bytes, allow_2d=allow_2d, allow_4d=allow_4d)
