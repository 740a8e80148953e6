"""The catalog file: its schema, and the validated :class:`CatalogEntry` each listed model version becomes.

A catalog is a small JSON object, ``{"schema_version": 1, "name": ..., "models": [entry, ...]}``, written by
whoever publishes models (the project's shipped catalog, a hospital's own registry). It comes from a file or a
server someone else controls, so it is read as hostile: size- and depth-capped parsing (the library's one JSON
reader, :mod:`MedAnalysisLib.io.small_files`), no NaN or Infinity, no unknown keys, every value checked against its
type and bounds, text limited in length and to printable characters (the long free-text fields may hold line
breaks), ids and versions limited to characters that are safe as folder names. Every refusal is an
:class:`~MedAnalysisLib.errors.InputError` saying what was expected and what was found.

Where entry URLs may point is decided with the catalog's own location (:mod:`MedAnalysisLib.catalog.sources`).
This module imports only the standard library and the library's small-file reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.io.small_files import parse_json_text
from MedAnalysisLib.sanitize import terminal_field

#: The schema version this library reads and writes.
CATALOG_SCHEMA_VERSION = 1
#: Largest catalog text: an entry is about a kilobyte, so this holds thousands.
MAX_CATALOG_BYTES = 4 * 1024**2
#: Deepest nesting a catalog needs is three levels (catalog, models list, entry, labels list, label: five).
MAX_CATALOG_DEPTH = 6
#: Most entries in one catalog.
MAX_MODELS = 2000
#: Largest bundle a catalog may announce (the bundle reader's own archive limit).
MAX_BUNDLE_BYTES = 4 * 1024**3
#: Most download locations (mirrors) per entry, and the longest one.
MAX_URLS, MAX_URL_LENGTH = 8, 2048
#: Most labels per entry (a bundle's own limit on output classes).
MAX_LABELS = 1024
#: Longest label value (a uint16 label map).
MAX_LABEL_VALUE = 65535

TASKS = ("segmentation", "classification")
ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: Tags are lower case only: ``1.0-RC1`` and ``1.0-rc1`` would share a folder on a case-insensitive file system.
VERSION_RE = re.compile(r"(\d{1,9})(\.\d{1,9}){0,3}(-[0-9a-z][0-9a-z.]{0,31})?")
#: Names Windows reserves for devices, with or without an extension (``nul``, ``con.txt``, ``com1.x``).
WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{n}" for n in range(10)),
                             *(f"lpt{n}" for n in range(10))})
SHA256_RE = re.compile(r"[0-9a-f]{64}")

#: Text fields of an entry: the longest each may be, and whether it may hold line breaks.
TEXT_FIELDS: dict[str, tuple[int, bool]] = {
    "title": (200, False), "modality": (64, False), "body_part": (64, False), "license": (200, False),
    "description": (4000, True), "citation": (2000, True), "intended_use": (4000, True),
}
ENTRY_KEYS = frozenset({"id", "version", "title", "task", "modality", "body_part", "labels", "description",
                        "license", "intended_use", "size", "sha256", "urls"})
OPTIONAL_ENTRY_KEYS = frozenset({"citation"})
CATALOG_KEYS = frozenset({"schema_version", "name", "models"})
MAX_NAME = 200


def _shown(value: Any, limit: int = 80) -> str:
    """A value quoted for a message: one line, control characters escaped, long values cut."""
    return terminal_field(repr(value), limit)


def check_text(where: str, value: Any, limit: int, multiline: bool = False, required: bool = True) -> str:
    """``value`` as printable text of at most ``limit`` characters (line breaks only where ``multiline``)."""
    if not isinstance(value, str):
        raise InputError(f"expected {where} to be text, got {type(value).__name__}")
    if required and not value.strip():
        raise InputError(f"expected {where} to be non-empty text, got {_shown(value)}")
    if len(value) > limit:
        raise InputError(f"expected {where} of at most {limit} characters, got {len(value)}")
    body = value.replace("\n", "") if multiline else value
    if not body.isprintable():
        breaks = "printable characters and line breaks" if multiline else "printable characters on one line"
        raise InputError(f"expected {where} of {breaks}, got {_shown(value)}")
    return value


def check_int(where: str, value: Any, low: int, high: int) -> int:
    """``value`` as an integer in ``[low, high]`` (booleans and floats are refused)."""
    if type(value) is not int:
        raise InputError(f"expected {where} to be an integer, got {type(value).__name__} {_shown(value)}")
    if not low <= value <= high:
        raise InputError(f"expected {where} between {low} and {high}, got {value}")
    return value


def check_id(value: Any, where: str = "a model id") -> str:
    """A model id: 1 to 64 of ``a-z 0-9 . _ -``, starting with a letter or digit, not ending in ``.`` and not a
    Windows device name (``con``, ``nul``, ``lpt1``...), so that it is a folder name on every system."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise InputError(f"expected {where} of 1 to 64 characters a-z, 0-9, '.', '_', '-' starting with a letter "
                         f"or digit, got {_shown(value)}")
    _check_folder_name(value, where)
    return value


def _check_folder_name(value: str, where: str) -> None:
    """Refuse names Windows cannot create as folders: a trailing ``.`` (silently dropped) or a device name."""
    if value.endswith("."):
        raise InputError(f"expected {where} not ending in '.' (Windows drops it from folder names), got "
                         f"{_shown(value)}")
    if value.split(".", 1)[0] in WINDOWS_DEVICES:
        raise InputError(f"expected {where} that is not a Windows device name (con, prn, aux, nul, com0-9, "
                         f"lpt0-9), got {_shown(value)}")


def check_version(value: Any, where: str = "a model version") -> str:
    """A plain version: up to four dot-separated numbers, optionally ``-`` and a lower-case tag (``1.0.0``,
    ``2.1-rc1``), not ending in ``.``."""
    if not isinstance(value, str) or not VERSION_RE.fullmatch(value):
        raise InputError(f"expected {where} like 1.0.0 (numbers and dots, optionally - and a tag of a-z, 0-9 and "
                         f"dots), got {_shown(value)}")
    _check_folder_name(value, where)
    return value


def _tag_key(tag: str) -> tuple[tuple[int, int, str], ...]:
    """A tag compared part by part, its numbers as numbers (``rc2`` before ``rc10``; a number before text)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.findall(r"\d+|[^\d.]+", tag.casefold()))


def version_key(version: str) -> tuple[tuple[int, ...], int, tuple[tuple[int, int, str], ...]]:
    """Sort key comparing versions numerically (``1.10`` after ``1.9``; ``1.0`` equals ``1.0.0``; ``2.0-rc2``
    before ``2.0-rc10``); a tagged version (``2.0-rc1``) comes before the same version without a tag."""
    numbers, _, tag = version.partition("-")
    parts = [int(part) for part in numbers.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts), 0 if tag else 1, _tag_key(tag)


def canonical_version(version: str) -> str:
    """The one spelling of a version that names its cache folder: every spelling :func:`version_key` finds equal
    gives the same text, and different versions give different texts. At least three numbers, without leading
    zeros or trailing ``.0`` beyond the third (``1.0`` and ``1.0.0`` give ``1.0.0``, ``1.2.3.0`` gives ``1.2.3``);
    the tag's numbers without leading zeros, a dot only between two numbers or two words (``rc.01`` and ``rc1``
    give ``rc1``)."""
    numbers, tag_parts = version_key(version)[0], _tag_key(version.partition("-")[2])
    text = ".".join(str(n) for n in (*numbers, 0, 0)[:max(3, len(numbers))])
    tag, previous = "", None
    for kind, number, word in tag_parts:
        tag += ("." if kind == previous else "") + (str(number) if kind == 0 else word)
        previous = kind
    return f"{text}-{tag}" if tag else text


def _check_labels(where: str, value: Any) -> tuple[dict, ...]:
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_LABELS:
        raise InputError(f"expected {where} to be a list of 1 to {MAX_LABELS} labels, got {_shown(value)}")
    labels = []
    for label in value:
        if not isinstance(label, dict) or set(label) != {"value", "name"}:
            raise InputError(f"expected each label in {where} to be {{\"value\": int, \"name\": text}}, got "
                             f"{_shown(label)}")
        labels.append({"value": check_int(f"a label value in {where}", label["value"], 0, MAX_LABEL_VALUE),
                       "name": check_text(f"a label name in {where}", label["name"], 128)})
    values = [label["value"] for label in labels]
    if len(set(values)) != len(values):
        raise InputError(f"expected distinct label values in {where}, got {values[:20]}")
    return tuple(labels)


def _check_urls(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_URLS:
        raise InputError(f"expected {where} to be a list of 1 to {MAX_URLS} URLs, got {_shown(value)}")
    return tuple(check_text(f"a URL in {where}", url, MAX_URL_LENGTH) for url in value)


@dataclass(frozen=True)
class CatalogEntry:
    """One model version in a catalog; validated on construction (types, bounds, lengths, printable text).

    Attributes:
        id: The model's id, ``[a-z0-9][a-z0-9._-]{0,63}`` (a folder name in the cache).
        version: A plain version (``1.0.0``); compared numerically (:func:`version_key`).
        title, task, modality, body_part: What the model is; ``task`` is ``segmentation`` or ``classification``.
        labels: ``({"value": int, "name": str}, ...)``: what the bundle must state, checked after download.
        description, license, citation, intended_use: The model card's text.
        size: Bytes of the bundle file (.zip); a download is cut off as soon as more arrive.
        sha256: 64 lowercase hex digits; checked before anything reads the downloaded file.
        urls: One or more locations, tried in order (see :mod:`MedAnalysisLib.catalog.sources` for what may be
            named).
        catalog: Where the entry came from (the catalog's URL or path), filled in by the reader.
    """

    id: str
    version: str
    title: str
    task: str
    modality: str
    body_part: str
    labels: tuple[dict, ...]
    description: str
    license: str
    citation: str
    intended_use: str
    size: int
    sha256: str
    urls: tuple[str, ...]
    catalog: str = ""

    def __post_init__(self) -> None:
        check_id(self.id)
        where = f"model {self.id}"
        check_version(self.version, f"the version of {where}")
        where = f"model {self.id}@{self.version}"
        for name, (limit, multiline) in TEXT_FIELDS.items():
            check_text(f"{name} of {where}", getattr(self, name), limit, multiline, required=name != "citation")
        if self.task not in TASKS:
            raise InputError(f"expected task of {where} to be one of {', '.join(TASKS)}, got {_shown(self.task)}")
        object.__setattr__(self, "labels", _check_labels(f"labels of {where}", self.labels))
        check_int(f"size of {where}", self.size, 1, MAX_BUNDLE_BYTES)
        if not isinstance(self.sha256, str) or not SHA256_RE.fullmatch(self.sha256):
            raise InputError(f"expected sha256 of {where} to be 64 lowercase hex digits, got {_shown(self.sha256)}")
        object.__setattr__(self, "urls", _check_urls(f"urls of {where}", self.urls))
        check_text(f"the catalog of {where}", self.catalog, MAX_URL_LENGTH, required=False)

    @property
    def key(self) -> str:
        """``id@version``, how commands and messages name this entry."""
        return f"{self.id}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """The entry as its catalog states it (plus ``catalog``), JSON-ready."""
        data = {name: getattr(self, name) for name in sorted(ENTRY_KEYS | OPTIONAL_ENTRY_KEYS)}
        data.update(labels=[dict(label) for label in self.labels], urls=list(self.urls), catalog=self.catalog)
        return data

    @classmethod
    def from_dict(cls, data: Any, catalog: str = "") -> CatalogEntry:
        """Build from one ``models`` item of a catalog; unknown or missing keys are refused."""
        if not isinstance(data, dict):
            raise InputError(f"expected each model in the catalog to be an object, got {type(data).__name__}")
        missing = sorted(ENTRY_KEYS - set(data))
        unknown = sorted(set(data) - ENTRY_KEYS - OPTIONAL_ENTRY_KEYS)
        shown_id = data.get("id") if isinstance(data.get("id"), str) else "?"
        if missing or unknown:
            raise InputError(f"expected the keys {sorted(ENTRY_KEYS)} (and optionally citation) in model "
                             f"{_shown(shown_id)}, got missing {missing} and unknown {_shown(unknown, 200)}")
        return cls(**{**data, "citation": data.get("citation", ""), "catalog": catalog})


def parse_catalog_document(text: bytes | str, source: str) -> tuple[str, list[CatalogEntry]]:
    """``(name, entries)`` of a catalog text; no URL policy (see :func:`MedAnalysisLib.catalog.parse_catalog`)."""
    what = f"a model catalog ({terminal_field(source, 200)})"
    if isinstance(text, bytes):
        if len(text) > MAX_CATALOG_BYTES:
            raise InputError(f"expected {what} of at most {MAX_CATALOG_BYTES} bytes, got {len(text)}")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise InputError(f"expected UTF-8 text in {what}, got undecodable bytes at offset {error.start}") \
                from None
    data = parse_json_text(text, what, max_depth=MAX_CATALOG_DEPTH, max_chars=MAX_CATALOG_BYTES)
    if not isinstance(data, dict):
        raise InputError(f"expected {what} to be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if type(version) is not int or version != CATALOG_SCHEMA_VERSION:
        newer = " (written for a newer MedAnalysis)" if type(version) is int and version > CATALOG_SCHEMA_VERSION \
            else ""
        raise InputError(f"expected catalog schema_version {CATALOG_SCHEMA_VERSION} in {what}, got "
                         f"{_shown(version)}{newer}")
    if set(data) != CATALOG_KEYS:
        raise InputError(f"expected exactly the keys {sorted(CATALOG_KEYS)} in {what}, got {_shown(sorted(data))}")
    name = check_text(f"the name of {what}", data["name"], MAX_NAME)
    models = data["models"]
    if not isinstance(models, list) or len(models) > MAX_MODELS:
        raise InputError(f"expected the models of {what} to be a list of at most {MAX_MODELS}, got "
                         f"{type(models).__name__} of {len(models) if isinstance(models, list) else '-'}")
    entries = [CatalogEntry.from_dict(item, source) for item in models]
    seen: dict[tuple[str, tuple], CatalogEntry] = {}
    for entry in entries:
        key = (entry.id, version_key(entry.version))
        if key in seen:
            first = seen[key].key
            twice = f"{entry.key} twice" if first == entry.key else f"{first} and {entry.key} (one version)"
            raise InputError(f"expected each id and version once in {what}, got {twice}")
        seen[key] = entry
    return name, entries


__all__ = ["CATALOG_SCHEMA_VERSION", "CatalogEntry", "MAX_CATALOG_BYTES", "canonical_version", "check_id", "check_version",
           "parse_catalog_document", "version_key"]
