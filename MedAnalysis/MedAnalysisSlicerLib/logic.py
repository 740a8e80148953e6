"""The MedAnalysis module's logic: moves data between the MRML scene and ``MedAnalysisLib``.

Plain Python with no Qt import and no dialogs: it takes the scene, the Python interpreter for background jobs and the
package installer by injection, so the same code runs in Slicer (the module's ``MedAnalysisLogic`` adds Slicer's
parameter node to it), in the Slicer Python console, in scripts, and in tests on slicer-core's real scene.

Console use::

    logic = slicer.util.getModuleLogic("MedAnalysis")
    segmentation = logic.segment(volumeNode, "/path/to/model.zip")     # returns the segmentation node
    table = logic.classify(volumeNode, "/path/to/classifier.zip")      # returns the table node
    logic.segment(volumeNode, path, uncertainty=True); logic.lastOutputs["uncertainty"]   # 0..1 map volume nodes
    logic.classify(volumeNode, path, explain=True); logic.lastOutputs["heatmap"]           # class-activation map
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib import slicer_adapter
from MedAnalysisLib.errors import InputError, MedAnalysisError
from MedAnalysisLib.sanitize import html_text
from MedAnalysisLib.worker import WorkerJob

from .installer import PackageInstaller
from .jobs import MedAnalysisJob
from .messages import displayText
from .models import ModelCatalogLogic
from .results import (
    addUncertaintyColumns,
    lighter,
    mapNode,
    mergeContributions,
    requireOnGrid,
    sidecarMapFiles,
    spreadBands,
)

try:  # Slicer's translation function where it exists; the text as it is elsewhere
    from slicer.i18n import tr as _
except ImportError:
    def _(text: str) -> str:
        return text


class SceneLogic(ModelCatalogLogic):
    """Scene <-> library glue; usable from the Python console and scripts. Never opens dialogs.

    Args:
        scene: The MRML scene the nodes live in (``slicer.mrmlScene`` in Slicer).
        python: Interpreter for background jobs (default: ``PythonSlicer`` next to Slicer, else this Python).
        installer: The :class:`PackageInstaller` that checks and installs MedAnalysis's Python packages.

    The model catalog calls (``listModels``, ``pullModel``, ``modelPath``) come from
    :class:`~MedAnalysisSlicerLib.models.ModelCatalogLogic`.
    """

    def __init__(self, scene, python: str | None = None, installer: PackageInstaller | None = None) -> None:
        if scene is None:
            raise InputError("expected an MRML scene, got None")
        self.scene = scene
        self.python = python or shutil.which("PythonSlicer") or sys.executable
        self.installer = installer if installer is not None else PackageInstaller()
        #: Nodes created by the last synchronous run or finished job: segmentation/labelmap/table/chart/...
        self.lastOutputs: dict[str, Any] = {}
        #: The user's model catalogs (URLs or paths), read after the built-in ones.
        self.extraCatalogs: list[str] = []
        #: The model cache folder; None: the library's per-user folder.
        self.modelCacheDir: str | None = None

    # ------------------------------------------------------------------ model card
    @staticmethod
    def readModelCard(bundlePath: str):
        """The bundle's validated :class:`BundleConfig` from bundle.json only (for an ensemble, its model card from
        ensemble.json and the members' bundle.json); TensorFlow is not imported.

        Raises:
            MedAnalysisError: not a bundle, or it cannot be read (an ``OSError`` is reported as such, never raised).
        """
        from MedAnalysisLib.bundle import read_bundle_config

        location = bundleLocation(bundlePath)
        try:
            return read_bundle_config(location)
        except OSError as error:
            raise InputError(f"expected a readable model bundle at {location}, got {type(error).__name__}: "
                             f"{error.strerror or error}") from error

    @staticmethod
    def modelCardHtml(card) -> str:
        """The rich-text model card: the clinical-use statement first and prominent, then name, task, family,
        inputs, expected spacing, training summary, and the full card (use, model, training data, evaluation,
        limitations, references: :func:`MedAnalysisLib.bundles.card.card_sections`).

        Every value comes from the bundle and is escaped with :func:`~MedAnalysisLib.sanitize.html_text` (markup
        shown as text, control characters as escapes); only the table around them is markup."""
        from MedAnalysisLib.bundles.card import card_sections

        sections = card_sections(card)
        clinical = next((value for heading, rows in sections for label, value in rows
                         if label == "Clinical use"), None)
        return (useStatementHtml(_("Clinical use"), clinical) + SceneLogic._summaryHtml(card)
                + sectionsHtml(sections, skip=("Clinical use",)))

    @staticmethod
    def _summaryHtml(card) -> str:
        """Name, task, inputs, spacing, validation figures and description as a small table (escaped values)."""

        def escape(value) -> str:
            return html_text(value, 200)

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
            rows.append((_("About"), html_text(card.description, 2000)))
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
            return _("Input ({modality}):").format(modality=displayText(modality))
        return f"{displayText(channels[index].get('name', index + 1))} ({displayText(modality)}):"

    @staticmethod
    def terminologyMeaning(label) -> str:
        """The coded type meaning of a label (e.g. "Liver"), or "" without terminology."""
        terminology = slicer_adapter.terminology_string(label.terminology, label.name) if label.terminology else ""
        return displayText(terminology.split("~")[2].split("^")[-1]) if terminology else ""

    def inputWarnings(self, card, volumeNodes: Sequence) -> list[str]:
        """Reasons the selected volumes may not suit the model (shown in the panel; they do not block Apply)."""
        warnings = []
        channels = card.input["channels"]
        for index, (channel, node) in enumerate(zip(channels, volumeNodes, strict=False)):
            if node is None:
                continue
            grid = slicer_adapter.node_grid(node)
            name = displayText(channel.get("name", f"channel {index + 1}"))
            expected = str(channel.get("modality", "")).upper()
            modality = slicer_adapter.volume_modality(node)
            if expected and modality and modality.upper() != expected:
                warnings.append(_("{name}: the model expects {expected}, this volume is {modality}.").format(
                    name=name, expected=displayText(expected), modality=displayText(modality)))
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
                background: bool = False, uncertainty: bool = False):
        """Segment the volume(s) with a segmentation bundle.

        Args:
            volumeNodes: The input scalar volume node, or one per model channel. Never modified.
            bundlePath: Model bundle or ensemble (folder or .zip).
            outputType: "segmentation" (segments with names, colors, terminology) or "labelmap".
            outputNode: Existing node to overwrite; ``None`` creates a new one (earlier results are kept).
            tableNode: Existing table node for per-label volumes (mm3, mL, voxels); ``None`` creates one.
            probabilities: Also create one probability volume (0-1) per foreground class.
            overlap, tta: Override the bundle's sliding-window overlap and flip averaging.
            uncertainty: Also create the per-voxel uncertainty map(s) (0..1 scalar volumes: "entropy", and
                "disagreement" with test-time augmentation or an ensemble) in ``lastOutputs["uncertainty"]``, and
                ``mean_entropy``/``mean_disagreement`` columns in the table.
            background: ``False`` runs in this process and returns the output node; ``True`` starts a
                ``medanalysis predict`` child process and returns a :class:`MedAnalysisJob` (call :meth:`finishJob`
                when it has ended, as the panel does).

        Returns:
            The segmentation (or labelmap) node, or the running job. Created nodes are also in :attr:`lastOutputs`.
        """
        if outputType not in ("segmentation", "labelmap"):
            raise InputError(f"expected outputType 'segmentation' or 'labelmap', got {outputType!r}")
        tta = _ttaChoice(tta)
        nodes = self._inputNodes(volumeNodes)
        bundlePath = bundleLocation(bundlePath)
        card = self.readModelCard(bundlePath)
        if card.task != "segmentation":
            raise InputError(f"expected a segmentation bundle, got a {card.task} bundle; use classify()")
        context = {"nodes": nodes, "card": card, "outputType": outputType, "outputNode": outputNode,
                   "tableNode": tableNode, "probabilities": probabilities, "uncertainty": bool(uncertainty)}
        if background:
            return self._startPredictJob("segment", bundlePath, context, overlap, tta)
        prediction = self._predictInProcess(bundlePath, nodes, overlap, tta, probabilities, context)
        maps = probabilityMaps(prediction.probabilities, card.labels) if prediction.probabilities is not None else {}
        self.lastOutputs = self._importSegmentation(context, prediction.label, maps,
                                                    getattr(prediction, "uncertainty", None), prediction.table)
        return self.lastOutputs[outputType]

    def classify(self, volumeNodes, bundlePath: str, *, tableNode=None, plot: bool = True,
                 background: bool = False, explain: bool = False, uncertainty: bool = False,
                 tta: bool | None = None, explainClass: int | str | None = None):
        """Classify the volume(s) with a classification bundle.

        Returns the table node (one row per slice when the model scores slices, then one whole-scan row; columns:
        the predicted label name and one probability column per class), or a :class:`MedAnalysisJob` when
        ``background`` is True. With ``plot``, a plot chart of the per-slice probabilities is created too.

        ``uncertainty`` adds the spread of the member/augmentation probabilities (``entropy``, ``spread``,
        ``disagreement`` columns; a mean +- spread band in the plot). ``explain`` adds a class-activation heatmap
        (0..1 volume on the input grid, ``lastOutputs["heatmap"]``, ready to show as the foreground layer) and, for
        CNN+RNN models, each slice's ``contribution`` to the scan score (a column and a plot series).

        ``tta`` (True/False; None: the bundle's own setting) averages over flipped slices; with ``uncertainty`` the
        flips are what the spread band measures for a single model. ``explainClass`` names the class the heatmap
        explains, by label name or value (None: the second class of a two-class model, else the predicted one), as
        ``medanalysis predict --explain-class`` does; it needs ``explain``. Both are checked before anything runs.
        """
        tta = _ttaChoice(tta)
        if explainClass is not None and not explain:
            raise InputError(f"expected explain=True with explainClass, got explainClass={displayText(explainClass)} "
                             "alone")
        nodes = self._inputNodes(volumeNodes)
        bundlePath = bundleLocation(bundlePath)
        card = self.readModelCard(bundlePath)
        if card.task != "classification":
            raise InputError(f"expected a classification bundle, got a {card.task} bundle; use segment()")
        if explain:
            from MedAnalysisLib.inference.predict import check_explain_target

            explainClass = check_explain_target(card, explainClass)  # a class of this model, before it runs
        context = {"nodes": nodes, "card": card, "tableNode": tableNode, "plot": plot,
                   "uncertainty": bool(uncertainty), "explain": bool(explain), "explainClass": explainClass}
        if background:
            return self._startPredictJob("classify", bundlePath, context, None, tta)
        prediction = self._predictInProcess(bundlePath, nodes, None, tta, False, context)
        explanation = getattr(prediction, "explanation", None)
        self.lastOutputs = self._importClassification(
            context, prediction.per_slice, prediction.scan,
            explanationHeatmap=explanation.heatmap if explanation is not None else None,
            explanationTarget=getattr(explanation, "target_name", None),
            contributions=getattr(explanation, "slice_contributions", None),
            uncertaintyMaps=getattr(prediction, "uncertainty", None))
        return self.lastOutputs["table"]

    def _predictInProcess(self, bundlePath, nodes, overlap, tta, probabilities, context=None):
        from MedAnalysisLib.inference.predict import predict

        volumes = [slicer_adapter.volume_from_node(node) for node in nodes]
        extra: dict = {key: True for key in ("uncertainty", "explain") if (context or {}).get(key)}
        if (context or {}).get("explainClass") is not None:
            extra["explain_target"] = context["explainClass"]
        return predict(bundlePath, volumes if len(volumes) > 1 else volumes[0], overlap=overlap, tta=tta,
                       return_probabilities=probabilities, **extra)

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
        for option in ("uncertainty", "explain"):
            if context.get(option):
                argv.append(f"--{option}")
        if context.get("explainClass") is not None:  # "--explain-class=<name>": a name starting "-" stays a value
            argv.append(f"--explain-class={context['explainClass']}")
        if overlap is not None:
            argv += ["--overlap", str(overlap)]
        if tta is not None:
            argv += ["--tta", "on" if tta else "off"]
        context["scratch"] = scratch
        return MedAnalysisJob(kind, WorkerJob(argv, python=self.python), context)

    def train(self, data, outputBundlePath: str, *, task: str = "segmentation", family: str = "unet3d",
              epochs: int = 50, resume: bool = True, extraArguments: Sequence[str] = (), background: bool = True,
              modality: str | None = None, overwrite: bool = False):
        """Train a model and write a bundle.

        Args:
            data: A dataset path (MSD folder, CSV manifest, DICOM folder) or a list of
                ``(volumeNode, segmentationNode)`` pairs from the scene; pairs are exported to an MSD folder next to
                the output bundle (``<bundle>-training-data``), segments matched to labels by name.
            outputBundlePath: Bundle folder or .zip to write.
            task, family, epochs: What to train (see ``medanalysis train --help``).
            resume: Continue from the checkpoint of an earlier, interrupted run of the same output.
            overwrite: Replace a finished bundle at ``outputBundlePath`` (otherwise refused, as on the command line).
            modality: For scene pairs: the volumes' modality ("CT", "MR", ...) when they do not carry one (volumes
                loaded from NIfTI or NRRD do not); it chooses the intensity normalisation.
            extraArguments: More ``medanalysis train`` options, e.g. ``["--hparam", "base_filters=8"]``.
            background: ``True`` (default) returns a :class:`MedAnalysisJob`; ``False`` blocks and returns the
                library's ``TrainResult``.
        """
        if not outputBundlePath:
            raise InputError("expected an output bundle path, got an empty path")
        if extraArguments and not background:
            raise InputError(f"expected extraArguments only with background=True (they are command-line options), got "
                             f"{list(extraArguments)}")
        extraArguments = checkTrainingOptions(extraArguments)
        datasetPath = datasetLocation(data) if isinstance(data, (str, os.PathLike)) else str(
            self.exportTrainingCases(data, Path(str(outputBundlePath).removesuffix(".zip") + "-training-data"),
                                     modality=modality))
        argv = ["train", datasetPath, "--task", task, "--model", family, "--out", str(outputBundlePath),
                "--epochs", str(int(epochs)), *extraArguments]
        if not resume:
            argv.append("--no-resume")
        if overwrite:
            argv.append("--overwrite")
        if background:
            return MedAnalysisJob("train", WorkerJob(argv, python=self.python),
                                  {"bundlePath": str(outputBundlePath)})
        from MedAnalysisLib.data.datasets import load_dataset
        from MedAnalysisLib.training import train

        return train(load_dataset(datasetPath), task=task, family=family, out=outputBundlePath, epochs=int(epochs),
                     resume=resume)

    @staticmethod
    def finishedBundleAt(path) -> bool:
        """True when ``path`` holds a finished bundle (a .zip, or a folder with bundle.json/ensemble.json)."""
        location = Path(pathText(path))
        return bool(pathText(path)) and (location.is_file() or any(
            (location / name).is_file() for name in BUNDLE_FILES))

    @staticmethod
    def evaluationAt(folder) -> bool:
        """True when ``folder`` holds an earlier evaluation report."""
        return bool(pathText(folder)) and any((Path(pathText(folder)) / name).is_file() for name in EVALUATION_FILES)

    @staticmethod
    def trainingPairsProblem(volumes: Sequence, segmentations: Sequence) -> str | None:
        """Why the panel's list of (volume, segmentation) training cases cannot be trained on, or None."""
        volumes, segmentations = list(volumes), list(segmentations)
        if not volumes and not segmentations:
            return _("Add at least one volume and its segmentation.")
        if len(volumes) != len(segmentations):
            return _("The training cases list {volumes} volumes and {segmentations} segmentations: remove the "
                     "incomplete cases.").format(volumes=len(volumes), segmentations=len(segmentations))
        lost = [str(index + 1) for index, pair in enumerate(zip(volumes, segmentations, strict=True)) if None in pair]
        if lost:
            return _("Training case {cases} lost its volume or segmentation (removed from the scene): remove it."
                     ).format(cases=", ".join(lost))
        return None

    @staticmethod
    def parseTrainingOptions(text: str) -> list[str]:
        """More ``medanalysis train`` options typed as on a command line (the panel's field), checked with the
        command's own parser; raises InputError with the parser's message when they are not valid."""
        try:
            tokens = shlex.split(text or "")
        except ValueError as error:
            raise InputError(f"expected training options as on a command line, got {text!r}: {error}") from error
        return checkTrainingOptions(tokens)

    def exportTrainingCases(self, pairs: Sequence, folder: Path, *, modality: str | None = None) -> Path:
        """Write (volume node, segmentation node) pairs as an MSD dataset folder; returns the folder.

        Labels are the union of segment names over the cases, numbered 1, 2, ... in order of first appearance; a
        segmentation without segments is a case with no foreground. The folder is a copy of the images: it stays
        beside the bundle so that training can be resumed and repeated.

        Args:
            modality: The volumes' modality when they carry none (volumes loaded from NIfTI/NRRD); when they carry
                one, it must agree.

        Raises:
            InputError: no pairs, a pair with a missing or removed node, no segment in any case, or no modality.
        """
        from MedAnalysisLib.io import write_volume
        from MedAnalysisLib.io.atomic import write_text_atomic

        pairs = list(pairs)
        if not pairs:
            raise InputError("expected at least one (volume, segmentation) training pair, got none")
        names: list[str] = []
        for index, (volume, segmentation) in enumerate(pairs):
            for node, kind in ((volume, "volume"), (segmentation, "segmentation")):
                if node is None or node.GetScene() is not self.scene:
                    raise InputError(f"expected a {kind} in the scene for training case {index + 1}, got none (was "
                                     f"it removed?)")
            seg = segmentation.GetSegmentation()
            for n in range(seg.GetNumberOfSegments()):
                name = seg.GetNthSegment(n).GetName()
                if name.lower() not in [x.lower() for x in names]:
                    names.append(name)
        if not names:
            raise InputError("expected segments to learn in at least one training segmentation, got none")
        modality = self._trainingModality([volume for volume, _ in pairs], modality)
        labels = [{"value": i + 1, "name": name} for i, name in enumerate(names)]
        (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
        training = []
        for index, (volume, segmentation) in enumerate(pairs):
            case = f"case_{index:03d}"
            write_volume(slicer_adapter.volume_from_node(volume), folder / "imagesTr" / f"{case}_0000.nii.gz")
            if segmentation.GetSegmentation().GetNumberOfSegments():
                label = slicer_adapter.label_volume_from_segmentation(segmentation, labels, volume)
            else:  # a case without findings
                grid = slicer_adapter.node_grid(volume)
                label = grid.with_array(np.zeros(grid.shape, np.uint8))
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

    @staticmethod
    def _trainingModality(volumes: Sequence, chosen: str | None) -> str:
        """The one modality of the training volumes: what they carry, else what the user chose."""

        def normal(text: str) -> str:
            text = (text or "").strip().upper()
            return "MR" if text == "MRI" else text

        carried = {normal(slicer_adapter.volume_modality(volume)) for volume in volumes} - {""}
        chosen = normal(chosen or "")
        if len(carried) > 1:
            raise InputError(f"expected training volumes of one modality, got {', '.join(sorted(carried))}")
        if carried and chosen and chosen not in carried:
            raise InputError(f"expected the chosen modality {chosen} to be the volumes' own, got {next(iter(carried))}")
        if not carried and not chosen:
            raise InputError("expected the modality of the training volumes (CT, MR, ...): they carry none (loaded "
                             "from NIfTI or NRRD files); choose it in the panel or pass modality=")
        return next(iter(carried)) if carried else chosen

    def evaluate(self, bundlePath: str, datasetPath: str, outputFolder: str, *, background: bool = True,
                 bootstrap: int = 1000, figures: bool = True, labelMap: str = "", overwrite: bool = False):
        """Evaluate a bundle on labelled data (MSD folder or CSV manifest); the summary becomes a table node.

        Writes per-case metrics (``per_case.csv``), ``summary.json`` (means with bootstrap 95% intervals) and
        figures into ``outputFolder``. Returns a :class:`MedAnalysisJob` (``medanalysis evaluate`` in a child
        process), or with ``background=False`` runs in this process and returns the table node.

        ``labelMap`` pairs bundle labels with the data's when their names differ, as ``evaluate --label-map`` does:
        ``"organ=anterior, lesion=none"`` (``none``: not scored).
        """
        from MedAnalysisLib.evaluation.labels import parse_label_map

        pairs = parse_label_map([labelMap or ""])
        if not str(datasetPath or "") or not str(outputFolder or ""):
            raise InputError(f"expected a labelled dataset and an output folder, got {datasetPath!r}, {outputFolder!r}")
        bundlePath = bundleLocation(bundlePath)
        datasetPath = datasetLocation(datasetPath)
        self.readModelCard(bundlePath)
        if background:
            argv = ["evaluate", str(bundlePath), str(datasetPath), "--out", str(outputFolder),
                    "--bootstrap", str(int(bootstrap))]
            argv += [f"--label-map={left}={right}" for left, right in pairs.items()]
            if overwrite:
                argv.append("--overwrite")
            if not figures:
                argv.append("--no-figures")
            return MedAnalysisJob("evaluate", WorkerJob(argv, python=self.python), {"outputFolder": str(outputFolder)})
        from MedAnalysisLib.evaluation.report import EvaluationOptions, evaluate_bundle

        evaluate_bundle(str(bundlePath), str(datasetPath), str(outputFolder),
                        EvaluationOptions(bootstrap=int(bootstrap), figures=figures, label_map=pairs or None))
        self.lastOutputs = self.importEvaluationSummary(outputFolder)
        return self.lastOutputs["table"]

    # ------------------------------------------------------------------ bringing results into the scene
    def _importSegmentation(self, context: dict, labelVolume, probabilityMaps: dict | None = None,
                            uncertaintyMaps: dict | None = None, libraryTable: list | None = None) -> dict:
        """Segmentation or labelmap, volume table and (when asked) one probability volume per foreground label
        (``probabilityMaps``: label value -> scalar Volume on the input grid) and the uncertainty maps
        (``uncertaintyMaps``: "entropy"/"disagreement" -> 0..1 Volume on the input grid)."""
        from MedAnalysisLib.inference.predict import label_volume_table

        card = context["card"]
        reference = context["nodes"][0]
        scene = slicer_adapter.require_scene(reference)
        baseName = f"{reference.GetName()} {card.name}"
        maps = {kind: volume for kind, volume in (uncertaintyMaps or {}).items() if volume is not None}
        if context.get("uncertainty"):
            requireOnGrid(reference, maps)
        outputs: dict[str, Any] = {}
        if context["outputType"] == "segmentation":
            outputs["segmentation"] = slicer_adapter.segmentation_node_from_volume(
                scene, labelVolume, card.labels, name=baseName, reference_node=reference, node=context["outputNode"])
        else:
            outputs["labelmap"] = slicer_adapter.labelmap_node_from_volume(
                scene, labelVolume, card.labels, name=baseName, reference_node=reference, node=context["outputNode"])
        rows = label_volume_table(labelVolume, card.labels)
        if context.get("uncertainty") and maps:
            addUncertaintyColumns(rows, labelVolume, maps, libraryTable)
            outputs["uncertainty"] = {kind: mapNode(scene, volume, f"{baseName} uncertainty ({kind})", kind, reference)
                                      for kind, volume in maps.items()}
        outputs["table"] = slicer_adapter.table_node_from_rows(
            scene, rows, f"{baseName} volumes", units=_volumeUnits(rows), reference_node=reference,
            node=context["tableNode"])
        if probabilityMaps and context.get("probabilities"):
            outputs["probabilities"] = [
                slicer_adapter.scalar_volume_node_from_volume(
                    scene, probabilityMaps[label.value], f"{baseName} P({label.name})", reference_node=reference)
                for label in card.labels if label.value != 0 and label.value in probabilityMaps]
        return outputs

    def _importClassification(self, context: dict, perSlice, scan, *, explanationHeatmap=None,
                              explanationTarget=None, contributions=None, uncertaintyMaps=None) -> dict:
        """Table (per-slice rows, whole-scan row), per-slice plot (probabilities, mean +- spread bands, slice
        contributions) and, when asked, the explanation heatmap and uncertainty map volume nodes."""
        card = context["card"]
        reference = context["nodes"][0]
        scene = slicer_adapter.require_scene(reference)
        baseName = f"{reference.GetName()} {card.name}"
        requireOnGrid(reference, {"explanation": explanationHeatmap if context.get("explain") else None,
                                  **((uncertaintyMaps or {}) if context.get("uncertainty") else {})})
        if context.get("explain"):
            perSlice = mergeContributions(perSlice, contributions)
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
        probabilityColumns = [c for c in columns if c.startswith("p_") and not c.endswith("spread")]
        if context.get("plot") and perSlice and "slice" in columns and (probabilityColumns or "contribution" in columns):
            outputs.update(self._perSlicePlot(context, perSlice, probabilityColumns, baseName))
        if context.get("explain") and explanationHeatmap is not None:
            target = f" ({explanationTarget})" if explanationTarget else ""
            outputs["heatmap"] = mapNode(scene, explanationHeatmap, f"{baseName} explanation{target}", "explanation",
                                         reference)
        maps = {kind: volume for kind, volume in (uncertaintyMaps or {}).items() if volume is not None}
        if context.get("uncertainty") and maps:
            outputs["uncertainty"] = {kind: mapNode(scene, volume, f"{baseName} uncertainty ({kind})", kind, reference)
                                      for kind, volume in maps.items()}
        return outputs

    def _perSlicePlot(self, context: dict, perSlice: list, probabilityColumns: list, baseName: str) -> dict:
        """The per-slice table and chart: one series per class, a lighter mean - spread / mean + spread pair per
        class that has a spread (uncertainty), and the slices' contribution to the scan score (CNN+RNN)."""
        card, reference = context["card"], context["nodes"][0]
        scene = slicer_adapter.require_scene(reference)
        rows = [{k: row.get(k) for k in ["slice", *probabilityColumns, *(
            k for k in ("spread", "contribution") if k in row), *(k for k in row if k.startswith("spread_"))]}
            for row in perSlice]
        bands = spreadBands(rows, probabilityColumns) if context.get("uncertainty") else {}
        series = [*probabilityColumns, *bands, *(["contribution"] if any("contribution" in r for r in rows) else [])]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        sliceTable = slicer_adapter.table_node_from_rows(scene, rows, f"{baseName} per-slice probabilities",
                                                         columns=columns, reference_node=reference)
        colors = {f"p_{label.name}": label.color for label in card.labels}
        colors.update({band: lighter(colors[column]) for band, column in bands.items() if column in colors})
        chart = slicer_adapter.plot_chart_from_table(
            scene, sliceTable, "slice", series, title=f"{baseName} per slice", x_title=_("slice index (k)"),
            y_title=_("probability") if "contribution" not in series else _("probability / contribution"),
            colors=colors, reference_node=reference)
        return {"chart": chart, "sliceTable": sliceTable}

    def finishJob(self, job: MedAnalysisJob) -> dict:
        """Bring a finished job's outputs into the scene; raises with the worker's message when it failed."""
        job.poll()
        worker = job.worker
        if worker.running:
            raise RuntimeError("expected a finished job, got one still running")
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
                self._requireNodesStillInScene(job)
                outputs = self._importPredictOutputs(job)
            elif job.kind == "evaluate":
                outputs = self.importEvaluationSummary(job.context["outputFolder"])
            elif job.kind == "pull":
                outputs = {"bundlePath": self.pulledBundlePath(worker.result)}
            else:
                outputs = {"bundlePath": job.context["bundlePath"]}
        finally:
            job.discardScratch()
        self.lastOutputs = outputs
        return outputs

    def _requireNodesStillInScene(self, job: MedAnalysisJob) -> None:
        """Inputs removed while the model ran: refuse to import; chosen outputs removed: create new ones."""
        if any(node.GetScene() is not self.scene for node in job.context["nodes"]):
            raise InputError(_("The input volume was removed from the scene while the model ran; nothing was "
                               "imported."))
        for key in ("outputNode", "tableNode"):
            node = job.context.get(key)
            if node is not None and node.GetScene() is not self.scene:
                job.context[key] = None

    def _importPredictOutputs(self, job: MedAnalysisJob) -> dict:
        from MedAnalysisLib.io import read_volume

        outputFolder = job.context["scratch"] / "output"
        record = _caseRecord(job.worker.result, outputFolder)
        files = {kind: outputFolder / name for kind, name in record.get("outputs", {}).items()}
        if job.kind == "segment":
            from MedAnalysisLib.inference.writers import probability_files
            from MedAnalysisLib.volume import require_same_geometry

            # The child read the file written from the input node: the same grid up to the decimal rounding of the
            # file header. Put the results on the input node's exact grid (after checking it is that grid).
            grid = slicer_adapter.node_grid(job.context["nodes"][0])
            onGrid = {}
            for key, path in [("label", files["label_nrrd"]), *(
                    (value, outputFolder / name) for value, name in probability_files(record).items())]:
                volume = read_volume(path, kind="label" if key == "label" else "image")
                require_same_geometry(grid, volume, what="prediction")
                onGrid[key] = grid.with_array(volume.array)
            label = onGrid.pop("label")
            return self._importSegmentation(job.context, label, onGrid, self._sidecarMaps(job, record, grid),
                                            record.get("volumes") if isinstance(record.get("volumes"), list) else None)
        tableFile = files.get("slices_json") or files.get("table_json")
        rows = json.loads(tableFile.read_text(encoding="utf-8")) if tableFile is not None else []
        perSlice = [row for row in rows if isinstance(row, dict) and "slice" in row] or None
        maps = self._sidecarMaps(job, record, slicer_adapter.node_grid(job.context["nodes"][0]))
        return self._importClassification(job.context, perSlice, record.get("scan"),
                                          explanationHeatmap=maps.pop("explanation", None),
                                          explanationTarget=(record.get("explanation") or {}).get("target_name")
                                          if isinstance(record.get("explanation"), dict) else None,
                                          contributions=(record.get("explanation") or {}).get("slice_contributions")
                                          if isinstance(record.get("explanation"), dict) else None,
                                          uncertaintyMaps=maps)

    def _sidecarMaps(self, job: MedAnalysisJob, record: dict, grid) -> dict:
        """The uncertainty/explanation maps a predict job wrote (as its sidecar lists them), read and put on the
        input node's exact grid after checking they are on that grid; only the kinds the job was asked for."""
        from MedAnalysisLib.io import read_volume
        from MedAnalysisLib.volume import require_same_geometry

        wanted = {"entropy", "disagreement"} if job.context.get("uncertainty") else set()
        if job.context.get("explain"):
            wanted.add("explanation")
        maps = {}
        for kind, path in sidecarMapFiles(record, job.context["scratch"] / "output").items():
            if kind in wanted:
                volume = read_volume(path, kind="image")
                require_same_geometry(grid, volume, what=f"{kind} map")
                maps[kind] = grid.with_array(np.asarray(volume.array, np.float32))
        return maps

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

    # ------------------------------------------------------------------ what the panel offers and shows
    def defaultInputVolume(self):
        """The first volume the input selectors list (plain scalar volumes; not labelmaps, vector, RGB, DWI or
        tensor volumes, which are subclasses), or None. Hidden nodes are skipped like the selectors skip them."""
        for index in range(self.scene.GetNumberOfNodesByClass(INPUT_VOLUME_CLASS)):
            node = self.scene.GetNthNodeByClass(index, INPUT_VOLUME_CLASS)
            if node.GetClassName() == INPUT_VOLUME_CLASS and not node.GetHideFromEditors():
                return node
        return None

    def trainingPlotViewNode(self):
        """The plot view node behind the panel's training-curve widget (one per scene).

        Its parent "layout" is a node of the module (a scripted module node, as Slicer's script repository shows
        a view outside the view layout), so the view layout does not create a second plot view for it; it ignores
        chart selection propagation, so charts shown in the main layout (a classification's per-slice plot) never
        replace the training curves. Both are set again on every call: closing the scene resets singleton nodes.
        """
        owner = self._hiddenSingleton("vtkMRMLScriptedModuleNode", "MedAnalysis panel views")
        view = self._hiddenSingleton("vtkMRMLPlotViewNode", "MedAnalysis training plot view")
        view.SetLayoutName(TRAINING_PLOT_TAG)
        view.SetDoPropagatePlotChartSelection(False)
        if view.GetParentLayoutNode() is not owner:
            view.SetAndObserveParentLayoutNodeID(owner.GetID())
        return view

    def _hiddenSingleton(self, className: str, name: str):
        """The panel's node of ``className`` in this scene (singleton tag :data:`TRAINING_PLOT_TAG`), added hidden
        from editors when missing."""
        node = self.scene.GetSingletonNode(TRAINING_PLOT_TAG, className)
        if node is None:
            node = self.scene.CreateNodeByClass(className)
            node.SetSingletonTag(TRAINING_PLOT_TAG)
            node.SetName(self.scene.GenerateUniqueName(name))
            node.SetHideFromEditors(True)
            node = self.scene.AddNode(node)
        return node

    def showTrainingCurves(self, chartNode) -> None:
        """Show ``chartNode`` in the panel's training-curve view (and nowhere else)."""
        self.trainingPlotViewNode().SetPlotChartNodeID(chartNode.GetID() if chartNode is not None else None)

    # ------------------------------------------------------------------ progress text and training curves
    @staticmethod
    def describeProgress(message: dict) -> str:
        from MedAnalysisLib.progress import format_duration

        fraction = message.get("fraction") or 0.0
        eta = message.get("eta_s")
        text = f"{displayText(message.get('stage', ''))}: {fraction:.0%}"
        if eta is not None and fraction < 1:
            text += _(", about {eta} left").format(eta=format_duration(eta))
        if message.get("message"):
            text += f" \u2014 {displayText(message['message'])}"
        return text

    @staticmethod
    def describeOutcome(job: MedAnalysisJob) -> str:
        seconds = f"{job.worker.elapsed_s:.0f} s"
        if job.kind == "train":
            return _("Training finished in {seconds}; bundle written to {path}.").format(
                seconds=seconds, path=displayText(job.context["bundlePath"]))
        if job.kind == "pull":
            return _("Downloaded and verified in {seconds}.").format(seconds=seconds)
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


def _ttaChoice(tta) -> bool | None:
    """``tta`` as predict takes it: True, False or None (the bundle's own setting); anything else is refused rather
    than read as true ("off" is a non-empty text)."""
    if tta is None or isinstance(tta, bool):
        return tta
    raise InputError(f"expected tta True, False or None (the bundle's setting), got {displayText(repr(tta))}")


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
    row.update({key: float(value) for key, value in scan.items()  # uncertainty of the scan score, when given
                if key in ("entropy", "spread", "disagreement") and isinstance(value, (int, float))
                and not isinstance(value, bool)})
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


#: The node class the input selectors list (exact class: subclasses such as labelmaps and vector volumes are hidden).
INPUT_VOLUME_CLASS = "vtkMRMLScalarVolumeNode"
#: Singleton tag of the panel's own layout node and training plot view node.
TRAINING_PLOT_TAG = "MedAnalysisTrainingCurves"
#: Files inside a bundle or dataset folder that users pick in a file dialog; the folder is what they mean.
BUNDLE_FILES = ("bundle.json", "ensemble.json")
DATASET_FILES = ("dataset.json",)


def multilineHtml(value, limit: int = 2000) -> str:
    """A value that may hold line breaks, escaped line by line and joined with ``<br>`` (at most 20 lines)."""
    return "<br>".join(html_text(line, limit) for line in str(value).splitlines()[:20]) or html_text("")


def useStatementHtml(label: str, text) -> str:
    """A use statement (the clinical use of a bundle, the intended use of a catalog entry) as a prominent block at
    the top of a card, escaped; a missing statement says the model is for research use only."""
    statement = multilineHtml(text) if text else html_text(_("not stated: research use only"))
    return f"<p style=\"color:#8e2c00;\"><b>{html_text(label)}: {statement}</b></p>"


def sectionsHtml(sections, skip: tuple[str, ...] = ()) -> str:
    """Card sections ``[(heading, [(label, value)])]`` as headed tables; rows labelled as in ``skip`` left out, and
    outside the "Use" section rows whose value is not stated (so a sparse card stays short; the Use section always
    shows every row, stated or not)."""
    from MedAnalysisLib.bundles.card import NOT_STATED

    parts = []
    for heading, rows in sections:
        shown = [(label, value) for label, value in rows
                 if label not in skip and (heading == "Use" or value != NOT_STATED)]
        if not shown:
            continue
        parts.append(f"<b>{html_text(heading, 200)}</b><br>" + "<br>".join(
            (f"{html_text(label, 200)}: " if label else "\u2003") + multilineHtml(value) for label, value in shown))
    return "".join(f"<p>{part}</p>" for part in parts)


def pathText(path) -> str:
    """A path parameter as text: "" when unset (the parameter node's default path is ``Path()``, i.e. ".")."""
    text = str(path) if path is not None else ""
    return "" if text in ("", ".") else text


def _folderWhenItsFile(path, files: tuple[str, ...], expected: str) -> str:
    """``path`` as text, or its folder when it names one of ``files`` inside that folder.

    Raises:
        InputError: the path is empty.
    """
    text = pathText(path)
    if not text:
        raise InputError(f"expected {expected}, got an empty path")
    location = Path(text)
    return str(location.parent) if location.name in files else text


def bundleLocation(path) -> str:
    """A bundle as the library takes it: the folder when ``bundle.json``/``ensemble.json`` inside it was picked."""
    return _folderWhenItsFile(path, BUNDLE_FILES, "a model bundle (folder, .zip, bundle.json or ensemble.json)")


def datasetLocation(path) -> str:
    """A dataset as every command takes it: the MSD folder when its ``dataset.json`` was picked; folders (MSD,
    DICOM) and CSV manifests as they are."""
    return _folderWhenItsFile(path, DATASET_FILES, "a dataset (MSD folder, DICOM folder or CSV manifest)")


#: Options of ``medanalysis train`` that the panel and :meth:`SceneLogic.train` set themselves.
OWN_TRAINING_OPTIONS = ("--task", "--model", "--out", "--epochs", "--no-resume", "--overwrite", "--progress", "-h",
                        "--help")
#: What an earlier evaluation leaves in its folder (``medanalysis evaluate`` refuses to replace it unasked).
EVALUATION_FILES = ("per_case.csv", "summary.json", "summary.txt")


def _namesOwnOption(name: str) -> bool:
    """True for one of :data:`OWN_TRAINING_OPTIONS` or an abbreviation argparse would expand to one."""
    return name in OWN_TRAINING_OPTIONS or (name.startswith("--") and len(name) > 2 and any(
        option.startswith(name) for option in OWN_TRAINING_OPTIONS))


def checkTrainingOptions(tokens: Sequence[str]) -> list[str]:
    """``tokens`` when ``medanalysis train``'s own parser accepts them after the options the logic sets itself.

    Raises:
        InputError: an option the logic sets itself, or one the parser refuses (with the parser's message).
    """
    tokens = [str(token) for token in tokens]
    clashes = [token for token in tokens if _namesOwnOption(token.split("=")[0])]
    if clashes:
        raise InputError(f"expected options other than task, model, output, epochs and resume (the panel's own "
                         f"fields), got {', '.join(clashes)}")
    from MedAnalysisLib.cli import build_parser

    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages):
            build_parser().parse_args(["train", "data", "--task", "segmentation", "--model", "unet3d", "--out",
                                       "bundle", *tokens])
    except SystemExit as exit_:
        errors = [line.split("error:", 1)[1].strip() for line in messages.getvalue().splitlines() if "error:" in line]
        raise InputError(f"expected valid medanalysis train options, got {' '.join(tokens)!r}"
                         + (f": {errors[-1]}" if errors else "")) from exit_
    return tokens


def probabilityMaps(probabilities, labels) -> dict:
    """``{label value: scalar Volume}`` of the foreground labels from a ``(k, j, i, n)`` probability Volume whose
    channels follow ``labels`` (the bundle's label order, as :func:`MedAnalysisLib.inference.predict.predict`
    returns it)."""
    array = probabilities.array
    if array.ndim != 4 or array.shape[-1] != len(labels):
        raise MedAnalysisError(f"expected one probability channel per label ({len(labels)}), got shape {array.shape}")
    return {int(label.value): probabilities.with_array(array[..., channel])
            for channel, label in enumerate(labels) if label.value != 0}

