"""MedAnalysis: run and train deep-learning models on the scans loaded in 3D Slicer.

This file holds only what needs Slicer's Qt layer: the module description, the parameter node, the panel (widget) and
a thin self-test. Everything else is plain Python in ``MedAnalysisSlicerLib`` (next to this file): the scene logic,
the package installer, background jobs and the self-test scenario. The models, readers and writers are the
``MedAnalysisLib`` library.

Console use::

    logic = slicer.util.getModuleLogic("MedAnalysis")
    segmentation = logic.segment(volumeNode, "/path/to/model.zip")     # returns the segmentation node
    table = logic.classify(volumeNode, "/path/to/classifier.zip")      # returns the table node
    logic.listModels(offline=True); job = logic.pullModel("model-id"); logic.modelPath("model-id")  # catalogs

This file must stay importable by every Slicer that might load it (Slicer 5.8 ships Python 3.9): it checks the
Slicer and Python versions first and, on an older Slicer, shows why in the panel instead of failing with a
traceback. Keep its syntax and standard-library use within Python 3.9 (a test checks this).
"""

from __future__ import annotations

import logging
import pathlib
import sys
import tempfile
from pathlib import Path
from typing import Annotated

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
#: The oldest Slicer (major, minor) and Python MedAnalysis runs in: Slicer 5.10 ships Python 3.12.
MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)


def unsupportedSlicerReason(app=None, pythonVersion=None):
    """Why this Slicer cannot run MedAnalysis, or None when it can (Slicer >= 5.10 with Python >= 3.10)."""
    app = slicer.app if app is None else app
    python = tuple(pythonVersion or sys.version_info[:3])
    slicerVersion = None
    if app is not None:
        slicerVersion = (int(getattr(app, "majorVersion", 0) or 0), int(getattr(app, "minorVersion", 0) or 0))
    if (slicerVersion is None or slicerVersion >= MINIMUM_SLICER) and python[:2] >= MINIMUM_PYTHON:
        return None
    found = "Slicer {}.{}".format(*slicerVersion) if slicerVersion else "this Slicer"
    return _("MedAnalysis needs 3D Slicer {minimum} or newer (Python 3.12); {found} runs Python {python}. "
             "Install a current Slicer release to use it.").format(
                 minimum="{}.{}".format(*MINIMUM_SLICER), found=found, python=".".join(str(p) for p in python))


def _ensureLibrariesOnPath():
    """Make ``MedAnalysisSlicerLib`` and ``MedAnalysisLib`` importable: installed next to this file, or in a source
    checkout (the module library beside this file, the library one folder up)."""
    for folder in (MODULE_DIR, MODULE_DIR.parent):
        for package in ("MedAnalysisSlicerLib", "MedAnalysisLib"):
            if (folder / package / "__init__.py").is_file() and str(folder) not in sys.path:
                sys.path.insert(0, str(folder))


UNSUPPORTED_REASON = unsupportedSlicerReason()
if UNSUPPORTED_REASON is None:
    _ensureLibrariesOnPath()
    from MedAnalysisLib.errors import MedAnalysisError
    from MedAnalysisSlicerLib.installer import PackageInstaller
    from MedAnalysisSlicerLib.jobs import MedAnalysisJob
    from MedAnalysisSlicerLib.logic import SceneLogic, pathText
    from MedAnalysisSlicerLib.messages import displayText, errorText, pipErrorText, repairStoredParameters
    from MedAnalysisSlicerLib.models import RECENT_BUNDLES_LIMIT, checkCatalogSource
else:  # an older Slicer: the module loads and its panel says why it cannot run; nothing else is imported
    MedAnalysisError = Exception

    class SceneLogic:
        """Stands in for the scene logic where MedAnalysis cannot run; using it says why."""

        def __init__(self, *args, **kwargs):
            raise RuntimeError(UNSUPPORTED_REASON)


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
            "process and can be cancelled. Requires 3D Slicer 5.10 or newer. Not for clinical use."
        )
        self.parent.acknowledgementText = _(
            "Built on TensorFlow/Keras, SimpleITK and pydicom. The module layout follows the 3D Slicer scripted "
            "module template."
        )


# =================================================================================================== parameters
@parameterNodeWrapper
class MedAnalysisParameterNode:
    """Every setting of the panel; saved with the scene.

    Paths are ``pathlib.Path`` (what ctkPathLineEdit binds to); an unset path reads as "" through ``pathText``.
    bundlePath: model bundle (.zip, folder, or its bundle.json/ensemble.json). inputVolume0-2: input channels.
    matchModality: the model picker lists only models for the input volume's modality (when it has one).
    uncertainty: also create uncertainty maps/columns. explain: also create the explanation heatmap (classification).
    showOverlay: show the new heatmap (or uncertainty map) as the slice views' foreground over the input.
    outputType: "segmentation" or "labelmap". outputSegmentation/outputLabelmap/outputTable: nodes to overwrite
    (None: create new ones). createProbabilities: also create one probability volume per class.
    showPerSlicePlot: plot per-slice probabilities of classification models.
    overrideOverlap/overlap: the sliding-window overlap; the bundle's own unless overrideOverlap is set.
    testTimeAugmentation: "bundle default", "on" or "off" (flip averaging).
    runInBackground: child process (True) or in Slicer's process.
    trainingSource: "scene" (trainingVolumes/trainingSegmentations pairs) or "folder" (trainingDatasetPath).
    trainingOptions: more ``medanalysis train`` options, as typed on a command line.
    trainingModality: the scene volumes' modality when they carry none. evaluationLabelMap: "organ=anterior, ...".
    """

    bundlePath: pathlib.Path
    matchModality: bool = False
    inputVolume0: vtkMRMLScalarVolumeNode
    inputVolume1: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    outputType: Annotated[str, Choice(["segmentation", "labelmap"])] = "segmentation"
    outputSegmentation: vtkMRMLSegmentationNode
    outputLabelmap: vtkMRMLLabelMapVolumeNode
    outputTable: vtkMRMLTableNode
    createProbabilities: bool = False
    showPerSlicePlot: bool = True
    uncertainty: bool = False
    explain: bool = False
    showOverlay: bool = True
    overrideOverlap: bool = False
    overlap: Annotated[float, WithinRange(0.0, 0.9)] = 0.5
    testTimeAugmentation: Annotated[str, Choice(["bundle default", "on", "off"])] = "bundle default"
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
    trainingOptions: str = ""
    trainingModality: Annotated[str, Choice(["from the volumes", "CT", "MR", "PT", "US", "other"])] = "from the volumes"
    evaluationDatasetPath: pathlib.Path
    evaluationOutputPath: pathlib.Path
    evaluationLabelMap: str = ""


# =================================================================================================== logic
class MedAnalysisLogic(SceneLogic, ScriptedLoadableModuleLogic):
    """The scene logic of ``MedAnalysisSlicerLib`` plus the module's parameter node.

    Args:
        scene: The MRML scene (default: ``slicer.mrmlScene``).
        python: Interpreter for background jobs (default: ``PythonSlicer`` next to Slicer).
        installer: The package installer (default: one that uses Slicer's pip functions).
    """

    def __init__(self, scene=None, python=None, installer=None):
        ScriptedLoadableModuleLogic.__init__(self)
        SceneLogic.__init__(self, scene if scene is not None else slicer.mrmlScene, python=python,
                            installer=installer)
        self.extraCatalogs = settingsList(CATALOGS_SETTING)  # the panel's catalogs, for console calls too

    def getParameterNode(self):
        return MedAnalysisParameterNode(super().getParameterNode())


# =================================================================================================== settings
#: Per-user settings (Slicer's QSettings): the user's extra model catalogs and the local bundles used recently.
CATALOGS_SETTING = "MedAnalysis/ModelCatalogs"
RECENT_BUNDLES_SETTING = "MedAnalysis/RecentBundles"
#: Opacity of a heatmap or uncertainty map shown over the scan.
OVERLAY_OPACITY = 0.4


def settingsList(key):
    """A list of texts kept in the user's settings (a single text or nothing reads as a list too)."""
    value = qt.QSettings().value(key)
    if value is None or value == "":
        return []
    values = [value] if isinstance(value, str) else list(value)
    return [str(v) for v in values if isinstance(v, str) and v]


def setSettingsList(key, values):
    settings = qt.QSettings()
    settings.setValue(key, list(values))
    settings.sync()


# =================================================================================================== widget
class MedAnalysisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: shows state, forwards user actions to the logic, polls background jobs with a timer.

    Args:
        parent: The module panel (Slicer passes it).
        logic: The logic to use; by default a :class:`MedAnalysisLogic` on ``slicer.mrmlScene`` (tests pass one).
    """

    POLL_INTERVAL_MS = 200

    def __init__(self, parent=None, logic=None):
        # Everything setup() needs first: without a parent, Slicer's base class calls setup() from its __init__.
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self.ui = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the MedAnalysisJob of Apply/Train/Evaluate (one at a time)
        self._modelCard = None
        self._modelCardPath = None  # the bundle path the shown model card was read from
        self._pollTimer = None
        self._trainingCurves = None
        self._starting = False  # a run is being started (guards against a second click while Qt processes events)
        self._orphans = []  # jobs dropped with a closed scene: stopped, their scratch removed once they end
        self._pickerEntries = []  # the model picker's rows after its first ("choose") item
        self._pickedEntry = None  # the picker row chosen last (a catalog entry may need a download)
        self._fillingPicker = False  # the picker is being refilled: its index changes are not the user's
        self._pickerModality = ""  # the modality the picker was filtered by
        ScriptedLoadableModuleWidget.__init__(self, parent)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        if UNSUPPORTED_REASON is not None:
            message = qt.QLabel(UNSUPPORTED_REASON)
            message.setObjectName("unsupportedSlicerLabel")
            message.setTextFormat(qt.Qt.PlainText)
            message.setWordWrap(True)
            self.layout.addWidget(message)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAnalysis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        if self.logic is None:
            self.logic = MedAnalysisLogic()
        for label in (self.ui.statusLabel, self.ui.trainingStatusLabel, self.ui.evaluationStatusLabel,
                      self.ui.inputWarningLabel, self.ui.inputChannelLabel0, self.ui.inputChannelLabel1,
                      self.ui.inputChannelLabel2, self.ui.modelStatusLabel, self.ui.catalogStatusLabel):
            label.setTextFormat(qt.Qt.PlainText)  # names from bundles, files and workers are text, never markup

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)

        for selector in (self.ui.inputVolumeSelector0, self.ui.inputVolumeSelector1, self.ui.inputVolumeSelector2):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateGUI)
        for comboBox in (self.ui.outputTypeComboBox, self.ui.trainingSourceComboBox):
            comboBox.connect("currentIndexChanged(int)", self.updateGUI)
        self.ui.overrideOverlapCheckBox.connect("toggled(bool)", self.updateGUI)
        # CTK reports only acceptable text (an emptied field says nothing): the parameter is unset then, so the
        # panel never runs with a path the field no longer shows.
        self.ui.bundlePathLineEdit.connect("validInputChanged(bool)", lambda valid: self._onPathValidity(
            "bundlePath", valid))
        self.ui.trainingDatasetPathLineEdit.connect("validInputChanged(bool)", lambda valid: self._onPathValidity(
            "trainingDatasetPath", valid))
        self.ui.trainingOutputPathLineEdit.connect("validInputChanged(bool)", lambda valid: self._onPathValidity(
            "trainingOutputPath", valid))
        self.ui.evaluationDatasetPathLineEdit.connect("validInputChanged(bool)", lambda valid: self._onPathValidity(
            "evaluationDatasetPath", valid))
        self.ui.evaluationOutputPathLineEdit.connect("validInputChanged(bool)", lambda valid: self._onPathValidity(
            "evaluationOutputPath", valid))
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.ui.addTrainingCaseButton.connect("clicked(bool)", self.onAddTrainingCase)
        self.ui.removeTrainingCaseButton.connect("clicked(bool)", self.onRemoveTrainingCase)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelPicked)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.onRefreshModels)
        self.ui.downloadButton.connect("clicked(bool)", self.onDownloadButton)
        self.ui.matchModalityCheckBox.connect("toggled(bool)", lambda checked: self.refreshModelList())
        self.ui.inputVolumeSelector0.connect("currentNodeChanged(vtkMRMLNode*)", self._onInputChanged)
        self.ui.addCatalogButton.connect("clicked(bool)", self.onAddCatalog)
        self.ui.removeCatalogButton.connect("clicked(bool)", self.onRemoveCatalog)
        self.ui.downloadProgressBar.setVisible(False)
        self.logic.extraCatalogs = settingsList(CATALOGS_SETTING)
        self._showCatalogs()

        self.initializeParameterNode()
        self.refreshModelList()

    def cleanup(self):
        """The module is closing: stop a running job (its checkpoint is saved) and remove its scratch files."""
        if self._pollTimer is not None:
            self._pollTimer.stop()
        jobs, self._job, self._orphans = [self._job, *self._orphans], None, []
        for job in jobs:
            if job is None:
                continue
            if job.running:
                job.cancel()
            job.discardScratch()
        self.removeObservers()

    def enter(self):
        if self.ui is not None:
            self.initializeParameterNode()

    def exit(self):
        if self.ui is not None:
            self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        """The scene is closing: a running job's inputs and outputs go with it, so it is stopped and dropped."""
        if self._jobKind() is not None:
            job, self._job = self._job, None
            job.requestStop()  # the poll timer keeps running until it has ended, then removes its files
            self._jobProgressBar.setVisible(False)
            self._showStatus(self._jobStatusLabel, _("Stopped: the scene was closed."))
            self._orphans.append(job)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def _onPathValidity(self, parameter, valid):
        if not valid and self._parameterNode is not None and pathText(getattr(self._parameterNode, parameter)):
            setattr(self._parameterNode, parameter, pathlib.Path())

    def onNodeAdded(self, caller, event):
        """A volume loaded while the panel is open becomes the input when none is chosen yet."""
        if self._parameterNode and not self._parameterNode.inputVolume0 and self._jobKind() is None:
            firstVolume = self.logic.defaultInputVolume()
            if firstVolume is not None:
                self._parameterNode.inputVolume0 = firstVolume

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume0:
            firstVolume = self.logic.defaultInputVolume()
            if firstVolume is not None:
                self._parameterNode.inputVolume0 = firstVolume

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            repairStoredParameters(self._parameterNode.parameterNode, MedAnalysisParameterNode)
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    # ------------------------------------------------------------------ display
    def _showModelCard(self, path):
        """Read the model card of ``path`` (no TensorFlow involved) and show it; any failure goes to the card label.

        Driven by the parameter node (its ``bundlePath``), so a path set from the console or a loaded scene shows
        its card just as one chosen in the field does."""
        path = pathText(path)
        self._modelCardPath = path
        self._modelCard = None
        self.ui.labelsTableWidget.setRowCount(0)
        picked = self._pickedEntry
        if not path and picked is not None and picked.needsDownload:  # a catalog entry: its catalog fields
            self.ui.modelCardLabel.setTextFormat(qt.Qt.RichText)
            self.ui.modelCardLabel.setText(self.logic.catalogCardHtml(picked.listing.entry))  # escapes every value
        elif not path:
            self.ui.modelCardLabel.setTextFormat(qt.Qt.PlainText)
            self.ui.modelCardLabel.setText(_("No model selected."))
        else:
            try:
                card = self.logic.readModelCard(path)
                html = self.logic.modelCardHtml(card)  # escapes every value
                self._showLabels(card)
                [self.logic.channelLabelText(card, index) for index in range(len(card.input["channels"]))]
            except Exception as error:  # noqa: BLE001 - a bad bundle is shown, never raised from a slot
                self.ui.labelsTableWidget.setRowCount(0)
                self.ui.modelCardLabel.setTextFormat(qt.Qt.PlainText)
                self.ui.modelCardLabel.setText(_("Cannot use this bundle: {error}").format(error=errorText(error)))
            else:
                self._modelCard = card
                self.ui.modelCardLabel.setTextFormat(qt.Qt.RichText)
                self.ui.modelCardLabel.setText(html)
                self._rememberLocalBundle(path)
        self._syncPicker(path)

    # ------------------------------------------------------------------ model picker
    def refreshModelList(self, offline=True):
        """Fill the picker: catalog entries (cached catalogs only unless ``offline`` is False) and the recent local
        bundles, filtered by the input's modality when asked; the chosen row stays chosen when it is still listed.
        Catalogs that cannot be read are named in the model status line."""
        if self.ui is None:
            return
        modality = self._inputModality() if self.ui.matchModalityCheckBox.isChecked() else ""
        self._pickerModality = modality
        recent = settingsList(RECENT_BUNDLES_SETTING)[:RECENT_BUNDLES_LIMIT]
        entries, problems = self.logic.pickerEntries(recent, offline=offline,
                                                     modality=modality or None)
        previous = self._pickedEntry.key if self._pickedEntry is not None else None
        self._pickerEntries = entries
        self._fillingPicker = True
        try:
            self.ui.modelComboBox.clear()
            self.ui.modelComboBox.addItem(_("Choose a model ({count} listed)").format(count=len(entries)))
            for index, entry in enumerate(entries, start=1):
                self.ui.modelComboBox.addItem(entry.text)
                self.ui.modelComboBox.setItemData(index, entry.toolTip, qt.Qt.ToolTipRole)
            keys = [entry.key for entry in entries]
            self._pickedEntry = entries[keys.index(previous)] if previous in keys else None
            self.ui.modelComboBox.setCurrentIndex(keys.index(previous) + 1 if previous in keys else 0)
        finally:
            self._fillingPicker = False
        if self._jobKind() != "pull":
            self._showStatus(self.ui.modelStatusLabel, "\n".join(
                _("Catalog not read: {problem}").format(problem=problem) for problem in problems))
        self._modelCardPath = None  # a listed entry may have changed (downloaded, now cached)
        self.updateGUI()

    def onRefreshModels(self):
        """Refresh: ask the catalogs' servers instead of the cached catalogs, for a few seconds in all (the logic's
        ``refreshBudgetS``, 6 s); catalogs not reached by then are listed from their saved copies and named in the
        model status line, so a slow or stalled server never holds Slicer longer."""
        with slicer.util.WaitCursor():
            self.refreshModelList(offline=False)

    def onModelPicked(self, index):
        if self._fillingPicker or self._parameterNode is None:
            return
        entry = self._pickerEntries[index - 1] if 0 < index <= len(self._pickerEntries) else None
        self._pickedEntry = entry
        if entry is None:
            return
        self._modelCardPath = None  # show the new row's card even when the bundle path stays empty
        if entry.path:
            self._parameterNode.bundlePath = pathlib.Path(entry.path)
        else:
            self._parameterNode.bundlePath = pathlib.Path()
        self.updateGUI()

    def _syncPicker(self, path):
        """Show in the picker the row of the bundle the card was read from (a path typed or set from the console)."""
        if not path or self.ui is None:
            return
        keys = [entry.path for entry in self._pickerEntries]
        index = keys.index(path) + 1 if path in keys else 0
        if self.ui.modelComboBox.property("currentIndex") != index:
            self._fillingPicker = True
            try:
                self.ui.modelComboBox.setCurrentIndex(index)
            finally:
                self._fillingPicker = False
        self._pickedEntry = self._pickerEntries[index - 1] if index else None

    def _rememberLocalBundle(self, path):
        """A local bundle whose card was read is offered in the picker from now on (catalog downloads are listed
        from their catalog instead)."""
        recent = settingsList(RECENT_BUNDLES_SETTING)
        if path in recent or self.logic.isCachedBundle(path):
            return
        setSettingsList(RECENT_BUNDLES_SETTING, self.logic.rememberBundle(recent, path))
        self._pickerEntries.append(self.logic.localEntry(path))
        self._fillingPicker = True
        try:
            self.ui.modelComboBox.addItem(self._pickerEntries[-1].text)
            self.ui.modelComboBox.setItemData(len(self._pickerEntries), self._pickerEntries[-1].toolTip,
                                              qt.Qt.ToolTipRole)
        finally:
            self._fillingPicker = False

    def _inputModality(self):
        node = self._input(0) if self._parameterNode is not None else None
        return self.logic.volumeModality(node) if node is not None else ""

    def _onInputChanged(self, node):
        if self.ui.matchModalityCheckBox.isChecked() and self._inputModality() != self._pickerModality:
            self.refreshModelList()

    def onDownloadButton(self):
        self._stopOrStart(self._download)

    def _download(self):
        entry = self._pickedEntry
        if entry is None or not entry.needsDownload:
            return
        try:
            job = self.logic.pullModel(entry.listing.entry.id, entry.listing.entry.version)
        except Exception as error:  # noqa: BLE001 - every failure is shown in the panel
            self._showError(self.ui.modelStatusLabel, error)
            return
        self._startPolling(job, self.ui.downloadProgressBar, self.ui.modelStatusLabel)

    # ------------------------------------------------------------------ catalog settings
    def _showCatalogs(self):
        self.ui.catalogsListWidget.clear()
        for source in self.logic.extraCatalogs:
            self.ui.catalogsListWidget.addItem(displayText(source))

    def onAddCatalog(self):
        try:
            source = checkCatalogSource(self.ui.catalogLineEdit.property("text"))
        except Exception as error:  # noqa: BLE001 - shown beside the field
            self._showError(self.ui.catalogStatusLabel, error)
            return
        catalogs = settingsList(CATALOGS_SETTING)
        if source in catalogs:
            self._showError(self.ui.catalogStatusLabel, _("This catalog is already listed."))
            return
        self._setCatalogs([*catalogs, source])
        self.ui.catalogLineEdit.clear()
        self._showStatus(self.ui.catalogStatusLabel, _("Added. Press Refresh to read it from its server."))

    def onRemoveCatalog(self):
        row = self.ui.catalogsListWidget.property("currentRow")
        catalogs = settingsList(CATALOGS_SETTING)
        if not 0 <= row < len(catalogs):
            self._showStatus(self.ui.catalogStatusLabel, _("Select a catalog to remove."))
            return
        del catalogs[row]
        self._setCatalogs(catalogs)
        self._showStatus(self.ui.catalogStatusLabel, _("Removed."))

    def _setCatalogs(self, catalogs):
        setSettingsList(CATALOGS_SETTING, catalogs)
        self.logic.extraCatalogs = list(catalogs)
        self._showCatalogs()
        self.refreshModelList()

    def _showLabels(self, card):
        labels = self.logic.displayedLabels(card)
        self.ui.labelsTableWidget.verticalHeader().setDefaultSectionSize(20)
        self.ui.labelsTableWidget.setRowCount(len(labels))
        for row, label in enumerate(labels):
            valueItem = qt.QTableWidgetItem(str(label.value))
            valueItem.setData(qt.Qt.DecorationRole, qt.QColor(*label.color))
            self.ui.labelsTableWidget.setItem(row, 0, valueItem)
            self.ui.labelsTableWidget.setItem(row, 1, qt.QTableWidgetItem(displayText(label.name)))
            self.ui.labelsTableWidget.setItem(row, 2, qt.QTableWidgetItem(self.logic.terminologyMeaning(label)))
        self.ui.labelsTableWidget.resizeColumnsToContents()

    def _input(self, index):
        """Input channel ``index``: only a volume the selectors can list (a plain scalar volume) counts."""
        node = getattr(self._parameterNode, f"inputVolume{index}")
        return node if node is not None and node.GetClassName() == "vtkMRMLScalarVolumeNode" else None

    def _jobKind(self):
        """The kind of the running job, or None."""
        return self._job.kind if self._job is not None and self._job.running else None

    def updateGUI(self, *unused):
        """Enable/show widgets from the parameter node and the job state (never touches voxels)."""
        if not self._parameterNode:
            return
        params = self._parameterNode
        if pathText(params.bundlePath) != self._modelCardPath:
            self._showModelCard(params.bundlePath)
        card = self._modelCard
        channels = len(card.input["channels"]) if card else 1
        for index in range(3):
            visible = index < channels
            getattr(self.ui, f"inputVolumeSelector{index}").setVisible(visible)
            channelLabel = getattr(self.ui, f"inputChannelLabel{index}")
            channelLabel.setVisible(visible)
            if card and visible:
                channelLabel.setText(self.logic.channelLabelText(card, index))
        isSegmentation = card is not None and card.task == "segmentation"
        for widget in (self.ui.outputSegmentationSelector, self.ui.outputSegmentationLabel):
            widget.setVisible(params.outputType == "segmentation")
        for widget in (self.ui.outputLabelmapSelector, self.ui.outputLabelmapLabel):
            widget.setVisible(params.outputType == "labelmap")
        for widget in (self.ui.outputTypeComboBox, self.ui.probabilitiesCheckBox):
            widget.setEnabled(card is None or isSegmentation)
        self.ui.perSlicePlotCheckBox.setEnabled(card is None or not isSegmentation)
        self.ui.explainCheckBox.setEnabled(card is None or not isSegmentation)
        self.ui.showOverlayCheckBox.setEnabled(params.uncertainty or (params.explain and not isSegmentation))
        self.ui.overlapSpinBox.setEnabled(params.overrideOverlap)

        inputs = [self._input(i) for i in range(channels)]
        warnings = self.logic.inputWarnings(card, inputs) if card else []
        self.ui.inputWarningLabel.setText("\n".join(warnings))
        self.ui.inputWarningLabel.setVisible(bool(warnings))

        kind = self._jobKind()
        stopping = kind is not None and self._job.stopRequested
        self._updatePickerGUI(kind, stopping)
        ready = card is not None and all(inputs) and not self._starting
        predicting = kind in ("segment", "classify")
        self.ui.applyButton.setEnabled(((ready and kind is None) or predicting) and not stopping)
        self.ui.applyButton.setText(_("Stopping...") if predicting and stopping else
                                    _("Cancel") if predicting else _("Apply"))
        self.ui.applyButton.setToolTip(_("Stop the running model") if predicting else
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
        pairsProblem = self.logic.trainingPairsProblem(params.trainingVolumes, params.trainingSegmentations)
        haveData = pairsProblem is None if fromScene else bool(pathText(params.trainingDatasetPath))
        canTrain = haveData and bool(pathText(params.trainingOutputPath)) and not self._starting
        self.ui.trainButton.setToolTip(pairsProblem if fromScene and pairsProblem else _("Train a model and write a bundle"))
        self.ui.trainButton.setEnabled(((canTrain and kind is None) or kind == "train") and not stopping)
        self.ui.trainButton.setText(_("Stopping...") if kind == "train" and stopping else
                                    _("Stop") if kind == "train" else _("Train"))
        canEvaluate = (card is not None and bool(pathText(params.evaluationDatasetPath))
                       and bool(pathText(params.evaluationOutputPath)) and not self._starting)
        self.ui.evaluateButton.setEnabled(((canEvaluate and kind is None) or kind == "evaluate") and not stopping)
        self.ui.evaluateButton.setText(_("Stopping...") if kind == "evaluate" and stopping else
                                       _("Cancel") if kind == "evaluate" else _("Evaluate"))

    def _updatePickerGUI(self, kind, stopping):
        """The Download button (Cancel while downloading) and the modality filter, which needs a volume that
        carries its modality."""
        modality = self._inputModality()
        self.ui.matchModalityCheckBox.setEnabled(bool(modality))
        self.ui.matchModalityCheckBox.setText(
            _("Only models for the input's modality ({modality})").format(modality=displayText(modality))
            if modality else _("Only models for the input's modality (the input has none)"))
        picked = self._pickedEntry
        needsDownload = picked is not None and picked.needsDownload and not pathText(self._parameterNode.bundlePath)
        self.ui.downloadButton.setVisible(needsDownload or kind == "pull")
        self.ui.downloadButton.setEnabled(((needsDownload and kind is None and not self._starting)
                                           or kind == "pull") and not stopping)
        self.ui.downloadButton.setText(_("Stopping...") if kind == "pull" and stopping else
                                       _("Cancel") if kind == "pull" else _("Download"))
        self.ui.refreshModelsButton.setEnabled(kind != "pull")

    def _showTrainingCases(self):
        params = self._parameterNode
        volumes, segmentations = list(params.trainingVolumes), list(params.trainingSegmentations)
        rows = max(len(volumes), len(segmentations))
        self.ui.trainingCasesTableWidget.setRowCount(rows)
        for row in range(rows):
            volume = volumes[row] if row < len(volumes) else None
            segmentation = segmentations[row] if row < len(segmentations) else None
            self.ui.trainingCasesTableWidget.setItem(
                row, 0, qt.QTableWidgetItem(displayText(volume.GetName()) if volume else ""))
            self.ui.trainingCasesTableWidget.setItem(
                row, 1, qt.QTableWidgetItem(displayText(segmentation.GetName()) if segmentation else ""))

    # ------------------------------------------------------------------ actions
    def onAddTrainingCase(self):
        volume = self.ui.trainingVolumeSelector.currentNode()
        segmentation = self.ui.trainingSegmentationSelector.currentNode()
        if not volume or not segmentation:
            self._showStatus(self.ui.trainingStatusLabel, _("Select a volume and its segmentation to add a case."))
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.trainingVolumes = [*self._parameterNode.trainingVolumes, volume]
            self._parameterNode.trainingSegmentations = [*self._parameterNode.trainingSegmentations, segmentation]

    def onRemoveTrainingCase(self):
        row = self.ui.trainingCasesTableWidget.currentRow()
        if row < 0:
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            volumes = list(self._parameterNode.trainingVolumes)
            segmentations = list(self._parameterNode.trainingSegmentations)
            for nodes in (volumes, segmentations):
                if row < len(nodes):
                    del nodes[row]
            self._parameterNode.trainingVolumes = volumes
            self._parameterNode.trainingSegmentations = segmentations

    def _stopOrStart(self, start):
        """Apply/Train/Evaluate: Cancel or Stop while a run is going; otherwise ``start()`` one. The buttons stay
        disabled while it starts, so a second click queued while Qt processes events (dialogs, status updates)
        starts nothing."""
        if self._jobKind() is not None:
            self._requestStop()
            return
        if self._starting or self._job is not None:
            return
        self._starting = True
        self.updateGUI()
        try:
            start()
        finally:
            self._starting = False
            self.updateGUI()

    def onApplyButton(self):
        self._stopOrStart(self._apply)

    def _apply(self):
        if not self._ensureDependencies(self.ui.statusLabel):
            return
        params = self._parameterNode
        inputs = [self._input(i) for i in range(len(self._modelCard.input["channels"]))]
        self._showStatus(self.ui.statusLabel, _("Running the model...") if not params.runInBackground else "")
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
            self._showStatus(self.ui.statusLabel, _("Done."))

    def _runModel(self, inputs):
        params = self._parameterNode
        bundlePath = pathText(params.bundlePath)
        tta = {"on": True, "off": False}.get(params.testTimeAugmentation)  # None: the bundle's own setting
        if self._modelCard.task == "segmentation":
            return self.logic.segment(
                inputs, bundlePath, outputType=params.outputType,
                outputNode=params.outputSegmentation if params.outputType == "segmentation" else params.outputLabelmap,
                tableNode=params.outputTable, probabilities=params.createProbabilities,
                overlap=params.overlap if params.overrideOverlap else None, tta=tta,
                background=params.runInBackground, uncertainty=params.uncertainty)
        return self.logic.classify(inputs, bundlePath, tableNode=params.outputTable,
                                   plot=params.showPerSlicePlot, background=params.runInBackground,
                                   explain=params.explain, uncertainty=params.uncertainty, tta=tta)

    def onTrainButton(self):
        self._stopOrStart(self._train)

    def _train(self):
        if not self._ensureDependencies(self.ui.trainingStatusLabel):
            return
        params = self._parameterNode
        if params.trainingSource == "scene":
            data = list(zip(params.trainingVolumes, params.trainingSegmentations))  # noqa: B905 - Python 3.9 floor
            self._showStatus(self.ui.trainingStatusLabel, _("Writing the training cases next to the bundle..."))
            slicer.app.processEvents()
        else:
            data = pathText(params.trainingDatasetPath)
        modality = None if params.trainingModality == "from the volumes" else params.trainingModality
        output = pathText(params.trainingOutputPath)
        overwrite = self.logic.finishedBundleAt(output)
        if overwrite and not self._confirmReplacing(
                _("A trained model bundle is already at {path}. Train again and replace it?").format(
                    path=displayText(output)),
                _("Replace the bundle"), self.ui.trainingStatusLabel,
                _("Not started: the bundle at {path} is kept.").format(path=displayText(output))):
            return
        try:
            with slicer.util.WaitCursor():
                job = self.logic.train(data, output, task=params.trainingTask,
                                       family=params.trainingFamily, epochs=params.trainingEpochs,
                                       resume=params.resumeTraining, modality=modality, overwrite=overwrite,
                                       extraArguments=self.logic.parseTrainingOptions(params.trainingOptions),
                                       background=True)
        except Exception as error:  # noqa: BLE001 - every failure is shown in the panel
            self._showError(self.ui.trainingStatusLabel, error)
            return
        self._trainingCurves = self.logic.createTrainingCurves()
        self.logic.showTrainingCurves(self._trainingCurves[1])
        self.ui.trainingPlotWidget.setMRMLPlotViewNode(self.logic.trainingPlotViewNode())
        self._startPolling(job, self.ui.trainingProgressBar, self.ui.trainingStatusLabel)

    def onEvaluateButton(self):
        self._stopOrStart(self._evaluate)

    def _evaluate(self):
        if not self._ensureDependencies(self.ui.evaluationStatusLabel):
            return
        params = self._parameterNode
        report = pathText(params.evaluationOutputPath)
        overwrite = self.logic.evaluationAt(report)
        if overwrite and not self._confirmReplacing(
                _("{path} already holds an evaluation report. Replace it?").format(path=displayText(report)),
                _("Replace the report"), self.ui.evaluationStatusLabel,
                _("Not started: the report in {path} is kept.").format(path=displayText(report))):
            return
        try:
            job = self.logic.evaluate(pathText(params.bundlePath), pathText(params.evaluationDatasetPath),
                                      report, labelMap=params.evaluationLabelMap, overwrite=overwrite,
                                      background=True)
        except Exception as error:  # noqa: BLE001 - every failure is shown in the panel
            self._showError(self.ui.evaluationStatusLabel, error)
            return
        self._startPolling(job, self.ui.evaluationProgressBar, self.ui.evaluationStatusLabel)

    def _confirmReplacing(self, question, title, statusLabel, keptText):
        """Ask before an output is replaced; when the answer is no, say what was kept in ``statusLabel``. The
        question quotes a path, shown as plain text (a message box would otherwise render markup in it)."""
        if slicer.util.confirmOkCancelDisplay(question, windowTitle=title, textFormat=qt.Qt.PlainText):
            return True
        self._showStatus(statusLabel, keptText)
        return False

    def onInstallDependencies(self):
        try:
            missing = self.logic.installer.missing()
        except Exception as error:  # noqa: BLE001 - an unreadable requirements file is shown, not raised
            self._showError(self.ui.statusLabel, error)
            return
        if not missing:
            slicer.util.infoDisplay(_("All Python packages MedAnalysis needs are installed."))
            return
        if self._ensureDependencies(self.ui.statusLabel):
            self._showStatus(self.ui.statusLabel, _("The Python packages are installed."))

    def _ensureDependencies(self, statusLabel):
        """One consent question, then the installation, then (only if needed) one restart question.

        Returns True when everything MedAnalysis needs is installed and usable now; otherwise says why in
        ``statusLabel`` and returns False.
        """
        try:
            missing = self.logic.installer.missing()
        except Exception as error:  # noqa: BLE001
            self._showError(statusLabel, error)
            return False
        if not missing:
            return True
        text = _("MedAnalysis needs these Python packages, which are not installed yet:\n\n{packages}\n\n"
                 "pip will download them (about 600 MB for TensorFlow) and install them into Slicer's Python. "
                 "Slicer's own numpy and SimpleITK will not be changed. Install now?").format(
                     packages="\n".join(f"  \u2022 {r}" for r in missing))
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("Install Python packages"),
                                                  textFormat=qt.Qt.PlainText):
            self._showStatus(statusLabel, _("Not started: MedAnalysis needs the Python packages {packages}.").format(
                packages=", ".join(missing)))
            return False
        self._showStatus(statusLabel, _("Installing Python packages..."))
        slicer.app.processEvents()
        try:
            with slicer.util.WaitCursor():
                outcome = self.logic.installer.install(missing)
        except Exception as error:  # noqa: BLE001 - pip's own message, shown in the panel
            self._showError(statusLabel, _("Installing the Python packages failed: {error}").format(
                error=pipErrorText(error)))
            return False
        if not outcome.succeeded:
            self._showError(statusLabel, _("pip finished, but these packages are still not installed: {packages}. "
                                           "See the Python console for pip's output.").format(
                packages=", ".join(outcome.missing)))
            return False
        if outcome.restartNeeded:
            self._showStatus(statusLabel, _("Installed. Restart Slicer to use the updated packages."))
            if slicer.util.confirmYesNoDisplay(
                    _("Packages that Slicer had already loaded were updated. Restart Slicer now to use them?"),
                    windowTitle=_("Restart Slicer")):
                slicer.util.restart()
            return False
        return True

    # ------------------------------------------------------------------ background jobs
    def _startPolling(self, job, progressBar, statusLabel):
        self._job = job
        self._jobProgressBar = progressBar
        self._jobStatusLabel = statusLabel
        progressBar.setValue(0)
        progressBar.setVisible(True)
        self._showStatus(statusLabel, _("Starting..."))
        self._pollTimer.start()
        self.updateGUI()

    def onPollJob(self):
        for orphan in list(self._orphans):  # jobs of a closed scene: only wait for them to end, then clean up
            orphan.poll()
            if not orphan.running:
                orphan.discardScratch()
                self._orphans.remove(orphan)
        job = self._job
        if job is None:
            if not self._orphans:
                self._pollTimer.stop()
            return
        for message in job.poll():
            if message["type"] == "progress":
                self._jobProgressBar.setValue(int(round(100 * (message.get("fraction") or 0.0))))
                if not job.stopRequested:
                    self._jobStatusLabel.setText(self.logic.describeProgress(message))
            elif message["type"] == "metrics" and job.kind == "train" and self._trainingCurves:
                self.logic.addTrainingMetrics(*self._trainingCurves, message)
            elif message["type"] == "log" and message.get("level") == "warning":
                logging.warning(displayText(message.get("message", "")))  # Slicer's log may be a terminal
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
            if job.kind in ("train", "pull") and self._parameterNode is not None:  # offer the new model right away
                if job.kind == "pull":
                    self.refreshModelList()  # the entry is cached now
                self._modelCardPath = None  # read the card again even when the path is the same
                self._parameterNode.bundlePath = pathlib.Path(outputs["bundlePath"])
            self._showStatus(self._jobStatusLabel, self.logic.describeOutcome(job))
            self._showOutputs(outputs)
        self.updateGUI()

    def _requestStop(self):
        """Cancel/Stop: ask the job to stop and return at once; the poll timer sees it end (or kills it when it
        overruns its grace period)."""
        self._job.requestStop()
        self._showStatus(self._jobStatusLabel, _("Stopping at the next safe point..."))
        self.updateGUI()

    def _showStatus(self, label, text):
        label.setStyleSheet("")
        label.setText(text)

    def _showError(self, label, error):
        label.setStyleSheet("color: #c0392b;")
        label.setText(errorText(error))
        if not isinstance(error, (MedAnalysisError, OSError, str)):
            logging.error("MedAnalysis failed", exc_info=error)

    def _showOutputs(self, outputs):
        """Show the new nodes in the views. The output selectors are left as they are: a result is overwritten by a
        later run only when the user picks it as the output."""
        layers = {}
        if outputs.get("labelmap"):
            layers.update(label=outputs["labelmap"], labelOpacity=0.5)
        overlay = outputs.get("heatmap") or next(iter((outputs.get("uncertainty") or {}).values()), None)
        if overlay is not None and self._parameterNode is not None and self._parameterNode.showOverlay:
            layers.update(foreground=overlay, foregroundOpacity=OVERLAY_OPACITY)
        if layers:
            slicer.util.setSliceViewerLayers(**layers)
        table, chart = outputs.get("table"), outputs.get("chart")
        layoutManager = slicer.app.layoutManager()
        if (table or chart) and layoutManager is not None:
            layout = layoutManager.layout
            if table:
                layout = slicer.modules.tables.logic().GetLayoutWithTable(layout)
            if chart:
                layout = slicer.modules.plots.logic().GetLayoutWithPlot(layout)
            layoutManager.setLayout(layout)
        if table:
            selection = slicer.app.applicationLogic().GetSelectionNode()
            selection.SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()
        if chart:
            slicer.modules.plots.logic().ShowChartInLayout(chart)


# =================================================================================================== self-test
class MedAnalysisTest(ScriptedLoadableModuleTest):
    """Segments and classifies a small oblique volume with tiny bundles (``MedAnalysisSlicerLib.selftest``).

    Runs in Slicer (Reload and Test, or ctest in an extension build). Where MedAnalysis's Python packages are not
    installed (Slicer's factory build machines) it is skipped with the reason, not failed.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def skipReason(self):
        if UNSUPPORTED_REASON is not None:
            return UNSUPPORTED_REASON
        missing = PackageInstaller().missing()
        if missing:
            return ("MedAnalysis's Python packages are not installed here ({}); install them with the panel's "
                    "Advanced > Python packages button to run this test.".format(", ".join(missing)))
        return None

    def runTest(self):
        reason = self.skipReason()
        if reason is not None:
            self.delayDisplay("Skipped: " + reason)
            return
        self.setUp()
        self.test_segment_and_classify()

    def test_segment_and_classify(self):
        reason = self.skipReason()
        if reason is not None:
            self.skipTest(reason)
        from MedAnalysisSlicerLib.selftest import runSelfTest

        self.delayDisplay("Building a small oblique volume and tiny bundles")
        with tempfile.TemporaryDirectory(prefix="MedAnalysisSelfTest-") as folder:
            runSelfTest(MedAnalysisLogic(slicer.mrmlScene), slicer.mrmlScene, Path(folder),
                        lambda condition, message: self.assertTrue(condition, message))
        self.delayDisplay("Test passed")
