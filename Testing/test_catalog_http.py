"""The model catalog end to end against a real HTTP server on 127.0.0.1 serving a real bundle: a good pull (then
the cache without the server), truncated, tampered, wrong-size, redirected, slow and cancelled downloads, catalogs
pointing elsewhere, non-bundles, and the ``medanalysis models`` command line."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from helpers_cli import ROOT
from helpers_http import LoopbackServer, real_bundle_zip
from helpers_http import catalog_entry as entry

from MedAnalysisLib.catalog import cached_path, list_models, pull
from MedAnalysisLib.errors import BundleError, CancelledError, InputError
from MedAnalysisLib.progress import StopFlag


@pytest.fixture(scope="module")
def bundle_bytes() -> bytes:
    return real_bundle_zip().read_bytes()


def write_catalog(folder: Path, *entries: dict, name: str = "catalog.json") -> Path:
    path = folder / name
    path.write_text(json.dumps({"schema_version": 1, "name": "test models", "models": list(entries)}))
    return path


class Recorder:
    """A reporter that keeps every progress call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def progress(self, stage: str, done: float, total: float, message: str = "", **extra: object) -> None:
        self.calls.append((stage, done, total, message, extra))


@pytest.fixture
def served(tmp_path: Path, bundle_bytes: bytes):
    """A server over ``tmp_path/www`` holding good.zip; the cache is ``tmp_path/cache``."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "good.zip").write_bytes(bundle_bytes)
    with LoopbackServer(www) as server:
        yield server, www, tmp_path / "cache"


def sha16(data: bytes) -> str:
    """The name of the cache folder holding ``data``: the first 16 hex digits of its sha256."""
    return hashlib.sha256(data).hexdigest()[:16]


def cache_state(cache: Path) -> list[str]:
    """Every path in the cache except the saved catalog copies (what a failed pull must leave unchanged)."""
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if ".catalogs" not in p.parts)


def test_good_pull_reuses_cache_and_lists_offline(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    catalog = write_catalog(www, entry("good", bundle_bytes, "good.zip"),
                            entry("other", bundle_bytes, "missing.zip", title="Never pulled"))
    url = server.url(catalog.name)
    recorder = Recorder()
    path = pull("good", catalogs=[url], cache_dir=cache, reporter=recorder)
    assert path == cache / "good" / "1.0.0" / sha16(bundle_bytes) / "bundle.zip" and path.read_bytes() == bundle_bytes
    record = json.loads((path.parent / "entry.json").read_text())
    assert record["sha256"] == hashlib.sha256(bundle_bytes).hexdigest() and record["url"] == server.url("good.zip")
    assert recorder.calls[0][1] == 0 and recorder.calls[-1][1:3] == (len(bundle_bytes), len(bundle_bytes))
    assert all(call[0] == "download" and "bytes_per_s" in call[4] for call in recorder.calls)
    assert server.requests.count("/good.zip") == 1
    assert pull("good", catalogs=[url], cache_dir=cache) == path
    assert server.requests.count("/good.zip") == 1  # the second pull used the cache
    server.stop()
    assert cached_path("good", catalogs=[url], cache_dir=cache) == path
    offline = list_models([url], cache_dir=cache, offline=True)
    assert [(m.entry.id, m.cached, m.status) for m in offline.models] == [
        ("good", True, "cached"), ("other", False, "needs a download")]
    assert offline.problems == []
    unreachable = list_models([url], cache_dir=cache, timeout=2)
    assert [m.status for m in unreachable.models] == [
        "cached", "needs a download (catalog not reached or refused: listed from its saved copy)"]
    assert len(unreachable.problems) == 1 and "listed from its copy of" in unreachable.problems[0]
    assert pull("good", catalogs=[url], cache_dir=cache, timeout=2) == path  # cached: works with the server gone


def test_truncated_download_is_refused(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    catalog = write_catalog(www, entry("cut", bundle_bytes, "good.zip"))
    server.truncate("good.zip", send=4096)
    with pytest.raises(InputError, match=rf"expected {len(bundle_bytes)} bytes .*got 4096 before the connection "
                                         r"closed \(truncated\)"):
        pull("cut", catalogs=[server.url(catalog.name)], cache_dir=cache)
    assert cache_state(cache) == []  # no staging, no version, no empty model folder


def test_tampered_bundle_is_refused_before_anything_reads_it(served, bundle_bytes: bytes, monkeypatch) -> None:
    server, www, cache = served
    tampered = bytearray(bundle_bytes)
    tampered[len(tampered) // 2] ^= 0x01
    (www / "tampered.zip").write_bytes(bytes(tampered))
    catalog = write_catalog(www, entry("t", bundle_bytes, "tampered.zip"))
    import MedAnalysisLib.bundles

    read: list[object] = []
    monkeypatch.setattr(MedAnalysisLib.bundles, "read_bundle_config", lambda path: read.append(path))
    with pytest.raises(BundleError, match=f"expected sha256 {hashlib.sha256(bundle_bytes).hexdigest()} for model "
                                          f"t@1.0.0 .*, got {hashlib.sha256(tampered).hexdigest()}; the file was "
                                          "discarded unread"):
        pull("t", catalogs=[server.url(catalog.name)], cache_dir=cache)
    assert read == [] and cache_state(cache) == []


@pytest.mark.parametrize("delta", [+10, -10])
def test_wrong_size_is_refused_from_content_length(served, bundle_bytes: bytes, delta: int) -> None:
    server, www, cache = served
    catalog = write_catalog(www, entry("w", bundle_bytes, "good.zip", size=len(bundle_bytes) + delta))
    with pytest.raises(InputError, match=rf"expected {len(bundle_bytes) + delta} bytes for model w@1.0.0 \(as its "
                                         rf"catalog states\), the server announced {len(bundle_bytes)}"):
        pull("w", catalogs=[server.url(catalog.name)], cache_dir=cache)
    assert server.requests == ["/catalog.json", "/good.zip"] and cache_state(cache) == []


def test_unannounced_body_longer_than_the_entry_is_cut_off(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    catalog = write_catalog(www, entry("m", bundle_bytes, "good.zip", size=len(bundle_bytes) - 100))
    server.unannounced("good.zip")
    with pytest.raises(InputError, match=rf"expected {len(bundle_bytes) - 100} bytes .*got more; the download was "
                                         "stopped"):
        pull("m", catalogs=[server.url(catalog.name)], cache_dir=cache)
    assert cache_state(cache) == []


def test_same_origin_redirects_are_followed_and_others_refused(served, bundle_bytes: bytes, tmp_path: Path) -> None:
    server, www, cache = served
    (tmp_path / "elsewhere").mkdir()
    with LoopbackServer(tmp_path / "elsewhere") as other:
        server.redirect("moved.zip", "/good.zip", status=301)
        server.redirect("away.zip", other.url("good.zip"))
        server.redirect("named.zip", f"http://localhost:{server.port}/good.zip")  # another host name: another origin
        for n in range(7):
            server.redirect(f"loop{n}.zip", server.url(f"loop{n + 1}.zip"), status=307)
        catalog = write_catalog(www, entry("moved", bundle_bytes, "moved.zip"),
                                entry("away", bundle_bytes, "away.zip"), entry("named", bundle_bytes, "named.zip"),
                                entry("loop", bundle_bytes, "loop0.zip"))
        url = server.url(catalog.name)
        assert pull("moved", catalogs=[url], cache_dir=cache).read_bytes() == bundle_bytes
        with pytest.raises(InputError, match=rf"redirect only within http://127.0.0.1:{server.port}, got a redirect "
                                             rf"to http://127.0.0.1:{other.port}"):
            pull("away", catalogs=[url], cache_dir=cache)
        with pytest.raises(InputError, match=rf"got a redirect to http://localhost:{server.port}"):
            pull("named", catalogs=[url], cache_dir=cache)
        with pytest.raises(InputError, match="after at most 5 redirects, got more"):
            pull("loop", catalogs=[url], cache_dir=cache)
        assert other.requests == []
    assert "/loop5.zip" in server.requests and "/loop6.zip" not in server.requests
    kept = f"moved/1.0.0/{sha16(bundle_bytes)}"
    assert cache_state(cache) == ["moved", "moved/1.0.0", kept, f"{kept}/bundle.zip", f"{kept}/entry.json"]


def test_slow_download_cancels_within_two_seconds(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    catalog = write_catalog(www, entry("slow", bundle_bytes, "good.zip"))
    server.slow("good.zip", chunk=256, delay=0.5)
    flag = StopFlag()
    recorder = Recorder()
    timer = threading.Timer(0.8, flag.set, args=("cancelled by the test",))
    timer.start()
    start = time.monotonic()
    with pytest.raises(CancelledError, match="cancelled by the test"):
        pull("slow", catalogs=[server.url(catalog.name)], cache_dir=cache, stop_flag=flag, reporter=recorder,
             timeout=30)
    assert time.monotonic() - start < 2.0
    assert 0 < max(call[1] for call in recorder.calls) < len(bundle_bytes)
    assert cache_state(cache) == []  # the staging folder and its partial file are gone


def test_catalog_pointing_outside_its_origin_is_refused(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    outside = write_catalog(www, entry("ok", bundle_bytes, "good.zip"),
                            entry("evil", bundle_bytes, f"http://127.0.0.1:{server.port + 1}/good.zip"),
                            name="outside.json")
    good = write_catalog(www, entry("fine", bundle_bytes, "good.zip"), name="good.json")
    found = list_models([server.url(outside.name), server.url(good.name)], cache_dir=cache)
    assert [m.entry.id for m in found.models] == ["fine"]  # the refused catalog does not list at all
    assert len(found.problems) == 1
    assert f"expected entry URLs on the catalog's own origin http://127.0.0.1:{server.port}" in found.problems[0]
    with pytest.raises(InputError, match="expected a model evil listed in the catalogs, got no models"):
        pull("evil", catalogs=[server.url(outside.name)], cache_dir=cache)
    assert server.requests.count("/good.zip") == 0


def test_a_refused_or_oversized_catalog_update_keeps_the_saved_copy(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    catalog = write_catalog(www, entry("kept", bundle_bytes, "good.zip"))
    url = server.url(catalog.name)
    assert [m.entry.id for m in list_models([url], cache_dir=cache).models] == ["kept"]
    write_catalog(www, entry("evil", bundle_bytes, "https://elsewhere.example/x.zip"))
    refused = list_models([url], cache_dir=cache)
    assert [m.entry.id for m in refused.models] == ["kept"] and len(refused.problems) == 1
    assert "expected entry URLs on the catalog's own origin" in refused.problems[0]
    assert "; listed from its copy of " in refused.problems[0]
    catalog.write_bytes(b" " * (4 * 1024**2 + 1))
    oversized = list_models([url], cache_dir=cache)
    assert [m.entry.id for m in oversized.models] == ["kept"]
    assert "expected a model catalog of at most 4194304 bytes, the server announced 4194305" in oversized.problems[0]
    server.unannounced(catalog.name)
    assert "of at most 4194304 bytes, got more" in list_models([url], cache_dir=cache).problems[0]
    assert [m.entry.id for m in list_models([url], cache_dir=cache, offline=True).models] == ["kept"]


def test_plain_http_off_this_machine_is_refused_without_connecting(tmp_path: Path, bundle_bytes: bytes,
                                                                    monkeypatch) -> None:
    def no_network(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(http.client.HTTPConnection, "connect", no_network)
    local = write_catalog(tmp_path, entry("x", bundle_bytes, "http://models.invalid/x.zip"))
    found = list_models(["http://models.invalid/catalog.json", str(local)], cache_dir=tmp_path / "cache")
    assert found.models == [] and len(found.problems) == 2
    assert "expected a model catalog to use https (plain http is allowed only to this machine" in found.problems[0]
    assert "model x@1.0.0 in the catalog: expected an entry URL to use https" in found.problems[1]
    with pytest.raises(InputError, match="to use https"):
        pull("x", catalogs=["http://models.invalid/catalog.json"], cache_dir=tmp_path / "cache")


def test_a_zip_that_is_not_a_bundle_is_refused_and_the_cache_unchanged(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    with zipfile.ZipFile(www / "notes.zip", "w") as archive:
        archive.writestr("notes.txt", "not a model")
    notes = (www / "notes.zip").read_bytes()
    catalog = write_catalog(www, entry("notes", notes, "notes.zip"),
                            entry("wrongtask", bundle_bytes, "good.zip", task="classification"),
                            entry("wronglabels", bundle_bytes, "good.zip",
                                  labels=[{"value": 0, "name": "background"}, {"value": 1, "name": "liver"}]))
    url = server.url(catalog.name)
    with pytest.raises(BundleError, match="expected model notes@1.0.0 to be a MedAnalysis bundle"):
        pull("notes", catalogs=[url], cache_dir=cache)
    with pytest.raises(BundleError, match="expected a classification bundle for model wrongtask@1.0.0 .*got a "
                                          "segmentation bundle"):
        pull("wrongtask", catalogs=[url], cache_dir=cache)
    with pytest.raises(BundleError, match=r"expected the labels \[\(0, 'background'\), \(1, 'liver'\)\] .*got "
                                          r"\[\(0, 'background'\), \(1, 'organ'\)\]"):
        pull("wronglabels", catalogs=[url], cache_dir=cache)
    assert cache_state(cache) == []


def test_second_location_is_tried_when_the_first_fails(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    catalog = write_catalog(www, entry("mirror", bundle_bytes, "gone.zip", urls=["gone.zip", "good.zip"]))
    assert pull("mirror", catalogs=[server.url(catalog.name)], cache_dir=cache).read_bytes() == bundle_bytes
    assert server.requests[-2:] == ["/gone.zip", "/good.zip"]


def test_two_pulls_at_once_leave_one_good_copy(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    catalog = write_catalog(www, entry("both", bundle_bytes, "good.zip"))
    results: list[object] = []

    def run() -> None:
        try:
            results.append(pull("both", catalogs=[server.url(catalog.name)], cache_dir=cache))
        except Exception as error:  # noqa: BLE001 - the assertion below shows it
            results.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    path = cache / "both" / "1.0.0" / sha16(bundle_bytes) / "bundle.zip"
    assert results == [path, path, path] and path.read_bytes() == bundle_bytes
    assert sorted(p.name for p in (cache / "both").iterdir()) == ["1.0.0"]


# ------------------------------------------------------------------------------------------------ command line
def medanalysis(cache: Path, *argv: str, **popen: object) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "MEDANALYSIS_MODEL_CACHE": str(cache)}
    environment.pop("MEDANALYSIS_CATALOGS", None)
    return subprocess.Popen([sys.executable, "-m", "MedAnalysisLib", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment, **popen)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def test_cli_pull_path_list_and_refusals(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    (www / "bad.zip").write_bytes(bundle_bytes[:-1] + bytes([bundle_bytes[-1] ^ 1]))
    catalog = write_catalog(www, entry("good", bundle_bytes, "good.zip"), entry("bad", bundle_bytes, "bad.zip"))
    url = server.url(catalog.name)
    code, out, err = finish(medanalysis(cache, "models", "pull", "good@1.0.0", "--catalog", url, "--progress",
                                        "jsonl"))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0, err
    assert lines[-1]["type"] == "result" and lines[-1]["path"] == str(cache / "good" / "1.0.0" / sha16(bundle_bytes) / "bundle.zip")
    assert [line["stage"] for line in lines[:-1]] == ["download"] * (len(lines) - 1)
    assert lines[-2]["fraction"] == 1.0 and lines[-2]["bytes_per_s"] > 0
    code, out, err = finish(medanalysis(cache, "models", "pull", "bad", "--catalog", url))
    assert (code, out) == (2, "")
    assert err.splitlines()[-1].startswith("error: expected sha256 ") and err.count("error:") == 1
    assert "Traceback" not in err and all(line.startswith("[download] ") for line in err.splitlines()[:-1])
    code, out, err = finish(medanalysis(cache, "models", "path", "bad", "--catalog", url))
    assert (code, out, err) == (2, "", "error: expected model bad@1.0.0 in the cache, got none: it needs a "
                                       "download (medanalysis models pull bad@1.0.0)\n")
    server.stop()
    code, out, err = finish(medanalysis(cache, "models", "path", "good", "--catalog", url))
    assert (code, out.strip(), err) == (0, str(cache / "good" / "1.0.0" / sha16(bundle_bytes) / "bundle.zip"), "")
    code, out, err = finish(medanalysis(cache, "models", "list", "--offline", "--catalog", url))
    assert code == 0 and err == ""
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["id", "version", "title", "modality", "task", "size", "status"]
    assert rows[1][0] == "bad" and rows[1][-3:] == ["needs", "a", "download"]
    assert rows[2][0] == "good" and rows[2][-1] == "cached"
    code, out, err = finish(medanalysis(cache, "models", "pull", "good", "--catalog", server.url("nothing.json"),
                                        "--timeout", "2"))
    assert code == 2 and err.startswith("error: expected a model good listed in the catalogs, got no models in "
                                        "the catalogs (1 catalog(s) could not be read: catalog http://127.0.0.1")
    assert "ConnectionRefusedError" in err and err.count("\n") == 1


def test_cli_pull_cancelled_by_sigterm_exits_3(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    catalog = write_catalog(www, entry("slow", bundle_bytes, "good.zip"))
    server.slow("good.zip", chunk=256, delay=0.3)
    process = medanalysis(cache, "models", "pull", "slow", "--catalog", server.url(catalog.name), "--progress",
                          "jsonl")
    deadline = time.monotonic() + 30
    while "/good.zip" not in server.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    code, out, err = finish(process)
    assert code == 3 and time.monotonic() - start < 2.0
    assert json.loads(out.splitlines()[-1])["error_type"] == "CancelledError"
    assert not (cache / "slow").exists()


# ------------------------------------------------------------------------------------------------ probe findings
@pytest.mark.parametrize(("how", "where"), [("whole answer", ""), ("body", " while reading the body")])
def test_a_trickling_catalog_server_is_given_up_within_its_timeout(served, bundle_bytes: bytes, how: str,
                                                                   where: str) -> None:
    server, www, cache = served
    catalog = write_catalog(www, entry("t", bundle_bytes, "good.zip"))
    if how == "whole answer":
        server.trickle(catalog.name, delay=0.3)
    else:
        server.slow(catalog.name, chunk=1, delay=0.3)
    start = time.monotonic()
    found = list_models([server.url(catalog.name)], cache_dir=cache, timeout=1.0)
    assert time.monotonic() - start < 2.0
    assert found.models == [] and len(found.problems) == 1
    assert found.problems[0].endswith(f"got no complete answer within the time limit (timed out){where}; no saved "
                                      "copy of this catalog")


def test_a_listing_deadline_lists_unreached_catalogs_from_their_saved_copies(served, bundle_bytes: bytes) -> None:
    from MedAnalysisLib.catalog.listing import NOT_REACHED, STALE_NOTE

    server, www, cache = served
    first = write_catalog(www, entry("first", bundle_bytes, "good.zip"), name="first.json")
    later = write_catalog(www, entry("later", bundle_bytes, "good.zip"), name="later.json")
    urls = [server.url(later.name), server.url(first.name), *(server.url(f"stalled{n}.json") for n in range(3))]
    assert [m.entry.id for m in list_models(urls[:2], cache_dir=cache).models] == ["first", "later"]  # copies saved
    for n in range(3):
        write_catalog(www, entry(f"s{n}", bundle_bytes, "good.zip"), name=f"stalled{n}.json")
    for name in (first.name, *(f"stalled{n}.json" for n in range(3))):
        server.trickle(name, delay=0.5)
    start = time.monotonic()
    found = list_models(urls, cache_dir=cache, timeout=10.0, deadline=time.monotonic() + 1.5)
    assert time.monotonic() - start < 2.5
    assert [(m.entry.id, m.status) for m in found.models] == [
        ("first", "needs a download (catalog not reached or refused: listed from its saved copy)"),
        ("later", "needs a download")]
    assert "no complete answer within the time limit (timed out)" + STALE_NOTE in found.problems[0]
    assert [p.endswith(f"got none: {NOT_REACHED}; no saved copy of this catalog") for p in found.problems[1:]] == [
        True, True, True]
    assert server.requests[2:] == ["/later.json", "/first.json"]  # the stalled ones were never asked


def test_a_bundle_download_fails_when_no_byte_arrives_for_the_timeout(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    catalog = write_catalog(www, entry("stalled", bundle_bytes, "good.zip"))
    url = server.url(catalog.name)
    server.slow("good.zip", chunk=4096, delay=0.3)  # slower in all than the timeout, but never silent for as long
    start = time.monotonic()
    assert pull("stalled", catalogs=[url], cache_dir=cache, timeout=1.0).read_bytes() == bundle_bytes
    assert time.monotonic() - start > 1.0
    (www / "other.zip").write_bytes(bundle_bytes)
    catalog = write_catalog(www, entry("silent", bundle_bytes, "other.zip"))
    server.slow("other.zip", chunk=4096, delay=5.0)  # one chunk, then silence
    start = time.monotonic()
    with pytest.raises(InputError, match="got no answer in time \\(timed out\\) while reading the body"):
        pull("silent", catalogs=[url], cache_dir=cache, timeout=1.0)
    assert time.monotonic() - start < 3.0
    assert not (cache / "silent").exists()


def test_relative_entry_urls_resolve_against_where_a_redirect_led(served, bundle_bytes: bytes) -> None:
    server, www, cache = served
    (www / "v2").mkdir()
    (www / "v2" / "model.zip").write_bytes(bundle_bytes)
    write_catalog(www / "v2", entry("rel", bundle_bytes, "model.zip"))
    server.redirect("catalog.json", "/v2/catalog.json", status=301)
    url = server.url("catalog.json")
    [listed] = list_models([url], cache_dir=cache).models
    assert (listed.entry.catalog, listed.entry.urls) == (url, (server.url("v2/model.zip"),))
    assert pull("rel", catalogs=[url], cache_dir=cache).read_bytes() == bundle_bytes
    assert "/v2/model.zip" in server.requests and "/model.zip" not in server.requests
    [offline] = list_models([url], cache_dir=cache, offline=True).models  # the saved copy keeps where it was read
    assert (offline.entry.urls, offline.cached) == ((server.url("v2/model.zip"),), True)
    server.redirect("catalog.json", f"http://localhost:{server.port}/v2/catalog.json")
    found = list_models([url], cache_dir=cache)
    assert "got a redirect to http://localhost" in found.problems[0]
    assert [m.entry.urls for m in found.models] == [(server.url("v2/model.zip"),)]  # from the saved copy


def test_a_killed_pull_leaves_a_staging_folder_the_next_sweep_removes(served, bundle_bytes: bytes) -> None:
    from MedAnalysisLib.catalog.cache import sweep_staging

    server, www, cache = served
    catalog = write_catalog(www, entry("killed", bundle_bytes, "good.zip"))
    server.slow("good.zip", chunk=256, delay=0.3)
    process = medanalysis(cache, "models", "pull", "killed", "--catalog", server.url(catalog.name))
    deadline = time.monotonic() + 30
    while not list((cache / "killed").glob(".staging-*/bundle.zip.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    [staging] = list((cache / "killed").glob(".staging-*"))
    assert sweep_staging(cache, max_age_s=0) == [] and staging.exists()  # a live pull holds its lock
    process.kill()
    process.communicate(timeout=30)
    assert staging.exists()  # SIGKILL: nothing of the pull ran to clean up
    assert sweep_staging(cache, max_age_s=0) == [staging]
    assert cache_state(cache) == ["killed"]  # the model's folder stays: a sweep never removes one
