"""DICOM series: scanning, sorting along the normal, modality LUT, geometry, compressed syntaxes, privacy.

Real data from ../shared/data/dicom plus small series written with pydicom inside the tests.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers_io import CANARIES, write_dicom_series

from MedAnalysisLib.errors import DicomSeriesError, ImageValidationError, MedAnalysisError
from MedAnalysisLib.io import load_volume, read_volume, write_volume
from MedAnalysisLib.io.dicom import METADATA_KEYS, load_dicom_series, scan_dicom_folder, select_series
from MedAnalysisLib.volume import rotation_about_axis

VENDOR_SAMPLES = (
    "ge/anatomical",
    "siemens/anatomical",
    "philips/anatomical",
    "hitachi/anatomical",
    "generic/compressed",
    "generic/compressed_j2k",
    "generic/compressed_jpeg",
    "generic/compressed_jpegls",
    "generic/compressed_rle",
)
MR_STUDY = "mr_brain_tumor_progression_PGBM-003"


def test_every_series_under_dicom_loads(shared_data: Path) -> None:
    root = shared_data / "dicom"
    series = scan_dicom_folder(root)
    # CT head, 4 vendor series, one generic series (5 encodings of the same instances), 4 MR series + the crop
    assert len(series) == 11
    for info in series:
        assert info.loadable, info.problems
        volume = load_dicom_series(root, info=info)
        assert volume.shape == (info.n_slices, info.size[1], info.size[0])
        assert np.issubdtype(volume.array.dtype, np.integer)
        assert volume.metadata["SeriesInstanceUID"] == info.series_instance_uid
    duplicates = [info for info in series if any("duplicate" in p for p in info.problems)]
    assert len(duplicates) == 1 and duplicates[0].n_slices == 4
    for folder in sorted({Path(f).parent for info in series for f in info.files} | {root / "dicom2nifti_vendor_samples" / s / "001" for s in VENDOR_SAMPLES}):
        assert load_volume(folder).array.size > 0


@pytest.mark.parametrize("sample", VENDOR_SAMPLES)
def test_vendor_samples_match_their_reference_nifti_in_physical_space(shared_data: Path, sample: str) -> None:
    """Voxel order differs between our volume and the reference: compare on the reference grid."""
    folder = shared_data / "dicom" / "dicom2nifti_vendor_samples" / sample / "001"
    volume = load_dicom_series(folder)
    reference = read_volume(folder.with_name("001_ground_truth.nii.gz"))
    # the corners of our grid are voxel centres of the reference grid
    k, j, i = volume.shape
    corners = np.array([[a, b, c] for a in (0, i - 1) for b in (0, j - 1) for c in (0, k - 1)], dtype=float)
    in_reference = reference.physical_to_index(volume.index_to_physical(corners))
    np.testing.assert_allclose(in_reference, np.round(in_reference), atol=2e-3)
    assert np.all(np.round(in_reference) >= 0) and np.all(np.round(in_reference) < np.array(reference.size_ijk))
    resampled = sitk.Resample(
        sitk.Cast(volume.to_sitk(), sitk.sitkFloat64), reference.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, -1.0
    )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), reference.array.astype(np.float64))


def test_multi_series_study_lists_four_series_and_the_crop(shared_data: Path) -> None:
    folder = shared_data / "dicom" / MR_STUDY
    series = scan_dicom_folder(folder)
    assert sorted(s.series_description for s in series) == sorted(["T1post", "T1pre_reg", "FLAIR_reg", "T2_reg", "HippoCrop"])
    with pytest.raises(DicomSeriesError, match="5 series found") as raised:
        load_dicom_series(folder)
    for info in series:
        assert info.series_instance_uid in str(raised.value)
        by_uid = load_dicom_series(folder, info.series_instance_uid)
        assert by_uid.metadata["SeriesInstanceUID"] == info.series_instance_uid
        if info.index == 2:
            np.testing.assert_array_equal(by_uid.array, load_dicom_series(folder, str(info.index)).array)
        if info.series_description != "HippoCrop":
            assert by_uid.shape == (22, 320, 280)
            np.testing.assert_allclose(by_uid.spacing, (0.6875, 0.6875, 6.5), atol=1e-6)
            # oblique: the slice normal is tilted about 10.8 degrees from the z axis
            assert 10.0 < np.degrees(np.arccos(by_uid.direction[2, 2])) < 11.5
    with pytest.raises(DicomSeriesError, match="unknown SeriesInstanceUID"):
        load_dicom_series(folder, "1.2.3.4")
    with pytest.raises(DicomSeriesError, match="index from 0 to 4, got 7"):
        load_dicom_series(folder, 7)


def test_ct_head_has_modality_lut_values_and_expected_geometry(shared_data: Path) -> None:
    folder = shared_data / "dicom" / "ct_head_slicer_64x64"
    volume = load_dicom_series(folder)
    assert volume.shape == (93, 64, 64)
    assert volume.spacing == (3.2, 3.2, 1.5) and volume.origin == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(volume.direction, np.eye(3))
    assert volume.array.dtype == np.int16 and volume.metadata["Modality"] == "CT"
    # reference: pydicom decodes every file, applies the modality LUT, stacks by position along the normal
    datasets = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    expected = np.stack([pydicom.pixels.apply_modality_lut(d.pixel_array, d) for d in datasets])
    np.testing.assert_array_equal(volume.array, expected)
    # and SimpleITK/GDCM agree on the geometry
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    np.testing.assert_allclose(image.GetOrigin(), volume.origin, atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.array)
    # sorted by position, not by file name (CTHead10 sorts before CTHead2 by name)
    assert [Path(f).name for f in volume.metadata["source_files"][:3]] == ["CTHead1.dcm", "CTHead2.dcm", "CTHead3.dcm"]


def test_oblique_series_sorted_along_the_normal_with_exact_geometry(tmp_path: Path) -> None:
    rotation = rotation_about_axis("z", 20) @ rotation_about_axis("x", 15)
    row, column = rotation[:, 0], rotation[:, 1]
    pixels = np.random.default_rng(0).integers(0, 3000, size=(6, 5, 7)).astype(np.int16)
    pixels[:, 0, 0] = np.arange(6)  # slice marker
    # files and instance numbers in an order unrelated to position
    names = [f"img{n}.dcm" for n in (5, 3, 1, 0, 4, 2)]
    write_dicom_series(tmp_path, pixels, row=row, column=column, origin=(-20.0, 15.0, 30.0), slice_spacing=2.5, file_names=names, instance_numbers=[3, 1, 6, 2, 5, 4])
    volume = load_volume(tmp_path)
    np.testing.assert_array_equal(volume.array[:, 0, 0], np.arange(6) - 1024)
    np.testing.assert_array_equal(volume.array, pixels.astype(np.int16) - 1024)
    assert volume.array.dtype == np.int16
    np.testing.assert_allclose(volume.origin, (-20.0, 15.0, 30.0), atol=1e-5)
    np.testing.assert_allclose(volume.spacing, (0.7, 0.8, 2.5), atol=1e-5)
    np.testing.assert_allclose(volume.direction, rotation, atol=1e-7)
    assert set(volume.metadata) == {*METADATA_KEYS, "source_files"}
    assert [Path(f).name for f in volume.metadata["source_files"]] == names


def test_fractional_and_per_slice_rescale(tmp_path: Path) -> None:
    pixels = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    write_dicom_series(tmp_path / "half", pixels, slope=0.5, intercept=-10.25)
    volume = load_volume(tmp_path / "half")
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array, pixels * 0.5 - 10.25)
    write_dicom_series(tmp_path / "mixed", pixels, slope=[1, 2, 1], intercept=[0, -1024, 5])
    volume = load_volume(tmp_path / "mixed")
    assert np.issubdtype(volume.array.dtype, np.integer)
    np.testing.assert_array_equal(volume.array, pixels * np.array([1, 2, 1])[:, None, None] + np.array([0, -1024, 5])[:, None, None])


def test_single_slice_needs_allow_2d(tmp_path: Path, shared_data: Path) -> None:
    write_dicom_series(tmp_path, np.ones((1, 4, 5), np.int16))
    with pytest.raises(ImageValidationError, match="single slice.*allow_2d=True"):
        load_volume(tmp_path)
    volume = load_volume(tmp_path, allow_2d=True)
    assert volume.shape == (1, 4, 5) and volume.spacing[2] == 2.5  # SliceThickness
    # a real chest CT slice (single file): HU through the modality LUT, air well below -900
    slice_file = sorted((shared_data / "ct_contrast").rglob("*.dcm"))[0]
    ct = load_volume(slice_file, allow_2d=True)
    assert ct.shape == (1, 512, 512) and ct.metadata["Modality"] == "CT"
    assert ct.array.min() <= -900 and ct.array.max() >= 300


def test_no_patient_data_in_listings_logs_errors_or_outputs(tmp_path: Path, capsys, caplog) -> None:
    from MedAnalysisLib.cli import main

    caplog.set_level(logging.DEBUG)
    pixels = np.ones((4, 3, 3), np.int16)
    write_dicom_series(tmp_path / "study" / "a", pixels, description="axial")
    write_dicom_series(tmp_path / "study" / "b", pixels, description="other")
    (tmp_path / "study" / "notes.txt").write_text("not dicom")
    messages: list[str] = []
    series = scan_dicom_folder(tmp_path / "study")
    messages += [json.dumps(s.to_dict()) + s.describe() for s in series]
    for attempt in (lambda: load_volume(tmp_path / "study"), lambda: load_volume(tmp_path / "study", series="9.9")):
        with pytest.raises(MedAnalysisError) as raised:
            attempt()
        messages.append(str(raised.value))
    volume = load_volume(tmp_path / "study", series=0)
    messages.append(repr(volume.metadata))
    assert main(["dicom", "ls", str(tmp_path / "study"), "--progress", "none"]) == 0
    assert main(["dicom", "ls", str(tmp_path / "study"), "--json", "--progress", "jsonl"]) == 0
    assert main(["dicom", "info", str(tmp_path / "study"), "--series", "1", "--progress", "none"]) == 0
    assert main(["convert", str(tmp_path / "study"), str(tmp_path / "out.nrrd"), "--progress", "jsonl"]) == 2
    assert main(["convert", str(tmp_path / "study"), str(tmp_path / "out.nrrd"), "--series", "1", "--progress", "none"]) == 0
    captured = capsys.readouterr()
    messages += [captured.out, captured.err, caplog.text]
    outputs = []
    for suffix in (".nii.gz", ".mha", ".nrrd"):
        written = write_volume(volume, tmp_path / f"out{suffix}")
        data = written.read_bytes()
        outputs.append(gzip.decompress(data) if suffix == ".nii.gz" else data)
    outputs.append((tmp_path / "out.nrrd").read_bytes())
    for canary in CANARIES:
        for text in messages:
            assert canary not in text
        for data in outputs:
            assert canary.encode() not in data
    assert "axial" in captured.out and "other" in captured.out  # the listing itself did work


def test_dicom_ls_prints_the_series_table(shared_data: Path, capsys) -> None:
    from MedAnalysisLib.cli import main

    assert main(["dicom", "ls", str(shared_data / "dicom" / "ct_head_slicer_64x64"), "--progress", "none"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("0 "))
    assert row.split()[:5] == ["0", "CT", "64x64", "93", "3.2x3.2x1.5"]


def test_select_series_reports_what_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DicomSeriesError, match=r"got none \(1 file\(s\) not DICOM\)"):
        select_series(tmp_path)


def test_bits_stored_below_bits_allocated(tmp_path: Path) -> None:
    """Unused high bits (overlays, garbage) are masked; signed 12-bit values are sign-extended."""
    raw = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4) * 100
    write_dicom_series(tmp_path / "u12", raw | 0xF000, bits_stored=12, signed=False, intercept=0)
    np.testing.assert_array_equal(load_volume(tmp_path / "u12").array, raw & 0x0FFF)
    values = np.array([-2048, -1, 0, 5, 2047, -1000], dtype=np.int16).reshape(1, 2, 3).repeat(2, axis=0)
    stored = (values.astype(np.uint16) & 0x0FFF).astype(np.int16)  # 12-bit two's complement without sign extension
    write_dicom_series(tmp_path / "s12", stored, bits_stored=12, signed=True, intercept=0)
    np.testing.assert_array_equal(load_volume(tmp_path / "s12").array, values)


def test_color_series_reads_components_last(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    rgb = np.random.default_rng(0).integers(0, 255, (3, 4, 5, 3), dtype=np.uint8)
    series_uid = generate_uid()
    for k in range(3):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "OT", series_uid, "1.2.3"
        ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 2.0 * k], [1, 0, 0, 0, 1, 0], [0.5, 0.5]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 4, 5, 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = rgb[k].tobytes()
        ds.save_as(tmp_path / f"{k}.dcm", enforce_file_format=True)
    volume = load_volume(tmp_path)
    assert volume.array.shape == (3, 4, 5, 3) and volume.spacing == (0.5, 0.5, 2.0)
    np.testing.assert_array_equal(volume.array, rgb)


@pytest.mark.parametrize("compressed", [False, True], ids=["native", "rle"])
def test_enhanced_multiframe_frames_sorted_along_the_normal(tmp_path: Path, compressed: bool) -> None:
    from helpers_io import write_enhanced_multiframe

    rotation = rotation_about_axis("y", 25)
    row, column = rotation[:, 0], rotation[:, 1]
    normal = rotation[:, 2]
    origin = np.array([-30.0, 12.0, 8.0])
    stored_order = [3, 0, 4, 1, 2]  # frame n of the file is slice stored_order[n] of the stack
    pixels = np.random.default_rng(0).integers(0, 4000, size=(5, 6, 7)).astype(np.uint16)
    rescale = [(1.0, float(-10 * n)) for n in range(5)]
    path = write_enhanced_multiframe(
        tmp_path / "enhanced.dcm", pixels, [origin + 3.0 * k * normal for k in stored_order], row=row, column=column,
        rescale=rescale, compress_rle=compressed,
    )
    (info,) = scan_dicom_folder(tmp_path)
    assert info.loadable and info.n_slices == 5 and info.size == (7, 6, 5)
    volume = load_volume(path)
    inverse = np.argsort(stored_order)  # slice k comes from frame inverse[k]
    expected = np.stack([pixels[n].astype(np.int32) - 10 * n for n in inverse])
    np.testing.assert_array_equal(volume.array, expected)
    np.testing.assert_allclose(volume.origin, origin, atol=1e-5)
    np.testing.assert_allclose(volume.spacing, (0.9, 0.8, 3.0), atol=1e-6)
    np.testing.assert_allclose(volume.direction, rotation, atol=1e-7)
    assert volume.metadata["source_files"] == [str(path)]
    assert load_volume(tmp_path).shape == (5, 6, 7)


def test_multiframe_without_frame_positions_is_left_out(tmp_path: Path) -> None:
    import pydicom
    from helpers_io import write_enhanced_multiframe

    path = write_enhanced_multiframe(tmp_path / "m.dcm", np.zeros((3, 4, 4), np.uint16), [(0, 0, 0)] * 3)
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence
    ds.save_as(path, enforce_file_format=True)
    (info,) = scan_dicom_folder(tmp_path)
    assert not info.loadable
    assert "multi-frame file without a position and orientation for every frame" in info.problems[-1]
    with pytest.raises(DicomSeriesError, match="expected images with ImagePositionPatient"):
        load_volume(tmp_path)


@pytest.mark.parametrize("syntax", ["native", "RLE", "JPEG-LS"])
@pytest.mark.parametrize(
    ("slope", "intercept", "dtype"),
    [(1.0, -1024.0, np.int16), (0.5, -10.25, np.float32), ([1, 2, 1, 1], [0, -1024, 5, 0], np.int16)],
    ids=["ct-intercept", "fractional", "per-slice"],
)
def test_modality_lut_is_the_same_for_every_transfer_syntax(tmp_path: Path, syntax: str, slope, intercept, dtype) -> None:
    """Same stored values and LUT, uncompressed or compressed: same voxels and type. (GDCM alone casts every slice to
    the first slice's type, so a per-slice intercept of -1024 wrapped around to 64512 in unsigned data.)"""
    from pydicom.uid import JPEGLSLossless, RLELossless

    stored = np.random.default_rng(0).integers(0, 3000, (4, 6, 7)).astype(np.uint16)
    paths = write_dicom_series(tmp_path, stored, slope=slope, intercept=intercept, signed=False)
    if syntax != "native":
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.compress(RLELossless if syntax == "RLE" else JPEGLSLossless, ds.pixel_array)
            ds.save_as(path, enforce_file_format=True)
    volume = load_volume(tmp_path)
    slopes = np.broadcast_to(np.asarray(slope, float), (4,)).reshape(-1, 1, 1)
    intercepts = np.broadcast_to(np.asarray(intercept, float), (4,)).reshape(-1, 1, 1)
    assert volume.array.dtype == dtype
    np.testing.assert_array_equal(volume.array, stored * slopes + intercepts)


def test_gantry_tilt_resampled_onto_an_orthogonal_grid_keeps_physical_positions(tmp_path: Path, capsys) -> None:
    """A 15 degree tilted CT stack of a sphere: after resampling, the sphere is where it is in the patient."""
    from MedAnalysisLib.cli import main

    tilt = np.radians(15)
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(tilt), -np.sin(tilt)])
    first = np.array([-25.0, -30.0, 0.0])
    positions = [first + [0.0, 0.0, 2.0 * k] for k in range(30)]  # the table moves along z
    centre, radius = np.array([0.0, 5.0, 30.0]), 8.0
    j, i = np.mgrid[:60, :50]
    pixels = np.stack(
        [np.where(np.linalg.norm(p + i[..., None] * row + j[..., None] * column - centre, axis=-1) < radius, 1000, 0) for p in positions]
    ).astype(np.int16)
    write_dicom_series(tmp_path / "tilted", pixels, row=row, column=column, positions=positions, spacing=(1.0, 1.0), intercept=0)
    volume = load_volume(tmp_path / "tilted", resample_tilt=True)
    np.testing.assert_allclose(volume.direction, np.column_stack([row, column, np.cross(row, column)]), atol=1e-7)
    assert volume.spacing[2] == pytest.approx(2.0 * np.cos(tilt), abs=1e-5)
    assert volume.shape[1] > 60 and volume.array.dtype == np.int16  # grown in j to hold every shifted slice
    bright = volume.index_to_physical(np.argwhere(volume.array > 500)[:, ::-1].astype(float))
    np.testing.assert_allclose(bright.mean(axis=0), centre, atol=0.3)
    assert np.linalg.norm(bright - centre, axis=1).max() < radius + 1.0
    # the untilted stack would put the sphere's centre mm away from where it is
    (info,) = scan_dicom_folder(tmp_path / "tilted")
    assert np.linalg.norm(np.array(info.tilt_shift)) * 15 > 2.0
    out = tmp_path / "fixed.nrrd"
    assert main(["convert", str(tmp_path / "tilted"), str(out), "--resample-tilt", "--progress", "none"]) == 0
    assert read_volume(out).shape == volume.shape
    capsys.readouterr()
