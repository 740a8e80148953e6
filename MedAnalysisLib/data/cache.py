"""A preprocessed cache: every case prepared once to disk, read back lazily by memory-mapping.

Layout of a cache folder (``medanalysis preprocess DATA --plan plan.json --out CACHE``, or the one ``train`` keeps
beside its output)::

    CACHE/cache.json                  the manifest: format, the plan, its key, the slice shape, the dataset's
                                      description and its cases in order
    CACHE/cases/<key>/image.npy       float32 (k, j, i, C), numpy's .npy format (memory-mappable, never pickled)
    CACHE/cases/<key>/label.npy       the label map (k, j, i) in the smallest integer type, when the case has one
    CACHE/cases/<key>/case.json       the case's record: case id, target, group, the inverse record (crop box,
                                      original grid; what inference needs to invert), the plan key and source
                                      identity it was prepared from, shape, dtype, size and sha256 of each array,
                                      foreground locations per class and per-slice foreground flags

``<key>`` is a hash of the case id, so folder names never carry a case's name. A case is current when its record
names the manifest's plan key (:func:`plan_key`: a hash of the plan's fields that change prepared arrays), the
slice shape, and the identity of its source files (:func:`source_identity`: a hash of each file's path, size and
modification time in nanoseconds, of every file below a DICOM folder, and of the case's target and group; no path is
stored in clear). A changed plan or source file prepares that case again and nothing else; a file rewritten with the
same size and the same modification time is not noticed (copy tools that keep times keep the identity too).

Each case is written to a temporary folder and renamed into place (:func:`MedAnalysisLib.io.atomic.atomic_directory`),
so a stopped or killed preprocess leaves whole cases only and the next run continues where it stopped. One writer at a
time per cache folder. Workers are processes (spawn-safe: the preparation function is passed by reference).

A cache is untrusted input when read: folder names must be case keys, files regular files (no links), every array's
.npy header must agree with its record (shape, dtype, C order) and its size with the header, foreground locations
must lie inside the volume; anything else is refused with an InputError naming what was expected and what was found.
Arrays are opened with ``np.load(..., mmap_mode="r", allow_pickle=False)`` each time a window is read and the mapping
is dropped right after the copy, so a long run does not keep every page it ever touched resident.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib.data.samplers import MAX_LOCATIONS, class_location_indices, slice_foreground
from MedAnalysisLib.errors import CancelledError, InputError, MemoryBudgetError, OutputError
from MedAnalysisLib.io.atomic import absolute_target, atomic_directory, write_text_atomic
from MedAnalysisLib.progress import Reporter, StopFlag
from MedAnalysisLib.sanitize import terminal_field

CACHE_FORMAT = "medanalysis-preprocessed-cache"
CACHE_VERSION = 1
MANIFEST = "cache.json"
CASES = "cases"
RECORD = "case.json"
IMAGE = "image.npy"
LABEL = "label.npy"
#: Plan fields that change how training batches are drawn but never a prepared array: a change there keeps the cache.
TRAINING_ONLY_FIELDS = ("batch_size", "slice_batch_size", "sequence_length", "recommended_model", "pooling_levels",
                        "foreground_fraction", "memory_budget_mb", "median_shape", "notes")
#: Seed of the foreground-location subsample stored per case (fixed, so the same data gives the same cache).
LOCATION_SEED = 20_211
#: Largest manifest and case record read, in bytes (a case record holds up to MAX_LOCATIONS indices per class).
MAX_MANIFEST_BYTES, MAX_RECORD_BYTES = 64 * 2**20, 32 * 2**20
IMAGE_DTYPE = np.dtype("<f4")
LABEL_DTYPES = tuple(np.dtype(d) for d in ("|u1", "<i2", "<i4", "<i8"))
_KEY = re.compile(r"[0-9a-f]{24}")
#: Model families that train on axial slices resized to the plan's slice_shape (a cache holds those slices).
SLICE_FAMILIES = ("unet2d", "slice_cnn", "cnn_rnn")
#: Fewer cases to prepare than this are prepared in the calling process: each spawned worker first imports numpy,
#: SimpleITK and the library (seconds), which a handful of cases does not repay.
MIN_PROCESS_JOBS = 16

__all__ = ["BuildSummary", "CachedArray", "CachedCase", "PreprocessedCache", "build_cache", "case_key",
           "default_cache_dir", "is_cache", "open_cache", "plan_key", "source_identity"]


# ---------------------------------------------------------------------------------------------- keys


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def default_cache_dir(out: str | os.PathLike[str]) -> Path:
    """Where ``train`` keeps its preprocessed cache by default: ``<OUT without .zip>.cache`` beside OUT (as the
    resume checkpoint is ``OUT.checkpoint``)."""
    target = absolute_target(out)
    base = target.with_suffix("") if target.suffix.lower() == ".zip" else target
    return base.with_name(base.name + ".cache")


def plan_key(plan: dict[str, Any]) -> str:
    """A hash of the plan fields that change prepared arrays (canonical JSON of ``plan.to_dict()`` without
    :data:`TRAINING_ONLY_FIELDS`)."""
    return _digest({k: v for k, v in plan.items() if k not in TRAINING_ONLY_FIELDS})


def case_key(case_id: str) -> str:
    """The folder name of a case: a hash of its id (a name from a file never becomes a folder name here)."""
    return hashlib.sha256(str(case_id).encode()).hexdigest()[:24]


def _file_identity(path: Path) -> list[Any]:
    info = path.stat()
    return [str(path), info.st_size, info.st_mtime_ns]


def _path_identity(path: str) -> list[Any]:
    """A file's path, size and mtime_ns; for a folder (a DICOM series), those of every file below it, sorted."""
    given = Path(path)
    try:
        if given.is_dir():
            return [_file_identity(p) for p in sorted(given.rglob("*")) if p.is_file()]
        return _file_identity(given)
    except OSError as error:
        raise InputError(f"expected a readable source file, got {error.strerror or error} for a case's file") from None


def source_identity(case: Any) -> str:
    """A hash of what a case is prepared from: each image and label path's identity (:func:`_path_identity`), the
    DICOM series it picks, its target and group."""
    paths = [*case.images, *([case.label] if case.label else [])]
    return _digest([[_path_identity(p) for p in paths], case.series, case.target, case.group])


# ---------------------------------------------------------------------------------------------- reading


def _read_json(path: Path, limit: int, what: str) -> Any:
    """A JSON document from a regular file of at most ``limit`` bytes (links and special files are refused)."""
    _regular_file(path, what)
    if path.stat().st_size > limit:
        raise InputError(f"expected {what} of at most {limit} bytes, got {path.stat().st_size} bytes")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InputError(f"expected {what} holding JSON, got text that does not parse ({type(error).__name__})") \
            from None


def _regular_file(path: Path, what: str) -> os.stat_result:
    try:
        info = os.lstat(path)
    except OSError:
        raise InputError(f"expected {what} in the cache, got nothing there") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"expected {what} to be a regular file in the cache, got a link or a special file")
    return info


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """Shape, dtype, Fortran order and data offset of a .npy file, read without loading it."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in reader:
                raise ValueError(f"version {version}")
            shape, fortran, dtype = reader[version](handle)
            return tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), handle.tell()
    except (OSError, ValueError, SyntaxError, TypeError) as error:
        raise InputError(f"expected a numpy .npy array file, got a file whose header does not parse ({error})") \
            from None


class CachedArray:
    """A read-only array in a cache's .npy file, opened (memory-mapped) for each read and closed after the copy.

    Indexing returns a numpy copy of the indexed part only; ``np.asarray`` reads the whole array. ``shape``,
    ``dtype`` and ``ndim`` come from the checked record, and each read checks the file's header again.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _open(self) -> np.ndarray:
        _regular_file(self.path, "an array file")
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InputError(f"expected a readable cached array, got {type(error).__name__}") from None
        if array.shape != self.shape or array.dtype != self.dtype:
            raise InputError(f"expected a cached array of shape {self.shape} and type {self.dtype}, got "
                             f"{array.shape} and {array.dtype}: the cache changed after it was opened")
        return array

    def __getitem__(self, index: Any) -> np.ndarray:
        array = self._open()
        try:
            return np.array(array[index])
        finally:
            del array

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[...]
        return whole if dtype is None else whole.astype(dtype, copy=False)


@dataclass(frozen=True)
class CachedCase:
    """A prepared case read from a cache; samplers use it as a :class:`PreparedCase` (image, label, target,
    case_id) and take ``class_locations`` and ``slice_foreground`` from it instead of scanning the label map.

    Attributes:
        image: :class:`CachedArray` float32 ``(k, j, i, C)``.
        label: :class:`CachedArray` ``(k, j, i)``, or None.
        inverse: The inverse record (``Inverse.to_dict`` form).
        target, case_id: As in the dataset.
        class_locations: ``{class: positions}`` (:class:`FlatLocations`, a bounded seeded subsample), or None.
        slice_foreground: ``(k,)`` booleans, or None without a label.
    """

    image: CachedArray
    label: CachedArray | None
    inverse: dict[str, Any]
    target: float | int | None = None
    case_id: str = ""
    class_locations: dict[int, FlatLocations] | None = None
    slice_foreground: np.ndarray | None = None


@dataclass(frozen=True)
class CacheEntry:
    """One case as the manifest lists it."""

    case_id: str
    key: str
    target: float | int | None
    group: str | None
    has_label: bool


@dataclass
class PreprocessedCache:
    """An opened cache (:func:`open_cache`): the manifest's plan, slice shape, dataset description and cases."""

    root: Path
    plan: dict[str, Any]
    plan_key: str
    slice_shape: tuple[int, int] | None
    dataset: dict[str, Any]
    entries: list[CacheEntry]
    auto_plan: dict[str, Any] = field(default_factory=dict)

    def entry(self, case_id: str) -> CacheEntry:
        for entry in self.entries:
            if entry.case_id == case_id:
                return entry
        raise InputError("expected a case the cache lists, got one it does not hold")

    def case(self, case_id: str) -> CachedCase:
        """The case, its files checked against its record (see :func:`read_case_record`)."""
        return read_cached_case(self.root / CASES / self.entry(case_id).key, self.plan_key, self.slice_shape,
                                int(self.plan.get("n_channels", 1)))

    def signature(self, case_ids: Iterable[str]) -> list[Any]:
        """What identifies the prepared cases (for a run's data signature): case id, plan key and source identity."""
        out = []
        for case_id in case_ids:
            record = _read_json(self.root / CASES / self.entry(case_id).key / RECORD, MAX_RECORD_BYTES,
                                "a case record")
            out.append([case_id, record.get("plan_key"), record.get("source"), record.get("image", {}).get("sha256")])
        return out


def is_cache(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding a cache manifest (a regular file, not a link)."""
    manifest = Path(path) / MANIFEST
    try:
        return Path(path).is_dir() and stat.S_ISREG(os.lstat(manifest).st_mode)
    except OSError:
        return False


def _shape(value: Any, ndim: int, what: str) -> tuple[int, ...]:
    if not (isinstance(value, list) and len(value) == ndim and all(type(v) is int and v > 0 for v in value)):
        raise InputError(f"expected the {what} shape as {ndim} positive integers, got {str(value)[:80]}")
    return tuple(value)


def _check_array(folder: Path, name: str, record: Any, shape: tuple[int, ...], dtypes: Sequence[np.dtype],
                 what: str) -> CachedArray:
    """The array file ``name`` agrees with its record: shape, dtype, C order, size (header + data)."""
    if not isinstance(record, dict):
        raise InputError(f"expected a record of the {what} array, got {type(record).__name__}")
    info = _regular_file(folder / name, f"the {what} array file")
    header_shape, dtype, fortran, offset = _npy_header(folder / name)
    if dtype not in dtypes or str(record.get("dtype")) != dtype.str:
        raise InputError(f"expected the {what} array as {[d.str for d in dtypes]} matching its record "
                         f"{str(record.get('dtype'))[:20]}, got {dtype.str}")
    if header_shape != shape or fortran:
        raise InputError(f"expected the {what} array of shape {shape} in C order, got {header_shape}"
                         f"{' in Fortran order' if fortran else ''}")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if info.st_size != expected or record.get("bytes") != info.st_size:
        raise InputError(f"expected the {what} array file of {expected} bytes (its record: "
                         f"{str(record.get('bytes'))[:20]}), got {info.st_size}")
    return CachedArray(folder / name, shape, dtype)


def _locations(value: Any, shape: tuple[int, ...]) -> dict[int, FlatLocations]:
    """Foreground locations from a record: ``{"class": [flat indices]}`` inside the volume, at most MAX_LOCATIONS."""
    if not isinstance(value, dict):
        raise InputError(f"expected foreground locations as an object, got {type(value).__name__}")
    size = int(np.prod(shape))
    out: dict[int, np.ndarray] = {}
    for name, indices in value.items():
        if not (isinstance(name, str) and name.isdigit() and int(name) > 0):
            raise InputError(f"expected foreground classes as positive integers, got {str(name)[:20]!r}")
        if not (isinstance(indices, list) and 0 < len(indices) <= MAX_LOCATIONS
                and all(type(i) is int and 0 <= i < size for i in indices)):
            raise InputError(f"expected 1 to {MAX_LOCATIONS} voxel indices in [0, {size}) for class {name}, got "
                             "something else")
        out[int(name)] = FlatLocations(np.asarray(indices, np.int32 if size < 2**31 else np.int64), shape)
    return out


class FlatLocations:
    """Foreground voxel positions of one class as flat indices (a third of the memory of ``(n, 3)`` rows, which
    matters with thousands of cases), turned into ``(k, j, i)`` only for the position a patch is centred on."""

    def __init__(self, indices: np.ndarray, shape: tuple[int, ...]) -> None:
        self.indices, self.shape = indices, tuple(shape)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, n: int) -> np.ndarray:
        return np.asarray(np.unravel_index(int(self.indices[n]), self.shape), dtype=np.int64)


def read_cached_case(folder: Path, key: str, slice_shape: tuple[int, int] | None, n_channels: int) -> CachedCase:
    """A case folder checked against its record and the manifest (see the module docstring).

    Raises:
        InputError: A missing or linked file, a record that does not parse or belongs to another plan, an array whose
            header or size disagrees with its record, locations outside the volume.
    """
    if folder.is_symlink() or not folder.is_dir():
        raise InputError("expected a case folder in the cache, got a link or nothing there")
    record = _read_json(folder / RECORD, MAX_RECORD_BYTES, "a case record")
    if not isinstance(record, dict) or record.get("plan_key") != key:
        raise InputError("expected a case record prepared with the cache's plan, got a record of another plan or "
                         "none: prepare the cache again")
    if _slice_shape(record.get("slice_shape")) != slice_shape:
        raise InputError(f"expected a case prepared with slice shape {slice_shape}, got another")
    image_record = record.get("image")
    shape = _shape(image_record.get("shape") if isinstance(image_record, dict) else None, 4, "image")
    if shape[3] != n_channels:
        raise InputError(f"expected {n_channels} channel(s) in a cached image, got {shape[3]}")
    image = _check_array(folder, IMAGE, image_record, shape, (IMAGE_DTYPE,), "image")
    label = locations = flags = None
    if record.get("label") is not None:
        label = _check_array(folder, LABEL, record["label"], shape[:3], LABEL_DTYPES, "label")
        locations = _locations(record.get("class_locations"), shape[:3])
        flags = record.get("slice_foreground")
        if not (isinstance(flags, list) and len(flags) == shape[0] and all(f in (0, 1) for f in flags)):
            raise InputError(f"expected {shape[0]} per-slice foreground flags (0 or 1), got something else")
        flags = np.asarray(flags, dtype=bool)
    target = record.get("target")
    if target is not None and type(target) not in (int, float):
        raise InputError(f"expected a numeric target in a case record, got {type(target).__name__}")
    inverse = record.get("inverse")
    return CachedCase(image, label, inverse if isinstance(inverse, dict) else {}, target, str(record.get("case_id")),
                      locations, flags)


def _slice_shape(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    return _shape(value, 2, "slice")  # type: ignore[return-value]


def _entries(value: Any) -> list[CacheEntry]:
    if not isinstance(value, list) or not value:
        raise InputError("expected the cache manifest to list its cases, got none")
    entries = []
    for item in value:
        if not isinstance(item, dict):
            raise InputError(f"expected a case entry object in the cache manifest, got {type(item).__name__}")
        key, case_id = item.get("key"), item.get("case_id")
        if not (isinstance(key, str) and _KEY.fullmatch(key) and isinstance(case_id, str) and key == case_key(case_id)):
            raise InputError(f"expected case folders named by the hash of their case id, got {str(key)[:40]!r}")
        target, group = item.get("target"), item.get("group")
        if (target is not None and type(target) not in (int, float)) or (group is not None
                                                                          and not isinstance(group, str)):
            raise InputError("expected a numeric target and a text group in the cache manifest, got other types")
        entries.append(CacheEntry(case_id, key, target, group, bool(item.get("has_label"))))
    if len({e.key for e in entries}) != len(entries):
        raise InputError("expected each case once in the cache manifest, got repeated cases")
    return entries


def open_cache(path: str | os.PathLike[str]) -> PreprocessedCache:
    """Read a cache's manifest (cases are checked when they are read, :meth:`PreprocessedCache.case`).

    Raises:
        InputError: No manifest, another format or version, an unfinished cache, or a manifest that does not parse.
    """
    root = Path(path).resolve()
    if not is_cache(root):
        raise InputError(f"expected a preprocessed cache folder holding {MANIFEST}, got {terminal_field(path)}")
    manifest = _read_json(root / MANIFEST, MAX_MANIFEST_BYTES, "the cache manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise InputError(f"expected a cache manifest of format {CACHE_FORMAT!r}, got another document")
    if manifest.get("version") != CACHE_VERSION:
        raise InputError(f"expected cache version {CACHE_VERSION}, got {str(manifest.get('version'))[:20]}")
    if manifest.get("complete") is not True:
        raise InputError("expected a finished cache, got one whose preprocessing did not finish: run "
                         "medanalysis preprocess again to complete it")
    plan, dataset = manifest.get("plan"), manifest.get("dataset")
    if not isinstance(plan, dict) or not isinstance(dataset, dict):
        raise InputError("expected the plan and the dataset description in the cache manifest, got other types")
    if manifest.get("plan_key") != plan_key(plan):
        raise InputError("expected the cache manifest's plan key to match its plan, got another key")
    auto = manifest.get("auto_plan")
    return PreprocessedCache(root, plan, plan_key(plan), _slice_shape(manifest.get("slice_shape")), dataset,
                             _entries(manifest.get("cases")), auto if isinstance(auto, dict) else {})


def read_manifest_plan(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``auto_plan`` block of a cache's manifest (even an unfinished one), or ``{}`` when there is none."""
    try:
        manifest = _read_json(Path(path) / MANIFEST, MAX_MANIFEST_BYTES, "the cache manifest")
    except InputError:
        return {}
    auto = manifest.get("auto_plan") if isinstance(manifest, dict) else None
    return auto if isinstance(auto, dict) else {}


# ---------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class CaseJob:
    """One case to prepare, everything a worker process needs (picklable: functions travel by reference)."""

    case: Any
    folder: Path
    plan: Any
    plan_key: str
    slice_shape: tuple[int, int] | None
    source: str
    prepare: Callable[..., Any]
    read: Callable[[Any], Any]


@dataclass(frozen=True)
class BuildSummary:
    """What :func:`build_cache` did: cases prepared now and cases already current."""

    root: Path
    prepared: int
    reused: int


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _smallest_int(label: np.ndarray) -> np.ndarray:
    low, high = (int(label.min()), int(label.max())) if label.size else (0, 0)
    for dtype in LABEL_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.ascontiguousarray(label, dtype=dtype)
    raise InputError(f"expected label values that fit 64-bit integers, got {low}..{high}")


def _save(folder: Path, name: str, array: np.ndarray) -> dict[str, Any]:
    path = folder / name
    np.save(path, array, allow_pickle=False)
    return {"shape": list(array.shape), "dtype": array.dtype.str, "bytes": path.stat().st_size, "sha256": _sha256(path)}


def _is_case_folder(folder: Path) -> bool:
    """A case folder this module wrote (it holds a record and an image), which may be replaced."""
    return (folder / RECORD).is_file() and (folder / IMAGE).is_file()


def prepare_case(job: CaseJob) -> str:
    """Read, prepare and write one case into its folder atomically; returns its case id (runs in a worker)."""
    images, label = job.read(job.case)
    prepared = job.prepare(job.plan, images, label, slice_shape=job.slice_shape)
    image = np.ascontiguousarray(prepared.image, dtype=IMAGE_DTYPE)
    record: dict[str, Any] = {
        "case_id": job.case.case_id, "target": job.case.target, "group": job.case.group, "plan_key": job.plan_key,
        "slice_shape": list(job.slice_shape) if job.slice_shape else None, "source": job.source,
        "inverse": prepared.inverse.to_dict(), "label": None,
    }
    with atomic_directory(job.folder, replaceable=_is_case_folder) as temporary:
        record["image"] = _save(temporary, IMAGE, image)
        if prepared.label is not None:
            label_array = _smallest_int(np.asarray(prepared.label))
            record["label"] = _save(temporary, LABEL, label_array)
            locations = class_location_indices(label_array, np.random.default_rng(LOCATION_SEED))
            record["class_locations"] = {str(k): v.tolist() for k, v in locations.items()}
            record["slice_foreground"] = slice_foreground(label_array).astype(int).tolist()
        (temporary / RECORD).write_text(json.dumps(record, separators=(",", ":")), encoding="utf-8")
    return str(job.case.case_id)


def _is_current(folder: Path, key: str, slice_shape: tuple[int, int] | None, source: str, n_channels: int) -> bool:
    """The case folder holds a whole case prepared from this plan, slice shape and source (its files checked)."""
    if not (folder / RECORD).is_file():
        return False
    try:
        record = _read_json(folder / RECORD, MAX_RECORD_BYTES, "a case record")
        if not isinstance(record, dict) or record.get("source") != source:
            return False
        read_cached_case(folder, key, slice_shape, n_channels)
    except InputError:
        return False
    return True


def check_cache_folder(root: Path) -> None:
    """A cache goes into a new or empty folder or an earlier cache; anything else is refused before work."""
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise OutputError(f"expected a folder for the cache, got a file or a link at {terminal_field(root)}")
    if root.is_dir() and any(root.iterdir()) and not is_cache(root):
        raise OutputError(f"expected a new or empty folder, or an earlier preprocessed cache, at "
                          f"{terminal_field(root)}, got a folder holding other files, which is never written into")


def _remove_partials(cases: Path) -> None:
    """Remove temporaries of cases a killed run left behind (hidden ``*.partial`` and ``*.old`` folders)."""
    if not cases.is_dir():
        return
    for entry in cases.iterdir():
        if entry.name.startswith(".") and entry.is_dir() and not entry.is_symlink() and (
                entry.name.endswith(".partial")):
            shutil.rmtree(entry, ignore_errors=True)


def _write_manifest(root: Path, plan: dict[str, Any], slice_shape: tuple[int, int] | None, dataset: dict[str, Any],
                    cases: Sequence[Any], complete: bool, auto_plan: dict[str, Any] | None) -> None:
    manifest = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "complete": complete, "plan": plan,
        "plan_key": plan_key(plan), "slice_shape": list(slice_shape) if slice_shape else None, "dataset": dataset,
        "auto_plan": auto_plan or {},
        "cases": [{"case_id": c.case_id, "key": case_key(c.case_id), "target": c.target, "group": c.group,
                   "has_label": c.label is not None} for c in cases],
    }
    write_text_atomic(root / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def dataset_description(dataset: Any) -> dict[str, Any]:
    """What training needs of a dataset besides its cases: task, label names, modality, channels, folder name, and
    what an MSD ``dataset.json`` says about the data (for the model card of a bundle trained from the cache)."""
    return {"task": dataset.task, "labels": {str(k): str(v) for k, v in (dataset.labels or {}).items()},
            "modality": dataset.modality, "channel_names": list(dataset.channel_names),
            "name": Path(str(dataset.root)).name if dataset.root else "data",
            "about": dict(getattr(dataset, "about", None) or {})}


def _run_jobs(jobs: list[CaseJob], workers: int, done: Callable[[], None], stop_flag: StopFlag | None) -> None:
    """Prepare every job: in this process with one worker, else in a pool of spawned processes."""
    if workers <= 1 or len(jobs) < MIN_PROCESS_JOBS:
        for job in jobs:
            if stop_flag is not None:
                stop_flag.raise_if_set()
            prepare_case(job)
            done()
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        pending = {pool.submit(prepare_case, job) for job in jobs}
        try:
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=0.5,
                                                            return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    future.result()
                    done()
                if stop_flag is not None:
                    stop_flag.raise_if_set()
        except concurrent.futures.process.BrokenProcessPool:
            raise MemoryBudgetError("expected every preprocessing worker process to finish, got one that ended "
                                    "abruptly (often: out of memory); try fewer workers") from None
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def build_cache(dataset: Any, plan: Any, out: str | os.PathLike[str], *, prepare: Callable[..., Any],
                read: Callable[[Any], Any], slice_shape: Sequence[int] | None = None, workers: int = 1,
                reporter: Reporter | None = None, stop_flag: StopFlag | None = None,
                auto_plan: dict[str, Any] | None = None) -> BuildSummary:
    """Prepare every case of ``dataset`` that the cache at ``out`` does not hold current (see the module docstring).

    Args:
        dataset: A :class:`~MedAnalysisLib.data.datasets.Dataset`.
        plan: The plan (an object with ``to_dict()``), handed to ``prepare``.
        out: The cache folder: new, empty, or an earlier cache (resumed).
        prepare: ``prepare(plan, images, label, slice_shape=...)`` returning a prepared case (``apply_plan``);
            a module-level function, so that worker processes can import it.
        read: ``read(case) -> (images, label)`` (``read_case``), module-level too.
        slice_shape: (H, W) for slice families, None for volumes.
        workers: Worker processes (one: in this process).
        reporter: Progress with ETA (stage ``preprocess``).
        stop_flag: Polled between cases; when set, finished cases stay and CancelledError is raised.
        auto_plan: A record of how the plan was planned, kept in the manifest so that a later run can reuse it.

    Raises:
        OutputError: ``out`` is a file, a link, or a folder holding anything but a cache.
        InputError: Two cases with one id; a case that cannot be read or prepared (from the preparation).
        CancelledError: ``stop_flag`` was set.
    """
    root = absolute_target(out)
    check_cache_folder(root)
    reporter = reporter or Reporter("none")
    ids = [c.case_id for c in dataset.cases]
    if len(set(ids)) != len(ids):
        raise InputError(f"expected distinct case ids to cache, got {len(ids) - len(set(ids))} repeated")
    shape = tuple(int(s) for s in slice_shape) if slice_shape else None
    plan_dict, n_channels = plan.to_dict(), int(plan.n_channels)
    key = plan_key(plan_dict)
    root.mkdir(parents=True, exist_ok=True)
    description = dataset_description(dataset)
    _write_manifest(root, plan_dict, shape, description, dataset.cases, False, auto_plan)  # type: ignore[arg-type]
    (root / CASES).mkdir(exist_ok=True)
    _remove_partials(root / CASES)
    jobs = []
    for case in dataset.cases:
        folder, source = root / CASES / case_key(case.case_id), source_identity(case)
        if not _is_current(folder, key, shape, source, n_channels):  # type: ignore[arg-type]
            jobs.append(CaseJob(case, folder, plan, key, shape, source, prepare, read))  # type: ignore[arg-type]
    total, reused = len(ids), len(ids) - len(jobs)
    count = [reused]

    def done() -> None:
        count[0] += 1
        reporter.progress("preprocess", count[0], total, f"{count[0]}/{total} cases")

    reporter.progress("preprocess", reused, total, f"{reused}/{total} cases already prepared")
    try:
        _run_jobs(jobs, max(1, int(workers)), done, stop_flag)
    except CancelledError:
        reporter.log(f"preprocessing stopped: {count[0]} of {total} cases are in the cache")
        raise
    _write_manifest(root, plan_dict, shape, description, dataset.cases, True, auto_plan)  # type: ignore[arg-type]
    return BuildSummary(root, len(jobs), reused)

