"""Seeded phantom scans with anatomy-like structures: built-in data for the demo, tests and tutorials.

A phantom is a small MR-like 3D scan of a "body" (an elliptic cylinder of soft tissue in air) holding three labelled
structures of different shape, size, position and contrast:

====== ========== ==========================================================================================
value  name       shape and contrast
====== ========== ==========================================================================================
1      organ      a lobulated blob (smooth union of 3-5 ellipsoids), brighter than the surrounding tissue
2      vessel     a tube of 3-4.5 mm radius along a curved centre line, running through part of the slices, bright
3      lesion     a small tilted ellipsoid inside the organ, darker than the surrounding tissue; present in some scans only
====== ========== ==========================================================================================

On top of the structures come a smooth background texture, a smooth multiplicative bias field and Rician noise
(the magnitude of complex Gaussian noise, as in MR magnitude images); voxels are stored as int16.
The scans have anisotropic spacing and an oblique direction, so they exercise the geometry handling of the whole
pipeline. Every phantom also carries classification targets: per axial slice (along the k axis) whether each label is
present, and per scan whether it contains a lesion.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same voxels, and
:func:`write_phantom_dataset` writes byte-identical files for the same arguments. Only numpy is needed to make a
phantom; SimpleITK writes the files.

Example:
    >>> image, label, info = make_phantom(3)
    >>> image.shape, label.array.dtype, info["has_lesion"]
    ((40, 64, 64), dtype('uint8'), True)
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib.io.atomic import atomic_directory
from MedAnalysisLib.io.files import SIMPLEITK_IO_LOCK
from MedAnalysisLib.volume import Volume, check_direction, rotation_about_axis

#: The phantom dataset writer's signature in its ``dataset.json``; a phantom DICOM series holds only these slices.
PHANTOM_REFERENCE = "MedAnalysisLib.phantom.write_phantom_dataset"
_PHANTOM_SLICE = re.compile(r"slice_\d{3,}\.dcm")


def is_phantom_output(folder: Path) -> bool:
    """True for a folder the phantom writers made (and may therefore replace): a dataset whose ``dataset.json`` names
    the phantom writer, or a DICOM series of ``slice_NNN.dcm`` files only. Anything else is the user's."""
    try:
        names = {entry.name for entry in folder.iterdir()}
    except OSError:
        return False
    if names and all(_PHANTOM_SLICE.fullmatch(name) for name in names):
        return True
    if "dataset.json" not in names:
        return False
    from MedAnalysisLib.errors import InputError
    from MedAnalysisLib.io.small_files import read_json_file

    try:  # a regular file of bounded size only: a FIFO named dataset.json must not block the check
        data = read_json_file(folder / "dataset.json", "a dataset.json")
    except InputError:
        return False
    return isinstance(data, dict) and data.get("reference") == PHANTOM_REFERENCE

#: Label values and names of every phantom (0 is background).
PHANTOM_LABELS: dict[int, str] = {0: "background", 1: "organ", 2: "vessel", 3: "lesion"}
#: Label value of the lesion, the structure whose presence is the per-scan classification target.
LESION_LABEL = 3

#: Default grid: (k, j, i) voxels, (i, j, k) spacing in mm, direction (columns = i, j, k axes in LPS).
DEFAULT_SHAPE: tuple[int, int, int] = (40, 64, 64)
DEFAULT_SPACING: tuple[float, float, float] = (1.0, 1.0, 1.5)
DEFAULT_DIRECTION: np.ndarray = rotation_about_axis("z", 14.0) @ rotation_about_axis("x", -9.0)

#: Name of the classification manifest that :func:`write_phantom_dataset` writes beside ``dataset.json``.
MANIFEST_NAME = "classification.csv"
#: Name of the per-slice target table that :func:`write_phantom_dataset` writes.
SLICE_TABLE_NAME = "slices.csv"


def case_seed(seed: int, index: int) -> int:
    """The phantom seed of case ``index`` of a dataset generated with ``seed`` (independent streams per case)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def make_phantom(
    seed: int,
    *,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    direction: np.ndarray | Sequence[Sequence[float]] | None = None,
    lesion: bool | None = None,
) -> tuple[Volume, Volume, dict[str, Any]]:
    """Make one phantom scan, its label map and its classification targets.

    Structure sizes are fractions of the field of view, so small grids (for quick tests) hold the same anatomy at a
    coarser resolution. Shapes are defined in millimetres, so anisotropic spacing gives physically correct
    (not stretched) structures.

    Args:
        seed: Seed of every random choice (structure shapes, positions, contrasts, texture, bias field, noise).
        shape: Grid size in (k, j, i) order; each at least 8.
        spacing: Voxel size in mm in (i, j, k) order.
        direction: 3x3 orthonormal matrix whose columns are the i, j, k axes in LPS; default: an oblique
            direction (14 degrees about z, then -9 degrees about x).
        lesion: Whether the scan has a lesion; ``None`` draws it from the seed (probability one half).

    Returns:
        ``(image, label, info)``: ``image`` is an int16 Volume in arbitrary MR-like units (air about 5, soft
        tissue about 100); ``label`` a uint8 Volume on the same grid with the values of :data:`PHANTOM_LABELS`;
        ``info`` a JSON-safe dict with ``seed``, ``has_lesion`` (bool), ``scan_target`` (1 with a lesion, else 0),
        ``slice_labels`` (label name -> list of 0/1 per k slice: does slice k contain that label),
        ``slice_target`` (the lesion's list, the per-slice classification target), ``label_voxels`` and
        ``label_volume_mm3`` (per label name) and ``intensities`` (the mean intensity drawn for each tissue).

    Raises:
        ValueError: When ``shape`` or ``spacing`` is not three positive numbers or the grid is smaller than 8
            voxels along an axis.
        GeometryError: When ``direction`` is not orthonormal.
    """
    shape_kji = tuple(int(s) for s in shape)
    spacing_ijk = tuple(float(s) for s in spacing)
    if len(shape_kji) != 3 or min(shape_kji) < 8:
        raise ValueError(f"expected a (k, j, i) shape of three sizes >= 8, got {tuple(shape)}")
    if len(spacing_ijk) != 3 or not all(np.isfinite(spacing_ijk)) or min(spacing_ijk) <= 0:
        raise ValueError(f"expected three positive spacings in mm (i, j, k), got {tuple(spacing)}")
    direction_matrix = DEFAULT_DIRECTION.copy() if direction is None else np.asarray(direction, dtype=np.float64)
    check_direction(direction_matrix)

    rng = np.random.default_rng(seed)
    # Millimetre coordinates of voxel centres in the scan's own frame, centred on the grid centre: (k, j, i) arrays.
    size_ijk = np.array(shape_kji[::-1], dtype=np.float64)
    half_extent = (size_ijk - 1) * np.array(spacing_ijk) / 2  # (x, y, z) half field of view in mm
    axes = [np.arange(n) * s - h for n, s, h in zip(size_ijk.astype(int), spacing_ijk, half_extent, strict=True)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    points = (x, y, z)
    scale = float(min(half_extent[0], half_extent[1]))  # in-plane radius of the field of view, mm
    edge = 0.5 * min(spacing_ijk)  # width of the partial-volume edge, mm

    # Draw every random number in a fixed order so that one seed always means one phantom.
    body_axes = (half_extent[0] * rng.uniform(0.82, 0.92), half_extent[1] * rng.uniform(0.70, 0.82))
    organ_center = np.array([rng.uniform(-0.15, 0.15) * scale, rng.uniform(-0.12, 0.12) * scale,
                             rng.uniform(-0.15, 0.15) * half_extent[2]])
    organ_radius = scale * rng.uniform(0.40, 0.48)
    n_lobes = int(rng.integers(3, 6))
    lobes = [
        (
            organ_center + rng.normal(0.0, 0.42, 3) * organ_radius * np.array([1.0, 1.0, 0.8]),
            organ_radius * rng.uniform(0.55, 0.8, 3),
            rotation_about_axis("z", rng.uniform(0, 180)) @ rotation_about_axis("x", rng.uniform(-30, 30)),
        )
        for _ in range(n_lobes)
    ]
    vessel_radius = max(scale * rng.uniform(0.10, 0.14), 1.2 * max(spacing_ijk[:2]))
    vessel_side = rng.choice([-1.0, 1.0], size=2)
    vessel_offset = np.array([vessel_side[0] * rng.uniform(0.50, 0.62) * body_axes[0],
                              vessel_side[1] * rng.uniform(0.05, 0.35) * body_axes[1]])
    vessel_wave = rng.uniform(0.06, 0.14, 2) * scale, rng.uniform(0.5, 1.5, 2) * np.pi / half_extent[2], rng.uniform(0, 2 * np.pi, 2)
    # The tube starts and ends at random heights (beyond the grid means through the whole scan), so the
    # per-slice "contains vessel" target varies between scans.
    vessel_z_range = np.array([-rng.uniform(0.3, 1.2), rng.uniform(0.3, 1.2)]) * half_extent[2]
    # The lesion's parameters are drawn even without a lesion: one seed gives the same organ and vessel either way.
    has_lesion = bool(rng.random() < 0.5) if lesion is None else bool(lesion)
    lesion_axes = organ_radius * rng.uniform(0.40, 0.55, 3)
    lesion_rotation = rotation_about_axis("z", rng.uniform(0, 180)) @ rotation_about_axis("y", rng.uniform(-40, 40))
    lesion_offset = rng.normal(0.0, 1.0, 3)
    lesion_offset *= rng.uniform(0.0, 0.25) * organ_radius / max(np.linalg.norm(lesion_offset), 1e-9)
    intensities = {
        "air": float(rng.uniform(2.0, 8.0)),
        "tissue": float(rng.uniform(90.0, 110.0)),
    }
    intensities["organ"] = intensities["tissue"] + float(rng.uniform(45.0, 70.0))
    intensities["vessel"] = intensities["tissue"] + float(rng.uniform(110.0, 150.0))
    intensities["lesion"] = intensities["tissue"] - float(rng.uniform(35.0, 50.0))
    texture_amplitude = rng.uniform(4.0, 8.0)
    noise_sigma = rng.uniform(4.0, 7.0)
    bias_coefficients = rng.uniform(-0.12, 0.12, 4)

    # Signed distances (mm, negative inside) of each structure.
    body_sdf = (np.sqrt((x / body_axes[0]) ** 2 + (y / body_axes[1]) ** 2) - 1.0) * min(body_axes)
    organ_sdf = _smooth_union([_ellipsoid_sdf(points, c, a, r) for c, a, r in lobes], sharpness=0.35 * organ_radius)
    organ_sdf = np.maximum(organ_sdf, body_sdf + 2.0 * vessel_radius)  # the organ stays inside the body
    centre_x = vessel_offset[0] + vessel_wave[0][0] * np.sin(vessel_wave[1][0] * z + vessel_wave[2][0])
    centre_y = vessel_offset[1] + vessel_wave[0][1] * np.sin(vessel_wave[1][1] * z + vessel_wave[2][1])
    vessel_sdf = np.sqrt((x - centre_x) ** 2 + (y - centre_y) ** 2) - vessel_radius
    vessel_sdf = np.maximum(vessel_sdf, np.maximum(vessel_z_range[0] - z, z - vessel_z_range[1]))
    lesion_sdf = _ellipsoid_sdf(points, organ_center + lesion_offset, lesion_axes, lesion_rotation)
    lesion_sdf = np.maximum(lesion_sdf, organ_sdf + 1.5 * edge)  # strictly inside the organ

    label = np.zeros(shape_kji, dtype=np.uint8)
    label[organ_sdf < 0] = 1
    label[vessel_sdf < 0] = 2
    image = np.full(shape_kji, intensities["air"], dtype=np.float64)
    layers = [(body_sdf, "tissue"), (organ_sdf, "organ"), (vessel_sdf, "vessel")]
    if has_lesion:
        label[(lesion_sdf < 0) & (label == 1)] = LESION_LABEL
        layers.append((lesion_sdf, "lesion"))
    for sdf, tissue in layers:
        weight = _soft_inside(sdf, edge)
        image += (intensities[tissue] - image) * weight
    body_weight = _soft_inside(body_sdf, edge)
    image += texture_amplitude * _smooth_noise(rng, shape_kji, spacing_ijk, correlation_mm=0.25 * scale) * body_weight
    u, v, w = x / half_extent[0], y / half_extent[1], z / half_extent[2]
    bias = np.exp(bias_coefficients[0] * u + bias_coefficients[1] * v + bias_coefficients[2] * w
                  + bias_coefficients[3] * (u * u + v * v - 0.5))
    # Magnitude of complex Gaussian noise (Rician), as in MR magnitude images: never negative.
    image = np.hypot(image * bias + rng.normal(0.0, noise_sigma, shape_kji), rng.normal(0.0, noise_sigma, shape_kji))

    # Put the grid centre at the LPS origin; the direction rotates the scan about it.
    origin = -(direction_matrix @ (np.array(spacing_ijk) * (size_ijk - 1) / 2))
    geometry = {"spacing": spacing_ijk, "origin": tuple(float(o) for o in origin), "direction": direction_matrix}
    image_volume = Volume(np.rint(image).astype(np.int16), metadata={"Modality": "MR", "SeriesDescription": "phantom"},
                          **geometry)
    label_volume = Volume(label, **geometry)
    info = phantom_targets(label)
    info.update(
        seed=int(seed),
        intensities={k: round(v, 3) for k, v in intensities.items()},
        label_volume_mm3={
            name: float(info["label_voxels"][name] * np.prod(spacing_ijk)) for name in info["label_voxels"]
        },
    )
    return image_volume, label_volume, info


def phantom_targets(label: np.ndarray) -> dict[str, Any]:
    """Classification targets of a phantom label map (k, j, i): per-slice label presence and the scan target.

    Returns:
        ``has_lesion``, ``scan_target`` (0/1), ``slice_labels`` (name -> list of 0/1 per k slice),
        ``slice_target`` (the lesion's per-slice list) and ``label_voxels`` (name -> voxel count).
    """
    label = np.asarray(label)
    present = {
        name: [int(v) for v in np.any(label == value, axis=(1, 2))]
        for value, name in PHANTOM_LABELS.items()
        if value != 0
    }
    voxels = {name: int(np.count_nonzero(label == value)) for value, name in PHANTOM_LABELS.items() if value != 0}
    has_lesion = voxels[PHANTOM_LABELS[LESION_LABEL]] > 0
    return {
        "has_lesion": has_lesion,
        "scan_target": int(has_lesion),
        "slice_labels": present,
        "slice_target": present[PHANTOM_LABELS[LESION_LABEL]],
        "label_voxels": voxels,
    }


def write_phantom_dataset(
    out_dir: str | Path,
    n_cases: int,
    seed: int = 0,
    *,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    direction: np.ndarray | Sequence[Sequence[float]] | None = None,
) -> Path:
    """Write ``n_cases`` phantoms as a Medical Segmentation Decathlon folder plus classification tables.

    Layout of ``out_dir`` (replaced as a whole, atomically)::

        dataset.json            MSD description: labels, modality, training list
        imagesTr/phantom_000.nii.gz ...
        labelsTr/phantom_000.nii.gz ...
        lesionsTr/phantom_000.nii.gz ...   binary lesion masks (1 = lesion), all zero in scans without one
        classification.csv      case_id, image, label (the lesion mask), target (1 = the scan contains a lesion),
                                group, modality
        slices.csv              case_id, slice (k index), contains_organ, contains_vessel, contains_lesion
        phantoms.json           per case: seed and the info dict of :func:`make_phantom` (targets, volumes)

    Cases alternate lesion / no lesion (case 0 has one), so any split holds both scan classes. The
    classification manifest's label column names the lesion masks, so a slice-sequence classifier learns "this
    slice contains the lesion" per slice and "this scan contains a lesion" per scan. Paths in the CSV files are
    relative to ``out_dir``.

    Args:
        out_dir: Folder to create (its parent must be writable).
        n_cases: Number of scans, at least 1.
        seed: Dataset seed; case ``n`` is ``make_phantom(case_seed(seed, n), ...)``.
        shape, spacing, direction: Grid of every case, as in :func:`make_phantom`.

    Returns:
        ``out_dir`` as a Path.
    """
    import SimpleITK as sitk

    if int(n_cases) < 1:
        raise ValueError(f"expected at least one case, got n_cases={n_cases}")
    out_dir = Path(out_dir)
    training, manifest_rows, slice_rows, infos = [], [], [], {}
    with atomic_directory(out_dir, replaceable=is_phantom_output) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        (tmp / "lesionsTr").mkdir()
        for index in range(int(n_cases)):
            case_id = f"phantom_{index:03d}"
            image, label, info = make_phantom(
                case_seed(seed, index), shape=shape, spacing=spacing, direction=direction, lesion=index % 2 == 0
            )
            image_rel, label_rel = f"imagesTr/{case_id}.nii.gz", f"labelsTr/{case_id}.nii.gz"
            lesion_rel = f"lesionsTr/{case_id}.nii.gz"
            lesion_mask = label.with_array((label.array == LESION_LABEL).astype(np.uint8))
            for volume, relative in ((image, image_rel), (label, label_rel), (lesion_mask, lesion_rel)):
                with SIMPLEITK_IO_LOCK:
                    sitk.WriteImage(volume.to_sitk(), str(tmp / relative), useCompression=True)
            training.append({"image": f"./{image_rel}", "label": f"./{label_rel}"})
            manifest_rows.append([case_id, image_rel, lesion_rel, info["scan_target"], case_id, "MRI"])
            for k in range(image.shape[0]):
                slice_rows.append([case_id, k, *(info["slice_labels"][name][k] for name in ("organ", "vessel", "lesion"))])
            infos[case_id] = info
        description = {
            "name": "MedAnalysisPhantom",
            "description": "Seeded synthetic MR-like phantoms (organ, vessel, lesion) made by MedAnalysisLib.phantom",
            "reference": PHANTOM_REFERENCE,
            "licence": "CC0-1.0",
            "release": f"seed {int(seed)}",
            "tensorImageSize": "3D",
            "modality": {"0": "MRI"},
            "labels": {str(value): name for value, name in PHANTOM_LABELS.items()},
            "numTraining": int(n_cases),
            "numTest": 0,
            "training": training,
            "test": [],
        }
        (tmp / "dataset.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        (tmp / MANIFEST_NAME).write_text(
            _csv_text(["case_id", "image", "label", "target", "group", "modality"], manifest_rows), encoding="utf-8"
        )
        (tmp / SLICE_TABLE_NAME).write_text(
            _csv_text(["case_id", "slice", "contains_organ", "contains_vessel", "contains_lesion"], slice_rows),
            encoding="utf-8",
        )
        (tmp / "phantoms.json").write_text(json.dumps(infos, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir


def write_phantom_dicom(image: Volume, out_dir: str | Path, *, seed: int = 0, series_description: str = "phantom") -> Path:
    """Write a phantom image as a DICOM MR series (one file per axial slice), e.g. to try DICOM input and DICOM SEG.

    The files are MR Image Storage instances, explicit VR little endian, int16 pixels, with the image's exact
    geometry (ImageOrientationPatient from the i and j axes, ImagePositionPatient of every slice along k,
    PixelSpacing, SliceThickness). The patient is "Phantom^Demo", ID "PHANTOM"; UIDs are derived from ``seed`` and the
    series description, so the same arguments give byte-identical files. ``out_dir`` is replaced as a whole.

    Args:
        image: A 3D single-component Volume whose values fit int16 (a phantom image).
        out_dir: Folder to create; files are named ``slice_000.dcm``, ``slice_001.dcm``, ...
        seed: Seed of the UIDs.
        series_description: SeriesDescription; also part of the UID seed.

    Returns:
        ``out_dir`` as a Path.
    """
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    array = np.asarray(image.array)
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"expected a 3D integer (k, j, i) image, got shape {array.shape} and dtype {array.dtype}")
    if array.size and (array.min() < -32768 or array.max() > 32767):
        raise ValueError(f"expected values that fit int16, got the range [{array.min()}, {array.max()}]")

    def uid(*parts: object) -> str:
        return str(generate_uid(entropy_srcs=["MedAnalysisLib.phantom", str(int(seed)), series_description,
                                              *map(str, parts)]))

    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    row_axis, column_axis, slice_axis = image.direction[:, 0], image.direction[:, 1], image.direction[:, 2]
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, replaceable=is_phantom_output) as tmp:
        for k in range(array.shape[0]):
            sop_uid = uid("instance", k)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = DicomDataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.Modality, ds.SeriesDescription, ds.StudyDescription = "MR", series_description, "MedAnalysis phantom"
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Demo", "PHANTOM", "", "O"
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
            ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.AccessionNumber = "1", 1, k + 1, ""
            ds.ReferringPhysicianName, ds.Manufacturer = "", "MedAnalysis phantom"
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
            ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = 15.0, 500.0, 1
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_axis, *column_axis)]
            position = np.asarray(image.origin) + k * image.spacing[2] * slice_axis
            ds.ImagePositionPatient = [round(float(v), 6) for v in position]
            ds.SliceLocation = round(float(position @ np.cross(row_axis, column_axis)), 6)
            ds.PixelSpacing = [image.spacing[1], image.spacing[0]]  # rows (j), then columns (i)
            ds.SliceThickness = ds.SpacingBetweenSlices = image.spacing[2]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[2])
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope = 0, 1
            ds.PixelData = np.ascontiguousarray(array[k], dtype="<i2").tobytes()
            ds.save_as(tmp / f"slice_{k:03d}.dcm", enforce_file_format=True)
    return out_dir


# ---------------------------------------------------------------------- shape helpers
def _ellipsoid_sdf(
    points: tuple[np.ndarray, np.ndarray, np.ndarray], center: np.ndarray, semi_axes: np.ndarray, rotation: np.ndarray
) -> np.ndarray:
    """Approximate signed distance (mm) to a rotated ellipsoid; exact on the surface, scaled by the mean radius."""
    offsets = [p - c for p, c in zip(points, center, strict=True)]
    # Coordinates in the ellipsoid's own axes: rotation columns are its axes.
    local = [sum(rotation[row, col] * offsets[row] for row in range(3)) for col in range(3)]
    radius = np.sqrt(sum((q / a) ** 2 for q, a in zip(local, semi_axes, strict=True)))
    return (radius - 1.0) * float(np.mean(semi_axes))


def _smooth_union(distances: list[np.ndarray], sharpness: float) -> np.ndarray:
    """Smooth minimum of signed distances (log-sum-exp): merges lobes without creases."""
    stacked = np.stack(distances)
    low = stacked.min(axis=0)
    return low - sharpness * np.log(np.exp(-(stacked - low) / sharpness).sum(axis=0))


def _soft_inside(sdf: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume weight: 1 inside, 0 outside, a logistic ramp of ``width`` mm across the surface."""
    return 0.5 * (1.0 - np.tanh(sdf / width))


def _smooth_noise(
    rng: np.random.Generator, shape_kji: tuple[int, ...], spacing_ijk: tuple[float, ...], correlation_mm: float
) -> np.ndarray:
    """Unit-variance Gaussian random field with a Gaussian correlation of ``correlation_mm`` (FFT filtering)."""
    white = rng.normal(0.0, 1.0, shape_kji)
    frequencies = np.meshgrid(
        *(np.fft.fftfreq(n, d=s) for n, s in zip(shape_kji, spacing_ijk[::-1], strict=True)), indexing="ij", sparse=True
    )
    squared = sum(f * f for f in frequencies)
    field = np.fft.ifftn(np.fft.fftn(white) * np.exp(-2.0 * (np.pi * correlation_mm) ** 2 * squared)).real
    return field / max(float(field.std()), 1e-12)


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
