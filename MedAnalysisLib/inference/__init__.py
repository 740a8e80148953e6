"""Inference: sliding windows, the model runner, prediction in the input's geometry, post-processing, writers,
batch runs over many cases, uncertainty and explanations.

Import the sub-modules directly (``from MedAnalysisLib.inference.predict import predict``); nothing here imports
TensorFlow until a model is run. What lives here is what every inference path checks and decides the same way
before a model runs (the input Volumes against the bundle, the label value of each output channel), so that
prediction and explanation share it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from MedAnalysisLib.errors import ImageValidationError, InputError, MemoryBudgetError
from MedAnalysisLib.volume import Volume

#: Families whose input must be a real 3D volume (3D windows, whole-volume classifiers).
THREE_D_FAMILIES = frozenset({"unet3d", "cnn3d"})


def as_volumes(images: Volume | Sequence[Volume]) -> list[Volume]:
    """One Volume per channel from a Volume or a list of them; bare arrays are refused (they carry no geometry).

    Raises:
        InputError: Anything else.
    """
    if isinstance(images, Volume):
        return [images]
    if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
        raise InputError(
            f"expected a Volume or a list of Volumes (one per channel), got {type(images).__name__}; wrap arrays "
            "with MedAnalysisLib.Volume(array, spacing, origin, direction) so the result keeps their geometry"
        )
    volumes = list(images)
    if not volumes or not all(isinstance(v, Volume) for v in volumes):
        raise InputError(f"expected one Volume per channel, got {[type(v).__name__ for v in volumes]}")
    return volumes


def validate_input(volumes: list[Volume], family: str, plan: Any) -> None:
    """Check the input against the bundle before a model runs: the channel count, finite voxels, a grid that fits in
    memory once resampled (:func:`check_resampled_size`), a real 3D volume for 3D families.

    Raises:
        InputError: Wrong channel count; ImageValidationError for NaN/Inf or a 2D image for a 3D model;
            MemoryBudgetError for an absurd resampled grid.
    """
    channels = sum(v.n_components for v in volumes)
    if channels != plan.n_channels:
        raise InputError(
            f"expected {plan.n_channels} image channel(s) {list(plan.channel_names)} for this model, got {channels}"
        )
    for volume in volumes:
        bad = int(np.size(volume.array) - np.count_nonzero(np.isfinite(volume.array)))
        if bad:
            raise ImageValidationError(f"expected finite voxel values, got {bad} NaN/Inf voxels in the input image")
        check_resampled_size(volume, plan, volume.n_components)
        if family in THREE_D_FAMILIES and min(volume.shape) < 2:
            raise ImageValidationError(
                f"expected a 3D volume for the 3D model {family!r}, got a 2D image of shape (k, j, i) {volume.shape}; "
                "use a 2D model (unet2d, slice_cnn) for single slices"
            )


#: Largest axis a resampled grid may have (ITK sizes are unsigned 32-bit; far larger than any scan).
MAX_RESAMPLED_AXIS = 2**31 - 1


def check_resampled_size(volume: Volume, plan: Any, channels: int) -> None:
    """Refuse an input whose grid, resampled to the plan's voxel size, would not fit in memory: a header claiming
    1e30 mm voxels (or 1000 mm ones) asks the resampler for an absurd grid, which would overflow it or exhaust the
    machine. Judged from the header alone (shape and spacing), before anything is allocated.

    Raises:
        MemoryBudgetError: The resampled image (float32, every channel) needs more than half the physical memory,
            or an axis longer than :data:`MAX_RESAMPLED_AXIS`.
    """
    if plan.target_spacing is None:
        return
    from MedAnalysisLib.io.validate import default_memory_budget, format_bytes

    size_ijk = np.array(volume.shape[:3][::-1], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        ratio = np.asarray(volume.spacing, np.float64) / np.asarray(plan.target_spacing, np.float64)
        new_size = np.where(size_ijk == 1, 1.0, np.maximum(1.0, np.round(size_ijk * ratio)))
        needed = float(np.prod(new_size)) * channels * 4.0
    limit = default_memory_budget()
    if (np.all(np.isfinite(new_size)) and new_size.max() <= MAX_RESAMPLED_AXIS
            and (limit is None or needed <= limit)):
        return
    spacing = ", ".join(f"{s:g}" for s in volume.spacing)
    target = ", ".join(f"{s:g}" for s in plan.target_spacing)
    grid = " x ".join(f"{s:g}" for s in new_size)
    raise MemoryBudgetError(
        f"expected an image whose grid, resampled to the plan's ({target}) mm voxels, fits in memory"
        f"{f' ({format_bytes(limit)})' if limit is not None else ''}, got voxels of ({spacing}) mm over "
        f"{volume.shape[:3][::-1]} (i, j, k), which would resample to {grid} voxels; check the spacing in the "
        "file's header"
    )


def class_values(config: Any) -> np.ndarray:
    """Label value of each model output channel: for segmentation the plan's label_values order, as in training; a
    classifier's outputs are its own classes (a slice classifier trained on label maps with values 0 and 3 still
    answers 0 or 1, "absent" or "present")."""
    values = list(config.plan.label_values) if config.task == "segmentation" else []
    if len(values) != config.n_classes:
        values = sorted(label.value for label in config.labels)
    return np.asarray(values, dtype=np.int64)
