"""Batch prediction over many cases: discovery, deterministic sharding, resume, and isolation of bad cases.

What counts as a case (``discover_cases``; each input is classified by
:func:`MedAnalysisLib.data.sources.resolve_source`, the same function ``plan``, ``train`` and ``evaluate`` use):

* an image file (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``): one case named after the file;
* a Medical Segmentation Decathlon folder or its ``dataset.json``, or a ``.csv`` manifest: one case per entry, with
  every image channel the model needs (see :func:`MedAnalysisLib.data.datasets.load_dataset`);
* a folder holding image files: each file is a case;
* any other folder, or a DICOM file: DICOM, scanned recursively; each image series is a case, named after its
  folder (plus ``_s<N>`` when a folder holds several series; ``--series`` picks one).

Before the model is loaded (which imports TensorFlow) and before any case is run, everything that can be judged from
``bundle.json``, the inputs and their headers is checked: the bundle and options once
(:func:`~MedAnalysisLib.inference.writers.check_formats`, a refusal with exit code 2), the inputs (a missing file is
refused), then each case's input from its headers (DICOM SEG: DICOM input with a FrameOfReferenceUID, single-frame
images). A case whose input cannot give one format is reported at once and still gets every other output;
``not_written`` in the summary and in the case's sidecar says what was left out and why, and the command exits 1.
When no case to run can give any of the requested formats (``--format dicom-seg`` on NIfTI files), the batch is
refused before any work.

Sharding (``--shard i/n``): cases are sorted by name and case number ``m`` (0-based) goes to shard ``m % n + 1``, so
shards are balanced, disjoint, and together cover every case once, whatever machine runs them.

Resume: a case whose sidecar ``<case>.json`` exists was finished (the sidecar is written last, atomically, so it only
exists when every output of the case is complete). It is skipped when the sidecar shows the same bundle (weights
sha256 and :func:`bundle_identity`, the digest of the bundle.json settings that shape outputs), the same MedAnalysis
version and the same options (:func:`requested_options`, recorded in the sidecar as ``inference.requested``), and
every output it lists is still there (otherwise the case is done again). A case made by another bundle, with other
options or by another version, a sidecar that is corrupt, truncated, oversized or of another shape, and one whose
values a skipped case gives the run are unsound (:func:`summary_record_problem`), is refused,
with the reason, before any case runs, unless ``overwrite`` recomputes every case: the overwrite policy of every
command (:mod:`MedAnalysisLib.cli._validate`), which never replaces an output it cannot show it made. A case without a
sidecar is (re)computed: while its outputs are written a hidden pending record (``.<case>.pending.json``) lists each
output right after it landed, with its size, mtime_ns and inode (:func:`note_written`), so a re-run after a stop
replaces what the stopped run left as its own; a listed file that no longer matches what was recorded (another file
put there since, a record from elsewhere or of the earlier layout, which listed names only) is not ours. With
``overwrite``, once a (re)computed case's new outputs are in place, the files its earlier sidecar or pending record
listed that this run did not write again are removed (:func:`_remove_earlier_outputs`: only names of that case's
outputs, never a link, another case's file or an input), each removal reported as a warning, so that no output of
other options stays beside the new ones; without it nothing is removed, and a stopped run's files this run does not
make stay recorded as ours.

Outputs of others (:func:`check_output_names`, before any work): every output name of every case (label maps,
probability maps, tables, sidecar, pending record) must fit the file system's name limit and belong to one case.
An existing file under one of them that no sidecar of its case lists, nor its pending record as it was written
(size, mtime_ns and inode), or a batch summary this version did not write, is refused unless ``overwrite``; a link, a folder or a special file there, and an input of
the run, are refused even then.

Uncertainty (``uncertainty``): each case also gets its uncertainty maps (segmentation) and columns, and the summary
gets, per case, ``uncertainty: {"foreground_entropy": x, "high": bool}`` (segmentation; ``entropy`` for a
classifier: the scan's, or the mean over slices for slice classifiers), ``high`` when the value is above
``uncertainty_threshold``, and ``review_first``: the flagged cases, most uncertain first. Cases skipped by the resume
are read back from their sidecars, so the summary covers every case of the shard. ``uncertainty`` and ``explain``
(with its class) are part of the options a resume compares; the threshold is not (it only changes the summary).

Isolation: whatever one case raises (our typed errors, ``ValueError``/``RuntimeError``/``TypeError`` from
SimpleITK, numpy or Keras, ``OverflowError``, ``MemoryError``, ``OSError``) is that case's failure: recorded in the
summary with its type and a one-line message through the PHI filter, and the batch goes on; the command exits 1 when
any case failed. Only a stop (:class:`~MedAnalysisLib.errors.CancelledError`, ``KeyboardInterrupt``) ends the batch.
Inputs named like images that are not regular files (FIFOs, devices, folders) are cases that fail, never opened.

Modality: a case whose modality its headers state (DICOM Modality, the ``modality``/``channel_names`` of an MSD
``dataset.json``, a manifest's ``modality`` column) and that differs from the family of the bundle's plan (CT, MR,
PET, ...) is refused before any work, unless ``allow_modality_mismatch``, which runs it with a warning (a log line,
JSON lines included) and lists it under ``modality_mismatch`` in the summary. Unknown modality (image files without
metadata) is never judged.

What a batch writes holds no text from the inputs' headers: only :data:`PASSED_METADATA` (a Modality code from
the DICOM defined terms, UIDs in UID syntax, the source files) reaches the model and the writers; case ids come from
file and folder names (:func:`safe_case_id`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from MedAnalysisLib.data.datasets import dataset_modality_family, modality_code, modality_family
from MedAnalysisLib.data.sources import IMAGE_SUFFIXES, image_stem, is_image_file, resolve_source, special_file_kind
from MedAnalysisLib.errors import CancelledError, InputError, MedAnalysisError, OutputError, UnreadableFileError
from MedAnalysisLib.inference.uncertainty import DEFAULT_UNCERTAINTY_THRESHOLD
from MedAnalysisLib.inference.writers import (
    LABEL_SUFFIXES,
    SIDECAR_SUFFIX,
    check_formats,
    explanation_file_name,
    format_problems,
    is_case_output_name,
    probability_file_name,
    table_file_names,
    uncertainty_file_name,
    write_prediction,
)
from MedAnalysisLib.io.atomic import write_text_atomic
from MedAnalysisLib.privacy import redact, remember
from MedAnalysisLib.sanitize import terminal_field


@dataclass(frozen=True)
class CaseInput:
    """One case to predict.

    Attributes:
        case_id: Name used for output files (letters, digits, ``-``, ``_``, ``.``).
        images: One path per channel (files or DICOM folders/files).
        series: SeriesInstanceUID of the series to load from a DICOM folder, or None.
        modality: Intensity family of the input (``"CT"``, ``"MR"``, ...; see
            :func:`~MedAnalysisLib.data.datasets.modality_family`) as its DICOM headers or its ``dataset.json`` state
            it, or None when they do not (image files); a DICOM file's is known once it is loaded.
    """

    case_id: str
    images: tuple[str, ...]
    series: str | None = None
    modality: str | None = None


@dataclass
class BatchOptions:
    """How a batch runs (the ``medanalysis predict`` options)."""

    formats: tuple[str, ...] = ("nifti",)
    write_probabilities: bool = False
    postprocess: tuple[str, ...] | None = None
    overlap: float | None = None
    tta: bool | None = None
    batch_size: int | None = None
    precision: str = "float32"
    memory_budget_mb: float | None = None
    series: str | None = None
    shard: tuple[int, int] = (1, 1)
    overwrite: bool = False
    #: Run cases whose modality differs from the bundle's (with a warning) instead of refusing them.
    allow_modality_mismatch: bool = False
    #: Write uncertainty maps and columns, and flag the uncertain cases in the summary.
    uncertainty: bool = False
    #: A case whose entropy (segmentation: mean over the foreground) is above this is flagged ``high``.
    uncertainty_threshold: float = DEFAULT_UNCERTAINTY_THRESHOLD
    #: Explain each classifier result (a heatmap volume per case), for ``explain_class`` (default: the predicted).
    explain: bool = False
    explain_class: str | None = None


@dataclass
class BatchSummary:
    """What happened to each case of this shard."""

    shard: tuple[int, int]
    total_cases: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    out_dir: str = ""
    #: Outputs a case's input cannot give (``case_id``, ``output``, ``reason``); the case's other outputs exist.
    not_written: list[dict[str, str]] = field(default_factory=list)
    #: Cases run on purpose (``allow_modality_mismatch``) although their modality differs from the bundle's
    #: (``case_id``, ``bundle_modality``, ``input_modality``: family codes only, never the header's text).
    modality_mismatch: list[dict[str, str]] = field(default_factory=list)
    #: With uncertainty: per case ``{"foreground_entropy" (segmentation) or "entropy" (classification): x,
    #: "high": bool}``.
    uncertainty: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: With uncertainty: the cases flagged ``high``, most uncertain first (the ones a reader should look at first).
    review_first: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def safe_case_id(text: str) -> str:
    """A file-name-safe case id (other characters become ``_``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "case"


def _dicom_cases(folder: Path, series: str | None) -> list[CaseInput]:
    from MedAnalysisLib.io.dicom import scan_dicom_folder

    found = [s for s in scan_dicom_folder(folder, recursive=True) if not getattr(s, "is_localizer", False)]
    if series is not None:
        found = [s for s in found if s.series_instance_uid == series or str(s.index) == str(series)]
        if not found:
            raise InputError(f"expected series {_short(series, 80)} in the DICOM folder {_short(folder.name, 80)}, "
                             "found none")
    if not found:
        raise InputError(f"expected DICOM image series in {_short(folder.name, 80)}, found none")
    by_folder: dict[Path, list[Any]] = {}
    for info in found:
        parent = Path(info.files[0]).parent if info.files else folder
        by_folder.setdefault(parent, []).append(info)
    cases = []
    for parent, infos in by_folder.items():
        try:
            stem = parent.relative_to(folder.parent).as_posix()
        except ValueError:
            stem = parent.name
        for info in infos:
            name = stem if len(infos) == 1 else f"{stem}_s{info.series_number if info.series_number is not None else info.index}"
            cases.append(CaseInput(safe_case_id(name), (str(folder),), info.series_instance_uid,
                                   modality_family(modality_code(info.modality))))
    return cases


def _named_like_image(child: Path) -> bool:
    """An entry of an image folder that a user means as a case: a regular image file, or something named like one
    that is not (a FIFO, a device, a folder), which then fails as its own case instead of vanishing."""
    if child.name.startswith(".") or not child.name.lower().endswith(IMAGE_SUFFIXES):
        return False
    return is_image_file(child) or child.is_dir() or special_file_kind(child) is not None


def _cases_of(raw: str | Path, series: str | None) -> list[CaseInput]:
    """The cases of one command-line input (see :func:`discover_cases`)."""
    source = resolve_source(raw)
    path = source.path
    if source.kind in ("msd", "csv"):
        from MedAnalysisLib.data.datasets import load_dataset

        dataset = load_dataset(path)
        family = dataset_modality_family(dataset.channel_names, dataset.modality)
        return [CaseInput(safe_case_id(c.case_id), tuple(str(p) for p in c.images), c.series, family)
                for c in dataset.cases]
    if source.kind == "image":
        return [CaseInput(safe_case_id(image_stem(path.name)), (str(path),))]
    if source.kind == "images":
        return [CaseInput(safe_case_id(image_stem(child.name)), (str(child),))
                for child in sorted(path.iterdir()) if _named_like_image(child)]
    if path.is_dir():
        return _dicom_cases(path, series)
    return [CaseInput(safe_case_id(path.stem), (str(path),), series)]  # a single DICOM file


def discover_cases(inputs: Sequence[str | Path], *, series: str | None = None) -> list[CaseInput]:
    """Turn command-line inputs into cases (see the module docstring), sorted by case id, ids unique.

    Raises:
        InputError: An input does not exist, is a FIFO or a device, holds nothing to predict, or two cases would get
            the same name.
        UnreadableFileError: An input folder or a file that describes cases cannot be read (permissions, I/O, a
            header a reader fails on).
    """
    cases: list[CaseInput] = []
    for raw in inputs:
        try:
            cases.extend(_cases_of(raw, series))
        except MedAnalysisError:
            raise
        except Exception as error:  # noqa: BLE001 - a reader's surprise is a refusal of this input, not a traceback
            detail = failure_record("", error)["message"] if not isinstance(error, OSError) else error.strerror
            raise UnreadableFileError(f"expected a readable input at {_short(Path(raw).name, 80)}, got "
                                      f"{type(error).__name__}: {detail or 'no details'}") from None
    names = [c.case_id for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"expected unique case names, got several inputs named {duplicates}; rename or split them")
    return sorted(cases, key=lambda c: c.case_id)


def select_shard(cases: Sequence[CaseInput], shard: tuple[int, int]) -> list[CaseInput]:
    """Cases of shard ``i`` of ``n`` (1-based): every n-th case of the sorted list, starting at i - 1."""
    index, count = shard
    if count < 1 or not 1 <= index <= count:
        raise InputError(f"expected a shard i/n with 1 <= i <= n, got {index}/{count}")
    ordered = sorted(cases, key=lambda c: c.case_id)
    return [case for m, case in enumerate(ordered) if m % count == index - 1]


def header_problems(case: CaseInput, formats: Sequence[str], scans: dict[str, list[Any]] | None = None) -> dict[str, str]:
    """What keeps a requested format from being written for this case, judged from file names and DICOM headers
    only (no pixels): ``{format: reason}``. ``scans`` caches folder scans between cases of one study."""
    if "dicom-seg" not in formats:
        return {}
    from MedAnalysisLib.io import is_dicom_path
    from MedAnalysisLib.io.dicom import scan_dicom_folder

    image = case.images[0].rsplit("#", 1)[0] if "#" in case.images[0] else case.images[0]
    if not is_dicom_path(image):
        return {"dicom-seg": "the input is not a DICOM series (a DICOM SEG references its source images)"}
    scans = {} if scans is None else scans
    if image not in scans:
        try:
            scans[image] = scan_dicom_folder(image, recursive=True)
        except Exception:  # noqa: BLE001 - a header this scan cannot read fails as its case, when it is loaded
            scans[image] = []
    found = [s for s in scans[image] if case.series is None or s.series_instance_uid == case.series]
    if len(found) != 1:
        return {}  # loading the case will say what is wrong with it
    info = found[0]
    if not info.frame_of_reference_uid:
        return {"dicom-seg": "the DICOM series has no FrameOfReferenceUID, which a DICOM SEG needs to place its frames"}
    if len(set(info.files)) != info.n_slices:
        return {"dicom-seg": f"expected one single-frame DICOM image per slice, got {len(set(info.files))} file(s) "
                             f"for {info.n_slices} slices (enhanced multi-frame images)"}
    return {}


#: Volume metadata a case passes on to the model and the writers (sidecar, DICOM SEG), each value checked: a DICOM
#: Modality code from the defined terms, UIDs in UID syntax, the source file list. Anything else the reader kept is
#: dropped here, so no other text from a file's header reaches a batch output.
PASSED_METADATA = ("Modality", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "source_files")
_UID = re.compile(r"[0-9]{1,40}(\.[0-9]{1,40}){0,40}")
#: Header text that must never be quoted: remembered by the PHI filter when a reader hands it over anyway.
_HEADER_TEXT_KEYS = frozenset({"SeriesDescription", "StudyDescription", "ProtocolName", "InstitutionName",
                               "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "PatientName",
                               "PatientID", "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName"})


def passed_metadata(volume: Any) -> Any:
    """``volume`` with only :data:`PASSED_METADATA` (each value checked) in its metadata; the voxels are shared."""
    metadata = volume.metadata or {}
    kept: dict[str, Any] = {}
    code = modality_code(metadata.get("Modality"))
    if code is not None:
        kept["Modality"] = code
    for key in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        value = metadata.get(key)
        if isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value):
            kept[key] = value
    files = metadata.get("source_files")
    if isinstance(files, (list, tuple)) and all(isinstance(f, (str, Path)) for f in files):
        kept["source_files"] = [str(f) for f in files]
    remember(str(v) for k, v in metadata.items() if k in _HEADER_TEXT_KEYS and v)
    return dataclasses.replace(volume, metadata=kept)


def _check_case_paths(case: CaseInput) -> None:
    """Refuse, before anything opens them, case inputs that are not regular files or DICOM folders."""
    for image in case.images:
        path = Path(image)
        if not path.exists() and "#" in image:  # a channel of a 4D file: ``file#index``
            path = Path(image.rsplit("#", 1)[0])
        special = special_file_kind(path)
        if special is not None:
            raise UnreadableFileError(f"expected a regular image file or a DICOM folder, got {special} named "
                                      f"{_short(path.name, 80)} (it is not opened)")
        if path.is_dir() and path.name.lower().endswith(IMAGE_SUFFIXES):
            raise UnreadableFileError(f"expected an image file, got a folder named {_short(path.name, 80)}")


def load_case(case: CaseInput) -> list[Any]:
    """Load the channel volumes of one case (files or DICOM); a single slice loads as a one-slice volume (as in
    training), for slice classifiers. Only :data:`PASSED_METADATA` stays on the volumes.

    Raises:
        UnreadableFileError: An input is a FIFO, a device, or a folder named like an image file (never opened).
        InputError: What :func:`~MedAnalysisLib.io.load_volume` raises.
    """
    from MedAnalysisLib.io import load_volume

    _check_case_paths(case)
    volumes = [load_volume(image, series=case.series, allow_2d=True) if case.series
               else load_volume(image, allow_2d=True) for image in case.images]
    return [passed_metadata(volume) for volume in volumes]


#: Largest sidecar a resume reads (the ones this version writes are a few kilobytes).
MAX_SIDECAR_BYTES = 1 << 20
#: The parts of ``bundle.json`` that shape a case's outputs; their digest identifies the bundle in a sidecar.
_IDENTITY_KEYS = ("task", "family", "hparams", "plan", "labels", "input", "inference", "weights", "members")


def bundle_identity(config: Any) -> str:
    """sha256 of what in ``bundle.json`` shapes the outputs (plan, labels, model, inference defaults, weights
    hash): a bundle whose weights are the same but whose plan or labels were edited is another bundle."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    relevant = {key: data[key] for key in _IDENTITY_KEYS if key in data}
    text = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def requested_options(config: Any, options: BatchOptions) -> dict[str, Any]:
    """What decides a case's outputs, as its sidecar records it (``inference.requested``) and a resume compares it:
    the bundle's identity (:func:`bundle_identity`), the MedAnalysis version, formats, probabilities,
    overlap/TTA/post-processing resolved against the bundle's defaults, precision as asked, series. Batch size and
    memory budget only change how the work is split, so they are not part of it."""
    from MedAnalysisLib import __version__
    from MedAnalysisLib.inference.predict import _settings

    overlap, tta, steps = _settings(config, options.overlap, options.tta, options.postprocess)
    formats = options.formats if config.task == "segmentation" else ()
    return {"bundle": bundle_identity(config), "version": __version__, "formats": sorted(formats),
            "probabilities": bool(options.write_probabilities), "overlap": overlap, "tta": tta,
            "postprocess": list(steps), "precision": options.precision, "series": options.series,
            "uncertainty": bool(options.uncertainty), "explain": explain_request(config, options)}


def explain_request(config: Any, options: BatchOptions) -> str | None:
    """What a run explains, as a resume compares it: the class name (``default`` for the explainer's default class), or None
    without ``explain``. A class given by value and by name is the same request."""
    from MedAnalysisLib.inference.predict import check_explain_target

    if not options.explain:
        return None
    return check_explain_target(config, options.explain_class) or "default"


def check_batch_options(config: Any, options: BatchOptions) -> None:
    """The uncertainty and explanation options against the bundle, from ``bundle.json`` alone (before TensorFlow).

    Raises:
        InputError: A threshold outside [0, 1]; ``explain_class`` without ``explain``; ``explain`` for a
            segmentation bundle or a class the bundle does not have.
    """
    threshold = options.uncertainty_threshold
    if not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"expected an uncertainty threshold in [0, 1], got {_short(threshold)}")
    if options.explain_class is not None and not options.explain:
        raise InputError(f"expected --explain with --explain-class, got --explain-class "
                         f"{_short(str(options.explain_class), 60)} alone")
    _check_explain_class(config, options)
    explain_request(config, options)


def _check_explain_class(config: Any, options: BatchOptions) -> None:
    """Refuse an ``explain_class`` that names no class of a classifier, quoting it as typed (a leading or trailing
    space, a control character shown as one escape), so that the user sees why it did not match."""
    target = options.explain_class
    if not options.explain or not isinstance(target, str) or getattr(config, "task", None) != "classification":
        return  # a segmentation bundle and the default class are judged by explain_request
    names = {int(label.value): str(label.name) for label in config.labels}
    if target in names.values():
        return
    if re.fullmatch(r"-?[0-9]{1,9}", target.strip()) and int(target.strip()) in names:
        return
    listed = ", ".join(_short(name, 60) for name in sorted(names.values()))
    raise InputError(f"expected a class to explain among [{listed}] (name or value {sorted(names)}), got "
                     f"--explain-class {_short(target, 60)}")


def multi_pass(config: Any, options: BatchOptions) -> bool:
    """Whether a prediction averages several passes (test-time flips or ensemble members), so that it has a
    disagreement map besides the entropy."""
    from MedAnalysisLib.inference.predict import _settings

    members = getattr(config, "members", None) or ()
    return len(members) > 1 or _settings(config, options.overlap, options.tta, options.postprocess)[1]


def _read_sidecar(path: Path) -> dict[str, Any] | str:
    """The sidecar's JSON object, or why it cannot be trusted (never raises)."""
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            return f"its sidecar is larger than {MAX_SIDECAR_BYTES} bytes, not one this version writes"
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return "its sidecar is not readable JSON (corrupt or truncated)"
    return record if isinstance(record, dict) else "its sidecar is not a JSON object"


def _short(value: Any, limit: int = 40) -> str:
    """A value from a file or an option, quoted once for a message: text as ``'...'`` with each control character
    shown as one escape (never ``repr``, whose backslashes a terminal filter would show doubled), other values as
    JSON; long values are cut."""
    if isinstance(value, str):
        return "'" + terminal_field(value, limit) + "'"
    try:
        text = json.dumps(value, allow_nan=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return terminal_field(text, limit)


def _option_words(key: str, value: Any) -> str:
    """How the command line says option ``key`` had ``value`` (``with --explain-class 'lesion'``, ``with TTA on``,
    ``without --uncertainty``), for a resume refusal; values from a sidecar are escaped and quoted once."""
    flags = {"uncertainty": "--uncertainty", "probabilities": "--probabilities"}
    if key in flags:
        return f"{'with' if value else 'without'} {flags[key]}"
    if key == "tta" and isinstance(value, bool):
        return f"with TTA {'on' if value else 'off'}"
    if key == "explain":
        if value is None:
            return "without --explain"
        return "with --explain (its default class)" if value == "default" else f"with --explain-class {_short(value)}"
    if key == "formats" and isinstance(value, list):
        shown = " ".join(f"--format {terminal_field(v, 20)}" for v in value)
        return f"with {shown}" if value else "without a label map"
    if key == "postprocess" and isinstance(value, list):
        return "with post-processing " + (" + ".join(terminal_field(v, 30) for v in value) if value else "none")
    if key == "series":
        return "with every series" if value is None else f"with --series {_short(value)}"
    if key == "overlap" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"with overlap {value:g}"
    return f"with {key} {_short(value)}"


def _changed_options(before: dict[str, Any], requested: dict[str, Any]) -> str | None:
    """``made with X, now with Y; ...`` for each option that differs, in command-line words; None when none
    does."""
    changed = [f"made {_option_words(key, before.get(key))}, now {_option_words(key, value)}"
               for key, value in requested.items() if key not in ("bundle", "version") and before.get(key) != value]
    return "; ".join(changed) if changed else None


def resume_problem(sidecar_path: Path, weights_sha256: str, requested: dict[str, Any]) -> str | None:
    """Why the outputs a sidecar describes cannot stand for this run (None when this version, the same bundle and the
    same options made them, and the sidecar holds sound values for what a skipped case gives the summary; see
    :func:`summary_record_problem`). A sidecar that is corrupt, truncated, of another shape or from another version
    is never trusted."""
    record = _read_sidecar(sidecar_path)
    if isinstance(record, str):
        return record
    bundle = record.get("bundle")
    made_by = bundle.get("weights_sha256") if isinstance(bundle, dict) else None
    if not isinstance(made_by, str) or made_by != weights_sha256:
        return (f"made by another bundle (weights sha256 {terminal_field(str(made_by)[:12])}..., this one "
                f"{weights_sha256[:12]}...)")
    inference = record.get("inference")
    before = inference.get("requested") if isinstance(inference, dict) else None
    if not isinstance(before, dict):
        return "made by a version that did not record its options"
    if "version" not in before:
        return f"made by an earlier MedAnalysis that did not record its version (this is {requested['version']})"
    if before["version"] != requested["version"]:
        return f"made by MedAnalysis {_short(before['version'])} (this is {requested['version']})"
    if before.get("bundle") != requested["bundle"]:
        return "made by a bundle with the same weights but other settings in bundle.json (plan, labels or defaults)"
    return _changed_options(before, requested) or summary_record_problem(record, sidecar_path, requested)


def summary_record_problem(record: dict[str, Any], sidecar_path: Path, requested: dict[str, Any]) -> str | None:
    """Why a finished case's sidecar cannot give what a skipped case contributes to this run: its task, its
    uncertainty record (with ``uncertainty``), its explanation record (with ``explain``) and the names of the
    outputs these options make (label maps, maps, tables); None when all are sound. A hand-edited or damaged value
    would otherwise drop the case from the summary (``uncertainty``, ``review_first``) without a word."""
    name = terminal_field(sidecar_path.name, 80)
    task = record.get("task")
    if task not in _CASE_MEASURE:
        return f"its sidecar {name} holds task {_short(task)}, expected 'segmentation' or 'classification'"
    if requested.get("uncertainty"):
        problem = _uncertainty_problem(record.get("uncertainty"), _CASE_MEASURE[task])
        if problem:
            return f"its sidecar {name} {problem}"
    if requested.get("explain") is not None:
        problem = _explanation_problem(record.get("explanation"), requested["explain"])
        if problem:
            return f"its sidecar {name} {problem}"
    return _listed_outputs_problem(record, sidecar_path, requested)


def _uncertainty_problem(uncertainty: Any, key: str) -> str | None:
    if not isinstance(uncertainty, dict):
        return f"holds uncertainty {_short(uncertainty)}, expected a record with {key} in [0, 1]"
    if key not in uncertainty:
        return f"has no uncertainty.{key}, expected a number in [0, 1]"
    value = uncertainty[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        return f"holds uncertainty.{key} {_short(value)}, expected a number in [0, 1]"
    return None


def _explanation_problem(explanation: Any, wanted: str) -> str | None:
    if not isinstance(explanation, dict):
        return f"holds explanation {_short(explanation)}, expected a record with target_value and target_name"
    value, target = explanation.get("target_value"), explanation.get("target_name")
    if not isinstance(value, int) or isinstance(value, bool) or not isinstance(target, str):
        return (f"holds explanation target_value {_short(value)} and target_name {_short(target)}, expected an "
                "integer and a class name")
    if wanted != "default" and target != wanted:
        return f"holds explanation.target_name {_short(target)}, expected {_short(wanted)} (--explain-class)"
    return None


def _listed_outputs_problem(record: dict[str, Any], sidecar_path: Path, requested: dict[str, Any]) -> str | None:
    """The outputs a sidecar lists against those these options make: every name one of this case's (see
    :func:`~MedAnalysisLib.inference.writers.is_case_output_name`), and the tables, the label maps (but those its
    ``not_written`` explains) and the maps these options ask for each listed under their own name."""
    case_id = sidecar_path.name[: -len(SIDECAR_SUFFIX)]
    name = terminal_field(sidecar_path.name, 80)
    outputs = record.get("outputs")
    if not isinstance(outputs, dict):
        return f"its sidecar {name} holds outputs {_short(outputs)}, expected a record of file names"
    for key, listed in outputs.items():
        if not isinstance(listed, str) or not is_case_output_name(case_id, listed):
            return (f"its sidecar {name} lists {_short(key)}: {_short(listed)}, expected a file name of case "
                    f"{terminal_field(case_id, 80)}")
    table_csv, table_json = table_file_names(case_id, "table")
    expected = {"table_csv": table_csv, "table_json": table_json}
    skipped = record.get("not_written") if isinstance(record.get("not_written"), dict) else {}
    for fmt in requested.get("formats") or ():
        if f"label_{fmt}" not in skipped and fmt in LABEL_SUFFIXES:
            expected[f"label_{fmt}"] = f"{case_id}{LABEL_SUFFIXES[fmt]}"
    if requested.get("uncertainty") and record.get("task") == "segmentation":
        expected["uncertainty_entropy"] = uncertainty_file_name(case_id, "entropy")
    if requested.get("explain") is not None:
        expected["explanation"] = explanation_file_name(case_id)
    for key, wanted in expected.items():
        if outputs.get(key) != wanted:
            return f"its sidecar {name} lists {key} {_short(outputs.get(key))}, expected {_short(wanted)}"
    return None


def outputs_present(sidecar_path: Path) -> bool:
    """True when every output file the sidecar lists exists in its folder (a plain file name each); a case whose
    listed outputs are gone is done again."""
    record = _read_sidecar(sidecar_path)
    outputs = record.get("outputs") if isinstance(record, dict) else None
    if not isinstance(outputs, dict):
        return False
    names = list(outputs.values())
    return all(isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..")
               and (sidecar_path.parent / n).is_file() for n in names)


def bundle_modalities(config: Any) -> frozenset[str]:
    """The intensity families a bundle states for its input: its plan's modality (what its intensity statistics
    were measured on) and its input channels' (empty when neither says). A bundle made by ``train`` states one."""
    plan = getattr(config, "plan", None)
    stated = [getattr(plan, "modality", None)]
    channels = (getattr(config, "input", None) or {}).get("channels") or []
    stated += [channel.get("modality") for channel in channels if isinstance(channel, dict)]
    return frozenset(f for f in map(modality_family, stated) if f is not None)


def _mismatch_message(expected: frozenset[str], found: dict[str, str]) -> str:
    wanted = " or ".join(sorted(expected))
    listed = ", ".join(f"{case} ({family})" for case, family in list(found.items())[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return (f"expected {wanted} input for this bundle (its intensity plan was measured on {wanted} images), got "
            f"{len(found)} case(s) of another modality: {listed}{more}; its results on them would be silently "
            "wrong. Pass --allow-modality-mismatch to run them anyway")


def _check_modalities(config: Any, cases: Sequence[CaseInput], options: BatchOptions, summary: BatchSummary,
                      log: Any) -> None:
    """Refuse (or, with ``allow_modality_mismatch``, warn about and record) cases whose stated modality is not the
    bundle's; a case or a bundle of unknown modality is never judged."""
    expected = bundle_modalities(config)
    found = {c.case_id: c.modality for c in cases if expected and c.modality and c.modality not in expected}
    if not found:
        return
    if not options.allow_modality_mismatch:
        raise InputError(_mismatch_message(expected, found))  # type: ignore[arg-type]
    for case_id, family in found.items():
        _record_mismatch(summary, log, case_id, expected, family)  # type: ignore[arg-type]


def _record_mismatch(summary: BatchSummary, log: Any, case_id: str, expected: frozenset[str], family: str) -> None:
    wanted = " or ".join(sorted(expected))
    summary.modality_mismatch.append({"case_id": case_id, "bundle_modality": wanted, "input_modality": family})
    log(f"{case_id}: modality mismatch: the bundle expects {wanted} images, this case is {family}; its results "
        "may be wrong (run on purpose with --allow-modality-mismatch)", "warning")


def _loaded_modality(config: Any, case: CaseInput, volumes: Sequence[Any], options: BatchOptions,
                     summary: BatchSummary, log: Any) -> None:
    """The check of :func:`_check_modalities` for a case whose modality only its loaded headers tell (a DICOM file,
    a manifest row naming a DICOM folder): a mismatch fails that case, or is recorded when allowed."""
    expected = bundle_modalities(config)
    family = modality_family(volumes[0].metadata.get("Modality"))
    if case.modality is not None or not expected or family is None or family in expected:
        return
    if not options.allow_modality_mismatch:
        raise InputError(_mismatch_message(expected, {case.case_id: family}))
    _record_mismatch(summary, log, case.case_id, expected, family)


#: Longest failure message kept in the summary (a third-party error can quote a whole file).
MAX_FAILURE_MESSAGE = 500


def failure_record(case_id: str, error: BaseException) -> dict[str, str]:
    """A failed case for the summary: the error's type and a one-line message, through the PHI filter. Errors that
    MedAnalysis raises say what was expected and what was found; others (numpy, SimpleITK, Keras, the OS) keep their
    first line only."""
    text = str(error).strip() or "no message"
    if not isinstance(error, MedAnalysisError):
        text = text.splitlines()[0]
    if len(text) > MAX_FAILURE_MESSAGE:
        text = text[:MAX_FAILURE_MESSAGE] + "..."
    return {"case_id": case_id, "error_type": type(error).__name__, "message": redact(text)}


def _resume_state(cases: Sequence[CaseInput], out: Path, weights_sha256: str, requested: dict[str, Any],
                  overwrite: bool) -> tuple[set[str], dict[str, str]]:
    """The cases of this shard that are finished (skipped) and those whose sidecar another bundle, other options,
    another version or a corrupt file made (``{case: why}``); with ``overwrite`` nothing is finished."""
    if overwrite:
        return set(), {}
    finished: set[str] = set()
    problems: dict[str, str] = {}
    for case in cases:
        path = out / f"{case.case_id}{SIDECAR_SUFFIX}"
        if not path.is_file():
            continue
        problem = resume_problem(path, weights_sha256, requested)
        if problem is not None:
            problems[case.case_id] = problem
        elif outputs_present(path):
            finished.add(case.case_id)
    return finished, problems


def _refuse_stale(out: Path, problems: dict[str, str]) -> None:
    if not problems:
        return
    listed = "; ".join(f"{case}: {reason}" for case, reason in list(problems.items())[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise InputError(f"expected the finished cases in {out} to come from this bundle with these options, with "
                     f"sound sidecars (a re-run skips those), got {len(problems)} made otherwise: {listed}{more}; "
                     "pass --overwrite to recompute them, or choose another --out")


#: The longest file name, in bytes, of the common file systems (ext4, XFS, btrfs, APFS).
NAME_MAX = 255
#: Keys every batch summary this version writes holds; a file under the summary's name without them is not ours.
_SUMMARY_KEYS = frozenset({"shard", "total_cases", "done", "skipped", "failed", "out_dir"})


def summary_name(shard: tuple[int, int]) -> str:
    """The batch summary's file name for ``shard``."""
    return "batch_summary.json" if shard == (1, 1) else f"batch_summary_shard-{shard[0]}-of-{shard[1]}.json"


def pending_name(case_id: str) -> str:
    """The hidden record of a case whose outputs are being written: it lists each output after it was written, with
    what identifies that file (:func:`note_written`), and is removed once the sidecar is written, so that a re-run
    after a stop knows those files, and only those, for its own."""
    return f".{case_id}.pending.json"


#: What a pending record keeps of each file it lists: a file under that name that differs in one of them is not ours.
_STAMP_KEYS = ("size", "mtime_ns", "inode")


def _file_stamp(path: Path) -> dict[str, int] | None:
    """Size, mtime_ns and inode of the regular file at ``path`` (not followed if a link); None for anything else."""
    import stat

    try:
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino}


def _pending_entries(out: Path, case_id: str) -> dict[str, Any] | None:
    """The files a case's pending record claims (``{name: stamp}``, unchecked), ``{}`` for a record of the earlier
    layout (names only: never trusted), None when no pending record of ours is there."""
    path = out / pending_name(case_id)
    if path.is_symlink() or not path.is_file():
        return None
    record = _read_sidecar(path)
    if not isinstance(record, dict) or record.get("case_id") != case_id:
        return None
    written = record.get("written")
    if written is None and isinstance(record.get("outputs"), list):
        return {}
    return dict(written) if isinstance(written, dict) else None


def _verified_pending(out: Path, case_id: str) -> dict[str, dict[str, int]]:
    """The files of a case's pending record that are still exactly what MedAnalysis wrote: an output name of that
    case, a regular file directly in ``out`` whose size, mtime_ns and inode match the record."""
    verified: dict[str, dict[str, int]] = {}
    for name, stamp in (_pending_entries(out, case_id) or {}).items():
        if not (isinstance(name, str) and isinstance(stamp, dict) and is_case_output_name(case_id, name)):
            continue
        current = _file_stamp(out / name)
        if current is not None and all(type(stamp.get(k)) is int and stamp[k] == current[k] for k in _STAMP_KEYS):
            verified[name] = current
    return verified


def _write_pending(out: Path, case_id: str, entries: dict[str, dict[str, int]]) -> None:
    """Replace a case's pending record, atomically, by one listing ``entries``; remove it when they are empty."""
    path = out / pending_name(case_id)
    if entries:
        write_text_atomic(path, json.dumps({"case_id": case_id, "written": entries}, sort_keys=True) + "\n")
    elif path.is_file() and not path.is_symlink():
        path.unlink(missing_ok=True)


def note_written(out: Path, case_id: str, name: str) -> None:
    """Record that MedAnalysis has just written the output ``name`` of a case: its pending record gets the file's
    size, mtime_ns and inode (the record is replaced atomically, so a stop leaves the old or the new one). Called
    only once the file is in place, so the record never claims a file before it is ours."""
    stamp = _file_stamp(out / name)
    if stamp is None:
        return
    entries = _verified_pending(out, case_id)
    entries[name] = stamp
    _write_pending(out, case_id, entries)


def case_output_names(config: Any, case_id: str, options: BatchOptions) -> list[str]:
    """Every file name a case may get in --out, named as :func:`~MedAnalysisLib.inference.writers.write_prediction`
    names them: a label map per format, a probability map per foreground label and the uncertainty maps
    (segmentation), the explanation heatmap (classification), the table and the per-slice table (CSV and JSON), and
    the sidecar."""
    names: list[str] = []
    if config.task == "segmentation":
        names += [f"{case_id}{LABEL_SUFFIXES[fmt]}" for fmt in options.formats if fmt in LABEL_SUFFIXES]
        if options.write_probabilities:
            names += [probability_file_name(case_id, label) for label in config.labels if label.value != 0]
        if options.uncertainty:
            measures = ("entropy", "disagreement") if multi_pass(config, options) else ("entropy",)
            names += [uncertainty_file_name(case_id, measure) for measure in measures]
    elif options.explain:
        names.append(explanation_file_name(case_id))
    names += table_file_names(case_id, "table")
    if config.task != "segmentation":
        names += table_file_names(case_id, "slices")
    return [*names, f"{case_id}{SIDECAR_SUFFIX}"]


def _name_limit(out: Path) -> int:
    """The longest file name the file system of ``out`` (or of its nearest existing parent) allows."""
    import os

    for folder in (out, *out.parents):
        if folder.is_dir():
            try:
                return min(NAME_MAX, int(os.pathconf(folder, "PC_NAME_MAX")))
            except (OSError, ValueError, AttributeError):
                return NAME_MAX
    return NAME_MAX


def _own_names(out: Path, case_id: str) -> set[str]:
    """The names MedAnalysis wrote for a case: those its sidecar lists, the files its pending record lists that
    still match what was recorded (:func:`_verified_pending`), and the pending record itself."""
    own: set[str] = set()
    path = out / f"{case_id}{SIDECAR_SUFFIX}"
    record = _read_sidecar(path) if path.is_file() and not path.is_symlink() else None
    listed = record.get("outputs") if isinstance(record, dict) else None
    own |= {name for name in (listed.values() if isinstance(listed, dict) else []) if isinstance(name, str)}
    if _pending_entries(out, case_id) is not None:
        own |= {pending_name(case_id), *_verified_pending(out, case_id)}
    return own


def _judged_by_resume(sidecar: Path) -> bool:
    """True when a case has a sidecar file: the resume judges that case (it skips it when this bundle and these
    options made it, and refuses it with the reason otherwise, unless ``overwrite``; see :func:`resume_problem`)."""
    return sidecar.is_file() and not sidecar.is_symlink()


def _is_own_summary(path: Path) -> bool:
    record = _read_sidecar(path)
    return isinstance(record, dict) and _SUMMARY_KEYS <= set(record)


def check_output_names(out: Path, all_cases: Sequence[CaseInput], cases: Sequence[CaseInput], config: Any,
                       options: BatchOptions) -> dict[str, list[str]]:
    """Refuse, before any work, outputs that cannot be written or would replace what MedAnalysis did not write.

    Every name of every case (:func:`case_output_names`, the pending record, the summary) must fit the file system's
    limit and belong to one case only. In ``out``, a link, a folder or a special file under one of these names is
    refused always; a file is refused unless ``overwrite``, or a sidecar of its case lists it (the sidecar itself is
    judged by the resume) or its pending record lists it as it still is (:func:`_verified_pending`), or it is an earlier batch summary; an input of the run is refused even
    with ``overwrite``.

    Returns:
        ``{case_id: names}`` for the cases of this shard.

    Raises:
        OutputError: The first problem, naming what was expected and what was found.
    """
    names = {case.case_id: case_output_names(config, case.case_id, options) for case in all_cases}
    limit = _name_limit(out)
    owner: dict[str, str] = {}
    for case_id, listed in names.items():
        for name in (*listed, pending_name(case_id)):
            size = len(name.encode("utf-8", "surrogateescape"))
            if size > limit:
                raise OutputError(f"expected output names of at most {limit} bytes (the file system's limit), got "
                                  f"{size} bytes for {terminal_field(name[:60])}... of case "
                                  f"{terminal_field(case_id[:60])}; rename the input (or shorten its label names)")
            if owner.setdefault(name, case_id) != case_id:
                raise OutputError(f"expected every output name to belong to one case, got {terminal_field(name)} for "
                                  f"both {terminal_field(owner[name])} and {terminal_field(case_id)}; rename one input")
    if out.is_dir():
        _check_existing(out, {c.case_id: names[c.case_id] for c in cases}, cases, options)
    return {c.case_id: names[c.case_id] for c in cases}


def _check_existing(out: Path, names: dict[str, list[str]], cases: Sequence[CaseInput], options: BatchOptions) -> None:
    """The part of :func:`check_output_names` that looks at what is already in ``out``."""
    inputs = {Path(image.rsplit("#", 1)[0] if not Path(image).exists() else image).resolve()
              for case in cases for image in case.images}
    foreign: list[str] = []
    blocked: list[str] = []
    for case_id, listed in names.items():
        own = _own_names(out, case_id)
        judged = _judged_by_resume(out / f"{case_id}{SIDECAR_SUFFIX}")
        for name in (*listed, pending_name(case_id)):
            path = out / name
            if path.is_symlink() or (path.exists() and not path.is_file()):
                blocked.append(name)
            elif path.exists() and path.resolve() in inputs:
                raise OutputError(f"expected outputs apart from the inputs, got {terminal_field(name)} in "
                                  f"{terminal_field(out)}, which is an input of this run; inputs are never replaced")
            elif path.exists() and name not in own and not judged and name != f"{case_id}{SIDECAR_SUFFIX}":
                foreign.append(name)
    summary = out / summary_name(options.shard)
    if summary.is_symlink() or (summary.exists() and not summary.is_file()):
        blocked.append(summary.name)
    elif summary.exists() and not _is_own_summary(summary):
        foreign.append(summary.name)
    if blocked:
        raise OutputError(f"expected files (or nothing) under the names predict writes, got a link, folder or special "
                          f"file named {_few(blocked)} in {terminal_field(out)}; it is never replaced, even with "
                          "--overwrite")
    if foreign and not options.overwrite:
        raise OutputError(f"expected --out without files MedAnalysis did not write under the names this run writes, "
                          f"got {len(foreign)}: {_few(foreign)} in {terminal_field(out)} (no sidecar of theirs lists "
                          "them); pass --overwrite to replace them, or choose another --out")


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(terminal_field(name, 80) for name in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _refuse_unwritable(formats: Sequence[str], to_run: Sequence[CaseInput], unavailable: dict[str, dict[str, str]]) -> None:
    if formats and to_run and all(set(formats) <= set(unavailable[c.case_id]) for c in to_run):
        first = to_run[0].case_id
        raise InputError(f"expected input that can give --format {' / '.join(formats)}, got {len(to_run)} case(s) "
                         f"that cannot (e.g. {first}: {'; '.join(sorted(set(unavailable[first].values())))}); "
                         "nothing was run")


def run_batch(
    bundle: Any,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    options: BatchOptions | None = None,
    *,
    reporter: Any = None,
    stop_flag: Any = None,
) -> BatchSummary:
    """Predict every case of this shard and write the outputs (see the module docstring).

    Args:
        bundle: Bundle path or :class:`~MedAnalysisLib.bundles.LoadedBundle` (loaded once for all cases).
        inputs: Files, folders, dataset descriptions.
        out_dir: Output folder.
        options: :class:`BatchOptions`.
        reporter: Progress/log sink (:class:`~MedAnalysisLib.progress.Reporter`).
        stop_flag: Checked between cases and model calls; a stop raises :class:`CancelledError` after the current
            model call (completed cases stay complete).

    Returns:
        A :class:`BatchSummary`, also written as ``batch_summary[_shard-i-of-n].json``. Any exception a case raises
        (a bad file, a geometry the resampler cannot take, a model or memory error) is that case's failure.

    Raises:
        InputError: Before any case runs: missing inputs, formats the bundle or no case can give, cases whose
            modality is not the bundle's (without ``allow_modality_mismatch``), outputs that another bundle, other
            options or another version made (without ``overwrite``).
        CancelledError: The stop flag was set (completed cases stay complete; no summary is written).
    """
    from MedAnalysisLib.bundles import LoadedBundle, load_bundle, read_bundle_config

    options = options or BatchOptions()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"expected --out to name a folder, got the file {_short(out.name, 80)} (a file is never "
                         "replaced by a folder)")
    # What bundle.json, the inputs and their headers can tell is checked before the model (and TensorFlow) loads.
    config = bundle.config if isinstance(bundle, LoadedBundle) else read_bundle_config(Path(bundle))
    check_formats(options.formats, config.task, config.labels)
    check_batch_options(config, options)
    all_cases = discover_cases(inputs, series=options.series)
    cases = select_shard(all_cases, options.shard)
    requested = requested_options(config, options)
    with_sidecar = {c.case_id for c in cases if (out / f"{c.case_id}{SIDECAR_SUFFIX}").is_file()}
    formats = options.formats if config.task == "segmentation" else ()
    scans: dict[str, list[Any]] = {}
    to_run = [c for c in cases if options.overwrite or c.case_id not in with_sidecar]
    check_output_names(out, all_cases, cases, config, options)
    unavailable = {case.case_id: header_problems(case, formats, scans) for case in to_run}
    _refuse_unwritable(formats, to_run, unavailable)
    summary = BatchSummary(options.shard, len(all_cases), out_dir=str(out))
    log = reporter.log if reporter is not None else (lambda message, level="info": None)
    _check_modalities(config, to_run, options, summary, log)
    log(f"{len(cases)} of {len(all_cases)} case(s) in shard {options.shard[0]}/{options.shard[1]}; "
        f"bundle {terminal_field(config.name)}")
    loaded = bundle if isinstance(bundle, LoadedBundle) else load_bundle(Path(bundle))
    finished, stale = _resume_state(cases, out, loaded.weights_sha256, requested, options.overwrite)
    _refuse_stale(out, stale)
    redo = [c for c in cases if c.case_id not in finished and c not in to_run]  # a sidecar's outputs are gone
    _check_modalities(config, redo, options, summary, log)
    for case in cases:  # every case's format needs, from headers, before the first model call
        if case.case_id not in finished:
            if case.case_id not in unavailable:  # a sidecar whose listed outputs are gone: the case is done again
                unavailable[case.case_id] = header_problems(case, formats, scans)
            for fmt, reason in unavailable[case.case_id].items():
                log(f"{case.case_id}: --format {fmt} cannot be written: {reason}; its other outputs will be", "warning")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"expected to create the output folder {_short(out.name, 80)}, got "
                          f"{type(error).__name__}: "
                          f"{error.strerror or 'no details'}") from None
    for number, case in enumerate(cases):
        if stop_flag is not None and stop_flag.is_set():
            raise CancelledError(f"stopped after {number} of {len(cases)} case(s); completed outputs are kept")
        if reporter is not None:
            reporter.progress("cases", number, len(cases), case.case_id)
        if case.case_id in finished:
            summary.skipped.append(case.case_id)
            _record_uncertainty(summary, case.case_id, _read_sidecar(out / f"{case.case_id}{SIDECAR_SUFFIX}"),
                                options)
            log(f"{case.case_id}: made by this bundle with these options, skipped")
            continue
        earlier = _own_names(out, case.case_id)
        claimed = set(_verified_pending(out, case.case_id))
        _settle_pending(out, case.case_id)  # a record's claims that no longer hold are dropped before any write
        try:
            seconds, written = _run_case(loaded, case, out, options, requested, unavailable[case.case_id], summary,
                                         log, stop_flag, functools.partial(note_written, out, case.case_id))
        except (CancelledError, KeyboardInterrupt):
            _settle_pending(out, case.case_id)
            raise
        except Exception as error:  # noqa: BLE001 - whatever one case raises is that case's failure
            _settle_pending(out, case.case_id)
            record = failure_record(case.case_id, error)
            summary.failed.append(record)
            log(f"{case.case_id}: failed ({record['error_type']}: {record['message']}); continuing", "warning")
            continue
        _finish_pending(out, case.case_id, earlier - (claimed - set(_verified_pending(out, case.case_id))), written,
                        all_cases, options.overwrite, log)  # a stopped run's file changed meanwhile is not ours
        summary.done.append(case.case_id)
        log(f"{case.case_id}: done in {seconds:.1f} s")
    if reporter is not None:
        reporter.progress("cases", len(cases), len(cases), "done")
    summary.review_first = review_order(summary.uncertainty)
    write_text_atomic(out / summary_name(options.shard), json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


#: The key of a case's entropy in its sidecar's ``uncertainty`` record and in the summary, by task.
_CASE_MEASURE = {"segmentation": "foreground_entropy", "classification": "entropy"}


def _record_uncertainty(summary: BatchSummary, case_id: str, record: Any, options: BatchOptions) -> None:
    """Add a case's entropy (from its sidecar record, or the prediction's details) and its flag to the summary."""
    if not options.uncertainty or not isinstance(record, dict):
        return
    uncertainty = record.get("uncertainty")
    key = _CASE_MEASURE.get(str(record.get("task")))
    value = uncertainty.get(key) if isinstance(uncertainty, dict) and key else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        return
    summary.uncertainty[case_id] = {key: float(value), "high": bool(float(value) > options.uncertainty_threshold)}


def review_order(uncertainty: dict[str, dict[str, Any]]) -> list[str]:
    """The cases flagged ``high``, highest entropy first (ties by name)."""
    flagged = [(-next(v for k, v in entry.items() if k != "high"), case) for case, entry in uncertainty.items()
               if entry.get("high")]
    return [case for _, case in sorted(flagged)]


def _settle_pending(out: Path, case_id: str) -> None:
    """Before a case runs, and after it failed or stopped: keep in its pending record only the files that are still
    what MedAnalysis wrote, so a re-run replaces those as its own and nothing else; remove the record when none is
    left (a case that failed before its first output leaves no claim on a file that was there before)."""
    if _pending_entries(out, case_id) is not None:
        _write_pending(out, case_id, _verified_pending(out, case_id))


def _finish_pending(out: Path, case_id: str, earlier: set[str], written: dict[str, str],
                    all_cases: Sequence[CaseInput], overwrite: bool, log: Any) -> None:
    """After a case's outputs and sidecar are in place: with ``overwrite`` remove what earlier runs left that this
    run does not make; then drop the pending record, or, when files a stopped run wrote are kept (without
    ``overwrite`` nothing is removed), keep them recorded as ours, with a warning."""
    if overwrite:
        _remove_earlier_outputs(out, case_id, earlier, written, all_cases, log)
    kept = {name: stamp for name, stamp in _verified_pending(out, case_id).items() if name not in written.values()}
    _write_pending(out, case_id, kept)
    if kept:
        log(f"{case_id}: kept {len(kept)} file(s) an earlier stopped run wrote that this run does not make: "
            f"{_few(sorted(kept))}; --overwrite removes them", "warning")


def _run_case(loaded: Any, case: CaseInput, out: Path, options: BatchOptions, requested: dict[str, Any],
              unavailable: dict[str, str], summary: BatchSummary, log: Any,
              stop_flag: Any, on_written: Any = None) -> tuple[float, dict[str, str]]:
    """Load, predict and write one case; returns its seconds and what was written (``{kind: file name}``);
    ``on_written`` hears of each output as it lands. Raises whatever goes wrong (the caller records it)."""
    from MedAnalysisLib.inference.predict import predict

    volumes = load_case(case)
    _loaded_modality(loaded.config, case, volumes, options, summary, log)
    formats = options.formats if loaded.config.task == "segmentation" else ()
    problems = {**unavailable, **format_problems(formats, volumes[0])}
    for fmt, reason in problems.items():
        if fmt not in unavailable:
            log(f"{case.case_id}: --format {fmt} cannot be written: {reason}; its other outputs will be", "warning")
    prediction = predict(
        loaded, volumes, overlap=options.overlap, tta=options.tta, postprocess=options.postprocess,
        batch_size=options.batch_size, precision=options.precision, memory_budget_mb=options.memory_budget_mb,
        return_probabilities=options.write_probabilities, stop_flag=stop_flag, uncertainty=options.uncertainty,
        explain=options.explain, explain_target=options.explain_class,
    )
    prediction.details["requested"] = requested  # the sidecar records it; a re-run compares it
    written = write_prediction(prediction, out, case.case_id, input_volume=volumes[0], labels=loaded.labels,
                     formats=options.formats if prediction.label is not None else (),
                     write_probability_map=options.write_probabilities, unavailable=problems,
                     on_written=on_written)
    summary.not_written.extend({"case_id": case.case_id, "output": f"label_{fmt}", "reason": reason}
                               for fmt, reason in problems.items())
    _record_uncertainty(summary, case.case_id, {"task": prediction.task, **prediction.details}, options)
    return float(prediction.timings.get("total", 0.0)), written


def _remove_earlier_outputs(out: Path, case_id: str, earlier: set[str], written: dict[str, str],
                            all_cases: Sequence[CaseInput], log: Any) -> None:
    """With ``--overwrite``, after a case's new outputs are in place, remove what its earlier sidecar or pending record
    listed that this run did not write again (a map of another option, a label map of another --format), so that
    nobody takes them for current. Only names MedAnalysis writes for this case
    (:func:`~MedAnalysisLib.inference.writers.is_case_output_name`), never another case's output, a link, or anything
    but a regular file directly in ``out``, never an input of the run. ``earlier`` holds only pending-record files
    that matched what was recorded (:func:`_own_names`). Every removal is a warning, shown in every progress mode."""
    others = [c.case_id for c in all_cases if c.case_id != case_id]
    inputs = {Path(image.rsplit("#", 1)[0] if not Path(image).exists() else image).resolve()
              for case in all_cases for image in case.images}
    removed = []
    for name in sorted(earlier - set(written.values())):
        path = out / name
        if (not is_case_output_name(case_id, name) or any(is_case_output_name(other, name) for other in others)
                or path.is_symlink() or not path.is_file() or path.resolve() in inputs):
            continue
        try:
            path.unlink()
        except OSError as error:
            log(f"{case_id}: could not remove the earlier output {terminal_field(name, 80)} "
                f"({error.strerror or type(error).__name__}); it is not part of this run", "warning")
            continue
        removed.append(name)
    if removed:
        log(f"{case_id}: removed {len(removed)} earlier output(s) this run does not make: "
            f"{', '.join(terminal_field(n, 80) for n in removed)}", "warning")
