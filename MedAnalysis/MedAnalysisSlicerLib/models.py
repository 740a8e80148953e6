"""The model picker's logic: catalog entries and local bundles side by side, downloads, and what a card shows.

Plain Python with no Qt import (the panel keeps the settings and calls these), so the same calls work from the Slicer
Python console::

    logic = slicer.util.getModuleLogic("MedAnalysis")
    listing = logic.listModels(offline=True, modality="CT")   # cached catalogs only: instant, no network
    job = logic.pullModel("organ-ct", version="1.0")          # a background download; job.wait(); logic.finishJob(job)
    path = logic.modelPath("organ-ct")                        # the verified cached bundle, or InputError

The catalog library (:mod:`MedAnalysisLib.catalog`) does the reading, the download and the sha256 check; this module
decides which catalogs to read (the built-in ones plus the user's), turns entries into picker rows and card text, and
starts ``medanalysis models pull`` as a background job so that the panel shows progress and can cancel it.
"""

from __future__ import annotations

import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.sanitize import html_text
from MedAnalysisLib.worker import WorkerJob

from .jobs import MedAnalysisJob
from .messages import displayText

try:  # Slicer's translation function where it exists; the text as it is elsewhere
    from slicer.i18n import tr as _
except ImportError:
    def _(text: str) -> str:
        return text


#: The most local bundles the picker remembers (most recent first).
RECENT_BUNDLES_LIMIT = 10
#: The longest catalog URL or path the settings accept.
CATALOG_SOURCE_LIMIT = 2000
#: Seconds one catalog may take to answer when the panel's Refresh lists with the network.
REFRESH_TIMEOUT_S = 5.0
#: Seconds the panel's Refresh waits for every catalog together; then it lists the saved copies (a trickling or
#: stalled server, or many catalogs, never holds Slicer longer).
REFRESH_BUDGET_S = 6.0
#: URL schemes a catalog may use; anything else with ``://`` is refused (a plain path is a local file).
CATALOG_SCHEMES = ("https://", "http://", "file://")


@dataclass
class PickerEntry:
    """One row of the model picker: a catalog entry or a local bundle.

    Attributes:
        kind: "catalog" or "local".
        key: What identifies it across refreshes: ``id@version`` or the bundle path.
        title, modality, task: Shown in the row (plain text, passed through :func:`displayText`).
        status: "cached", "needs a download", "local" or why a local bundle cannot be read.
        path: The bundle to use ("" when it must be downloaded first).
        listing: The catalog's :class:`~MedAnalysisLib.catalog.ModelListing` (catalog rows only).
    """

    kind: str
    key: str
    title: str
    modality: str
    task: str
    status: str
    path: str = ""
    listing: Any = None
    problems: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The row as the picker shows it: "Title (cached) - CT segmentation"; the status is cut to its first words
        (the whole status is the row's tooltip, :attr:`toolTip`) so that a narrow panel still shows it."""
        status = "needs a download" if self.status.startswith("needs a download") else self.status
        details = " ".join(part for part in (self.modality, self.task) if part)
        return f"{self.title} ({status}) \u2014 {details}" if details else f"{self.title} ({status})"

    @property
    def toolTip(self) -> str:
        return f"{self.title}: {self.status} ({self.key})"

    @property
    def needsDownload(self) -> bool:
        return self.kind == "catalog" and not self.path


def _normalModality(text: Any) -> str:
    text = str(text or "").strip().upper()
    return "MR" if text == "MRI" else text


def checkCatalogSource(text: Any) -> str:
    """A catalog URL or path as the settings keep it (stripped), or InputError saying why it cannot be one.

    Refused: empty text, control or invisible format characters (a URL that reads differently from what is
    fetched), more than :data:`CATALOG_SOURCE_LIMIT` characters, and URL schemes other than https, http and file.
    """
    if not isinstance(text, str):
        raise InputError(f"expected a catalog URL or path as text, got {type(text).__name__}")
    source = text.strip()
    if not source:
        raise InputError("expected a catalog URL or path, got an empty text")
    if len(source) > CATALOG_SOURCE_LIMIT:
        raise InputError(f"expected a catalog URL or path of at most {CATALOG_SOURCE_LIMIT} characters, got "
                         f"{len(source)}")
    hidden = [ch for ch in source if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")]
    if hidden:
        raise InputError(f"expected a catalog URL or path without control or invisible characters, got "
                         f"{displayText(source)}")
    if "://" in source and not source.lower().startswith(CATALOG_SCHEMES):
        raise InputError(f"expected an https, http or file catalog URL or a path, got {displayText(source)}")
    return source


class ModelCatalogLogic:
    """Catalog and local-bundle listing for :class:`~MedAnalysisSlicerLib.logic.SceneLogic` (a mixin).

    Attributes:
        extraCatalogs: The user's catalog URLs/paths (the panel keeps them in the ``MedAnalysis/ModelCatalogs``
            setting), read after the built-in catalogs.
        modelCacheDir: The model cache folder; None: the library's per-user folder.
    """

    extraCatalogs: list[str]
    modelCacheDir: str | None
    python: str
    #: Seconds the panel's Refresh waits for all catalogs together (:meth:`refreshModels`).
    refreshBudgetS: float = REFRESH_BUDGET_S

    @staticmethod
    def volumeModality(node) -> str:
        """The modality a volume node carries ("CT", "MR", ...; "MRI" read as "MR"), "" when none (NIfTI, NRRD)."""
        from MedAnalysisLib import slicer_adapter

        return _normalModality(slicer_adapter.volume_modality(node)) if node is not None else ""

    def catalogSources(self) -> list[str]:
        """The catalogs to read: the library's defaults, then :attr:`extraCatalogs` (duplicates once; one that
        cannot be a catalog is left out, see :meth:`catalogProblems`)."""
        from MedAnalysisLib.catalog import default_catalogs

        extra = [source for source, problem in self._checkedExtraCatalogs() if problem is None]
        return list(dict.fromkeys(str(source) for source in [*default_catalogs(), *extra]))

    def catalogProblems(self) -> list[str]:
        """Why each of :attr:`extraCatalogs` that cannot be a catalog is left out (settings edited by hand)."""
        return [problem for _, problem in self._checkedExtraCatalogs() if problem is not None]

    def _checkedExtraCatalogs(self) -> list[tuple[str, str | None]]:
        checked = []
        for source in list(self.extraCatalogs or [])[:100]:
            try:
                checked.append((checkCatalogSource(source), None))
            except InputError as error:
                checked.append(("", str(error)))
        return checked

    def listModels(self, offline: bool = True, modality: str | None = None, timeout: float = REFRESH_TIMEOUT_S,
                   deadline: float | None = None):
        """The catalog entries of every catalog (:class:`~MedAnalysisLib.catalog.ModelList`: ``models`` and one
        ``problems`` line per catalog that could not be read).

        Args:
            offline: True reads only what is cached (no network, instant); False asks each catalog's server.
            modality: Only entries for this modality ("CT", "MR", ...); None lists all.
            timeout: Seconds one catalog server may take.
            deadline: A ``time.monotonic()`` instant after which catalogs not read yet are listed from their saved
                copies.
        """
        from MedAnalysisLib.catalog import list_models

        listing = list_models(self.catalogSources(), cache_dir=self.modelCacheDir, offline=offline,
                              modality=_normalModality(modality) or None, timeout=timeout, deadline=deadline)
        listing.problems[:0] = self.catalogProblems()
        return listing

    def refreshModels(self, modality: str | None = None, budget: float | None = None):
        """The catalogs' listing asked of their servers, within ``budget`` seconds for all of them together.

        The servers are read in a helper thread; when they have not all answered in time, the saved copies are
        listed instead, with one problem line per remote catalog saying it was not reached (the helper thread is
        left to finish or time out on its own; it holds nothing of the scene). This is what the panel's Refresh
        calls, so a trickling or stalled server costs at most ``budget`` seconds (default :attr:`refreshBudgetS`),
        never minutes.
        """
        budget = self.refreshBudgetS if budget is None else budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 600:
            raise InputError(f"expected a refresh budget from 0 to 600 seconds, got {budget!r}")
        deadline = time.monotonic() + budget
        # the library's own deadline comes a little earlier, so that its answer (saved copies for the catalogs it
        # could not read) normally arrives in time; waiting here only bounds a library that overruns it
        libraryDeadline = deadline - min(0.5, budget / 4)
        found: dict[str, Any] = {}

        def read() -> None:
            try:
                found["listing"] = self.listModels(offline=False, modality=modality,
                                                   timeout=min(REFRESH_TIMEOUT_S, budget), deadline=libraryDeadline)
            except Exception as error:  # noqa: BLE001 - handed to the caller's thread
                found["error"] = error

        worker = threading.Thread(target=read, name="MedAnalysis catalog refresh", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        if "error" in found:
            raise found["error"]
        if "listing" in found:
            return found["listing"]
        listing = self.listModels(offline=True, modality=modality)
        remote = [source for source in self.catalogSources() if source.lower().startswith(("https://", "http://"))]
        listing.problems[:0] = [_("catalog {source}: not reached within {budget:g} s; listed from its saved copy")
                                .format(source=displayText(source), budget=budget) for source in remote]
        return listing

    def modelPath(self, modelId: str, version: str | None = None) -> str:
        """The verified cached bundle of a catalog model; InputError ("needs a download") when it is not cached."""
        from MedAnalysisLib.catalog import cached_path

        return str(cached_path(modelId, version=version, catalogs=self.catalogSources(),
                               cache_dir=self.modelCacheDir))

    def pullModel(self, modelId: str, version: str | None = None, *, background: bool = True):
        """Download a catalog model into the cache and check its sha256 before anything reads it.

        ``background=True`` (the panel) starts ``medanalysis models pull`` and returns a :class:`MedAnalysisJob`
        (progress in bytes with an ETA, Cancel through :meth:`MedAnalysisJob.requestStop`; :meth:`finishJob` gives
        ``{"bundlePath": ...}``). ``background=False`` downloads in this process and returns the bundle path.
        """
        if not isinstance(modelId, str) or not modelId.strip():
            raise InputError(f"expected a model id from the catalog, got {modelId!r}")
        if not background:
            from MedAnalysisLib.catalog import pull

            return str(pull(modelId, version=version, catalogs=self.catalogSources(), cache_dir=self.modelCacheDir))
        argv = ["models", "pull", f"{modelId}@{version}" if version else modelId]
        # "--catalog=<source>": a path that starts with "-" stays a value, never an option of the command
        argv += [f"--catalog={source}" for source in self.catalogSources()]
        from MedAnalysisLib.catalog.cache import CACHE_ENV

        env = {CACHE_ENV: str(self.modelCacheDir)} if self.modelCacheDir else None  # the command's cache setting
        return MedAnalysisJob("pull", WorkerJob(argv, python=self.python, env=env),
                              {"modelId": modelId, "version": version})

    def pulledBundlePath(self, result: dict) -> str:
        """The cached bundle named by a ``models pull`` result line, which must lie in the model cache (the panel
        opens it next)."""
        value = (result or {}).get("path")
        if not isinstance(value, str) or not value:
            raise InputError(f"expected the downloaded bundle's path in the result, got keys "
                             f"{sorted(str(key) for key in (result or {}))[:20]}")
        if not self.isCachedBundle(value):
            raise InputError(f"expected the downloaded bundle inside the model cache, got {displayText(value)}")
        return value

    # ------------------------------------------------------------------ picker rows
    def pickerEntries(self, recentBundles: list[str], *, offline: bool = True, modality: str | None = None,
                      budget: float | None = None) -> tuple[list[PickerEntry], list[str]]:
        """Catalog entries then local bundles, as picker rows, and the problems met (one line each).

        ``offline=False`` asks the servers within ``budget`` seconds in all (default :attr:`refreshBudgetS`; see
        :meth:`refreshModels`).

        A catalog that cannot be read does not hide the others or the local bundles: it becomes a problem line.
        ``modality`` keeps only rows for that modality (local bundles: their first input channel's).
        """
        problems: list[str] = []
        rows: list[PickerEntry] = []
        try:
            listing = (self.listModels(offline=True, modality=modality) if offline
                       else self.refreshModels(modality=modality, budget=budget))
        except Exception as error:  # noqa: BLE001 - one line in the panel, the local bundles still listed
            from .messages import errorText

            problems.append(errorText(error))
        else:
            problems += [displayText(problem) for problem in listing.problems]
            rows += [self._catalogRow(model) for model in listing.models]
        wanted = _normalModality(modality)
        for path in recentBundles:
            row = self.localEntry(path)
            if not wanted or _sameModality(row.modality, wanted):  # the families the catalog filter uses
                rows.append(row)
        return rows, problems

    @staticmethod
    def _catalogRow(model) -> PickerEntry:
        entry = model.entry
        path = str(model.path) if model.cached and model.path else ""
        return PickerEntry("catalog", f"{entry.id}@{entry.version}", displayText(entry.title or entry.id),
                           displayText(_normalModality(entry.modality)), displayText(entry.task),
                           displayText(model.status or ("cached" if path else "needs a download")), path, model)

    def localEntry(self, path: str) -> PickerEntry:
        """A local bundle as a picker row: its card's name, first channel's modality and task, or why it cannot be
        read (the row stays, so the user sees the bundle moved or broke)."""
        try:
            card = self.readModelCard(path)  # provided by SceneLogic
        except Exception as error:  # noqa: BLE001 - shown in the row
            from .messages import errorText

            return PickerEntry("local", str(path), displayText(Path(str(path)).name), "", "",
                               _("cannot be read: {error}").format(error=errorText(error))[:200], "")
        channels = card.input.get("channels") or [{}]
        return PickerEntry("local", str(path), displayText(card.name), displayText(_normalModality(
            channels[0].get("modality"))), displayText(card.task), _("local"), str(path))

    @staticmethod
    def rememberBundle(recent: list[str], path: str) -> list[str]:
        """``recent`` with ``path`` first (once), at most :data:`RECENT_BUNDLES_LIMIT` long."""
        path = str(path)
        return [path, *(p for p in recent if p != path)][:RECENT_BUNDLES_LIMIT]

    def isCachedBundle(self, path: str) -> bool:
        """True when ``path`` lies in the model cache (catalog downloads are listed from the catalog, not as recent
        local bundles)."""
        try:
            from MedAnalysisLib.catalog import model_cache_dir

            cache = Path(self.modelCacheDir) if self.modelCacheDir else Path(model_cache_dir())
            return Path(path).resolve().is_relative_to(cache.resolve())
        except (ImportError, OSError, ValueError):  # no catalog library: nothing is a cached download
            return False

    # ------------------------------------------------------------------ cards
    @staticmethod
    def catalogCardHtml(entry) -> str:
        """The card of a catalog entry not downloaded yet: its intended use first and prominent, then title,
        modality, task, labels, description, license, citation, download size and "needs a download". Every value
        is escaped with :func:`~MedAnalysisLib.sanitize.html_text`."""
        labels = ", ".join(str(label.get("name", label.get("value", ""))) for label in (entry.labels or ())
                           if isinstance(label, dict))
        rows = [
            (_("Name"), entry.title or entry.id),
            (_("Version"), entry.version),
            (_("Task"), f"{entry.task} ({_normalModality(entry.modality)}"
                        + (f", {entry.body_part})" if entry.body_part else ")")),
            (_("Labels"), labels),
            (_("About"), entry.description),
            (_("License"), entry.license),
            (_("Citation"), entry.citation),
            (_("Download"), _("{size}, needs a download").format(size=_sizeText(entry.size))),
            (_("Catalog"), catalogText(entry.catalog)),
        ]
        from .logic import useStatementHtml

        return (useStatementHtml(_("Intended use"), entry.intended_use)
                + "<table>" + "".join(f"<tr><td><b>{k}:</b>&nbsp;</td><td>{html_text(v, 2000)}</td></tr>"
                                      for k, v in rows if v not in (None, "")) + "</table>")


def catalogText(source: Any) -> str:
    """Where an entry comes from, for people: "shipped with MedAnalysis" for the catalog inside the library (its
    installed path says nothing to a reader), else the catalog's URL or path."""
    try:
        from MedAnalysisLib.catalog.sources import DEFAULT_CATALOG
    except ImportError:  # the library is not installed yet: show the source as it is
        return str(source or "")
    if source and str(source) == str(DEFAULT_CATALOG):
        return _("shipped with MedAnalysis")
    return str(source or "")


def _sizeText(size: int) -> str:
    """A catalog entry's size as the command line shows it ("1.3 MiB")."""
    from MedAnalysisLib.io.validate import format_bytes

    return format_bytes(size)


def _sameModality(stated: str, wanted: str) -> bool:
    """A local bundle's modality against the volume's, with the catalog filter's modality families (T2 is MR)."""
    try:
        from MedAnalysisLib.catalog.listing import modality_matches
    except ImportError:  # the library is not installed yet: compare the names
        return stated == wanted
    return modality_matches(stated, wanted)
