"""Reading and writing image files (NIfTI, NRRD, MetaImage) with exact geometry.

Reading goes header first: the file is checked (exists, not empty, a format we read, payload as large as the header
declares, no sheared NIfTI affine), its header is parsed by SimpleITK without touching the pixels, the memory budget
and the dimensionality are checked, and only then are the pixels read. Voxels come back as a :class:`Volume` in
``(k, j, i)`` order with spacing/origin/direction in LPS millimetres.

Writing never copies metadata from the source (DICOM tags such as patient names never reach a NIfTI/NRRD header) and
is atomic: the file appears under its final name only when complete.

Supported suffixes: ``.nii``, ``.nii.gz``, ``.nrrd``, ``.seg.nrrd`` (a Slicer segmentation stored as one label
layer), ``.nhdr`` (+ detached data file), ``.mha``, ``.mhd`` (+ detached data file).
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import shutil
import struct
import tempfile
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from MedAnalysisLib.errors import GeometryError, ImageValidationError, UnreadableFileError
from MedAnalysisLib.io.atomic import atomic_path
from MedAnalysisLib.io.validate import check_finite, check_memory_budget, require_integer_labels
from MedAnalysisLib.volume import Volume, check_direction

#: Serialises SimpleITK/ITK file input and output across threads. ITK's image IO (NIfTI in particular) is not safe
#: to run from two Python threads at once: concurrent reads corrupted the heap ("double free or corruption") when
#: cases were read on worker threads. Resampling and other filters stay parallel; only file IO takes the lock.
SIMPLEITK_IO_LOCK = threading.RLock()

if TYPE_CHECKING:
    import SimpleITK as sitk

#: Suffix -> format name. Longer suffixes first, they are matched in this order.
FORMATS: dict[str, str] = {
    ".seg.nrrd": "nrrd",
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
}
_IMAGE_IO = {"nifti": "NiftiImageIO", "nrrd": "NrrdImageIO", "metaimage": "MetaImageIO"}
_DETACHED = (".nhdr", ".mhd")

#: Largest deviation from orthogonality (cosine between normalised affine columns) accepted in a NIfTI sform.
NIFTI_SHEAR_TOLERANCE = 1e-4


def image_suffix(path: str | os.PathLike[str]) -> str | None:
    """The recognised suffix of ``path`` (``".nii.gz"``, ``".seg.nrrd"``, ...) or None."""
    name = Path(path).name.lower()
    return next((suffix for suffix in FORMATS if name.endswith(suffix)), None)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has a suffix :func:`read_volume` reads."""
    return image_suffix(path) is not None


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without touching the pixels.

    Attributes:
        path: The file.
        format: ``"nifti"``, ``"nrrd"`` or ``"metaimage"``.
        dimension: Number of index axes (2, 3 or 4).
        size: Size along each index axis in ITK order ``(i, j, k[, t])``.
        n_components: Values per voxel (1 for scalar images).
        dtype: Numpy type of one component as SimpleITK will return it (after NIfTI scaling).
        spacing: Voxel size per axis in ITK order (mm for the spatial axes).
        origin: Position of the first voxel per axis (LPS mm for the spatial axes).
        direction: ``dimension x dimension`` matrix, columns are the index axes.
        metadata: Key/value pairs of the header that are not geometry (for example Slicer's ``Segment0_Name``).
    """

    path: Path
    format: str
    dimension: int
    size: tuple[int, ...]
    n_components: int
    dtype: np.dtype
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def array_shape(self) -> tuple[int, ...]:
        """Shape of the numpy array SimpleITK returns: reversed size, components last when more than one."""
        shape = tuple(reversed(self.size))
        return shape + ((self.n_components,) if self.n_components > 1 else ())

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.array_shape, dtype=object)) * self.dtype.itemsize


# ---------------------------------------------------------------------------------------------------- file checks
def _check_file(path: Path) -> int:
    if not path.exists():
        raise UnreadableFileError(f"expected an image file, got no file at {path}")
    if not path.is_file():
        raise UnreadableFileError(f"expected an image file, got a folder or special file at {path}")
    size = path.stat().st_size
    if size == 0:
        raise UnreadableFileError(f"expected an image file, got an empty file (0 bytes): {path.name}")
    return size


def _format_of(path: Path) -> tuple[str, str]:
    suffix = image_suffix(path)
    if suffix is None:
        raise UnreadableFileError(
            f"expected a file ending in {', '.join(FORMATS)}, got {path.name!r}; DICOM goes through load_volume or "
            "load_dicom_series"
        )
    return suffix, FORMATS[suffix]


def _truncated(path: Path, expected: int, found: int, what: str) -> UnreadableFileError:
    return UnreadableFileError(
        f"expected at least {expected} bytes of {what} in {path.name} (as its header declares), got {found}: the "
        "file is truncated or its header is wrong"
    )


_NIFTI_BITPIX_OK = {1, 8, 16, 24, 32, 64, 128, 256}
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


class _NiftiLayout(NamedTuple):
    """Where and how a NIfTI file stores its voxels (from the header, before SimpleITK sees the file)."""

    dims: tuple[int, ...]
    datatype: int
    endian: str
    vox_offset: int
    slope: float
    inter: float
    compressed: bool


def _read_prefix(path: Path, n: int, compressed: bool) -> bytes:
    try:
        if compressed:
            with gzip.open(path, "rb") as stream:
                return stream.read(n)
        with path.open("rb") as stream:
            return stream.read(n)
    except (OSError, EOFError, zlib.error) as error:
        raise UnreadableFileError(f"expected a gzip-compressed file, got unreadable data in {path.name}: {error}") from error


def _gzip_payload_at_least(path: Path, needed: int) -> int:
    """Decompressed length of a gzip file, counting only up to ``needed`` bytes (nothing is kept in memory)."""
    with path.open("rb") as handle:
        trailer_ok = False
        try:
            handle.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", handle.read(4))[0]
            trailer_ok = isize == needed % 2**32
        except OSError:
            pass
    if trailer_ok:
        return needed
    count = 0
    try:
        with gzip.open(path, "rb") as stream:
            while count < needed:
                chunk = stream.read(min(1 << 22, needed - count))
                if not chunk:
                    break
                count += len(chunk)
    except (OSError, EOFError, zlib.error) as error:
        raise UnreadableFileError(
            f"expected a complete gzip stream in {path.name}, got a damaged or truncated one after {count} "
            f"decompressed bytes of the {needed} its header declares ({error})"
        ) from error
    return count


def _check_nifti(path: Path, file_size: int, compressed: bool) -> _NiftiLayout:
    """Check a NIfTI-1/2 header against the file before SimpleITK allocates anything; refuse a sheared sform."""
    raw = _read_prefix(path, 540, compressed)
    if len(raw) < 348:
        raise UnreadableFileError(f"expected a NIfTI header of 348 bytes, got {len(raw)} bytes in {path.name}")
    for endian in ("<", ">"):
        sizeof_hdr = struct.unpack(endian + "i", raw[:4])[0]
        if sizeof_hdr in (348, 540):
            break
    else:
        raise UnreadableFileError(
            f"expected a NIfTI file (header size field 348 or 540), got {struct.unpack('<i', raw[:4])[0]} in "
            f"{path.name}: not a NIfTI file"
        )
    if sizeof_hdr == 348:
        dims = struct.unpack(endian + "8h", raw[40:56])
        datatype = struct.unpack(endian + "h", raw[70:72])[0]
        bitpix = struct.unpack(endian + "h", raw[72:74])[0]
        vox_offset_float = struct.unpack(endian + "f", raw[108:112])[0]
        if not np.isfinite(vox_offset_float) or not 0 <= vox_offset_float < 2**62:
            raise UnreadableFileError(f"expected a finite, non-negative NIfTI vox_offset, got {vox_offset_float} in {path.name}")
        vox_offset = int(vox_offset_float)
        slope, inter = struct.unpack(endian + "2f", raw[112:120])
        sform_code = struct.unpack(endian + "h", raw[254:256])[0]
        srows = struct.unpack(endian + "12f", raw[280:328])
        magic = raw[344:348]
    else:
        if len(raw) < 540:
            raise UnreadableFileError(f"expected a NIfTI-2 header of 540 bytes, got {len(raw)} in {path.name}")
        dims = struct.unpack(endian + "8q", raw[16:80])
        datatype = struct.unpack(endian + "h", raw[12:14])[0]
        bitpix = struct.unpack(endian + "h", raw[14:16])[0]
        vox_offset = struct.unpack(endian + "q", raw[168:176])[0]
        slope, inter = struct.unpack(endian + "2d", raw[176:192])
        sform_code = struct.unpack(endian + "i", raw[348:352])[0]
        srows = struct.unpack(endian + "12d", raw[400:496])
        magic = raw[4:8]
    if not magic.startswith((b"n+1", b"n+2")):
        raise UnreadableFileError(
            f"expected a single-file NIfTI (magic 'n+1' or 'n+2'), got {magic!r} in {path.name}"
        )
    n_dims = dims[0]
    if not 1 <= n_dims <= 7 or any(d < 1 for d in dims[1 : n_dims + 1]):
        raise UnreadableFileError(f"expected 1 to 7 positive NIfTI dimensions, got dim={list(dims)} in {path.name}")
    if bitpix not in _NIFTI_BITPIX_OK:
        raise UnreadableFileError(f"expected a NIfTI bitpix of 8 to 256, got {bitpix} in {path.name}")
    n_voxels = int(np.prod([int(d) for d in dims[1 : n_dims + 1]], dtype=object))
    needed = max(vox_offset, 348) + n_voxels * bitpix // 8
    found = _gzip_payload_at_least(path, needed) if compressed else file_size
    if found < needed:
        raise _truncated(path, needed, found, f"header and voxels ({'x'.join(str(d) for d in dims[1:n_dims + 1])})")
    if sform_code > 0:
        matrix = np.array(srows, dtype=np.float64).reshape(3, 4)[:, :3]
        norms = np.linalg.norm(matrix, axis=0)
        if np.any(norms == 0) or not np.all(np.isfinite(matrix)):
            raise GeometryError(f"expected a NIfTI sform with three non-zero finite axes, got {matrix.tolist()}")
        cosines = (matrix / norms).T @ (matrix / norms) - np.eye(3)
        worst = float(np.abs(cosines).max())
        if worst > NIFTI_SHEAR_TOLERANCE:
            angle = float(np.degrees(np.arcsin(min(worst, 1.0))))
            raise GeometryError(
                f"expected a NIfTI sform without shear (orthogonal voxel axes), got axes that deviate from "
                f"orthogonal by {angle:.3g} degrees in {path.name} (sform {np.round(matrix, 6).tolist()}); ITK and "
                "Slicer cannot represent a sheared grid, so the image is refused rather than silently re-gridded"
            )
    return _NiftiLayout(
        dims=tuple(int(d) for d in dims[1 : n_dims + 1]),
        datatype=int(datatype),
        endian=endian,
        vox_offset=max(int(vox_offset), 348),
        # A non-finite scl_slope counts as 1 and a non-finite scl_inter as 0 (nibabel writes NaN for unused factors),
        # which is how ITK reads integer voxels: float voxels read directly must follow the same rule.
        slope=float(slope) if np.isfinite(slope) else 1.0,
        inter=float(inter) if np.isfinite(inter) else 0.0,
        compressed=compressed,
    )


def _read_nifti_floats(path: Path, layout: _NiftiLayout, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Read float NIfTI voxels directly, because the NIfTI library under SimpleITK silently turns NaN/Inf into 0.

    Returns the array with ``shape`` (numpy order, trailing unit NIfTI dimensions dropped as SimpleITK drops them)
    and the NIfTI scaling applied as ITK applies it.
    """
    out = np.empty(shape, dtype=layout.endian + _NIFTI_FLOATS[layout.datatype])
    opener = gzip.open if layout.compressed else open
    try:
        with opener(path, "rb") as stream:  # type: ignore[operator]
            stream.seek(layout.vox_offset)
            got = stream.readinto(memoryview(out).cast("B"))
    except (OSError, EOFError, zlib.error) as error:
        raise UnreadableFileError(f"expected complete voxel data in {path.name}, got a read error: {error}") from error
    if got != out.nbytes:
        raise _truncated(path, out.nbytes, got, "voxels")
    if layout.endian == ">":
        out = out.astype(out.dtype.newbyteorder("="))
    if layout.slope not in (0.0, 1.0) or (layout.slope != 0.0 and layout.inter != 0.0):
        out = out.astype(np.float64) * layout.slope + layout.inter  # in double, then cast, as ITK does
    return out.astype(dtype, copy=False)


_NRRD_TYPES = {
    **dict.fromkeys(("signed char", "int8", "int8_t"), 1),
    **dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), 2),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t"), 4),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"), 8),
    **dict.fromkeys(("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), 8),
    "float": 4,
    "double": 8,
}
_MET_TYPES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4, "MET_LONG": 4,
    "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def _header_lines(path: Path, limit: int = 1 << 16) -> tuple[list[str], int]:
    """Text lines of a NRRD/MetaImage header and the byte offset where the payload starts."""
    with path.open("rb") as handle:
        head = handle.read(limit)
    lines, offset = [], 0
    for raw_line in head.split(b"\n"):
        offset += len(raw_line) + 1
        text = raw_line.decode("latin-1").rstrip("\r")
        if path.suffix.lower() in (".nrrd", ".nhdr") and text == "" and lines:
            return lines, offset
        lines.append(text)
        if text.replace(" ", "").startswith("ElementDataFile="):
            return lines, offset
    return lines, len(head)


def _numbers(fields: dict[str, str], key: str, count: int | None, path: Path, integer: bool = False) -> list[float]:
    text = fields[key].split()
    try:
        values = [int(t) if integer else float(t) for t in text]
    except ValueError as error:
        raise UnreadableFileError(f"expected numbers for {key} in {path.name}, got {fields[key][:60]!r}") from error
    if count is not None and len(values) != count:
        raise UnreadableFileError(f"expected {count} value(s) for {key} in {path.name}, got {len(values)}")
    if any(not math.isfinite(v) if isinstance(v, float) else abs(v) > 2**53 for v in values):
        raise UnreadableFileError(f"expected finite values for {key} in {path.name}, got {fields[key][:60]!r}")
    return values


def _check_metaimage_fields(fields: dict[str, str], path: Path) -> None:
    """Validate the MetaImage header before MetaIO parses it: some malformed headers crash it (for example a huge
    NDims), which no exception handler can catch."""
    if "elementdatafile" not in fields:
        raise UnreadableFileError(f"expected a MetaImage header with ElementDataFile, got none in {path.name}")
    if "ndims" not in fields:
        raise UnreadableFileError(f"expected a MetaImage header with NDims, got none in {path.name}")
    (n_dims,) = _numbers(fields, "ndims", 1, path, integer=True)
    if not 2 <= n_dims <= 4:
        raise UnreadableFileError(f"expected a MetaImage with NDims 2 to 4, got {n_dims} in {path.name}")
    n = int(n_dims)
    if "dimsize" not in fields:
        raise UnreadableFileError(f"expected a MetaImage header with DimSize, got none in {path.name}")
    sizes = _numbers(fields, "dimsize", n, path, integer=True)
    if any(not 1 <= size < 2**31 for size in sizes):
        raise UnreadableFileError(f"expected DimSize values from 1 to 2^31-1, got {fields['dimsize']!r} in {path.name}")
    for key, count in (("elementspacing", n), ("elementsize", n), ("offset", n), ("position", n), ("origin", n),
                       ("centerofrotation", n), ("transformmatrix", n * n), ("rotation", n * n), ("orientation", n * n)):
        if key in fields:
            _numbers(fields, key, count, path)
    for key, low, high in (("elementnumberofchannels", 1, 4096), ("compresseddatasize", 0, 2**62), ("headersize", -1, 2**40)):
        if key in fields:
            (value,) = _numbers(fields, key, 1, path, integer=True)
            if not low <= value <= high:
                raise UnreadableFileError(f"expected {key} from {low} to {high}, got {value} in {path.name}")
    if fields.get("elementtype", "").upper() not in _MET_TYPES:
        raise UnreadableFileError(
            f"expected a MetaImage ElementType such as MET_SHORT or MET_FLOAT, got {fields.get('elementtype', '')[:30]!r} "
            f"in {path.name}"
        )
    for key in ("binarydata", "binarydatabyteordermsb", "elementbyteordermsb", "compresseddata"):
        if key in fields and fields[key].lower() not in ("true", "false"):
            raise UnreadableFileError(f"expected True or False for {key} in {path.name}, got {fields[key][:30]!r}")


def _check_raw_payload(path: Path, file_size: int, fmt: str) -> None:
    """For uncompressed NRRD/MetaImage, check the data is as large as the header declares."""
    lines, offset = _header_lines(path)
    if fmt == "nrrd":
        if not lines or not lines[0].startswith("NRRD"):
            raise UnreadableFileError(f"expected a NRRD file starting with 'NRRD000x', got {lines[:1]!r} in {path.name}")
        fields = {}
        for line in lines[1:]:
            if ": " in line and not line.startswith("#") and ":=" not in line:
                key, value = line.split(": ", 1)
                fields[key.strip().lower()] = value.strip()
        encoding = fields.get("encoding", "raw").lower()
        type_size = _NRRD_TYPES.get(fields.get("type", "").lower())
        sizes_text = fields.get("sizes", "").split()
        data_file = fields.get("data file", fields.get("datafile"))
        skip = "byte skip" in fields or "line skip" in fields or "byteskip" in fields or "lineskip" in fields
    else:
        fields = {}
        for line in lines:
            if "=" in line:
                key, value = line.split("=", 1)
                fields[key.strip().lower()] = value.strip()
        _check_metaimage_fields(fields, path)
        encoding = "gzip" if fields.get("compresseddata", "false").lower() == "true" else "raw"
        type_size = _MET_TYPES.get(fields.get("elementtype", "").upper())
        channels = fields.get("elementnumberofchannels", "1")
        sizes_text = fields.get("dimsize", "").split() + ([channels] if channels != "1" else [])
        data_file = None if fields["elementdatafile"].upper() == "LOCAL" else fields["elementdatafile"]
        skip = int(fields.get("headersize", "0") or 0) != 0
    try:
        sizes = [int(s) for s in sizes_text]
    except ValueError as error:
        raise UnreadableFileError(f"expected integer image sizes, got {sizes_text} in {path.name}") from error
    if not sizes or any(s < 1 for s in sizes):
        raise UnreadableFileError(f"expected positive image sizes in the header, got {sizes_text} in {path.name}")
    if encoding != "raw" or type_size is None or skip:
        return  # compressed or unusual layouts: the memory budget guards allocation, SimpleITK detects truncation
    needed = int(np.prod(sizes, dtype=object)) * type_size
    if data_file is None:
        found = file_size - offset
    else:
        if any(token in data_file for token in ("%", "LIST")) or " " in data_file:
            return
        data_path = path.parent / data_file
        if not data_path.is_file():
            raise UnreadableFileError(f"expected the data file {data_file} beside {path.name}, got none")
        found = data_path.stat().st_size
    if found < needed:
        raise _truncated(path, needed, max(found, 0), f"voxel data ({'x'.join(map(str, sizes))})")


# ---------------------------------------------------------------------------------------------------- header
def _pixel_dtypes() -> dict[int, np.dtype]:
    import SimpleITK as sitk

    table = {}
    for name in ("UInt8", "Int8", "UInt16", "Int16", "UInt32", "Int32", "UInt64", "Int64", "Float32", "Float64"):
        for prefix in ("sitk", "sitkVector"):
            table[getattr(sitk, prefix + name)] = np.dtype(name.lower())
    return table


def _open(path: str | os.PathLike[str]) -> tuple[ImageHeader, sitk.ImageFileReader, _NiftiLayout | None]:
    import SimpleITK as sitk

    path = Path(path)
    file_size = _check_file(path)
    suffix, fmt = _format_of(path)
    layout = None
    if fmt == "nifti":
        layout = _check_nifti(path, file_size, compressed=suffix == ".nii.gz")
    else:
        _check_raw_payload(path, file_size, fmt)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(_IMAGE_IO[fmt])
    reader.SetFileName(str(path))
    try:
        with SIMPLEITK_IO_LOCK:
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise UnreadableFileError(
            f"expected a readable {fmt} header in {path.name}, got one SimpleITK cannot parse: {_short(error)}"
        ) from error
    dtype = _pixel_dtypes().get(reader.GetPixelID())
    if dtype is None:
        raise ImageValidationError(
            f"expected integer or real voxels, got pixel type {sitk.GetPixelIDValueAsString(reader.GetPixelID())} "
            f"in {path.name}"
        )
    dimension = reader.GetDimension()
    direction = np.array(reader.GetDirection(), dtype=np.float64).reshape(dimension, dimension)
    metadata = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys() if key.startswith(("Segment", "Segmentation_"))}
    header = ImageHeader(
        path=path,
        format=fmt,
        dimension=dimension,
        size=tuple(int(s) for s in reader.GetSize()),
        n_components=int(reader.GetNumberOfComponents()),
        dtype=dtype,
        spacing=tuple(float(s) for s in reader.GetSpacing()),
        origin=tuple(float(o) for o in reader.GetOrigin()),
        direction=direction,
        metadata=metadata,
    )
    return header, reader, layout


def _short(error: BaseException) -> str:
    """The informative last line of an ITK exception (they start with source file paths and line numbers)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def read_header(path: str | os.PathLike[str]) -> ImageHeader:
    """Read and check an image file's header without reading its pixels.

    Raises:
        UnreadableFileError: Missing, empty, unsupported, truncated (payload smaller than declared) or unparsable.
        GeometryError: A sheared NIfTI sform.
        ImageValidationError: Complex or otherwise unsupported pixel types.
    """
    return _open(path)[0]


# ---------------------------------------------------------------------------------------------------- reading
def _spatial_direction(header: ImageHeader) -> np.ndarray:
    direction = header.direction
    if header.dimension == 2:
        full = np.eye(3)
        full[:2, :2] = direction
        return full
    spatial = direction[:3, :3]
    if header.dimension == 4 and (np.abs(direction[:3, 3]).max() > 1e-6 or np.abs(direction[3, :3]).max() > 1e-6):
        raise GeometryError(
            f"expected a 4D image whose fourth axis is not mixed with space, got direction {direction.tolist()} in "
            f"{header.path.name}"
        )
    return spatial


def _parse_segments(metadata: dict[str, str]) -> list[dict[str, Any]]:
    """Slicer ``.seg.nrrd`` segment keys -> ``[{"id", "name", "label_value", "layer", "color"}, ...]``."""
    segments = []
    index = 0
    while f"Segment{index}_ID" in metadata or f"Segment{index}_Name" in metadata:
        prefix = f"Segment{index}_"
        try:
            color = tuple(float(c) for c in metadata.get(prefix + "Color", "0.5 0.5 0.5").split())
            segments.append(
                {
                    "id": metadata.get(prefix + "ID", f"Segment_{index + 1}"),
                    "name": metadata.get(prefix + "Name", f"Segment_{index + 1}"),
                    "label_value": int(metadata.get(prefix + "LabelValue", index + 1)),
                    "layer": int(metadata.get(prefix + "Layer", 0)),
                    "color": color,
                }
            )
        except ValueError as error:
            raise ImageValidationError(
                f"expected numeric Segment{index}_Color/LabelValue/Layer in the .seg.nrrd header, got {error}"
            ) from error
        index += 1
    return segments


def read_volume(
    path: str | os.PathLike[str],
    *,
    kind: Literal["image", "label"] = "image",
    memory_budget_bytes: int | None = None,
    allow_4d: bool = False,
    allow_2d: bool = False,
) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file into a :class:`Volume` (header checked before any pixel is read).

    Args:
        path: ``.nii``, ``.nii.gz``, ``.nrrd``, ``.seg.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file.
        kind: ``"image"`` refuses NaN/Inf voxels; ``"label"`` requires one integer class value per voxel and
            returns an integer array (float labels with whole values are converted, 0.5 is refused).
        memory_budget_bytes: Largest array allowed, checked from the header; ``None`` = half the physical memory.
        allow_4d: Read a 4D image (i, j, k, t) as a multi-component volume ``(k, j, i, t)``; refused otherwise.
        allow_2d: Read a 2D image as a one-slice volume ``(1, j, i)`` with 1 mm slice spacing; refused otherwise.

    Returns:
        Volume with voxels ``(k, j, i)`` (or ``(k, j, i, c)`` for vector images), spacing/origin in mm, LPS
        direction. ``metadata`` holds ``source_format`` and, for ``.seg.nrrd``, ``segments`` (id, name,
        label_value, layer, color 0..1).

    Raises:
        UnreadableFileError, GeometryError, ImageValidationError, MemoryBudgetError: see :func:`read_header`;
            2D/4D without permission, NaN/Inf, non-integer labels; an image larger than the budget.
    """
    import SimpleITK as sitk

    header, reader, layout = _open(path)
    name = header.path.name
    if header.dimension == 2 and not allow_2d:
        raise ImageValidationError(
            f"expected a 3D image, got a 2D image of size {header.size} in {name}; pass allow_2d=True to read it as a "
            "one-slice volume"
        )
    if header.dimension == 4:
        if not allow_4d:
            raise ImageValidationError(
                f"expected a 3D image, got a 4D image of size {header.size} (i, j, k, t) in {name}; pass "
                "allow_4d=True to read the fourth axis as components (k, j, i, t)"
            )
        if header.n_components > 1:
            raise ImageValidationError(
                f"expected a 4D image with one value per voxel, got {header.n_components} components in {name}"
            )
    if header.dimension not in (2, 3, 4):
        raise ImageValidationError(f"expected a 2D, 3D or 4D image, got {header.dimension}D in {name}")
    if kind == "label" and (header.n_components > 1 or header.dimension == 4):
        raise ImageValidationError(
            f"expected a label map with one value per voxel, got {max(header.n_components, header.size[-1])} values "
            f"per voxel in {name} (a multi-layer segmentation or a vector image)"
        )
    check_memory_budget(header.array_shape, header.dtype, memory_budget_bytes)
    direction = _spatial_direction(header)
    check_direction(direction)
    if (
        layout is not None
        and layout.datatype in _NIFTI_FLOATS
        and int(np.prod(layout.dims)) == int(np.prod(header.size)) * header.n_components
    ):
        # NIfTI stores vector components as the slowest axis (dim[5]); Volume keeps them last
        shape = ((header.n_components,) if header.n_components > 1 else ()) + tuple(reversed(header.size))
        array = _read_nifti_floats(header.path, layout, header.dtype, shape=shape)
        if header.n_components > 1:
            array = np.moveaxis(array, 0, -1)
    else:
        try:
            with SIMPLEITK_IO_LOCK:
                image = reader.Execute()
        except RuntimeError as error:
            raise UnreadableFileError(
                f"expected complete voxel data in {name}, got a read error: {_short(error)}"
            ) from error
        array = sitk.GetArrayFromImage(image)
    if header.dimension == 2:
        array = array[np.newaxis]
        spacing = (*header.spacing, 1.0)
        origin = (*header.origin, 0.0)
    elif header.dimension == 4:
        array = np.moveaxis(array, 0, -1)
        spacing, origin = header.spacing[:3], header.origin[:3]
    else:
        spacing, origin = header.spacing, header.origin
    metadata: dict[str, Any] = {"source_format": header.format}
    segments = _parse_segments(header.metadata)
    if segments:
        metadata["segments"] = segments
    volume = Volume(array, spacing=spacing, origin=origin, direction=direction, metadata=metadata)  # type: ignore[arg-type]
    if kind == "label":
        return require_integer_labels(volume, what=f"label map {name}")
    if kind != "image":
        raise ValueError(f"expected kind 'image' or 'label', got {kind!r}")
    check_finite(volume, what=f"image {name}")
    return volume


# ---------------------------------------------------------------------------------------------------- writing
_SITK_WRITABLE = {np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")}


def _color_0_1(color: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(color)
    if len(values) != 3:
        raise ImageValidationError(f"expected a segment color (r, g, b), got {values!r}")
    if all(isinstance(v, (int, np.integer)) for v in values):
        if not all(0 <= v <= 255 for v in values):
            raise ImageValidationError(f"expected integer colors in 0..255, got {values!r}")
        return tuple(v / 255.0 for v in values)  # type: ignore[return-value]
    if not all(0.0 <= float(v) <= 1.0 for v in values):
        raise ImageValidationError(f"expected float colors in 0..1 (or integers 0..255), got {values!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def segment_metadata(array: np.ndarray, segments: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Slicer ``.seg.nrrd`` header keys for a single-layer label map.

    Args:
        array: Label map ``(k, j, i)``, integer.
        segments: One dict per segment with ``label_value`` (int > 0), ``name``, optional ``color`` ((r, g, b) as
            integers 0..255 or floats 0..1), ``id`` and ``terminology`` (Slicer ``TerminologyEntry`` string).

    Returns:
        ``Segment{N}_ID/_Name/_Color/_LabelValue/_Layer/_Extent/_Tags`` plus the ``Segmentation_*`` keys.
        ``_Extent`` is the inclusive bounding box ``i0 i1 j0 j1 k0 k1`` of the segment's voxels.
    """
    keys = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    seen: set[int] = set()
    for index, segment in enumerate(segments):
        try:
            value = int(segment["label_value"])
            name = str(segment["name"])
        except (KeyError, TypeError, ValueError) as error:
            raise ImageValidationError(
                f"expected each segment to have an integer 'label_value' and a 'name', got {segment!r}"
            ) from error
        if value <= 0 or value in seen:
            raise ImageValidationError(f"expected unique positive segment label values, got {value} for {name!r}")
        seen.add(value)
        if any(c in name for c in "\n\r|"):
            raise ImageValidationError(f"expected a segment name without newlines or '|', got {name!r}")
        mask = array == value
        if mask.any():
            extent = []
            for axis in (2, 1, 0):  # i, j, k
                present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
                extent += [int(present[0]), int(present[-1])]
        else:
            extent = [0, -1, 0, -1, 0, -1]
        r, g, b = _color_0_1(segment.get("color", (128, 128, 128)))
        prefix = f"Segment{index}_"
        keys[prefix + "ID"] = str(segment.get("id", f"Segment_{value}"))
        keys[prefix + "Name"] = name
        keys[prefix + "NameAutoGenerated"] = "0"
        keys[prefix + "Color"] = f"{r:.6g} {g:.6g} {b:.6g}"
        keys[prefix + "ColorAutoGenerated"] = "0"
        keys[prefix + "LabelValue"] = str(value)
        keys[prefix + "Layer"] = "0"
        keys[prefix + "Extent"] = " ".join(str(e) for e in extent)
        tags = "Segmentation.Status:inprogress|"
        if segment.get("terminology"):
            tags += f"TerminologyEntry:{segment['terminology']}|"
        keys[prefix + "Tags"] = tags
    return keys


@contextlib.contextmanager
def _atomic_detached(target: Path):  # type: ignore[no-untyped-def]
    """Like :func:`atomic_path` for header + data-file formats: data files are moved into place before the header."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield folder / target.name
        for produced in sorted(folder.iterdir(), key=lambda p: p.name == target.name):
            os.replace(produced, target.parent / produced.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_volume(
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    segments: Sequence[dict[str, Any]] | None = None,
    compress: bool = True,
) -> Path:
    """Write ``volume`` to ``path`` atomically, with its geometry and without any metadata from its source.

    Args:
        volume: Voxels ``(k, j, i)`` or ``(k, j, i, c)``. Booleans are written as uint8, float16 as float32.
        path: Target; the suffix picks the format (``.nii``, ``.nii.gz``, ``.nrrd``, ``.seg.nrrd``, ``.nhdr``,
            ``.mha``, ``.mhd``). Detached formats also write a data file beside the header.
        segments: For NRRD outputs of label maps: Slicer segment descriptions (see :func:`segment_metadata`), so
            that Slicer loads the file as a segmentation with names and colors.
        compress: gzip the voxels where the format allows (ignored for ``.nii``).

    Returns:
        The written path.

    Raises:
        UnreadableFileError: An unsupported suffix.
        ImageValidationError: ``segments`` for a non-NRRD output or a non-integer volume; bad segment entries.
    """
    import SimpleITK as sitk

    target = Path(path)
    suffix, fmt = _format_of(target)
    array = volume.array
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    if array.dtype not in _SITK_WRITABLE:
        raise ImageValidationError(f"expected integer or float32/float64 voxels to write, got {array.dtype}")
    if array is not volume.array:
        volume = volume.with_array(array)
    extra: dict[str, str] = {}
    if segments is not None:
        if fmt != "nrrd":
            raise ImageValidationError(f"expected a .seg.nrrd or .nrrd target for segments, got {target.name!r}")
        if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
            raise ImageValidationError(
                f"expected an integer label map (k, j, i) to write segments, got {array.dtype} of shape {array.shape}"
            )
        extra = segment_metadata(array, segments)
    image = volume.to_sitk()  # a fresh image: it carries no metadata from the source (no DICOM tags)
    for key in image.GetMetaDataKeys():
        image.EraseMetaData(key)
    for key, value in extra.items():
        image.SetMetaData(key, value)
    use_compression = compress and suffix != ".nii"
    context = _atomic_detached(target) if suffix in _DETACHED else atomic_path(target)
    with context as temporary:
        try:
            with SIMPLEITK_IO_LOCK:
                sitk.WriteImage(image, str(temporary), use_compression)
        except RuntimeError as error:
            raise UnreadableFileError(f"expected to write {target.name}, got a write error: {_short(error)}") from error
    return target
