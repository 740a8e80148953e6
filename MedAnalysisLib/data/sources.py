"""What is this input? One answer for every command (``plan``, ``train``, ``evaluate``, ``predict``).

:func:`resolve_source` sorts a path a user gives into one of five forms, looking only at names and, for a file of
unknown type, at the DICOM preamble:

============  ==========================================================================================
``msd``       a Medical Segmentation Decathlon (or nnU-Net v2) folder, given as the folder or as its
              ``dataset.json``; ``path`` is the folder
``csv``       a CSV manifest (``image``, ``image2``, ..., ``label`` or ``target`` columns)
``dicom``     a folder of DICOM files (scanned recursively: one case per image series) or one DICOM file
``image``     one image file (NIfTI, NRRD, MetaImage)
``images``    a folder holding image files (one case per file)
============  ==========================================================================================

:func:`load_source` turns any of them into a :class:`~MedAnalysisLib.data.datasets.Dataset` (the MSD, CSV and
DICOM-folder forms through :func:`~MedAnalysisLib.data.datasets.load_dataset`; image files and single DICOM files
become unlabelled cases), so a command that plans, trains or evaluates accepts exactly what ``predict`` accepts.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.io.small_files import file_kind

#: File endings of single image files (longest first, so ``.seg.nrrd`` wins over ``.nrrd``).
IMAGE_SUFFIXES = (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SourceKind = Literal["msd", "csv", "dicom", "image", "images"]
EXPECTED = ("an MSD folder (or its dataset.json), a CSV manifest, a DICOM folder or file, an image file "
            "(.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd) or a folder of image files")


@dataclass(frozen=True)
class DataSource:
    """A resolved input.

    Attributes:
        kind: See the module docstring.
        path: The MSD folder, CSV file, DICOM folder or file, image file or image folder.
        given: The path as the user gave it.
    """

    kind: SourceKind
    path: Path
    given: Path


def is_image_file(path: Path) -> bool:
    """A regular file whose name ends with one of :data:`IMAGE_SUFFIXES` (hidden files excluded)."""
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_SUFFIXES)


def image_stem(name: str) -> str:
    """The file name without its image ending (``case_01.nii.gz`` -> ``case_01``)."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def special_file_kind(path: Path) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder (``"a FIFO"``, ``"a socket"``,
    ``"a character device"``, ``"a block device"``), else None. Such a path is never opened: reading a FIFO or a
    device blocks or never ends."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return file_kind(mode)


def resolve_source(path: str | os.PathLike[str]) -> DataSource:
    """Classify ``path`` (see the module docstring).

    Raises:
        InputError: Nothing there, a FIFO, socket or device, or a file of no known form (the message lists what is
            accepted).
    """
    given = Path(path)
    if not given.exists():
        raise InputError(f"expected {EXPECTED}, got nothing at {given}")
    special = special_file_kind(given)
    if special is not None:
        raise InputError(f"expected a regular file or a folder, got {special} at {given} (it is not opened)")
    if given.is_file():
        name = given.name.lower()
        if name == "dataset.json":
            return DataSource("msd", given.parent, given)
        if name.endswith(".csv"):
            return DataSource("csv", given, given)
        if is_image_file(given):
            return DataSource("image", given, given)
        if name.endswith(".dcm") or _is_dicom_file(given):
            return DataSource("dicom", given, given)
        raise InputError(f"expected {EXPECTED}, got the file {given.name!r} of none of these kinds")
    if os.path.lexists(given / "dataset.json"):  # read (and refused unless a regular file) as an MSD folder
        return DataSource("msd", given, given)
    if any(is_image_file(child) for child in given.iterdir()):
        return DataSource("images", given, given)
    return DataSource("dicom", given, given)


def load_source(
    path: str | os.PathLike[str] | DataSource,
    *,
    task: str | None = None,
    modality: str | None = None,
    image_columns: Sequence[str] | None = None,
    label_column: str = "label",
    target_column: str = "target",
    group_column: str | None = None,
) -> Any:
    """The :class:`~MedAnalysisLib.data.datasets.Dataset` of any input form.

    Args:
        path: A path (resolved with :func:`resolve_source`) or a resolved :class:`DataSource`.
        task: Force the task (see :func:`~MedAnalysisLib.data.datasets.load_dataset`); image files default to
            segmentation.
        modality: Modality when the data does not say.
        image_columns, label_column, target_column, group_column: CSV manifest columns (see
            :func:`~MedAnalysisLib.data.datasets.load_dataset`); a group column is refused for other forms, which
            have none (rather than silently ignored).

    Returns:
        The dataset. Image files and single DICOM files give one unlabelled case each, named after the file.

    Raises:
        InputError: As :func:`resolve_source` and :func:`load_dataset`; a group column for data that is not a CSV
            manifest.
    """
    from MedAnalysisLib.data.datasets import Case, Dataset, load_dataset

    source = path if isinstance(path, DataSource) else resolve_source(path)
    if group_column is not None and source.kind != "csv":
        raise InputError(
            f"expected a CSV manifest for a group column ({group_column!r}), got {source.kind} data at "
            f"{str(source.given)!r}; only manifests have a group column (list the cases with one in a CSV manifest)"
        )
    if source.kind in ("msd", "csv") or (source.kind == "dicom" and source.path.is_dir()):
        return load_dataset(source.path, task=task, modality=modality, image_columns=image_columns,
                            label_column=label_column, target_column=target_column, group_column=group_column)
    if source.kind == "images":
        files = sorted(child for child in source.path.iterdir() if is_image_file(child))
    else:  # one image file or one DICOM file
        files = [source.path]
    cases = [Case(f.stem if source.kind == "dicom" else image_stem(f.name), (str(f),)) for f in files]
    root = source.path if source.path.is_dir() else source.path.parent
    return Dataset(cases, task or "segmentation", {}, modality or "unknown", ["image"], root)
