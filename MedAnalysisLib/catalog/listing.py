"""Reading every catalog, listing its models with their cache status, and finding a cached bundle offline.

Catalogs are read in order; one that cannot be read or reached becomes one line of :attr:`ModelList.problems` and
the others still list. A remote catalog's last good copy (kept in the cache) stands in when it cannot be reached,
or is refused, and is all that ``offline`` reads. When two catalogs list the same id and version, the first one
wins; a later one that states another file (sha256) is reported as a problem.

Each remote catalog must arrive within ``timeout`` seconds in all; a ``deadline`` (a :func:`time.monotonic`
instant) bounds the whole listing: catalogs not read by then are listed from their saved copies, with the problem
line :data:`NOT_REACHED`. A deadline that is not a finite number, or lies further ahead than the listing could ever
take (a :func:`time.time` instant, the wrong clock), is refused rather than silently ignored.

Listing writes nothing in the cache but the saved copies of remote catalogs: it does not sweep staging folders
(a pull does) and verifies cached files without writing (see :mod:`MedAnalysisLib.catalog.cache`).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from MedAnalysisLib.catalog.cache import (
    BUNDLE_FILE,
    bundle_folder,
    cached_problem,
    cached_versions,
    catalog_copy,
    file_folders,
    model_cache_dir,
    read_record,
    save_catalog_copy,
)
from MedAnalysisLib.catalog.schema import MAX_CATALOG_BYTES, CatalogEntry, check_id, check_version, version_key
from MedAnalysisLib.catalog.sources import check_web_url, default_catalogs, is_remote, local_catalog_path, parse_catalog
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.io.small_files import read_small_text
from MedAnalysisLib.sanitize import terminal_field

NEEDS_DOWNLOAD = "needs a download"
#: In a problem line: the catalog could not be reached or was refused, and its saved copy was listed instead.
STALE_NOTE = "; listed from its copy of "
#: Why a remote catalog was not asked: the listing's deadline had passed.
NOT_REACHED = "not reached within the time limit"


@dataclass(frozen=True)
class ModelListing:
    """What a picker shows for one entry: the entry, whether its verified bundle is cached, and a status line
    (``"cached"`` or ``"needs a download"``, with the reason when the cached copy is corrupt or the catalog could
    not be reached)."""

    entry: CatalogEntry
    cached: bool
    path: str | None
    status: str


@dataclass
class ModelList:
    """Every listed model, and one line per catalog that could not be read or reached (the others still list)."""

    models: list[ModelListing]
    problems: list[str] = field(default_factory=list)
    #: The catalogs that could not be read at all (neither from their source nor from a saved copy).
    unread: list[str] = field(default_factory=list)


@dataclass
class _Catalogs:
    entries: list[CatalogEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    #: Why a catalog was read from its saved copy, by source.
    stale: dict[str, str] = field(default_factory=dict)


def _shown(source: str) -> str:
    return terminal_field(source, 200)


def _read_remote(url: str, cache: Path, offline: bool, timeout: float, found: _Catalogs,
                 deadline: float | None = None) -> list[CatalogEntry]:
    from MedAnalysisLib.catalog.download import fetch_document

    check_web_url(url, "a model catalog")  # a URL the policy refuses has no saved copy either
    reason = "offline"
    if not offline and deadline is not None and time.monotonic() >= deadline:
        reason = f"expected a model catalog from {_shown(url)}, got none: {NOT_REACHED}"
    elif not offline:
        try:
            data, final = fetch_document(url, what="a model catalog", max_bytes=MAX_CATALOG_BYTES, timeout=timeout,
                                         deadline=deadline)
            entries = parse_catalog(data, url, final)
            with contextlib.suppress(OSError):  # a cache that cannot be written only loses the offline copy
                save_catalog_copy(cache, url, data, final)
            return entries
        except InputError as error:
            reason = str(error)
    copy = catalog_copy(cache, url)
    if copy is None:
        raise InputError(f"{reason}; no saved copy of this catalog" if not offline else
                         "expected a saved copy of this remote catalog for offline use, got none (list it once "
                         "online)")
    entries = _parse_copy(copy, url)
    saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(copy[1]))
    if not offline:
        found.problems.append(f"catalog {_shown(url)}: {reason}{STALE_NOTE}{saved}")
        found.stale[url] = "catalog not reached or refused: listed from its saved copy"
    return entries


def _parse_copy(copy: tuple[bytes, float, str | None], url: str) -> list[CatalogEntry]:
    """The entries of a saved copy, resolved against where it was read from (its own URL when that is refused)."""
    try:
        return parse_catalog(copy[0], url, copy[2])
    except InputError:
        if copy[2] is None:
            raise
        return parse_catalog(copy[0], url)


def _read_one(source: str, cache: Path, offline: bool, timeout: float, found: _Catalogs,
              deadline: float | None = None) -> list[CatalogEntry]:
    if not isinstance(source, str) or not source.strip():
        raise InputError(f"expected a catalog path or URL, got an empty value {source!r}")
    if is_remote(source):
        return _read_remote(source, cache, offline, timeout, found, deadline)
    path = local_catalog_path(source)
    return parse_catalog(read_small_text(path, "a model catalog", MAX_CATALOG_BYTES), path)


def read_catalogs(catalogs: list[str] | None, cache: Path, *, offline: bool, timeout: float,
                  deadline: float | None = None) -> _Catalogs:
    """Every entry of ``catalogs`` (default: :func:`default_catalogs`), first listing of an id@version first.
    Remote catalogs not read by ``deadline`` come from their saved copies (see the module docstring)."""
    found = _Catalogs()
    seen: dict[tuple, CatalogEntry] = {}
    if isinstance(catalogs, (str, os.PathLike)):  # one source given on its own, not its characters
        catalogs = [os.fspath(catalogs)]
    for source in default_catalogs() if catalogs is None else list(catalogs):
        try:
            entries = _read_one(str(source), cache, offline, timeout, found, deadline)
        except InputError as error:
            found.problems.append(f"catalog {_shown(str(source))}: {error}")
            found.unread.append(str(source))
            continue
        for entry in entries:
            key = (entry.id, version_key(entry.version))
            if key not in seen:
                seen[key] = entry
                found.entries.append(entry)
            elif seen[key].sha256 != entry.sha256:
                also = "" if seen[key].key == entry.key else f" (as {seen[key].key}, the same version)"
                found.problems.append(f"catalog {_shown(entry.catalog)}: model {entry.key} is listed by "
                                      f"{_shown(seen[key].catalog)}{also} too, with another file; the first one is "
                                      "used")
    return found


def modality_matches(stated: str, wanted: str) -> bool:
    """Case-insensitive, with the library's modality families (MR = MRI = T1 = ..., CT = CTA = ...)."""
    from MedAnalysisLib.data.datasets import modality_family

    families = modality_family(stated), modality_family(wanted)
    if None not in families:
        return families[0] == families[1]
    return stated.strip().casefold() == wanted.strip().casefold()


def _listing(entry: CatalogEntry, cache: Path, stale: str | None) -> ModelListing:
    folder = bundle_folder(cache, entry.id, entry.version, entry.sha256)
    problem = cached_problem(folder, entry.size, entry.sha256)
    if problem is None:
        return ModelListing(entry, True, str(folder / BUNDLE_FILE), "cached")
    if problem == "not downloaded" and file_folders(cache, entry.id, entry.version):
        problem = (f"the cache holds another file for this version (from another catalog or an earlier "
                   f"publication); this catalog lists sha256 {entry.sha256[:16]}...: pull to add it")
    reasons = [r for r in (problem if problem != "not downloaded" else None, stale) if r]
    return ModelListing(entry, False, None, NEEDS_DOWNLOAD + (f" ({'; '.join(reasons)})" if reasons else ""))


def check_modality(modality: str | None) -> str | None:
    """``modality`` unchanged, or InputError for an empty or blank one (it would match nothing)."""
    if modality is not None and (not isinstance(modality, str) or not modality.strip()):
        raise InputError(f"expected a modality to keep (CT, MR, ...) or none, got an empty value {modality!r}")
    return modality


#: Seconds a deadline may lie beyond the longest the listing could take before it is taken for the wrong clock.
DEADLINE_SLACK_S = 300.0


def check_deadline(deadline: object, timeout: float, sources: int) -> float | None:
    """``deadline`` as a float, or None; InputError for a value that is not a finite number, or that lies more than
    ``timeout`` seconds per catalog (plus :data:`DEADLINE_SLACK_S`) ahead of :func:`time.monotonic` (a
    :func:`time.time` instant would otherwise be ignored silently)."""
    if deadline is None:
        return None
    if isinstance(deadline, bool) or not isinstance(deadline, numbers.Real):
        raise InputError(f"expected a deadline as a time.monotonic() instant (a number) or none, got "
                         f"{type(deadline).__name__}")
    if not math.isfinite(deadline):
        raise InputError(f"expected a finite deadline (a time.monotonic() instant), got {deadline}")
    ahead = float(deadline) - time.monotonic()
    longest = timeout * max(sources, 1) + DEADLINE_SLACK_S
    if ahead > longest:
        raise InputError(f"expected a deadline on the time.monotonic() clock, at most {longest:.0f} s ahead, got one "
                         f"{ahead:.0f} s ahead (a time.time() instant?)")
    return float(deadline)


def check_timeout(timeout: object) -> float:
    """``timeout`` as a float; InputError unless a finite number of seconds above 0."""
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise InputError(f"expected a timeout of a finite number of seconds above 0, got {terminal_field(timeout)}")
    return float(timeout)


def list_models(catalogs: list[str] | None = None, *, cache_dir: str | os.PathLike[str] | None = None,
                offline: bool = False, modality: str | None = None, timeout: float = 10.0,
                deadline: float | None = None) -> ModelList:
    """Every model version the catalogs list, sorted by id then newest version first, with its cache status.

    Args:
        catalogs: Paths or URLs; None means :func:`default_catalogs` (a list replaces it).
        cache_dir: The model cache (default :func:`model_cache_dir`).
        offline: Read remote catalogs only from their saved copies; nothing connects.
        modality: Keep only models of this modality (case-insensitive; MR, MRI, T1... are one family); an empty
            value is refused (InputError).
        timeout: Seconds each remote catalog may take in all (connect, headers and body).
        deadline: A :func:`time.monotonic` instant for the whole listing: remote catalogs not read by then are
            listed from their saved copies with the problem line "... not reached within the time limit". A value
            that is not a finite number, or that lies too far ahead to be on that clock, is refused (InputError).
    """
    check_modality(modality)
    timeout = check_timeout(timeout)
    if isinstance(catalogs, (str, os.PathLike)):
        catalogs = [os.fspath(catalogs)]
    count = len(default_catalogs()) if catalogs is None else len(list(catalogs))
    deadline = check_deadline(deadline, timeout, count)
    cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    found = read_catalogs(catalogs, cache, offline=offline, timeout=timeout, deadline=deadline)
    entries = [e for e in found.entries if modality is None or modality_matches(e.modality, modality)]
    entries.sort(key=lambda e: version_key(e.version), reverse=True)
    entries.sort(key=lambda e: e.id)  # stable: each id's newest version first
    return ModelList([_listing(e, cache, found.stale.get(e.catalog)) for e in entries], found.problems, found.unread)


def split_reference(model_id: str, version: str | None) -> tuple[str, str | None]:
    """``("id", "1.0.0")`` from ``id@1.0.0`` (or ``id`` and ``version``), both checked."""
    if "@" in model_id:
        model_id, _, given = model_id.partition("@")
        if version is not None and version != given:
            raise InputError(f"expected one version, got {terminal_field(given)} in the id and "
                             f"{terminal_field(version)} as version")
        version = given
    return check_id(model_id), None if version is None else check_version(version)


def newest(versions: list[str]) -> str:
    """The newest release (a version without a tag) of ``versions``, or the newest tagged one when none is a
    release: ``1.10`` over ``2.0-rc10``."""
    releases = [v for v in versions if "-" not in v]
    return max(releases or versions, key=version_key)


def choose_entry(entries: list[CatalogEntry], model_id: str, version: str | None, problems: list[str]) -> CatalogEntry:
    """The entry for ``model_id`` at ``version`` (default: the newest release, see :func:`newest`); InputError
    naming what is listed."""
    matches = [e for e in entries if e.id == model_id]
    if version is not None:
        matches = [e for e in matches if version_key(e.version) == version_key(version)]
    if not matches:
        listed = sorted({e.id for e in entries})
        versions = sorted((e.version for e in entries if e.id == model_id), key=version_key)
        found = (f"versions {', '.join(versions)} of it" if versions else
                 f"the ids {', '.join(listed[:20])}" if listed else "no models in the catalogs")
        wanted = f"{model_id}@{version}" if version else model_id
        note = f" ({len(problems)} catalog(s) could not be read: {problems[0]})" if problems else ""
        raise InputError(f"expected a model {terminal_field(wanted)} listed in the catalogs, got {found}{note}")
    chosen = newest([e.version for e in matches])
    return next(e for e in matches if e.version == chosen)


def _recorded_file(cache: Path, model_id: str, version: str) -> tuple[Path | None, CatalogEntry | None]:
    """The newest file of ``model_id@version`` in the cache whose record names it (no catalog lists it any more),
    with the entry its record holds; ``(None, None)`` when there is none."""
    for folder in file_folders(cache, model_id, version):
        record = read_record(folder)
        if record is not None and record["entry"].id == model_id \
                and version_key(record["entry"].version) == version_key(version) \
                and record["entry"].sha256.startswith(folder.name):
            return folder, record["entry"]
    return None, None


def cached_path(model_id: str, *, version: str | None = None, catalogs: list[str] | None = None,
                cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The verified cached bundle of ``model_id`` (``id@version`` accepted), without any network.

    The version is ``version``, else the newest release the catalogs list (remote ones from their saved copies),
    else the newest one in the cache (see :func:`newest`). The file is verified (size, sha256) against its catalog
    entry, or against its cache record when no catalog lists it any more.

    Raises:
        InputError: The model is not cached ("needs a download", with the command that fetches it), its cached
            copy is corrupt, or no catalog lists it and the cache holds no record of it (the same "listed in the
            catalogs" message a pull gives).
    """
    model_id, version = split_reference(model_id, version)
    cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    found = read_catalogs(catalogs, cache, offline=True, timeout=1.0)
    listed = [e for e in found.entries if e.id == model_id]
    if version is None:
        versions = [e.version for e in listed] or cached_versions(cache, model_id)
        version = newest(versions) if versions else None
    entry = next((e for e in listed if version is not None and version_key(e.version) == version_key(version)),
                 None)
    folder: Path | None = None
    if entry is not None:
        folder = bundle_folder(cache, model_id, entry.version, entry.sha256)
    elif version is not None:  # no catalog lists it: a file the cache holds a record of
        folder, entry = _recorded_file(cache, model_id, version)
    if entry is None and not found.problems:  # listed nowhere, cached nowhere: the message a pull gives
        choose_entry(found.entries, model_id, version, found.problems)
    if version is None:
        raise InputError(f"expected model {model_id} in the cache, got none: it needs a download "
                         f"(medanalysis models pull {model_id})")
    problem = "not downloaded" if entry is None or folder is None else \
        cached_problem(folder, entry.size, entry.sha256)
    if problem is not None:
        key = f"{model_id}@{version}"
        found = "none" if problem == "not downloaded" else f"none usable ({problem})"
        raise InputError(f"expected model {key} in the cache, got {found}: it needs a download "
                         f"(medanalysis models pull {key})")
    return folder / BUNDLE_FILE


__all__ = ["ModelList", "ModelListing", "cached_path", "check_deadline", "choose_entry", "list_models", "newest",
           "read_catalogs", "split_reference"]
