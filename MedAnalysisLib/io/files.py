"""Reading and writing image files (NIfTI, NRRD, MetaImage) with exact geometry.

Reading goes header first: the file is checked (exists, not empty, a format we read, a header that agrees with
itself, data files that resolve inside the header's folder and are regular files, a payload exactly the size the
header declares, with compressed payloads counted in a streaming pass only after the memory budget allows them, and
no geometry that SimpleITK would silently repair or guess), its header is parsed by SimpleITK without touching the
pixels, the memory budget and the dimensionality are checked, and only then are the pixels read. Voxels come back as
a :class:`Volume` in ``(k, j, i)`` order with spacing/origin/direction in LPS millimetres.

Writing never copies metadata from the source (DICOM tags such as patient names never reach a NIfTI/NRRD header) and
is atomic: the file is read back (payload size, shape, spacing, origin, direction) and appears under its final name
only when complete.

Supported suffixes: ``.nii``, ``.nii.gz``, ``.nrrd``, ``.seg.nrrd`` (a Slicer segmentation stored as one label
layer), ``.nhdr`` (+ detached data file), ``.mha``, ``.mhd`` (+ detached data file).
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import re
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

from MedAnalysisLib.errors import (
    GeometryError,
    ImageValidationError,
    MedAnalysisError,
    OutputError,
    UnreadableFileError,
)
from MedAnalysisLib.io.atomic import atomic_path, refuse_link
from MedAnalysisLib.io.validate import (
    check_compressed_room,
    check_finite,
    check_memory_budget,
    check_origin,
    inflated_size,
    require_integer_labels,
    resolve_data_file,
)
from MedAnalysisLib.sanitize import terminal_field
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


#: NIfTI datatype code -> (bitpix it requires, numpy type of one stored value, values per voxel).
_NIFTI_DATATYPES: dict[int, tuple[int, str, int]] = {
    2: (8, "u1", 1), 4: (16, "i2", 1), 8: (32, "i4", 1), 16: (32, "f4", 1), 32: (64, "c8", 1), 64: (64, "f8", 1),
    128: (24, "u1", 3), 256: (8, "i1", 1), 512: (16, "u2", 1), 768: (32, "u4", 1), 1024: (64, "i8", 1),
    1280: (64, "u8", 1), 1536: (128, "V16", 1), 1792: (128, "c16", 1), 2048: (256, "V32", 1), 2304: (32, "u1", 4),
}
_NIFTI_FLOATS = {16: "f4", 64: "f8"}
#: Largest relative difference accepted between a NIfTI pixdim and the length of the matching sform column (the
#: two are stored separately, in float32; ITK takes the spacing from pixdim and the direction from the sform).
NIFTI_PIXDIM_TOLERANCE = 1e-3


class _NiftiLayout(NamedTuple):
    """Where and how a NIfTI file stores its voxels (from the header, before SimpleITK sees the file)."""

    dims: tuple[int, ...]
    datatype: int
    endian: str
    vox_offset: int
    slope: float
    inter: float
    compressed: bool


class _NiftiFields(NamedTuple):
    """The NIfTI-1/2 header fields that decide the layout and the geometry, as stored."""

    sizeof_hdr: int
    endian: str
    dims: tuple[int, ...]
    datatype: int
    bitpix: int
    pixdim: tuple[float, ...]
    vox_offset: float
    slope: float
    inter: float
    qform_code: int
    sform_code: int
    quatern: tuple[float, ...]
    srows: tuple[float, ...]
    magic: bytes


def _read_prefix(path: Path, n: int, compressed: bool) -> bytes:
    try:
        if compressed:
            with gzip.open(path, "rb") as stream:
                return stream.read(n)
        with path.open("rb") as stream:
            return stream.read(n)
    except (OSError, EOFError, zlib.error) as error:
        raise UnreadableFileError(f"expected a gzip-compressed file, got unreadable data in {path.name}: {error}") from error


def _inflated_payload(path: Path, needed: int, offset: int = 0, kind: Literal["gzip", "zlib"] = "gzip") -> int:
    """Decompressed length of the stream from ``offset`` to the end of ``path``, counted up to ``needed + 1``
    (nothing kept). The caller has checked the memory budget for ``needed``; the gzip trailer is never trusted."""
    with path.open("rb") as handle:
        handle.seek(offset)
        return inflated_size(handle, path.name, needed, kind=kind)


def _nifti_fields(path: Path, raw: bytes) -> _NiftiFields:
    """Unpack the NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header in either byte order."""
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
        return _NiftiFields(
            348, endian, struct.unpack(endian + "8h", raw[40:56]), *struct.unpack(endian + "2h", raw[70:74]),
            struct.unpack(endian + "8f", raw[76:108]), *struct.unpack(endian + "3f", raw[108:120]),
            *struct.unpack(endian + "2h", raw[252:256]), struct.unpack(endian + "6f", raw[256:280]),
            struct.unpack(endian + "12f", raw[280:328]), raw[344:348],
        )
    if len(raw) < 540:
        raise UnreadableFileError(f"expected a NIfTI-2 header of 540 bytes, got {len(raw)} in {path.name}")
    return _NiftiFields(
        540, endian, struct.unpack(endian + "8q", raw[16:80]), *struct.unpack(endian + "2h", raw[12:16]),
        struct.unpack(endian + "8d", raw[104:168]), float(struct.unpack(endian + "q", raw[168:176])[0]),
        *struct.unpack(endian + "2d", raw[176:192]), *struct.unpack(endian + "2i", raw[344:352]),
        struct.unpack(endian + "6d", raw[352:400]), struct.unpack(endian + "12d", raw[400:496]), raw[4:8],
    )


def _check_nifti_sform(path: Path, fields: _NiftiFields, n_spatial: int) -> None:
    """A used sform must have finite, non-zero, orthogonal axes whose lengths are the pixdim voxel sizes."""
    matrix = np.array(fields.srows, dtype=np.float64).reshape(3, 4)[:, :3]
    norms = np.linalg.norm(matrix, axis=0)
    if np.any(norms == 0) or not np.all(np.isfinite(matrix)) or not np.all(np.isfinite(fields.srows)):
        raise GeometryError(
            f"expected a NIfTI sform with three non-zero finite axes and a finite offset, got "
            f"{np.array(fields.srows).reshape(3, 4).tolist()} in {path.name}"
        )
    cosines = (matrix / norms).T @ (matrix / norms) - np.eye(3)
    worst = float(np.abs(cosines).max())
    if worst > NIFTI_SHEAR_TOLERANCE:
        angle = float(np.degrees(np.arcsin(min(worst, 1.0))))
        raise GeometryError(
            f"expected a NIfTI sform without shear (orthogonal voxel axes), got axes that deviate from "
            f"orthogonal by {angle:.3g} degrees in {path.name} (sform {np.round(matrix, 6).tolist()}); ITK and "
            "Slicer cannot represent a sheared grid, so the image is refused rather than silently re-gridded"
        )
    pixdim = np.array(fields.pixdim[1 : n_spatial + 1], dtype=np.float64)
    if np.any(np.abs(norms[:n_spatial] - pixdim) > NIFTI_PIXDIM_TOLERANCE * pixdim):
        raise GeometryError(
            f"expected NIfTI voxel sizes pixdim[1..{n_spatial}] equal to the lengths of the sform axes, got pixdim "
            f"{pixdim.tolist()} and sform axes of {np.round(norms[:n_spatial], 6).tolist()} mm in {path.name}: "
            "the header contradicts itself about the voxel size"
        )


def _check_nifti_geometry(path: Path, fields: _NiftiFields, n_dims: int) -> None:
    """Refuse every NIfTI geometry that ITK would silently repair (to 1 mm, the identity, an assumed orientation).

    ITK turns a pixdim of 0, NaN or Inf into 1 mm, takes the absolute value of a negative one (flipping the axis),
    reads a NaN quaternion as the identity and a NaN qoffset as 0, renormalises a quaternion longer than 1, and
    assumes an orientation when neither qform_code nor sform_code is set.
    """
    n_spatial = min(n_dims, 3)
    pixdim = fields.pixdim[1 : n_spatial + 1]
    if not all(math.isfinite(p) and p > 0 for p in pixdim):
        raise GeometryError(
            f"expected positive finite NIfTI voxel sizes pixdim[1..{n_spatial}] in mm, got {list(pixdim)} in "
            f"{path.name}; a voxel size of 0, a negative one or NaN/Inf is refused, never replaced by 1 mm"
        )
    if fields.qform_code <= 0 and fields.sform_code <= 0:
        raise GeometryError(
            f"expected a NIfTI orientation (qform_code or sform_code above 0), got both {fields.qform_code} and "
            f"{fields.sform_code} in {path.name}: the file does not say where the voxels are, and ITK would assume "
            "an orientation"
        )
    if fields.qform_code > 0:
        b, c, d = fields.quatern[:3]
        if not all(math.isfinite(v) for v in fields.quatern) or b * b + c * c + d * d > 1.0 + 1e-4:
            raise GeometryError(
                f"expected a finite NIfTI quaternion (b, c, d with b^2+c^2+d^2 <= 1) and finite qoffset, got "
                f"quatern {list(fields.quatern[:3])} and qoffset {list(fields.quatern[3:])} in {path.name}; it is "
                "refused, never read as the identity"
            )
        if fields.pixdim[0] not in (-1.0, 0.0, 1.0):
            raise GeometryError(f"expected a NIfTI qfac (pixdim[0]) of -1 or 1, got {fields.pixdim[0]} in {path.name}")
    if fields.sform_code > 0:
        _check_nifti_sform(path, fields, n_spatial)


def _check_nifti_layout(path: Path, fields: _NiftiFields) -> tuple[int, int]:
    """Check dim, datatype against bitpix, vox_offset and the scale factors; return (n_dims, vox_offset)."""
    if not fields.magic.startswith((b"n+1", b"n+2")):
        raise UnreadableFileError(
            f"expected a single-file NIfTI (magic 'n+1' or 'n+2'), got {fields.magic!r} in {path.name}; "
            ".hdr/.img pairs are not read"
        )
    dims, n_dims = fields.dims, fields.dims[0]
    if not 1 <= n_dims <= 7 or any(d < 1 for d in dims[1 : n_dims + 1]):
        raise UnreadableFileError(f"expected 1 to 7 positive NIfTI dimensions, got dim={list(dims)} in {path.name}")
    if fields.datatype not in _NIFTI_DATATYPES:
        raise UnreadableFileError(
            f"expected a NIfTI datatype code such as 2, 4, 16 or 64, got {fields.datatype} in {path.name}"
        )
    bitpix = _NIFTI_DATATYPES[fields.datatype][0]
    if fields.bitpix != bitpix:
        raise UnreadableFileError(
            f"expected bitpix {bitpix} for NIfTI datatype {fields.datatype}, got {fields.bitpix} in {path.name}: "
            "the header disagrees with itself about the size of a voxel"
        )
    offset = fields.vox_offset
    minimum = fields.sizeof_hdr + 4
    if not math.isfinite(offset) or not minimum <= offset < 2**62 or offset != int(offset):
        raise UnreadableFileError(
            f"expected a whole NIfTI vox_offset from {minimum} (header and extension flag) up, got {offset} in "
            f"{path.name}"
        )
    unusable_slope = fields.slope == 0.0 or not math.isfinite(fields.slope)
    if unusable_slope and math.isfinite(fields.inter) and fields.inter != 0.0:
        raise UnreadableFileError(
            f"expected a finite, non-zero NIfTI scl_slope when scl_inter is set, got scl_slope {fields.slope:g} and "
            f"scl_inter {fields.inter:g} in {path.name}: a zero or non-finite slope means 'no scaling', yet ITK would "
            "still add the intercept, so the intended values are ambiguous"
        )
    return n_dims, int(offset)


def _check_nifti(path: Path, file_size: int, compressed: bool, budget: int | None = None) -> _NiftiLayout:
    """Check a NIfTI-1/2 header against itself and against the file before SimpleITK allocates anything.

    The header must be self-consistent (datatype and bitpix, vox_offset, scale factors, geometry that ITK would
    otherwise repair silently) and the payload exactly as large as declared: the raw file size, or for ``.nii.gz``
    the bytes really decompressed (counted after the memory budget is checked, never taken from the gzip trailer).
    """
    fields = _nifti_fields(path, _read_prefix(path, 540, compressed))
    n_dims, vox_offset = _check_nifti_layout(path, fields)
    dims = tuple(int(d) for d in fields.dims[1 : n_dims + 1])
    _, stored, per_voxel = _NIFTI_DATATYPES[fields.datatype]
    n_voxels = int(np.prod(dims, dtype=object))
    needed = vox_offset + n_voxels * fields.bitpix // 8
    what = f"header and voxels ({'x'.join(str(d) for d in dims)})"
    if not compressed:
        _require_exact(path, needed, file_size, what)
    _check_nifti_geometry(path, fields, n_dims)
    if compressed:
        check_compressed_room(path.name, file_size, needed)
        check_memory_budget((*reversed(dims), per_voxel), stored, budget)
        _require_exact(path, needed, _inflated_payload(path, needed), what)
    slope, inter = fields.slope, fields.inter
    return _NiftiLayout(
        dims=dims,
        datatype=int(fields.datatype),
        endian=fields.endian,
        vox_offset=vox_offset,
        # A non-finite scl_slope counts as 1 and a non-finite scl_inter as 0 (nibabel writes NaN for unused factors),
        # which is how ITK reads integer voxels: float voxels read directly must follow the same rule. A zero slope
        # means "no scaling" (NIfTI standard); with a non-zero intercept it was refused above.
        slope=float(slope) if np.isfinite(slope) else 1.0,
        inter=float(inter) if np.isfinite(inter) else 0.0,
        compressed=compressed,
    )


def _require_exact(path: Path, needed: int, found: int, what: str) -> None:
    """The payload must be as large as the header declares: smaller is truncation, larger is trailing data."""
    if found < needed:
        raise _truncated(path, needed, found, what)
    if found > needed:
        raise UnreadableFileError(
            f"expected exactly {needed} bytes of {what} in {path.name} (as its header declares), got more: the "
            "file holds data its header does not describe (trailing bytes, or a header that under-declares)"
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
    **dict.fromkeys(("signed char", "int8", "int8_t"), "i1"),
    **dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t"), "i4"),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"), "i8"),
    **dict.fromkeys(("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
    "float": "f4",
    "double": "f8",
}
_MET_TYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4", "MET_UINT": "u4",
    "MET_LONG": "i4", "MET_ULONG": "u4", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4",
    "MET_DOUBLE": "f8",
}
#: NRRD encodings by their names (and aliases). Raw and gzip payloads are sized here; SimpleITK itself refuses text
#: (ascii/hex) payloads with too few values. bzip2 is not built into SimpleITK's NRRD reader.
_NRRD_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "ascii": "text", "txt": "text", "text": "text", "hex": "text"}
#: NRRD axis kinds whose axes are positions in space or time (they need a spacing); others (vector, list, RGB-color,
#: ...) are the values of one voxel.
_NRRD_DOMAIN_KINDS = {"domain", "space", "time"}
#: Most files a detached header may list (one per slice).
_MAX_DATA_FILES = 100_000


class _Payload(NamedTuple):
    """Where a NRRD/MetaImage header says its voxels are and how they are stored."""

    shape: tuple[int, ...]  # all axes in numpy order (slowest first), components included
    dtype: str  # numpy type of one value
    encoding: str  # "raw", "gzip", "zlib" (MetaImage) or "text" (ascii/hex, counted by SimpleITK)
    data_file: str | None  # the data-file field; None when the voxels follow the header in the same file
    byte_skip: int  # bytes before the voxels (after any line skip); -1: the voxels are the last bytes of the file
    line_skip: int  # text lines before the voxels (NRRD)
    compressed_size: int | None  # MetaImage CompressedDataSize
    slices: int  # size of the slowest axis: a LIST or pattern gives one file per slice
    slice_dimension: int  # axes in one slice as the header counts them (its dimension - 1)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * np.dtype(self.dtype).itemsize


def _header_lines(path: Path, limit: int = 1 << 16) -> tuple[list[str], int]:
    """Text lines of a NRRD/MetaImage header and the byte offset where the payload starts.

    For a NRRD header the lines after a ``data file: LIST`` line (the file names) are included; for a MetaImage
    header everything after ``ElementDataFile = LIST`` is (the payload offset is then meaningless).
    """
    with path.open("rb") as handle:
        head = handle.read(limit)
    lines, offset, listing = [], 0, False
    for raw_line in head.split(b"\n"):
        offset += len(raw_line) + 1
        text = raw_line.decode("latin-1").rstrip("\r")
        if path.suffix.lower() in (".nrrd", ".nhdr") and text == "" and lines:
            return lines, offset
        lines.append(text)
        compact = text.replace(" ", "")
        listing = listing or compact.startswith("ElementDataFile=LIST")
        if compact.startswith("ElementDataFile=") and not listing:
            return lines, offset
    if len(head) == limit:
        raise UnreadableFileError(f"expected a NRRD/MetaImage header under {limit} bytes, got a longer one in {path.name}")
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


def _positive_spacing(values: Sequence[float], key: str, path: Path) -> None:
    """Voxel sizes must be positive: SimpleITK would flip an axis for a negative one or refuse/replace a zero."""
    if any(not (math.isfinite(v) and v > 0) for v in values):
        raise GeometryError(
            f"expected positive finite voxel sizes for {key} in {path.name}, got {list(values)}; a size of 0, a "
            "negative size or NaN/Inf is refused, never replaced by 1 mm or turned into a flipped axis"
        )


#: MetaImage fields MetaIO reads as one: a header giving two of a group says the same thing twice, and each reader
#: (MetaIO, this check, other tools) may take a different one.
_METAIMAGE_ALIASES = (("offset", "origin", "position"), ("transformmatrix", "rotation", "orientation"))


def _check_metaimage_aliases(fields: dict[str, str], path: Path) -> None:
    """Refuse two aliases of one field (Offset/Origin/Position, TransformMatrix/Rotation/Orientation), and an
    ElementSize that contradicts ElementSpacing (MetaIO uses ElementSize as the spacing when ElementSpacing is
    absent, so the two must agree when both are given)."""
    for group in _METAIMAGE_ALIASES:
        given = [key for key in group if key in fields]
        if len(given) > 1:
            raise UnreadableFileError(
                f"expected one of the MetaImage aliases {', '.join(group)}, got {' and '.join(given)} in {path.name}: "
                "the header gives the same field twice and readers may take either"
            )
    if "elementspacing" in fields and "elementsize" in fields:
        spacing, size = fields["elementspacing"].split(), fields["elementsize"].split()
        try:
            same = len(spacing) == len(size) and all(float(a) == float(b) for a, b in zip(spacing, size, strict=True))
        except ValueError:
            same = False
        if not same:
            raise GeometryError(
                f"expected ElementSize to equal ElementSpacing when both are given, got {fields['elementsize'][:40]!r} "
                f"and {fields['elementspacing'][:40]!r} in {path.name}"
            )


def _check_metaimage_fields(fields: dict[str, str], path: Path) -> _Payload:
    """Validate the MetaImage header before MetaIO parses it and say where its voxels are.

    Some malformed headers crash MetaIO (for example a huge NDims), which no exception handler can catch; others
    make it return uninitialised memory as voxels (a short or padded compressed stream, a wrong
    ``CompressedDataSize``), which only the payload check after this catches.
    """
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
    _check_metaimage_aliases(fields, path)
    for key, count in (("elementspacing", n), ("elementsize", n), ("offset", n), ("position", n), ("origin", n),
                       ("centerofrotation", n), ("transformmatrix", n * n), ("rotation", n * n), ("orientation", n * n)):
        if key in fields:
            values = _numbers(fields, key, count, path)
            if key in ("elementspacing", "elementsize"):
                _positive_spacing(values, key, path)
    ints = {"elementnumberofchannels": 1, "compresseddatasize": None, "headersize": 0}
    for key, low, high in (("elementnumberofchannels", 1, 4096), ("compresseddatasize", 0, 2**62), ("headersize", -1, 2**40)):
        if key in fields:
            (value,) = _numbers(fields, key, 1, path, integer=True)
            if not low <= value <= high:
                raise UnreadableFileError(f"expected {key} from {low} to {high}, got {value} in {path.name}")
            ints[key] = int(value)
    if fields.get("elementtype", "").upper() not in _MET_TYPES:
        raise UnreadableFileError(
            f"expected a MetaImage ElementType such as MET_SHORT or MET_FLOAT, got {fields.get('elementtype', '')[:30]!r} "
            f"in {path.name}"
        )
    for key in ("binarydata", "binarydatabyteordermsb", "elementbyteordermsb", "compresseddata"):
        if key in fields and fields[key].lower() not in ("true", "false"):
            raise UnreadableFileError(f"expected True or False for {key} in {path.name}, got {fields[key][:30]!r}")
    if fields.get("binarydata", "true").lower() == "false":
        raise UnreadableFileError(
            f"expected binary MetaImage voxels (BinaryData = True), got BinaryData = False in {path.name}: text "
            "voxels are not read, because their count cannot be checked before reading"
        )
    compressed = fields.get("compresseddata", "false").lower() == "true"
    data_file = fields["elementdatafile"].strip()
    return _Payload(
        shape=(*reversed([int(s) for s in sizes]), *((ints["elementnumberofchannels"],) if ints["elementnumberofchannels"] > 1 else ())),
        dtype=_MET_TYPES[fields["elementtype"].upper()],
        encoding="zlib" if compressed else "raw",
        data_file=None if data_file.upper() == "LOCAL" else data_file,
        byte_skip=ints["headersize"],
        line_skip=0,
        compressed_size=ints["compresseddatasize"] if compressed else None,
        slices=int(sizes[-1]),
        slice_dimension=n - 1,
    )


def _nrrd_vectors(value: str, key: str, path: Path) -> list[list[float] | None]:
    """``(1,0,0) none (0,2,0)`` -> ``[[1, 0, 0], None, [0, 2, 0]]``; every number must be finite."""
    vectors: list[list[float] | None] = []
    for token in re.findall(r"\([^)]*\)|[^\s()]+", value):
        if token.lower() == "none":
            vectors.append(None)
            continue
        try:
            numbers = [float(t) for t in token.strip("()").split(",")]
        except ValueError as error:
            raise UnreadableFileError(f"expected vectors such as (1,0,0) for {key} in {path.name}, got {token[:40]!r}") from error
        if not all(math.isfinite(v) for v in numbers):
            raise GeometryError(f"expected finite numbers for {key} in {path.name}, got {token[:60]!r}")
        vectors.append(numbers)
    return vectors


def _check_nrrd_geometry(fields: dict[str, str], dimension: int, path: Path) -> None:
    """Spacings and space directions of the axes that are positions must exist and be positive and finite.

    SimpleITK reads a NaN spacing or a ``none`` direction of a spatial axis as 1 mm and a negative spacing as a
    flipped axis; both are refused. Axes whose kind says they hold the values of one voxel (vector, list, ...) may
    carry NaN/``none``.
    """
    kinds = fields.get("kinds", "").split()
    if kinds and len(kinds) != dimension:
        raise UnreadableFileError(f"expected {dimension} NRRD kinds, got {len(kinds)} in {path.name}")
    spatial = [not kinds or kind.lower() in _NRRD_DOMAIN_KINDS for kind in (kinds or [""] * dimension)]
    if "spacings" in fields:
        tokens = fields["spacings"].split()
        if len(tokens) != dimension:
            raise UnreadableFileError(f"expected {dimension} NRRD spacings, got {len(tokens)} in {path.name}")
        try:
            values = [float(t) for t in tokens]
        except ValueError as error:
            raise UnreadableFileError(f"expected numbers for NRRD spacings in {path.name}, got {fields['spacings'][:60]!r}") from error
        _positive_spacing([v for v, used in zip(values, spatial, strict=True) if used], "spacings", path)
    if "space directions" in fields:
        vectors = _nrrd_vectors(fields["space directions"], "space directions", path)
        if len(vectors) != dimension:
            raise UnreadableFileError(f"expected {dimension} NRRD space directions, got {len(vectors)} in {path.name}")
        for axis, (vector, used) in enumerate(zip(vectors, spatial, strict=True)):
            if used and (vector is None or not any(vector)):
                raise GeometryError(
                    f"expected a non-zero space direction for NRRD axis {axis} (a position axis) in {path.name}, got "
                    f"{'none' if vector is None else vector}; it is refused, never replaced by 1 mm"
                )
    if "space origin" in fields:
        _nrrd_vectors(fields["space origin"], "space origin", path)
    _check_nrrd_space(fields, spatial, path)


#: NRRD spaces that ITK converts to LPS (full names and their abbreviations). Any other space (scanner-xyz,
#: 3D-right-handed, the "-time" variants, ...) is taken by ITK as LPS without conversion, which may be wrong.
_NRRD_ANATOMICAL_SPACES = frozenset({"left-posterior-superior", "lps", "right-anterior-superior", "ras",
                                     "left-anterior-superior", "las"})


def _check_nrrd_space(fields: dict[str, str], spatial: Sequence[bool], path: Path) -> None:
    """The space must be one ITK maps to LPS, and lengths must be in millimetres: ITK ignores units, so a file in
    km or inches would be read as mm, and a scanner-xyz or right-handed space as LPS."""
    space = fields.get("space")
    if space is not None and space.strip().lower() not in _NRRD_ANATOMICAL_SPACES:
        raise GeometryError(
            f"expected a NRRD space ITK maps to patient coordinates (left-posterior-superior, right-anterior-superior, "
            f"left-anterior-superior or LPS, RAS, LAS), got {space.strip()[:40]!r} in {path.name}: it would be read "
            "as LPS without conversion"
        )
    for key in ("space units", "units"):
        if key not in fields:
            continue
        units = re.findall(r'"([^"]*)"', fields[key])
        used = units if key == "space units" else [u for u, s in zip(units, spatial, strict=False) if s]
        wrong = [u for u in used if u.strip() and u.strip().lower() != "mm"]
        if wrong or not units:
            raise GeometryError(
                f"expected NRRD {key} of \"mm\" (lengths are read as millimetres), got {fields[key][:60]!r} in "
                f"{path.name}: other units are refused rather than read as mm"
            )


def _nrrd_int(fields: dict[str, str], keys: tuple[str, ...], path: Path, low: int, default: int = 0) -> int:
    text = next((fields[key] for key in keys if key in fields), None)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError as error:
        raise UnreadableFileError(f"expected an integer for NRRD {keys[0]} in {path.name}, got {text[:30]!r}") from error
    if not low <= value <= 2**40:
        raise UnreadableFileError(f"expected NRRD {keys[0]} from {low} to 2^40, got {value} in {path.name}")
    return value


def _check_nrrd_fields(fields: dict[str, str], path: Path) -> _Payload:
    """Validate a NRRD header's dimension, sizes, type, encoding, skips and geometry; say where its voxels are."""
    dimension = _nrrd_int(fields, ("dimension",), path, 1, default=0)
    sizes_text = fields.get("sizes", "").split()
    try:
        sizes = [int(s) for s in sizes_text]
    except ValueError as error:
        raise UnreadableFileError(f"expected integer NRRD sizes, got {sizes_text[:8]} in {path.name}") from error
    if not 1 <= dimension <= 16 or len(sizes) != dimension or any(not 1 <= s < 2**31 for s in sizes):
        raise UnreadableFileError(
            f"expected a NRRD dimension and that many sizes from 1 to 2^31-1, got dimension {dimension} and sizes "
            f"{sizes_text[:8]} in {path.name}"
        )
    dtype = _NRRD_TYPES.get(fields.get("type", "").lower())
    if dtype is None:
        raise UnreadableFileError(f"expected a NRRD type such as short or float, got {fields.get('type', '')[:30]!r} in {path.name}")
    encoding = _NRRD_ENCODINGS.get(fields.get("encoding", "").lower())
    if encoding is None:
        raise UnreadableFileError(
            f"expected NRRD encoding raw, gzip, ascii or hex, got {fields.get('encoding', '')[:30]!r} in {path.name}"
        )
    byte_skip = _nrrd_int(fields, ("byte skip", "byteskip"), path, -1)
    if byte_skip == -1 and encoding != "raw":
        raise UnreadableFileError(f"expected byte skip -1 only with raw encoding, got it with {encoding} in {path.name}")
    _check_nrrd_geometry(fields, dimension, path)
    return _Payload(
        shape=tuple(reversed(sizes)),
        dtype=dtype,
        encoding=encoding,
        data_file=fields.get("data file", fields.get("datafile")),
        byte_skip=byte_skip,
        line_skip=_nrrd_int(fields, ("line skip", "lineskip"), path, 0),
        compressed_size=None,
        slices=sizes[-1],
        slice_dimension=dimension - 1,
    )


def _read_fields(path: Path, fmt: str) -> tuple[dict[str, str], list[str], int]:
    """The header's ``key -> value`` fields (keys lower-case), its lines and the offset of an attached payload."""
    lines, offset = _header_lines(path)
    fields: dict[str, str] = {}
    if fmt == "nrrd" and (not lines or not lines[0].startswith("NRRD")):
        raise UnreadableFileError(f"expected a NRRD file starting with 'NRRD000x', got {lines[:1]!r} in {path.name}")
    for line in lines[1:] if fmt == "nrrd" else lines:
        if fmt == "nrrd" and (": " not in line or line.startswith("#") or ":=" in line):
            continue
        if fmt != "nrrd" and "=" not in line:
            continue
        key, value = line.split(": " if fmt == "nrrd" else "=", 1)
        key = " ".join(key.split()).lower()
        if key.replace(" ", "") in {k.replace(" ", "") for k in fields}:
            # the readers and this check could each take a different one of the two values
            raise UnreadableFileError(f"expected each header field once, got {key[:40]!r} twice in {path.name}")
        fields[key] = value.strip()
        if key == "elementdatafile" or (key.replace(" ", "") == "datafile" and value.split()[:1] == ["LIST"]):
            break  # the last field: what follows is data or the file names of a LIST
    return fields, lines, offset


def _data_file_names(path: Path, payload: _Payload, lines: list[str], fmt: str) -> list[str]:
    """The data files a detached header names: one name, a ``LIST`` or a ``%d`` pattern (``fmt min max step``).

    A list or pattern must give one file per slice of the slowest axis (the default sub-dimension); any other
    sub-dimension is refused, since the reader's handling of it cannot be checked here (MetaIO returned
    uninitialised memory for one).
    """
    value = payload.data_file or ""
    tokens = value.split()
    if tokens and tokens[0].upper() == "LIST":
        sub = tokens[1].upper().removesuffix("D") if len(tokens) == 2 else str(payload.slice_dimension)
        if len(tokens) > 2 or sub != str(payload.slice_dimension):
            raise UnreadableFileError(
                f"expected a data-file LIST of one file per slice (sub-dimension {payload.slice_dimension} or none), "
                f"got {value[:60]!r} in {path.name}"
            )
        marker = next(i for i, line in enumerate(lines)
                      if line.replace(" ", "").lower().startswith(("datafile:", "elementdatafile=")))
        names = [line.strip() for line in lines[marker + 1 :] if line.strip()]
    elif "%" in value:
        names = _pattern_names(path, tokens, payload, fmt)
    else:
        return [value]
    if len(names) != payload.slices:
        raise UnreadableFileError(f"expected {payload.slices} data files (one per slice) for {path.name}, got {len(names)}")
    return names


def _pattern_names(path: Path, tokens: list[str], payload: _Payload, fmt: str) -> list[str]:
    """File names of a ``fmt min max step`` data-file pattern: one integer conversion, MIN <= MAX, STEP > 0.

    NRRD may add the default sub-dimension; MetaIO misreads any fifth value, so it is refused there.
    """
    subdim_ok = fmt == "nrrd" and len(tokens) == 5 and tokens[4] == str(payload.slice_dimension)
    if (len(tokens) != 4 and not subdim_ok) or not re.fullmatch(r"[^%]*%0?\d{0,3}d[^%]*", tokens[0]):
        raise UnreadableFileError(
            f"expected a data-file pattern 'name%03d.raw MIN MAX STEP' (one file per slice), got "
            f"{' '.join(tokens)[:80]!r} in {path.name}"
        )
    try:
        low, high, step = (int(t) for t in tokens[1:4])
    except ValueError as error:
        raise UnreadableFileError(
            f"expected integer MIN MAX STEP in the data-file pattern of {path.name}, got {tokens[1:4]}"
        ) from error
    if step <= 0 or high < low or (high - low) // step >= _MAX_DATA_FILES:
        raise UnreadableFileError(
            f"expected a data-file pattern with MIN <= MAX, a positive STEP and at most {_MAX_DATA_FILES} files, "
            f"got {low} {high} {step} in {path.name}"
        )
    return [tokens[0] % index for index in range(low, high + 1, step)]


def _after_lines(path: Path, start: int, count: int) -> int:
    """Offset in ``path`` after ``count`` text lines from ``start`` (NRRD ``line skip``)."""
    if count == 0:
        return start
    with path.open("rb") as handle:
        handle.seek(start)
        for index in range(count):
            line = handle.readline(1 << 20)
            if not line.endswith(b"\n"):
                raise UnreadableFileError(
                    f"expected {count} lines to skip before the voxels in {path.name}, got {index}"
                )
        return handle.tell()


def _payload_sources(path: Path, payload: _Payload, lines: list[str], offset: int, fmt: str) -> list[tuple[Path, int]]:
    """``(file, offset)`` of each part of the payload: the header file itself, or its resolved data files."""
    if payload.data_file is None:
        if fmt == "metaimage" and payload.byte_skip != 0:
            raise UnreadableFileError(
                f"expected HeaderSize 0 with ElementDataFile = LOCAL, got {payload.byte_skip} in {path.name}"
            )
        if payload.encoding == "zlib" and payload.compressed_size is None:
            # MetaIO then inflates garbage (uninitialised memory) even from a complete stream
            raise UnreadableFileError(
                f"expected CompressedDataSize with CompressedData = True and ElementDataFile = LOCAL, got none in "
                f"{path.name}"
            )
        return [(path, _after_lines(path, offset, payload.line_skip))]
    names = _data_file_names(path, payload, lines, fmt)
    if fmt == "metaimage" and payload.byte_skip != 0 and (len(names) > 1 or payload.encoding != "raw"):
        raise UnreadableFileError(
            f"expected HeaderSize 0 for compressed or listed MetaImage data files, got {payload.byte_skip} in "
            f"{path.name}: that layout cannot be checked"
        )
    return [(file, _after_lines(file, 0, payload.line_skip)) for file in (resolve_data_file(path, n) for n in names)]


def _check_payload(path: Path, fmt: str, budget: int | None) -> None:
    """Check a NRRD/MetaImage header and its payload before SimpleITK reads anything.

    Every data file must resolve inside the header's folder and be a regular file; raw payloads must be exactly as
    large as declared (``byte skip``/``HeaderSize`` -1: at least as large); compressed ones are refused when too
    small to hold the payload, then the memory budget is checked, then the bytes they really inflate to are counted
    (exactly the payload, no trailing data). Text encodings are counted by SimpleITK, which refuses short ones.
    """
    fields, lines, offset = _read_fields(path, fmt)
    payload = _check_nrrd_fields(fields, path) if fmt == "nrrd" else _check_metaimage_fields(fields, path)
    sources = _payload_sources(path, payload, lines, offset, fmt)
    if payload.encoding == "text":
        check_memory_budget(payload.shape, payload.dtype, budget)
        return
    per_file = payload.nbytes // len(sources)
    what = f"voxel data ({'x'.join(str(s) for s in reversed(payload.shape))})"
    skip = max(payload.byte_skip, 0)
    for file, start in sources:
        available = file.stat().st_size - start
        if payload.encoding == "raw":
            if payload.byte_skip == -1 and available < per_file:
                raise _truncated(file, per_file, available, what)
            if payload.byte_skip != -1:
                _require_exact(file, skip + per_file, available, what)
            continue
        if payload.compressed_size is not None:
            _require_exact(file, payload.compressed_size, available, "compressed voxel data (CompressedDataSize)")
        check_compressed_room(file.name, available, skip + per_file)
    if payload.encoding == "raw":
        return
    check_memory_budget(payload.shape, payload.dtype, budget)
    kind: Literal["gzip", "zlib"] = "zlib" if payload.encoding == "zlib" else "gzip"
    for file, start in sources:
        _require_exact(file, skip + per_file, _inflated_payload(file, skip + per_file, start, kind), what)


# ---------------------------------------------------------------------------------------------------- header
def _pixel_dtypes() -> dict[int, np.dtype]:
    import SimpleITK as sitk

    table = {}
    for name in ("UInt8", "Int8", "UInt16", "Int16", "UInt32", "Int32", "UInt64", "Int64", "Float32", "Float64"):
        for prefix in ("sitk", "sitkVector"):
            table[getattr(sitk, prefix + name)] = np.dtype(name.lower())
    return table


def _open(
    path: str | os.PathLike[str], budget: int | None = None
) -> tuple[ImageHeader, sitk.ImageFileReader, _NiftiLayout | None]:
    """Check a file (header, payload, geometry; budget before any decompression), then let SimpleITK parse it."""
    import SimpleITK as sitk

    path = Path(path)
    file_size = _check_file(path)
    suffix, fmt = _format_of(path)
    layout = None
    if fmt == "nifti":
        layout = _check_nifti(path, file_size, compressed=suffix == ".nii.gz", budget=budget)
    else:
        _check_payload(path, fmt, budget)
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
    check_origin(reader.GetOrigin()[: min(dimension, 3)], "an origin", path.name)
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


def read_header(path: str | os.PathLike[str], *, memory_budget_bytes: int | None = None) -> ImageHeader:
    """Read and check an image file's header without reading its pixels.

    The payload is still checked against the header: its size for raw data, the bytes it really decompresses to
    for compressed data (counted in a streaming pass, nothing kept), after the memory budget allows that size.

    Args:
        path: An image file (see :func:`read_volume`).
        memory_budget_bytes: Largest payload allowed before a compressed one is decompressed to be counted;
            ``None`` = half the physical memory.

    Raises:
        UnreadableFileError: Missing, empty, unsupported, truncated or padded (payload not the size declared),
            inconsistent (NIfTI datatype and bitpix, ...), unparsable, or a data file outside the header's folder
            or not a regular file.
        GeometryError: A sheared NIfTI sform, a voxel size of 0, negative, NaN or Inf, a NaN quaternion, a NIfTI
            without orientation.
        ImageValidationError: Complex or otherwise unsupported pixel types.
        MemoryBudgetError: A compressed payload larger than the budget.
    """
    return _open(path, memory_budget_bytes)[0]


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

    header, reader, layout = _open(path, memory_budget_bytes)
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


def _check_data_file_targets(target: Path, produced: Sequence[Path], overwrite: bool | None) -> None:
    """Header and data file are one output: a data file may replace only what that output may replace.

    A link (dangling or not) or anything but a regular file at a data file's name is always refused. An existing
    regular file there is replaced only with ``overwrite``, or (``overwrite`` None) when the header is being
    replaced too, i.e. the pair is an earlier output; otherwise it is a file of the user's that happens to carry
    the data file's name (``mine.zraw`` beside a new ``mine.mhd``) and is never replaced.
    """
    for source in produced:
        if source.name == target.name:
            continue
        destination = target.parent / source.name
        if destination.is_symlink():
            raise OutputError(f"expected no symbolic link at {destination.name}, the data file of {target.name}, got "
                              "one: a link is never replaced, nothing was written")
        if not destination.exists():
            continue
        if not destination.is_file():
            raise OutputError(f"expected a regular file or nothing at {destination.name}, the data file of "
                              f"{target.name}, got a folder or special file: it is never replaced, nothing was written")
        allowed = overwrite if overwrite is not None else target.is_file()
        if not allowed:
            raise OutputError(
                f"expected no file at {destination.name}, the data file {target.name} writes beside it, got an "
                f"existing file without {target.name}: it is not replaced unless overwriting; nothing was written"
            )


@contextlib.contextmanager
def _atomic_detached(target: Path, overwrite: bool | None = None):  # type: ignore[no-untyped-def]
    """Like :func:`atomic_path` for header + data-file formats: every file is checked first (links, folders, a data
    file that is not part of this output: :func:`_check_data_file_targets`), then data files are moved into place
    before the header."""
    refuse_link(target, "a file")
    if target.exists() and not target.is_file():
        raise OutputError(f"expected a file path to write, got a folder or special file at {target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield folder / target.name
        produced = sorted(folder.iterdir(), key=lambda p: p.name == target.name)
        _check_data_file_targets(target, produced, overwrite)
        for source in produced:
            os.replace(source, target.parent / source.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_output_suffix(path: str | os.PathLike[str]) -> str:
    """The format of an output path (see :data:`FORMATS`), refusing a suffix that is not lower-case: ITK picks its
    writer and compression from the exact suffix, so ``OUT.NII.GZ`` would fail inside ITK (naming a temporary file)
    instead of being written as asked. Commands call this before any work; :func:`write_volume` calls it too.

    Raises:
        UnreadableFileError: An unsupported suffix.
        OutputError: A supported suffix in upper or mixed case.
    """
    target = Path(path)
    suffix, fmt = _format_of(target)
    written = target.name[len(target.name) - len(suffix):]
    if written != suffix:
        raise OutputError(f"expected a lower-case suffix {suffix!r} for an output, got {written!r} in "
                          f"{terminal_field(target.name)}; name the file with {suffix!r}")
    return fmt


def write_volume(
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    segments: Sequence[dict[str, Any]] | None = None,
    compress: bool = True,
    overwrite: bool | None = None,
) -> Path:
    """Write ``volume`` to ``path`` atomically, with its geometry and without any metadata from its source.

    Args:
        volume: Voxels ``(k, j, i)`` or ``(k, j, i, c)``. Booleans are written as uint8, float16 as float32.
        path: Target; the suffix picks the format (``.nii``, ``.nii.gz``, ``.nrrd``, ``.seg.nrrd``, ``.nhdr``,
            ``.mha``, ``.mhd``). Detached formats also write a data file beside the header.
        segments: For NRRD outputs of label maps: Slicer segment descriptions (see :func:`segment_metadata`), so
            that Slicer loads the file as a segmentation with names and colors.
        compress: gzip the voxels where the format allows (ignored for ``.nii``).
        overwrite: For ``.mhd``/``.nhdr``: whether an existing data file beside the header may be replaced. None
            (default): only when the header exists too (the pair is an earlier output the caller chose to replace).

    Returns:
        The written path.

    Raises:
        UnreadableFileError: An unsupported suffix.
        OutputError: A suffix that is not lower-case; a link, folder or (see ``overwrite``) a file of the user's at
            the name of a data file; a write or read-back failure.
        GeometryError: An origin that is not finite or beyond 1 km (it would not read back).
        ImageValidationError: ``segments`` for a non-NRRD output or a non-integer volume; bad segment entries.
    """
    import SimpleITK as sitk

    target = Path(path)
    suffix, fmt = _format_of(target)
    check_output_suffix(target)
    check_origin(volume.origin, "an origin", f"the volume written to {terminal_field(target.name)}")
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
    context = _atomic_detached(target, overwrite) if suffix in _DETACHED else atomic_path(target)
    with context as temporary:
        try:
            with SIMPLEITK_IO_LOCK:
                sitk.WriteImage(image, str(temporary), use_compression)
        except RuntimeError as error:
            raise OutputError(f"expected to write {target.name}, got a write error: {_short(error)}") from error
        _verify_written(temporary, volume, target.name)
    return target


def _verify_written(temporary: Path, volume: Volume, name: str) -> None:
    """Read back what was written, before it is renamed into place: the payload must be exactly what the header
    declares and the header must describe ``volume``'s grid.

    ITK's NIfTI writer only prints a short write (a full disk, a file size limit) on stderr, so the truncated file
    would otherwise be renamed into place as if complete.
    """
    try:
        header = _open(temporary, max(volume.array.nbytes, 1))[0]
    except MedAnalysisError as error:
        raise OutputError(
            f"expected {name} to be written completely, got a file that does not read back ({error}); the disk may "
            "be full or a file size limit reached, and nothing was written under that name"
        ) from error
    spatial = (*header.size[:3], 1, 1)[:3]
    found = (tuple(reversed(spatial)), header.n_components * (header.size[3] if header.dimension == 4 else 1))
    expected = (volume.shape, volume.n_components)
    direction = _spatial_direction(header)
    if (
        found != expected
        or not np.allclose(header.spacing[:3], volume.spacing, rtol=1e-5, atol=1e-6)
        or not np.allclose(header.origin[:3], volume.origin, rtol=1e-5, atol=1e-4)
        or not np.allclose(direction, volume.direction, atol=1e-5)
    ):
        raise OutputError(
            f"expected {name} to read back with shape {expected[0]} x {expected[1]} component(s), spacing "
            f"{volume.spacing} and origin {volume.origin}, got shape {found[0]} x {found[1]}, spacing "
            f"{header.spacing[:3]} and origin {header.origin[:3]}; nothing was written under that name"
        )
