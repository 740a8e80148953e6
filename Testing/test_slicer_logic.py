"""The module logic on slicer-core's real MRML scene: the self-test, training-case export, input warnings,
dependency checks. MedAnalysis.py is imported with inert placeholders for the Qt layer (see qt_placeholders.py);
nothing here is asserted through them."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qt_placeholders  # noqa: E402
from slicer_scene import make_scene  # noqa: E402

from MedAnalysisLib import slicer_adapter as adapter  # noqa: E402
from MedAnalysisLib.errors import InputError  # noqa: E402
from MedAnalysisLib.volume import Volume  # noqa: E402

MedAnalysis = qt_placeholders.import_module_file()


@pytest.fixture
def scene():
    built = make_scene()
    yield built
    built.close()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return MedAnalysis.buildTinyBundles(tmp_path_factory.mktemp("bundles"))


def check(condition, message):
    assert condition, message


def test_self_test_segments_and_classifies_on_the_real_scene(scene, tmp_path):
    logic = MedAnalysis.MedAnalysisLogic(scene.scene)
    nodes = MedAnalysis.runSelfTest(logic, scene.scene, tmp_path, check)
    sh = scene.scene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(nodes["classification"])) == nodes["study"]
    table = adapter.rows_from_table_node(nodes["table"])
    assert [row["name"] for row in table] == ["liver", "tumor"]
    assert nodes["table"].GetColumnUnitLabel("volume_mm3") == "mm3"
    assert nodes["table"].GetColumnUnitLabel("volume_ml") == "mL"


def test_labelmap_output_with_probabilities_and_reuse_of_the_chosen_node(scene, bundles):
    segmentation_bundle, _ = bundles
    logic = MedAnalysis.MedAnalysisLogic(scene.scene)
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


def test_wrong_task_and_missing_input_are_refused(scene, bundles):
    segmentation_bundle, classification_bundle = bundles
    logic = MedAnalysis.MedAnalysisLogic(scene.scene)
    node = adapter.scalar_volume_node_from_volume(scene.scene, Volume(np.zeros((4, 5, 6), np.int16)), "CT")
    with pytest.raises(InputError, match="expected a classification bundle, got a segmentation bundle"):
        logic.classify(node, str(segmentation_bundle))
    with pytest.raises(InputError, match="expected a segmentation bundle"):
        logic.segment(node, str(classification_bundle))
    with pytest.raises(InputError, match="one input volume node per model channel"):
        logic.segment(None, str(segmentation_bundle))


def test_input_warnings_name_modality_and_spacing(scene, bundles):
    segmentation_bundle, _ = bundles
    logic = MedAnalysis.MedAnalysisLogic(scene.scene)
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

    logic = MedAnalysis.MedAnalysisLogic(scene.scene)
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
    folder = logic.exportTrainingCases(pairs, tmp_path / "data")
    description = json.loads((folder / "dataset.json").read_text())
    assert description["labels"] == {"0": "background", "1": "Kidney", "2": "Cyst"}
    dataset = load_dataset(folder)
    assert len(dataset.cases) == 2 and dataset.task == "segmentation"
    label = read_volume(folder / "labelsTr" / "case_001.nii.gz", kind="label")
    assert label.array[4, 1, 1] == 2 and int((label.array == 1).sum()) == 2 * 3 * 4
    np.testing.assert_allclose(label.spacing, (0.8, 0.8, 2.0), atol=1e-6)


def test_dependency_checks_use_installed_versions():
    logic_class = MedAnalysis.MedAnalysisLogic
    assert {r.split(">=")[0] for r in logic_class.requirements()} >= {"tensorflow", "keras", "pydicom"}
    assert logic_class.missingRequirements() == []  # this environment has them all
    assert MedAnalysis._requirementSatisfied("numpy>=1.20")
    assert not MedAnalysis._requirementSatisfied("numpy>=999")
    assert not MedAnalysis._requirementSatisfied("no-such-package-medanalysis>=1")
    constraints = logic_class.constraintsFile().read_text().splitlines()
    assert f"numpy=={importlib.metadata.version('numpy')}" in constraints
    assert f"SimpleITK=={importlib.metadata.version('SimpleITK')}" in constraints
    assert "keras>=3.12" in constraints  # the shipped constraints are kept
