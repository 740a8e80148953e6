"""MedAnalysis: run and train deep-learning models on the scans loaded in 3D Slicer.

The module is thin: the widget shows state and forwards clicks, the logic moves data between the scene and the
``MedAnalysisLib`` library (scene adapters in ``MedAnalysisLib.slicer_adapter``), and long work runs in a
``medanalysis`` child process (``MedAnalysisLib.worker``) so Slicer stays responsive.

Console use::

    logic = slicer.util.getModuleLogic("MedAnalysis")
    segmentation = logic.segment(volumeNode, "/path/to/model.zip")     # returns the segmentation node
    table = logic.classify(volumeNode, "/path/to/classifier.zip")      # returns the table node
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent


def _ensureLibraryOnPath() -> None:
    """Make ``MedAnalysisLib`` importable: installed next to this file, or one folder up in a source checkout."""
    for folder in (MODULE_DIR, MODULE_DIR.parent):
        if (folder / "MedAnalysisLib" / "__init__.py").is_file() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
            return


_ensureLibraryOnPath()

from MedAnalysisLib import slicer_adapter  # noqa: E402  (numpy only; no TensorFlow)
from MedAnalysisLib.errors import InputError, MedAnalysisError  # noqa: E402
from MedAnalysisLib.worker import WorkerJob  # noqa: E402

#: Packages MedAnalysis needs beyond what Slicer ships (numpy and SimpleITK come with Slicer).
REQUIREMENT_FILES = (MODULE_DIR / "Resources" / "Python" / "requirements.txt",
                     MODULE_DIR.parent / "Resources" / "requirements.txt")
CONSTRAINT_FILES = (MODULE_DIR / "Resources" / "Python" / "constraints.txt",
                    MODULE_DIR.parent / "Resources" / "constraints.txt")
#: Slicer's own packages: pinned to the installed version during installs so pip never changes them.
PROTECTED_PACKAGES = ("numpy", "SimpleITK")


# =================================================================================================== module
class MedAnalysis(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help & Acknowledgement section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAnalysis")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedAnalysis contributors"]
        self.parent.helpText = _(
            "Run trained deep-learning models (model bundles) on loaded scans and train new ones from volumes and "
            "segmentations in the scene. Results come back as segmentations or labelmaps with standard terminology, "
            "tables of per-label volumes or per-slice probabilities, and plots. Long work runs in a background "
            "process and can be cancelled."
        )
        self.parent.acknowledgementText = _(
            "Built on TensorFlow/Keras, SimpleITK and pydicom. The module layout follows the 3D Slicer scripted "
            "module template."
        )


# =================================================================================================== parameters
@parameterNodeWrapper
class MedAnalysisParameterNode:
    """Every setting of the panel; saved with the scene.

    Paths are ``pathlib.Path`` (what ctkPathLineEdit binds to); an unset path reads as "" through :func:`pathText`.
    bundlePath: model bundle folder or .zip. inputVolume0-2: input channels (channel 1 required).
    outputType: "segmentation" or "labelmap". outputSegmentation/outputLabelmap/outputTable: nodes to overwrite
    (None: create new ones). createProbabilities: also create one probability volume per class.
    showPerSlicePlot: plot per-slice probabilities of classification models. overlap: sliding-window overlap.
    testTimeAugmentation: flip averaging. runInBackground: child process (True) or in Slicer's process.
    trainingSource: "scene" (trainingVolumes/trainingSegmentations pairs) or "folder" (trainingDatasetPath).
    """

    bundlePath: pathlib.Path
    inputVolume0: vtkMRMLScalarVolumeNode
    inputVolume1: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    outputType: Annotated[str, Choice(["segmentation", "labelmap"])] = "segmentation"
    outputSegmentation: vtkMRMLSegmentationNode
    outputLabelmap: vtkMRMLLabelMapVolumeNode
    outputTable: vtkMRMLTableNode
    createProbabilities: bool = False
    showPerSlicePlot: bool = True
    overlap: Annotated[float, WithinRange(0.0, 0.9)] = 0.5
    testTimeAugmentation: bool = False
    runInBackground: bool = True
    trainingSource: Annotated[str, Choice(["scene", "folder"])] = "scene"
    trainingVolumes: list[vtkMRMLScalarVolumeNode]
    trainingSegmentations: list[vtkMRMLSegmentationNode]
    trainingDatasetPath: pathlib.Path
    trainingTask: Annotated[str, Choice(["segmentation", "classification"])] = "segmentation"
    trainingFamily: Annotated[str, Choice(["unet3d", "unet2d", "slice_cnn", "cnn3d", "cnn_rnn"])] = "unet3d"
    trainingEpochs: Annotated[int, WithinRange(1, 10000)] = 50
    trainingOutputPath: pathlib.Path
    resumeTraining: bool = True
    evaluationDatasetPath: pathlib.Path
    evaluationOutputPath: pathlib.Path


# =================================================================================================== widget
class MedAnalysisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: shows state, forwards user actions to the logic, polls background jobs with a timer."""

    POLL_INTERVAL_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # MedAnalysisJob running for Apply/Train/Evaluate (one at a time)
        self._modelCard = None
        self._pollTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAnalysis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedAnalysisLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.bundlePathLineEdit.connect("currentPathChanged(QString)", self.onBundlePathChanged)
        for selector in (self.ui.inputVolumeSelector0, self.ui.inputVolumeSelector1, self.ui.inputVolumeSelector2):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateGUI)
        self.ui.outputTypeComboBox.connect("currentIndexChanged(int)", self.updateGUI)
        self.ui.trainingSourceComboBox.connect("currentIndexChanged(int)", self.updateGUI)
        self.ui.trainingDatasetPathLineEdit.connect("currentPathChanged(QString)", self.updateGUI)
        self.ui.trainingOutputPathLineEdit.connect("currentPathChanged(QString)", self.updateGUI)
        self.ui.evaluationDatasetPathLineEdit.connect("currentPathChanged(QString)", self.updateGUI)
        self.ui.evaluationOutputPathLineEdit.connect("currentPathChanged(QString)", self.updateGUI)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.ui.addTrainingCaseButton.connect("clicked(bool)", self.onAddTrainingCase)
        self.ui.removeTrainingCaseButton.connect("clicked(bool)", self.onRemoveTrainingCase)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel(grace_s=5.0)
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume0:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume0 = firstVolume

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.onBundlePathChanged(self._parameterNode.bundlePath)

    # ------------------------------------------------------------------ display
    def onBundlePathChanged(self, path="") -> None:
        """Read the model card (no TensorFlow involved) and show it; errors go to the card label."""
        path = pathText(path)
        self._modelCard = None
        self.ui.labelsTableWidget.setRowCount(0)
        if not path:
            self.ui.modelCardLabel.setText(_("No model selected."))
        else:
            try:
                self._modelCard = self.logic.readModelCard(path)
            except MedAnalysisError as error:
                from html import escape

                self.ui.modelCardLabel.setText(_("<span style='color:#c0392b'>Cannot use this bundle: {error}</span>")
                                               .format(error=escape(str(error))))
            else:
                self.ui.modelCardLabel.setText(self.logic.modelCardHtml(self._modelCard))
                self._showLabels(self._modelCard)
        self.updateGUI()

    def _showLabels(self, card) -> None:
        labels = self.logic.displayedLabels(card)
        self.ui.labelsTableWidget.verticalHeader().setDefaultSectionSize(20)
        self.ui.labelsTableWidget.setRowCount(len(labels))
        for row, label in enumerate(labels):
            valueItem = qt.QTableWidgetItem(str(label.value))
            valueItem.setData(qt.Qt.DecorationRole, qt.QColor(*label.color))
            self.ui.labelsTableWidget.setItem(row, 0, valueItem)
            self.ui.labelsTableWidget.setItem(row, 1, qt.QTableWidgetItem(label.name))
            meaning = self.logic.terminologyMeaning(label)
            self.ui.labelsTableWidget.setItem(row, 2, qt.QTableWidgetItem(meaning))
        self.ui.labelsTableWidget.resizeColumnsToContents()

    def updateGUI(self, *unused) -> None:
        """Enable/show widgets from the parameter node and the job state (never touches voxels)."""
        if not self._parameterNode:
            return
        params = self._parameterNode
        card = self._modelCard
        channels = len(card.input["channels"]) if card else 1
        for index in range(3):
            visible = index < channels
            getattr(self.ui, f"inputVolumeSelector{index}").setVisible(visible)
            getattr(self.ui, f"inputChannelLabel{index}").setVisible(visible)
            if card and visible:
                getattr(self.ui, f"inputChannelLabel{index}").setText(self.logic.channelLabelText(card, index))
        isSegmentation = card is not None and card.task == "segmentation"
        self.ui.outputSegmentationSelector.setVisible(params.outputType == "segmentation")
        self.ui.outputSegmentationLabel.setVisible(params.outputType == "segmentation")
        self.ui.outputLabelmapSelector.setVisible(params.outputType == "labelmap")
        self.ui.outputLabelmapLabel.setVisible(params.outputType == "labelmap")
        for widget in (self.ui.outputTypeComboBox, self.ui.probabilitiesCheckBox):
            widget.setEnabled(card is None or isSegmentation)
        self.ui.perSlicePlotCheckBox.setEnabled(card is None or not isSegmentation)

        inputs = [getattr(params, f"inputVolume{i}") for i in range(channels)]
        warnings = self.logic.inputWarnings(card, inputs) if card else []
        self.ui.inputWarningLabel.setText("\n".join(warnings))
        self.ui.inputWarningLabel.setVisible(bool(warnings))

        busy = self._job is not None and self._job.running
        kind = self._job.kind if busy else None
        ready = card is not None and all(inputs)
        self.ui.applyButton.setEnabled((ready and not busy) or kind in ("segment", "classify"))
        self.ui.applyButton.setText(_("Cancel") if kind in ("segment", "classify") else _("Apply"))
        self.ui.applyButton.setToolTip(_("Stop the running model") if kind in ("segment", "classify") else
                                       _("Run the model on the input volume") if ready else
                                       _("Select a model bundle and the input volume(s)"))

        fromScene = params.trainingSource == "scene"
        for widget in (self.ui.trainingVolumeSelector, self.ui.trainingSegmentationSelector,
                       self.ui.addTrainingCaseButton, self.ui.trainingCasesTableWidget,
                       self.ui.removeTrainingCaseButton, self.ui.trainingCaseLabel, self.ui.trainingCasesLabel):
            widget.setVisible(fromScene)
        self.ui.trainingDatasetPathLineEdit.setVisible(not fromScene)
        self.ui.trainingDatasetLabel.setVisible(not fromScene)
        self._showTrainingCases()
        haveData = (len(params.trainingVolumes) > 0) if fromScene else bool(pathText(params.trainingDatasetPath))
        canTrain = haveData and bool(pathText(params.trainingOutputPath))
        self.ui.trainButton.setEnabled((canTrain and not busy) or kind == "train")
        self.ui.trainButton.setText(_("Stop") if kind == "train" else _("Train"))
        canEvaluate = (card is not None and bool(pathText(params.evaluationDatasetPath))
                       and bool(pathText(params.evaluationOutputPath)))
        self.ui.evaluateButton.setEnabled((canEvaluate and not busy) or kind == "evaluate")
        self.ui.evaluateButton.setText(_("Cancel") if kind == "evaluate" else _("Evaluate"))

    def _showTrainingCases(self) -> None:
        params = self._parameterNode
        pairs = list(zip(params.trainingVolumes, params.trainingSegmentations, strict=True))
        self.ui.trainingCasesTableWidget.setRowCount(len(pairs))
        for row, (volume, segmentation) in enumerate(pairs):
            self.ui.trainingCasesTableWidget.setItem(row, 0, qt.QTableWidgetItem(volume.GetName() if volume else ""))
            self.ui.trainingCasesTableWidget.setItem(
                row, 1, qt.QTableWidgetItem(segmentation.GetName() if segmentation else ""))

    # ------------------------------------------------------------------ actions
    def onAddTrainingCase(self) -> None:
        volume = self.ui.trainingVolumeSelector.currentNode()
        segmentation = self.ui.trainingSegmentationSelector.currentNode()
        if not volume or not segmentation:
            self.ui.trainingStatusLabel.setText(_("Select a volume and its segmentation to add a case."))
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.trainingVolumes = [*self._parameterNode.trainingVolumes, volume]
            self._parameterNode.trainingSegmentations = [*self._parameterNode.trainingSegmentations, segmentation]

    def onRemoveTrainingCase(self) -> None:
        row = self.ui.trainingCasesTableWidget.currentRow()
        if row < 0:
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            volumes = list(self._parameterNode.trainingVolumes)
            segmentations = list(self._parameterNode.trainingSegmentations)
            del volumes[row], segmentations[row]
            self._parameterNode.trainingVolumes = volumes
            self._parameterNode.trainingSegmentations = segmentations

    def onApplyButton(self) -> None:
        if self._job is not None and self._job.running:
            self._cancelJob()
            return
        params = self._parameterNode
        if not self._ensureDependencies():
            return
        inputs = [getattr(params, f"inputVolume{i}") for i in range(len(self._modelCard.input["channels"]))]
        self.ui.statusLabel.setStyleSheet("")
        self.ui.statusLabel.setText(_("Running the model...") if not params.runInBackground else "")
        slicer.app.processEvents()
        try:
            with slicer.util.WaitCursor():
                result = self._runModel(inputs)
        except Exception as error:  # noqa: BLE001 - every failure is shown in the panel
            self._showError(self.ui.statusLabel, error)
            return
        if isinstance(result, MedAnalysisJob):
            self._startPolling(result, self.ui.progressBar, self.ui.statusLabel)
        else:
            self._showOutputs(self.logic.lastOutputs)
            self.ui.statusLabel.setText(_("Done."))

    def _runModel(self, inputs):
        params = self._parameterNode
        bundlePath = pathText(params.bundlePath)
        if self._modelCard.task == "segmentation":
            return self.logic.segment(
                inputs, bundlePath, outputType=params.outputType,
                outputNode=params.outputSegmentation if params.outputType == "segmentation" else params.outputLabelmap,
                tableNode=params.outputTable, probabilities=params.createProbabilities, overlap=params.overlap,
                tta=params.testTimeAugmentation or None, background=params.runInBackground)
        return self.logic.classify(inputs, bundlePath, tableNode=params.outputTable,
                                   plot=params.showPerSlicePlot, background=params.runInBackground)

    def onTrainButton(self) -> None:
        if self._job is not None and self._job.running:
            self._cancelJob()
            return
        if not self._ensureDependencies():
            return
        params = self._parameterNode
        data = (list(zip(params.trainingVolumes, params.trainingSegmentations, strict=True)) if params.trainingSource == "scene"
                else pathText(params.trainingDatasetPath))
        try:
            job = self.logic.train(data, pathText(params.trainingOutputPath), task=params.trainingTask,
                                   family=params.trainingFamily, epochs=params.trainingEpochs,
                                   resume=params.resumeTraining, background=True)
        except Exception as error:  # noqa: BLE001
            self._showError(self.ui.trainingStatusLabel, error)
            return
        self._trainingCurves = self.logic.createTrainingCurves()
        plotView = slicer.mrmlScene.GetFirstNodeByName("MedAnalysisTrainingPlotView")
        if not plotView:
            plotView = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode", "MedAnalysisTrainingPlotView")
        plotView.SetPlotChartNodeID(self._trainingCurves[1].GetID())
        self.ui.trainingPlotWidget.setMRMLPlotViewNode(plotView)
        self._startPolling(job, self.ui.trainingProgressBar, self.ui.trainingStatusLabel)

    def onEvaluateButton(self) -> None:
        if self._job is not None and self._job.running:
            self._cancelJob()
            return
        if not self._ensureDependencies():
            return
        params = self._parameterNode
        try:
            job = self.logic.evaluate(pathText(params.bundlePath), pathText(params.evaluationDatasetPath),
                                      pathText(params.evaluationOutputPath), background=True)
        except Exception as error:  # noqa: BLE001
            self._showError(self.ui.evaluationStatusLabel, error)
            return
        self._startPolling(job, self.ui.evaluationProgressBar, self.ui.evaluationStatusLabel)

    def onInstallDependencies(self) -> None:
        missing = self.logic.missingRequirements()
        if not missing:
            slicer.util.infoDisplay(_("All Python packages MedAnalysis needs are installed."))
            return
        self._ensureDependencies()

    def _ensureDependencies(self) -> bool:
        """Ask consent and install missing packages; False when the user declines or installation fails."""
        missing = self.logic.missingRequirements()
        if not missing:
            return True
        text = _("MedAnalysis needs these Python packages, which are not installed yet:\n\n{packages}\n\n"
                 "They will be downloaded from the Python Package Index (about 600 MB for TensorFlow) and installed "
                 "into Slicer's Python. Slicer's own numpy and SimpleITK will not be changed. Install now?").format(
                     packages="\n".join(f"  \u2022 {r}" for r in missing))
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("Install Python packages")):
            return False
        with slicer.util.WaitCursor():
            try:
                needsRestart = self.logic.installRequirements(missing)
            except Exception as error:  # noqa: BLE001 - offline, pip failure: say what happened
                slicer.util.errorDisplay(_("Installing the packages failed: {error}").format(error=error))
                return False
        if needsRestart and slicer.util.confirmYesNoDisplay(
                _("Packages that Slicer had already loaded were updated. Restart Slicer now to use them?")):
            slicer.util.restart()
            return False
        return True

    # ------------------------------------------------------------------ background jobs
    def _startPolling(self, job, progressBar, statusLabel) -> None:
        self._job = job
        self._jobProgressBar = progressBar
        self._jobStatusLabel = statusLabel
        progressBar.setValue(0)
        progressBar.setVisible(True)
        statusLabel.setStyleSheet("")
        statusLabel.setText(_("Starting..."))
        self._pollTimer.start()
        self.updateGUI()

    def onPollJob(self) -> None:
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        for message in job.poll():
            if message["type"] == "progress":
                self._jobProgressBar.setValue(int(round(100 * (message.get("fraction") or 0.0))))
                self._jobStatusLabel.setText(self.logic.describeProgress(message))
            elif message["type"] == "metrics" and job.kind == "train":
                self.logic.addTrainingMetrics(*self._trainingCurves, message)
            elif message["type"] == "log" and message.get("level") == "warning":
                logging.warning(message.get("message", ""))
        if job.running:
            return
        self._pollTimer.stop()
        self._job = None
        self._jobProgressBar.setVisible(False)
        try:
            outputs = self.logic.finishJob(job)
        except Exception as error:  # noqa: BLE001 - the worker's message goes to the panel
            self._showError(self._jobStatusLabel, error)
        else:
            self._jobStatusLabel.setText(self.logic.describeOutcome(job))
            if job.kind == "train":  # offer the new model right away
                self._parameterNode.bundlePath = pathlib.Path(outputs["bundlePath"])
            self._showOutputs(outputs)
        self.updateGUI()

    def _cancelJob(self) -> None:
        self._jobStatusLabel.setText(_("Stopping..."))
        slicer.app.processEvents()
        with slicer.util.WaitCursor():
            self._job.cancel(grace_s=15.0 if self._job.kind == "train" else 5.0)
        self.onPollJob()

    def _showError(self, label, error) -> None:
        label.setStyleSheet("color: #c0392b;")
        label.setText(str(error) if isinstance(error, MedAnalysisError) else f"{type(error).__name__}: {error}")
        if not isinstance(error, MedAnalysisError):
            logging.exception("MedAnalysis failed", exc_info=error)

    def _showOutputs(self, outputs: dict) -> None:
        """Show the new nodes in the views. The output selectors are left as they are: a result is overwritten by a
        later run only when the user picks it as the output."""
        if outputs.get("labelmap"):
            slicer.util.setSliceViewerLayers(label=outputs["labelmap"], labelOpacity=0.5)
        if outputs.get("table"):
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(outputs["table"].GetID())
            slicer.app.applicationLogic().PropagateTableSelection()
        if outputs.get("chart"):
            slicer.modules.plots.logic().ShowChartInLayout(outputs["chart"])


# =================================================================================================== jobs
class MedAnalysisJob:
    """A background ``medanalysis`` run plus what the logic needs to bring its outputs into the scene.

    Attributes:
        kind: "segment", "classify", "train" or "evaluate".
        worker: The :class:`MedAnalysisLib.worker.WorkerJob`.
        context: What :meth:`MedAnalysisLogic.finishJob` needs (input nodes, output nodes, scratch folder).
    """

    def __init__(self, kind: str, worker: WorkerJob, context: dict) -> None:
        self.kind = kind
        self.worker = worker
        self.context = context

    @property
    def running(self) -> bool:
        return self.worker.running

    def poll(self) -> list:
        return self.worker.poll()

    def cancel(self, grace_s: float = 10.0) -> int:
        return self.worker.cancel(grace_s)

    def wait(self, timeout: float | None = None) -> int:
        code = self.worker.wait(timeout)
        self.worker.poll()
        return code


# =================================================================================================== logic
class MedAnalysisLogic(ScriptedLoadableModuleLogic):
    """Scene <-> library glue; usable from the Python console and scripts. Never opens dialogs.

    Args:
        scene: The MRML scene (default: ``slicer.mrmlScene``).
        python: Interpreter for background jobs (default: ``PythonSlicer`` next to Slicer, else this Python).
    """

    def __init__(self, scene=None, python: str | None = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.python = python or shutil.which("PythonSlicer") or sys.executable
        #: Nodes created by the last synchronous run or finished job: segmentation/labelmap/table/chart/...
        self.lastOutputs: dict[str, Any] = {}

    def getParameterNode(self):
        return MedAnalysisParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ model card
    @staticmethod
    def readModelCard(bundlePath: str):
        """The bundle's validated :class:`BundleConfig` from bundle.json only (for an ensemble, its model card from
        ensemble.json and the members' bundle.json); TensorFlow is not imported."""
        from MedAnalysisLib.bundle import read_bundle_config

        if not bundlePath:
            raise InputError("expected a model bundle (folder or .zip), got an empty path")
        return read_bundle_config(bundlePath)

    @staticmethod
    def modelCardHtml(card) -> str:
        """A short rich-text model card: name, task, family, inputs, expected spacing, training summary."""
        from html import escape

        plan = card.plan
        spacing = getattr(plan, "target_spacing", None)
        spacingText = (" x ".join(f"{s:g}" for s in spacing) + " mm") if spacing else _("native (not resampled)")
        channels = ", ".join(f"{escape(str(c.get('name')))} ({escape(str(c.get('modality')))})"
                             for c in card.input["channels"])
        rows = [
            (_("Name"), escape(card.name)),
            (_("Task"), escape(f"{card.task} ({card.family})")),
            (_("Inputs"), channels),
            (_("Spacing"), escape(spacingText)),
        ]
        metrics = card.training.get("metrics") if isinstance(card.training, dict) else None
        if isinstance(metrics, dict) and metrics:
            rows.append((_("Validation"), escape(", ".join(
                f"{k} {v:.3g}" for k, v in list(metrics.items())[:3] if isinstance(v, (int, float))))))
        if card.description:
            rows.append((_("About"), escape(card.description)))
        return "<table>" + "".join(f"<tr><td><b>{k}:</b>&nbsp;</td><td>{v}</td></tr>" for k, v in rows) + "</table>"

    @staticmethod
    def displayedLabels(card) -> list:
        """The labels listed on the model card: segmentation hides the background (value 0), classes are all kept."""
        return [label for label in card.labels if card.task != "segmentation" or label.value != 0]

    @staticmethod
    def channelLabelText(card, index: int) -> str:
        """Form label of input selector ``index``: "Input (CT):" for one channel, "T2 (MR):" for several."""
        channels = card.input["channels"]
        modality = channels[index].get("modality", "?")
        if len(channels) == 1:
            return _("Input ({modality}):").format(modality=modality)
        return f"{channels[index].get('name', index + 1)} ({modality}):"

    @staticmethod
    def terminologyMeaning(label) -> str:
        """The coded type meaning of a label (e.g. "Liver"), or "" without terminology."""
        terminology = slicer_adapter.terminology_string(label.terminology, label.name) if label.terminology else ""
        return terminology.split("~")[2].split("^")[-1] if terminology else ""

    def inputWarnings(self, card, volumeNodes: Sequence) -> list[str]:
        """Reasons the selected volumes may not suit the model (shown in the panel; they do not block Apply)."""
        warnings = []
        channels = card.input["channels"]
        for index, (channel, node) in enumerate(zip(channels, volumeNodes, strict=False)):
            if node is None:
                continue
            grid = slicer_adapter.node_grid(node)
            name = channel.get("name", f"channel {index + 1}")
            expected = str(channel.get("modality", "")).upper()
            modality = slicer_adapter.volume_modality(node)
            if expected and modality and modality.upper() != expected:
                warnings.append(_("{name}: the model expects {expected}, this volume is {modality}.").format(
                    name=name, expected=expected, modality=modality))
            if min(grid.shape) == 1 and card.family in ("unet3d", "cnn3d"):
                warnings.append(_("{name}: a single slice was selected, the model is 3D.").format(name=name))
            target = getattr(card.plan, "target_spacing", None)
            if target:
                ratios = [s / t for s, t in zip(grid.spacing, target, strict=True) if t]
                if any(r > 2.0 or r < 0.5 for r in ratios):
                    warnings.append(_("{name}: spacing {spacing} mm is far from the model's {target} mm; results "
                                      "may be poor.").format(
                        name=name, spacing=" x ".join(f"{s:.2g}" for s in grid.spacing),
                        target=" x ".join(f"{t:.2g}" for t in target)))
        return warnings

    # ------------------------------------------------------------------ inference
    def _inputNodes(self, volumeNodes) -> list:
        nodes = list(volumeNodes) if isinstance(volumeNodes, (list, tuple)) else [volumeNodes]
        if not nodes or any(node is None for node in nodes):
            raise InputError(f"expected one input volume node per model channel, got {nodes}")
        return nodes

    def segment(self, volumeNodes, bundlePath: str, *, outputType: str = "segmentation", outputNode=None,
                tableNode=None, probabilities: bool = False, overlap: float | None = None, tta: bool | None = None,
                background: bool = False):
        """Segment the volume(s) with a segmentation bundle.

        Args:
            volumeNodes: The input scalar volume node, or one per model channel. Never modified.
            bundlePath: Model bundle or ensemble (folder or .zip).
            outputType: "segmentation" (segments with names, colors, terminology) or "labelmap".
            outputNode: Existing node to overwrite; ``None`` creates a new one (earlier results are kept).
            tableNode: Existing table node for per-label volumes (mm3, mL, voxels); ``None`` creates one.
            probabilities: Also create one probability volume (0-1) per foreground class.
            overlap, tta: Override the bundle's sliding-window overlap and flip averaging.
            background: ``False`` runs in this process and returns the output node; ``True`` starts a
                ``medanalysis predict`` child process and returns a :class:`MedAnalysisJob` (call :meth:`finishJob`
                when it has ended, as the panel does).

        Returns:
            The segmentation (or labelmap) node, or the running job. Created nodes are also in :attr:`lastOutputs`.
        """
        if outputType not in ("segmentation", "labelmap"):
            raise InputError(f"expected outputType 'segmentation' or 'labelmap', got {outputType!r}")
        nodes = self._inputNodes(volumeNodes)
        card = self.readModelCard(bundlePath)
        if card.task != "segmentation":
            raise InputError(f"expected a segmentation bundle, got a {card.task} bundle; use classify()")
        context = {"nodes": nodes, "card": card, "outputType": outputType, "outputNode": outputNode,
                   "tableNode": tableNode, "probabilities": probabilities}
        if background:
            return self._startPredictJob("segment", bundlePath, context, overlap, tta)
        prediction = self._predictInProcess(bundlePath, nodes, overlap, tta, probabilities)
        self.lastOutputs = self._importSegmentation(context, prediction.label, prediction.probabilities)
        return self.lastOutputs[outputType]

    def classify(self, volumeNodes, bundlePath: str, *, tableNode=None, plot: bool = True,
                 background: bool = False):
        """Classify the volume(s) with a classification bundle.

        Returns the table node (one row per slice when the model scores slices, then one whole-scan row; columns:
        the predicted label name and one probability column per class), or a :class:`MedAnalysisJob` when
        ``background`` is True. With ``plot``, a plot chart of the per-slice probabilities is created too.
        """
        nodes = self._inputNodes(volumeNodes)
        card = self.readModelCard(bundlePath)
        if card.task != "classification":
            raise InputError(f"expected a classification bundle, got a {card.task} bundle; use segment()")
        context = {"nodes": nodes, "card": card, "tableNode": tableNode, "plot": plot}
        if background:
            return self._startPredictJob("classify", bundlePath, context, None, None)
        prediction = self._predictInProcess(bundlePath, nodes, None, None, False)
        self.lastOutputs = self._importClassification(context, prediction.per_slice, prediction.scan)
        return self.lastOutputs["table"]

    def _predictInProcess(self, bundlePath, nodes, overlap, tta, probabilities):
        from MedAnalysisLib.inference.predict import predict

        volumes = [slicer_adapter.volume_from_node(node) for node in nodes]
        return predict(bundlePath, volumes if len(volumes) > 1 else volumes[0], overlap=overlap, tta=tta,
                       return_probabilities=probabilities)

    def _scratchFolder(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"MedAnalysis-{prefix}-"))

    def _startPredictJob(self, kind, bundlePath, context, overlap, tta) -> MedAnalysisJob:
        """Write the input node(s) to a scratch folder and start ``medanalysis predict`` on them."""
        from MedAnalysisLib.io import write_volume

        scratch = self._scratchFolder(kind)
        (scratch / "input").mkdir()
        paths = []
        for index, node in enumerate(context["nodes"]):
            paths.append(write_volume(slicer_adapter.volume_from_node(node), scratch / "input" / f"channel{index}.nrrd"))
        if len(paths) == 1:
            source = paths[0]
        else:  # one case with several channels: a one-row CSV manifest (image, image2, ...)
            source = scratch / "input" / "case.csv"
            header = ["case_id", "image"] + [f"image{n + 1}" for n in range(1, len(paths))]
            source.write_text(",".join(header) + "\n" + ",".join(["input", *map(str, paths)]) + "\n",
                              encoding="utf-8")
        argv = ["predict", str(bundlePath), str(source), "--out", str(scratch / "output"), "--format", "nrrd"]
        if context.get("probabilities"):
            argv.append("--probabilities")
        if overlap is not None:
            argv += ["--overlap", str(overlap)]
        if tta is not None:
            argv += ["--tta", "on" if tta else "off"]
        context["scratch"] = scratch
        return MedAnalysisJob(kind, WorkerJob(argv, python=self.python), context)

    def train(self, data, outputBundlePath: str, *, task: str = "segmentation", family: str = "unet3d",
              epochs: int = 50, resume: bool = True, extraArguments: Sequence[str] = (), background: bool = True):
        """Train a model and write a bundle.

        Args:
            data: A dataset path (MSD folder, CSV manifest, DICOM folder) or a list of
                ``(volumeNode, segmentationNode)`` pairs from the scene; pairs are exported to an MSD folder next to
                the output bundle (``<bundle>-training-data``), segments matched to labels by name.
            outputBundlePath: Bundle folder or .zip to write.
            task, family, epochs: What to train (see ``medanalysis train --help``).
            resume: Continue from the checkpoint of an earlier, interrupted run of the same output.
            extraArguments: More ``medanalysis train`` options, e.g. ``["--hparam", "base_filters=8"]``.
            background: ``True`` (default) returns a :class:`MedAnalysisJob`; ``False`` blocks and returns the
                library's ``TrainResult``.
        """
        if not outputBundlePath:
            raise InputError("expected an output bundle path, got an empty path")
        if extraArguments and not background:
            raise InputError(f"expected extraArguments only with background=True (they are command-line options), got "
                             f"{list(extraArguments)}")
        datasetPath = str(data) if isinstance(data, (str, os.PathLike)) else str(
            self.exportTrainingCases(data, Path(str(outputBundlePath).removesuffix(".zip") + "-training-data")))
        argv = ["train", datasetPath, "--task", task, "--model", family, "--out", str(outputBundlePath),
                "--epochs", str(int(epochs)), *extraArguments]
        if not resume:
            argv.append("--no-resume")
        if background:
            return MedAnalysisJob("train", WorkerJob(argv, python=self.python),
                                  {"bundlePath": str(outputBundlePath)})
        from MedAnalysisLib.data.datasets import load_dataset
        from MedAnalysisLib.training import train

        return train(load_dataset(datasetPath), task=task, family=family, out=outputBundlePath, epochs=int(epochs),
                     resume=resume)

    def exportTrainingCases(self, pairs: Sequence, folder: Path) -> Path:
        """Write (volume node, segmentation node) pairs as an MSD dataset folder; returns the folder.

        Labels are the union of segment names over the cases, numbered 1, 2, ... in order of first appearance.
        """
        from MedAnalysisLib.io import write_volume
        from MedAnalysisLib.io.atomic import write_text_atomic

        pairs = list(pairs)
        if not pairs:
            raise InputError("expected at least one (volume, segmentation) training pair, got none")
        names: list[str] = []
        for volume, segmentation in pairs:
            if volume is None or segmentation is None:
                raise InputError(f"expected a volume and a segmentation in every training pair, got {(volume, segmentation)}")
            seg = segmentation.GetSegmentation()
            for n in range(seg.GetNumberOfSegments()):
                name = seg.GetNthSegment(n).GetName()
                if name.lower() not in [x.lower() for x in names]:
                    names.append(name)
        labels = [{"value": i + 1, "name": name} for i, name in enumerate(names)]
        (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
        training = []
        modality = slicer_adapter.volume_modality(pairs[0][0]) or "CT"
        for index, (volume, segmentation) in enumerate(pairs):
            case = f"case_{index:03d}"
            write_volume(slicer_adapter.volume_from_node(volume), folder / "imagesTr" / f"{case}_0000.nii.gz")
            label = slicer_adapter.label_volume_from_segmentation(segmentation, labels, volume)
            write_volume(label, folder / "labelsTr" / f"{case}.nii.gz")
            training.append({"image": f"./imagesTr/{case}_0000.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        description = {
            "name": "MedAnalysis scene export",
            "modality": {"0": modality},
            "labels": {"0": "background", **{str(label["value"]): label["name"] for label in labels}},
            "numTraining": len(training),
            "training": training,
            "file_ending": ".nii.gz",
        }
        write_text_atomic(folder / "dataset.json", json.dumps(description, indent=2))
        return folder

    def evaluate(self, bundlePath: str, datasetPath: str, outputFolder: str, *, background: bool = True,
                 bootstrap: int = 1000, figures: bool = True):
        """Evaluate a bundle on labelled data (MSD folder or CSV manifest); the summary becomes a table node.

        Writes per-case metrics (``per_case.csv``), ``summary.json`` (means with bootstrap 95% intervals) and
        figures into ``outputFolder``. Returns a :class:`MedAnalysisJob` (``medanalysis evaluate`` in a child
        process), or with ``background=False`` runs in this process and returns the table node.
        """
        if not datasetPath or not outputFolder:
            raise InputError(f"expected a labelled dataset and an output folder, got {datasetPath!r}, {outputFolder!r}")
        self.readModelCard(bundlePath)
        if background:
            argv = ["evaluate", str(bundlePath), str(datasetPath), "--out", str(outputFolder),
                    "--bootstrap", str(int(bootstrap))]
            if not figures:
                argv.append("--no-figures")
            return MedAnalysisJob("evaluate", WorkerJob(argv, python=self.python), {"outputFolder": str(outputFolder)})
        from MedAnalysisLib.evaluation.report import EvaluationOptions, evaluate_bundle

        evaluate_bundle(str(bundlePath), str(datasetPath), str(outputFolder),
                        EvaluationOptions(bootstrap=int(bootstrap), figures=figures))
        self.lastOutputs = self.importEvaluationSummary(outputFolder)
        return self.lastOutputs["table"]

    # ------------------------------------------------------------------ bringing results into the scene
    def _importSegmentation(self, context: dict, labelVolume, probabilityVolume=None) -> dict:
        from MedAnalysisLib.inference.predict import label_volume_table

        card = context["card"]
        reference = context["nodes"][0]
        scene = slicer_adapter.require_scene(reference)
        baseName = f"{reference.GetName()} {card.name}"
        outputs: dict[str, Any] = {}
        if context["outputType"] == "segmentation":
            outputs["segmentation"] = slicer_adapter.segmentation_node_from_volume(
                scene, labelVolume, card.labels, name=baseName, reference_node=reference, node=context["outputNode"])
        else:
            outputs["labelmap"] = slicer_adapter.labelmap_node_from_volume(
                scene, labelVolume, card.labels, name=baseName, reference_node=reference, node=context["outputNode"])
        rows = label_volume_table(labelVolume, card.labels)
        outputs["table"] = slicer_adapter.table_node_from_rows(
            scene, rows, f"{baseName} volumes", units=_volumeUnits(rows), reference_node=reference,
            node=context["tableNode"])
        if probabilityVolume is not None and context.get("probabilities"):
            outputs["probabilities"] = []
            for label in card.labels:
                if label.value == 0 or label.value >= probabilityVolume.n_components:
                    continue
                channel = probabilityVolume.with_array(probabilityVolume.array[..., label.value])
                outputs["probabilities"].append(slicer_adapter.scalar_volume_node_from_volume(
                    scene, channel, f"{baseName} P({label.name})", reference_node=reference))
        return outputs

    def _importClassification(self, context: dict, perSlice, scan) -> dict:
        card = context["card"]
        reference = context["nodes"][0]
        scene = slicer_adapter.require_scene(reference)
        baseName = f"{reference.GetName()} {card.name}"
        perSlice = [_sliceRow(row) for row in (perSlice or [])]
        rows = [{"scope": "slice", **row} for row in perSlice]
        if scan:
            rows.append(_scanRow(scan))
        if not rows:
            raise InputError("expected per-slice or whole-scan results from the classifier, got none")
        columns = list(dict.fromkeys(key for row in rows for key in row))
        outputs: dict[str, Any] = {"table": slicer_adapter.table_node_from_rows(
            scene, rows, f"{baseName} classification", columns=columns, reference_node=reference,
            node=context["tableNode"])}
        probabilityColumns = [c for c in columns if c.startswith("p_")]
        if context.get("plot") and perSlice and probabilityColumns and "slice" in columns:
            sliceTable = slicer_adapter.table_node_from_rows(
                scene, [{k: row.get(k) for k in ["slice", *probabilityColumns]} for row in perSlice],
                f"{baseName} per-slice probabilities", reference_node=reference)
            colors = {f"p_{label.name}": label.color for label in card.labels}
            outputs["chart"] = slicer_adapter.plot_chart_from_table(
                scene, sliceTable, "slice", probabilityColumns, title=f"{baseName} per slice",
                x_title=_("slice index (k)"), y_title=_("probability"), colors=colors, reference_node=reference)
            outputs["sliceTable"] = sliceTable
        return outputs

    def finishJob(self, job: MedAnalysisJob) -> dict:
        """Bring a finished job's outputs into the scene; raises with the worker's message when it failed."""
        job.poll()
        worker = job.worker
        if worker.running:
            raise RuntimeError("expected a finished job, got one still running")
        scratch = job.context.get("scratch")
        try:
            if worker.cancelled and worker.result is None:
                from MedAnalysisLib.errors import CancelledError

                raise CancelledError(_("Stopped on request."))
            failed = (worker.result or {}).get("failed") or []
            if failed:  # the batch ran, the case did not: the library's own message
                raise MedAnalysisError(f"{failed[0].get('error_type')}: {failed[0].get('message')}")
            if worker.error is not None or worker.result is None:
                error = worker.error or {"error_type": "Error", "message": "no result"}
                raise MedAnalysisError(f"{error['message']}")
            if job.kind in ("segment", "classify"):
                outputs = self._importPredictOutputs(job)
            elif job.kind == "evaluate":
                outputs = self.importEvaluationSummary(job.context["outputFolder"])
            else:
                outputs = {"bundlePath": job.context["bundlePath"]}
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        self.lastOutputs = outputs
        return outputs

    def _importPredictOutputs(self, job: MedAnalysisJob) -> dict:
        from MedAnalysisLib.io import read_volume

        outputFolder = job.context["scratch"] / "output"
        record = _caseRecord(job.worker.result, outputFolder)
        files = {kind: outputFolder / name for kind, name in record.get("outputs", {}).items()}
        if job.kind == "segment":
            label = read_volume(files["label_nrrd"], kind="label")
            probabilities = read_volume(files["probabilities"]) if "probabilities" in files else None
            # The child read the file written from the input node: the same grid up to the decimal rounding of the
            # file header. Put the result on the input node's exact grid (after checking it is that grid).
            grid = slicer_adapter.node_grid(job.context["nodes"][0])
            from MedAnalysisLib.volume import require_same_geometry

            require_same_geometry(grid, label, what="prediction")
            label = grid.with_array(label.array)
            if probabilities is not None:
                probabilities = grid.with_array(probabilities.array)
            return self._importSegmentation(job.context, label, probabilities)
        rows = json.loads(files["table_json"].read_text(encoding="utf-8")) if "table_json" in files else []
        perSlice = [row for row in rows if "slice" in row] or None
        return self._importClassification(job.context, perSlice, record.get("scan"))

    def importEvaluationSummary(self, outputFolder) -> dict:
        """summary.json of an evaluation as a table node: one row per metric (mean, 95% CI, median, ...)."""
        summary = json.loads((Path(outputFolder) / "summary.json").read_text(encoding="utf-8"))
        metrics = summary.get("metrics") or {}
        rows = [{"metric": name, **{k: v for k, v in stats.items() if isinstance(v, (int, float))}}
                for name, stats in metrics.items() if isinstance(stats, dict)]
        if not rows:  # classifiers: headline figures (AUC, accuracy, ...)
            rows = [{"metric": name, "value": value} for name, value in (summary.get("headline") or {}).items()
                    if isinstance(value, (int, float))]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        table = slicer_adapter.table_node_from_rows(self.scene, rows, self.scene.GenerateUniqueName(
            "MedAnalysis evaluation"), columns=columns)
        return {"table": table, "summary": summary}

    # ------------------------------------------------------------------ progress text and training curves
    @staticmethod
    def describeProgress(message: dict) -> str:
        from MedAnalysisLib.progress import format_duration

        fraction = message.get("fraction") or 0.0
        eta = message.get("eta_s")
        text = f"{message.get('stage', '')}: {fraction:.0%}"
        if eta is not None and fraction < 1:
            text += _(", about {eta} left").format(eta=format_duration(eta))
        if message.get("message"):
            text += f" \u2014 {message['message']}"
        return text

    @staticmethod
    def describeOutcome(job: MedAnalysisJob) -> str:
        seconds = f"{job.worker.elapsed_s:.0f} s"
        if job.kind == "train":
            return _("Training finished in {seconds}; bundle written to {path}.").format(
                seconds=seconds, path=job.context["bundlePath"])
        return _("Done in {seconds}.").format(seconds=seconds)

    def createTrainingCurves(self):
        """An empty table (epoch, metrics...) and a plot chart for the live training curves."""
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName("MedAnalysis training"))
        chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", table.GetName() + " curves")
        chart.SetTitle(_("Training"))
        chart.SetXAxisTitle(_("epoch"))
        chart.SetYAxisTitle(_("value"))
        return table, chart

    def addTrainingMetrics(self, tableNode, chartNode, message: dict) -> None:
        """Append one ``metrics`` message (``epoch`` and its figures) to the curves table; one chart series per
        figure (loss, val_loss, val_dice, ...), added when a figure first appears."""
        metrics = {k: float(v) for k, v in (message.get("metrics") or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rows = slicer_adapter.rows_from_table_node(tableNode)
        rows.append({"epoch": int(message.get("epoch", len(rows) + 1)), **metrics})
        columns = list(dict.fromkeys(key for row in rows for key in row))
        slicer_adapter.table_node_from_rows(self.scene, rows, tableNode.GetName(), columns=columns, node=tableNode)
        if chartNode.GetNumberOfPlotSeriesNodes() != len(columns) - 1:
            slicer_adapter.plot_chart_from_table(self.scene, tableNode, "epoch", columns[1:],
                                                 title=chartNode.GetTitle() or _("Training"), x_title=_("epoch"),
                                                 y_title=_("value"), chart_node=chartNode)

    # ------------------------------------------------------------------ Python dependencies (no dialogs here)
    @staticmethod
    def requirements() -> list[str]:
        """Requirement lines (``name>=version``) MedAnalysis needs in Slicer's Python."""
        path = next((p for p in REQUIREMENT_FILES if p.is_file()), None)
        if path is None:
            raise InputError(f"expected the requirements file at {REQUIREMENT_FILES[0]}, found none")
        return [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()
                if line.split("#")[0].strip()]

    @classmethod
    def missingRequirements(cls) -> list[str]:
        """The requirements that are not installed, or installed below their ``>=`` floor."""
        return [requirement for requirement in cls.requirements() if not _requirementSatisfied(requirement)]

    @staticmethod
    def constraintsFile() -> Path:
        """A constraints file: the shipped one plus Slicer's own packages pinned to their installed versions."""
        lines = []
        shipped = next((p for p in CONSTRAINT_FILES if p.is_file()), None)
        if shipped is not None:
            lines += [line for line in shipped.read_text(encoding="utf-8").splitlines()
                      if line.strip() and not line.startswith("#")]
        for package in PROTECTED_PACKAGES:
            try:
                lines.append(f"{package}=={importlib.metadata.version(package)}")
            except importlib.metadata.PackageNotFoundError:
                continue
        path = Path(tempfile.mkdtemp(prefix="MedAnalysis-pip-")) / "constraints.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    @classmethod
    def installRequirements(cls, requirements: Sequence[str]) -> bool:
        """Install ``requirements`` into Slicer's Python without changing numpy or SimpleITK.

        Uses ``slicer.pydeps.pip_ensure`` (Slicer 5.11+) or ``slicer.packaging.pip_ensure`` where present, else
        ``slicer.util.pip_install``. Returns True when a package that was already imported changed (restart
        needed). Raises ConnectionError with a clear message when the package index cannot be reached.
        """
        import socket

        try:
            socket.create_connection(("pypi.org", 443), timeout=5).close()
        except OSError as error:
            raise ConnectionError(
                "cannot reach the Python Package Index (pypi.org); connect to the internet or install the packages "
                f"{', '.join(requirements)} from a local wheel folder with pip ({error})") from error
        before = {name: _installedVersion(name) for name in (_requirementName(r) for r in requirements)}
        constraints = cls.constraintsFile()
        ensure = None
        for moduleName in ("slicer.pydeps", "slicer.packaging"):
            try:
                ensure = getattr(importlib.import_module(moduleName), "pip_ensure", None)
            except ImportError:
                continue
            if ensure is not None:
                break
        if ensure is not None:
            from packaging.requirements import Requirement

            ensure([Requirement(r) for r in requirements], constraints=str(constraints), requester="MedAnalysis")
        else:
            slicer.util.pip_install([*requirements, "-c", str(constraints)])
        shutil.rmtree(constraints.parent, ignore_errors=True)
        changed = [name for name, version in before.items() if version and version != _installedVersion(name)]
        return any(_importName(name) in sys.modules for name in changed)


def pathText(path) -> str:
    """A path parameter as text: "" when unset (the parameter node's default path is ``Path()``, i.e. ".")."""
    text = str(path) if path is not None else ""
    return "" if text in ("", ".") else text


def _requirementName(requirement: str) -> str:
    for separator in (">=", "==", "<=", ">", "<", "~=", "["):
        requirement = requirement.split(separator)[0]
    return requirement.strip()


def _importName(distribution: str) -> str:
    return {"SimpleITK": "SimpleITK", "pydicom": "pydicom"}.get(distribution, distribution.replace("-", "_").lower())


def _installedVersion(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _versionTuple(text: str) -> tuple:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece else ""
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts)


def _requirementSatisfied(requirement: str) -> bool:
    """True when the distribution is installed at or above a ``>=`` floor (the only specifier our files use)."""
    name = _requirementName(requirement)
    installed = _installedVersion(name)
    if installed is None:
        return False
    if ">=" in requirement:
        return _versionTuple(installed) >= _versionTuple(requirement.split(">=")[1].split(",")[0].strip())
    return True


def _sliceRow(row: dict) -> dict:
    """A per-slice result row for a table: the LPS slice centre becomes R, A, S columns (Slicer shows RAS)."""
    result = {key: value for key, value in row.items() if key != "position_lps"}
    if row.get("position_lps") is not None:
        left, posterior, superior = row["position_lps"]
        result.update({"R": -float(left), "A": -float(posterior), "S": float(superior)})
    return result


def _scanRow(scan: dict) -> dict:
    """The whole-scan result ``{"predicted", "value", "probabilities": {name: p}}`` as one flat table row."""
    row = {"scope": "scan", "predicted": scan.get("predicted"), "value": scan.get("value")}
    row.update({f"p_{name}": float(p) for name, p in (scan.get("probabilities") or {}).items()})
    return row


def _volumeUnits(rows: list) -> dict:
    units = {}
    for column in (rows[0] if rows else {}):
        lowered = column.lower()
        if "mm3" in lowered:
            units[column] = "mm3"
        elif lowered.endswith("ml") or "_ml" in lowered:
            units[column] = "mL"
    return units


def _caseRecord(result: dict, outputFolder: Path) -> dict:
    """The provenance sidecar (``<case>.json``, with its ``outputs``) of the one case a predict job ran."""
    done = result.get("done") or []
    if len(done) != 1:
        raise MedAnalysisError(f"expected the prediction of one case, got {len(done)} in {outputFolder}")
    return json.loads((outputFolder / f"{done[0]}.json").read_text(encoding="utf-8"))


# =================================================================================================== self-test
def buildTinyBundles(folder: Path) -> tuple[Path, Path]:
    """Write a tiny segmentation bundle (unet3d, 3 labels with terminology) and a tiny classification bundle
    (cnn3d, 2 classes) with untrained weights; for the self-test (checks plumbing and geometry, not accuracy)."""
    import keras

    from MedAnalysisLib.bundle import BundleConfig, LabelInfo, save_bundle
    from MedAnalysisLib.models import build_model
    from MedAnalysisLib.preprocessing.plan import Plan

    keras.utils.set_random_seed(0)
    channels = {"channels": [{"name": "CT", "modality": "CT"}]}
    liver = {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
             "type": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"}}
    tumor = {"category": {"scheme": "SCT", "code": "49755003", "meaning": "Morphologically Altered Structure"},
             "type": {"scheme": "SCT", "code": "108369006", "meaning": "Neoplasm"}}
    segHparams = {"n_classes": 3, "in_channels": 1, "patch_size": [16, 16, 16], "base_filters": 4, "max_filters": 8,
                  "n_stages": 2}
    segmentation = BundleConfig(
        name="tiny organ model", task="segmentation", family="unet3d", hparams=segHparams,
        plan=Plan(task="segmentation", modality="CT", label_values=(0, 1, 2), patch_size=(16, 16, 16),
                  pooling_levels=1, target_spacing=None),
        labels=(LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "liver", (221, 130, 101), liver),
                LabelInfo(2, "tumor", (144, 238, 144), tumor)),
        input=channels)
    segPath = save_bundle(folder / "tiny-segmentation", build_model("unet3d", **segHparams), segmentation)
    clsHparams = {"n_classes": 2, "in_channels": 1, "filters": [4, 8]}
    classification = BundleConfig(
        name="tiny lesion classifier", task="classification", family="cnn3d", hparams=clsHparams,
        plan=Plan(task="classification", modality="CT", label_values=(0, 1), patch_size=(16, 16, 16),
                  pooling_levels=1, target_spacing=None, recommended_model="cnn3d"),
        labels=(LabelInfo(0, "normal", (128, 174, 128)), LabelInfo(1, "lesion", (216, 101, 79))),
        input=channels)
    clsPath = save_bundle(folder / "tiny-classification", build_model("cnn3d", **clsHparams), classification)
    return segPath, clsPath


def runSelfTest(logic: MedAnalysisLogic, scene, workFolder: Path, check) -> dict:
    """Segment and classify an oblique, anisotropic volume placed under a study; ``check(condition, message)``
    asserts. Returns the created nodes. Shared by :class:`MedAnalysisTest` (in Slicer) and the pytest suite."""
    import numpy as np

    from MedAnalysisLib.inference.predict import label_volume_table
    from MedAnalysisLib.volume import Volume, rotation_about_axis

    segPath, clsPath = buildTinyBundles(workFolder)
    rng = np.random.default_rng(0)
    voxels = rng.normal(0, 20, size=(12, 20, 24)).astype(np.int16)
    voxels[4:9, 6:14, 8:16] += 200
    volume = Volume(voxels, spacing=(0.9, 1.1, 2.5), origin=(-20.5, 14.0, 31.25),
                    direction=rotation_about_axis("z", 20) @ rotation_about_axis("x", 10))
    inputNode = slicer_adapter.scalar_volume_node_from_volume(scene, volume, "SelfTest CT")
    sh = scene.GetSubjectHierarchyNode()
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Self-test patient"), "Self-test study")
    inputItem = sh.GetItemByDataNode(inputNode) or sh.CreateItem(study, inputNode)
    sh.SetItemParent(inputItem, study)
    before = slicer_adapter.snapshot(inputNode)

    segmentationNode = logic.segment(inputNode, str(segPath))
    outputs = dict(logic.lastOutputs)
    card = logic.readModelCard(str(segPath))
    segments = segmentationNode.GetSegmentation()
    names = [segments.GetNthSegment(n).GetName() for n in range(segments.GetNumberOfSegments())]
    check(names == ["liver", "tumor"], f"expected segments ['liver', 'tumor'], got {names}")
    check(segments.GetNthSegment(0).GetTerminology().split("~")[2] == "SCT^10200004^Liver",
          f"expected the liver terminology, got {segments.GetNthSegment(0).GetTerminology()}")
    label = slicer_adapter.label_volume_from_segmentation(segmentationNode, card.labels, inputNode)
    check(np.allclose(label.ijk_to_ras(), slicer_adapter.ijk_to_ras_array(inputNode), atol=1e-9),
          "expected the segmentation on the input's exact grid")
    rows = slicer_adapter.rows_from_table_node(outputs["table"])
    expected = label_volume_table(label, card.labels)
    check(len(rows) == len(expected), f"expected {len(expected)} table rows, got {len(rows)}")
    for row, reference in zip(rows, expected, strict=True):
        for key, value in reference.items():
            same = (abs(row[key] - value) <= 1e-6 * max(1.0, abs(value)) if isinstance(value, float)
                    else row[key] == value)
            check(same, f"expected {key}={value!r} in the volume table, got {row[key]!r}")
    for node in (segmentationNode, outputs["table"]):
        check(slicer_adapter.study_item(node) == study, f"expected {node.GetName()} under the input's study")

    tableNode = logic.classify(inputNode, str(clsPath))
    classRows = slicer_adapter.rows_from_table_node(tableNode)
    scanRows = [row for row in classRows if row.get("scope") == "scan"]
    check(len(scanRows) == 1, f"expected one whole-scan row, got {len(scanRows)}")
    labelNames = {"normal", "lesion"}
    check(scanRows[0]["predicted"] in labelNames, f"expected a class name as prediction, got {scanRows[0]}")
    total = scanRows[0]["p_normal"] + scanRows[0]["p_lesion"]
    check(abs(total - 1.0) < 1e-4, f"expected class probabilities summing to 1, got {total}")

    after = slicer_adapter.snapshot(inputNode)
    check(np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2],
          "expected the input volume node to be unchanged")
    return {"input": inputNode, "segmentation": segmentationNode, "table": outputs["table"],
            "classification": tableNode, "study": study}


class MedAnalysisTest(ScriptedLoadableModuleTest):
    """Builds a small volume and tiny bundles, segments and classifies, checks geometry, names and tables.

    Runs in Slicer (Reload and Test, or ctest in an extension build); Testing/test_slicer_logic.py runs the same
    :func:`runSelfTest` under pytest on slicer-core's scene.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_segment_and_classify()

    def test_segment_and_classify(self) -> None:
        missing = MedAnalysisLogic.missingRequirements()
        self.assertEqual(missing, [], "MedAnalysis needs these Python packages for its self-test; install them with "
                         "the panel's Advanced > Python packages button: " + ", ".join(missing))
        self.delayDisplay("Building a small oblique volume and tiny bundles")
        with tempfile.TemporaryDirectory(prefix="MedAnalysisSelfTest-") as folder:
            runSelfTest(MedAnalysisLogic(slicer.mrmlScene), slicer.mrmlScene, Path(folder),
                        lambda condition, message: self.assertTrue(condition, message))
        self.delayDisplay("Test passed")
