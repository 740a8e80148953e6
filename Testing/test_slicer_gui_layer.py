"""Behaviour of the Slicer GUI test layer (``Testing/slicer_gui``) on real Qt and the real slicer-core scene.

The node combo box filters and selects like qMRMLNodeComboBox, the parameter node wrapper stores its values in the
real vtkMRMLScriptedModuleNode as Slicer's serializers do and binds the real MedAnalysis.ui both ways,
ctkPathLineEdit opens the dialog CTK opens, PythonQt's connect rejects unknown signatures, and the real
``MedAnalysisWidget`` is built, set up and driven.
"""

import pathlib
from pathlib import Path
from typing import Annotated, Any

import pytest
import slicer
from slicer_gui.fixtures import load_module_file, slicer_gui  # noqa: F401 - pytest fixtures


def volume(scene: Any, name: str, cls: str = "vtkMRMLScalarVolumeNode") -> Any:
    return scene.AddNewNodeByClass(cls, name)


def combo(scene: Any, **settings: Any) -> Any:
    """A node combo box with these properties, then the scene (as a .ui sets properties before the scene)."""
    widget = slicer.qMRMLNodeComboBox()
    for name, value in settings.items():
        setattr(widget, name, value)
    widget.setMRMLScene(scene)
    return widget


def listed(widget: Any) -> list[str]:
    return [widget.nodeFromIndex(i).GetName() for i in range(widget.nodeCount())]


# ============================================================================ qMRMLNodeComboBox
def test_node_combo_box_filters_like_qmrml(slicer_gui: Any) -> None:  # noqa: F811
    scene = slicer_gui.scene
    volume(scene, "ct")
    volume(scene, "labels", "vtkMRMLLabelMapVolumeNode")  # a vtkMRMLScalarVolumeNode subclass
    volume(scene, "hidden").SetHideFromEditors(True)
    volume(scene, "segmentation", "vtkMRMLSegmentationNode")
    types = ["vtkMRMLScalarVolumeNode"]
    assert listed(combo(scene, nodeTypes=types)) == ["ct", "labels"]
    assert listed(combo(scene, nodeTypes=types, showChildNodeTypes=False)) == ["ct"]
    assert listed(combo(scene, nodeTypes=types, hideChildNodeTypes=["vtkMRMLLabelMapVolumeNode"])) == ["ct"]
    assert listed(combo(scene, nodeTypes=types, showHidden=True)) == ["ct", "labels", "hidden"]
    assert listed(combo(scene, nodeTypes=["vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"])) == [
        "labels", "segmentation"]
    widget = combo(scene, nodeTypes=types)
    scene.GetFirstNodeByName("hidden").SetHideFromEditors(False)  # a node's ModifiedEvent re-filters
    assert listed(widget) == ["ct", "labels", "hidden"]


def test_node_combo_box_selects_and_signals_like_qmrml(slicer_gui: Any) -> None:  # noqa: F811
    scene = slicer_gui.scene
    first, second, third = (volume(scene, n) for n in ("first", "second", "third"))
    seen: list[Any] = []
    widget = slicer.qMRMLNodeComboBox()
    assert not widget.isEnabled()  # no scene yet
    widget.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    widget.connect("currentNodeChanged(vtkMRMLNode*)", seen.append)
    widget.setMRMLScene(scene)
    assert widget.isEnabled() and widget.currentNode() is first and seen == [first]
    assert combo(scene, nodeTypes=["vtkMRMLScalarVolumeNode"], noneEnabled=True).currentNode() is None
    widget.setCurrentNodeID(second.GetID())
    assert widget.currentNodeID == second.GetID() and seen[-1] is second
    second.SetName("renamed")  # a rename of the current node is signalled again
    assert seen[-1] is second and len(seen) == 3
    scene.RemoveNode(second)  # the node after it takes its place
    assert widget.currentNode() is third and seen[-1] is third
    scene.RemoveNode(third)  # none after it: the last one
    assert widget.currentNode() is first
    scene.RemoveNode(first)
    assert widget.currentNode() is None and seen[-1] is None
    widget.setCurrentNode(volume(scene, "labels", "vtkMRMLSegmentationNode"))  # not listed: none
    assert widget.currentNode() is None


def test_node_combo_box_auto_selects_only_without_extra_items(slicer_gui: Any) -> None:  # noqa: F811
    scene = slicer_gui.scene
    plain = combo(scene, nodeTypes=["vtkMRMLScalarVolumeNode"], addEnabled=False, removeEnabled=False)
    with_actions = combo(scene, nodeTypes=["vtkMRMLScalarVolumeNode"])
    node = volume(scene, "loaded later")
    assert plain.currentNode() is node  # Qt selects the first row of an empty combo box
    assert with_actions.currentNode() is None  # the "Create new"/"Delete" rows were there already


# ============================================================================ parameterNodeWrapper
def wrapper_class() -> type:
    from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper

    @parameterNodeWrapper
    class Parameters:
        path: pathlib.Path
        image: slicer.vtkMRMLScalarVolumeNode
        images: list[slicer.vtkMRMLScalarVolumeNode]
        mode: Annotated[str, Choice(["a", "b"])] = "b"
        ratio: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
        count: Annotated[int, Default(3)]
        flag: bool

    return Parameters


def test_parameter_node_round_trip_through_the_real_node(slicer_gui: Any) -> None:  # noqa: F811
    scene = slicer_gui.scene
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    modified: list[str] = []
    node.AddObserver("ModifiedEvent", lambda caller, event: modified.append(event))
    params = wrapper_class()(node)
    assert [node.GetParameter(n) for n in ("path", "mode", "ratio", "count", "flag", "images_len")] == [
        ".", "b", "0.5", "3", "False", "0"]
    ct, mr = volume(scene, "ct"), volume(scene, "mr", "vtkMRMLLabelMapVolumeNode")
    modified.clear()
    params.image = ct
    assert len(modified) == 1 and node.GetNodeReference("image") is ct and node.GetParameter("image") == ""
    params.images = [ct, mr]
    assert node.GetParameter("images_len") == "2" and node.GetNodeReferenceID("images_1") == mr.GetID()
    params.images.append(ct)  # written through, as Slicer's ObservedList
    params.path, params.flag, params.ratio = Path("/data/x.zip"), True, 1
    again = wrapper_class()(node)  # a second wrapper reads what the first wrote
    assert (again.path, again.flag, again.ratio, list(again.images)) == (Path("/data/x.zip"), True, 1.0, [ct, mr, ct])
    with pytest.raises(ValueError):
        params.mode = "c"
    with pytest.raises(ValueError):
        params.ratio = 1.5
    with pytest.raises(TypeError):
        params.count = "3"
    with pytest.raises(NotImplementedError):
        params.images + [ct]  # noqa: B018 - Slicer refuses + on the observed list
    assert node.GetParameter("mode") == "b"


def test_connect_gui_binds_the_real_ui_both_ways(slicer_gui: Any, load_module_file: Any) -> None:  # noqa: F811
    module = load_module_file()
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    ui, params = widget.ui, widget._parameterNode
    ct = volume(slicer_gui.scene, "ct")
    ui.inputVolumeSelector0.setCurrentNode(ct)
    assert params.inputVolume0 is ct
    params.outputType = "labelmap"
    assert ui.outputTypeComboBox.currentText() == "labelmap" and not ui.outputLabelmapSelector.isHidden()
    ui.trainingSourceComboBox.setCurrentIndex(1)
    assert params.trainingSource == "folder"
    params.overlap = 0.25
    assert ui.overlapSpinBox.value() == 0.25 and (ui.overlapSpinBox.minimum(), ui.overlapSpinBox.maximum()) == (0, 0.9)
    ui.trainingEpochsSpinBox.setValue(7)
    assert params.trainingEpochs == 7
    ui.resumeTrainingCheckBox.setChecked(False)
    assert params.resumeTraining is False
    ui.evaluationOutputPathLineEdit.currentPath = "/tmp/report"
    assert params.evaluationOutputPath == Path("/tmp/report")
    params.bundlePath = Path("/models/liver.zip")
    assert ui.bundlePathLineEdit.currentPath == "/models/liver.zip"
    slicer_gui.widgets.remove(widget)
    widget.cleanup()


def test_connect_gui_refuses_a_widget_slicer_would_not_bind(slicer_gui: Any) -> None:  # noqa: F811
    import qt

    params = wrapper_class()(slicer_gui.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    box = qt.QCheckBox()
    box.setProperty("SlicerParameterName", "mode")  # a str parameter: no connector takes a QCheckBox
    with pytest.raises(RuntimeError, match="Unable to create GUI connector"):
        params.connectParametersToGui({"mode": box})
    spin = qt.QDoubleSpinBox()
    params.connectParametersToGui({"count": spin})  # int fits QDoubleSpinBox in Slicer 5.10+
    assert spin.value() == 3


# ============================================================================ ctk and qt
@pytest.mark.parametrize(("filters", "dialog"), [
    ("Dirs|Files|Readable", "getOpenFileName"), ("Files|Writable", "getSaveFileName"),
    ("Dirs", "getExistingDirectory"), ("Dirs|Files", "getOpenFileName")])
def test_path_line_edit_browse_opens_the_dialog_ctk_opens(slicer_gui: Any, monkeypatch: Any, filters: str,  # noqa: F811
                                                          dialog: str) -> None:
    import ctk
    import qt

    opened: list[tuple[str, dict[str, Any]]] = []
    for name in ("getOpenFileName", "getSaveFileName", "getExistingDirectory"):
        monkeypatch.setattr(qt.QFileDialog, name, lambda *a, _n=name, **k: opened.append((_n, k)) or "/chosen.zip")
    edit = ctk.ctkPathLineEdit()
    edit.filters = sum(getattr(ctk.ctkPathLineEdit, f) for f in filters.split("|"))
    edit.nameFilters = ["Model bundles (*.zip bundle.json)"]
    edit.browse()
    assert [name for name, _ in opened] == [dialog] and edit.currentPath == "/chosen.zip"
    assert "filter" not in opened[0][1] or opened[0][1]["filter"] == "Model bundles (*.zip bundle.json)"


def test_path_line_edit_signals_only_acceptable_paths(slicer_gui: Any) -> None:  # noqa: F811
    import ctk

    edit, paths, valid = ctk.ctkPathLineEdit(), [], []
    edit.nameFilters = ["Model bundles (*.zip bundle.json)"]
    edit.connect("currentPathChanged(QString)", paths.append)
    edit.connect("validInputChanged(bool)", valid.append)
    edit.setCurrentPath("/models/liver")  # a folder: CTK's validator accepts only *.zip here
    edit.setCurrentPath("/models/liver/bundle.json")
    edit.setCurrentPath("/models/liver.zip")
    assert edit.currentPath == "/models/liver.zip" and paths == ["/models/liver.zip"] and valid == [True]


def test_pythonqt_connect_rejects_unknown_signatures_and_slot_errors_are_collected(slicer_gui: Any) -> None:  # noqa: F811
    import qt

    button = qt.QPushButton()
    with pytest.raises(ValueError, match="has no signal 'clicked\\(int\\)'"):
        button.connect("clicked(int)", print)
    button.connect("clicked(bool)", lambda: 1 / 0)
    button.click()
    assert [type(e) for e in slicer_gui.errors] == [ZeroDivisionError]
    slicer_gui.errors.clear()


def test_unexpected_dialogs_are_reported(slicer_gui: Any) -> None:  # noqa: F811
    slicer_gui.dialogs.expect("confirmYesNoDisplay", False, contains="Restart")
    assert slicer.util.confirmYesNoDisplay("Restart now?", windowTitle="Restart") is False
    with pytest.raises(AssertionError, match="unexpected dialog"):
        slicer.util.infoDisplay("surprise")
    with pytest.raises(TypeError):
        slicer.util.setSliceViewerLayers(labelmap=None)  # not a keyword of Slicer's function
    assert slicer_gui.dialogs.problems() == ["unexpected dialog infoDisplay: 'surprise'"]
    slicer_gui.dialogs.unexpected.clear()


# ============================================================================ ScriptedLoadableModule
def test_scripted_module_classes_behave_like_slicers(slicer_gui: Any, load_module_file: Any) -> None:  # noqa: F811
    module = load_module_file()
    logic = module.MedAnalysisLogic()
    node = logic.getParameterNode().parameterNode
    assert node.GetSingletonTag() == "MedAnalysis" and node.GetAttribute("ModuleName") == "MedAnalysis"
    assert module.MedAnalysisLogic().getParameterNode().parameterNode is node
    description = slicer.qSlicerScriptedLoadableModule(str(module.__file__))
    module.MedAnalysis(description)
    assert description.title == "MedAnalysis" and slicer.selfTests["MedAnalysis"]
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget

    class PanelWidget(ScriptedLoadableModuleWidget):
        def setup(self) -> None:
            self.layout.addWidget(slicer.qMRMLNodeComboBox())

    panel = PanelWidget()  # without a parent Slicer builds the panel and runs setup() itself
    assert isinstance(panel.parent, slicer.qMRMLWidget) and panel.layout.count() == 1
    assert panel.parent.mrmlScene() is slicer_gui.scene


# ============================================================================ the real widget
def test_medanalysis_widget_builds_and_updates(slicer_gui: Any, load_module_file: Any) -> None:  # noqa: F811
    module = load_module_file()
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    widget.updateGUI()
    assert slicer_gui.app.layoutManager().layout == slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView
    assert not widget.ui.applyButton.isEnabled()  # no model, no input


def test_driving_the_widget(slicer_gui: Any, load_module_file: Any, monkeypatch: Any) -> None:  # noqa: F811
    """The usage example: construct, set parameters, click, answer a dialog."""
    module = load_module_file()
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    widget._parameterNode.trainingSource = "folder"  # the panel follows the parameter node
    assert widget.ui.trainingVolumeSelector.isHidden() and not widget.ui.trainingDatasetPathLineEdit.isHidden()
    monkeypatch.setattr(widget.logic.installer, "missing", lambda: ["keras>=3.12"])
    slicer_gui.dialogs.expect("confirmOkCancelDisplay", False, contains="keras>=3.12")
    widget.ui.installDependenciesButton.click()
    assert "Not started" in widget.ui.statusLabel.text()


def test_an_old_slicer_is_simulated_through_slicer_app(slicer_gui: Any, load_module_file: Any) -> None:  # noqa: F811
    slicer_gui.app.majorVersion, slicer_gui.app.minorVersion = 5, 8
    module = load_module_file()
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    import qt

    assert widget.ui is None and "5.10" in widget.parent.findChild(qt.QLabel, "unsupportedSlicerLabel").text()


def test_show_outputs_drives_real_logics_and_records_view_changes(slicer_gui: Any, load_module_file: Any) -> None:  # noqa: F811
    module = load_module_file()
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    for name, child in vars(widget.ui).items():
        if isinstance(child, (slicer.qMRMLNodeComboBox, slicer.qMRMLPlotWidget)):  # the .ui <connections> carried it
            assert child.mrmlScene() is slicer_gui.scene, name
    table = slicer_gui.scene.AddNewNodeByClass("vtkMRMLTableNode", "results")
    labels = volume(slicer_gui.scene, "labels", "vtkMRMLLabelMapVolumeNode")
    widget._showOutputs({"table": table, "labelmap": labels})
    selection = slicer_gui.app.applicationLogic().GetSelectionNode()
    assert selection.GetActiveTableID() == table.GetID()
    initial = slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView  # the test scene's layout node
    assert slicer_gui.app.layoutManager().layout == slicer.modules.tables.logic().GetLayoutWithTable(initial) != initial
    assert [name for name, _ in slicer_gui.calls] == ["setSliceViewerLayers", "setLayout"]
    assert slicer_gui.calls[0][1] == {"label": labels, "labelOpacity": 0.5}


def test_the_qt_binding_keeps_reference_counts():
    """PySide6 6.12.0 releases True once per delivered signal, which aborts Python 3.11 after a few hundred signals
    (``bool_dealloc``). Run the signals in a child so that a bad binding fails this test instead of the whole run."""
    import subprocess
    import sys

    probe = (
        "import os, sys\n"
        "os.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
        "from PySide6 import QtCore, QtWidgets\n"
        "app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])\n"
        "box = QtWidgets.QCheckBox()\n"
        "box.toggled.connect(lambda checked: None)\n"
        "before = sys.getrefcount(True)\n"
        "for _ in range(2000):\n"
        "    box.setChecked(not box.isChecked())\n"
        "print(sys.getrefcount(True) - before)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"the Qt binding crashed Python delivering signals:\n{run.stderr[-2000:]}"
    assert abs(int(run.stdout.strip())) < 50, f"True's reference count drifted by {run.stdout.strip()}"
