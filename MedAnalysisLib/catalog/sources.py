"""Where catalogs come from, and where their entries may point.

A catalog source is a local path (a file, also as a ``file:`` URL of this machine) or an ``http(s)`` URL. :func:`default_catalogs` gives the one shipped
with MedAnalysis followed by the ones named in ``MEDANALYSIS_CATALOGS``.

The URL policy, which every catalog and entry URL and every redirect passes:

* only ``http`` and ``https``; ``file:``, ``ftp:``, ``data:``, ``javascript:`` and every other scheme are refused;
* no credentials in a URL (``user:password@host``): they would end up in records and messages;
* plain ``http`` only to a loopback host (``localhost``, ``127.0.0.0/8``, ``::1``), decided from the URL's text
  before anything connects: anything leaving the machine must use ``https``;
* an entry of a *remote* catalog must have the catalog's own origin (scheme, host, port); relative URLs resolve
  against the URL the catalog was finally read from after its same-origin redirects (as a browser does), and the
  entries returned hold them resolved;
* an entry of a *local* catalog is either an absolute ``http(s)`` URL or a relative path that stays inside the
  catalog's folder: no absolute path, no drive letter, no backslash, no ``..``, and no link leading out.

This module only reads text and paths; the network is in :mod:`MedAnalysisLib.catalog.download`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

from MedAnalysisLib.catalog.schema import MAX_URL_LENGTH, CatalogEntry, parse_catalog_document
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.sanitize import terminal_field

#: The catalog shipped with MedAnalysis (model files it lists lie beside it).
DEFAULT_CATALOG = Path(__file__).resolve().with_name("default_catalog.json")
#: Extra catalogs: paths or URLs separated by ``os.pathsep``.
CATALOGS_ENV = "MEDANALYSIS_CATALOGS"
WEB_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

#: The start of a web URL inside a ``:``-separated list, through its host and port (whose colons do not separate).
_LISTED_WEB = re.compile(r"https?://(\[[^\]/]*\]|[^/:\[]*)(:\d*)?", re.IGNORECASE)
#: What starts a new source after a ``:`` inside a web URL's path: nothing (the end, or an empty item), a path
#: (``/``, ``~``, ``.``) or a URL scheme. Any other colon (``/models/v1:2/c.json``) is part of the URL.
_NEW_SOURCE = re.compile(r"\s*(?:$|:|[/~.]|[A-Za-z][A-Za-z0-9+.-]+:)")


def _listed_end(text: str, position: int) -> int:
    """Where the source starting at ``position`` ends (the index of its separating ``:``, or the text's end)."""
    web = _LISTED_WEB.match(text, position)
    if web is None:
        file_url = re.match(r"file:", text[position:], re.IGNORECASE)
        end = text.find(":", position + (5 if file_url else 0))
        return len(text) if end < 0 else end
    end = web.end()
    while (end := text.find(":", end)) >= 0:
        if _NEW_SOURCE.match(text, end + 1):
            return end
        end += 1
    return len(text)


def split_catalog_list(text: str, separator: str = os.pathsep) -> list[str]:
    """The sources in a ``MEDANALYSIS_CATALOGS`` value, each stripped of spaces. With ``:`` as the separator
    (POSIX), the colons of an http(s) URL's scheme and port and of a ``file:`` URL's scheme stay inside the URL
    (``http://127.0.0.1:8000/c.json:file:///srv/c.json`` is two sources), and so does a colon in a web URL's path
    unless what follows starts a new source (a path beginning ``/``, ``~`` or ``.``, or a URL):
    ``https://h.org/v1:2/c.json`` is one source; write a relative path after a URL as ``./c.json``. With ``;``
    (Windows) nothing else is special, so drive letters (``C:\\m\\c.json``) and ``file:///C:/m/c.json`` stay
    whole."""
    if separator != ":":
        return [item.strip() for item in text.split(separator) if item.strip()]
    items, position = [], 0
    while position < len(text):
        while position < len(text) and text[position].isspace():
            position += 1  # spaces after a separator: the next source starts after them
        end = _listed_end(text, position)
        items.append(text[position:end].strip())
        position = end + 1
    return [item for item in items if item]


def default_catalogs() -> list[str]:
    """The shipped catalog, then every source in ``MEDANALYSIS_CATALOGS`` (``os.pathsep``-separated)."""
    return [str(DEFAULT_CATALOG), *split_catalog_list(os.environ.get(CATALOGS_ENV, ""))]


def _scheme(text: str) -> str:
    """The URL scheme of ``text`` in lower case, or "" for a plain path (a one-letter scheme is a drive letter)."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", text)
    return match.group(1).lower() if match and len(match.group(1)) > 1 else ""


def is_remote(source: str) -> bool:
    """Whether a catalog source is a web URL (``http``/``https``); a ``file:`` URL is a local catalog, any other
    scheme is refused."""
    scheme = _scheme(source)
    if scheme and scheme not in (*WEB_SCHEMES, "file"):
        raise InputError(f"expected a catalog path, a file: URL or an http(s) URL, got a {terminal_field(scheme)}: "
                         "URL")
    return scheme in WEB_SCHEMES


def local_catalog_path(source: str) -> str:
    """The absolute path of a local catalog source: a path, or a ``file:`` URL of this machine (a catalog the user
    named; catalog *entries* may never use ``file:``)."""
    if _scheme(source) != "file":
        return os.path.abspath(source)
    parts = urlsplit(source)
    if parts.netloc not in ("", "localhost"):
        raise InputError(f"expected a file: URL of this machine (file:///path), got {terminal_field(source, 200)}")
    if not parts.path.strip("/"):
        raise InputError(f"expected a file: URL naming a catalog file (file:///path), got {terminal_field(source, 200)}")
    return os.path.abspath(url2pathname(parts.path))


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine, from its text alone (no name lookup)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Origin:
    """Scheme, host and port of a URL: what "the same origin" compares."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def check_web_url(url: str, what: str = "a URL") -> Origin:
    """Refuse a URL the policy forbids (see the module docstring) and return its origin; nothing connects."""
    shown = terminal_field(url, 200)
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise InputError(f"expected {what} of at most {MAX_URL_LENGTH} characters, got a longer one")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InputError(f"expected {what} that parses, got {shown}: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in WEB_SCHEMES:
        raise InputError(f"expected {what} with http or https, got {shown}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InputError(f"expected {what} without credentials (user:password@), got one with them")
    host = (parts.hostname or "").lower()
    if not host:
        raise InputError(f"expected {what} naming a host, got {shown}")
    if scheme == "http" and not is_loopback(host):
        raise InputError(f"expected {what} to use https (plain http is allowed only to this machine: localhost, "
                         f"127.0.0.1, ::1), got {shown}")
    return Origin(scheme, host, port or DEFAULT_PORTS[scheme])


@dataclass(frozen=True)
class Location:
    """Where one entry URL points once resolved: a web URL (``url``, ``origin``) or a local file (``path``)."""

    url: str = ""
    origin: Origin | None = None
    path: Path | None = None

    def __str__(self) -> str:
        return self.url or str(self.path)


def catalog_folder(source: str) -> Path:
    """The folder a local catalog's relative paths are confined to (links resolved)."""
    return Path(source).resolve().parent


def _relative_path_problem(text: str) -> str | None:
    """Why ``text`` is not a plain relative path below a catalog's folder (None when it is one)."""
    if not text:
        return "an empty path"
    if text.startswith("~"):
        return "a path from the home folder ('~' is not expanded)"
    if text.startswith("/") or re.match(r"[A-Za-z]:", text):
        return "an absolute path"
    if "\\" in text:
        return "a path with backslashes (use '/')"
    if ".." in PurePosixPath(text).parts:
        return "a path with '..'"
    if _scheme(text):
        return f"a {terminal_field(_scheme(text))}: URL"
    return None


def _confined_path(text: str, source: str) -> Path:
    """The file a relative path in a local catalog names, confined to the catalog's folder."""
    shown = terminal_field(text, 200)
    problem = _relative_path_problem(text)
    if problem is not None:
        raise InputError(f"expected an entry path of a local catalog relative to the catalog's folder, got "
                         f"{problem}: {shown}")
    folder = catalog_folder(source)
    target = (folder / text).resolve()
    if not target.is_relative_to(folder):
        raise InputError(f"expected an entry path of a local catalog to stay inside the catalog's folder, got "
                         f"{shown}, which leads outside it (a link?)")
    return target


def resolve_entry_url(url: str, source: str, base: str | None = None) -> Location:
    """Where ``url`` (from the catalog at ``source``) points, after the policy of the module docstring.

    ``base`` is where the remote catalog was finally read after its redirects (as a browser resolves relative
    links); it must have the catalog's own origin, which every entry URL must keep.

    Raises:
        InputError: A forbidden scheme, credentials, plain http off this machine, another origin than a remote
            catalog's, or a local path leaving the catalog's folder.
    """
    scheme = _scheme(url)
    if is_remote(source):
        catalog_origin = check_web_url(source, "a catalog URL")
        if scheme and scheme not in WEB_SCHEMES:
            raise InputError(f"expected entry URLs of a remote catalog to use http(s), got a "
                             f"{terminal_field(scheme)}: URL")
        if base is not None and check_web_url(base, "a catalog URL") != catalog_origin:
            raise InputError(f"expected a catalog read on its own origin {catalog_origin}, got it from "
                             f"{terminal_field(base, 200)}")
        absolute = urljoin(base or source, url)
        origin = check_web_url(absolute, "an entry URL")
        if origin != catalog_origin:
            raise InputError(f"expected entry URLs on the catalog's own origin {catalog_origin}, got one on "
                             f"{origin} ({terminal_field(absolute, 200)})")
        return Location(url=absolute, origin=origin)
    if scheme in WEB_SCHEMES:
        return Location(url=url, origin=check_web_url(url, "an entry URL"))
    if scheme:
        raise InputError(f"expected an http(s) URL or a relative path in a local catalog, got a "
                         f"{terminal_field(scheme)}: URL")
    return Location(path=_confined_path(url, source))


def parse_catalog(text: bytes | str, source: str, base: str | None = None) -> list[CatalogEntry]:
    """The entries of the catalog text read from ``source`` (its URL, or its path), validated: the schema, and
    every entry URL against the policy for that source. A catalog with one bad entry is refused as a whole.

    A remote catalog's entry URLs are returned resolved (absolute), against ``base`` (the URL the catalog was
    finally read from after same-origin redirects) or else ``source``.

    Raises:
        InputError: What was expected and what was found.
    """
    _name, entries = parse_catalog_document(text, source)
    remote = is_remote(source)
    resolved = []
    for entry in entries:
        urls = []
        for url in entry.urls:
            try:
                urls.append(resolve_entry_url(url, source, base))
            except InputError as error:
                raise InputError(f"model {entry.key} in the catalog: {error}") from None
        if remote:
            entry = replace(entry, urls=tuple(str(location) for location in urls))
        resolved.append(entry)
    return resolved


__all__ = ["CATALOGS_ENV", "DEFAULT_CATALOG", "Location", "Origin", "check_web_url", "default_catalogs",
           "is_loopback", "is_remote", "local_catalog_path", "parse_catalog", "resolve_entry_url", "split_catalog_list"]
