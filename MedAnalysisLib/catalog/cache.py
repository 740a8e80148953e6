"""The per-user model cache: where verified bundles are kept, one folder per model version.

Layout (under :func:`model_cache_dir`)::

    <id>/<version>/<sha>/bundle.zip   the bundle, exactly the bytes whose sha256 the catalog states (<sha>: the
                                      first 16 hex digits of that sha256; <version>: the canonical spelling
                                      of the version, so 1.0 and 1.0.0 share one folder)
    <id>/<version>/<sha>/entry.json   the record: the catalog entry, sha256, size, when and from which URL
    <id>/.staging-*/                  a download in progress (removed when it fails or is cancelled)
    .catalogs/<hash>.json             the last good copy of each remote catalog (for offline listing)
    .catalogs/<hash>.url              where that copy was finally read from after redirects (when elsewhere)

Names starting with ``.`` can never be model ids, so the cache's own folders never collide with a model.

Files are kept by their sha256: two catalogs listing the same id and version with different files (or a catalog
that publishes a version again with another file) each get their own verified copy, and a pull for one never
replaces the copy another catalog lists.

A file's folder appears by one ``rename`` of a complete staging folder: a reader sees no folder or a complete one.
Two pulls of the same model at once each download into their own staging folder; the first to rename wins, and the
other verifies the winner's file and discards its own copy ("rename wins").

A download that was killed (SIGKILL, a crash, power loss) leaves its staging folder behind. Each pull holds an
advisory lock (``flock``) on the ``.lock`` file in its staging folder, which the system drops when the process dies;
every pull (never a listing, which writes nothing) removes staging folders whose lock is free and in which nothing
changed for :data:`STALE_STAGING_S` seconds (where ``flock`` is missing, the age alone decides). The cache may be
a folder the user also keeps other things in, so the sweep judges strictly and leaves alone whatever it cannot
judge: it looks only in folders named like a model id, only at folders named like a staging folder holding
nothing but regular files a pull writes (:data:`STAGING_FILES`), and a lock file that is not a regular file
(a FIFO would block whoever opens it) keeps its folder. It removes those files one by one and then the empty
staging folder, and never removes a model's folder.

Cached files are verified each time they are listed or used: the size always; the sha256 only when the file is
not the very file the pull verified. The record keeps the identity of the file it verified (size, modification
time in nanoseconds, inode); while the file still has that identity it is the verified file and is not hashed
again (hashing a large model on every listing takes seconds). A file that differs is hashed, reported when wrong
and never used. Anyone who can write the cache can also rewrite the record, so this trusts the cache's writers
no less than hashing each time does. Hashes are also remembered per process by the file's identity.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from MedAnalysisLib.catalog.schema import CatalogEntry, canonical_version, check_id, check_version
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.io.atomic import write_bytes_atomic
from MedAnalysisLib.io.small_files import read_json_file

CACHE_ENV = "MEDANALYSIS_MODEL_CACHE"
BUNDLE_FILE = "bundle.zip"
RECORD_FILE = "entry.json"
CATALOG_COPIES = ".catalogs"
STAGING_PREFIX = ".staging-"
LOCK_FILE = ".lock"
#: A staging folder in which nothing changed for this long, and whose lock is free, was left by a killed pull.
STALE_STAGING_S = 600.0
#: The only files a staging folder holds: the lock, the partial and the complete download, the record.
STAGING_FILES = frozenset({LOCK_FILE, BUNDLE_FILE + ".part", BUNDLE_FILE, RECORD_FILE})
#: Names of the staging folders MedAnalysis makes: ``mkdtemp``'s, and a corrupt copy moved aside.
_STAGING_NAME = re.compile(r"\.staging-(?:[a-z0-9_]{8}|corrupt-\d{1,10}-\d{1,25})")
#: Hex digits of the sha256 naming a file's folder.
SHA_FOLDER_DIGITS = 16

_HASHES: dict[tuple[int, int, int, int], str] = {}
#: Model folders this process created for its staging folders (only these may be removed again when empty).
_CREATED: set[Path] = set()


def model_cache_dir() -> Path:
    """``MEDANALYSIS_MODEL_CACHE``, else the platform's per-user cache folder + ``medanalysis/models``
    (``XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows).
    Nothing is created here."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "medanalysis" / "models"


def version_folder(cache: Path, model_id: str, version: str) -> Path:
    """``<cache>/<id>/<canonical version>`` (id and version checked, so neither can leave the cache; every
    spelling of one version, ``1.0`` and ``1.0.0``, names the same folder)."""
    return cache / check_id(model_id) / canonical_version(check_version(version))


def bundle_folder(cache: Path, model_id: str, version: str, sha256: str) -> Path:
    """``<cache>/<id>/<version>/<first 16 hex digits of sha256>``: the folder of one verified file."""
    if not isinstance(sha256, str) or len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise InputError(f"expected a sha256 of 64 lowercase hex digits, got {len(str(sha256))} characters")
    return version_folder(cache, model_id, version) / sha256[:SHA_FOLDER_DIGITS]


def file_folders(cache: Path, model_id: str, version: str) -> list[Path]:
    """The file folders under ``<cache>/<id>/<version>`` (unverified), newest record first."""
    folder = version_folder(cache, model_id, version)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = [folder / name for name in names if len(name) == SHA_FOLDER_DIGITS
             and all(c in "0123456789abcdef" for c in name)]
    return sorted(found, key=_record_time, reverse=True)


def _record_time(folder: Path) -> float:
    try:
        return os.lstat(folder / RECORD_FILE).st_mtime
    except OSError:
        return 0.0


def sha256_of(path: Path) -> str:
    """The sha256 of the regular file ``path`` (not a link), remembered by file identity."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)  # never blocks, never follows a link: a FIFO swapped in is caught below
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if identity in _HASHES:
            return _HASHES[identity]
        digest = hashlib.sha256()
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    _HASHES[identity] = digest.hexdigest()
    return _HASHES[identity]


def cached_problem(folder: Path, size: int, sha256: str) -> str | None:
    """Why ``folder/bundle.zip`` is not the file of that size and sha256 (None when it is). Never raises."""
    path = folder / BUNDLE_FILE
    if os.path.islink(folder) or os.path.islink(folder.parent):
        return "the cached version folder is a link"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "not downloaded"
    except OSError as error:
        return f"the cached file cannot be checked: {error.strerror or error}"
    if not stat.S_ISREG(info.st_mode):
        return "the cached bundle is not a regular file"
    if info.st_size != size:
        return f"the cached file is corrupt: expected {size} bytes, got {info.st_size}"
    if _verified_identity(folder, sha256) == file_identity(info):
        return None  # the very file the pull hashed, unchanged since (see the module docstring)
    try:
        found = sha256_of(path)
    except OSError as error:
        return f"the cached file cannot be read: {error.strerror or error}"
    if found != sha256:
        return f"the cached file is corrupt: expected sha256 {sha256}, got {found}"
    return None


def file_identity(info: os.stat_result) -> list[int]:
    """What tells a verified file from one changed since: size, modification time (ns) and inode."""
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _verified_identity(folder: Path, sha256: str) -> list[int] | None:
    """The identity the record of ``folder`` keeps for the file it verified as ``sha256`` (None when it keeps
    none, or for another sha256)."""
    try:
        record = read_json_file(folder / RECORD_FILE, "a cache record", max_bytes=256 * 1024)
    except (InputError, OSError):
        return None
    verified = record.get("verified") if isinstance(record, dict) else None
    if not isinstance(verified, dict) or verified.get("sha256") != sha256:
        return None
    identity = verified.get("identity")
    if not isinstance(identity, list) or len(identity) != 3 or \
            not all(type(n) is int and n >= 0 for n in identity):
        return None
    return identity


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record of a version folder (its ``entry.json``), or None when missing or malformed."""
    path = folder / RECORD_FILE
    if path.is_symlink():
        return None
    try:
        record = read_json_file(path, "a cache record", max_bytes=256 * 1024)
        entry = CatalogEntry.from_dict({k: v for k, v in record["entry"].items() if k != "catalog"},
                                       record["entry"].get("catalog", ""))
    except (InputError, KeyError, TypeError, AttributeError):
        return None
    return {**record, "entry": entry}


def cached_versions(cache: Path, model_id: str) -> list[str]:
    """The version folders under ``<cache>/<id>`` whose names are valid versions (unverified)."""
    try:
        names = os.listdir(cache / check_id(model_id))
    except OSError:
        return []
    versions = []
    for name in names:
        try:
            versions.append(check_version(name))
        except InputError:
            continue
    return versions


def new_staging(cache: Path, model_id: str) -> Path:
    """A fresh staging folder ``<cache>/<id>/.staging-*`` (the cache folder is created when missing)."""
    parent = cache / check_id(model_id)
    for _attempt in range(3):
        if not parent.exists():
            parent.mkdir(parents=True, exist_ok=True)
            _CREATED.add(parent)
        try:
            return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
        except FileNotFoundError:  # another pull's clean-up removed the empty model folder just now
            continue
    raise InputError(f"expected to create a download folder in {parent.name} of the model cache, got a folder "
                     "that kept disappearing")


def lock_staging(staging: Path) -> int | None:
    """Hold the lock of a staging folder (a descriptor to pass to :func:`unlock_staging`), so that no sweep
    removes it while this process lives; None where the system has no ``flock``."""
    try:
        import fcntl
    except ImportError:  # Windows: a file being written cannot be removed there anyway
        return None
    fd = os.open(staging / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def unlock_staging(staging: Path, fd: int | None) -> None:
    """Remove the lock file (it must not travel into the cache) and drop the lock."""
    with contextlib.suppress(OSError):
        (staging / LOCK_FILE).unlink()
    if fd is not None:
        os.close(fd)


def _lock_is_free(staging: Path) -> bool:
    """Whether no live process holds the lock of ``staging``: True where there is no lock file or no flock, False
    where it is held or is not a regular file (a FIFO, a device, a link: not ours, never judged). Never blocks:
    the file is opened non-blocking and without following a link, and checked with ``fstat`` before the lock."""
    try:
        import fcntl
    except ImportError:
        return True
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(staging / LOCK_FILE, flags)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # a link (ELOOP), no permission...: leave it alone
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the lock just taken
    return True


def _last_change(folder: Path) -> float:
    """The newest modification time of ``folder`` and of what lies directly in it."""
    times = [os.lstat(folder).st_mtime]
    with contextlib.suppress(OSError), os.scandir(folder) as found:
        for item in found:
            with contextlib.suppress(OSError):
                times.append(item.stat(follow_symlinks=False).st_mtime)
    return max(times)


def _staging_files(folder: Path) -> list[str] | None:
    """The names in a staging folder when all are regular files a pull writes (:data:`STAGING_FILES`), else None
    (something the sweep cannot judge: it stays)."""
    names = []
    with os.scandir(folder) as found:
        for item in found:
            if item.name not in STAGING_FILES or not stat.S_ISREG(item.stat(follow_symlinks=False).st_mode):
                return None
            names.append(item.name)
    return names


def _model_folders(cache: Path) -> list[Path]:
    """The folders of ``cache`` named like a model id (not links): the only ones a sweep looks into."""
    folders = []
    for name in os.listdir(cache):
        try:
            check_id(name)
        except InputError:
            continue
        if stat.S_ISDIR(os.lstat(cache / name).st_mode):
            folders.append(cache / name)
    return folders


def _sweep_one(folder: Path, now: float, max_age_s: float) -> bool:
    """Remove one staging folder a killed pull left (see :func:`sweep_staging`); whether it was removed."""
    if not _STAGING_NAME.fullmatch(folder.name) or not stat.S_ISDIR(os.lstat(folder).st_mode):
        return False
    names = _staging_files(folder)
    if names is None or now - _last_change(folder) < max_age_s or not _lock_is_free(folder):
        return False
    for name in names:
        (folder / name).unlink()
    folder.rmdir()  # fails, and keeps the folder, when something appeared in it meanwhile
    return True


def sweep_staging(cache: Path, max_age_s: float = STALE_STAGING_S) -> list[Path]:
    """Remove the staging folders killed pulls left behind and return them: in folders named like a model id,
    folders named like a staging folder that hold only the regular files a pull writes, whose lock is free and in
    which nothing changed for ``max_age_s`` seconds. Everything else stays as it is, the model folders too. Never
    raises, never blocks, never touches a folder a live pull holds."""
    removed: list[Path] = []
    now = time.time()
    with contextlib.suppress(OSError):
        for model in _model_folders(cache):
            with contextlib.suppress(OSError):
                for name in os.listdir(model):
                    with contextlib.suppress(OSError):
                        if _sweep_one(model / name, now, max_age_s):
                            removed.append(model / name)
    return removed


def remove_staging(staging: Path) -> None:
    """Remove a staging folder, and its model folder when this process created it and nothing else is in it
    (the cache is as it was)."""
    shutil.rmtree(staging, ignore_errors=True)
    if staging.parent in _CREATED:
        with contextlib.suppress(OSError):
            staging.parent.rmdir()  # only succeeds when empty: another pull's staging or a version keeps it
            _CREATED.discard(staging.parent)


def write_record(staging: Path, entry: CatalogEntry, url: str) -> None:
    """Write the record of a verified download, with the identity of the file verified (which the rename into
    the cache keeps), so that listings need not hash it again while it stays that file."""
    record = {"entry": entry.to_dict(), "sha256": entry.sha256, "size": entry.size, "url": url,
              "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    info = os.lstat(staging / BUNDLE_FILE)
    if stat.S_ISREG(info.st_mode):
        record["verified"] = {"sha256": entry.sha256, "identity": file_identity(info)}
    (staging / RECORD_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")


def install(staging: Path, entry: CatalogEntry, cache: Path) -> Path:
    """Rename the verified ``staging`` folder to ``<cache>/<id>/<version>/<sha>`` and return the bundle's path.

    When the version folder already exists (another pull finished first), the existing file is kept if it
    verifies and the staging copy discarded; a corrupt existing folder is moved aside and replaced.
    """
    target = bundle_folder(cache, entry.id, entry.version, entry.sha256)
    for _attempt in range(3):
        if target.parent.is_symlink():  # a link planted at the version's name: never written through
            _discard(target.parent, staging.parent)
        target.parent.mkdir(exist_ok=True)
        try:
            os.rename(staging, target)
            return target / BUNDLE_FILE
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR, errno.EPERM,
                                   errno.EACCES) or not os.path.lexists(target):
                raise
        if cached_problem(target, entry.size, entry.sha256) is None:
            shutil.rmtree(staging, ignore_errors=True)
            return target / BUNDLE_FILE
        _discard(target, staging.parent)
    raise InputError(f"expected to install model {entry.key} in the cache, got a folder that kept coming back")


def _discard(target: Path, staging_parent: Path) -> None:
    """Move a corrupt folder (or a file or link at its name) aside into ``staging_parent`` (the model's folder,
    where a sweep finds it should this process die now), then remove it."""
    aside = staging_parent / f"{STAGING_PREFIX}corrupt-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.rename(target, aside)
    except FileNotFoundError:
        return
    if aside.is_symlink() or not aside.is_dir():
        aside.unlink(missing_ok=True)
    else:
        shutil.rmtree(aside, ignore_errors=True)


def catalog_copy_path(cache: Path, url: str) -> Path:
    return cache / CATALOG_COPIES / f"{hashlib.sha256(url.encode('utf-8')).hexdigest()[:32]}.json"


def save_catalog_copy(cache: Path, url: str, data: bytes, base: str | None = None) -> None:
    """Keep ``data`` as the last good copy of the remote catalog ``url`` (written atomically), with ``base``, the
    URL it was finally read from, when a redirect led elsewhere."""
    path = catalog_copy_path(cache, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)
    moved = path.with_suffix(".url")
    if base and base != url:
        write_bytes_atomic(moved, base.encode("utf-8"))
    else:
        moved.unlink(missing_ok=True)


def catalog_copy(cache: Path, url: str) -> tuple[bytes, float, str | None] | None:
    """The last good copy of a remote catalog, when it was saved and the URL it was read from (None when the
    same), or None."""
    from MedAnalysisLib.catalog.schema import MAX_CATALOG_BYTES, MAX_URL_LENGTH
    from MedAnalysisLib.io.small_files import read_small_text

    path = catalog_copy_path(cache, url)
    if not path.is_file() or path.is_symlink():
        return None
    try:
        text = read_small_text(path, "a saved catalog copy", MAX_CATALOG_BYTES)
        saved = path.stat().st_mtime
    except (InputError, OSError):
        return None
    try:
        base = read_small_text(path.with_suffix(".url"), "a saved catalog URL", MAX_URL_LENGTH).strip() or None
    except (InputError, OSError):
        base = None
    return text.encode("utf-8"), saved, base


__all__ = ["BUNDLE_FILE", "CACHE_ENV", "RECORD_FILE", "bundle_folder", "cached_problem", "cached_versions",
           "catalog_copy", "file_folders", "install", "lock_staging", "model_cache_dir", "new_staging", "read_record",
           "remove_staging", "save_catalog_copy", "sweep_staging", "unlock_staging", "version_folder", "write_record"]
