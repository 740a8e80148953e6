"""Datasets: which scans (and labels or targets) make up a training set, and how to split them.

Three layouts are read by :func:`load_dataset`:

* a Medical Segmentation Decathlon folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``), also in the nnU-Net v2
  variant with one file per channel (``imagesTr/<case>_0000.nii.gz``);
* a CSV manifest: one row per case, columns ``image`` (and ``image2``, ``image3``, ... for more channels), ``label``
  (a label-map path, segmentation) or ``target`` (a class value, classification), optional ``group`` or
  ``patient_id`` (cases of one group always land on the same side of a split), optional ``case_id``; paths are
  relative to the CSV's folder;
* a folder of DICOM series (one unlabelled case per series, found recursively).

A ``dataset.json`` usually comes from the internet, so every file it lists must be a relative path inside its folder
and stay inside once links are followed (absolute paths, ``..``, drive letters, backslashes and links leading out are
refused). A CSV manifest is written by the user and may name files anywhere: absolute paths are kept and relative
ones resolve against the manifest's folder. Both are read as regular files with a size cap
(:mod:`MedAnalysisLib.io.small_files`).

Datasets hold paths only; :func:`read_case` reads the voxels.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from MedAnalysisLib.errors import ImageValidationError, InputError
from MedAnalysisLib.volume import Volume

TASKS = ("segmentation", "classification")
_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")

#: DICOM Modality codes (defined terms) that may be copied into case names, sidecars and messages. The Modality
#: attribute is free text in a hostile file; only a value from this list ever leaves the reader's metadata.
DICOM_MODALITY_CODES = frozenset({
    "CR", "CT", "DX", "ES", "IO", "MG", "MR", "NM", "OCT", "OP", "OT", "PT", "PX", "RF", "RG", "SEG", "SM", "US",
    "XA", "XC",
})
#: Modality names (DICOM codes, MSD ``modality`` and nnU-Net ``channel_names`` values) grouped by the family of
#: intensities they hold: a model's intensity plan only means something on images of its own family.
MODALITY_FAMILIES = {
    "CT": {"CT", "CTA", "CECT", "NCCT", "CBCT"},
    "MR": {"MR", "MRI", "MRA", "MPMRI", "FMRI", "T1", "T1W", "T1GD", "T1C", "T1CE", "T2", "T2W", "T2STAR", "FLAIR",
           "ADC", "DWI", "DTI", "BOLD", "PD", "PDW", "SWI", "STIR", "MPRAGE", "DCE"},
    "PT": {"PT", "PET"},
    "US": {"US", "ULTRASOUND"},
    "NM": {"NM", "SPECT"},
    "XR": {"CR", "DX", "XA", "RF", "MG", "XRAY"},
}


def modality_code(value: object) -> str | None:
    """The DICOM Modality code ``value`` holds when it is one of :data:`DICOM_MODALITY_CODES`, else None (free text
    from a file never travels further than this)."""
    code = str(value or "").strip().upper()
    return code if code in DICOM_MODALITY_CODES else None


def modality_family(value: object) -> str | None:
    """The intensity family (``"CT"``, ``"MR"``, ``"PT"``, ...) of a modality name as DICOM, MSD ``dataset.json``
    or a bundle's plan states it (``"MRI"``, ``"T2"``, ``"FLAIR"`` are MR); None when it is unknown or unstated, so
    that only two known, different families count as a mismatch. A name of several words (``"MR T1"``, ``"CT
    abdomen"``) has the family its known words agree on; words of two families (``"PET/CT"``) give None."""
    text = str(value or "").upper()
    key = re.sub(r"[^A-Z0-9]", "", text)
    whole = next((family for family, names in MODALITY_FAMILIES.items() if key in names), None)
    if whole is not None:
        return whole
    found = {family for word in re.split(r"[^A-Z0-9]+", text) for family, names in MODALITY_FAMILIES.items()
             if word in names}
    return found.pop() if len(found) == 1 else None


def dataset_modality_family(channel_names: Sequence[str], modality: str) -> str | None:
    """One intensity family for a dataset's channels (all channels of one family), else None (mixed or unknown)."""
    families = {modality_family(name) for name in channel_names} | {modality_family(modality)}
    families.discard(None)
    return families.pop() if len(families) == 1 else None


@dataclass(frozen=True)
class Case:
    """One training or inference case.

    Attributes:
        case_id: Name of the case (file stem or manifest ``case_id``), never a patient identifier.
        images: One path per channel: an image file, a DICOM file, or a DICOM folder.
        label: Label-map path (segmentation), or None.
        target: Class value (classification), or None.
        group: Cases sharing a group (e.g. one patient) stay together in splits; None means the case is its own group.
        series: SeriesInstanceUID to pick when an image path is a DICOM folder holding several series.
    """

    case_id: str
    images: tuple[str, ...]
    label: str | None = None
    target: float | int | None = None
    group: str | None = None
    series: str | None = None


@dataclass
class Dataset:
    """A list of cases plus what they mean.

    Attributes:
        cases: The cases, in a stable order.
        task: ``"segmentation"`` or ``"classification"``.
        labels: Label value -> name (segmentation labels including background 0, or classification classes).
        modality: ``"CT"``, ``"MRI"``, ... (one modality for the dataset; the first channel's for multi-channel MSD).
        channel_names: One name per image channel.
        root: Where the dataset was loaded from.
        about: What an MSD ``dataset.json`` says about the data, for the model card: ``name``, ``license`` (MSD
            spells it ``licence``), ``reference`` and ``description``, each present only when the file gives it as
            text or a number. The file is untrusted (often downloaded), so each is made safe as it is read
            (:func:`_about_text`): control, bidirectional and invisible characters shown as escapes, length bounded
            (:data:`ABOUT_LIMITS`); empty for other forms of data.
    """

    cases: list[Case]
    task: str = "segmentation"
    labels: dict[int, str] = field(default_factory=dict)
    modality: str = "unknown"
    channel_names: list[str] = field(default_factory=lambda: ["image"])
    root: Path | None = None
    about: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"expected task in {TASKS}, got {self.task!r}")
        n_channels = len(self.channel_names)
        for case in self.cases:
            if len(case.images) != n_channels:
                raise InputError(
                    f"expected {n_channels} image(s) per case ({self.channel_names}), got {len(case.images)} for case "
                    f"{case.case_id!r}"
                )

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)


# ---------------------------------------------------------------------------------------------- loading


def load_dataset(
    path: str | os.PathLike[str],
    *,
    task: str | None = None,
    modality: str | None = None,
    image_columns: Sequence[str] | None = None,
    label_column: str = "label",
    target_column: str = "target",
    group_column: str | None = None,
) -> Dataset:
    """Load an MSD folder, a CSV manifest or a folder of DICOM series (see the module docstring).

    Args:
        path: Folder with ``dataset.json``, a ``.csv`` file, or a folder of DICOM files.
        task: Force the task; by default segmentation when labels are given, classification when targets are.
        modality: Modality for CSV and DICOM datasets (default: the manifest's ``modality`` column, the DICOM
            Modality tag, or ``"unknown"``).
        image_columns: CSV columns holding the channel paths (default ``image``, ``image2``, ``image3``, ...).
        label_column: CSV column with label-map paths.
        target_column: CSV column with class values.
        group_column: CSV column grouping cases (default ``group``, else ``patient_id`` when present).

    Raises:
        InputError: The path is missing or not one of the layouts, a listed file is missing, or a value is invalid.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _load_csv(path, task, modality, image_columns, label_column, target_column, group_column)
    if path.is_dir() and os.path.lexists(path / "dataset.json"):  # a FIFO or link there is refused when read
        return _load_msd(path, task)
    if path.is_dir():
        return _load_dicom_folder(path, modality)
    raise InputError(
        f"expected an MSD folder with dataset.json, a .csv manifest or a folder of DICOM series, got {str(path)!r} "
        f"({'missing' if not path.exists() else 'unsupported'})"
    )


def _case_stem(name: str) -> str:
    for suffix in sorted(_IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _msd_entry(root: Path, entry: object, key: str) -> Path:
    """The file a ``dataset.json`` entry names, confined to the dataset's folder.

    A ``dataset.json`` comes from the internet: an entry must be a relative path inside the folder, without ``..``,
    drive letters or backslashes, and must still be inside once every link is followed (a link in ``imagesTr/``
    leading elsewhere is refused), so a downloaded dataset cannot make a command read files outside it.

    Raises:
        InputError: Anything else (the message shows the entry, cut to a readable length).
    """
    from MedAnalysisLib.sanitize import terminal_field

    if not isinstance(entry, str) or not entry.strip() or "\x00" in entry:
        raise InputError(f"expected the {key!r} of a dataset.json training entry to be a file name, got "
                         f"{type(entry).__name__} {terminal_field(repr(entry))}")
    parts = entry.replace("\\", "/").split("/")
    if entry.startswith(("/", "~")) or "\\" in entry or re.match(r"^[A-Za-z]:", entry) or ".." in parts:
        raise InputError(f"expected the {key!r} of a dataset.json training entry to be a relative path inside the "
                         f"dataset folder (no absolute path, '..', drive letter or backslash), got "
                         f"{terminal_field(entry)}")
    return _confined(root, root / entry, f"the {key!r} {terminal_field(entry)} of a dataset.json training entry")


def _confined(root: Path, path: Path, what: str) -> Path:
    """``path`` with every link followed, refused unless it is inside ``root`` (itself resolved)."""
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and not real.is_relative_to(real_root):
        raise InputError(f"expected {what} to stay inside the dataset folder once links are followed, got a path "
                         "leading outside it (it is not read)")
    return real


def _msd_meta(root: Path) -> dict[str, object]:
    """The parsed ``dataset.json`` of ``root``: a regular file of at most 16 MiB holding a JSON object."""
    from MedAnalysisLib.io.small_files import read_json_file

    meta = read_json_file(root / "dataset.json", "a JSON dataset description (dataset.json)")
    if not isinstance(meta, dict):
        raise InputError(f"expected a JSON object in {root / 'dataset.json'}, got {type(meta).__name__}")
    for key in ("channel_names", "modality", "labels"):
        value = meta.get(key)
        if value is not None and not isinstance(value, dict):
            raise InputError(f"expected {key!r} in {root / 'dataset.json'} to be an object, got {type(value).__name__}")
    channels = meta.get("channel_names") or meta.get("modality") or {}
    if not all(str(k).isdigit() for k in channels):  # type: ignore[union-attr]
        raise InputError(f"expected channel numbers (\"0\", \"1\", ...) as keys of the channels in "
                         f"{root / 'dataset.json'}, got {sorted(str(k) for k in channels)[:8]}")  # type: ignore[union-attr]
    return meta


#: Longest text kept of each ``dataset.json`` field the model card takes (the card's own bounds for those fields).
ABOUT_LIMITS = {"name": 200, "license": 200, "reference": 1000, "description": 4000}


def _about_text(value: object, limit: int, multiline: bool) -> str:
    """Untrusted text made safe and bounded: each control, bidirectional or invisible character shown as an escape
    (line breaks kept only when ``multiline``), then cut at ``limit`` characters with a count of what was left out."""
    from MedAnalysisLib.sanitize import terminal_field

    lines = str(value).replace("\r\n", "\n").replace("\r", "\n").split("\n") if multiline else [str(value)]
    text = "\n".join(terminal_field(line) for line in lines)
    if len(text) > limit:
        keep = limit - len(f"... ({len(text)} more characters)")
        text = f"{text[:keep]}... ({len(text) - keep} more characters)"
    return text


def about_from_json(meta: object) -> dict[str, str]:
    """The name, licence, reference and description a ``dataset.json`` (or a cache manifest, which keeps them) gives as
    text (or numbers), made safe; anything that is not a JSON object gives nothing."""
    if not isinstance(meta, dict):
        return {}
    about = {}
    for key, names in (("name", ("name",)), ("license", ("licence", "license")), ("reference", ("reference",)),
                       ("description", ("description",))):
        value = next((meta[name] for name in names if name in meta), None)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
            about[key] = _about_text(value, ABOUT_LIMITS[key], multiline=key == "description")
    return about


def _load_msd(root: Path, task: str | None) -> Dataset:
    meta = _msd_meta(root)
    # MSD: "modality" {"0": "MRI"}; nnU-Net v2: "channel_names" {"0": "T2"} and "file_ending".
    channels: dict[str, object] = meta.get("channel_names") or meta.get("modality") or {"0": "image"}  # type: ignore[assignment]
    channel_names = [str(channels[k]) for k in sorted(channels, key=int)]
    labels_meta: dict[str, object] = meta.get("labels") or {}  # type: ignore[assignment]
    try:
        # MSD maps value -> name; nnU-Net v2 maps name -> value.
        if labels_meta and all(str(k).lstrip("-").isdigit() for k in labels_meta):
            labels = {int(k): str(v) for k, v in labels_meta.items()}
        else:
            labels = {int(v): str(k) for k, v in labels_meta.items()}  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise InputError(f"expected integer label values in {root / 'dataset.json'}, got {labels_meta}") from None
    cases: list[Case] = []
    training = meta.get("training")
    if isinstance(training, list) and training:
        for entry in training:
            if not isinstance(entry, dict) or "image" not in entry:
                raise InputError(f"expected training entries with an 'image' key in dataset.json, got {entry!r}")
            image = _msd_entry(root, entry["image"], "image")
            label = _msd_entry(root, entry["label"], "label") if entry.get("label") else None
            images = _channel_files(image, len(channel_names))
            cases.append(Case(_case_stem(image.name), images, str(label) if label else None))
    else:
        ending = meta.get("file_ending", ".nii.gz")
        if not isinstance(ending, str) or not re.fullmatch(r"\.[A-Za-z0-9.]{1,16}", ending):
            raise InputError(f"expected a file_ending such as '.nii.gz' in {root / 'dataset.json'}, got "
                             f"{str(ending)[:40]!r}")
        folder = root / "imagesTr"
        stems = sorted({p.name[: -len(ending) - 5] for p in folder.glob(f"*_0000{ending}") if not p.name.startswith("._")})
        for stem in stems:
            images = tuple(str(folder / f"{stem}_{c:04d}{ending}") for c in range(len(channel_names)))
            label = root / "labelsTr" / f"{stem}{ending}"
            cases.append(Case(stem, images, str(label) if label.exists() else None))
    if not cases:
        raise InputError(f"expected training cases in {root} (dataset.json 'training' or imagesTr/), found none")
    for case in cases:
        for p in (*case.images, *((case.label,) if case.label else ())):
            file = _file_of(p)
            if not Path(file).exists():
                raise InputError(f"expected the file {p} listed for case {case.case_id!r} to exist, it does not")
            _confined(root, Path(file), f"the file {Path(file).name} of case {case.case_id!r}")
    modality = channel_names[0]
    return Dataset(cases, task or "segmentation", labels, modality, channel_names, root, about_from_json(meta))


def _file_of(path: str) -> str:
    """The file of a case path (``image.nii.gz#2``, one channel of a 4D file, is ``image.nii.gz``)."""
    if "#" in path and path.rsplit("#", 1)[1].isdigit():
        return path.rsplit("#", 1)[0]
    return path


def _channel_files(image: Path, n_channels: int) -> tuple[str, ...]:
    """MSD lists one (possibly 4D) file per case; nnU-Net v2 style folders have ``<case>_0000`` per channel."""
    if n_channels == 1:
        return (str(image),)
    if image.exists():  # one 4D file holding every channel
        return tuple(f"{image}#{c}" for c in range(n_channels))
    stem = _case_stem(image.name)
    ending = image.name[len(stem) :]
    return tuple(str(image.with_name(f"{stem}_{c:04d}{ending}")) for c in range(n_channels))


def _load_csv(
    path: Path,
    task: str | None,
    modality: str | None,
    image_columns: Sequence[str] | None,
    label_column: str,
    target_column: str,
    group_column: str | None,
) -> Dataset:
    from MedAnalysisLib.io.small_files import MAX_CSV_BYTES, read_small_text

    text = read_small_text(path, "a CSV manifest", MAX_CSV_BYTES)
    if "\x00" in text:  # no path holds one, and a binary file is no manifest
        raise InputError(f"expected a CSV manifest at {path.name}, got text with NUL bytes (a binary file?)")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as error:
        raise InputError(f"expected a CSV manifest at {path.name}, got text the CSV reader refuses: {error}") from None
    if not rows:
        raise InputError(f"expected at least one case row in {path}, got none (columns {columns})")
    if image_columns is None:
        image_columns = ["image"] + [c for c in (f"image{n}" for n in range(2, 100)) if c in columns]
    missing = [c for c in image_columns if c not in columns]
    if missing:
        raise InputError(f"expected the image column(s) {missing} in {path}, got columns {columns}")
    has_label = label_column in columns
    has_target = target_column in columns
    if task is None:
        task = "segmentation" if has_label else "classification" if has_target else "segmentation"
    if task == "segmentation" and not has_label and has_target:
        raise InputError(f"expected a {label_column!r} column for segmentation in {path}, got columns {columns}")
    if task == "classification" and not has_target:
        raise InputError(f"expected a {target_column!r} column for classification in {path}, got columns {columns}")
    if group_column is None:
        group_column = "group" if "group" in columns else "patient_id" if "patient_id" in columns else None
    elif group_column not in columns:
        raise InputError(f"expected the group column {group_column!r} in {path}, got columns {columns}")
    base = path.parent
    cases: list[Case] = []
    for number, row in enumerate(rows, start=2):
        images = []
        for column in image_columns:
            value = (row.get(column) or "").strip()
            if not value:
                raise InputError(f"expected an image path in column {column!r} on line {number} of {path}, got nothing")
            images.append(str((base / value).resolve()))
        label = (row.get(label_column) or "").strip() if has_label else ""
        target: float | int | None = None
        # Targets are kept whenever given (a slice-sequence model may learn from label maps and scan targets).
        if task == "classification" or (has_target and (row.get(target_column) or "").strip()):
            target = _parse_target(row.get(target_column, ""), number, path)
        case_id = (row.get("case_id") or "").strip() or f"{_case_stem(Path(images[0]).name)}"
        group = (row.get(group_column) or "").strip() or None if group_column else None
        cases.append(Case(case_id, tuple(images), str((base / label).resolve()) if label else None, target, group))
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        cases = [Case(f"{c.case_id}_{n:04d}", c.images, c.label, c.target, c.group) for n, c in enumerate(cases)]
    for case in cases:
        for p in (*case.images, *((case.label,) if case.label else ())):
            if not Path(p).exists():
                raise InputError(f"expected {p} (case {case.case_id!r}, listed in {path.name}) to exist, it does not")
    if modality is None:
        values = {(row.get("modality") or "").strip() for row in rows} - {""}
        modality = values.pop() if len(values) == 1 else "unknown"
    labels: dict[int, str] = {}
    if task == "classification":
        targets = [c.target for c in cases]
        if all(float(t).is_integer() for t in targets):  # type: ignore[arg-type]
            labels = {int(t): str(int(t)) for t in sorted(set(targets))}  # type: ignore[arg-type]
    names = ["image"] if len(image_columns) == 1 else list(image_columns)
    return Dataset(cases, task, labels, modality, names, path.parent)


def _parse_target(text: str | None, line: int, path: Path) -> float | int:
    text = (text or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"expected a numeric target on line {line} of {path}, got {text!r}") from None
    if not np.isfinite(value):
        raise InputError(f"expected a finite target on line {line} of {path}, got {text!r}")
    return int(value) if value.is_integer() else value


def _load_dicom_folder(root: Path, modality: str | None) -> Dataset:
    from MedAnalysisLib.io.dicom import scan_dicom_folder

    cases: list[Case] = []
    modalities: set[str] = set()
    for info in scan_dicom_folder(root, recursive=True):
        if not info.loadable:
            continue
        # Read from the folder that holds the series' files (not the whole tree), picking the series by UID.
        folder = Path(os.path.commonpath([str(Path(f).parent) for f in info.files]))
        code = modality_code(info.modality) or "unknown"  # the header's text itself never names a case
        modalities.add(code)
        case_id = f"series{info.index:03d}_{code}"
        cases.append(Case(case_id, (str(folder),), series=info.series_instance_uid))
    if not cases:
        raise InputError(f"expected an MSD folder, a CSV manifest or loadable DICOM series in {root}, found none")
    if modality is None:
        modality = modalities.pop() if len(modalities) == 1 else "unknown"
    return Dataset(cases, "segmentation", {}, modality, ["image"], root)


# ---------------------------------------------------------------------------------------------- reading


def _read_volume(path: str, kind: Literal["image", "label"] = "image", series: str | None = None) -> Volume:
    """Read one image (file, DICOM file or DICOM folder) as a Volume; ``path#c`` picks channel c of a 4D file."""
    from MedAnalysisLib.io import is_dicom_path, load_volume

    channel = None
    if "#" in path and path.rsplit("#", 1)[1].isdigit():
        path, index = path.rsplit("#", 1)
        channel = int(index)
    volume = load_volume(
        path,
        series=series if is_dicom_path(path) else None,
        kind=kind,
        allow_2d=True,
        allow_4d=channel is not None,
    )
    if channel is not None:
        if volume.array.ndim != 4 or channel >= volume.array.shape[3]:
            raise ImageValidationError(f"expected a 4D image with a channel {channel} in {path}, got shape {volume.array.shape}")
        volume = volume.with_array(volume.array[..., channel])
    return volume


def read_case(case: Case) -> tuple[list[Volume], Volume | None]:
    """Read a case's image channels and label map (label maps come back with an integer dtype).

    Returns:
        The channel volumes (``(k, j, i)`` each, in the order of ``case.images``) and the label volume or None.
    """
    images = [_read_volume(path, "image", case.series) for path in case.images]
    label = _read_volume(case.label, "label") if case.label else None
    return images, label


# ---------------------------------------------------------------------------------------------- splits


def _groups(cases: Sequence[Case]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for index, case in enumerate(cases):
        groups.setdefault(case.group if case.group is not None else f"\0{case.case_id}", []).append(index)
    return groups


#: Most distinct targets for which splits are stratified by class (more looks like a regression target).
MAX_STRATA = 20


def _class_counts(cases: Sequence[Case], groups: dict[str, list[int]], keys: list[str]) -> np.ndarray | None:
    """Per group (rows, in ``keys`` order) the number of cases of each target class, or None when the cases have no
    class targets (segmentation) and splits are not stratified."""
    targets = [case.target for case in cases]
    if any(t is None for t in targets):
        return None
    classes = sorted(set(targets))  # type: ignore[type-var]
    if not 2 <= len(classes) <= MAX_STRATA or not all(float(t).is_integer() for t in classes):  # type: ignore[arg-type]
        return None
    column = {c: n for n, c in enumerate(classes)}
    counts = np.zeros((len(keys), len(classes)))
    for row, key in enumerate(keys):
        for index in groups[key]:
            counts[row, column[targets[index]]] += 1
    return counts


def split_cases(cases: Sequence[Case], val_fraction: float, seed: int = 0) -> tuple[list[Case], list[Case]]:
    """Seeded train/validation split; cases of the same ``group`` always land on the same side.

    When every case has a class target (classification), the split is also stratified: groups are taken in the seeded
    order only while they bring the validation side's count of each class closer to ``val_fraction`` of that class, so
    the validation cases keep the classes' proportions (a validation side of one class would make the epoch chosen on
    it meaningless). Without targets, groups are taken in the seeded order until ``val_fraction`` of the cases is
    reached.

    Args:
        cases: The cases to split.
        val_fraction: Share of cases (by count) for validation, in [0, 1).
        seed: Seed of the shuffle; the same cases and seed always give the same split.

    Returns:
        ``(train, val)``, each in the input order. With at least two groups and ``val_fraction > 0`` both sides get
        at least one group.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"expected val_fraction in [0, 1), got {val_fraction}")
    groups = _groups(cases)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    wanted = val_fraction * len(cases)
    counts = _class_counts(cases, groups, keys)
    val_indices: set[int] = set()
    if counts is not None and val_fraction > 0:
        target = val_fraction * counts.sum(axis=0)
        taken = np.zeros_like(target)
        for position in order:
            closer = np.sum((taken + counts[position] - target) ** 2) < np.sum((taken - target) ** 2)
            if closer:
                taken += counts[position]
                val_indices.update(groups[keys[position]])
    else:
        for position in order:
            if len(val_indices) >= wanted:
                break
            val_indices.update(groups[keys[position]])
    if len(keys) >= 2 and val_fraction > 0 and not val_indices:  # every group larger than the share: take one
        val_indices.update(groups[keys[order[0]]])
    if len(keys) >= 2 and len(val_indices) == len(cases):  # one huge group must not empty the training side
        val_indices -= set(groups[keys[order[-1]]])
    train = [c for n, c in enumerate(cases) if n not in val_indices]
    val = [c for n, c in enumerate(cases) if n in val_indices]
    return train, val


def kfold_splits(cases: Sequence[Case], k: int, seed: int = 0) -> list[tuple[list[Case], list[Case]]]:
    """Seeded k-fold cross-validation by group: every case is in exactly one validation fold.

    Groups are shuffled, then assigned largest-first to the fold with the fewest cases so far, so folds stay
    balanced even with uneven groups. When every case has a class target, a group goes to the fold where it brings
    the class counts of all folds closest to an equal share of each class (ties: the fold with the fewest cases), so
    every fold keeps the classes' proportions.

    Returns:
        ``k`` pairs ``(train, val)``, each list in the input order.
    """
    groups = _groups(cases)
    if k < 2 or k > len(groups):
        raise InputError(f"expected 2 <= k <= number of groups ({len(groups)}), got k={k}")
    keys = sorted(groups)
    shuffled = [keys[n] for n in np.random.default_rng(seed).permutation(len(keys))]
    shuffled.sort(key=lambda key: -len(groups[key]))  # stable: equal sizes keep the seeded order
    # Without class targets the counts are zero, every fold costs the same and the smallest fold takes the group.
    counts = _class_counts(cases, groups, shuffled)
    if counts is None:
        counts = np.zeros((len(shuffled), 1))
    share = counts.sum(axis=0) / k
    fold_counts = np.zeros((k, counts.shape[1]))
    folds: list[list[int]] = [[] for _ in range(k)]
    for row, key in enumerate(shuffled):
        # the change in squared deviation from the equal share of each class when the group joins fold f
        cost = [np.sum((fold_counts[f] + counts[row] - share) ** 2) - np.sum((fold_counts[f] - share) ** 2)
                for f in range(k)]
        chosen = min(range(k), key=lambda f: (round(cost[f], 9), len(folds[f]), f))
        fold_counts[chosen] += counts[row]
        folds[chosen].extend(groups[key])
    splits = []
    for fold in folds:
        members = set(fold)
        splits.append(([c for n, c in enumerate(cases) if n not in members], [c for n, c in enumerate(cases) if n in members]))
    return splits
