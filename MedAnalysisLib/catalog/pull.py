"""Downloading one catalog entry into the cache: stream, count, hash, check the bundle, rename into place.

The order is what makes a hostile server harmless:

1. the URL is resolved and checked against the policy (:mod:`MedAnalysisLib.catalog.sources`) before anything
   connects;
2. the bytes stream into a new staging folder inside the cache, counted against the entry's ``size`` (the download
   stops as soon as more arrive; a Content-Length that disagrees is refused before the body is read; a short body
   is "truncated") and hashed as they come;
3. the sha256 is compared before anything reads the file;
4. only then is the bundle's configuration read (:func:`MedAnalysisLib.bundles.read_bundle_config`, which
   validates it; no weights are loaded, TensorFlow is not imported), and its task and labels must be the entry's;
5. the staging folder, with its record, is renamed to ``<cache>/<id>/<version>/<sha>`` (see
   :mod:`MedAnalysisLib.catalog.cache` for two pulls at once, and for the lock that keeps a live download's staging
   folder from the sweep that removes those killed pulls left behind).

Any failure or Cancel removes the staging folder, so the cache is as it was. Progress goes to
``reporter.progress("download", bytes_done, bytes_total, message, bytes_per_s=...)``; ``stop_flag`` is checked
between chunks and at least every 0.2 s while a slow server sends nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from MedAnalysisLib.catalog.cache import (
    BUNDLE_FILE,
    bundle_folder,
    cached_problem,
    install,
    lock_staging,
    model_cache_dir,
    new_staging,
    remove_staging,
    sweep_staging,
    unlock_staging,
    write_record,
)
from MedAnalysisLib.catalog.listing import choose_entry, read_catalogs, split_reference
from MedAnalysisLib.catalog.schema import CatalogEntry
from MedAnalysisLib.catalog.sources import Location, resolve_entry_url
from MedAnalysisLib.errors import BundleError, CancelledError, InputError, MedAnalysisError
from MedAnalysisLib.io.validate import format_bytes
from MedAnalysisLib.sanitize import terminal_field

STAGE = "download"
#: Least time between two progress reports.
REPORT_EVERY_S = 0.1
FILE_CHUNK = 1024 * 1024


class _Meter:
    """Progress in bytes with the rate, at most every :data:`REPORT_EVERY_S` (and always at 0 and at the end)."""

    def __init__(self, reporter: Any, entry: CatalogEntry) -> None:
        self.reporter, self.entry = reporter, entry
        self.start = self.last = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.reporter is None or not (force or done == 0 or now - self.last >= REPORT_EVERY_S):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6)
        message = f"{self.entry.key}: {format_bytes(done)} of {format_bytes(self.entry.size)} at {format_bytes(rate)}/s"
        self.reporter.progress(STAGE, done, self.entry.size, message, bytes_per_s=rate)


def _stopped(stop_flag: Any) -> None:
    if stop_flag is not None and stop_flag.is_set():
        raise CancelledError(getattr(stop_flag, "reason", "") or "download cancelled")


def _file_chunks(path: Path, entry: CatalogEntry, stop_flag: Any) -> Iterator[bytes]:
    from MedAnalysisLib.io.small_files import file_kind, open_regular_descriptor

    shown = _local_name(path, entry)
    try:
        fd, mode = open_regular_descriptor(path)
    except OSError as error:
        raise InputError(f"expected the model file {shown}, got: {error.strerror or error}") from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InputError(f"expected the model file {shown} to be a regular file, got {file_kind(mode)}")
    with os.fdopen(fd, "rb") as handle:
        while chunk := handle.read(FILE_CHUNK):
            _stopped(stop_flag)
            yield chunk


def _local_name(path: Path, entry: CatalogEntry) -> str:
    """``path`` relative to the entry's catalog folder, and the catalog's file name, for a message."""
    from MedAnalysisLib.catalog.sources import catalog_folder

    folder = catalog_folder(entry.catalog)
    shown = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)
    return f"{terminal_field(shown, 200)} (beside catalog {terminal_field(os.path.basename(entry.catalog), 100)})"


def _web_chunks(location: Location, entry: CatalogEntry, stop_flag: Any, timeout: float) -> Iterator[bytes]:
    from MedAnalysisLib.catalog.download import Download

    with Download(location.url, what=f"the bundle of model {entry.key}", timeout=timeout,
                  stop_flag=stop_flag) as download:
        if download.length is not None and download.length != entry.size:
            raise InputError(f"expected {entry.size} bytes for model {entry.key} (as its catalog states), the "
                             f"server announced {download.length} (a wrong or truncated file); nothing was kept")
        yield from download.chunks()


def _stream(location: Location, part: Path, entry: CatalogEntry, reporter: Any, stop_flag: Any,
            timeout: float) -> str:
    """Write the entry's bytes from ``location`` to ``part``; return their sha256."""
    digest, done, meter = hashlib.sha256(), 0, _Meter(reporter, entry)
    meter.update(0)
    chunks = _file_chunks(location.path, entry, stop_flag) if location.path is not None else \
        _web_chunks(location, entry, stop_flag, timeout)
    with contextlib.closing(chunks), open(part, "xb") as sink:  # closing: the connection ends with a refusal
        for chunk in chunks:
            done += len(chunk)
            if done > entry.size:
                raise InputError(f"expected {entry.size} bytes for model {entry.key} (as its catalog states), got "
                                 "more; the download was stopped and nothing was kept")
            digest.update(chunk)
            sink.write(chunk)
            meter.update(done)
    _stopped(stop_flag)
    if done < entry.size:
        raise InputError(f"expected {entry.size} bytes for model {entry.key} from {terminal_field(location, 200)}, "
                         f"got {done} before the connection closed (truncated); nothing was kept")
    meter.update(done, force=True)
    return digest.hexdigest()


def _label_pairs(labels: Any) -> list[tuple[int, str]]:
    return sorted((int(label["value"]), str(label["name"])) if isinstance(label, dict) else
                  (int(label.value), str(label.name)) for label in labels)


def check_bundle(path: Path, entry: CatalogEntry) -> None:
    """Read and validate the bundle's configuration and compare its task and labels with the entry's."""
    from MedAnalysisLib.bundles import read_bundle_config

    try:
        config = read_bundle_config(path)
    except BundleError as error:
        raise BundleError(f"expected model {entry.key} to be a MedAnalysis bundle: {error}") from None
    if config.task != entry.task:
        raise BundleError(f"expected a {entry.task} bundle for model {entry.key} (as its catalog states), got a "
                          f"{terminal_field(config.task)} bundle")
    stated, found = _label_pairs(entry.labels), _label_pairs(config.labels)
    if stated != found:
        raise BundleError(f"expected the labels {terminal_field(stated, 300)} for model {entry.key} (as its catalog "
                          f"states), got {terminal_field(found, 300)} in the bundle")


def fetch_entry(entry: CatalogEntry, url: str, cache: Path, *, reporter: Any = None, stop_flag: Any = None,
                timeout: float = 30.0) -> Path:
    """Download ``entry`` from one of its ``url`` into ``cache`` (the steps of the module docstring)."""
    location = resolve_entry_url(url, entry.catalog)
    staging = new_staging(cache, entry.id)
    lock = None
    try:
        lock = lock_staging(staging)
        part = staging / (BUNDLE_FILE + ".part")
        found = _stream(location, part, entry, reporter, stop_flag, timeout)
        if found != entry.sha256:
            raise BundleError(f"expected sha256 {entry.sha256} for model {entry.key} (as its catalog states), got "
                              f"{found}; the file was discarded unread")
        os.rename(part, staging / BUNDLE_FILE)
        check_bundle(staging / BUNDLE_FILE, entry)
        write_record(staging, entry, str(location))
        unlock_staging(staging, lock)  # the lock file must not travel into the cache; fresh files keep it
        lock = None
        return install(staging, entry, cache)
    finally:
        if lock is not None:
            unlock_staging(staging, lock)
        if staging.exists():
            remove_staging(staging)


def pull(model_id: str, *, version: str | None = None, catalogs: list[str] | None = None,
         cache_dir: str | os.PathLike[str] | None = None, reporter: Any = None, stop_flag: Any = None,
         timeout: float = 30.0) -> Path:
    """Make sure the verified bundle of ``model_id`` (``id@version`` accepted; default: the newest release the
    catalogs list, a pre-release such as ``2.0-rc1`` only when no release is listed) is in the cache, and return
    its path. A verified cached copy is used without downloading. Staging folders killed pulls left behind are
    swept first (:func:`~MedAnalysisLib.catalog.cache.sweep_staging`, which leaves alone all it cannot judge).

    Each of the entry's URLs is tried in order until one gives the right bundle.

    Raises:
        InputError: Not listed, a URL the policy refuses, a network failure, a wrong size or a truncated body.
        BundleError: A sha256 that differs, or a file that is not a bundle matching the entry.
        CancelledError: ``stop_flag`` was set; nothing was kept.
    """
    model_id, version = split_reference(model_id, version)
    cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    sweep_staging(cache)
    found = read_catalogs(catalogs, cache, offline=False, timeout=min(timeout, 30.0))
    entry = choose_entry(found.entries, model_id, version, found.problems)
    folder = bundle_folder(cache, entry.id, entry.version, entry.sha256)
    if cached_problem(folder, entry.size, entry.sha256) is None:
        if reporter is not None:
            reporter.progress(STAGE, entry.size, entry.size, f"{entry.key}: already in the cache")
        return folder / BUNDLE_FILE
    errors: list[MedAnalysisError] = []
    for url in entry.urls:
        _stopped(stop_flag)
        try:
            return fetch_entry(entry, url, cache, reporter=reporter, stop_flag=stop_flag, timeout=timeout)
        except CancelledError:
            raise
        except MedAnalysisError as error:
            errors.append(error)
    if len(errors) == 1:
        raise errors[0]
    raise InputError(f"expected model {entry.key} from one of its {len(errors)} locations, got: "
                     + "; ".join(f"({n}) {error}" for n, error in enumerate(errors, 1)))


__all__ = ["check_bundle", "fetch_entry", "pull"]
