"""The module's self-test scenario, shared by ``MedAnalysisTest`` (inside Slicer: Reload and Test, or ctest in an
extension build) and the pytest suite (on slicer-core's real scene).

It builds tiny bundles with untrained weights (plumbing and geometry, not accuracy), segments and classifies an
oblique, anisotropic volume placed under a study, and checks names, terminology, grid, tables, study placement and
that the input node is unchanged.
"""

from __future__ import annotations

from pathlib import Path

from MedAnalysisLib import slicer_adapter

from .logic import SceneLogic


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


def runSelfTest(logic: SceneLogic, scene, workFolder: Path, check) -> dict:
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
