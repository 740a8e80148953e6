"""The scene adapters leave nothing behind: no leaked VTK objects, no temporary or orphaned nodes, saveable outputs.

Each test runs on slicer-core's real MRML scene (``slicer_scene.make_scene``) with the module logics wired.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import slicer  # noqa: E402
from slicer_scene import make_scene  # noqa: E402
from vtkmodules.vtkCommonCore import vtkWeakReference  # noqa: E402

from MedAnalysisLib import slicer_adapter as adapter  # noqa: E402
from MedAnalysisLib.volume import Volume, rotation_about_axis  # noqa: E402

LABELS = [
    {"value": 1, "name": "liver", "color": (221, 130, 101), "terminology": None},
    {"value": 2, "name": "tumor", "color": (144, 238, 144), "terminology": None},
    {"value": 3, "name": "vessel", "color": (0, 151, 206), "terminology": None},
]


def scene_nodes(scene) -> list[tuple[str, str, str]]:
    """(ID, class, name) of every node in the scene, in scene order."""
    nodes = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())]
    return [(node.GetID(), node.GetClassName(), node.GetName()) for node in nodes]


def add_reference_volume(scene, shape=(6, 9, 11)):
    """A scalar volume node with an oblique, anisotropic grid, and its grid as a Volume."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(node, np.arange(np.prod(shape), dtype=np.int16).reshape(shape))
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_about_axis("z", 90.0) @ rotation_about_axis("x", 3.0) @ np.diag([0.9, 1.2, 2.5])
    matrix[:3, 3] = [-30.5, 12.25, -7.0]
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    return node, adapter.volume_from_node(node)


def two_region_labels(grid: Volume) -> np.ndarray:
    labels = np.zeros(grid.shape, np.uint8)
    labels[1:3, 2:5, 3:7] = 1
    labels[4, 6:8, 1:4] = 2
    return labels


# ------------------------------------------------------------------------------------- owned VTK references
def test_segmentation_import_releases_the_oriented_image_it_creates(scene):
    node, grid = add_reference_volume(scene.scene)
    segmentation = adapter.segmentation_node_from_volume(scene.scene, grid.with_array(two_region_labels(grid)),
                                                         LABELS, reference_node=node)
    layer = segmentation.GetSegmentation().GetNthSegment(0).GetRepresentation(adapter.BINARY_LABELMAP)
    weak = vtkWeakReference()
    weak.Set(layer)

    # Once the segments are gone, nothing but this test's own reference may hold the shared labelmap layer: the
    # reference CreateOrientedImageDataFromVolumeNode hands to its caller has to be released.
    segmentation.GetSegmentation().RemoveAllSegments()
    assert layer.GetReferenceCount() == 1
    del layer
    gc.collect()
    assert weak.Get() is None


# ------------------------------------------------------------------------------------- segment export
def test_exporting_segments_leaves_the_scene_as_it_was(scene):
    node, grid = add_reference_volume(scene.scene)
    labels = two_region_labels(grid)
    segmentation = adapter.segmentation_node_from_volume(scene.scene, grid.with_array(labels), LABELS,
                                                         name="Liver study", reference_node=node)
    before = scene_nodes(scene.scene)
    count = scene.scene.GetNumberOfNodes()

    # Training labels use their own values; segments are matched by name, case-insensitively.
    training = [{"value": 7, "name": "TUMOR"}, {"value": 5, "name": "Liver"}, {"value": 4, "name": "spleen"}]
    for _ in range(3):
        exported = adapter.label_volume_from_segmentation(segmentation, training, node)
        assert scene.scene.GetNumberOfNodes() == count
        assert scene_nodes(scene.scene) == before
    assert not scene.scene.GetNodesByName("Liver study_ColorTable").GetNumberOfItems()

    expected = np.zeros(grid.shape, np.uint8)
    expected[labels == 1] = 5
    expected[labels == 2] = 7
    np.testing.assert_array_equal(exported.array, expected)
    assert exported.shape == grid.shape
    np.testing.assert_allclose(exported.ijk_to_ras(), adapter.ijk_to_ras_array(node), rtol=0, atol=1e-12)


def test_exported_label_values_above_255_are_kept(scene):
    node, grid = add_reference_volume(scene.scene)
    labels = two_region_labels(grid)
    segmentation = adapter.segmentation_node_from_volume(scene.scene, grid.with_array(labels), LABELS,
                                                         reference_node=node)
    exported = adapter.label_volume_from_segmentation(segmentation, [{"value": 300, "name": "liver"},
                                                                     {"value": 2, "name": "tumor"}], node)
    assert exported.array.dtype == np.uint16
    np.testing.assert_array_equal(exported.array, np.where(labels == 1, 300, labels.astype(np.uint16)))


def test_exporting_a_segmentation_without_display_node_adds_none(scene):
    node, grid = add_reference_volume(scene.scene)
    segmentation = adapter.segmentation_node_from_volume(scene.scene, grid.with_array(two_region_labels(grid)),
                                                         LABELS, reference_node=node)
    scene.scene.RemoveNode(segmentation.GetDisplayNode())
    before = scene_nodes(scene.scene)

    exported = adapter.label_volume_from_segmentation(segmentation, LABELS, node)
    assert scene_nodes(scene.scene) == before
    assert segmentation.GetDisplayNode() is None
    np.testing.assert_array_equal(exported.array, two_region_labels(grid))


def test_failed_export_leaves_the_scene_as_it_was(scene, monkeypatch):
    node, grid = add_reference_volume(scene.scene)
    segmentation = adapter.segmentation_node_from_volume(scene.scene, grid.with_array(two_region_labels(grid)),
                                                         LABELS, reference_node=node)
    before = scene_nodes(scene.scene)
    real = slicer.util.arrayFromVolume

    def failing(volume_node):
        if volume_node.GetName().startswith("__medanalysis_temporary__"):
            raise RuntimeError("reading the exported labelmap failed")
        return real(volume_node)

    monkeypatch.setattr(slicer.util, "arrayFromVolume", failing)
    with pytest.raises(RuntimeError, match="exported labelmap failed"):
        adapter.label_volume_from_segmentation(segmentation, LABELS, node)
    assert scene_nodes(scene.scene) == before


# ------------------------------------------------------------------------------------- labelmap color tables
def offered_by_save_data_dialog(node) -> bool:
    """Whether Slicer's Save Data dialog lists the node: storable, not hidden from editors, saved with the scene."""
    return node.IsA("vtkMRMLStorableNode") and not node.GetHideFromEditors() and bool(node.GetSaveWithScene())


def save_like_save_data_dialog(node, directory: Path) -> Path:
    """Write a node as the Save Data dialog does: its storage node (the default one when it has none), the default
    file format."""
    assert offered_by_save_data_dialog(node), f"the Save Data dialog would skip {node.GetName()!r}"
    if node.GetStorageNode() is None:
        node.AddDefaultStorageNode()
    storage = node.GetStorageNode()
    path = directory / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"
    storage.SetFileName(str(path))
    assert storage.WriteData(node), storage.GetClassName()
    return path


def read_into(scene, class_name: str, path: Path):
    node = scene.AddNewNodeByClass(class_name, path.stem)
    node.AddDefaultStorageNode()
    node.GetStorageNode().SetFileName(str(path))
    assert node.GetStorageNode().ReadData(node), path
    return node


def test_labelmap_color_table_is_saved_and_reloaded_with_names_and_colors(scene, tmp_path):
    node, grid = add_reference_volume(scene.scene)
    labels = two_region_labels(grid)
    labels[0, 0, 0] = 3
    labelmap = adapter.labelmap_node_from_volume(scene.scene, grid.with_array(labels), LABELS, name="Prediction",
                                                 reference_node=node)
    colors = labelmap.GetDisplayNode().GetColorNode()
    assert colors.IsA("vtkMRMLColorTableNode")

    # The Save Data dialog offers both (a hidden color table is skipped, and its names and colors are lost).
    labelmap_file = save_like_save_data_dialog(labelmap, tmp_path)
    colors_file = save_like_save_data_dialog(colors, tmp_path)
    assert colors.GetStorageNode().IsA("vtkMRMLColorTableStorageNode")

    fresh = make_scene()
    try:
        reloaded = read_into(fresh.scene, "vtkMRMLLabelMapVolumeNode", labelmap_file)
        table = read_into(fresh.scene, "vtkMRMLColorTableNode", colors_file)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(reloaded), labels)
        assert table.GetNumberOfColors() == 4
        for label in adapter.normalize_labels(LABELS):
            assert table.GetColorName(label.value) == label.name
            rgba = [0.0, 0.0, 0.0, 0.0]
            table.GetColor(label.value, rgba)
            np.testing.assert_allclose(np.round(np.array(rgba[:3]) * 255), label.color, atol=0)
            assert rgba[3] == 1.0
        rgba = [1.0, 1.0, 1.0, 1.0]
        table.GetColor(0, rgba)
        assert rgba[3] == 0.0  # background stays transparent
    finally:
        fresh.close()


def test_overwriting_a_labelmap_updates_its_color_table_instead_of_adding_one(scene):
    node, grid = add_reference_volume(scene.scene)
    labels = two_region_labels(grid)
    labelmap = adapter.labelmap_node_from_volume(scene.scene, grid.with_array(labels), LABELS, reference_node=node)
    colors = labelmap.GetDisplayNode().GetColorNode()
    before = scene_nodes(scene.scene)

    renamed = [{**label, "name": label["name"].upper()} for label in LABELS]
    again = adapter.labelmap_node_from_volume(scene.scene, grid.with_array(labels), renamed, reference_node=node,
                                              node=labelmap)
    assert again.GetID() == labelmap.GetID()
    assert scene_nodes(scene.scene) == before
    assert again.GetDisplayNode().GetColorNodeID() == colors.GetID()
    assert colors.GetColorName(2) == "TUMOR"

    # A table another labelmap also shows is left alone: the overwritten one gets its own.
    other = scene.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "other")
    other.CreateDefaultDisplayNodes()
    other.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    adapter.labelmap_node_from_volume(scene.scene, grid.with_array(labels), LABELS, reference_node=node,
                                      node=labelmap)
    assert labelmap.GetDisplayNode().GetColorNodeID() != colors.GetID()
    assert colors.GetColorName(2) == "TUMOR"


# ------------------------------------------------------------------------------------- failures leave nothing
def test_failed_outputs_leave_no_half_made_nodes(scene):
    node, grid = add_reference_volume(scene.scene)
    before = scene_nodes(scene.scene)
    # slicer.util.updateVolumeFromArray refuses 64-bit voxels, after the output node was added.
    wide = grid.with_array(two_region_labels(grid).astype(np.int64))
    with pytest.raises(RuntimeError, match="long long"):
        adapter.labelmap_node_from_volume(scene.scene, wide, LABELS, reference_node=node)
    assert scene_nodes(scene.scene) == before
    with pytest.raises(RuntimeError, match="long long"):
        adapter.scalar_volume_node_from_volume(scene.scene, wide, "probabilities", reference_node=node)
    assert scene_nodes(scene.scene) == before

    table = adapter.table_node_from_rows(scene.scene, [{"x": 1, "y": 0.5}], "curve")
    before = scene_nodes(scene.scene)
    with pytest.raises(AttributeError):
        adapter.plot_chart_from_table(scene.scene, None, "x", ["y"], title="broken", x_title="x", y_title="y")
    assert scene_nodes(scene.scene) == before
    assert table.GetScene() is not None


# ------------------------------------------------------------------------------------- plot series
def test_replacing_chart_series_removes_the_old_series_nodes(scene):
    rows = [{"epoch": e, "loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "val_dice": e / 10} for e in range(4)]
    table = adapter.table_node_from_rows(scene.scene, rows, "Training")
    chart = adapter.plot_chart_from_table(scene.scene, table, "epoch", ["loss"], title="Training",
                                          x_title="epoch", y_title="value")
    first = chart.GetNthPlotSeriesNodeID(0)
    for y_columns in (["loss", "val_loss"], ["loss", "val_loss", "val_dice"], ["loss", "val_loss", "val_dice"]):
        again = adapter.plot_chart_from_table(scene.scene, table, "epoch", y_columns, title="Training",
                                              x_title="epoch", y_title="value", chart_node=chart)
        assert again.GetID() == chart.GetID()
        assert scene.scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == len(y_columns)
        assert chart.GetNumberOfPlotSeriesNodes() == len(y_columns)
        assert [chart.GetNthPlotSeriesNode(n).GetYColumnName() for n in range(len(y_columns))] == y_columns
    assert scene.scene.GetNodeByID(first) is None


def test_replacing_chart_series_keeps_series_another_chart_shows(scene):
    rows = [{"epoch": e, "loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1)} for e in range(4)]
    table = adapter.table_node_from_rows(scene.scene, rows, "Training")
    chart = adapter.plot_chart_from_table(scene.scene, table, "epoch", ["loss", "val_loss"], title="Training",
                                          x_title="epoch", y_title="value")
    shared = chart.GetNthPlotSeriesNode(0)
    other = scene.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "user's own chart")
    other.AddAndObservePlotSeriesNodeID(shared.GetID())

    adapter.plot_chart_from_table(scene.scene, table, "epoch", ["val_loss"], title="Training", x_title="epoch",
                                  y_title="value", chart_node=chart)
    assert scene.scene.GetNodeByID(shared.GetID()) is not None
    assert other.GetNthPlotSeriesNodeID(0) == shared.GetID()
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    # The shared series plus the new one; the chart's unshared old series is gone.
    assert scene.scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 2
