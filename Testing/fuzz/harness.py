"""Fuzz targets shared by the hypothesis tests and the atheris entry point.

Each target takes bytes (a mutated file), writes them where the reader expects a file, calls the public reader and
returns normally or raises. A *clean failure* is an exception in :data:`CLEAN_FAILURES`: a typed
:class:`~MedAnalysisLib.errors.MedAnalysisError` whose message says what was expected. Anything else that escapes
(``RuntimeError`` from SimpleITK, ``struct.error`` or ``KeyError`` from a parser, ``MemoryError``, a
``RecursionError``) is a bug in the reader: it must be fixed there, and the input kept as a regression fixture.

The seeds are small valid files built here with the real writers (SimpleITK, pydicom, the bundle code), so the
mutations start from something every parser accepts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from MedAnalysisLib.errors import MedAnalysisError

#: Exceptions that count as a clean refusal. Deliberately only our typed errors.
CLEAN_FAILURES: tuple[type[BaseException], ...] = (MedAnalysisError,)

#: Cap on what a fuzzed reader may allocate for voxels (the budget is checked from headers before reading).
FUZZ_MEMORY_BUDGET = 64 * 1024**2

_SEEDS: dict[str, bytes] = {}


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="medanalysis-fuzz-"))


# ------------------------------------------------------------------------------------------------------- seeds
def _small_volume(dtype: str = "int16") -> object:
    from MedAnalysisLib.volume import Volume, rotation_about_axis

    array = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 7).astype(dtype)
    return Volume(array, spacing=(0.9, 1.1, 2.0), origin=(-3.0, 4.5, 7.25),
                  direction=rotation_about_axis("z", 15.0))


def image_seed(suffix: str) -> bytes:
    """A valid 4x5x6 int16 image (oblique direction) written by SimpleITK, as bytes (``.nii``, ``.nrrd``, ...)."""
    key = f"image{suffix}"
    if key not in _SEEDS:
        from MedAnalysisLib.io import write_volume

        folder = _scratch()
        try:
            path = write_volume(_small_volume(), folder / f"seed{suffix}")  # type: ignore[arg-type]
            _SEEDS[key] = path.read_bytes()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return _SEEDS[key]


def detached_seed(suffix: str) -> bytes:
    """A valid detached header (``.nhdr`` or ``.mhd``) for :func:`detached_payload`, naming ``v.raw``."""
    key = f"detached{suffix}"
    if key not in _SEEDS:
        from MedAnalysisLib.io import write_volume

        folder = _scratch()
        try:
            path = write_volume(_small_volume(), folder / f"seed{suffix}", compress=False)  # type: ignore[arg-type]
            _SEEDS[key] = path.read_bytes().replace(b"seed.raw", b"v.raw")
            _SEEDS["detached.raw"] = (folder / "seed.raw").read_bytes()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return _SEEDS[key]


def detached_payload() -> bytes:
    """The raw voxels the detached seeds describe (4 slices of 5x6 int16)."""
    detached_seed(".nhdr")
    return _SEEDS["detached.raw"]


def dicom_seed(k: int = 0) -> bytes:
    """Slice ``k`` (0..2) of a valid 3-slice 6x5 CT series, as bytes (explicit VR little endian)."""
    key = f"dicom{k}"
    if key not in _SEEDS:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

        for index in range(3):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.900.{index + 1}"
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = "CT"
            ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.901"
            ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.902"
            ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.903"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.InstanceNumber = index + 1
            ds.ImagePositionPatient = [-10.0, 5.0, 2.5 * index]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [0.8, 0.7]
            ds.SliceThickness = 2.5
            ds.Rows, ds.Columns = 5, 6
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
            ds.PixelData = (np.arange(30, dtype="<i2") * (index + 1)).tobytes()
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            _SEEDS[f"dicom{index}"] = buffer.getvalue()
    return _SEEDS[key]


def bundle_json_seed() -> bytes:
    """A valid ``bundle.json`` (tiny 3D U-Net segmentation config; the weights hash is a well-formed dummy)."""
    if "bundle.json" not in _SEEDS:
        from MedAnalysisLib.bundles import BundleConfig, LabelInfo
        from MedAnalysisLib.preprocessing.plan import Plan

        plan = Plan(patch_size=(16, 16, 16), label_values=(0, 1), modality="MR", channel_names=("T1",))
        config = BundleConfig(
            name="fuzz", task="segmentation", family="unet3d",
            hparams={"n_classes": 2, "in_channels": 1, "patch_size": [16, 16, 16], "filters": [4, 8]},
            plan=plan, labels=(LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "organ", (200, 80, 60))),
            input={"channels": [{"name": "T1", "modality": "MR"}]},
            weights={"file": "model.weights.h5", "sha256": "0" * 64},
        )
        _SEEDS["bundle.json"] = config.to_json().encode()
    return _SEEDS["bundle.json"]


def bundle_zip_seed() -> bytes:
    """A valid .zip bundle layout (``bundle/bundle.json`` and a small HDF5-signature weights file)."""
    if "bundle.zip" not in _SEEDS:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("bundle/bundle.json", bundle_json_seed())
            archive.writestr("bundle/model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(200))
        _SEEDS["bundle.zip"] = buffer.getvalue()
    return _SEEDS["bundle.zip"]


# ----------------------------------------------------------------------------------------------------- targets
def _each(*steps: Callable[[], object]) -> None:
    """Run every step; clean failures are collected (the first is re-raised at the end), anything else escapes."""
    failures: list[BaseException] = []
    for step in steps:
        try:
            step()
        except CLEAN_FAILURES as error:
            failures.append(error)
    if failures:
        raise failures[0]


def read_image_bytes(data: bytes, suffix: str) -> None:
    """Write ``data`` as ``case<suffix>`` and read it as an image and as a label map."""
    from MedAnalysisLib.io import load_volume, read_header

    folder = _scratch()
    try:
        path = folder / f"case{suffix}"
        path.write_bytes(data)

        def as_image() -> None:
            volume = load_volume(path, memory_budget_bytes=FUZZ_MEMORY_BUDGET, allow_2d=True, allow_4d=True)
            assert volume.array.shape[:3] == volume.shape

        _each(
            lambda: read_header(path),
            as_image,
            lambda: load_volume(path, kind="label", memory_budget_bytes=FUZZ_MEMORY_BUDGET, allow_2d=True),
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


#: Byte that fills every file outside a detached header's folder: voxels holding a run of it were read from outside.
OUTSIDE_BYTE = b"\xa5"


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (AssertionError) instead of hanging when a reader blocks, as one that opened a FIFO would."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise AssertionError(f"a reader blocked for more than {seconds} s: it opened a FIFO or a device")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _detached_folder(folder: Path) -> tuple[Path, Path]:
    """Lay out ``folder/case`` with the data files a mutated header may name, and bait outside it.

    Inside: ``v.raw``, ``sub/v.raw``, slices ``s0.raw``..``s3.raw``, ``link.raw`` (a link to the outside file) and
    ``fifo.raw`` (a FIFO). Outside (``folder``): ``outside.raw`` and slices, all filled with :data:`OUTSIDE_BYTE`.
    """
    payload = detached_payload()
    case = folder / "case"
    (case / "sub").mkdir(parents=True)
    outside = folder / "outside.raw"
    outside.write_bytes(OUTSIDE_BYTE * len(payload))
    (case / "v.raw").write_bytes(payload)
    (case / "sub" / "v.raw").write_bytes(payload)
    step = len(payload) // 4
    for k in range(4):
        (case / f"s{k}.raw").write_bytes(payload[k * step : (k + 1) * step])
        (folder / f"s{k}.raw").write_bytes(OUTSIDE_BYTE * step)
    (case / "link.raw").symlink_to(outside)
    if hasattr(os, "mkfifo"):
        os.mkfifo(case / "fifo.raw")
    return case, outside


def read_detached_bytes(data: bytes, suffix: str) -> None:
    """Write ``data`` as a detached header (``.nhdr``/``.mhd``) beside real data files and outside bait, then read
    it. Besides a clean refusal, the only acceptable outcome is voxels that came from inside the header's folder."""
    from MedAnalysisLib.io import load_volume, read_header

    folder = _scratch()
    try:
        case, outside = _detached_folder(folder)
        header = case / f"h{suffix}"
        header.write_bytes(data.replace(b"{OUTSIDE}", os.fsencode(outside)))

        def header_only() -> None:
            with deadline(20):
                read_header(header, memory_budget_bytes=FUZZ_MEMORY_BUDGET)

        def as_image() -> None:
            with deadline(20):
                volume = load_volume(header, memory_budget_bytes=FUZZ_MEMORY_BUDGET, allow_2d=True, allow_4d=True)
            assert OUTSIDE_BYTE * 8 not in volume.array.tobytes(), "voxels were read from outside the header's folder"

        _each(header_only, as_image)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_dicom_bytes(data: bytes, slot: int = 1) -> None:
    """Replace slice ``slot`` of the seed series by ``data``; scan the folder and load the series."""
    from MedAnalysisLib.io import load_volume
    from MedAnalysisLib.io.dicom import scan_dicom_folder

    folder = _scratch()
    try:
        for k in range(3):
            (folder / f"s{k}.dcm").write_bytes(data if k == slot else dicom_seed(k))

        def scan() -> None:
            for info in scan_dicom_folder(folder):
                json.dumps(info.to_dict())
                info.describe()

        _each(
            scan,
            lambda: load_volume(folder, memory_budget_bytes=FUZZ_MEMORY_BUDGET),
            lambda: load_volume(folder / f"s{slot}.dcm", memory_budget_bytes=FUZZ_MEMORY_BUDGET, allow_2d=True),
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_bundle_json_bytes(data: bytes) -> None:
    """Parse ``data`` as ``bundle.json`` from a bundle folder (no weights are read)."""
    from MedAnalysisLib.bundles import read_bundle_config

    folder = _scratch()
    try:
        (folder / "bundle.json").write_bytes(data)
        config = read_bundle_config(folder)
        json.loads(config.to_json())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_bundle_zip_bytes(data: bytes) -> None:
    """Read ``data`` as a .zip bundle: its config, then a safe extraction (the model is not built)."""
    from MedAnalysisLib.bundles import read_bundle_config
    from MedAnalysisLib.safe_archive import safe_extract

    folder = _scratch()
    try:
        path = folder / "model.zip"
        path.write_bytes(data)

        def extract() -> None:
            target = safe_extract(path, folder / "out", max_total_bytes=FUZZ_MEMORY_BUDGET)
            root = target.resolve()
            for entry in target.rglob("*"):
                assert not entry.is_symlink() and root in entry.resolve().parents

        _each(lambda: read_bundle_config(path), extract)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


#: name -> (target taking bytes, seed bytes)
TARGETS: dict[str, tuple[Callable[[bytes], None], Callable[[], bytes]]] = {
    "nifti": (lambda d: read_image_bytes(d, ".nii"), lambda: image_seed(".nii")),
    "nifti_gz": (lambda d: read_image_bytes(d, ".nii.gz"), lambda: image_seed(".nii.gz")),
    "nrrd": (lambda d: read_image_bytes(d, ".nrrd"), lambda: image_seed(".nrrd")),
    "mha": (lambda d: read_image_bytes(d, ".mha"), lambda: image_seed(".mha")),
    "nrrd_detached": (lambda d: read_detached_bytes(d, ".nhdr"), lambda: detached_seed(".nhdr")),
    "mha_detached": (lambda d: read_detached_bytes(d, ".mhd"), lambda: detached_seed(".mhd")),
    "dicom": (read_dicom_bytes, lambda: dicom_seed(1)),
    "bundle_json": (read_bundle_json_bytes, bundle_json_seed),
    "bundle_zip": (read_bundle_zip_bytes, bundle_zip_seed),
}


def run_clean(target: Callable[[bytes], None], data: bytes) -> str:
    """Run ``target(data)``; return ``"ok"`` or the clean failure's type name; anything else propagates."""
    try:
        target(data)
    except CLEAN_FAILURES as error:
        message = str(error)
        if "expected" not in message:
            raise AssertionError(f"a typed error without 'expected ...': {type(error).__name__}: {message}") from error
        return type(error).__name__
    return "ok"


def reproduce(path: str | os.PathLike[str], target: str) -> str:
    """Run one saved crash input (for example from atheris) through a target: ``python -m ... reproduce``."""
    return run_clean(TARGETS[target][0], Path(path).read_bytes())
