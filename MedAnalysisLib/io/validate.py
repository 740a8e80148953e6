"""Checks applied at the boundary, before (memory, layout) and after (finite values, integer labels) pixels are read.

Every check raises a typed :mod:`MedAnalysisLib.errors` exception whose message says what was expected and what
was found. None of them mention patient data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from MedAnalysisLib.errors import ImageValidationError, MemoryBudgetError
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
