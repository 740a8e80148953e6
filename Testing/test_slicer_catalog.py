"""The panel's model picker on real Qt (PySide6, offscreen) and slicer-core's real scene, against a real HTTP server
on 127.0.0.1 serving a catalog and a real bundle: catalog entries and local bundles side by side, the modality
filter, Download with progress and Cancel, tampered and truncated downloads refused with one clear line (no node, no
cached file), the cached models listed offline, and the catalog settings (add, refuse, remove).

Downloads are real ``medanalysis models pull`` child processes; the tests wait on the panel's own job state.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np
import pytest
from helpers_http import LoopbackServer, real_bundle_zip
from helpers_http import catalog_entry as entry
from PySide6 import QtCore
from slicer_gui import wait_until as layer_wait_until
from slicer_gui.fixtures import load_module_file, slicer_gui  # noqa: F401 - pytest fixtures

from MedAnalysisLib import slicer_adapter as adapter
from MedAnalysisLib.volume import Volume

JOB_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def bundle_bytes() -> bytes:
    return real_bundle_zip().read_bytes()


@pytest.fixture
def served(tmp_path, bundle_bytes):
    """A server over ``www`` with a good, a tampered and a truncated bundle, an MR entry and a slow one."""
    www = tmp_path / "www"
    www.mkdir()
    tampered = bytearray(bundle_bytes)
    tampered[len(tampered) // 2] ^= 0x01
    (www / "good.zip").write_bytes(bundle_bytes)
    (www / "tampered.zip").write_bytes(bytes(tampered))
    (www / "truncated.zip").write_bytes(bundle_bytes)
    (www / "slow.zip").write_bytes(bundle_bytes)
    models = [entry("organ-ct", bundle_bytes, "good.zip", title="Organ <b>CT</b>",
                    intended_use="Research on <i>abdominal</i> CT only."),
              entry("tampered", bundle_bytes, "tampered.zip"), entry("truncated", bundle_bytes, "truncated.zip"),
              entry("slow", bundle_bytes, "slow.zip"),
              entry("brain-mr", bundle_bytes, "good.zip", modality="MR", title="Brain MR")]
    (www / "catalog.json").write_text(json.dumps({"schema_version": 1, "name": "test", "models": models}))
    with LoopbackServer(www) as server:
        server.truncate("truncated.zip", send=4096)
        server.slow("slow.zip", chunk=256, delay=0.05)
        yield server


@pytest.fixture
def panel(slicer_gui, load_module_file):  # noqa: F811 - pytest fixture
    module = load_module_file()
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    return module, widget


def wait_until(condition, timeout_s: float = JOB_TIMEOUT_S) -> None:
    layer_wait_until(condition, timeout_s)


def rows(widget) -> list[str]:
    combo = widget.ui.modelComboBox
    return [combo.itemText(i) for i in range(1, combo.count())]


def pick(widget, title: str) -> None:
    index = next(i for i, text in enumerate(rows(widget), start=1) if text.startswith(title))
    widget.ui.modelComboBox.setCurrentIndex(index)


def add_catalog(widget, source: str) -> None:
    widget.ui.catalogLineEdit.setText(source)
    widget.ui.addCatalogButton.click()


def cached_files(cache: pathlib.Path, model_id: str) -> list[str]:
    folder = cache / model_id
    return sorted(str(p.relative_to(cache)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def add_volume(scene, name: str, modality: str):
    node = adapter.scalar_volume_node_from_volume(scene, Volume(np.zeros((4, 5, 6), np.int16)), name)
    node.SetAttribute("DICOM.Modality", modality)
    return node


def test_picker_lists_catalog_and_local_models_filters_by_modality_and_downloads(panel, slicer_gui, served,  # noqa: F811
                                                                                 tmp_path):
    module, widget = panel
    ui, params = widget.ui, widget._parameterNode
    cache = pathlib.Path(os.environ["MEDANALYSIS_MODEL_CACHE"])
    add_catalog(widget, served.url("catalog.json"))
    assert module.settingsList(module.CATALOGS_SETTING) == [served.url("catalog.json")]
    assert ui.catalogsListWidget.count() == 1
    assert not [t for t in rows(widget) if t.startswith("Model organ")]  # added: not read before Refresh
    ui.refreshModelsButton.click()
    listed = rows(widget)
    assert "Organ <b>CT</b> (needs a download) \u2014 CT segmentation" in listed
    assert any(t.startswith("Brain MR (needs a download) \u2014 MR segmentation") for t in listed)

    local = tmp_path / "local.zip"
    local.write_bytes(real_bundle_zip().read_bytes())
    params.bundlePath = local  # a local bundle chosen in the path field joins the picker
    assert [t for t in rows(widget) if "(local)" in t] and ui.modelComboBox.currentIndex() > 0
    assert module.settingsList(module.RECENT_BUNDLES_SETTING) == [str(local)]

    add_volume(slicer_gui.scene, "MR scan", "MR")
    params.inputVolume0 = add_volume(slicer_gui.scene, "CT scan", "CT")
    assert ui.matchModalityCheckBox.isEnabled()
    ui.matchModalityCheckBox.setChecked(True)
    assert rows(widget) and all(t.split(" \u2014 ")[-1].startswith("CT ") for t in rows(widget)), rows(widget)
    assert not [t for t in rows(widget) if t.startswith("Brain MR")]

    pick(widget, "Organ <b>CT</b>")
    card = ui.modelCardLabel.text()
    assert ui.modelCardLabel.textFormat() == QtCore.Qt.TextFormat.RichText
    assert "Organ &lt;b&gt;CT&lt;/b&gt;" in card and "&lt;i&gt;abdominal&lt;/i&gt;" in card
    assert card.index("Intended use") < card.index("Name") and "needs a download" in card
    assert ui.downloadButton.isVisibleTo(widget.parent) and ui.downloadButton.isEnabled()
    assert not ui.applyButton.isEnabled()

    ui.downloadButton.click()
    assert ui.downloadButton.text() == "Cancel" and ui.downloadProgressBar.isVisibleTo(widget.parent)
    wait_until(lambda: widget._job is None)
    assert ui.modelStatusLabel.text().startswith("Downloaded and verified in"), ui.modelStatusLabel.text()
    path = pathlib.Path(str(params.bundlePath))
    assert path.is_file() and path.read_bytes() == real_bundle_zip().read_bytes()
    assert ui.modelComboBox.currentText() == "Organ <b>CT</b> (cached) \u2014 CT segmentation"
    assert "tiny" in ui.modelCardLabel.text().lower() and ui.applyButton.isEnabled()
    assert not ui.downloadButton.isVisibleTo(widget.parent)
    assert cached_files(cache, "organ-ct")

    served.stop()  # offline: the saved catalog copy and the cache still list every model
    ui.matchModalityCheckBox.setChecked(False)
    widget.refreshModelList(offline=True)
    listed = rows(widget)
    assert "Organ <b>CT</b> (cached) \u2014 CT segmentation" in listed
    assert [t for t in listed if t.startswith("Brain MR") and "needs a download" in t]
    pick(widget, "Brain MR")
    assert "needs a download" in ui.modelCardLabel.text() and ui.downloadButton.isEnabled()


@pytest.mark.parametrize(("model", "expected"), [
    ("tampered", "expected sha256 "),
    ("truncated", "truncated"),
])
def test_a_tampered_or_truncated_download_shows_one_error_and_leaves_nothing(panel, slicer_gui, served,  # noqa: F811
                                                                             model, expected):
    module, widget = panel
    ui, params = widget.ui, widget._parameterNode
    cache = pathlib.Path(os.environ["MEDANALYSIS_MODEL_CACHE"])
    add_catalog(widget, served.url("catalog.json"))
    ui.refreshModelsButton.click()
    nodes_before = slicer_gui.scene.GetNumberOfNodes()
    pick(widget, f"Model {model}")
    ui.downloadButton.click()
    wait_until(lambda: widget._job is None)
    text = ui.modelStatusLabel.text()
    assert expected in text and "\n" not in text and "Traceback" not in text, text
    assert "c0392b" in ui.modelStatusLabel.styleSheet()
    assert cached_files(cache, model) == []
    assert slicer_gui.scene.GetNumberOfNodes() == nodes_before
    assert module.pathText(params.bundlePath) == "" and not ui.applyButton.isEnabled()
    assert ui.downloadButton.isEnabled() and ui.downloadButton.text() == "Download"  # can be tried again


def test_cancel_stops_a_download_and_caches_nothing(panel, served):
    module, widget = panel
    ui = widget.ui
    cache = pathlib.Path(os.environ["MEDANALYSIS_MODEL_CACHE"])
    add_catalog(widget, served.url("catalog.json"))
    ui.refreshModelsButton.click()
    pick(widget, "Model slow")
    ui.downloadButton.click()
    wait_until(lambda: widget._job is None or (widget._job.worker.progress or {}).get("fraction", 0) > 0)
    assert widget._job is not None, "the slow download ended before it could be cancelled"
    progress = ui.modelStatusLabel.text()
    assert "%" in progress and "left" in progress, progress  # bytes fraction and ETA
    started = time.monotonic()
    ui.downloadButton.click()  # Cancel
    assert time.monotonic() - started < 1.0 and ui.downloadButton.text() == "Stopping..."
    wait_until(lambda: widget._job is None, 30)
    assert ui.modelStatusLabel.text() == "Stopped on request."
    assert cached_files(cache, "slow") == []
    assert ui.downloadButton.text() == "Download" and ui.downloadButton.isEnabled()


@pytest.mark.parametrize(("source", "expected"), [
    ("", "expected a catalog URL or path, got an empty text"),
    ("   ", "expected a catalog URL or path, got an empty text"),
    ("ftp://models.example/catalog.json", "expected an https, http or file catalog URL or a path"),
    ("javascript://x", "expected an https, http or file catalog URL or a path"),
    ("https://models.example/\u202ecatalog.json", "without control or invisible characters"),
    ("https://models.example/a\nb", "without control or invisible characters"),
    ("x" * 2001, "of at most 2000 characters"),
])
def test_a_catalog_that_cannot_be_one_is_refused_and_not_kept(panel, source, expected):
    module, widget = panel
    add_catalog(widget, source)
    assert expected in widget.ui.catalogStatusLabel.text(), widget.ui.catalogStatusLabel.text()
    assert module.settingsList(module.CATALOGS_SETTING) == []
    assert widget.logic.extraCatalogs == []


def test_catalogs_are_added_once_removed_and_reach_console_calls(panel, tmp_path):
    module, widget = panel
    ui = widget.ui
    first, second = "https://models.example/catalog.json", str(tmp_path / "hospital.json")
    add_catalog(widget, first)
    add_catalog(widget, f"  {second}  ")
    add_catalog(widget, first)
    assert "already listed" in ui.catalogStatusLabel.text()
    assert module.settingsList(module.CATALOGS_SETTING) == [first, second]
    assert module.MedAnalysisLogic().extraCatalogs == [first, second]  # a console logic reads the same setting
    assert widget.logic.catalogSources()[-2:] == [first, second]
    ui.catalogsListWidget.setCurrentRow(0)
    ui.removeCatalogButton.click()
    assert module.settingsList(module.CATALOGS_SETTING) == [second] and ui.catalogsListWidget.count() == 1
    assert widget.logic.extraCatalogs == [second]
    ui.catalogsListWidget.setCurrentRow(-1)
    ui.removeCatalogButton.click()
    assert ui.catalogStatusLabel.text() == "Select a catalog to remove."


def test_hand_edited_settings_leave_the_panel_usable_and_say_what_is_wrong(slicer_gui, load_module_file,  # noqa: F811
                                                                         tmp_path):
    """Catalogs and recent bundles kept in the settings file are read back as untrusted: a catalog that cannot be
    one, an unreadable catalog file and a bundle that moved are each named, and the rest is still listed."""
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    settings = QtCore.QSettings()
    settings.setValue("MedAnalysis/ModelCatalogs", ["ftp://models.example/catalog.json", str(broken), 7])
    settings.setValue("MedAnalysis/RecentBundles", [str(tmp_path / "moved.zip")] * 3 + [str(tmp_path / f"{n}.zip")
                                                                                       for n in range(20)])
    settings.sync()
    module = load_module_file()
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    status = widget.ui.modelStatusLabel.text().splitlines()
    assert status[0].startswith("Catalog not read: expected an https, http or file catalog URL or a path, got ftp:")
    assert any("broken.json" in line for line in status[1:]), status
    listed = [entry.text for entry in widget._pickerEntries if entry.kind == "local"]  # after the shipped catalog's
    assert len(listed) == 10 and listed[0].startswith("moved.zip (cannot be read: expected a "), listed
    assert widget.logic.catalogSources()[-1] == str(broken)  # the readable-looking one is still tried
    assert widget.ui.modelCardLabel.text() == "No model selected."


@pytest.mark.parametrize("result", [{}, {"path": 7}, {"path": ""}, {"path": "/etc/passwd"},
                                    {"path": "{cache}/../outside/bundle.zip"}, {"bundle": "{cache}/x/bundle.zip"}])
def test_a_pull_result_outside_the_cache_is_not_opened(tmp_path, result):
    from slicer_scene import make_scene

    from MedAnalysisLib.errors import InputError
    from MedAnalysisSlicerLib.logic import SceneLogic

    bundle = make_scene()
    try:
        logic = SceneLogic(bundle.scene)
        logic.modelCacheDir = str(tmp_path / "cache")
        result = {k: v.format(cache=logic.modelCacheDir) if isinstance(v, str) else v for k, v in result.items()}
        with pytest.raises(InputError, match="expected the downloaded bundle"):
            logic.pulledBundlePath(result)
        assert logic.pulledBundlePath({"path": f"{logic.modelCacheDir}/m/1.0.0/bundle.zip"}).endswith("bundle.zip")
    finally:
        bundle.close()


@pytest.mark.parametrize(("chunk", "delay"), [(16, 0.3), (1, 5.0)], ids=["trickling", "stalled"])
def test_refresh_returns_within_its_budget_from_a_slow_catalog_and_keeps_the_saved_list(panel, served, chunk, delay):
    """A catalog server that trickles bytes (each read well inside any per-read timeout) or stalls cannot hold the
    panel: Refresh returns within its budget plus a margin, names the catalog as not reached, and still lists the
    models of the catalog's saved copy (from an earlier Refresh)."""
    _module, widget = panel
    ui = widget.ui
    add_catalog(widget, served.url("catalog.json"))
    ui.refreshModelsButton.click()  # a fast read first: it leaves a saved copy
    assert [t for t in rows(widget) if t.startswith("Brain MR")], (rows(widget), ui.modelStatusLabel.text())
    served.slow("catalog.json", chunk=chunk, delay=delay)
    widget.logic.refreshBudgetS = 1.0
    started = time.monotonic()
    ui.refreshModelsButton.click()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 1.5, f"Refresh held the panel {elapsed:.1f} s"
    status = ui.modelStatusLabel.text()
    # the line names the catalog and the time limit (the catalog library's words, or the panel's own when the
    # library overruns: see the next test)
    assert status.startswith(f"Catalog not read: catalog {served.url('catalog.json')}: ") and " within " in status, \
        status
    assert [t for t in rows(widget) if t.startswith("Brain MR")]  # the saved copy's models are still offered
    assert ui.refreshModelsButton.isEnabled()


def test_refresh_is_bounded_even_when_the_catalog_library_overruns_its_deadline(tmp_path, monkeypatch):
    """The panel's own bound does not rely on the library keeping its deadline: a listing that blocks (a name
    lookup that hangs, a library without a deadline) is abandoned at the budget, and the saved copies are listed
    with each remote catalog named as not reached."""
    import threading

    from slicer_scene import make_scene

    import MedAnalysisLib.catalog as catalog
    from MedAnalysisSlicerLib.logic import SceneLogic

    real = catalog.list_models
    release = threading.Event()

    def hanging(*args, **kwargs):
        if not kwargs.get("offline"):
            release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(catalog, "list_models", hanging)
    bundle = make_scene()
    try:
        logic = SceneLogic(bundle.scene)
        logic.modelCacheDir = str(tmp_path / "cache")
        logic.extraCatalogs = ["https://models.example/a.json", "http://127.0.0.1:9/b.json", str(tmp_path / "c.json")]
        started = time.monotonic()
        listing = logic.refreshModels(budget=0.5)
        assert time.monotonic() - started < 0.5 + 0.5
        assert listing.problems[:2] == [
            f"catalog {source}: not reached within 0.5 s; listed from its saved copy"
            for source in ("https://models.example/a.json", "http://127.0.0.1:9/b.json")]
    finally:
        release.set()
        bundle.close()


@pytest.mark.parametrize("budget", [0, -1, float("nan"), float("inf"), True, "5"])
def test_a_refresh_budget_that_cannot_bound_is_refused(tmp_path, budget):
    from slicer_scene import make_scene

    from MedAnalysisLib.errors import InputError
    from MedAnalysisSlicerLib.logic import SceneLogic

    bundle = make_scene()
    try:
        logic = SceneLogic(bundle.scene)
        logic.modelCacheDir = str(tmp_path / "cache")
        with pytest.raises(InputError, match="expected a refresh budget from 0 to 600 seconds, got "):
            logic.refreshModels(budget=budget)
    finally:
        bundle.close()
