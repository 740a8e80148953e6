"""Benchmark: load a 300-slice 512x512 int16 CT series three ways, in the same run.

1. MedAnalysis ``load_dicom_series`` (header scan with pydicom, sort along the normal, all series checks, pixel read,
   modality LUT, finite check).
2. SimpleITK alone: ``ImageSeriesReader.GetGDCMSeriesFileNames`` (its own scan and sort) + ``Execute``, and
   ``Execute`` alone on a file list sorted beforehand.
3. pydicom read-and-stack: ``dcmread`` every file, sort by position along the normal, stack ``pixel_array``, apply
   the modality LUT.

The series is written once with SimpleITK's DICOM writer (per-slice position, orientation, instance number, UIDs) and
cached under ``bench/output/`` (git-ignored). Every loader's voxels are checked against the others before timing.

Usage::

    python bench/bench_dicom_load.py [--slices 300] [--size 512] [--repeats 5] [--out bench/output/ct_series]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_series(folder: Path, n_slices: int, size: int) -> None:
    """Write a synthetic CT (body ellipse, bone ring, noise; int16 HU) as one DICOM file per slice."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size].astype(np.float32)
    centre = (size - 1) / 2
    body = ((x - centre) / (0.42 * size)) ** 2 + ((y - centre) / (0.33 * size)) ** 2 <= 1
    ring = np.abs(np.hypot(x - centre, y - centre) - 0.2 * size) < 0.02 * size
    base = np.where(body, 40, -1000).astype(np.int16)
    base[ring] = 900
    series_uid = "1.2.826.0.1.3680043.8.498.4242.1"
    study_uid = "1.2.826.0.1.3680043.8.498.4242.2"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    spacing = (0.7, 0.7, 1.25)
    for k in range(n_slices):
        pixels = base + rng.normal(0, 12, size=(size, size)).astype(np.int16)
        image = sitk.GetImageFromArray(pixels[np.newaxis])  # a one-slice 3D image keeps the z position
        image.SetSpacing(spacing)
        image.SetOrigin((-180.0, -180.0, -200.0 + k * spacing[2]))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0060": "CT",
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0052": "1.2.826.0.1.3680043.8.498.4242.3",
            "0008|103e": "benchmark CT",
            "0020|0011": "1",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.GetOrigin()),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{spacing[2]}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        # file names in an order unrelated to position, as real exports often are
        writer.SetFileName(str(folder / f"IM{(k * 7919) % n_slices:05d}.dcm"))
        writer.Execute(image)


def load_medanalysis(folder: Path) -> np.ndarray:
    from MedAnalysisLib.io.dicom import load_dicom_series

    return load_dicom_series(folder).array


def load_sitk_with_scan(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def sitk_execute_only(files: list[str]) -> Callable[[Path], np.ndarray]:
    def run(_folder: Path) -> np.ndarray:
        import SimpleITK as sitk

        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        return sitk.GetArrayFromImage(reader.Execute())

    return run


def load_pydicom(folder: Path) -> np.ndarray:
    import pydicom

    datasets = [pydicom.dcmread(path) for path in folder.glob("*.dcm")]
    normal = np.cross(*np.array(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    datasets.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, dtype=float), normal)))
    return np.stack([pydicom.pixels.apply_modality_lut(d.pixel_array, d) for d in datasets])


def timed(function: Callable[[Path], np.ndarray], folder: Path, repeats: int) -> tuple[list[float], np.ndarray]:
    result = function(folder)  # warm-up: file cache, imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(folder)
        times.append(time.perf_counter() - start)
    return times, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "output" / "ct_series")
    args = parser.parse_args(argv)

    folder = args.out / f"ct_{args.slices}x{args.size}"
    if len(list(folder.glob("*.dcm"))) != args.slices:
        start = time.perf_counter()
        make_series(folder, args.slices, args.size)
        print(f"wrote {args.slices} slices of {args.size}x{args.size} to {folder} in {time.perf_counter() - start:.1f} s")

    from MedAnalysisLib.io.dicom import select_series

    sorted_files = list(select_series(folder).files)
    runs = {
        "MedAnalysis load_dicom_series (scan + checks + read + LUT)": load_medanalysis,
        "SimpleITK GetGDCMSeriesFileNames + ImageSeriesReader": load_sitk_with_scan,
        "SimpleITK ImageSeriesReader.Execute on a sorted list": sitk_execute_only(sorted_files),
        "pydicom dcmread + sort + stack + LUT": load_pydicom,
    }
    results = {}
    arrays = {}
    for name, function in runs.items():
        results[name], arrays[name] = timed(function, folder, args.repeats)
    reference = arrays["SimpleITK GetGDCMSeriesFileNames + ImageSeriesReader"]
    for name, array in arrays.items():
        if array.shape != reference.shape or not np.array_equal(array, reference):
            raise SystemExit(f"voxels differ between loaders: {name} gave {array.dtype} {array.shape}")

    voxels = args.slices * args.size * args.size
    print(f"\n{args.slices} slices x {args.size}x{args.size} int16 ({voxels * 2 / 2**20:.0f} MiB), "
          f"median of {args.repeats} warm runs (min in brackets)\n")
    print(f"{'loader':<60} {'seconds':>16} {'MB/s':>8}")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"{name:<60} {median:8.3f} ({min(times):.3f}) {voxels * 2 / 1e6 / median:8.0f}")
    ours = statistics.median(results["MedAnalysis load_dicom_series (scan + checks + read + LUT)"])
    sitk_full = statistics.median(results["SimpleITK GetGDCMSeriesFileNames + ImageSeriesReader"])
    sitk_read = statistics.median(results["SimpleITK ImageSeriesReader.Execute on a sorted list"])
    print(f"\nratio MedAnalysis / SimpleITK (scan + read): {ours / sitk_full:.2f}x (goal <= 1.2x)")
    print(f"ratio MedAnalysis / SimpleITK Execute alone: {ours / sitk_read:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
