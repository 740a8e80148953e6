"""The model catalog without a server: the schema and what hostile catalogs are refused with, the URL policy for
remote and local catalogs, versions, the cache folder and its layout, offline listing, corrupt cached files, and
the empty shipped catalog on the command line. (The loopback-server tests are in ``test_catalog_http.py``.)"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
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
BAD_VERSIONS = ["../1", "1.0/..", "latest", "1.2.3.4.5", "", "1..0", "v1", "1.0-", "1.0-../x", 1]


@pytest.mark.parametrize(("what", "change", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_catalogs_are_refused(tmp_path: Path, what: str, change, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_catalog(change(good_entry()), str(tmp_path / "catalog.json"))


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(InputError, match="expected a model id of 1 to 64 characters"):
        parse_catalog(catalog_text(good_entry(id=bad)), str(tmp_path / "c.json"))


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
    "../m.zip": "relative to the catalog's folder", "a/../../m.zip": "relative to the catalog's folder",
    "/etc/passwd": "relative to the catalog's folder", "~/m.zip": "relative to the catalog's folder",
    "C:/m.zip": "relative to the catalog's folder", "c:\\m.zip": "relative to the catalog's folder",
    "a\\b.zip": "relative to the catalog's folder", "file:///etc/passwd": "got a file: URL",
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
    ordered = ["0.9", "1.2", "1.9-rc1", "1.9", "1.10", "2.0-alpha", "2.0.0.1"]
    assert sorted(reversed(ordered), key=version_key) == ordered
    assert version_key("1.0") == version_key("1.0.0")


def test_catalog_lists_split_without_breaking_urls() -> None:
    text = "http://127.0.0.1:8000/c.json:/srv/c.json:https://[::1]:9/x.json::rel.json:https://h.example/a"
    assert split_catalog_list(text, ":") == ["http://127.0.0.1:8000/c.json", "/srv/c.json", "https://[::1]:9/x.json",
                                             "rel.json", "https://h.example/a"]
    assert split_catalog_list("C:\\a.json;https://h.example:8443/c.json", ";") == [
        "C:\\a.json", "https://h.example:8443/c.json"]


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
    assert parse_catalog(DEFAULT_CATALOG.read_bytes(), str(DEFAULT_CATALOG)) == []
    assert list_models(cache_dir=tmp_path) .models == [] and list_models(cache_dir=tmp_path).problems == []


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
    assert path == cache / "tiny" / "1.10.0" / "bundle.zip" and path.read_bytes() == data
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


@pytest.mark.parametrize("damage", ["flip", "truncate", "link", "folder link"])
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
    else:  # the version folder is a link to a good copy elsewhere: still not used
        elsewhere = catalog.parent / "elsewhere"
        path.parent.rename(elsewhere)
        path.parent.symlink_to(elsewhere, target_is_directory=True)
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


def test_cli_list_with_the_empty_shipped_catalog_says_how_to_add_one(tmp_path: Path) -> None:
    done = run_models(tmp_path, "list")
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
