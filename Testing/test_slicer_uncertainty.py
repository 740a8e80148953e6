"""Uncertainty maps and explanations reach the Slicer scene through the module logic (slicer-core's real scene):
in this process and through the background ``medanalysis predict --uncertainty --explain`` job (its sidecar).

Each map is a scalar volume node on the input's exact grid (IJK-to-RAS), with a colour table node of the default
scene and a 0..1 window, under the input's study, named from the input and the model only; tables gain the mean
uncertainty per label (segmentation) or the per-slice uncertainty and contribution columns (classification), and the
per-slice plot the spread band and the contribution series. Hostile sidecars and maps off the grid add nothing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from slicer_gui.fixtures import load_module_file, slicer_gui  # noqa: F401 - pytest fixtures
from slicer_scene import make_scene, oblique_ct_volume

from MedAnalysisLib import slicer_adapter as adapter
from MedAnalysisLib.errors import GeometryError, MedAnalysisError
from MedAnalysisLib.volume import Volume

JOB_TIMEOUT_S = 240
PATIENT = "Doe^Jane"


@pytest.fixture
def scene():
    bundle = make_scene()
    try:
        yield bundle.scene
    finally:
        bundle.close()


def add_ct(scene, name: str = "CT"):
    """An oblique CT under a study whose patient item carries a name (which must never reach a node name)."""
    volume = oblique_ct_volume()
    node = adapter.scalar_volume_node_from_volume(scene, volume, name)
    sh = scene.GetSubjectHierarchyNode()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), PATIENT)
    sh.SetItemAttribute(patient, "DICOM.PatientName", PATIENT)
    study = sh.CreateStudyItem(patient, "study")
    item = sh.GetItemByDataNode(node) or sh.CreateItem(study, node)
    sh.SetItemParent(item, study)
    return node


def logic_for(scene):
    from MedAnalysisSlicerLib.logic import SceneLogic

    return SceneLogic(scene)


def run(logic, method, *args, background: bool, **kwargs) -> dict:
    result = getattr(logic, method)(*args, background=background, **kwargs)
    if background:
        assert result.wait(JOB_TIMEOUT_S) == 0, result.worker.stderr_tail
        return logic.finishJob(result)
    return logic.lastOutputs


def check_map_node(node, ct, kind: str, expected_name: str) -> None:
    import slicer

    assert node.GetClassName() == "vtkMRMLScalarVolumeNode"
    assert np.array_equal(adapter.ijk_to_ras_array(node), adapter.ijk_to_ras_array(ct))
    assert slicer.util.arrayFromVolume(node).shape == slicer.util.arrayFromVolume(ct).shape
    values = slicer.util.arrayFromVolume(node)
    assert values.dtype == np.float32 and 0.0 <= values.min() and values.max() <= 1.0
    table = slicer.vtkMRMLColorTableNode.Rainbow if kind == "explanation" else slicer.vtkMRMLColorTableNode.Iron
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == slicer.vtkMRMLColorLogic.GetColorTableNodeID(table)
    assert not display.GetAutoWindowLevel() and display.GetWindow() == 1.0 and display.GetLevel() == 0.5
    assert adapter.study_item(node) == adapter.study_item(ct) != 0
    assert node.GetName() == expected_name and PATIENT not in node.GetName()
    assert node.GetAttribute("MedAnalysis.MapKind") == kind


@pytest.mark.parametrize("background", [False, pytest.param(True, marks=pytest.mark.nightly)],
                         ids=["in-process", "background"])
def test_segmentation_uncertainty_maps_and_columns_reach_the_scene(scene, bundles, background):
    logic = logic_for(scene)
    ct = add_ct(scene)
    segmentation_bundle, _ = bundles
    card = logic.readModelCard(segmentation_bundle)
    outputs = run(logic, "segment", ct, segmentation_bundle, background=background, uncertainty=True, tta=True)
    maps = outputs["uncertainty"]
    assert set(maps) == {"entropy", "disagreement"}
    for kind, node in maps.items():
        check_map_node(node, ct, kind, f"CT {card.name} uncertainty ({kind})")
    rows = adapter.rows_from_table_node(outputs["table"])
    assert [row["name"] for row in rows] == ["liver", "tumor"]
    for row in rows:
        assert 0.0 <= row["mean_entropy"] <= 1.0 and 0.0 <= row["mean_disagreement"] <= 1.0


def test_a_finished_jobs_sidecar_maps_reach_the_scene(scene, bundles, tmp_path):
    """The background path without a child process: a predict job's output folder as the command writes it (label
    map, uncertainty maps listed in the case sidecar with the library's per-label means) is brought into the scene."""
    from types import SimpleNamespace

    from MedAnalysisLib.io import write_volume

    logic = logic_for(scene)
    ct = add_ct(scene)
    card = logic.readModelCard(bundles[0])
    grid = adapter.node_grid(ct)
    output = tmp_path / "output"
    output.mkdir()
    label = np.zeros(grid.shape, np.uint8)
    label[2:5, 3:9, 4:10] = 1
    entropy = np.full(grid.shape, 0.25, np.float32)
    write_volume(grid.with_array(label), output / "input.nrrd")
    write_volume(grid.with_array(entropy), output / "input_uncertainty.nii.gz")
    write_volume(grid.with_array(entropy * 2), output / "input_disagreement.nii.gz")
    record = {"outputs": {"label_nrrd": "input.nrrd", "uncertainty_entropy": "input_uncertainty.nii.gz",
                          "uncertainty_disagreement": "input_disagreement.nii.gz"},
              "volumes": [{"value": 1, "name": "liver", "mean_entropy": 0.125}]}
    (output / "input.json").write_text(json.dumps(record))
    context = {"nodes": [ct], "card": card, "outputType": "segmentation", "outputNode": None, "tableNode": None,
               "probabilities": False, "uncertainty": True, "scratch": tmp_path}
    job = SimpleNamespace(kind="segment", context=context, worker=SimpleNamespace(result={"done": ["input"]}))
    outputs = logic._importPredictOutputs(job)
    for kind, node in outputs["uncertainty"].items():
        check_map_node(node, ct, kind, f"CT {card.name} uncertainty ({kind})")
    rows = {row["name"]: row for row in adapter.rows_from_table_node(outputs["table"])}
    assert rows["liver"]["mean_entropy"] == pytest.approx(0.125)  # the library's own figure, as in its files
    assert rows["liver"]["mean_disagreement"] == pytest.approx(0.5)  # not given: the mean over the label's voxels
    assert np.isnan(rows["tumor"]["mean_disagreement"])  # no voxels


def test_without_uncertainty_no_map_and_no_column(scene, bundles):
    logic = logic_for(scene)
    ct = add_ct(scene)
    logic.segment(ct, bundles[0])
    assert "uncertainty" not in logic.lastOutputs
    assert "mean_entropy" not in adapter.rows_from_table_node(logic.lastOutputs["table"])[0]


@pytest.mark.parametrize("background", [False, pytest.param(True, marks=pytest.mark.nightly)],
                         ids=["in-process", "background"])
def test_classification_heatmap_and_uncertainty_columns_reach_the_scene(scene, slice_classifier, background):
    logic = logic_for(scene)
    ct = add_ct(scene)
    card = logic.readModelCard(slice_classifier)
    outputs = run(logic, "classify", ct, slice_classifier, background=background, explain=True, uncertainty=True)
    heatmap = outputs["heatmap"]
    assert heatmap.GetName().startswith(f"CT {card.name} explanation (")
    check_map_node(heatmap, ct, "explanation", heatmap.GetName())
    rows = adapter.rows_from_table_node(outputs["table"])
    assert all("entropy" in row for row in rows if row.get("scope") == "slice")
    chart = outputs["chart"]
    names = [scene.GetNodeByID(chart.GetNthPlotSeriesNodeID(n)).GetYColumnName()
             for n in range(chart.GetNumberOfPlotSeriesNodes())]
    assert names == [f"p_{label.name}" for label in card.labels]


def test_spread_bands_and_contributions_in_the_table_and_plot(scene, slice_classifier):
    """Per-slice spread (several passes) becomes a lighter mean +- spread pair in the plot; a CNN+RNN explanation's
    per-slice contributions become a column and a series."""
    logic = logic_for(scene)
    ct = add_ct(scene)
    card = logic.readModelCard(slice_classifier)
    names = [label.name for label in card.labels]
    perSlice = [{"slice": k, "position_lps": (0.0, 0.0, float(k)), f"p_{names[0]}": 0.7, f"p_{names[1]}": 0.3,
                 "predicted": names[0], "entropy": 0.5, "spread": 0.2} for k in range(3)]
    context = {"nodes": [ct], "card": card, "tableNode": None, "plot": True, "uncertainty": True, "explain": True}
    contributions = [{"slice": k, "position_lps": None, "contribution": 0.1 * k} for k in range(3)]
    outputs = logic._importClassification(context, perSlice, None, contributions=contributions)
    rows = adapter.rows_from_table_node(outputs["table"])
    assert [row["contribution"] for row in rows] == pytest.approx([0.0, 0.1, 0.2])
    assert [row["spread"] for row in rows] == pytest.approx([0.2] * 3)
    chart = outputs["chart"]
    series = [scene.GetNodeByID(chart.GetNthPlotSeriesNodeID(n)) for n in range(chart.GetNumberOfPlotSeriesNodes())]
    last = f"p_{names[1]}"
    assert [s.GetYColumnName() for s in series] == [f"p_{names[0]}", last, f"{last} - spread", f"{last} + spread",
                                                    "contribution"]
    band = adapter.rows_from_table_node(outputs["sliceTable"])
    assert [row[f"{last} - spread"] for row in band] == pytest.approx([0.1] * 3)
    assert [row[f"{last} + spread"] for row in band] == pytest.approx([0.5] * 3)


def test_a_map_off_the_input_grid_adds_nothing(scene, bundles):
    logic = logic_for(scene)
    ct = add_ct(scene)
    card = logic.readModelCard(bundles[0])
    grid = adapter.node_grid(ct)
    label = grid.with_array(np.zeros(grid.shape, np.uint8))
    context = {"nodes": [ct], "card": card, "outputType": "labelmap", "outputNode": None, "tableNode": None,
               "probabilities": False, "uncertainty": True}
    shifted = Volume(np.zeros(grid.shape, np.float32), spacing=grid.spacing, origin=tuple(
        o + 1.0 for o in grid.origin), direction=grid.direction)
    before = scene.GetNumberOfNodes()
    with pytest.raises(GeometryError, match="expected"):
        logic._importSegmentation(context, label, {}, {"entropy": grid.with_array(np.zeros(grid.shape, np.float32)),
                                                       "disagreement": shifted})
    assert scene.GetNumberOfNodes() == before


@pytest.mark.parametrize("kind", ["explanation", "entropy"])
def test_a_classification_map_off_the_input_grid_adds_nothing(scene, slice_classifier, kind):
    logic = logic_for(scene)
    ct = add_ct(scene)
    grid = adapter.node_grid(ct)
    flipped = Volume(np.zeros(grid.shape, np.float32), spacing=grid.spacing, origin=grid.origin,
                     direction=-np.asarray(grid.direction))
    context = {"nodes": [ct], "card": logic.readModelCard(slice_classifier), "tableNode": None, "plot": True,
               "uncertainty": True, "explain": True}
    rows = [{"slice": 0, "p_box": 0.5, "p_no box": 0.5}]
    before = scene.GetNumberOfNodes()
    with pytest.raises(GeometryError, match="expected"):
        logic._importClassification(context, rows, None, **(
            {"explanationHeatmap": flipped} if kind == "explanation" else {"uncertaintyMaps": {kind: flipped}}))
    assert scene.GetNumberOfNodes() == before


@pytest.mark.parametrize("name", ["../outside.nii.gz", "/tmp/outside.nii.gz", "sub/inner.nii.gz", "a\\b.nii.gz",
                                  "..", "", 7, ["x.nii.gz"]])
def test_a_sidecar_naming_a_file_elsewhere_is_refused(tmp_path, name):
    from MedAnalysisSlicerLib.results import sidecarMapFiles

    record = {"outputs": {"label_nrrd": "case.nrrd", "uncertainty_entropy": name}}
    with pytest.raises(MedAnalysisError, match="expected a file name in the prediction's sidecar for "
                                               "uncertainty_entropy, got "):
        sidecarMapFiles(record, tmp_path)


def test_sidecar_maps_are_found_by_their_keys(tmp_path):
    from MedAnalysisSlicerLib.results import sidecarMapFiles

    record = json.loads(json.dumps({"outputs": {
        "uncertainty_entropy": "c_uncertainty.nii.gz", "uncertainty_disagreement": "c_disagreement.nii.gz",
        "explanation": "c_explanation.nii.gz", "probability_1": "c_p1.nii.gz"}}))
    assert sidecarMapFiles(record, tmp_path) == {"entropy": tmp_path / "c_uncertainty.nii.gz",
                                                 "disagreement": tmp_path / "c_disagreement.nii.gz",
                                                 "explanation": tmp_path / "c_explanation.nii.gz"}
    assert sidecarMapFiles({"outputs": "not a mapping"}, tmp_path) == {}


@pytest.mark.parametrize("show", [True, False])
def test_the_panel_overlays_a_new_heatmap_when_asked(slicer_gui, load_module_file, show):  # noqa: F811
    module = load_module_file()
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    ct = add_ct(slicer_gui.scene)
    heatmap = adapter.scalar_volume_node_from_volume(slicer_gui.scene, adapter.node_grid(ct).with_array(
        np.zeros(adapter.node_grid(ct).shape, np.float32)), "map")
    widget._parameterNode.showOverlay = show
    widget._showOutputs({"heatmap": heatmap})
    layers = [arguments for name, arguments in slicer_gui.calls if name == "setSliceViewerLayers"]
    if show:
        assert layers == [{"foreground": heatmap, "foregroundOpacity": module.OVERLAY_OPACITY}]
    else:
        assert layers == []


def chart_series(scene, chart) -> list[str]:
    return [scene.GetNodeByID(chart.GetNthPlotSeriesNodeID(n)).GetYColumnName()
            for n in range(chart.GetNumberOfPlotSeriesNodes())]


@pytest.mark.parametrize("background", [False, pytest.param(True, marks=pytest.mark.nightly)],
                         ids=["in-process", "background"])
def test_classify_chooses_tta_and_the_explained_class(scene, slice_classifier, background):
    """``tta=True`` gives a single classifier the flips whose spread the plot shows as a band (``tta=False``: one
    pass, no band); ``explainClass`` picks the class the heatmap explains, by name or by value."""
    logic = logic_for(scene)
    ct = add_ct(scene)
    names = [label.name for label in logic.readModelCard(slice_classifier).labels]
    last = f"p_{names[-1]}"
    flipped = run(logic, "classify", ct, slice_classifier, background=background, uncertainty=True, tta=True,
                  explain=True, explainClass=names[0])
    assert f"{last} - spread" in chart_series(scene, flipped["chart"])
    assert flipped["heatmap"].GetName().endswith(f"explanation ({names[0]})")
    single = run(logic, "classify", ct, slice_classifier, background=background, uncertainty=True, tta=False,
                 explain=True, explainClass=1)
    assert f"{last} - spread" not in chart_series(scene, single["chart"])
    assert single["heatmap"].GetName().endswith(f"explanation ({names[1]})")


@pytest.mark.parametrize(("options", "message"), [
    ({"explain": True, "explainClass": "no-such-class"}, "expected a class to explain among"),
    ({"explain": True, "explainClass": 7}, "got '7'"),
    ({"explain": True, "explainClass": True}, "got 'True'"),
    ({"explainClass": 0}, "expected explain=True with explainClass, got explainClass=0 alone"),
    ({"tta": "off"}, "expected tta True, False or None (the bundle's setting), got 'off'"),
    ({"tta": 1}, "expected tta True, False or None"),
], ids=["unknown-name", "unknown-value", "bool", "without-explain", "text-tta", "int-tta"])
@pytest.mark.parametrize("background", [False, True], ids=["in-process", "background"])
def test_bad_tta_or_explained_class_is_refused_before_anything_runs(scene, slice_classifier, options, message,
                                                                     background):
    from MedAnalysisLib.errors import InputError

    logic = logic_for(scene)
    ct = add_ct(scene)
    before = scene.GetNumberOfNodes()
    with pytest.raises(InputError) as caught:
        logic.classify(ct, slice_classifier, background=background, **options)
    assert message in str(caught.value)
    assert scene.GetNumberOfNodes() == before


def test_segment_refuses_a_tta_that_is_not_a_bool(scene, bundles):
    from MedAnalysisLib.errors import InputError

    logic = logic_for(scene)
    ct = add_ct(scene)
    for value in ("on", 0, "False"):
        with pytest.raises(InputError, match="expected tta True, False or None"):
            logic.segment(ct, bundles[0], tta=value)


def test_background_classify_passes_tta_and_the_explained_class_to_the_real_parser(scene, slice_classifier):
    from MedAnalysisLib.cli import build_parser

    logic = logic_for(scene)
    ct = add_ct(scene)
    names = [label.name for label in logic.readModelCard(slice_classifier).labels]
    parser = build_parser()
    cases = [({"tta": True, "explain": True, "explainClass": "1"}, ("on", names[1])),
             ({"tta": False, "explain": True, "explainClass": names[0]}, ("off", names[0])),
             ({}, (None, None))]
    for options, (tta, explained) in cases:
        job = logic.classify(ct, slice_classifier, background=True, **options)
        job.cancel(grace_s=0.0)  # only the command line matters here
        args = parser.parse_args(job.worker.argv[3:])
        assert (args.tta, args.explain_class) == (tta, explained)
        assert args.explain == bool(options.get("explain"))


def test_the_panel_warns_of_a_modality_mismatch_alike_with_and_without_explain(slicer_gui, load_module_file,  # noqa: F811
                                                                              slice_classifier):
    """A CT volume for an MR classifier: the panel names the mismatch under the inputs whether Explain is ticked or
    not (the library's ``explain`` has no modality check of its own, and the background job's NRRD carries none);
    the warning does not block Apply, as for prediction."""
    module = load_module_file()
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    params = widget._parameterNode
    ct = add_ct(slicer_gui.scene)
    ct.SetAttribute("DICOM.Modality", "CT")
    params.bundlePath = slice_classifier
    params.inputVolume0 = ct
    expected = str(widget.logic.readModelCard(str(slice_classifier)).input["channels"][0]["modality"]).upper()
    assert expected == "MR"
    shown = {}
    for explain in (False, True):
        params.explain = explain
        widget.updateGUI()
        shown[explain] = widget.ui.inputWarningLabel.text()
        assert widget.ui.inputWarningLabel.isVisibleTo(widget.parent)
        assert widget.ui.applyButton.isEnabled() and widget.ui.explainCheckBox.isEnabled()
    assert shown[True] == shown[False]
    assert "the model expects MR, this volume is CT." in shown[True], shown


@pytest.mark.parametrize(("choice", "tta"), [("bundle default", None), ("on", True), ("off", False)])
def test_the_panels_tta_choice_reaches_classify(slicer_gui, load_module_file, slice_classifier, choice, tta):  # noqa: F811
    """The Test-time augmentation choice (advanced section) applies to classifiers too, so Uncertainty can show a
    spread band for a single model."""
    module = load_module_file()
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    params = widget._parameterNode
    params.bundlePath = slice_classifier
    params.inputVolume0 = add_ct(slicer_gui.scene)
    params.testTimeAugmentation = choice
    params.uncertainty = True
    widget.updateGUI()
    calls = []
    widget.logic.classify = lambda *args, **kwargs: calls.append(kwargs)
    widget._runModel([params.inputVolume0])
    assert calls[0]["tta"] is tta and calls[0]["uncertainty"] is True
