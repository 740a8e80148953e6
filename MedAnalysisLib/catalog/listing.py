"""Reading every catalog, listing its models with their cache status, and finding a cached bundle offline.

Catalogs are read in order; one that cannot be read or reached becomes one line of :attr:`ModelList.problems` and
the others still list. A remote catalog's last good copy (kept in the cache) stands in when it cannot be reached,
or is refused, and is all that ``offline`` reads. When two catalogs list the same id and version, the first one
wins; a later one that states another file (sha256) is reported as a problem.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from MedAnalysisLib.catalog.cache import (
    BUNDLE_FILE,
    cached_problem,
    cached_versions,
    catalog_copy,
    model_cache_dir,
    read_record,
    save_catalog_copy,
    version_folder,
)
from MedAnalysisLib.catalog.schema import MAX_CATALOG_BYTES, CatalogEntry, check_id, check_version, version_key
from MedAnalysisLib.catalog.sources import check_web_url, default_catalogs, is_remote, local_catalog_path, parse_catalog
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.io.small_files import read_small_text
from MedAnalysisLib.sanitize import terminal_field

NEEDS_DOWNLOAD = "needs a download"
#: In a problem line: the catalog could not be reached or was refused, and its saved copy was listed instead.
STALE_NOTE = "; listed from its copy of "


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


@dataclass
class _Catalogs:
    entries: list[CatalogEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: Why a catalog was read from its saved copy, by source.
    stale: dict[str, str] = field(default_factory=dict)


def _shown(source: str) -> str:
    return terminal_field(source, 200)


def _read_remote(url: str, cache: Path, offline: bool, timeout: float, found: _Catalogs) -> list[CatalogEntry]:
    from MedAnalysisLib.catalog.download import fetch_bytes

    check_web_url(url, "a model catalog")  # a URL the policy refuses has no saved copy either
    reason = "offline"
    if not offline:
        try:
            data = fetch_bytes(url, what="a model catalog", max_bytes=MAX_CATALOG_BYTES, timeout=timeout)
            entries = parse_catalog(data, url)
            with contextlib.suppress(OSError):  # a cache that cannot be written only loses the offline copy
                save_catalog_copy(cache, url, data)
            return entries
        except InputError as error:
            reason = str(error)
    copy = catalog_copy(cache, url)
    if copy is None:
        raise InputError(f"{reason}; no saved copy of this catalog" if not offline else
                         "expected a saved copy of this remote catalog for offline use, got none (list it once "
                         "online)")
    entries = parse_catalog(copy[0], url)
    saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(copy[1]))
    if not offline:
        found.problems.append(f"catalog {_shown(url)}: {reason}{STALE_NOTE}{saved}")
        found.stale[url] = "catalog not reached or refused: listed from its saved copy"
    return entries


def _read_one(source: str, cache: Path, offline: bool, timeout: float, found: _Catalogs) -> list[CatalogEntry]:
    if is_remote(source):
        return _read_remote(source, cache, offline, timeout, found)
    path = local_catalog_path(source)
    return parse_catalog(read_small_text(path, "a model catalog", MAX_CATALOG_BYTES), path)


def read_catalogs(catalogs: list[str] | None, cache: Path, *, offline: bool, timeout: float) -> _Catalogs:
    """Every entry of ``catalogs`` (default: :func:`default_catalogs`), first listing of an id@version first."""
    found = _Catalogs()
    seen: dict[tuple, CatalogEntry] = {}
    if isinstance(catalogs, (str, os.PathLike)):  # one source given on its own, not its characters
        catalogs = [os.fspath(catalogs)]
    for source in default_catalogs() if catalogs is None else list(catalogs):
        try:
            entries = _read_one(str(source), cache, offline, timeout, found)
        except InputError as error:
            found.problems.append(f"catalog {_shown(str(source))}: {error}")
            continue
        for entry in entries:
            key = (entry.id, version_key(entry.version))
            if key not in seen:
                seen[key] = entry
                found.entries.append(entry)
            elif seen[key].sha256 != entry.sha256:
                found.problems.append(f"catalog {_shown(entry.catalog)}: model {entry.key} is listed by "
                                      f"{_shown(seen[key].catalog)} too, with another file; the first one is used")
    return found


def _modality_matches(stated: str, wanted: str) -> bool:
    """Case-insensitive, with the library's modality families (MR = MRI = T1 = ..., CT = CTA = ...)."""
    from MedAnalysisLib.data.datasets import modality_family

    families = modality_family(stated), modality_family(wanted)
    if None not in families:
        return families[0] == families[1]
    return stated.strip().casefold() == wanted.strip().casefold()


def _listing(entry: CatalogEntry, cache: Path, stale: str | None) -> ModelListing:
    folder = version_folder(cache, entry.id, entry.version)
    problem = cached_problem(folder, entry.size, entry.sha256)
    if problem is None:
        return ModelListing(entry, True, str(folder / BUNDLE_FILE), "cached")
    reasons = [r for r in (problem if problem != "not downloaded" else None, stale) if r]
    return ModelListing(entry, False, None, NEEDS_DOWNLOAD + (f" ({'; '.join(reasons)})" if reasons else ""))


def list_models(catalogs: list[str] | None = None, *, cache_dir: str | os.PathLike[str] | None = None,
                offline: bool = False, modality: str | None = None, timeout: float = 10.0) -> ModelList:
    """Every model version the catalogs list, sorted by id then newest version first, with its cache status.

    Args:
        catalogs: Paths or URLs; None means :func:`default_catalogs` (a list replaces it).
        cache_dir: The model cache (default :func:`model_cache_dir`).
        offline: Read remote catalogs only from their saved copies; nothing connects.
        modality: Keep only models of this modality (case-insensitive; MR, MRI, T1... are one family).
        timeout: Seconds to connect or wait for bytes from a catalog server.
    """
    cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    found = read_catalogs(catalogs, cache, offline=offline, timeout=timeout)
    entries = [e for e in found.entries if modality is None or _modality_matches(e.modality, modality)]
    entries.sort(key=lambda e: version_key(e.version), reverse=True)
    entries.sort(key=lambda e: e.id)  # stable: each id's newest version first
    return ModelList([_listing(e, cache, found.stale.get(e.catalog)) for e in entries], found.problems)


def split_reference(model_id: str, version: str | None) -> tuple[str, str | None]:
    """``("id", "1.0.0")`` from ``id@1.0.0`` (or ``id`` and ``version``), both checked."""
    if "@" in model_id:
        model_id, _, given = model_id.partition("@")
        if version is not None and version != given:
            raise InputError(f"expected one version, got {terminal_field(given)} in the id and "
                             f"{terminal_field(version)} as version")
        version = given
    return check_id(model_id), None if version is None else check_version(version)


def choose_entry(entries: list[CatalogEntry], model_id: str, version: str | None, problems: list[str]) -> CatalogEntry:
    """The entry for ``model_id`` at ``version`` (default: the highest); InputError naming what is listed."""
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
    return max(matches, key=lambda e: version_key(e.version))


def cached_path(model_id: str, *, version: str | None = None, catalogs: list[str] | None = None,
                cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The verified cached bundle of ``model_id`` (``id@version`` accepted), without any network.

    The version is ``version``, else the highest one the catalogs list (remote ones from their saved copies), else
    the highest one in the cache. The file is verified (size, sha256) against its catalog entry, or against its
    cache record when no catalog lists it any more.

    Raises:
        InputError: The model is not cached ("needs a download", with the command that fetches it), or its cached
            copy is corrupt.
    """
    model_id, version = split_reference(model_id, version)
    cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    listed = [e for e in read_catalogs(catalogs, cache, offline=True, timeout=0).entries if e.id == model_id]
    if version is None:
        versions = [e.version for e in listed] or cached_versions(cache, model_id)
        version = max(versions, key=version_key) if versions else None
    if version is None:
        raise InputError(f"expected model {model_id} in the cache, got none: it needs a download "
                         f"(medanalysis models pull {model_id})")
    entry = next((e for e in listed if version_key(e.version) == version_key(version)), None)
    if entry is None:  # no catalog lists it: the cached folder of an equal version (1.10 is 1.10.0)
        version = next((v for v in cached_versions(cache, model_id) if version_key(v) == version_key(version)),
                       version)
    folder = version_folder(cache, model_id, entry.version if entry else version)
    record = read_record(folder)
    if entry is None and record is not None and record["entry"].key == f"{model_id}@{folder.name}":
        entry = record["entry"]
    problem = "not downloaded" if entry is None else cached_problem(folder, entry.size, entry.sha256)
    if problem is not None:
        key = f"{model_id}@{version}"
        found = "none" if problem == "not downloaded" else f"none usable ({problem})"
        raise InputError(f"expected model {key} in the cache, got {found}: it needs a download "
                         f"(medanalysis models pull {key})")
    return folder / BUNDLE_FILE


__all__ = ["ModelList", "ModelListing", "cached_path", "choose_entry", "list_models", "read_catalogs",
           "split_reference"]
