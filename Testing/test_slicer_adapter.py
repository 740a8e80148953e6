"""Scene adapters on slicer-core's real MRML scene: exact geometry, segments, tables, subject hierarchy."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402

from MedAnalysisLib import slicer_adapter as adapter  # noqa: E402
from MedAnalysisLib.errors import GeometryError, InputError  # noqa: E402
from MedAnalysisLib.volume import LPS_TO_RAS, Volume, rotation_about_axis  # noqa: E402

LABELS = [
    {"value": 0, "name": "background", "color": (0, 0, 0), "terminology": None},
    {"value": 1, "name": "liver", "color": (221, 130, 101),
     "terminology": {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
                     "type": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"}}},
    {"value": 2, "name": "tumor", "color": (144, 238, 144),
     "terminology": {"category": "SCT^49755003^Morphologically Altered Structure",
                     "type": "SCT^108369006^Neoplasm",
                     "anatomic_region": "SCT^10200004^Liver"}},
    {"value": 3, "name": "vessel", "color": (0, 151, 206), "terminology": None},
]


def oblique_ras_matrix() -> np.ndarray:
    """An oblique, anisotropic IJK-to-RAS matrix written directly in RAS (not through Volume)."""
    rotation = rotation_about_axis("z", 27.0) @ rotation_about_axis("y", -12.0) @ rotation_about_axis("x", 8.0)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([0.74, 1.31, 3.2])
    matrix[:3, 3] = [-101.5, 37.25, -12.125]
    return matrix


def add_input_volume(scene, shape=(9, 12, 14)):
    rng = np.random.default_rng(3)
    voxels = rng.integers(-1000, 1500, size=shape).astype(np.int16)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(node, voxels)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(oblique_ras_matrix()))
    return node, voxels


def test_volume_node_to_volume_has_exact_lps_geometry(scene):
    node, voxels = add_input_volume(scene.scene)
    volume = adapter.volume_from_node(node)

    np.testing.assert_array_equal(volume.array, voxels)
    assert volume.array.shape == (9, 12, 14)  # (k, j, i)
    ras = oblique_ras_matrix()
    np.testing.assert_allclose(volume.spacing, (0.74, 1.31, 3.2), rtol=0, atol=1e-12)
    # The same index must land on the same physical point, RAS = diag(-1, -1, 1) * LPS.
    for ijk in [(0, 0, 0), (13, 11, 8), (3.5, 7.25, 1.0)]:
        lps = volume.index_to_physical(ijk)
        expected_ras = ras[:3, :3] @ np.asarray(ijk) + ras[:3, 3]
        np.testing.assert_allclose(LPS_TO_RAS @ lps, expected_ras, rtol=0, atol=1e-9)


def test_volume_round_trips_through_nodes_with_identical_matrices(scene, oblique_volume_factory):
    volume = oblique_volume_factory()
    node = adapter.scalar_volume_node_from_volume(scene.scene, volume, "oblique")
    back = adapter.volume_from_node(node)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.ijk_to_ras(), volume.ijk_to_ras(), rtol=0, atol=1e-12)

    label = volume.with_array((volume.array > 50).astype(np.uint8))
    labelmap = adapter.labelmap_node_from_volume(scene.scene, label, LABELS, reference_node=node)
    np.testing.assert_array_equal(adapter.ijk_to_ras_array(labelmap), adapter.ijk_to_ras_array(node))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap), label.array)
    # The cube's physical centre (LPS, from the volume) is inside the labelmap's cube in RAS.
    center_ras = LPS_TO_RAS @ np.asarray(volume.metadata["cube_center_lps"])
    ijk = np.linalg.solve(adapter.ijk_to_ras_array(labelmap), [*center_ras, 1.0])[:3]
    i, j, k = np.round(ijk).astype(int)
    assert slicer.util.arrayFromVolume(labelmap)[k, j, i] == 1


def test_geometry_matches_simpleitk_reading_slicers_own_file(scene, tmp_path):
    node, voxels = add_input_volume(scene.scene)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "ct.nrrd"))
    assert storage.WriteData(node)

    from_file = Volume.from_sitk(sitk.ReadImage(str(tmp_path / "ct.nrrd")))
    from_node = adapter.volume_from_node(node)
    np.testing.assert_array_equal(from_file.array, from_node.array)
    np.testing.assert_allclose(from_file.spacing, from_node.spacing, atol=1e-9)
    np.testing.assert_allclose(from_file.origin, from_node.origin, atol=1e-9)
    np.testing.assert_allclose(from_file.direction, from_node.direction, atol=1e-9)


def test_segmentation_node_has_bundle_names_colors_terminology_and_voxels(scene):
    node, voxels = add_input_volume(scene.scene)
    grid = adapter.volume_from_node(node)
    label_array = np.zeros(grid.shape, np.uint8)
    label_array[2:5, 3:7, 4:9] = 1
    label_array[6:8, 1:3, 1:4] = 2  # label 3 ("vessel") is absent from the prediction
    segmentation = adapter.segmentation_node_from_volume(scene.scene, grid.with_array(label_array), LABELS,
                                                         name="Prediction", reference_node=node)

    segments = segmentation.GetSegmentation()
    assert segments.GetNumberOfSegments() == 3
    expected = adapter.normalize_labels(LABELS)
    for n, label in enumerate(expected):
        segment = segments.GetNthSegment(n)
        assert segment.GetName() == label.name
        assert segment.GetLabelValue() == label.value
        np.testing.assert_allclose(segment.GetColor(), np.array(label.color) / 255.0, atol=1e-7)
        assert segment.GetTerminology() == label.terminology
    liver = segments.GetNthSegment(0).GetTerminology()
    assert liver.split("~")[1:3] == ["SCT^123037004^Anatomical Structure", "SCT^10200004^Liver"]
    assert segments.GetNthSegment(1).GetTerminology().split("~")[5] == "SCT^10200004^Liver"
    assert segments.GetNthSegment(2).GetTerminology().split("~")[2] == "SCT^85756007^Tissue"

    # Reference geometry is the input volume, and exporting every segment gives back the same label map.
    assert segmentation.GetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole()) == node.GetID()
    back = adapter.label_volume_from_segmentation(segmentation, LABELS, node)
    np.testing.assert_array_equal(back.array, label_array)
    np.testing.assert_allclose(back.ijk_to_ras(), adapter.ijk_to_ras_array(node), atol=1e-12)


def test_segmentation_refuses_unknown_values_and_wrong_grid(scene):
    node, _ = add_input_volume(scene.scene)
    grid = adapter.volume_from_node(node)
    bad = np.zeros(grid.shape, np.uint8)
    bad[0, 0, 0] = 7
    with pytest.raises(InputError, match=r"label values \[1, 2, 3\].*\[7\]"):
        adapter.segmentation_node_from_volume(scene.scene, grid.with_array(bad), LABELS, reference_node=node)
    shifted = Volume(np.zeros(grid.shape, np.uint8), grid.spacing, tuple(np.add(grid.origin, 1.0)), grid.direction)
    with pytest.raises(GeometryError, match="expected the output on the image's grid"):
        adapter.segmentation_node_from_volume(scene.scene, shifted, LABELS, reference_node=node)
    with pytest.raises(InputError, match="expected a scalar volume node"):
        adapter.volume_from_node(scene.scene.AddNewNodeByClass("vtkMRMLSegmentationNode"))


def test_outputs_go_under_the_input_study_and_inputs_stay_unchanged(scene):
    node, _ = add_input_volume(scene.scene)
    sh = scene.scene.GetSubjectHierarchyNode()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "Study 1")
    item = sh.GetItemByDataNode(node)
    if item:  # the application makes an item for every node; a bare scene does not (DICOM import puts it here)
        sh.SetItemParent(item, study)
    else:
        sh.CreateItem(study, node)
    before = adapter.snapshot(node)

    grid = adapter.volume_from_node(node)
    label = grid.with_array((grid.array > 900).astype(np.uint8))
    segmentation = adapter.segmentation_node_from_volume(scene.scene, label, LABELS, reference_node=node)
    labelmap = adapter.labelmap_node_from_volume(scene.scene, label, LABELS, reference_node=node)
    table = adapter.table_node_from_rows(scene.scene, [{"label": "liver", "voxels": 3}], "Volumes",
                                         reference_node=node)
    for output in (segmentation, labelmap, table):
        assert sh.GetItemParent(sh.GetItemByDataNode(output)) == study
    assert adapter.study_item(segmentation) == study

    after = adapter.snapshot(node)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2]  # not even a Modified() on the input


def test_existing_output_node_is_overwritten_not_duplicated(scene):
    node, _ = add_input_volume(scene.scene)
    grid = adapter.volume_from_node(node)
    first = adapter.segmentation_node_from_volume(scene.scene, grid.with_array(np.ones(grid.shape, np.uint8)), LABELS,
                                                  reference_node=node)
    count = scene.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    again = adapter.segmentation_node_from_volume(scene.scene, grid.with_array(np.full(grid.shape, 2, np.uint8)),
                                                  LABELS, reference_node=node, node=first)
    assert again is first
    assert scene.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count
    assert first.GetSegmentation().GetNumberOfSegments() == 3
    back = adapter.label_volume_from_segmentation(first, LABELS, node)
    assert set(np.unique(back.array)) == {2}


def test_table_columns_are_typed_and_plot_series_reference_the_table(scene):
    rows = [{"slice": k, "label": "lesion" if k % 2 else "normal", "p_lesion": k / 10} for k in range(5)]
    table = adapter.table_node_from_rows(scene.scene, rows, "Per slice", units={"p_lesion": "probability"})
    assert adapter.rows_from_table_node(table) == rows
    assert table.GetTable().GetColumnByName("slice").IsA("vtkIntArray")
    assert table.GetTable().GetColumnByName("p_lesion").IsA("vtkDoubleArray")
    assert table.GetColumnUnitLabel("p_lesion") == "probability"

    chart = adapter.plot_chart_from_table(scene.scene, table, "slice", ["p_lesion"], title="Lesion probability",
                                          x_title="slice (k)", y_title="P(lesion)")
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetTableNodeID() == table.GetID()
    assert (series.GetXColumnName(), series.GetYColumnName()) == ("slice", "p_lesion")


def test_terminology_strings_and_label_validation():
    text = adapter.terminology_string({"category": ("SCT", "123037004", "Anatomical Structure"),
                                       "type": {"CodingSchemeDesignator": "SCT", "CodeValue": "64033007",
                                                "CodeMeaning": "Kidney"},
                                       "type_modifier": "SCT^7771000^Left"})
    assert text == ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical "
                    "Structure~SCT^64033007^Kidney~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^")
    assert adapter.terminology_string(text) == text
    with pytest.raises(InputError, match="'category' and 'type'"):
        adapter.terminology_string({"type": "SCT^1^x"}, "bad")
    with pytest.raises(InputError, match="unique label values"):
        adapter.normalize_labels([{"value": 1, "name": "a"}, {"value": 1, "name": "b"}])
    with pytest.raises(InputError, match="integers 0-255"):
        adapter.normalize_labels([{"value": 1, "name": "a", "color": (300, 0, 0)}])
    assert [label.name for label in adapter.normalize_labels({0: "bg", 2: "b", 1: "a"})] == ["a", "b"]
