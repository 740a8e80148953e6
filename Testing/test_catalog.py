"""The model catalog without a server: the schema and what hostile catalogs are refused with, the URL policy for
remote and local catalogs, versions, the cache folder and its layout, offline listing, corrupt cached files, and
the empty shipped catalog on the command line. (The loopback-server tests are in ``test_catalog_http.py``.)"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_cli import ROOT
from helpers_http import real_bundle_zip

from MedAnalysisLib.catalog import (
    CATALOG_SCHEMA_VERSION,
    CatalogEntry,
    cached_path,
    default_catalogs,
    list_models,
    model_cache_dir,
    parse_catalog,
    pull,
)
from MedAnalysisLib.catalog.schema import version_key
from MedAnalysisLib.catalog.sources import DEFAULT_CATALOG, resolve_entry_url, split_catalog_list
from MedAnalysisLib.errors import InputError

SHA = "ab" * 32


def good_entry(**overrides: object) -> dict:
    return {"id": "liver-ct", "version": "1.0.0", "title": "Liver (CT)", "task": "segmentation", "modality": "CT",
            "body_part": "abdomen", "labels": [{"value": 0, "name": "background"}, {"value": 1, "name": "liver"}],
            "description": "Segments the liver.\nPortal venous phase.", "license": "CC-BY-4.0",
            "intended_use": "Research only.", "size": 1234, "sha256": SHA, "urls": ["liver.zip"], **overrides}


def catalog_text(*entries: dict, **top: object) -> str:
    return json.dumps({"schema_version": 1, "name": "test", "models": list(entries), **top})


def test_a_good_catalog_parses_into_validated_entries(tmp_path: Path) -> None:
    source = str(tmp_path / "catalog.json")
    [entry] = parse_catalog(catalog_text(good_entry(citation="Doe et al. 2026")), source)
    assert CATALOG_SCHEMA_VERSION == 1
    assert (entry.key, entry.catalog, entry.citation, entry.labels[1]) == (
        "liver-ct@1.0.0", source, "Doe et al. 2026", {"value": 1, "name": "liver"})
    again = CatalogEntry.from_dict({k: v for k, v in entry.to_dict().items() if k != "catalog"}, source)
    assert again == entry
    assert parse_catalog(catalog_text(good_entry()).encode("utf-8"), source)[0].citation == ""


#: (what, a change to the catalog text, the message expected)
HOSTILE = [
    ("not an object", lambda e: "[]", "to be a JSON object, got list"),
    ("newer schema", lambda e: catalog_text(e, schema_version=2).replace('"schema_version": 1, ', "", 1),
     r"expected catalog schema_version 1 .*got 2 \(written for a newer MedAnalysis\)"),
    ("schema as text", lambda e: catalog_text(e).replace('"schema_version": 1', '"schema_version": "1"'),
     "expected catalog schema_version 1 .*got '1'"),
    ("unknown top key", lambda e: catalog_text(e, extra=1), "expected exactly the keys"),
    ("unknown entry key", lambda e: catalog_text({**e, "script": "rm"}), r"unknown \['script'\]"),
    ("reader-filled key", lambda e: catalog_text({**e, "catalog": "x"}), r"unknown \['catalog'\]"),
    ("missing key", lambda e: catalog_text({k: v for k, v in e.items() if k != "sha256"}), r"missing \['sha256'\]"),
    ("size as text", lambda e: catalog_text({**e, "size": "12"}), "expected size of model .* integer, got str"),
    ("size as float", lambda e: catalog_text({**e, "size": 1.5}), "integer, got float"),
    ("size as bool", lambda e: catalog_text({**e, "size": True}), "integer, got bool"),
    ("size zero", lambda e: catalog_text({**e, "size": 0}), "between 1 and 4294967296, got 0"),
    ("size huge", lambda e: catalog_text({**e, "size": 2**40}), "between 1 and 4294967296"),
    ("NaN", lambda e: catalog_text({**e, "size": 0}).replace('"size": 0', '"size": NaN'), "standard JSON"),
    ("Infinity", lambda e: catalog_text({**e, "size": 0}).replace('"size": 0', '"size": Infinity'), "standard JSON"),
    ("deep nesting", lambda e: catalog_text({**e, "description": [[[[[[["x"]]]]]]]}), "nested deeper than 6"),
    ("very deep nesting", lambda e: "[" * 100_000 + "]" * 100_000, "nested deeper than 6"),
    ("huge", lambda e: catalog_text({**e, "description": "x" * (4 * 1024**2)}), "of at most 4194304 characters"),
    ("models not a list", lambda e: catalog_text().replace("[]", "{}"), "to be a list of at most 2000"),
    ("too many models", lambda e: catalog_text(*[{**e, "version": f"1.{n}"} for n in range(2001)]),
     "list of at most 2000, got list of 2001"),
    ("duplicate", lambda e: catalog_text(e, e), "each id and version once .*liver-ct@1.0.0 twice"),
    ("duplicate 1.0 and 1.0.0", lambda e: catalog_text(e, {**e, "version": "1.0"}), "each id and version once"),
    ("title too long", lambda e: catalog_text({**e, "title": "x" * 201}), "title of .* at most 200 characters"),
    ("escape in title", lambda e: catalog_text({**e, "title": "\x1b[2J"}), r"printable characters on one line, "
                                                                           r"got '\\x1b\[2J'"),
    ("bidi override", lambda e: catalog_text({**e, "title": "exe.\u202elive"}), "printable characters on one line"),
    ("line break in title", lambda e: catalog_text({**e, "title": "a\nb"}), "printable characters on one line"),
    ("escape in description", lambda e: catalog_text({**e, "description": "a\n\x1b]0;x\x07"}),
     "printable characters and line breaks"),
    ("empty title", lambda e: catalog_text({**e, "title": " "}), "title of .* non-empty text"),
    ("task", lambda e: catalog_text({**e, "task": "detection"}), "segmentation, classification, got 'detection'"),
    ("labels not a list", lambda e: catalog_text({**e, "labels": {"0": "bg"}}), "list of 1 to 1024 labels"),
    ("label extra key", lambda e: catalog_text({**e, "labels": [{"value": 0, "name": "a", "color": 1}]}),
     "each label .* to be"),
    ("label value negative", lambda e: catalog_text({**e, "labels": [{"value": -1, "name": "a"}]}),
     "between 0 and 65535, got -1"),
    ("label value text", lambda e: catalog_text({**e, "labels": [{"value": "1", "name": "a"}]}), "integer, got str"),
    ("label values twice", lambda e: catalog_text({**e, "labels": [{"value": 1, "name": "a"}, {"value": 1, "name": "b"}]}),
     "distinct label values"),
    ("sha upper case", lambda e: catalog_text({**e, "sha256": SHA.upper()}), "64 lowercase hex digits"),
    ("sha short", lambda e: catalog_text({**e, "sha256": SHA[:-1]}), "64 lowercase hex digits"),
    ("no urls", lambda e: catalog_text({**e, "urls": []}), "list of 1 to 8 URLs"),
    ("too many urls", lambda e: catalog_text({**e, "urls": ["a.zip"] * 9}), "list of 1 to 8 URLs"),
    ("url not text", lambda e: catalog_text({**e, "urls": [1]}), "a URL in urls of .* to be text, got int"),
    ("url too long", lambda e: catalog_text({**e, "urls": ["a" * 2049]}), "at most 2048 characters"),
    ("undecodable", lambda e: b'{"name": "\xff"}', "undecodable bytes at offset 10"),
]
BAD_IDS = ["../x", "A", "", ".hidden", "a/b", "x" * 65, "a b", "-a", 5]
BAD_VERSIONS = ["../1", "1.0/..", "latest", "1.2.3.4.5", "", "1..0", "v1", "1.0-", "1.0-../x", 1,
                "1.0.0-RC1", "1.0-Beta"]
#: Ids Windows cannot create as folders: device names (with any extension) and a trailing dot.
DEVICE = "that is not a Windows device name"
WINDOWS_IDS = {"con": DEVICE, "nul": DEVICE, "aux": DEVICE, "prn": DEVICE, "com1": DEVICE, "lpt9": DEVICE,
               "com0": DEVICE, "nul.tar.gz": DEVICE, "con.x": DEVICE, "model.": "not ending in '.'",
               "a..": "not ending in '.'"}


@pytest.mark.parametrize(("what", "change", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_catalogs_are_refused(tmp_path: Path, what: str, change, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_catalog(change(good_entry()), str(tmp_path / "catalog.json"))


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(InputError, match="expected a model id of 1 to 64 characters"):
        parse_catalog(catalog_text(good_entry(id=bad)), str(tmp_path / "c.json"))


@pytest.mark.parametrize(("bad", "message"), WINDOWS_IDS.items())
def test_ids_windows_cannot_create_are_refused(tmp_path: Path, bad: str, message: str) -> None:
    with pytest.raises(InputError, match=f"expected a model id {message}"):
        parse_catalog(catalog_text(good_entry(id=bad)), str(tmp_path / "c.json"))
    with pytest.raises(InputError, match=message):
        cached_path(bad, catalogs=[], cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_ids_near_windows_device_names_are_allowed(tmp_path: Path) -> None:
    ids = ["console", "com10", "nuls", "lpt", "a.con", "x.y"]
    entries = parse_catalog(catalog_text(*(good_entry(id=i) for i in ids)), str(tmp_path / "c.json"))
    assert [e.id for e in entries] == ids


def test_versions_windows_cannot_create_are_refused(tmp_path: Path) -> None:
    for bad in ("1.0-rc.", "2-a.b."):
        with pytest.raises(InputError, match=f"version of model liver-ct not ending in '.' .*got '{bad}'"):
            parse_catalog(catalog_text(good_entry(version=bad)), str(tmp_path / "c.json"))


@pytest.mark.parametrize("bad", BAD_VERSIONS)
def test_bad_versions_are_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(InputError, match="expected the version of model liver-ct like 1.0.0"):
        parse_catalog(catalog_text(good_entry(version=bad)), str(tmp_path / "c.json"))


REMOTE = "http://127.0.0.1:8000/dir/catalog.json"
REMOTE_OK = {"m.zip": "http://127.0.0.1:8000/dir/m.zip", "/other/m.zip": "http://127.0.0.1:8000/other/m.zip",
             "HTTP://127.0.0.1:8000/m.zip": "http://127.0.0.1:8000/m.zip"}
REMOTE_REFUSED = {
    "http://127.0.0.1:8001/m.zip": "own origin http://127.0.0.1:8000, got one on http://127.0.0.1:8001",
    "http://localhost:8000/m.zip": "got one on http://localhost:8000",
    "//evil.example/m.zip": "to use https",
    "https://127.0.0.1:8000/m.zip": "got one on https://127.0.0.1:8000",
    "file:///etc/passwd": "to use http\\(s\\), got a file: URL",
    "ftp://127.0.0.1:8000/m": "got a ftp: URL",
    "data:application/zip;base64,AAAA": "got a data: URL",
    "javascript:alert(1)": "got a javascript: URL",
    "http://user:pw@127.0.0.1:8000/m.zip": "without credentials",
    "http://127.0.0.1:8000@evil.example/m.zip": "without credentials",
}


@pytest.mark.parametrize(("url", "resolved"), REMOTE_OK.items())
def test_remote_catalog_entries_resolve_on_its_origin(url: str, resolved: str) -> None:
    assert resolve_entry_url(url, REMOTE).url == resolved


@pytest.mark.parametrize(("url", "message"), REMOTE_REFUSED.items())
def test_remote_catalog_entries_elsewhere_are_refused(url: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_catalog(catalog_text(good_entry(urls=[url])), REMOTE)


def test_https_catalog_on_another_host_than_its_entries_is_refused() -> None:
    with pytest.raises(InputError, match="own origin https://models.example.org:443, got one on "
                                         "https://cdn.example.org:443"):
        parse_catalog(catalog_text(good_entry(urls=["https://cdn.example.org/m.zip"])),
                      "https://models.example.org/catalog.json")


LOCAL_REFUSED = {
    "../m.zip": "relative to the catalog's folder, got a path with '..'", "a/../../m.zip": "got a path with '..'",
    "/etc/passwd": "got an absolute path: /etc/passwd", "~/m.zip": "got a path from the home folder",
    "~user/m.zip": "got a path from the home folder", "C:/m.zip": "got an absolute path",
    "c:\\m.zip": "got an absolute path", "a\\b.zip": "got a path with backslashes",
    "..\\m.zip": "got a path with backslashes", "file:///etc/passwd": "got a file: URL",
    "http://models.invalid/m.zip": "to use https", "ftp://x/m": "got a ftp: URL", "data:,x": "got a data: URL",
}


@pytest.mark.parametrize(("url", "message"), LOCAL_REFUSED.items())
def test_local_catalog_entries_leaving_its_folder_are_refused(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_catalog(catalog_text(good_entry(urls=[url])), str(tmp_path / "catalog.json"))


def test_local_catalog_entries_inside_its_folder_or_on_the_web_are_allowed(tmp_path: Path) -> None:
    source = str(tmp_path / "catalog.json")
    assert resolve_entry_url("models/m.zip", source).path == tmp_path.resolve() / "models" / "m.zip"
    assert resolve_entry_url("https://models.example.org/m.zip", source).url == "https://models.example.org/m.zip"
    assert resolve_entry_url("http://[::1]:9/m.zip", source).origin.host == "::1"


def test_a_link_leading_out_of_a_local_catalogs_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"x")
    folder = tmp_path / "catalog"
    folder.mkdir()
    (folder / "m.zip").symlink_to(tmp_path / "secret")
    with pytest.raises(InputError, match="stay inside the catalog's folder, got 'm.zip'|leads outside it"):
        parse_catalog(catalog_text(good_entry(urls=["m.zip"])), str(folder / "catalog.json"))


def test_versions_compare_numerically() -> None:
    ordered = ["0.9", "1.2", "1.9-rc1", "1.9", "1.10", "2.0-alpha", "2.0-rc2", "2.0-rc10", "2.0-rc10.2", "2.0",
               "2.0.0.1"]
    assert sorted(reversed(ordered), key=version_key) == ordered
    assert version_key("1.0") == version_key("1.0.0")
    assert version_key("1.0-b9") < version_key("1.0-b10") < version_key("1.0-beta")
    assert version_key("1.0-1") < version_key("1.0-rc")  # a number before text, as in semantic versions


def test_tag_versions_pick_the_highest_release_candidate(tmp_path: Path) -> None:
    catalog = tmp_path / "c.json"
    catalog.write_text(catalog_text(*(good_entry(version=v) for v in ("2.0-rc2", "2.0-rc10", "2.0-rc9"))))
    listed = list_models([str(catalog)], cache_dir=tmp_path / "cache", offline=True)
    assert [m.entry.version for m in listed.models] == ["2.0-rc10", "2.0-rc9", "2.0-rc2"]


def test_catalog_lists_split_without_breaking_urls() -> None:
    text = "http://127.0.0.1:8000/c.json:/srv/c.json:https://[::1]:9/x.json::rel.json:https://h.example/a"
    assert split_catalog_list(text, ":") == ["http://127.0.0.1:8000/c.json", "/srv/c.json", "https://[::1]:9/x.json",
                                             "rel.json", "https://h.example/a"]
    assert split_catalog_list("C:\\a.json;https://h.example:8443/c.json", ";") == [
        "C:\\a.json", "https://h.example:8443/c.json"]


def test_file_urls_in_catalog_lists_stay_whole() -> None:
    text = ("https://h.org/c.json:file:///srv/c.json:FILE://localhost/a/b.json:file:/x.json:/plain.json:"
            "file:rel.json:file:///last.json")
    assert split_catalog_list(text, ":") == ["https://h.org/c.json", "file:///srv/c.json",
                                             "FILE://localhost/a/b.json", "file:/x.json", "/plain.json",
                                             "file:rel.json", "file:///last.json"]
    windows = "file:///C:/m/c.json;C:\\m\\d.json;https://h.example:1/e.json;d:relative.json;file://server/share/f.json"
    assert split_catalog_list(windows, ";") == ["file:///C:/m/c.json", "C:\\m\\d.json", "https://h.example:1/e.json",
                                                "d:relative.json", "file://server/share/f.json"]


def test_a_file_url_in_the_environment_is_read(monkeypatch, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(catalog_text(good_entry()))
    monkeypatch.setenv("MEDANALYSIS_CATALOGS", os.pathsep.join(["https://h.example/c.json", good.as_uri()]))
    found = list_models(cache_dir=tmp_path / "cache", offline=True)
    assert [m.entry.catalog for m in found.models if m.entry.id == "liver-ct"] == [str(good)]
    assert len(found.problems) == 1 and "h.example" in found.problems[0]
    for bad in ("file:", "file://", "file:///", "FILE://localhost/"):
        [problem] = list_models([bad], cache_dir=tmp_path / "cache").problems
        assert problem == f"catalog {bad}: expected a file: URL naming a catalog file (file:///path), got {bad}"


def test_cache_folder_follows_the_platform(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MEDANALYSIS_MODEL_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert model_cache_dir() == tmp_path / ".cache" / "medanalysis" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "medanalysis" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # the XDG rule: a relative value is ignored
    assert model_cache_dir() == tmp_path / ".cache" / "medanalysis" / "models"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert model_cache_dir() == tmp_path / "Library" / "Caches" / "medanalysis" / "models"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert model_cache_dir() == tmp_path / "local" / "medanalysis" / "models"
    monkeypatch.setenv("MEDANALYSIS_MODEL_CACHE", str(tmp_path / "mine"))
    assert model_cache_dir() == tmp_path / "mine"
    assert not (tmp_path / "mine").exists()


def test_default_catalogs_are_the_shipped_one_then_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDANALYSIS_CATALOGS", os.pathsep.join(["https://h.example:8443/c.json", "/srv/c.json", ""]))
    assert default_catalogs() == [str(DEFAULT_CATALOG), "https://h.example:8443/c.json", "/srv/c.json"]
    monkeypatch.delenv("MEDANALYSIS_CATALOGS")
    assert default_catalogs() == [str(DEFAULT_CATALOG)]
    shipped = parse_catalog(DEFAULT_CATALOG.read_bytes(), str(DEFAULT_CATALOG))
    listed = list_models(cache_dir=tmp_path)
    assert [m.entry for m in listed.models] == sorted(shipped, key=lambda e: e.id) and listed.problems == []


# ------------------------------------------------------------------------------------------------ the cache
@pytest.fixture
def local_catalog(tmp_path: Path, monkeypatch) -> tuple[Path, Path, bytes]:
    """A local catalog beside ``models/tiny.zip`` (a real bundle) listing tiny 1.2.0 and 1.10.0 (the same file) and
    an MR model on a web server that must never be contacted; the network is cut off."""

    def no_network(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a connection was attempted")

    data = real_bundle_zip().read_bytes()
    monkeypatch.setattr(socket, "create_connection", no_network)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.zip").write_bytes(data)
    tiny = dict(id="tiny", task="segmentation", modality="CT", size=len(data), urls=["models/tiny.zip"],
                sha256=hashlib.sha256(data).hexdigest(), labels=[{"value": 0, "name": "background"},
                                                                  {"value": 1, "name": "organ"}])
    catalog = tmp_path / "catalog.json"
    catalog.write_text(catalog_text(good_entry(**tiny, version="1.2.0"), good_entry(**tiny, version="1.10.0"),
                                    good_entry(id="brain", modality="T2", urls=["https://models.example.org/b.zip"])))
    return catalog, tmp_path / "cache", data


def test_local_catalog_pull_list_offline_and_versions(local_catalog) -> None:
    catalog, cache, data = local_catalog
    found = list_models([str(catalog)], cache_dir=cache)
    assert [(m.entry.key, m.status) for m in found.models] == [
        ("brain@1.0.0", "needs a download"), ("tiny@1.10.0", "needs a download"), ("tiny@1.2.0", "needs a download")]
    path = pull("tiny", catalogs=[str(catalog)], cache_dir=cache)
    sha = hashlib.sha256(data).hexdigest()
    assert path == cache / "tiny" / "1.10.0" / sha[:16] / "bundle.zip" and path.read_bytes() == data
    assert cached_path("tiny", catalogs=[str(catalog)], cache_dir=cache) == path
    assert cached_path("tiny@1.10", catalogs=[], cache_dir=cache) == path  # no catalog: the cache record
    with pytest.raises(InputError, match=r"expected model tiny@1.2.0 in the cache, got none: it needs a "
                                         r"download \(medanalysis models pull tiny@1.2.0\)"):
        cached_path("tiny", version="1.2.0", catalogs=[str(catalog)], cache_dir=cache)
    offline = list_models([str(catalog)], cache_dir=cache, offline=True, modality="mri")
    assert [(m.entry.key, m.cached) for m in offline.models] == [("brain@1.0.0", False)]
    ct = list_models([str(catalog)], cache_dir=cache, offline=True, modality="ct")
    assert [(m.entry.key, m.cached, m.path) for m in ct.models] == [("tiny@1.10.0", True, str(path)),
                                                                      ("tiny@1.2.0", False, None)]
    assert list_models([str(catalog)], cache_dir=cache, modality="XYZ").models == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "link", "folder link", "version folder link"])
def test_a_corrupt_cached_file_is_reported_never_used_and_replaced_by_pull(local_catalog, damage: str) -> None:
    catalog, cache, data = local_catalog
    path = pull("tiny@1.2.0", catalogs=[str(catalog)], cache_dir=cache)
    if damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        reason = f"the cached file is corrupt: expected sha256 {hashlib.sha256(data).hexdigest()}, got "
    elif damage == "truncate":
        path.write_bytes(data[:100])
        reason = f"the cached file is corrupt: expected {len(data)} bytes, got 100"
    elif damage == "link":
        path.unlink()
        path.symlink_to(catalog.parent / "models" / "tiny.zip")
        reason = "the cached bundle is not a regular file"
    else:  # the file's (or the version's) folder is a link to a good copy elsewhere: still not used
        linked = path.parent if damage == "folder link" else path.parent.parent
        elsewhere = catalog.parent / "elsewhere"
        linked.rename(elsewhere)
        linked.symlink_to(elsewhere, target_is_directory=True)
        reason = "the cached version folder is a link"
    [listing] = [m for m in list_models([str(catalog)], cache_dir=cache).models if m.entry.key == "tiny@1.2.0"]
    assert (listing.cached, listing.path) == (False, None)
    assert listing.status.startswith(f"needs a download ({reason}") and listing.status.endswith(")")
    with pytest.raises(InputError, match="got none usable .*(corrupt|not a regular file|is a link)"):
        cached_path("tiny@1.2.0", catalogs=[str(catalog)], cache_dir=cache)
    assert pull("tiny@1.2.0", catalogs=[str(catalog)], cache_dir=cache) == path
    assert not path.is_symlink() and path.read_bytes() == data
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == ["1.2.0"]


@pytest.mark.parametrize("reference", ["../x", "tiny/../../x", "tiny@../1", "tiny@1.0/..", "TINY"])
def test_hostile_model_references_touch_nothing(tmp_path: Path, reference: str) -> None:
    with pytest.raises(InputError, match="expected a model (id|version)"):
        cached_path(reference, catalogs=[], cache_dir=tmp_path / "cache")
    with pytest.raises(InputError, match="expected a model (id|version)"):
        pull(reference, catalogs=[], cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_unreadable_catalogs_are_problem_lines_and_the_others_list(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    good = tmp_path / "good.json"
    good.write_text(catalog_text(good_entry()))
    found = list_models([str(fifo), str(tmp_path / "missing.json"), "https://h.example/c.json", "ftp://x/c.json",
                         str(good)], cache_dir=tmp_path / "cache", offline=True)
    assert [m.entry.key for m in found.models] == ["liver-ct@1.0.0"]
    assert [p.split(": ", 1)[1][:60] for p in found.problems] == [
        "expected a model catalog at fifo.json to be a regular file, ",
        "expected a model catalog at missing.json, got No such file o",
        "expected a saved copy of this remote catalog for offline use",
        "expected a catalog path, a file: URL or an http(s) URL, got "]
    as_url = list_models([good.as_uri(), f"file://elsewhere{good}"], cache_dir=tmp_path / "cache", offline=True)
    assert [m.entry.catalog for m in as_url.models] == [str(good)]
    assert as_url.problems == [f"catalog file://elsewhere{good}: expected a file: URL of this machine (file:///path), "
                               f"got file://elsewhere{good}"]


# ------------------------------------------------------------------------------------------------ command line
def run_models(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "MEDANALYSIS_MODEL_CACHE": str(tmp_path / "cache")}
    environment.pop("MEDANALYSIS_CATALOGS", None)
    return subprocess.run([sys.executable, "-m", "MedAnalysisLib", "models", *argv], capture_output=True,
                          text=True, env=environment, timeout=60, check=False)


def test_cli_list_with_an_empty_catalog_says_how_to_add_one(tmp_path: Path) -> None:
    (tmp_path / "empty.json").write_text(catalog_text())
    done = run_models(tmp_path, "list", "--catalog", str(tmp_path / "empty.json"))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("No catalog models. Add a catalog with --catalog PATH_OR_URL")
    assert "MEDANALYSIS_CATALOGS" in done.stdout


def test_cli_list_json_is_ascii_and_a_refused_catalog_exits_2(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(catalog_text(good_entry(title="Leber (CT) \u00e9")))
    bad = tmp_path / "bad.json"
    bad.write_text(catalog_text(good_entry(id="../x")))
    done = run_models(tmp_path, "list", "--json", "--catalog", str(good), "--catalog", str(bad))
    assert done.returncode == 2 and done.stdout.isascii()
    listed = json.loads(done.stdout)
    assert [m["title"] for m in listed["models"]] == ["Leber (CT) \u00e9"]
    assert listed["models"][0]["status"] == "needs a download" and len(listed["problems"]) == 1
    assert done.stderr.startswith("warning: catalog ") and "expected a model id" in done.stderr
    assert done.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------------ probe findings
def commented_copy(data: bytes, folder: Path, comment: bytes) -> bytes:
    """The same bundle with a zip comment: another file (another sha256) with the same content."""
    import zipfile

    path = folder / "copy.zip"
    path.write_bytes(data)
    with zipfile.ZipFile(path, "a") as archive:
        archive.comment = comment
    changed = path.read_bytes()
    path.unlink()
    return changed


def test_two_catalogs_with_other_files_for_one_version_keep_both_copies(local_catalog) -> None:
    catalog, cache, data = local_catalog
    other = catalog.parent / "other"
    (other / "models").mkdir(parents=True)
    changed = commented_copy(data, other, b"republished")
    (other / "models" / "tiny.zip").write_bytes(changed)
    (other / "catalog.json").write_text(catalog_text(good_entry(
        id="tiny", version="1.2.0", task="segmentation", modality="CT", size=len(changed), urls=["models/tiny.zip"],
        sha256=hashlib.sha256(changed).hexdigest(), labels=[{"value": 0, "name": "background"},
                                                             {"value": 1, "name": "organ"}])))
    first = pull("tiny@1.2.0", catalogs=[str(catalog)], cache_dir=cache)
    [waiting] = [m for m in list_models([str(other / "catalog.json")], cache_dir=cache).models]
    assert waiting.status.startswith("needs a download (the cache holds another file for this version")
    assert "corrupt" not in waiting.status
    second = pull("tiny@1.2.0", catalogs=[str(other / "catalog.json")], cache_dir=cache)
    assert first != second and first.read_bytes() == data and second.read_bytes() == changed
    for source, path in ((catalog, first), (other / "catalog.json", second)):
        [listing] = [m for m in list_models([str(source)], cache_dir=cache).models if m.entry.key == "tiny@1.2.0"]
        assert (listing.cached, listing.path, listing.status) == (True, str(path), "cached")
        assert cached_path("tiny@1.2.0", catalogs=[str(source)], cache_dir=cache) == path
    both = list_models([str(catalog), str(other / "catalog.json")], cache_dir=cache)
    assert [p.split(": ", 1)[1] for p in both.problems] == [
        f"model tiny@1.2.0 is listed by {catalog} too, with another file; the first one is used"]


def age(path: Path, seconds: float) -> None:
    """Set the modification times of ``path`` and what lies in it ``seconds`` into the past."""
    when = time.time() - seconds
    for item in [path, *path.iterdir()]:
        os.utime(item, (when, when), follow_symlinks=False)


def test_staging_folders_of_killed_pulls_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    from MedAnalysisLib.catalog.cache import lock_staging, new_staging, unlock_staging

    cache = tmp_path / "cache"
    dead, fresh, live = (new_staging(cache, "tiny") for _ in range(3))
    (dead / "bundle.zip.part").write_bytes(b"x" * 100)
    (fresh / "bundle.zip.part").write_bytes(b"x")
    lock = lock_staging(live)  # a pull of this process, stalled for long on a slow server
    (live / "bundle.zip.part").write_bytes(b"x")
    aside = cache / "other" / ".staging-corrupt-1-2"  # a corrupt copy moved aside by a pull that died
    aside.mkdir(parents=True)
    (aside / "bundle.zip").write_bytes(b"bad")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"k")
    (cache / "tiny" / ".staging-link").symlink_to(outside, target_is_directory=True)
    for folder in (dead, live, aside, outside):
        age(folder, 601)
    assert list_models([], cache_dir=cache).models == []  # a listing writes nothing: it does not sweep
    assert (dead.exists(), fresh.exists(), live.exists(), aside.exists()) == (True, True, True, True)
    pull_refused = pytest.raises(InputError, match="expected a model tiny listed in the catalogs")
    with pull_refused:
        pull("tiny", catalogs=[], cache_dir=cache)  # a pull sweeps, before it reads the catalogs
    assert (dead.exists(), fresh.exists(), live.exists(), aside.exists()) == (False, True, True, False)
    assert (cache / "other").is_dir() and (outside / "keep").exists()  # model folders are never removed
    unlock_staging(live, lock)
    age(live, 601)
    with pull_refused:
        pull("tiny", catalogs=[], cache_dir=cache)
    assert not live.exists() and fresh.exists()


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_modality_or_catalog_is_refused(tmp_path: Path, value: str) -> None:
    good = tmp_path / "good.json"
    good.write_text(catalog_text(good_entry()))
    with pytest.raises(InputError, match=f"expected a modality to keep .*got an empty value '{value}'"):
        list_models([str(good)], cache_dir=tmp_path / "cache", modality=value)
    found = list_models([value, str(good)], cache_dir=tmp_path / "cache")
    assert [m.entry.key for m in found.models] == ["liver-ct@1.0.0"]
    assert found.problems == [f"catalog {value}: expected a catalog path or URL, got an empty value '{value}'"]
    for argv in (["list", "--catalog", str(good), "--modality", value], ["list", "--catalog", value],
                 ["pull", "liver-ct", "--catalog", value], ["path", "liver-ct", "--catalog", value]):
        done = run_models(tmp_path, *argv)
        assert (done.returncode, done.stdout) == (2, ""), argv
        assert done.stderr.startswith("error: expected ") and "got an empty value" in done.stderr, argv
        assert done.stderr.count("\n") == 1, argv
    assert not (tmp_path / "cache").exists()


def test_local_entry_files_missing_or_not_files_are_named_with_their_catalog(tmp_path: Path) -> None:
    (tmp_path / "models" / "folder.zip").mkdir(parents=True)
    os.mkfifo(tmp_path / "models" / "fifo.zip")
    catalog = tmp_path / "hospital.json"
    catalog.write_text(catalog_text(good_entry(id="gone", urls=["models/t.zip"]),
                                    good_entry(id="folder", urls=["models/folder.zip"]),
                                    good_entry(id="fifo", urls=["models/fifo.zip"])))
    expected = {"gone": "expected the model file models/t.zip (beside catalog hospital.json), got: No such file",
                "folder": "expected the model file models/folder.zip (beside catalog hospital.json) to be a "
                          "regular file, got a folder",
                "fifo": "expected the model file models/fifo.zip (beside catalog hospital.json) to be a regular "
                        "file, got a FIFO"}
    for model_id, message in expected.items():
        with pytest.raises(InputError, match=re.escape(message)):
            pull(model_id, catalogs=[str(catalog)], cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("*/*"))


def test_cli_list_aligns_wide_titles_and_prints_long_statuses_in_full(local_catalog, tmp_path: Path) -> None:
    catalog, cache, data = local_catalog
    text = json.loads(catalog.read_text())
    text["models"][0]["title"] = "\u809d\u81d3\u30bb\u30b0\u30e1\u30f3\u30c6\u30fc\u30b7\u30e7\u30f3 (CT)"
    catalog.write_text(json.dumps(text))
    path = pull("tiny@1.2.0", catalogs=[str(catalog)], cache_dir=cache)
    path.write_bytes(data[:100])
    done = run_models(tmp_path, "list", "--catalog", str(catalog))
    assert done.returncode == 0, done.stderr
    from MedAnalysisLib.cli.models import display_width

    lines = done.stdout.splitlines()
    rows = [line for line in lines if line.startswith(("id ", "tiny ", "brain "))]
    assert len(rows) == 4
    words = ("task", "segmentation", "segmentation", "segmentation")
    starts = {display_width(row[:row.index(word)]) for row, word in zip(rows, words, strict=True)}
    assert len(starts) == 1, done.stdout
    assert any(row.startswith("tiny ") and row.endswith("needs a download *") for row in rows)
    reason = f"the cached file is corrupt: expected {len(data)} bytes, got 100"
    assert f"* tiny@1.2.0: needs a download ({reason})" in lines
    assert "more characters" not in done.stdout


# ------------------------------------------------------------------------------------------------ second probe
def tree(root: Path) -> dict[str, object]:
    """Every path under ``root`` with its kind and bytes (a link: its target), to compare layouts exactly."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        found[key] = ("link", os.readlink(path)) if path.is_symlink() else ("dir",) if path.is_dir() else \
            ("fifo",) if path.is_fifo() else ("file", path.read_bytes())
    return found


@pytest.mark.parametrize("kind", ["fifo", "link", "folder"])
def test_a_lock_that_is_not_a_regular_file_never_blocks_and_keeps_its_folder(tmp_path: Path, kind: str) -> None:
    import threading

    from MedAnalysisLib.catalog.cache import _lock_is_free, new_staging, sweep_staging

    cache = tmp_path / "cache"
    staging = new_staging(cache, "tiny")
    (staging / "bundle.zip.part").write_bytes(b"x")
    lock = staging / ".lock"
    if kind == "fifo":
        os.mkfifo(lock)
    elif kind == "link":
        (tmp_path / "target").write_bytes(b"t")
        lock.symlink_to(tmp_path / "target")
    else:
        lock.mkdir()
    age(staging, 601)
    before = tree(tmp_path)
    swept: list = []

    def sweep() -> None:
        swept.extend([_lock_is_free(staging), sweep_staging(cache)])  # the lock check alone, then the sweep

    worker = threading.Thread(target=sweep, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and swept == [False, []]
    assert tree(tmp_path) == before


def test_the_sweep_leaves_what_is_not_a_killed_pulls_byte_identical(tmp_path: Path) -> None:
    """A cache pointed at a folder the user keeps other things in: only a genuine stale staging folder goes."""
    cache = tmp_path / "cache"
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"mine")
    layouts = {
        "thesis/.staging-draft/chapter1.txt": b"chapter",  # not a staging name MedAnalysis makes
        "tiny/.staging-abcdefgh/chapter1.txt": b"chapter",  # the name, but not what a pull writes
        "tiny/.staging-abcdefg1/bundle.zip": b"zip",  # a pull's file beside a foreign one
        "tiny/.staging-abcdefg1/notes.txt": b"notes",
        "tiny/.staging-abcdefg3/sub/bundle.zip": b"zip",  # a folder inside
        "Not An Id/.staging-abcdefgh/bundle.zip.part": b"part",  # under a name that is no model id
        ".hidden/.staging-abcdefgh/bundle.zip.part": b"part",
        "tiny/.staging-corrupt-1-2/model.bin": b"m",
    }
    for name, data in layouts.items():
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_bytes(data)
    (cache / "tiny" / ".staging-abcdefg2").mkdir()
    (cache / "tiny" / ".staging-abcdefg2" / "bundle.zip").symlink_to(outside)  # a link, never followed
    (cache / "tiny" / ".staging-abcdefg4" / "bundle.zip").mkdir(parents=True)  # a folder at a file's name
    for empty in ("my-empty-folder", "Not An Id Either", "tiny2", ".staging-abcdefgh"):
        (cache / empty).mkdir()
    (cache / "linked").symlink_to(tmp_path, target_is_directory=True)
    for folder in [p for p in cache.rglob("*") if p.is_dir() and not p.is_symlink()]:
        age(folder, 601)
    killed = cache / "tiny" / ".staging-zzzzzzzz"  # the one a killed pull left: removed
    killed.mkdir()
    for name in (".lock", "bundle.zip.part", "entry.json"):
        (killed / name).write_bytes(b"k")
    age(killed, 601)
    before = tree(tmp_path)
    assert list_models([], cache_dir=cache, offline=True).models == []
    assert tree(tmp_path) == before  # a listing, offline or not, writes nothing
    with pytest.raises(InputError, match="expected a model tiny listed in the catalogs"):
        pull("tiny", catalogs=[], cache_dir=cache)
    del before["cache/tiny/.staging-zzzzzzzz"]
    for name in (".lock", "bundle.zip.part", "entry.json"):
        del before[f"cache/tiny/.staging-zzzzzzzz/{name}"]
    assert tree(tmp_path) == before


@pytest.mark.parametrize("reference", ["tiny-x", "tinyy@1.10.0", "tiny@2.0", "tiny@1.10.0.1", "tiny@1.2.0-rc1"])
def test_path_of_an_id_or_version_no_catalog_lists_says_so(local_catalog, reference: str) -> None:
    catalog, cache, _data = local_catalog
    pull("tiny@1.10", catalogs=[str(catalog)], cache_dir=cache)
    with pytest.raises(InputError, match=r"expected a model .* listed in the catalogs, got (versions 1\.2\.0, "
                                         r"1\.10\.0 of it|the ids brain, tiny)$"):
        cached_path(reference, catalogs=[str(catalog)], cache_dir=cache)


def test_cli_path_of_an_unlisted_model_exits_2_as_pull_does(tmp_path: Path) -> None:
    path = run_models(tmp_path, "path", "hippocampus-unet-smal")
    pulled = run_models(tmp_path, "pull", "hippocampus-unet-small@2.0")
    versioned = run_models(tmp_path, "path", "hippocampus-unet-small@2.0")
    assert (path.returncode, pulled.returncode, versioned.returncode) == (2, 2, 2)
    assert path.stderr.startswith("error: expected a model hippocampus-unet-smal listed in the catalogs, got the ids")
    assert versioned.stderr == pulled.stderr
    assert versioned.stderr.startswith("error: expected a model hippocampus-unet-small@2.0 listed in the catalogs, "
                                       "got versions ")
    assert not (tmp_path / "cache").exists()


def test_catalog_lists_with_spaces_and_colons_in_url_paths_split_into_whole_sources() -> None:
    text = "/x/nothere.json: https://models.example.org/c.json :\thttps://h.org/models/v1:2/c.json: ./rel.json"
    assert split_catalog_list(text, ":") == ["/x/nothere.json", "https://models.example.org/c.json",
                                             "https://h.org/models/v1:2/c.json", "./rel.json"]
    urls = "https://[::1]:9/a:b/c.json:~/mine.json:http://127.0.0.1:8/x:y:file:///z.json: :"
    assert split_catalog_list(urls, ":") == ["https://[::1]:9/a:b/c.json", "~/mine.json",
                                             "http://127.0.0.1:8/x:y", "file:///z.json"]


def test_spellings_of_one_version_share_one_cache_folder(tmp_path: Path, local_catalog) -> None:
    from MedAnalysisLib.catalog.schema import canonical_version

    _catalog, cache, data = local_catalog
    tiny = dict(id="tiny", task="segmentation", modality="CT", size=len(data), urls=["models/tiny.zip"],
                sha256=hashlib.sha256(data).hexdigest(), labels=[{"value": 0, "name": "background"},
                                                                  {"value": 1, "name": "organ"}])
    short = tmp_path / "short.json"
    short.write_text(catalog_text(good_entry(**tiny, version="1.0")))
    path = pull("tiny@1.0", catalogs=[str(short)], cache_dir=cache)
    assert path.parents[1].name == "1.0.0"
    for spelling in ("1.0.0", "01.0", "1", "1.0.0.0"):
        assert cached_path(f"tiny@{spelling}", catalogs=[str(short)], cache_dir=cache) == path
        assert cached_path(f"tiny@{spelling}", catalogs=[], cache_dir=cache) == path  # from the record
    assert pull("tiny@1.0.0", catalogs=[str(short)], cache_dir=cache) == path  # not downloaded twice
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == ["1.0.0"]
    pairs = [("2.0-rc01", "2.0-rc.1"), ("1.2.3.0", "1.2.3"), ("2.0-a.b", "2.0-ab"), ("2.0-1.2", "2.0-12")]
    assert [canonical_version(a) == canonical_version(b) for a, b in pairs] == [True, True, False, False]
    assert [version_key(a) == version_key(b) for a, b in pairs] == [True, True, False, False]
    both = tmp_path / "both.json"
    both.write_text(catalog_text(good_entry(version="1.0"), good_entry(version="1.0.0")))
    with pytest.raises(InputError, match=r"got liver-ct@1\.0 and liver-ct@1\.0\.0 \(one version\)$"):
        parse_catalog(both.read_text(), str(both))


def test_pull_without_a_version_takes_the_newest_release(tmp_path: Path) -> None:
    from MedAnalysisLib.catalog.listing import choose_entry

    def entries(*versions: str) -> list[CatalogEntry]:
        path = tmp_path / "c.json"
        path.write_text(catalog_text(*(good_entry(version=v) for v in versions)))
        return parse_catalog(path.read_text(), str(path))

    mixed = entries("1.9", "2.0-rc10", "1.10", "2.0-rc2")
    assert choose_entry(mixed, "liver-ct", None, []).version == "1.10"
    assert choose_entry(mixed, "liver-ct", "2.0-rc10", []).version == "2.0-rc10"
    assert choose_entry(entries("2.0-rc2", "2.0-rc10"), "liver-ct", None, []).version == "2.0-rc10"


def test_cli_pull_without_a_version_says_which_it_chose(tmp_path: Path) -> None:
    data = real_bundle_zip().read_bytes()
    (tmp_path / "tiny.zip").write_bytes(data)
    tiny = dict(id="tiny", task="segmentation", modality="CT", size=len(data), urls=["tiny.zip"],
                sha256=hashlib.sha256(data).hexdigest(), labels=[{"value": 0, "name": "background"},
                                                                  {"value": 1, "name": "organ"}])
    catalog = tmp_path / "c.json"
    catalog.write_text(catalog_text(good_entry(**tiny, version="2.0-rc10"), good_entry(**tiny, version="1.10")))
    done = run_models(tmp_path, "pull", "tiny", "--catalog", str(catalog))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == ("chose tiny@1.10 (the newest release, else the newest pre-release; "
                                            "ID@VERSION picks another)")
    assert done.stdout.strip().endswith("/tiny/1.10.0/" + tiny["sha256"][:16] + "/bundle.zip")


@pytest.mark.parametrize(("deadline", "message"), [
    (float("nan"), "expected a finite deadline"), (float("inf"), "expected a finite deadline"),
    ("soon", "expected a deadline as a time.monotonic() instant (a number) or none, got str"),
    (True, "got bool"), (None, None)])
def test_deadlines_that_are_not_finite_numbers_are_refused(tmp_path: Path, deadline: object, message: str) -> None:
    if message is None:
        assert list_models([], cache_dir=tmp_path, deadline=deadline).models == []
        return
    with pytest.raises(InputError, match=re.escape(message)):
        list_models([], cache_dir=tmp_path, deadline=deadline)


def test_a_deadline_on_the_wrong_clock_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"expected a deadline on the time\.monotonic\(\) clock, at most 310 s "
                                         r"ahead, got one \d+ s ahead \(a time\.time\(\) instant\?\)$"):
        list_models(["a.json"], cache_dir=tmp_path, timeout=10.0, deadline=time.time() + 1)
    assert list_models([], cache_dir=tmp_path, deadline=time.monotonic() + 200).models == []
    with pytest.raises(InputError, match="expected a timeout of a finite number of seconds above 0, got nan"):
        list_models([], cache_dir=tmp_path, timeout=float("nan"))


def test_a_verified_cached_file_is_hashed_again_only_when_it_changed(local_catalog, monkeypatch) -> None:
    from MedAnalysisLib.catalog import cache as cache_module

    catalog, cache, data = local_catalog
    path = pull("tiny@1.2.0", catalogs=[str(catalog)], cache_dir=cache)
    hashed: list[Path] = []
    real = cache_module.sha256_of
    monkeypatch.setattr(cache_module, "sha256_of", lambda p: hashed.append(p) or real(p))
    monkeypatch.setattr(cache_module, "_HASHES", {})
    listed = list_models([str(catalog)], cache_dir=cache, modality="ct")
    assert ([m.cached for m in listed.models], hashed) == ([False, True], [])  # the very file the pull verified
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))  # written since: hashed again
    assert [m.cached for m in list_models([str(catalog)], cache_dir=cache, modality="ct").models] == [False, True]
    assert hashed == [path]
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, other bytes
    found = list_models([str(catalog)], cache_dir=cache, modality="ct").models[1]
    assert not found.cached and "the cached file is corrupt: expected sha256" in found.status


def test_a_pull_onto_a_full_disk_exits_2_and_keeps_nothing(tmp_path: Path) -> None:
    """A real file-size limit in a child process stands for a full disk: one error line naming the operation, exit
    code 2, and no bundle, record or staging file left in the cache."""
    import resource
    import signal

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100 * 1024, 100 * 1024))

    cache = tmp_path / "cache"
    code = "import sys; from MedAnalysisLib.cli import main; sys.exit(main(sys.argv[1:]))"
    completed = subprocess.run([sys.executable, "-c", code, "models", "pull", "hippocampus-unet-small", "--progress",
                                "none"], capture_output=True, text=True, timeout=120, preexec_fn=limit_files,
                               check=False, env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1",
                                                 "MEDANALYSIS_MODEL_CACHE": str(cache)})
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1] == (
        "error: expected a file size within the system's limit, got File too large (EFBIG) while writing a download "
        "into the model cache")
    assert [p for p in cache.rglob("*") if p.is_file()] == []



def test_list_exits_2_only_for_a_catalog_it_could_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Two readable catalogs stating another file for one version give a warning, not a failure; a catalog that
    cannot be read at all is bad input (exit 2), whatever the other problem lines say."""
    from MedAnalysisLib.cli import main

    monkeypatch.setenv("MEDANALYSIS_MODEL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a.json").write_text(catalog_text(good_entry()))
    (tmp_path / "b.json").write_text(catalog_text(good_entry(sha256="b" * 64)))
    both = ["models", "list", "--offline", "--catalog", str(tmp_path / "a.json"), "--catalog", str(tmp_path / "b.json")]
    assert main(both) == 0
    err = capsys.readouterr().err
    assert "model liver-ct@1.0.0 is listed by" in err and "the first one is used" in err
    assert main([*both, "--catalog", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
