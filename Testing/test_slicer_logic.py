"""The module's scene logic (``MedAnalysisSlicerLib``, plain Python) on slicer-core's real MRML scene: the self-test,
training-case export, input warnings, command lines of background jobs, evaluation tables, training curves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


from MedAnalysisLib import slicer_adapter as adapter  # noqa: E402
from MedAnalysisLib.errors import InputError, MedAnalysisError  # noqa: E402
from MedAnalysisLib.volume import Volume  # noqa: E402
from MedAnalysisSlicerLib.logic import SceneLogic, pathText  # noqa: E402
from MedAnalysisSlicerLib.selftest import runSelfTest  # noqa: E402


def ct_with_liver(scene):
    """A small CT node and a segmentation with one "liver" segment on its grid."""
    node = adapter.scalar_volume_node_from_volume(scene, Volume(np.zeros((6, 8, 9), np.int16)), "CT")
    labels = np.zeros((6, 8, 9), np.uint8)
    labels[2:4, 2:5, 2:6] = 1
    segmentation = adapter.segmentation_node_from_volume(
        scene, adapter.volume_from_node(node).with_array(labels), [{"value": 1, "name": "liver"}],
        reference_node=node)
    return node, segmentation


def check(condition, message):
    assert condition, message


def test_self_test_segments_and_classifies_on_the_real_scene(scene, tmp_path):
    logic = SceneLogic(scene.scene)
    nodes = runSelfTest(logic, scene.scene, tmp_path, check)
    sh = scene.scene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(nodes["classification"])) == nodes["study"]
    table = adapter.rows_from_table_node(nodes["table"])
    assert [row["name"] for row in table] == ["liver", "tumor"]
    assert nodes["table"].GetColumnUnitLabel("volume_mm3") == "mm3"
    assert nodes["table"].GetColumnUnitLabel("volume_ml") == "mL"


def test_labelmap_output_with_probabilities_and_reuse_of_the_chosen_node(scene, bundles):
    segmentation_bundle, _ = bundles
    logic = SceneLogic(scene.scene)
    rng = np.random.default_rng(1)
    volume = Volume(rng.normal(0, 50, (10, 16, 18)).astype(np.float32), spacing=(1.2, 0.9, 3.0))
    node = adapter.scalar_volume_node_from_volume(scene.scene, volume, "MR")
    labelmap = logic.segment(node, str(segmentation_bundle), outputType="labelmap", probabilities=True)
    assert labelmap.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(adapter.ijk_to_ras_array(labelmap), adapter.ijk_to_ras_array(node))
    colors = labelmap.GetDisplayNode().GetColorNode()
    assert [colors.GetColorName(v) for v in (1, 2)] == ["liver", "tumor"]
    probabilities = logic.lastOutputs["probabilities"]
    assert [p.GetName().split("P(")[1] for p in probabilities] == ["liver)", "tumor)"]
    arrays = [adapter.volume_from_node(p).array for p in probabilities]
    assert all(a.min() >= 0 and a.max() <= 1 for a in arrays)

    count = scene.scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode")
    again = logic.segment(node, str(segmentation_bundle), outputType="labelmap", outputNode=labelmap)
    assert again is labelmap
    assert scene.scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == count


def test_an_ensemble_bundle_segments_like_the_library_predicts_it(scene, bundles, tmp_path):
    """Two members of other weights (an ensemble refuses one bundle twice): the panel's logic gives the library's
    ensemble prediction, on the node's grid."""
    import keras

    from MedAnalysisLib.bundles import load_bundle, make_ensemble, save_bundle
    from MedAnalysisLib.inference.predict import predict
    from MedAnalysisLib.models import build_model

    segmentation_bundle, _ = bundles
    first = load_bundle(segmentation_bundle)
    keras.utils.set_random_seed(1)
    second = save_bundle(tmp_path / "second-member", build_model("unet3d", **first.config.hparams), first.config)
    first.cleanup()
    ensemble = make_ensemble([segmentation_bundle, second], tmp_path / "organ-ensemble", name="organ ensemble")
    logic = SceneLogic(scene.scene)
    card = logic.readModelCard(str(ensemble))
    assert card.name == "organ ensemble" and "organ ensemble" in logic.modelCardHtml(card)
    assert [label.name for label in logic.displayedLabels(card)] == ["liver", "tumor"]
    volume = Volume(np.random.default_rng(2).normal(0, 50, (10, 16, 18)).astype(np.float32), spacing=(1.2, 0.9, 3.0))
    node = adapter.scalar_volume_node_from_volume(scene.scene, volume, "CT")
    expected = predict(str(ensemble), adapter.volume_from_node(node)).label.array
    combined = logic.segment(node, str(ensemble), outputType="labelmap")
    np.testing.assert_array_equal(adapter.volume_from_node(combined).array, expected)
    np.testing.assert_array_equal(adapter.ijk_to_ras_array(combined), adapter.ijk_to_ras_array(node))


def test_wrong_task_and_missing_input_are_refused(scene, bundles):
    segmentation_bundle, classification_bundle = bundles
    logic = SceneLogic(scene.scene)
    node = adapter.scalar_volume_node_from_volume(scene.scene, Volume(np.zeros((4, 5, 6), np.int16)), "CT")
    with pytest.raises(InputError, match="expected a classification bundle, got a segmentation bundle"):
        logic.classify(node, str(segmentation_bundle))
    with pytest.raises(InputError, match="expected a segmentation bundle"):
        logic.segment(node, str(classification_bundle))
    with pytest.raises(InputError, match="one input volume node per model channel"):
        logic.segment(None, str(segmentation_bundle))


def test_input_warnings_name_modality_and_spacing(scene, bundles):
    segmentation_bundle, _ = bundles
    logic = SceneLogic(scene.scene)
    card = logic.readModelCard(str(segmentation_bundle)).replace(
        plan=logic.readModelCard(str(segmentation_bundle)).plan.replace(target_spacing=(1.0, 1.0, 1.0)))
    node = adapter.scalar_volume_node_from_volume(
        scene.scene, Volume(np.zeros((4, 5, 6), np.int16), spacing=(1.0, 1.0, 5.0)), "MR")
    node.SetAttribute("DICOM.Modality", "MR")
    warnings = logic.inputWarnings(card, [node])
    assert any("expects CT, this volume is MR" in w for w in warnings), warnings
    assert any("spacing 1 x 1 x 5 mm is far from the model's 1 x 1 x 1 mm" in w for w in warnings), warnings
    node.SetAttribute("DICOM.Modality", "CT")
    node.SetSpacing(1.0, 1.0, 1.5)
    assert logic.inputWarnings(card, [node]) == []


def test_training_cases_from_the_scene_become_a_dataset_the_library_reads(scene, tmp_path):
    from MedAnalysisLib.data.datasets import load_dataset
    from MedAnalysisLib.io import read_volume

    logic = SceneLogic(scene.scene)
    pairs = []
    for case in range(2):
        volume = Volume(np.full((6, 8, 9), case, np.int16), spacing=(0.8, 0.8, 2.0))
        node = adapter.scalar_volume_node_from_volume(scene.scene, volume, f"case {case}")
        labels = np.zeros(volume.shape, np.uint8)
        labels[1:3, 2:5, 2:6] = 1
        labels[4, 1, 1] = 2 if case else 1
        names = [{"value": 1, "name": "Kidney"}, {"value": 2, "name": "Cyst"}]
        segmentation = adapter.segmentation_node_from_volume(scene.scene, volume.with_array(labels), names,
                                                             reference_node=node)
        pairs.append((node, segmentation))
    folder = logic.exportTrainingCases(pairs, tmp_path / "data", modality="CT")
    description = json.loads((folder / "dataset.json").read_text())
    assert description["labels"] == {"0": "background", "1": "Kidney", "2": "Cyst"}
    dataset = load_dataset(folder)
    assert len(dataset.cases) == 2 and dataset.task == "segmentation"
    label = read_volume(folder / "labelsTr" / "case_001.nii.gz", kind="label")
    assert label.array[4, 1, 1] == 2 and int((label.array == 1).sum()) == 2 * 3 * 4
    np.testing.assert_allclose(label.spacing, (0.8, 0.8, 2.0), atol=1e-6)


def test_background_command_lines_parse_with_the_real_cli(scene, bundles, tmp_path):
    """The argv the logic builds for predict/train/evaluate is accepted by the real ``medanalysis`` parser."""
    from MedAnalysisLib.cli import build_parser

    segmentation_bundle, _ = bundles
    logic = SceneLogic(scene.scene)
    node, segmentation = ct_with_liver(scene.scene)
    parser = build_parser()
    jobs = [
        logic.segment(node, str(segmentation_bundle), probabilities=True, overlap=0.25, tta=True, background=True),
        logic.train([(node, segmentation)], str(tmp_path / "model.zip"), family="unet3d", epochs=2, resume=False,
                    extraArguments=["--hparam", "base_filters=4"], modality="CT"),
        logic.evaluate(str(segmentation_bundle), str(tmp_path / "model-training-data"), str(tmp_path / "report"),
                       bootstrap=10, figures=False, labelMap="tumor=none"),
    ]
    second = adapter.scalar_volume_node_from_volume(scene.scene, Volume(np.ones((6, 8, 9), np.int16)), "T2")
    two_channels = logic.segment([node, second], str(segmentation_bundle), background=True)
    jobs.append(two_channels)
    for job in jobs:
        job.cancel(grace_s=0.0)  # only the command line matters here
        argv = job.worker.argv[3:]  # after "python -m MedAnalysisLib"
        args = parser.parse_args(argv)
        assert args.progress == "jsonl" and args.command == argv[0]
    # Several channels travel as a one-case CSV manifest that the library's dataset reader understands.
    from MedAnalysisLib.data.datasets import load_dataset
    from MedAnalysisLib.errors import CancelledError

    manifest = load_dataset(parser.parse_args(two_channels.worker.argv[3:]).inputs[0])
    assert [case.case_id for case in manifest.cases] == ["input"] and len(manifest.cases[0].images) == 2
    for job in (jobs[0], two_channels):
        with pytest.raises(CancelledError):
            logic.finishJob(job)
        assert not job.context["scratch"].exists()
    predict_args = parser.parse_args(jobs[0].worker.argv[3:])
    assert predict_args.probabilities and predict_args.overlap == 0.25 and predict_args.tta == "on"
    train_args = parser.parse_args(jobs[1].worker.argv[3:])
    assert (train_args.task, train_args.model, train_args.epochs, train_args.no_resume) == (
        "segmentation", "unet3d", 2, True)
    assert train_args.data == str(tmp_path / "model-training-data")
    assert parser.parse_args(jobs[2].worker.argv[3:]).label_map == ["tumor=none"]
    assert (tmp_path / "model-training-data" / "dataset.json").is_file()


def test_evaluation_in_process_becomes_a_metrics_table(scene, bundles, tmp_path):
    segmentation_bundle, _ = bundles
    logic = SceneLogic(scene.scene)
    pairs = []
    for case in range(2):
        volume = Volume(np.random.default_rng(case).normal(0, 30, (8, 16, 16)).astype(np.int16))
        node = adapter.scalar_volume_node_from_volume(scene.scene, volume, f"case {case}")
        labels = np.zeros(volume.shape, np.uint8)
        labels[2:6, 4:12, 4:12] = 1
        pairs.append((node, adapter.segmentation_node_from_volume(
            scene.scene, volume.with_array(labels), [{"value": 1, "name": "liver"}], reference_node=node)))
    data = logic.exportTrainingCases(pairs, tmp_path / "data", modality="CT")
    table = logic.evaluate(str(segmentation_bundle), str(data), str(tmp_path / "report"), background=False,
                           bootstrap=20, figures=False, labelMap="tumor=none")  # the data has no tumour label
    rows = adapter.rows_from_table_node(table)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert {row["metric"] for row in rows} == set(summary["metrics"])
    dice = next(row for row in rows if row["metric"].startswith("dice_"))
    assert dice["mean"] == pytest.approx(summary["metrics"][dice["metric"]]["mean"])
    assert 0.0 <= dice["mean"] <= 1.0


def test_training_curves_grow_one_row_per_epoch_with_a_series_per_metric(scene):
    logic = SceneLogic(scene.scene)
    table, chart = logic.createTrainingCurves()
    logic.addTrainingMetrics(table, chart, {"type": "metrics", "epoch": 1, "metrics": {"loss": 1.5}})
    logic.addTrainingMetrics(table, chart, {"type": "metrics", "epoch": 2,
                                            "metrics": {"loss": 1.1, "val_dice": 0.4, "note": "x"}})
    rows = adapter.rows_from_table_node(table)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[1]["loss"] == pytest.approx(1.1) and rows[1]["val_dice"] == pytest.approx(0.4)
    assert np.isnan(rows[0]["val_dice"])
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    assert {chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in range(2)} == {"loss", "val_dice"}


def test_progress_text_shows_stage_percent_and_eta():
    describe = SceneLogic.describeProgress
    text = describe({"type": "progress", "stage": "windows", "fraction": 0.25, "eta_s": 75.0, "message": "case 1"})
    assert text == "windows: 25%, about 1m15s left \u2014 case 1"
    assert describe({"type": "progress", "stage": "cases", "fraction": 1.0, "eta_s": 0.0}) == "cases: 100%"


def test_unset_path_parameters_read_as_empty():
    import pathlib

    assert pathText(pathlib.Path()) == ""  # the parameter node's default path
    assert pathText(None) == ""
    assert pathText(pathlib.Path("/models/liver.zip")) == "/models/liver.zip"


def test_exporting_training_cases_three_times_leaves_the_scene_unchanged(scene, tmp_path):
    node, segmentation = ct_with_liver(scene.scene)
    logic = SceneLogic(scene.scene)
    ids = {scene.scene.GetNthNode(i).GetID() for i in range(scene.scene.GetNumberOfNodes())}
    for attempt in range(3):
        logic.exportTrainingCases([(node, segmentation)], tmp_path / f"data{attempt}", modality="CT")
        assert {scene.scene.GetNthNode(i).GetID() for i in range(scene.scene.GetNumberOfNodes())} == ids


def test_the_default_input_is_a_volume_the_selectors_list(scene):
    """Labelmaps, vector/RGB, DWI and hidden volumes are subclasses or hidden: the selectors (exact class
    vtkMRMLScalarVolumeNode, hidden nodes skipped) never list them, so the panel never picks them."""
    logic = SceneLogic(scene.scene)
    assert logic.defaultInputVolume() is None
    for class_name in ("vtkMRMLLabelMapVolumeNode", "vtkMRMLVectorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode"):
        scene.scene.AddNewNodeByClass(class_name, class_name)
    hidden = scene.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "hidden")
    hidden.SetHideFromEditors(True)
    assert logic.defaultInputVolume() is None
    ct = scene.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    assert logic.defaultInputVolume() is ct


def test_the_ui_selectors_list_exactly_what_the_default_pick_allows():
    import xml.etree.ElementTree as ET

    from MedAnalysisSlicerLib.logic import INPUT_VOLUME_CLASS

    root = ET.parse(Path(__file__).resolve().parents[1] / "MedAnalysis" / "Resources" / "UI" / "MedAnalysis.ui")
    for name in ("inputVolumeSelector0", "inputVolumeSelector1", "inputVolumeSelector2"):
        widget = root.find(f".//widget[@name='{name}']")
        properties = {p.get("name"): p for p in widget.findall("property")}
        assert [s.text for s in properties["nodeTypes"].iter("string")] == [INPUT_VOLUME_CLASS]
        assert properties["showChildNodeTypes"].find("bool").text == "false"
        assert "showHidden" not in properties


def test_training_curves_view_is_not_part_of_the_main_layout(scene):
    """The panel's plot view has its own layout node (so the view layout makes no second plot widget for it) and
    ignores chart propagation (so a classification's chart shown in the layout leaves the curves alone)."""
    logic = SceneLogic(scene.scene)
    table, curves = logic.createTrainingCurves()
    logic.showTrainingCurves(curves)
    view = logic.trainingPlotViewNode()
    assert logic.trainingPlotViewNode() is view  # one per scene
    owner = view.GetParentLayoutNode()  # the panel's own node, not the view layout's
    assert owner is not None and owner.IsA("vtkMRMLScriptedModuleNode")
    assert not view.GetDoPropagatePlotChartSelection()
    assert view.GetPlotChartNodeID() == curves.GetID()

    main_view = scene.scene.AddNewNodeByClass("vtkMRMLPlotViewNode")  # a plot view of the main layout
    other = scene.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "per-slice probabilities")
    scene.plots_logic.ShowChartInLayout(other)
    assert main_view.GetPlotChartNodeID() == other.GetID()
    assert view.GetPlotChartNodeID() == curves.GetID()


def test_picked_bundle_and_dataset_files_mean_their_folders(scene, bundles, tmp_path):
    from MedAnalysisSlicerLib.logic import bundleLocation, datasetLocation

    segmentation_bundle, _ = bundles
    assert bundleLocation(Path(segmentation_bundle) / "bundle.json") == str(segmentation_bundle)
    assert bundleLocation("/models/liver.zip") == "/models/liver.zip"
    assert datasetLocation("/data/Task04/dataset.json") == "/data/Task04"
    assert datasetLocation("/data/cases.csv") == "/data/cases.csv"
    for location in (bundleLocation, datasetLocation):
        with pytest.raises(InputError, match="empty path"):
            location(Path())
    card = SceneLogic(scene.scene).readModelCard(str(Path(segmentation_bundle) / "bundle.json"))
    assert card.task == "segmentation"


@pytest.mark.parametrize("path", ["x" * 5000, "/proc/self/mem/bundle.zip", "/dev/null"])
def test_unreadable_bundle_paths_are_input_errors_not_os_errors(scene, path):
    with pytest.raises(MedAnalysisError):
        SceneLogic(scene.scene).readModelCard(path)


def test_training_options_are_checked_by_the_command_parser_before_anything_starts(scene, tmp_path):
    logic = SceneLogic(scene.scene)
    assert logic.parseTrainingOptions(" --hparam filters=[4,8]  --steps-per-epoch 2 ") == [
        "--hparam", "filters=[4,8]", "--steps-per-epoch", "2"]
    assert logic.parseTrainingOptions("") == []
    for text, message in [("--bogus 1", "unrecognized arguments: --bogus"), ("stray", "unrecognized arguments"),
                          ("--batch-size x", "invalid int value"), ('"unclosed', "No closing quotation"),
                          ("--epochs 3", "panel's own fields"), ("--epo 3", "panel's own fields"),
                          ("--out=/tmp/x", "panel's own fields")]:
        with pytest.raises(InputError, match=message):
            logic.parseTrainingOptions(text)
    with pytest.raises(InputError, match="unrecognized"):
        logic.train(str(tmp_path), str(tmp_path / "model.zip"), extraArguments=["--bogus"])
    assert not (tmp_path / "model.zip").exists()
