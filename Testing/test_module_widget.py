"""The real MedAnalysis panel (``MedAnalysisWidget`` from ``MedAnalysis/MedAnalysis.py`` and its ``.ui``), driven as
a user drives it, on real Qt (PySide6, offscreen) and slicer-core's real MRML scene through ``Testing/slicer_gui``.

Background jobs are real ``medanalysis`` child processes; the poll timer is Qt's. The ``slicer_gui`` fixture fails a
test when a slot or VTK observer raised, or when a dialog opened that the test did not expect.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import time

import numpy as np
import pytest
from helpers_packages import pip_into, requirement_files, write_wheel
from PySide6 import QtCore, QtWidgets
from slicer_gui import wait_until as layer_wait_until
from slicer_gui.fixtures import load_module_file, slicer_gui  # noqa: F401 - pytest fixtures
from slicer_scene import oblique_ct_volume

from MedAnalysisLib import slicer_adapter as adapter

JOB_TIMEOUT_S = 240
TINY_TRAINING = "--steps-per-epoch 2 --workers 1 --set patch_size=16,16,16 --set batch_size=2 --hparam filters=[4,8]"


@pytest.fixture
def panel(slicer_gui, load_module_file):  # noqa: F811 - pytest fixture
    """The module file imported under the layer, and its widget as Slicer shows it (setup, enter)."""
    module = load_module_file()
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    return module, widget


def add_ct(scene, name: str = "CT", study: bool = True):
    volume = oblique_ct_volume()
    node = adapter.scalar_volume_node_from_volume(scene, volume, name)
    if study:
        sh = scene.GetSubjectHierarchyNode()
        studyItem = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
        item = sh.GetItemByDataNode(node) or sh.CreateItem(studyItem, node)
        sh.SetItemParent(item, studyItem)
    return node


def wait_until(condition, timeout_s: float = JOB_TIMEOUT_S) -> None:
    layer_wait_until(condition, timeout_s)


def wait_for_job(widget) -> None:
    wait_until(lambda: widget._job is None)


def nodes_of(scene, class_name: str) -> list:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def timed_click(button) -> float:
    start = time.monotonic()
    button.click()
    return time.monotonic() - start


# ------------------------------------------------------------------ panel states
def test_the_panel_follows_its_parameter_node_through_every_state(panel, slicer_gui, bundles):  # noqa: F811
    module, widget = panel
    ui, params = widget.ui, widget._parameterNode
    segmentation_bundle, classification_bundle = bundles
    assert ui.modelCardLabel.text() == "No model selected."
    assert not ui.applyButton.isEnabled() and ui.applyButton.text() == "Apply"
    assert "Select a model bundle" in ui.applyButton.toolTip()

    ct = add_ct(slicer_gui.scene)  # loaded while the panel is open: becomes the input
    assert params.inputVolume0 is ct
    params.bundlePath = pathlib.Path(segmentation_bundle) / "bundle.json"  # what the file dialog picks
    assert "tiny organ model" in ui.modelCardLabel.text()
    labels = ui.labelsTableWidget
    assert [labels.item(row, 1).text() for row in range(labels.rowCount())] == ["liver", "tumor"]
    assert ui.labelsTableWidget.item(0, 2).text() == "Liver"
    assert ui.applyButton.isEnabled() and ui.inputVolumeSelector0.isVisibleTo(widget.parent)
    assert not ui.inputVolumeSelector1.isVisibleTo(widget.parent)
    assert ui.outputTypeComboBox.isEnabled() and not ui.perSlicePlotCheckBox.isEnabled()
    assert not ui.overlapSpinBox.isEnabled()  # the bundle's overlap unless overridden
    ui.overrideOverlapCheckBox.setChecked(True)
    assert params.overrideOverlap and ui.overlapSpinBox.isEnabled()
    params.outputType = "labelmap"
    assert ui.outputLabelmapSelector.isVisibleTo(widget.parent)
    assert not ui.outputSegmentationSelector.isVisibleTo(widget.parent)

    params.bundlePath = pathlib.Path(classification_bundle) / "bundle.json"
    assert "tiny lesion classifier" in ui.modelCardLabel.text()
    assert not ui.outputTypeComboBox.isEnabled() and ui.perSlicePlotCheckBox.isEnabled()

    assert ui.trainingVolumeSelector.isVisibleTo(widget.parent)
    params.trainingSource = "folder"
    assert ui.trainingDatasetPathLineEdit.isVisibleTo(widget.parent)
    assert not ui.trainingVolumeSelector.isVisibleTo(widget.parent)
    assert not ui.trainButton.isEnabled() and not ui.evaluateButton.isEnabled()


def test_a_bundle_that_cannot_be_read_is_explained_in_the_card(panel, tmp_path):
    module, widget = panel
    ui, params = widget.ui, widget._parameterNode
    not_a_bundle = tmp_path / "notes.zip"
    not_a_bundle.write_bytes(b"not a zip")
    for path, expected in [(tmp_path / "missing.zip", "Cannot use this bundle: expected a bundle"),
                           (not_a_bundle, "Cannot use this bundle: expected a readable .zip"),
                           (pathlib.Path("x" * 5000 + ".zip"), "Cannot use this bundle: expected a ")]:
        params.bundlePath = path
        assert ui.modelCardLabel.text().startswith(expected), ui.modelCardLabel.text()
        assert not ui.applyButton.isEnabled()


def test_model_card_values_are_text_not_markup(panel, slicer_gui, bundles, tmp_path):  # noqa: F811
    module, widget = panel
    segmentation_bundle, _ = bundles
    hostile = tmp_path / "hostile"
    shutil.copytree(segmentation_bundle, hostile)
    config = json.loads((hostile / "bundle.json").read_text())
    config["name"] = "<img src=x onerror=alert(1)><b>bold</b>"
    (hostile / "bundle.json").write_text(json.dumps(config))
    widget._parameterNode.bundlePath = hostile / "bundle.json"
    text = widget.ui.modelCardLabel.text()
    assert "&lt;img src=x onerror=alert(1)&gt;&lt;b&gt;bold&lt;/b&gt;" in text and "<img" not in text


# ------------------------------------------------------------------ Apply, Cancel, results
def test_apply_runs_in_the_background_and_puts_results_under_the_study(panel, slicer_gui, bundles):  # noqa: F811
    module, widget = panel
    ui, params, scene = widget.ui, widget._parameterNode, slicer_gui.scene
    segmentation_bundle, _ = bundles
    ct = add_ct(scene)
    params.bundlePath = pathlib.Path(segmentation_bundle) / "bundle.json"
    params.createProbabilities = True
    before = adapter.snapshot(ct)

    ui.applyButton.click()
    job = widget._job
    assert job is not None and ui.applyButton.text() == "Cancel" and ui.applyButton.isEnabled()
    argv = job.worker.argv
    assert "--tta" not in argv and "--overlap" not in argv  # bundle defaults
    assert argv[argv.index("predict") + 1] == str(segmentation_bundle)  # the folder, not its bundle.json
    wait_for_job(widget)

    assert ui.statusLabel.text().startswith("Done in"), ui.statusLabel.text()
    assert ui.applyButton.text() == "Apply" and not ui.progressBar.isVisible()
    [segmentation] = nodes_of(scene, "vtkMRMLSegmentationNode")
    segments = segmentation.GetSegmentation()
    assert [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())] == ["liver", "tumor"]
    sh = scene.GetSubjectHierarchyNode()
    study = sh.GetItemParent(sh.GetItemByDataNode(ct))
    table = widget.logic.lastOutputs["table"]
    assert adapter.study_item(segmentation) == study and adapter.study_item(table) == study
    # The table is shown: the layout now has a table view and the table is the active one.
    layouts = [arguments["layout"] for name, arguments in slicer_gui.calls if name == "setLayout"]
    tables_logic = slicer_gui.scene_bundle.tables_logic
    assert layouts and tables_logic.GetLayoutWithTable(layouts[-1]) == layouts[-1]
    assert slicer_gui.app.applicationLogic().GetSelectionNode().GetActiveTableID() == table.GetID()
    after = adapter.snapshot(ct)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert not job.context["scratch"].exists()
    # One probability volume per foreground label, on the input's exact grid, summing to at most 1.
    maps = widget.logic.lastOutputs["probabilities"]
    assert [node.GetName().rsplit(" ", 1)[-1] for node in maps] == ["P(liver)", "P(tumor)"]
    arrays = [adapter.volume_from_node(node).array for node in maps]
    for node in maps:
        np.testing.assert_allclose(adapter.ijk_to_ras_array(node), adapter.ijk_to_ras_array(ct), atol=1e-9)
    assert all(a.min() >= 0 and a.max() <= 1 for a in arrays) and (arrays[0] + arrays[1]).max() <= 1 + 1e-5


def test_overridden_overlap_and_tta_reach_the_command_line(panel, slicer_gui, bundles):  # noqa: F811
    module, widget = panel
    ui, params = widget.ui, widget._parameterNode
    add_ct(slicer_gui.scene)
    params.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    params.overrideOverlap, params.overlap, params.testTimeAugmentation = True, 0.25, "off"
    ui.applyButton.click()
    argv = widget._job.worker.argv
    assert argv[argv.index("--overlap") + 1] == "0.25" and argv[argv.index("--tta") + 1] == "off"
    assert timed_click(ui.applyButton) < 0.5  # Cancel
    wait_for_job(widget)


def test_cancel_returns_at_once_and_the_run_stops(panel, slicer_gui, bundles):  # noqa: F811
    module, widget = panel
    ui, params, scene = widget.ui, widget._parameterNode, slicer_gui.scene
    add_ct(scene)
    params.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    ui.applyButton.click()
    job = widget._job
    took = timed_click(ui.applyButton)  # "Cancel"

    assert took < 0.5, f"Cancel blocked the panel for {took:.2f} s"
    assert ui.applyButton.text() == "Stopping..." and not ui.applyButton.isEnabled()
    assert ui.statusLabel.text() == "Stopping at the next safe point..."
    wait_for_job(widget)
    assert "Stopped on request" in ui.statusLabel.text() and "c0392b" in ui.statusLabel.styleSheet()
    assert ui.applyButton.text() == "Apply" and ui.applyButton.isEnabled()
    assert not nodes_of(scene, "vtkMRMLSegmentationNode")
    assert not job.context["scratch"].exists()


def test_a_failing_run_shows_the_library_message(panel, slicer_gui, bundles, tmp_path):  # noqa: F811
    module, widget = panel
    broken = tmp_path / "broken"
    shutil.copytree(bundles[0], broken)
    weights = broken / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:-64] + bytes(64))  # the sha256 in bundle.json no longer matches
    add_ct(slicer_gui.scene)
    widget._parameterNode.bundlePath = broken / "bundle.json"
    widget.ui.applyButton.click()
    wait_for_job(widget)
    assert "sha256" in widget.ui.statusLabel.text() and "c0392b" in widget.ui.statusLabel.styleSheet()
    assert not nodes_of(slicer_gui.scene, "vtkMRMLSegmentationNode")


def test_classification_in_process_shows_table_and_plot_and_leaves_the_training_curves(
        panel, slicer_gui, slice_classifier):  # noqa: F811
    module, widget = panel
    ui, params, scene = widget.ui, widget._parameterNode, slicer_gui.scene
    add_ct(scene)
    curves_table, curves = widget.logic.createTrainingCurves()
    widget.logic.showTrainingCurves(curves)
    training_view = widget.logic.trainingPlotViewNode()
    params.bundlePath = pathlib.Path(slice_classifier) / "bundle.json"
    params.runInBackground = False
    ui.applyButton.click()
    assert widget._job is None and ui.statusLabel.text() == "Done."
    table, chart = widget.logic.lastOutputs["table"], widget.logic.lastOutputs.get("chart")
    rows = adapter.rows_from_table_node(table)
    assert [row["scope"] for row in rows if row["scope"] == "slice"] == ["slice"] * 12  # one row per slice (k)
    assert chart is not None
    layouts = [arguments["layout"] for name, arguments in slicer_gui.calls if name == "setLayout"]
    assert layouts[-1] == scene.GetFirstNodeByClass("vtkMRMLLayoutNode").SlicerLayoutFourUpPlotTableView
    assert training_view.GetPlotChartNodeID() == curves.GetID()


# ------------------------------------------------------------------ training and evaluation
@pytest.mark.slow
def test_train_from_scene_pairs_with_live_curves_then_evaluate(panel, slicer_gui, bundles, tmp_path):  # noqa: F811
    module, widget = panel
    ui, params, scene = widget.ui, widget._parameterNode, slicer_gui.scene
    pairs = []
    for case in range(2):
        ct = add_ct(scene, f"case {case}")
        labels = np.zeros((12, 20, 24), np.uint8)
        labels[4:9, 6:14, 8:16] = 1
        segmentation = adapter.segmentation_node_from_volume(
            scene, adapter.volume_from_node(ct).with_array(labels), [{"value": 1, "name": "liver"}],
            reference_node=ct)
        pairs.append((ct, segmentation))
    for ct, segmentation in pairs:
        ui.trainingVolumeSelector.setCurrentNode(ct)
        ui.trainingSegmentationSelector.setCurrentNode(segmentation)
        ui.addTrainingCaseButton.click()
    assert [node.GetID() for node in params.trainingVolumes] == [ct.GetID() for ct, _ in pairs]
    assert ui.trainingCasesTableWidget.item(1, 0).text() == "case 1"
    output = tmp_path / "liver-model"
    params.trainingOutputPath, params.trainingEpochs, params.trainingOptions = output, 2, TINY_TRAINING
    assert ui.trainButton.isEnabled()
    ui.trainButton.click()  # volumes made in the scene carry no modality: the panel asks for it, starts nothing
    assert widget._job is None and "expected the modality" in ui.trainingStatusLabel.text()
    params.trainingModality = "CT"

    ui.trainButton.click()
    assert ui.trainButton.text() == "Stop"
    wait_for_job(widget)
    assert json.loads((pathlib.Path(str(output) + "-training-data") / "dataset.json").read_text())["modality"] == {
        "0": "CT"}

    assert ui.trainingStatusLabel.text().startswith("Training finished"), ui.trainingStatusLabel.text()
    assert (output / "bundle.json").is_file()
    assert pathlib.Path(str(params.bundlePath)) == output and widget._modelCard is not None
    table, chart = widget._trainingCurves
    assert [row["epoch"] for row in adapter.rows_from_table_node(table)] == [1, 2]
    assert widget.logic.trainingPlotViewNode().GetPlotChartNodeID() == chart.GetID()
    assert ui.trainingPlotWidget.mrmlPlotViewNode() is widget.logic.trainingPlotViewNode()

    params.evaluationDatasetPath = pathlib.Path(str(output) + "-training-data") / "dataset.json"
    params.evaluationOutputPath = tmp_path / "report"
    ui.evaluateButton.click()
    assert ui.evaluateButton.text() == "Cancel"
    wait_for_job(widget)
    assert ui.evaluationStatusLabel.text().startswith("Done in"), ui.evaluationStatusLabel.text()
    metrics = {row["metric"] for row in adapter.rows_from_table_node(widget.logic.lastOutputs["table"])}
    assert any(name.startswith("dice") for name in metrics)

    # Again into the same places: the panel asks before replacing either (the command line would refuse).
    slicer_gui.dialogs.expect("confirmOkCancelDisplay", False, contains="already holds an evaluation report")
    ui.evaluateButton.click()
    assert widget._job is None and ui.evaluationStatusLabel.text().startswith("Not started: the report")
    slicer_gui.dialogs.expect("confirmOkCancelDisplay", False, contains="A trained model bundle is already at")
    ui.trainButton.click()
    assert widget._job is None and ui.trainingStatusLabel.text().startswith("Not started: the bundle")
    slicer_gui.dialogs.expect("confirmOkCancelDisplay", True, contains="already holds an evaluation report")
    ui.evaluateButton.click()
    assert "--overwrite" in widget._job.worker.argv
    wait_for_job(widget)
    assert ui.evaluationStatusLabel.text().startswith("Done in"), ui.evaluationStatusLabel.text()


def test_invalid_training_options_are_refused_before_anything_starts(panel, slicer_gui, tmp_path):  # noqa: F811
    module, widget = panel
    params, ui = widget._parameterNode, widget.ui
    params.trainingSource = "folder"
    params.trainingDatasetPath, params.trainingOutputPath = tmp_path, tmp_path / "model.zip"
    params.trainingOptions = "--epochs 5 --bogus"
    ui.trainButton.click()
    assert widget._job is None
    assert "panel's own fields" in ui.trainingStatusLabel.text()


# ------------------------------------------------------------------ Python packages
@pytest.fixture
def probe_site(tmp_path, monkeypatch):
    wheelhouse, target = tmp_path / "wheels", tmp_path / "site"
    target.mkdir()
    monkeypatch.syspath_prepend(str(target))
    yield wheelhouse, target
    sys.modules.pop("medanalysis_probe", None)


def use_installer(widget, tmp_path, requirement: str, pip) -> None:
    from MedAnalysisSlicerLib.installer import PackageInstaller

    files = requirement_files(tmp_path, [requirement])
    widget.logic.installer = PackageInstaller(pip, [files[0]], [files[1]])


def test_declining_the_install_starts_nothing(panel, slicer_gui, bundles, tmp_path, probe_site):  # noqa: F811
    module, widget = panel
    add_ct(slicer_gui.scene)
    widget._parameterNode.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    use_installer(widget, tmp_path, "medanalysis-probe>=1.0", pip_into(*probe_site))
    slicer_gui.dialogs.expect("confirmOkCancelDisplay", False, contains="medanalysis-probe>=1.0")
    widget.ui.applyButton.click()
    assert widget._job is None
    assert widget.ui.statusLabel.text() == "Not started: MedAnalysis needs the Python packages medanalysis-probe>=1.0."


def test_pip_failure_shows_pips_message_and_nothing_else(panel, slicer_gui, bundles, tmp_path, probe_site):  # noqa: F811
    module, widget = panel
    add_ct(slicer_gui.scene)
    widget._parameterNode.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    use_installer(widget, tmp_path, "medanalysis-probe>=1.0", pip_into(*probe_site))  # empty wheelhouse
    slicer_gui.dialogs.expect("confirmOkCancelDisplay", True, contains="medanalysis-probe")
    widget.ui.applyButton.click()
    assert widget._job is None
    text = widget.ui.statusLabel.text()
    assert text.startswith("Installing the Python packages failed:") and "medanalysis-probe" in text
    assert "No matching distribution" in text or "Could not find" in text, text


def test_an_install_that_installs_nothing_is_reported_as_such(panel, slicer_gui, bundles, tmp_path):  # noqa: F811
    """As Slicer's pip_ensure does in testing mode: returns normally, installs nothing."""
    module, widget = panel
    add_ct(slicer_gui.scene)
    widget._parameterNode.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    use_installer(widget, tmp_path, "medanalysis-probe>=1.0", lambda requirements, constraints: None)
    slicer_gui.dialogs.expect("confirmOkCancelDisplay", True, contains="medanalysis-probe")
    widget.ui.applyButton.click()
    assert widget._job is None
    assert "still not installed: medanalysis-probe>=1.0" in widget.ui.statusLabel.text()


def test_updating_a_loaded_package_asks_one_restart_question(panel, slicer_gui, bundles, tmp_path, probe_site):  # noqa: F811
    import importlib

    module, widget = panel
    wheelhouse, target = probe_site
    write_wheel(wheelhouse, "1.0")
    pip = pip_into(wheelhouse, target)
    use_installer(widget, tmp_path, "medanalysis-probe>=2.0", pip)
    widget.logic.installer.install(["medanalysis-probe==1.0"])
    importlib.import_module("medanalysis_probe")
    write_wheel(wheelhouse, "2.0")
    add_ct(slicer_gui.scene)
    widget._parameterNode.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    slicer_gui.dialogs.expect("confirmOkCancelDisplay", True, contains="medanalysis-probe>=2.0")
    slicer_gui.dialogs.expect("confirmYesNoDisplay", True, contains="Restart Slicer now")
    widget.ui.applyButton.click()
    assert widget._job is None
    assert ("restart", {}) in slicer_gui.calls
    assert [call.kind for call in slicer_gui.dialogs.calls] == ["confirmOkCancelDisplay", "confirmYesNoDisplay"]


def test_a_new_package_installs_after_one_question_and_the_run_starts(
        panel, slicer_gui, bundles, tmp_path, probe_site):  # noqa: F811
    module, widget = panel
    wheelhouse, target = probe_site
    write_wheel(wheelhouse, "1.0")
    use_installer(widget, tmp_path, "medanalysis-probe>=1.0", pip_into(wheelhouse, target))
    add_ct(slicer_gui.scene)
    widget._parameterNode.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    slicer_gui.dialogs.expect("confirmOkCancelDisplay", True, contains="medanalysis-probe")
    widget.ui.applyButton.click()
    assert widget._job is not None and len(slicer_gui.dialogs.calls) == 1
    widget.ui.applyButton.click()  # Cancel: only the consent mattered here
    wait_for_job(widget)


# ------------------------------------------------------------------ browse dialogs
@pytest.mark.parametrize(("field", "dialog", "picked", "parameter"), [
    ("bundlePathLineEdit", "getOpenFileName", "/models/liver/bundle.json", "bundlePath"),
    ("trainingOutputPathLineEdit", "getSaveFileName", "/models/new-liver-model", "trainingOutputPath"),
    ("trainingDatasetPathLineEdit", "getExistingDirectory", "/data/Task04_Hippocampus", "trainingDatasetPath"),
    ("evaluationDatasetPathLineEdit", "getExistingDirectory", "/data/dicom-study", "evaluationDatasetPath"),
    ("evaluationOutputPathLineEdit", "getExistingDirectory", "/reports/liver", "evaluationOutputPath"),
])
def test_each_path_field_opens_the_dialog_its_value_needs(panel, monkeypatch, field, dialog, picked, parameter):
    import qt

    module, widget = panel
    opened = []
    for name in ("getOpenFileName", "getSaveFileName", "getExistingDirectory"):
        def record(*args, _name=name, **kwargs):
            opened.append(_name)
            return (picked, "") if _name != "getExistingDirectory" else picked
        monkeypatch.setattr(qt.QFileDialog, name, staticmethod(record))
    getattr(widget.ui, field).browse()
    assert opened == [dialog]
    assert str(getattr(widget._parameterNode, parameter)) == picked


# ------------------------------------------------------------------ module life cycle
def test_closing_the_module_stops_a_running_job_and_removes_its_files(panel, slicer_gui, bundles):  # noqa: F811
    module, widget = panel
    add_ct(slicer_gui.scene)
    widget._parameterNode.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    widget.ui.applyButton.click()
    job = widget._job
    scratch = job.context["scratch"]
    assert scratch.exists()
    widget.cleanup()
    assert not job.running and not scratch.exists() and widget._job is None


def test_an_older_slicer_gets_a_message_in_the_panel_not_a_traceback(slicer_gui, load_module_file):  # noqa: F811
    slicer_gui.app.majorVersion, slicer_gui.app.minorVersion = 5, 8
    module = load_module_file()
    assert module.UNSUPPORTED_REASON is not None
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    [label] = [child for child in widget.parent.findChildren(QtWidgets.QLabel)
               if child.objectName() == "unsupportedSlicerLabel"]
    assert "needs 3D Slicer 5.10 or newer" in label.text() and "Slicer 5.8" in label.text()
    assert widget.ui is None and "MedAnalysisSlicerLib.logic" not in sys.modules
    widget.enter()
    widget.exit()
    with pytest.raises(RuntimeError, match="5.10"):
        module.MedAnalysisLogic()
    assert module.unsupportedSlicerReason(slicer_gui.app, (3, 9, 10)) is not None
    slicer_gui.app.minorVersion = 10
    assert module.unsupportedSlicerReason(slicer_gui.app, (3, 12, 10)) is None
    assert module.unsupportedSlicerReason(slicer_gui.app, (3, 9, 10)) is not None


def test_the_widget_can_be_made_without_a_parent(slicer_gui, load_module_file):  # noqa: F811
    """Slicer's base class calls setup() from __init__ when no parent is given (scripts, the console)."""
    module = load_module_file()
    widget = module.MedAnalysisWidget()
    slicer_gui.widgets.append(widget)
    assert widget.ui is not None and widget.logic is not None


# ------------------------------------------------------------------ the scene changing under the panel
def test_an_output_node_removed_during_the_run_is_made_anew(panel, slicer_gui, bundles):  # noqa: F811
    module, widget = panel
    scene, params = slicer_gui.scene, widget._parameterNode
    add_ct(scene)
    chosen = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "chosen output")
    params.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    params.outputSegmentation = chosen
    widget.ui.applyButton.click()
    scene.RemoveNode(chosen)
    wait_for_job(widget)
    assert widget.ui.statusLabel.text().startswith("Done in"), widget.ui.statusLabel.text()
    [segmentation] = nodes_of(scene, "vtkMRMLSegmentationNode")
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2


def test_an_input_removed_during_the_run_imports_nothing_and_says_why(panel, slicer_gui, bundles):  # noqa: F811
    module, widget = panel
    scene = slicer_gui.scene
    ct = add_ct(scene)
    widget._parameterNode.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    widget.ui.applyButton.click()
    scene.RemoveNode(ct)
    wait_for_job(widget)
    assert "input volume was removed" in widget.ui.statusLabel.text()
    assert not nodes_of(scene, "vtkMRMLSegmentationNode")


def test_closing_the_scene_stops_the_run_and_cleans_up(panel, slicer_gui, bundles):  # noqa: F811
    module, widget = panel
    scene = slicer_gui.scene
    add_ct(scene)
    widget._parameterNode.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    widget.ui.applyButton.click()
    job = widget._job
    scene.Clear(0)
    assert widget._job is None and widget.ui.statusLabel.text() == "Stopped: the scene was closed."
    assert widget.ui.applyButton.text() == "Apply"
    wait_until(lambda: not widget._orphans)
    assert not job.running and not job.context["scratch"].exists()
    assert not nodes_of(scene, "vtkMRMLSegmentationNode")


def test_a_second_click_while_the_first_is_starting_starts_nothing(panel, slicer_gui, bundles, monkeypatch):  # noqa: F811
    module, widget = panel
    add_ct(slicer_gui.scene)
    widget._parameterNode.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    started = []
    real = widget.logic.segment

    def segment(*args, **kwargs):
        job = real(*args, **kwargs)
        started.append(job)
        return job

    monkeypatch.setattr(widget.logic, "segment", segment)
    monkeypatch.setattr(slicer_gui.app, "processEvents", lambda: widget.onApplyButton())  # a queued second click
    widget.ui.applyButton.click()
    assert len(started) == 1
    widget.ui.applyButton.click()  # Cancel
    wait_for_job(widget)


# ------------------------------------------------------------------ what a saved scene or a bundle may hold
def test_values_from_an_older_or_edited_scene_are_repaired_before_the_panel_shows_them(
        slicer_gui, load_module_file):  # noqa: F811
    module = load_module_file()
    node = module.MedAnalysisLogic().getParameterNode().parameterNode
    for name, stored in [("testTimeAugmentation", "False"), ("trainingFamily", "resnet"), ("overlap", "0.95"),
                         ("trainingEpochs", "-3"), ("outputType", "mesh")]:
        node.SetParameter(name, stored)
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    params = widget._parameterNode
    assert (params.testTimeAugmentation, params.trainingFamily, params.overlap, params.trainingEpochs,
            params.outputType) == ("bundle default", "unet3d", 0.9, 1, "segmentation")
    import slicer

    stored = slicer.vtkMRMLScriptedModuleNode()  # as a scene saved by the release with the checkbox holds it
    stored.SetParameter("testTimeAugmentation", "True")
    from MedAnalysisSlicerLib.messages import repairStoredParameters

    repairStoredParameters(stored, module.MedAnalysisParameterNode)
    assert stored.GetParameter("testTimeAugmentation") == "on"


def test_a_labelmap_as_input_is_not_an_input(panel, slicer_gui, bundles):  # noqa: F811
    module, widget = panel
    labelmap = slicer_gui.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    widget._parameterNode.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    widget._parameterNode.inputVolume0 = labelmap
    assert not widget.ui.applyButton.isEnabled()


def _edited_bundle(source, folder, edit):
    shutil.copytree(source, folder)
    config = json.loads((folder / "bundle.json").read_text())
    edit(config)
    (folder / "bundle.json").write_text(json.dumps(config))
    return folder / "bundle.json"


def test_a_bundle_whose_card_cannot_be_shown_is_refused_in_the_card(panel, bundles, tmp_path):
    """A terminology without its category passes bundle validation but cannot be shown: the card says so."""
    module, widget = panel

    def drop_category(config):
        for label in config["labels"]:
            if label.get("terminology"):
                label["terminology"] = {"type": label["terminology"]["type"]}

    widget._parameterNode.bundlePath = _edited_bundle(bundles[0], tmp_path / "odd", drop_category)
    assert widget.ui.modelCardLabel.text().startswith("Cannot use this bundle"), widget.ui.modelCardLabel.text()
    assert widget._modelCard is None and widget.ui.labelsTableWidget.rowCount() == 0
    assert not widget.ui.applyButton.isEnabled()


def test_names_from_a_bundle_are_shown_as_text(panel, bundles, tmp_path):
    module, widget = panel

    def markup_modality(config):
        config["input"]["channels"][0]["modality"] = "<b>MR</b>"

    widget._parameterNode.bundlePath = _edited_bundle(bundles[0], tmp_path / "markup", markup_modality)
    label = widget.ui.inputChannelLabel0
    assert label.text() == "Input (<b>MR</b>):" and label.textFormat() == QtCore.Qt.TextFormat.PlainText
def test_clearing_a_path_field_unsets_its_parameter(panel, bundles):
    module, widget = panel
    params = widget._parameterNode
    params.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    assert widget._modelCard is not None
    widget.ui.bundlePathLineEdit.currentPath = ""
    assert str(params.bundlePath) == "." and widget._modelCard is None
    assert widget.ui.modelCardLabel.text() == "No model selected."


def test_incomplete_training_cases_disable_train_and_can_be_removed(panel, slicer_gui, tmp_path):  # noqa: F811
    module, widget = panel
    params, ui = widget._parameterNode, widget.ui
    volumes = [add_ct(slicer_gui.scene, f"case {n}", study=False) for n in range(2)]
    params.trainingVolumes, params.trainingOutputPath = volumes, tmp_path / "model.zip"
    assert not ui.trainButton.isEnabled() and "2 volumes and 0 segmentations" in ui.trainButton.toolTip()
    ui.trainingCasesTableWidget.setCurrentCell(1, 0)
    ui.removeTrainingCaseButton.click()
    assert [node.GetName() for node in params.trainingVolumes] == ["case 0"]


def test_pips_own_words_reach_the_panel(panel, slicer_gui, bundles, tmp_path, probe_site):  # noqa: F811
    """With the runner the module uses in Slicer 5.10 (pip output kept), pip's error is what the panel shows."""
    module, widget = panel
    add_ct(slicer_gui.scene)
    widget._parameterNode.bundlePath = pathlib.Path(bundles[0]) / "bundle.json"
    use_installer(widget, tmp_path, "medanalysis-probe>=1.0", pip_into(*probe_site))
    slicer_gui.dialogs.expect("confirmOkCancelDisplay", True, contains="medanalysis-probe")
    widget.ui.applyButton.click()
    assert "No matching distribution found for medanalysis-probe" in widget.ui.statusLabel.text()
    assert "TextIOWrapper" not in widget.ui.statusLabel.text()
