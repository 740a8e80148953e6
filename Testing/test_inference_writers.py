"""Writers: DICOM SEG referencing the source series, Slicer .seg.nrrd keys, NIfTI geometry, sidecar provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_inference import shared_cube_bundle
from helpers_io import CANARIES, write_dicom_series

from MedAnalysisLib.bundles import LabelInfo
from MedAnalysisLib.inference.writers import write_dicom_seg, write_prediction
from MedAnalysisLib.io import load_volume, read_volume
from MedAnalysisLib.volume import rotation_about_axis, same_geometry

TERMINOLOGY = {"category": {"scheme": "SCT", "code": "49755003", "meaning": "Morphologically Altered Structure"},
               "type": {"scheme": "SCT", "code": "4147007", "meaning": "Mass"}}
LABELS = (LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "cube", (230, 80, 60), TERMINOLOGY))


def oblique_series(folder: Path) -> list[Path]:
    rotation = rotation_about_axis("z", 30.0) @ rotation_about_axis("x", 10.0)
    pixels = np.random.default_rng(0).normal(0, 10, size=(10, 24, 20)).round() + 1024
    pixels[3:8, 8:16, 6:14] = 1024 + 1000  # 1000 HU box
    return write_dicom_series(folder, pixels.astype(np.int16), spacing=(0.7, 0.8), slice_spacing=2.5,
                              row=rotation[:, 0], column=rotation[:, 1])


def test_dicom_seg_is_read_back_with_the_right_referenced_series(tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom

    files = oblique_series(tmp_path / "series")
    volume = load_volume(tmp_path / "series")
    mask = np.zeros(volume.shape, np.uint8)
    mask[3:8, 8:16, 6:14] = 1
    label = volume.with_array(mask)
    target = write_dicom_seg(label, tmp_path / "out_seg.dcm", volume.metadata["source_files"], LABELS,
                             bundle_name="cube-finder", bundle_sha256="ab" * 32)
    ds = pydicom.dcmread(target)
    assert ds.Modality == "SEG"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.metadata["SeriesInstanceUID"]
    referenced = {item.ReferencedSOPInstanceUID for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}
    assert referenced == set(sources)
    assert ds.StudyInstanceUID == pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    assert ds.SegmentSequence[0].SegmentLabel == "cube"
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"
    seg = hd.seg.segread(target)
    for path in files:
        source = pydicom.dcmread(path)
        k = int(round(volume.physical_to_index(np.asarray(source.ImagePositionPatient, float))[2]))
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1], assert_missing_frames_are_empty=True
        )
        np.testing.assert_array_equal(pixels[0, ..., 0], mask[k])


def test_dicom_seg_refuses_a_label_on_another_grid(tmp_path: Path) -> None:
    from MedAnalysisLib.errors import GeometryError
    from MedAnalysisLib.volume import Volume

    oblique_series(tmp_path / "series")
    volume = load_volume(tmp_path / "series")
    moved = Volume(np.ones(volume.shape, np.uint8), volume.spacing, (0.0, 0.0, 0.0), volume.direction)
    with pytest.raises(GeometryError, match="expected the label map on the source series grid"):
        write_dicom_seg(moved, tmp_path / "x.dcm", volume.metadata["source_files"], LABELS,
                        bundle_name="b", bundle_sha256="0" * 64)


def test_all_outputs_of_a_dicom_case(tmp_path: Path) -> None:
    import SimpleITK as sitk

    from MedAnalysisLib.bundles import load_bundle
    from MedAnalysisLib.inference.predict import predict

    oblique_series(tmp_path / "series")
    volume = load_volume(tmp_path / "series")
    bundle = load_bundle(shared_cube_bundle())
    prediction = predict(bundle, volume, return_probabilities=True)
    out = tmp_path / "out"
    outputs = write_prediction(prediction, out, "case1", input_volume=volume, labels=LABELS,
                               formats=("nifti", "nrrd", "seg.nrrd", "dicom-seg"), write_probability_map=True)
    assert set(outputs) == {"label_nifti", "label_nrrd", "label_seg.nrrd", "label_dicom-seg", "probability_1",
                            "table_csv", "table_json", "sidecar"}
    nifti = read_volume(out / outputs["label_nifti"], kind="label")
    assert same_geometry(nifti, volume) and np.array_equal(nifti.array, prediction.label.array)
    assert (nifti.array == 1).sum() > 0
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(out / outputs["label_seg.nrrd"]))
    reader.ReadImageInformation()
    assert reader.GetMetaData("Segment0_Name") == "cube" and reader.GetMetaData("Segment0_LabelValue") == "1"
    assert "Mass" in reader.GetMetaData("Segment0_Tags")
    probability = read_volume(out / outputs["probability_1"])
    assert outputs["probability_1"] == "case1_probability_1_cube.nii.gz"
    assert same_geometry(probability, volume) and probability.array.shape == volume.shape
    np.testing.assert_allclose(probability.array, prediction.probabilities.array[..., 1], atol=1e-6)
    record = json.loads((out / "case1.json").read_text())
    assert record["bundle"]["weights_sha256"] == bundle.weights_sha256
    assert record["input"]["modality"] == "CT" and record["input"]["shape_kji"] == list(volume.shape)
    assert {"tensorflow", "keras", "numpy", "SimpleITK", "medanalysis"} <= set(record["versions"])
    assert record["volumes"][0]["name"] == "cube"
    # No patient data in anything but the DICOM SEG (which, as DICOM requires, belongs to the source's patient).
    for path in out.iterdir():
        if path.name != outputs["label_dicom-seg"]:
            data = path.read_bytes()
            assert not any(canary.encode() in data for canary in CANARIES), path.name


# ---------------------------------------------------------------------------------------------- issue 19
def lab_to_rgb(value: tuple[int, int, int]) -> tuple[float, float, float]:
    """RGB 0-255 of a DICOM PCS-Lab triplet (PS3.3 C.10.7.1.1: L* 0-100 and a*, b* -128..127 scaled to 0-65535),
    through CIE XYZ (D65 white) and sRGB. Written here from the formulas, not taken from highdicom; checked on known
    pairs in the test below."""
    lightness, a, b = value[0] * 100 / 65535, value[1] * 255 / 65535 - 128, value[2] * 255 / 65535 - 128
    fy = (lightness + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200

    def inverse(t: float) -> float:
        return t**3 if t**3 > 0.008856 else (t - 16 / 116) / 7.787

    x, y, z = 0.95047 * inverse(fx), inverse(fy), 1.08883 * inverse(fz)
    linear = (3.2406 * x - 1.5372 * y - 0.4986 * z, -0.9689 * x + 1.8758 * y + 0.0415 * z,
              0.0557 * x - 0.2040 * y + 1.0570 * z)

    def encode(c: float) -> float:
        c = min(max(c, 0.0), 1.0)
        return 255 * (12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055)

    return tuple(encode(c) for c in linear)  # type: ignore[return-value]


COLOURED = (LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "organ", (216, 101, 79)),
            LabelInfo(2, "vessel", (0, 151, 206)), LabelInfo(3, "lesion", (144, 238, 144)),
            LabelInfo(4, "extra", (255, 250, 220)))


def _label_with_every_value(volume):  # noqa: ANN001, ANN202
    labels = np.zeros(volume.shape, np.uint8)
    for value in range(1, 5):
        labels[2 * value - 1 : 2 * value + 1, 4:12, 4:12] = value
    return volume.with_array(labels)


def test_dicom_seg_display_colours_round_trip_to_the_bundle_colours(tmp_path: Path) -> None:
    """Issue 19.1: RGB 0-255 went through /255 before CIELabColor.from_rgb (which takes 0-255), so every segment
    was stored near black ([87, 32923, 32915] for (216, 101, 79)) and showed grey in Slicer/dcmqi."""
    import highdicom as hd

    # the oracle, checked on known pairs: the value for (216, 101, 79) and highdicom's documented orange
    assert np.allclose(lab_to_rgb((37064, 44082, 41620)), (216, 101, 79), atol=0.5)
    assert np.allclose(lab_to_rgb((49107, 39048, 53188)), (255, 165, 0), atol=0.5)
    files = oblique_series(tmp_path / "series")
    volume = load_volume(tmp_path / "series")
    target = write_dicom_seg(_label_with_every_value(volume), tmp_path / "seg.dcm", files, COLOURED,
                             bundle_name="colours", bundle_sha256="cd" * 32)
    seg = hd.seg.segread(target)
    assert seg.number_of_segments == 4
    for number, label in enumerate(COLOURED[1:], start=1):
        item = seg.SegmentSequence[number - 1]
        assert item.SegmentLabel == label.name
        stored = tuple(int(v) for v in item.RecommendedDisplayCIELabValue)
        assert np.abs(np.subtract(lab_to_rgb(stored), label.color)).max() <= 2, (label.name, stored)
        assert hd.color.CIELabColor.from_dicom_value(stored).to_rgb() == label.color


def test_dicom_seg_carries_the_bundle_codes_with_modifier_and_region(tmp_path: Path) -> None:
    """Issue 19.2: the codes of the bundle's labels (type, laterality modifier, anatomic region) are in the SEG;
    a label without a code gets the generic SCT Tissue / Tissue."""
    import highdicom as hd
    import pydicom

    from MedAnalysisLib.terminology import coded_label

    labels = (LabelInfo(0, "background", (0, 0, 0)), coded_label(1, "liver", (1, 2, 3)),
              coded_label(2, "kidney_left", (1, 2, 3)), coded_label(3, "liver tumour", (1, 2, 3)),
              coded_label(4, "anterior", (10, 20, 30)))
    files = oblique_series(tmp_path / "series")
    volume = load_volume(tmp_path / "series")
    target = write_dicom_seg(_label_with_every_value(volume), tmp_path / "seg.dcm", files, labels,
                             bundle_name="codes", bundle_sha256="cd" * 32)
    seg = hd.seg.segread(target)
    read = {n: seg.get_segment_description(n) for n in range(1, 5)}
    assert [(d.segmented_property_type.value, d.segmented_property_type.scheme_designator) for d in read.values()] == [
        ("10200004", "SCT"), ("64033007", "SCT"), ("108369006", "SCT"), ("85756007", "SCT")]
    assert [d.segmented_property_category.value for d in read.values()] == [
        "123037004", "123037004", "49755003", "85756007"]
    ds = pydicom.dcmread(target)
    kidney = ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0]
    assert kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"  # Left
    tumour = ds.SegmentSequence[2]
    assert tumour.AnatomicRegionSequence[0].CodeValue == "10200004"  # in the liver
    assert labels[2].color == (46, 138, 184)  # the table's colour for a left kidney
    # the colour a coded label got from the table is the one the SEG shows
    assert hd.color.CIELabColor.from_dicom_value(ds.SegmentSequence[0].RecommendedDisplayCIELabValue).to_rgb() == (
        40, 140, 40)


def test_probability_maps_are_one_named_scalar_file_per_foreground_class(tmp_path: Path) -> None:
    """Issue 19.9: probabilities were one 5D NIfTI (intent vector, background included, unnamed channels); now one
    scalar float32 file per foreground class, named after it, on the input grid."""
    import SimpleITK as sitk

    from MedAnalysisLib.inference.predict import Prediction
    from MedAnalysisLib.volume import Volume

    labels = (LabelInfo(0, "background"), LabelInfo(2, "left kidney"), LabelInfo(5, "tumour/mass"))
    volume = Volume(np.zeros((4, 5, 6), np.int16), spacing=(0.8, 0.9, 2.0), origin=(1.0, 2.0, 3.0),
                    direction=rotation_about_axis("z", 25.0))
    raw = np.random.default_rng(0).random((4, 5, 6, 3)).astype(np.float32)
    probabilities = volume.with_array(raw / raw.sum(-1, keepdims=True))
    prediction = Prediction("segmentation", volume.with_array(np.zeros(volume.shape, np.uint8)), probabilities, [],
                            None, None, {}, "b", "0" * 64)
    outputs = write_prediction(prediction, tmp_path, "c1", input_volume=volume, labels=labels, formats=(),
                               write_probability_map=True)
    assert {k: v for k, v in outputs.items() if k.startswith("probability")} == {
        "probability_2": "c1_probability_2_left_kidney.nii.gz", "probability_5": "c1_probability_5_tumour_mass.nii.gz"}
    for channel, value in ((1, 2), (2, 5)):
        path = tmp_path / outputs[f"probability_{value}"]
        image = sitk.ReadImage(str(path))  # what any ITK user gets: a 3D scalar float image
        assert image.GetDimension() == 3 and image.GetNumberOfComponentsPerPixel() == 1
        assert image.GetPixelID() == sitk.sitkFloat32
        np.testing.assert_allclose(sitk.GetArrayFromImage(image), probabilities.array[..., channel], atol=1e-7)
        assert same_geometry(read_volume(path), volume)
    assert not list(tmp_path.glob("*background*"))
    from MedAnalysisLib.inference.writers import probability_files

    record = json.loads((tmp_path / "c1.json").read_text())
    assert probability_files(record) == {2: "c1_probability_2_left_kidney.nii.gz", 5: "c1_probability_5_tumour_mass.nii.gz"}


def test_a_format_the_input_cannot_give_costs_no_other_output(tmp_path: Path) -> None:
    """Issue 19.4 (writer): a DICOM series without FrameOfReferenceUID cannot give a DICOM SEG; the label maps,
    the table and the sidecar are still written, and the sidecar says what was left out and why."""
    import pydicom

    from MedAnalysisLib.inference.predict import Prediction

    files = oblique_series(tmp_path / "series")
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    volume = load_volume(tmp_path / "series")
    label = volume.with_array((volume.array > 1500).astype(np.uint8))
    prediction = Prediction("segmentation", label, None, [{"value": 1, "name": "cube", "voxels": 1}], None, None, {},
                            "b", "0" * 64)
    out = tmp_path / "out"
    outputs = write_prediction(prediction, out, "c1", input_volume=volume, labels=LABELS,
                               formats=("dicom-seg", "seg.nrrd", "nifti"))
    assert set(outputs) == {"label_seg.nrrd", "label_nifti", "table_csv", "table_json", "sidecar"}
    record = json.loads((out / "c1.json").read_text())
    assert list(record["not_written"]) == ["label_dicom-seg"]
    assert "FrameOfReferenceUID" in record["not_written"]["label_dicom-seg"]
    assert not list(out.glob("*.dcm"))
    from MedAnalysisLib.inference.writers import format_problems

    assert "FrameOfReferenceUID" in format_problems(("dicom-seg", "nifti"), volume)["dicom-seg"]
