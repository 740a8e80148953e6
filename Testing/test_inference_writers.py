"""Writers: DICOM SEG referencing the source series, Slicer .seg.nrrd keys, NIfTI geometry, sidecar provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_inference import shared_cube_bundle
from helpers_io import CANARIES, write_dicom_series

from MedAnalysisLib.bundle import LabelInfo
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

    from MedAnalysisLib.bundle import load_bundle
    from MedAnalysisLib.inference.predict import predict

    oblique_series(tmp_path / "series")
    volume = load_volume(tmp_path / "series")
    bundle = load_bundle(shared_cube_bundle())
    prediction = predict(bundle, volume, return_probabilities=True)
    out = tmp_path / "out"
    outputs = write_prediction(prediction, out, "case1", input_volume=volume, labels=LABELS,
                               formats=("nifti", "nrrd", "seg.nrrd", "dicom-seg"), write_probability_map=True)
    assert set(outputs) == {"label_nifti", "label_nrrd", "label_seg.nrrd", "label_dicom-seg", "probabilities",
                            "table_csv", "table_json", "sidecar"}
    nifti = read_volume(out / outputs["label_nifti"], kind="label")
    assert same_geometry(nifti, volume) and np.array_equal(nifti.array, prediction.label.array)
    assert (nifti.array == 1).sum() > 0
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(out / outputs["label_seg.nrrd"]))
    reader.ReadImageInformation()
    assert reader.GetMetaData("Segment0_Name") == "cube" and reader.GetMetaData("Segment0_LabelValue") == "1"
    assert "Mass" in reader.GetMetaData("Segment0_Tags")
    probabilities = read_volume(out / outputs["probabilities"], allow_4d=True)
    assert probabilities.array.shape[-1] == 2 and same_geometry(probabilities, volume)
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
