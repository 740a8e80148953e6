"""Checks applied at the boundary, before (memory, layout) and after (finite values, integer labels) pixels are read.

Every check raises a typed :mod:`MedAnalysisLib.errors` exception whose message says what was expected and what
was found. None of them mention patient data.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from MedAnalysisLib.errors import GeometryError, ImageValidationError, MemoryBudgetError, UnreadableFileError
from MedAnalysisLib.io.small_files import file_kind
from MedAnalysisLib.sanitize import terminal_field
from MedAnalysisLib.volume import Volume

#: Fraction of the machine's physical memory one image may take when no explicit budget is given.
DEFAULT_BUDGET_FRACTION = 0.5


def physical_memory_bytes() -> int | None:
    """Total physical memory of this machine in bytes, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def default_memory_budget() -> int | None:
    """The budget used when a caller passes ``None``: half the physical memory (None where unknown)."""
    total = physical_memory_bytes()
    return None if total is None else int(total * DEFAULT_BUDGET_FRACTION)


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_memory_budget(shape: Sequence[int], dtype: np.dtype | type | str, budget: int | None) -> int:
    """Raise :class:`MemoryBudgetError` when an array of ``shape`` and ``dtype`` would exceed ``budget`` bytes.

    Args:
        shape: Array shape in any axis order (components included).
        dtype: Element type.
        budget: Allowed bytes; ``None`` means :func:`default_memory_budget`. Zero or negative is refused.

    Returns:
        The number of bytes the array needs.
    """
    if any(int(s) < 0 for s in shape):
        raise ImageValidationError(f"expected non-negative image dimensions, got {tuple(shape)}")
    needed = int(np.prod([int(s) for s in shape], dtype=object)) * np.dtype(dtype).itemsize
    limit = default_memory_budget() if budget is None else int(budget)
    if limit is not None and needed > limit:
        raise MemoryBudgetError(
            f"expected an image that fits the memory budget of {format_bytes(limit)}, got one that needs "
            f"{format_bytes(needed)} (shape {tuple(int(s) for s in shape)}, {np.dtype(dtype).name}); raise the "
            "budget or crop/downsample the image first"
        )
    return needed


#: Largest distance (mm) of an image origin from the scanner's origin: 1 km, far beyond any patient. A larger one is
#: a broken header, and its grid would overflow later arithmetic (bounding boxes, resampling, the writers' read-back).
MAX_ORIGIN_MM = 1e6


def origin_problem(origin: Sequence[float], key: str, name: str) -> str | None:
    """Why ``origin`` (mm) is unusable (NaN, infinite, or beyond :data:`MAX_ORIGIN_MM`), or None when it is fine."""
    values = [float(v) for v in origin]
    if all(np.isfinite(values)) and max((abs(v) for v in values), default=0.0) <= MAX_ORIGIN_MM:
        return None
    shown = [float(f"{v:.6g}") for v in values[:4]]
    return (f"expected {key} of finite coordinates within {MAX_ORIGIN_MM:g} mm of the scanner origin in {name}, got "
            f"{shown}; a broken position is refused rather than carried into the geometry")


def check_origin(origin: Sequence[float], key: str, name: str) -> None:
    """Raise :class:`GeometryError` for an origin that :func:`origin_problem` refuses."""
    problem = origin_problem(origin, key, name)
    if problem:
        raise GeometryError(problem)


def check_finite(volume: Volume | np.ndarray, what: str = "image") -> None:
    """Raise :class:`ImageValidationError` if any voxel is NaN or infinite (integer arrays always pass)."""
    array = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.complexfloating):
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    n_nan = int(np.isnan(array).sum())
    n_inf = int(array.size - finite.sum()) - n_nan
    first = tuple(int(i) for i in np.argwhere(~finite)[0])
    raise ImageValidationError(
        f"expected finite voxel values in the {what}, got {n_nan} NaN and {n_inf} infinite voxel(s) out of "
        f"{array.size} (first at index {first} in (k, j, i) order)"
    )


def smallest_integer_dtype(low: int, high: int) -> np.dtype:
    """The smallest unsigned (for ``low >= 0``) or signed integer type holding ``[low, high]``."""
    candidates = ("uint8", "uint16", "uint32", "uint64") if low >= 0 else ("int8", "int16", "int32", "int64")
    for name in candidates:
        info = np.iinfo(name)
        if info.min <= low and high <= info.max:
            return np.dtype(name)
    raise ImageValidationError(f"expected label values that fit in 64-bit integers, got the range [{low}, {high}]")


def require_integer_labels(volume: Volume, what: str = "label map") -> Volume:
    """Return ``volume`` with integer voxels, or raise :class:`ImageValidationError`.

    Integer arrays are returned unchanged. Float arrays whose values are all whole numbers (label maps stored as
    float32 are common) are converted to the smallest integer type that holds them. Fractional values (0.5),
    NaN/Inf and multi-component arrays are refused: a label map holds one class index per
    voxel.
    """
    array = volume.array
    if array.ndim != 3:
        raise ImageValidationError(
            f"expected a {what} with one value per voxel (k, j, i), got an array of shape {array.shape} with "
            f"{array.shape[3] if array.ndim == 4 else '?'} components"
        )
    if array.dtype == np.bool_:
        return volume.with_array(array.astype(np.uint8))
    if np.issubdtype(array.dtype, np.integer):
        return volume
    if not np.issubdtype(array.dtype, np.floating):
        raise ImageValidationError(f"expected an integer or float {what}, got voxels of type {array.dtype}")
    check_finite(array, what)
    fractional = array != np.round(array)
    if fractional.any():
        values = np.unique(array[fractional])
        shown = ", ".join(f"{v:g}" for v in values[:5])
        raise ImageValidationError(
            f"expected integer class values in the {what}, got {int(fractional.sum())} voxel(s) with fractional "
            f"values ({shown}{', ...' if values.size > 5 else ''}); a probability map or an interpolated label is "
            "not a label map"
        )
    if array.size == 0:
        return volume.with_array(array.astype(np.uint8))
    low, high = int(array.min()), int(array.max())
    return volume.with_array(array.astype(smallest_integer_dtype(low, high)))


# ------------------------------------------------------------------------------------------ detached data files
def resolve_data_file(header: Path, name: str) -> Path:
    """The regular file a header's data-file field names, resolved inside the header's own folder.

    A NRRD ``data file:`` or a MetaImage ``ElementDataFile`` may name any path; its bytes would become voxels. Only
    a relative name that stays inside the header's folder after every symbolic link is resolved is accepted, and
    only a regular file: a FIFO, device, socket or folder is refused from ``stat`` alone, before anything opens it
    (reading a FIFO blocks, a device never ends).

    Raises:
        UnreadableFileError: An absolute name, ``..`` or a link leading outside the folder, a missing file, or
            something other than a regular file.
    """
    shown = name[:80]
    if not name or "\x00" in name or "\\" in name or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise UnreadableFileError(
            f"expected a data file named relative to the folder of {header.name}, got {shown!r}: absolute paths, "
            "drive letters and backslashes are refused"
        )
    folder = os.path.realpath(header.parent)
    resolved = os.path.realpath(os.path.join(folder, name))
    if os.path.commonpath([folder, resolved]) != folder or resolved == folder:
        raise UnreadableFileError(
            f"expected a data file inside the folder of {header.name}, got {shown!r}, which leads outside it"
        )
    try:
        mode = os.stat(resolved).st_mode
    except OSError as error:
        raise UnreadableFileError(
            f"expected the data file {terminal_field(shown)} beside {header.name}, got none ({error.strerror})"
        ) from error
    if not stat.S_ISREG(mode):
        kind = file_kind(mode)
        raise UnreadableFileError(
            f"expected the data file {shown!r} of {header.name} to be a regular file, got {kind}"
        )
    return Path(resolved)


# ------------------------------------------------------------------------------------------ compressed payloads
#: Deflate cannot expand data by much more than this (about 1032:1); a compressed stream smaller than a payload
#: divided by it cannot hold that payload, whatever its trailer says.
DEFLATE_MAX_RATIO = 1032
_GZIP_MAGIC = b"\x1f\x8b"


def check_compressed_room(name: str, compressed: int, needed: int) -> None:
    """Refuse, without decompressing, a stream of ``compressed`` bytes that cannot inflate to ``needed`` bytes."""
    if compressed * DEFLATE_MAX_RATIO < needed:
        raise UnreadableFileError(
            f"expected at least {needed} bytes of voxel data in {name} (as its header declares), got a compressed "
            f"stream of {compressed} bytes, which cannot hold them: the file is truncated or its header is wrong"
        )


def inflated_size(stream: BinaryIO, name: str, cap: int, *, kind: Literal["gzip", "zlib"] = "gzip") -> int:
    """Count the bytes a gzip (all members) or zlib stream really inflates to, up to ``cap + 1``, keeping nothing.

    The gzip ISIZE trailer is not trusted: a truncated file with its trailer copied back claims the full length.
    Every member's CRC and length are checked by zlib; bytes after the last member that do not start another
    member (trailing garbage), a member cut short and a damaged stream are refused.

    Args:
        stream: Positioned at the first compressed byte.
        name: The file name, for messages.
        cap: Stop counting once more than ``cap`` bytes came out (the caller refuses the surplus).
        kind: ``"gzip"`` (members with headers, as NIfTI and NRRD store them) or ``"zlib"`` (MetaImage, one stream
            to the end of the file).
    """
    wbits = 31 if kind == "gzip" else 15
    read = stream.read
    inflater = zlib.decompressobj(wbits)
    count, data = 0, b""
    try:
        while count <= cap:
            data = data or read(1 << 20)
            if not data:
                break
            if inflater.eof:  # a member ended: only another gzip member may follow
                if len(data) < 2:
                    data += read(1)
                if kind != "gzip" or not data.startswith(_GZIP_MAGIC):
                    raise zlib.error(f"trailing data after the {kind} stream")
                inflater = zlib.decompressobj(wbits)
            count += len(inflater.decompress(data, 1 << 22))
            data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        if count <= cap and not inflater.eof:
            raise zlib.error("the stream ends inside a compressed member")
    except (OSError, EOFError, zlib.error) as error:
        raise UnreadableFileError(
            f"expected one complete {kind} stream of voxel data in {name}, got a damaged, truncated or padded one "
            f"after {count} decompressed bytes ({error})"
        ) from error
    return count
