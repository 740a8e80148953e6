"""How bundles sit on disk: hashes, size-capped reads, refusing foreign formats, archives, atomic publishing, and the
checks on a weights file before Keras reads it.

Shared by single bundles (:mod:`MedAnalysisLib.bundles.single`) and ensembles (:mod:`MedAnalysisLib.bundles.ensemble`).
Nothing here imports TensorFlow; :func:`check_hdf5_weights` imports h5py when it runs.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from MedAnalysisLib import safe_archive
from MedAnalysisLib.bundles.config import CONFIG_FILE, MAX_CONFIG_BYTES, BundleConfig, expect
from MedAnalysisLib.bundles.ensemble_config import EnsembleConfig
from MedAnalysisLib.errors import BundleError, OutputError
from MedAnalysisLib.io.atomic import absolute_target, atomic_directory, refuse_link
from MedAnalysisLib.sanitize import terminal_field

if TYPE_CHECKING:
    import keras

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: The marker file of an ensemble folder (the name :mod:`MedAnalysisLib.bundles.ensemble` writes).
ENSEMBLE_MARKER = "ensemble.json"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".joblib", ".npy", ".npz", ".ckpt", ".bin")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def refuse_foreign_formats(path: Path) -> None:
    """Refuse things that are not bundles (and would need unsafe deserialisation) before reading them."""
    name = path.name.lower()
    if name.endswith(".keras") or (path.is_file() and name.endswith((".h5", ".hdf5"))):
        raise BundleError(
            f"expected a MedAnalysis bundle (a folder or .zip with {CONFIG_FILE}), got a Keras model file "
            f"{path.name!r}; full Keras models are never loaded because they can carry code"
        )
    if name.endswith(PICKLE_SUFFIXES):
        raise BundleError(
            f"expected a MedAnalysis bundle (a folder or .zip with {CONFIG_FILE}), got {path.name!r}, a pickle or "
            "tensor file that is never loaded because unpickling runs code"
        )
    if path.is_dir() and ((path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists()):
        raise BundleError(
            f"expected a MedAnalysis bundle folder with {CONFIG_FILE}, got a TensorFlow SavedModel folder "
            f"{path.name!r}; SavedModels are never loaded because they can carry code"
        )
    if path.is_file() and not name.endswith(".zip") and name != CONFIG_FILE:
        with open(path, "rb") as handle:
            head = handle.read(8)
        kind = "a pickle" if head[:1] == b"\x80" else "a file"
        raise BundleError(
            f"expected a MedAnalysis bundle folder, its {CONFIG_FILE}, or a .zip of the folder, got {kind} "
            f"{path.name!r}"
        )


def small_file_bytes(path: Path, where: str = "the bundle folder") -> bytes:
    """A configuration file's bytes: a regular file (not a link) of at most :data:`MAX_CONFIG_BYTES`."""
    expect(path.is_file() and not path.is_symlink(),
           f"expected {path.name} in {where} {path.parent.name!r}, found none")
    size = path.stat().st_size
    expect(size <= MAX_CONFIG_BYTES, f"expected {path.name} of at most {MAX_CONFIG_BYTES} bytes, got {size}")
    return path.read_bytes()


def bundle_zip_root(members: list[str]) -> str:
    """The folder prefix of bundle.json inside an archive: "" (at the top) or "name/" (one folder)."""
    if CONFIG_FILE in members:
        return ""
    candidates = [m[: -len(CONFIG_FILE)] for m in members if m.endswith("/" + CONFIG_FILE) and m.count("/") == 1]
    expect(len(candidates) == 1,
           f"expected exactly one {CONFIG_FILE} at the top of the archive or in one top folder, got {len(candidates)}")
    return candidates[0]


def verified_weights(folder: Path, config: BundleConfig) -> tuple[Path, str]:
    """The weights file of a bundle folder and its sha256, once it is a regular HDF5 file whose sha256 matches
    ``bundle.json`` (raises :class:`BundleError` otherwise)."""
    weights = folder / config.weights["file"]
    expect(weights.is_file() and not weights.is_symlink(),
           f"expected the weights file {config.weights['file']!r} in the bundle, found none")
    expected = config.weights["sha256"]
    expect(expected != "", "expected a sha256 of the weights in bundle.json, got none")
    actual = sha256_file(weights)
    expect(actual == expected,
           f"expected weights with sha256 {expected}, got {actual}: the weights file was changed or corrupted; "
           "refusing to load it")
    with open(weights, "rb") as handle:
        expect(handle.read(8) == HDF5_MAGIC, "expected an HDF5 weights file, got another format")
    return weights, actual


def check_hdf5_weights(weights: Path, model: keras.Model) -> None:
    """Refuse what a weights file never needs, before Keras reads a byte of it.

    HDF5 can point outside the file (external and soft links, external or virtual dataset storage: reading them reads
    other files on this machine), and a dataset can declare a shape far larger than what it stores (a few-kB file can
    declare terabytes, allocated when read). Keras guards some of this, version by version and per dataset above a
    4 GiB floor; here every link must be a plain hard link, no dataset may live elsewhere, and all datasets together
    may declare at most twice the model's own weight bytes (plus 1 MiB).
    """
    import h5py
    import numpy as np

    budget = 2 * sum(math.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights) + 2**20
    problems: list[str] = []
    declared = 0

    def check_link(name: str, link: Any) -> None:
        if not isinstance(link, h5py.HardLink):
            problems.append(f"a {type(link).__name__} at {name!r}")

    def check_dataset(name: str, item: Any) -> None:
        nonlocal declared
        if isinstance(item, h5py.Dataset):
            if item.external or item.is_virtual:
                problems.append(f"a dataset stored in other files at {name!r}")
            declared += math.prod(item.shape or ()) * item.dtype.itemsize

    try:
        with h5py.File(weights, "r") as handle:
            handle.visititems_links(check_link)
            if not problems:
                handle.visititems(check_dataset)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        raise BundleError(f"expected a readable HDF5 weights file, got: {error}") from error
    expect(not problems, f"expected an HDF5 weights file with its data inside it, got {'; '.join(problems[:3])}")
    expect(declared <= budget,
           f"expected weights of at most {budget} bytes for this {type(model).__name__} ({len(model.weights)} "
           f"variables), got datasets declaring {declared} bytes; refusing to read them")


#: Sidecar files a bundle folder may hold besides ``bundle.json`` and the weights file it names (what training and
#: :func:`MedAnalysisLib.bundles.save_bundle` write there).
BUNDLE_SIDECARS = ("training_log.csv",)
#: How many foreign entries a refusal names.
_NAMED_ENTRIES = 3


def _bundle_files(data: bytes) -> set[str] | None:
    """The file names a single bundle consists of, from its ``bundle.json`` bytes; None when they are not a valid
    bundle document."""
    try:
        config = BundleConfig.from_json(data)
    except (BundleError, ValueError, TypeError, KeyError, RecursionError):
        return None
    return {CONFIG_FILE, str(config.weights["file"]), *BUNDLE_SIDECARS}


def _member_folders(data: bytes) -> list[str] | None:
    """The member folders an ``ensemble.json`` lists; None when it is not a valid ensemble document."""
    try:
        return [member["folder"] for member in EnsembleConfig.from_json(data).members]
    except (BundleError, ValueError, TypeError, KeyError, RecursionError):
        return None


def _config_bytes(path: Path) -> bytes | None:
    """A marker file's bytes: a regular file (not a link) of at most :data:`MAX_CONFIG_BYTES`, else None."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _listing(folder: Path, prefix: str = "") -> dict[str, str]:
    """``{relative name: kind}`` of the entries directly in ``folder`` (kind ``file``, ``folder`` or ``other``; a
    link is ``other``)."""
    found = {}
    for entry in folder.iterdir():
        kind = "other" if entry.is_symlink() else "file" if entry.is_file() else "folder" if entry.is_dir() else "other"
        found[prefix + entry.name] = kind
    return found


def _folder_foreign(path: Path) -> list[str] | None:
    """See :func:`foreign_bundle_entries`, for a folder."""
    ensemble = _config_bytes(path / ENSEMBLE_MARKER)
    if ensemble is not None:
        members = _member_folders(ensemble)
        if members is None:
            return None
        entries = _listing(path)
        foreign = [name for name, kind in entries.items()
                   if not ((name == ENSEMBLE_MARKER and kind == "file") or (name in members and kind == "folder"))]
        for member in members:
            if entries.get(member) == "folder":
                inside = _single_foreign(path / member, member + "/")
                foreign += [member + "/"] if inside is None else inside
        return sorted(foreign)
    return _single_foreign(path)


def _single_foreign(folder: Path, prefix: str = "") -> list[str] | None:
    """The entries of a single bundle folder that are no part of it; None when its bundle.json is not valid."""
    data = _config_bytes(folder / CONFIG_FILE)
    allowed = _bundle_files(data) if data is not None else None
    if allowed is None:
        return None
    return sorted(name for name, kind in _listing(folder, prefix).items()
                  if kind != "file" or name[len(prefix):] not in allowed)


def _zip_foreign(path: Path) -> list[str] | None:
    """See :func:`foreign_bundle_entries`, for a .zip (reads the names and the marker files only)."""
    try:
        names = safe_archive.list_members(path)
        roots = [n[: -len(n.rsplit("/", 1)[-1])] for n in names
                 if n.rsplit("/", 1)[-1] in (ENSEMBLE_MARKER, CONFIG_FILE) and n.count("/") <= 1]
        if not roots:
            return None
        root = min(roots, key=len)
        marker = ENSEMBLE_MARKER if root + ENSEMBLE_MARKER in names else CONFIG_FILE
        data = safe_archive.read_member(path, root + marker, max_bytes=MAX_CONFIG_BYTES)
        if marker == CONFIG_FILE:
            allowed = _bundle_files(data)
        else:
            members = _member_folders(data)
            if members is None:
                return None
            allowed = {ENSEMBLE_MARKER, *(m + "/" for m in members)}
            for member in members:
                files = _bundle_files(safe_archive.read_member(path, f"{root}{member}/{CONFIG_FILE}",
                                                               max_bytes=MAX_CONFIG_BYTES))
                allowed |= {f"{member}/{name}" for name in files or ()}
    except (OSError, zipfile.BadZipFile, BundleError, KeyError, ValueError):
        return None
    if allowed is None:
        return None
    allowed |= {root} if root else set()
    return sorted(n for n in names if not (n.startswith(root) and n[len(root):] in allowed))


def foreign_bundle_entries(path: Path) -> list[str] | None:
    """What in an earlier bundle or ensemble (a folder or a .zip) is no part of it.

    None when ``path`` is no earlier bundle at all: a link, or without a ``bundle.json``/``ensemble.json`` that is a
    valid bundle or ensemble document (``{}`` is not). Otherwise the entries that a bundle does not consist of
    (anything but ``bundle.json``, the weights file it names and :data:`BUNDLE_SIDECARS`; for an ensemble,
    ``ensemble.json`` and the member folders it lists, each a bundle), sorted: empty for a bundle that publishing
    may replace as a whole without removing anything of the user's. Reads names and marker files only.
    """
    if path.is_symlink():
        return None
    try:
        if path.is_dir():
            return _folder_foreign(path)
        if path.is_file() and zipfile.is_zipfile(path):
            return _zip_foreign(path)
    except OSError:
        return None
    return None


def describe_foreign(entries: list[str]) -> str:
    """A few foreign entries for a message (control characters escaped)."""
    shown = ", ".join(terminal_field(name, 60) for name in entries[:_NAMED_ENTRIES])
    more = f" and {len(entries) - _NAMED_ENTRIES} more" if len(entries) > _NAMED_ENTRIES else ""
    return shown + more


def is_bundle_folder(path: Path) -> bool:
    """True for a folder (not a link) that is an earlier bundle or ensemble and holds nothing else
    (:func:`foreign_bundle_entries`): what publishing may replace as a whole."""
    return path.is_dir() and foreign_bundle_entries(path) == []


def is_bundle_zip(path: Path) -> bool:
    """True for a regular .zip file (not a link) holding an earlier bundle or ensemble and nothing else, at its root
    or one folder down, as bundles are zipped (:func:`foreign_bundle_entries`)."""
    return path.is_file() and foreign_bundle_entries(path) == []


def earlier_bundle_problem(target: Path) -> str | None:
    """Why an existing, non-empty ``target`` may not be replaced by a bundle (None when it is an earlier bundle that
    holds nothing else)."""
    foreign = foreign_bundle_entries(target)
    if foreign is None:
        return "a folder holding other files" if target.is_dir() else "a file that is not a bundle archive"
    if foreign:
        return f"an earlier bundle that also holds {describe_foreign(foreign)}"
    return None


def check_publish_target(path: str | os.PathLike[str], overwrite: bool = True) -> Path:
    """Refuse a bundle target that publishing would have to destroy, before any work; return it as an absolute path.

    A path ending in ``.zip`` is a file: new, or an earlier bundle archive; otherwise a folder: new, empty, or an
    earlier bundle folder (:func:`is_bundle_folder`). An earlier bundle is replaced only when ``overwrite`` is true.
    A link, a file where a folder goes, a folder where the .zip goes, and anything else that exists are refused
    whatever ``overwrite`` says: nothing publishing did not create is ever removed.

    Raises:
        OutputError: The target is refused (the message says what was expected and what was found).
    """
    target = absolute_target(path)
    where = terminal_field(target)
    refuse_link(target, "a bundle")
    if target.suffix.lower() == ".zip":
        if target.is_dir():
            raise OutputError(f"expected a .zip file path for the bundle, got the folder {where}; a folder is never "
                              "replaced by an archive")
        found = "an earlier bundle archive"
    else:
        if target.exists() and not target.is_dir():
            raise OutputError(f"expected a folder path for the bundle (or a path ending in .zip), got the file "
                              f"{where}; a file is never replaced by a folder")
        if not target.exists() or not any(target.iterdir()):
            return target
        found = "an earlier bundle"
    if not target.exists():
        return target
    problem = earlier_bundle_problem(target)
    if problem is not None:
        raise OutputError(f"expected a new bundle path or an earlier bundle holding only its own files, got {problem} "
                          f"at {where}; it is never replaced, even with --overwrite, choose another path")
    if not overwrite:
        raise OutputError(f"expected a path that does not exist yet, got {found} at {where}; replace it only on "
                          "request (--overwrite), or choose another path")
    return target


def publish(path: Path, write_folder: Callable[[Path], None], *, overwrite: bool = True) -> Path:
    """Let ``write_folder`` fill a scratch folder, then publish it atomically as ``path`` (a folder or a .zip).

    ``path`` is checked first (:func:`check_publish_target`): an earlier bundle there is replaced when ``overwrite``
    is true, anything else that exists is refused; on failure the scratch folder is removed and ``path`` is as it was.

    Raises:
        OutputError: ``path`` is refused (before ``write_folder`` runs).
    """
    target = check_publish_target(path, overwrite)
    if target.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="medanalysis-bundle-") as scratch:
            folder = Path(scratch) / "bundle"
            folder.mkdir()
            write_folder(folder)
            check_publish_target(target, overwrite)  # something may have appeared there meanwhile
            safe_archive.zip_directory(folder, target)
        return Path(path)
    with atomic_directory(target, replaceable=is_bundle_folder) as temporary:
        write_folder(temporary)
    return Path(path)


def extract_archive(path: Path, prefix: str) -> tuple[Path, Path]:
    """Extract a .zip safely (:func:`MedAnalysisLib.safe_archive.safe_extract`) into a new temporary folder.

    Returns:
        ``(temporary, extracted)``: the folder to remove afterwards, and the extracted tree inside it.
    """
    temporary = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return temporary, safe_archive.safe_extract(path, temporary / "archive")
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def copy_plain_files(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy the files a bundle consists of (``bundle.json``, the weights file it names, :data:`BUNDLE_SIDECARS`)
    from the bundle folder ``source`` into ``target``, byte for byte; regular files only (no links, no sub-folders).
    Anything else a user put beside a bundle stays out of the copy, so the copy can later be replaced as a whole."""
    data = _config_bytes(source / CONFIG_FILE)
    allowed = (_bundle_files(data) if data is not None else None) or set()
    for item in source.iterdir():
        if item.name in allowed and item.is_file() and not item.is_symlink() and item.name not in skip:
            shutil.copyfile(item, target / item.name)
