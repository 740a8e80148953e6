"""Reading and writing NIfTI / NRRD / MetaImage files: exact geometry, header-first checks, labels, metadata."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers_io import write_nifti

from MedAnalysisLib.errors import ImageValidationError, MemoryBudgetError, UnreadableFileError
from MedAnalysisLib.io import load_volume, read_header, read_volume, write_volume
from MedAnalysisLib.io.files import FORMATS, image_suffix, segment_metadata
from MedAnalysisLib.volume import LPS_TO_RAS, Volume, geometry_differences

#: NIfTI stores spacing, origin and the affine as float32, the other formats as decimal text with full precision.
EXACT = {".nii": 1e-6, ".nii.gz": 1e-6, ".nrrd": 1e-12, ".seg.nrrd": 1e-12, ".nhdr": 1e-12, ".mha": 1e-12, ".mhd": 1e-12}


@pytest.mark.parametrize("suffix", list(EXACT))
def test_oblique_round_trip_is_exact(tmp_path: Path, oblique_volume_factory, suffix: str) -> None:
    """20 degrees about z (then 10 about x), anisotropic spacing, non-zero origin, through writer and reader."""
    volume = oblique_volume_factory(dtype=np.int16 if suffix == ".seg.nrrd" else np.float32)
    written = write_volume(volume, tmp_path / f"oblique{suffix}")
    assert written == tmp_path / f"oblique{suffix}"
    back = read_volume(written)
    assert back.array.dtype == volume.array.dtype
    np.testing.assert_array_equal(back.array, volume.array)
    tolerance = EXACT[suffix]
    assert geometry_differences(volume, back, tolerance, tolerance, tolerance) == []
    centre = np.array(volume.metadata["cube_center_lps"])
    np.testing.assert_allclose(back.index_to_physical(np.round(back.physical_to_index(centre))), centre, atol=1e-4)
    leftovers = [p.name for p in tmp_path.iterdir() if "partial" in p.name]
    assert leftovers == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float64])
def test_dtypes_survive_the_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    array = (np.arange(60).reshape(3, 4, 5) - 10).astype(dtype) if dtype is not np.uint8 else np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    volume = Volume(array, spacing=(0.5, 0.75, 3.0), origin=(1.0, -2.0, 3.5))
    back = read_volume(write_volume(volume, tmp_path / f"v{suffix}"))
    assert back.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.array, array)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_vector_images_read_as_components_last(tmp_path: Path, suffix: str) -> None:
    array = np.random.default_rng(0).normal(size=(3, 4, 5, 3)).astype(np.float32)
    volume = Volume(array, spacing=(1.0, 2.0, 3.0))
    back = read_volume(write_volume(volume, tmp_path / f"rgb{suffix}"))
    assert back.array.shape == (3, 4, 5, 3) and back.n_components == 3
    np.testing.assert_array_equal(back.array, array)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"rgb{suffix}")))
    np.testing.assert_array_equal(back.array, reference)
    with pytest.raises(ImageValidationError, match="one value per voxel"):
        read_volume(tmp_path / f"rgb{suffix}", kind="label")
    array[1, 2, 3, 2] = np.nan
    with pytest.raises(ImageValidationError, match="1 NaN"):
        read_volume(write_volume(Volume(array), tmp_path / f"nan{suffix}"))


def test_read_header_does_not_need_the_pixels(tmp_path: Path, oblique_volume_factory) -> None:
    volume = oblique_volume_factory(shape=(6, 7, 8))
    path = write_volume(volume, tmp_path / "v.nhdr", compress=False)
    (tmp_path / "v.raw").unlink()  # the header alone still describes the image ...
    with pytest.raises(UnreadableFileError, match="data file v.raw"):
        read_header(path)  # ... but a missing data file is reported before SimpleITK tries to read it
    path = write_volume(volume, tmp_path / "w.mha")
    header = read_header(path)
    assert header.format == "metaimage" and header.dimension == 3
    assert header.size == (8, 7, 6) and header.array_shape == (6, 7, 8)
    assert header.dtype == np.float32 and header.nbytes == 6 * 7 * 8 * 4
    np.testing.assert_allclose(header.direction, volume.direction, atol=1e-12)


def test_memory_budget_is_checked_from_the_header(tmp_path: Path) -> None:
    path = write_volume(Volume(np.zeros((10, 20, 30), np.float32)), tmp_path / "v.nrrd")
    with pytest.raises(MemoryBudgetError, match=r"memory budget of 1\.0 KiB.*23\.4 KiB"):
        read_volume(path, memory_budget_bytes=1024)
    assert read_volume(path, memory_budget_bytes=24_000).shape == (10, 20, 30)


def test_write_never_copies_source_metadata(tmp_path: Path, oblique_volume_factory) -> None:
    volume = oblique_volume_factory(shape=(3, 4, 5))
    volume = volume.with_array(volume.array, PatientName="PHI^CANARY", PatientID="CANARY-ID", Modality="MR")
    for suffix in (".nii", ".nii.gz", ".nrrd", ".mha", ".nhdr", ".mhd"):
        folder = tmp_path / suffix.strip(".")  # .nhdr and .mhd both write out.raw: one folder each
        folder.mkdir()
        path = write_volume(volume, folder / f"out{suffix}", compress=False)
        for produced in folder.iterdir():
            data = produced.read_bytes()
            if produced.name.endswith(".gz"):
                data = gzip.decompress(data)
            assert b"CANARY" not in data, produced.name
            assert b"Modality" not in data
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        assert not [k for k in reader.GetMetaDataKeys() if "Patient" in k or k.startswith("0010")]


def test_segments_are_written_as_slicer_seg_nrrd(tmp_path: Path) -> None:
    labels = np.zeros((5, 6, 7), np.uint8)
    labels[1:3, 2:5, 3:7] = 1
    labels[4, 0, 0] = 3
    volume = Volume(labels, spacing=(0.5, 0.5, 2.0), origin=(5.0, 6.0, 7.0))
    segments = [
        {"label_value": 1, "name": "liver", "color": (221, 130, 101)},
        {"label_value": 3, "name": "tumor", "color": (0.0, 1.0, 0.5), "id": "tumor_1"},
        {"label_value": 4, "name": "empty"},
    ]
    path = write_volume(volume, tmp_path / "seg.seg.nrrd", segments=segments)
    header = path.read_bytes().split(b"\n\n", 1)[0].decode()
    fields = dict(line.split(":=", 1) for line in header.splitlines() if ":=" in line)
    assert fields["Segment0_Name"] == "liver" and fields["Segment0_LabelValue"] == "1"
    assert fields["Segment0_Color"] == f"{221 / 255:.6g} {130 / 255:.6g} {101 / 255:.6g}"
    assert fields["Segment0_Layer"] == "0" and fields["Segment0_ID"] == "Segment_1"
    assert fields["Segment0_Extent"] == "3 6 2 4 1 2"  # i0 i1 j0 j1 k0 k1, inclusive
    assert fields["Segment1_ID"] == "tumor_1" and fields["Segment1_Color"] == "0 1 0.5"
    assert fields["Segment1_Extent"] == "0 0 0 0 4 4"
    assert fields["Segment2_Extent"] == "0 -1 0 -1 0 -1"
    assert fields["Segmentation_MasterRepresentation"] == "Binary labelmap"
    back = read_volume(path, kind="label")
    np.testing.assert_array_equal(back.array, labels)
    assert [s["name"] for s in back.metadata["segments"]] == ["liver", "tumor", "empty"]
    assert back.metadata["segments"][1]["label_value"] == 3
    np.testing.assert_allclose(back.metadata["segments"][1]["color"], (0.0, 1.0, 0.5))


@pytest.mark.parametrize(
    ("segments", "match"),
    [
        ([{"name": "x"}], "label_value"),
        ([{"label_value": 1, "name": "a"}, {"label_value": 1, "name": "b"}], "unique positive"),
        ([{"label_value": 1, "name": "a", "color": (300, 0, 0)}], "0..255"),
        ([{"label_value": 1, "name": "a", "color": (0.5, 2.0, 0.0)}], "0..1"),
        ([{"label_value": 1, "name": "a\nb"}], "without newlines"),
    ],
)
def test_bad_segment_descriptions_are_refused(segments: list, match: str) -> None:
    with pytest.raises(ImageValidationError, match=match):
        segment_metadata(np.zeros((2, 2, 2), np.uint8), segments)


def test_segments_need_a_nrrd_and_an_integer_label_map(tmp_path: Path) -> None:
    labels = Volume(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ImageValidationError, match=r"\.seg\.nrrd or \.nrrd"):
        write_volume(labels, tmp_path / "x.nii.gz", segments=[{"label_value": 1, "name": "a"}])
    with pytest.raises(ImageValidationError, match="integer label map"):
        write_volume(labels.with_array(np.zeros((2, 3, 4), np.float32)), tmp_path / "x.seg.nrrd", segments=[{"label_value": 1, "name": "a"}])


def test_big_endian_and_boolean_arrays_are_written_natively(tmp_path: Path) -> None:
    swapped = np.arange(24, dtype=">i2").reshape(2, 3, 4)
    back = read_volume(write_volume(Volume(swapped), tmp_path / "be.nrrd"))
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, swapped)
    mask = read_volume(write_volume(Volume(swapped > 10), tmp_path / "mask.nii.gz"), kind="label")
    assert mask.array.dtype == np.uint8 and int(mask.array.sum()) == 13


def test_failed_write_leaves_the_existing_file_untouched(tmp_path: Path) -> None:
    target = tmp_path / "keep.nrrd"
    write_volume(Volume(np.ones((2, 2, 2), np.int16)), target)
    before = target.read_bytes()
    with pytest.raises(ImageValidationError, match="expected integer or float32/float64"):
        write_volume(Volume(np.ones((2, 2, 2), np.complex64)), target)
    with pytest.raises(UnreadableFileError, match="expected a file ending in"):
        write_volume(Volume(np.ones((2, 2, 2))), tmp_path / "x.png")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nrrd"]


def test_float_labels_with_whole_values_become_integers(tmp_path: Path) -> None:
    labels = np.zeros((3, 4, 5), np.float32)
    labels[1, 1:3, 2:4] = 2.0
    path = write_volume(Volume(labels), tmp_path / "lab.nii.gz")
    back = read_volume(path, kind="label")
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, labels.astype(np.uint8))
    negative = write_volume(Volume(labels - 300), tmp_path / "neg.nrrd")
    assert read_volume(negative, kind="label").array.dtype == np.int16


def test_2d_images_need_permission(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.arange(12, dtype=np.int16).reshape(3, 4))
    image.SetSpacing((0.5, 0.25))
    image.SetOrigin((3.0, 4.0))
    sitk.WriteImage(image, str(tmp_path / "flat.nrrd"))
    with pytest.raises(ImageValidationError, match=r"expected a 3D image, got a 2D image.*allow_2d=True"):
        read_volume(tmp_path / "flat.nrrd")
    volume = read_volume(tmp_path / "flat.nrrd", allow_2d=True)
    assert volume.shape == (1, 3, 4)
    assert volume.spacing == (0.5, 0.25, 1.0) and volume.origin == (3.0, 4.0, 0.0)
    np.testing.assert_array_equal(volume.array[0], np.arange(12).reshape(3, 4))


def test_4d_images_are_refused_unless_allowed(tmp_path: Path) -> None:
    series = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)  # (t, k, j, i)
    image = sitk.JoinSeries([sitk.GetImageFromArray(frame) for frame in series])
    image.SetSpacing((0.5, 0.6, 0.7, 2.0))
    path = tmp_path / "dyn.nii.gz"
    sitk.WriteImage(image, str(path))
    with pytest.raises(ImageValidationError, match=r"expected a 3D image, got a 4D image of size \(5, 4, 3, 2\)"):
        read_volume(path)
    volume = read_volume(path, allow_4d=True)
    assert volume.array.shape == (3, 4, 5, 2)
    np.testing.assert_array_equal(volume.array[..., 1], series[1])
    np.testing.assert_allclose(volume.spacing, (0.5, 0.6, 0.7), atol=1e-6)
    with pytest.raises(ImageValidationError, match="one value per voxel"):
        read_volume(path, kind="label", allow_4d=True)


def test_hand_written_nifti_geometry_is_read_in_lps(tmp_path: Path) -> None:
    """A NIfTI affine is voxel -> RAS; the Volume must hold the same points in LPS."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-0.9, -1.1, 2.0])
    affine[:3, 3] = [40.0, 50.0, -10.0]
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    volume = read_volume(write_nifti(tmp_path / "h.nii", array, affine))
    np.testing.assert_array_equal(volume.array, array)
    ijk = np.array([3.0, 2.0, 1.0])
    ras = affine[:3, :3] @ ijk + affine[:3, 3]
    np.testing.assert_allclose(volume.index_to_physical(ijk), LPS_TO_RAS @ ras, atol=1e-5)
    assert volume.orientation_code() == "LPS"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [(1.0, 0.0), (0.0, 0.0), (2.5, -3.0), (1.0, 7.0)])
def test_float_nifti_voxels_match_simpleitk(tmp_path: Path, dtype: type, scale: tuple[float, float]) -> None:
    """Float NIfTI voxels are read directly (to keep NaN visible); finite data must equal SimpleITK's reading."""
    array = np.random.default_rng(3).normal(size=(3, 4, 5)).astype(dtype)
    path = write_nifti(tmp_path / "f.nii", array, np.diag([-1.0, -1.0, 1.0, 1.0]), scale=scale)
    ours = read_volume(path).array
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert ours.dtype == reference.dtype
    np.testing.assert_array_equal(ours, reference)
    packed = tmp_path / "f.nii.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    np.testing.assert_array_equal(read_volume(packed).array, reference)


def test_hippocampus_images_and_labels_share_their_geometry(shared_data: Path) -> None:
    """All 208 images and labels of the MSD hippocampus set (two labels are stored as float32)."""
    folder = shared_data / "hippocampus"
    images = sorted((folder / "imagesTr").glob("*.nii.gz"))
    assert len(images) == 208
    float_labels = 0
    for image_path in images:
        label_path = folder / "labelsTr" / image_path.name
        float_labels += read_header(label_path).dtype == np.float32
        image = read_volume(image_path)
        label = read_volume(label_path, kind="label")
        assert geometry_differences(image, label) == [], image_path.name
        assert np.issubdtype(label.array.dtype, np.integer)
        assert set(np.unique(label.array)) <= {0, 1, 2}
        assert image.orientation_code() == "RAS"
    assert float_labels == 2


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("brain1_image.nrrd", "image"),
        ("brain1_label.nrrd", "label"),
        ("breast1_image.nrrd", "image"),
        ("breast1_label.nrrd", "label"),
        ("CT_AVM.nii.gz", "image"),
        ("MR_Gd.nii.gz", "image"),
        ("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "image"),
    ],
)
def test_shared_volumes_load_like_simpleitk(shared_data: Path, name: str, kind: str) -> None:
    path = shared_data / "volumes" / name
    volume = load_volume(path, kind=kind)
    reference = sitk.ReadImage(str(path))
    assert volume.size_ijk == reference.GetSize()
    np.testing.assert_allclose(volume.spacing, reference.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(volume.origin, reference.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(volume.direction.ravel(), reference.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reference).astype(volume.array.dtype))
    if kind == "label":
        assert np.issubdtype(volume.array.dtype, np.integer)


def test_suffixes_are_recognised_case_insensitively() -> None:
    assert image_suffix("a/B.NII.GZ") == ".nii.gz"
    assert image_suffix("x.seg.nrrd") == ".seg.nrrd"
    assert image_suffix("x.nii.gz.bak") is None
    assert set(FORMATS.values()) == {"nifti", "nrrd", "metaimage"}


def test_load_volume_dispatches_and_refuses_series_for_files(tmp_path: Path) -> None:
    path = write_volume(Volume(np.zeros((2, 3, 4), np.int16)), tmp_path / "a.mha")
    assert load_volume(path).shape == (2, 3, 4)
    with pytest.raises(UnreadableFileError, match="expected a DICOM folder when a series is given"):
        load_volume(path, series=0)
    with pytest.raises(UnreadableFileError, match="got nothing at"):
        load_volume(tmp_path / "missing.nii")


def test_convert_command_writes_the_requested_format(tmp_path: Path, capsys, oblique_volume_factory) -> None:
    from MedAnalysisLib.cli import main

    volume = oblique_volume_factory(shape=(4, 5, 6))
    source = write_volume(volume, tmp_path / "in.nii.gz")
    assert main(["convert", str(source), str(tmp_path / "out.nrrd"), "--progress", "none"]) == 0
    assert re.search(r"wrote .*out\.nrrd", capsys.readouterr().out)
    back = read_volume(tmp_path / "out.nrrd")
    np.testing.assert_array_equal(back.array, volume.array)
    assert geometry_differences(volume, back, 1e-6, 1e-6, 1e-6) == []
    assert main(["convert", str(tmp_path / "nope.nii"), str(tmp_path / "x.nrrd"), "--progress", "none"]) == 2
    assert not os.path.exists(tmp_path / "x.nrrd")


def test_slicer_reads_our_seg_nrrd_with_names_colors_and_geometry(tmp_path: Path) -> None:
    """Slicer's own segmentation storage node (slicer-core) loads the file: segments, colors, grid, voxels."""
    import vtk
    from slicer import vtkMRMLScene, vtkMRMLSegmentationStorageNode
    from vtk.util.numpy_support import vtk_to_numpy

    from MedAnalysisLib.volume import rotation_about_axis

    labels = np.zeros((5, 6, 7), np.uint8)
    labels[1:3, 2:5, 3:7] = 1
    labels[4, 0, 0] = 3
    volume = Volume(labels, spacing=(0.5, 0.6, 2.0), origin=(5.0, 6.0, 7.0), direction=rotation_about_axis("z", 20))
    path = write_volume(
        volume,
        tmp_path / "two.seg.nrrd",
        segments=[{"label_value": 1, "name": "liver", "color": (221, 130, 101)}, {"label_value": 3, "name": "tumor", "color": (0.0, 1.0, 0.5)}],
    )
    scene = vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    segmentation = node.GetSegmentation()
    segments = [segmentation.GetNthSegment(n) for n in range(segmentation.GetNumberOfSegments())]
    assert [(s.GetName(), s.GetLabelValue()) for s in segments] == [("liver", 1), ("tumor", 3)]
    np.testing.assert_allclose(segments[0].GetColor(), (221 / 255, 130 / 255, 101 / 255), atol=1e-6)
    image = segments[0].GetRepresentation("Binary labelmap")
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], volume.ijk_to_ras(), atol=1e-9)
    i0, i1, j0, j1, k0, k1 = image.GetExtent()
    voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)
    np.testing.assert_array_equal(voxels == 1, labels[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] == 1)
    assert int((voxels == 1).sum()) == int((labels == 1).sum())
