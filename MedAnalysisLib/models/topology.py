"""The layout of the U-Nets (widths and strides per stage) computed from their hyper-parameters, without Keras.

The model builder (:mod:`MedAnalysisLib.models.unet`) and the checks a bundle's values go through before any model is
built (:mod:`MedAnalysisLib.models.hparams`) share this one computation, so that the divisibility and size checks
of a bundle describe exactly the network that would be built. Nothing here imports TensorFlow or Keras.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Most stages a U-Net may have (2D, 3D): beyond them the coarsest feature map is a single voxel of any real patch.
MAX_STAGES = {2: 7, 3: 6}


@dataclass(frozen=True)
class UNetTopology:
    """Derived layout: per-stage widths and strides (stage 0 has stride 1 on every axis)."""

    filters: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]

    @property
    def total_stride(self) -> tuple[int, ...]:
        total = [1] * len(self.strides[0])
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride, strict=True)]
        return tuple(total)


def unet_topology(
    ndim: int,
    *,
    patch_size: Sequence[int] | None = None,
    filters: Sequence[int] | None = None,
    base_filters: int = 32,
    max_filters: int = 320,
    n_stages: int | None = None,
    min_feature_size: int = 4,
) -> UNetTopology:
    """Widths and strides of a U-Net.

    Args:
        ndim: 2 or 3.
        patch_size: Training patch, ``(k, j, i)`` for 3D, ``(j, i)`` for 2D, in voxels. When given, an axis is
            downsampled at a stage while its size after halving is at least ``min_feature_size`` and even.
        filters: Explicit widths per stage (sets the number of stages); otherwise ``base_filters * 2**s`` capped at
            ``max_filters``.
        n_stages: Number of stages when neither ``filters`` nor ``patch_size`` decide it (isotropic stride 2).
    """
    if ndim not in (2, 3):
        raise ValueError(f"expected 2 or 3 spatial dimensions, got {ndim}")
    wanted = len(filters) if filters is not None else n_stages
    if patch_size is not None:
        patch = [int(p) for p in patch_size]
        if len(patch) != ndim or any(p < 1 for p in patch):
            raise ValueError(f"expected a patch size of {ndim} positive integers, got {list(patch_size)}")
        strides: list[tuple[int, ...]] = [(1,) * ndim]
        sizes = patch
        limit = wanted or MAX_STAGES[ndim]
        while len(strides) < limit:
            stride = tuple(2 if size % 2 == 0 and size // 2 >= min_feature_size else 1 for size in sizes)
            if all(s == 1 for s in stride):
                break
            strides.append(stride)
            sizes = [size // s for size, s in zip(sizes, stride, strict=True)]
        if wanted is not None and len(strides) < wanted:
            raise ValueError(
                f"expected a patch size that allows {wanted} stages (each halving keeps at least {min_feature_size} "
                f"voxels), got {patch} which allows {len(strides)}"
            )
    else:
        if wanted is None:
            raise ValueError("expected patch_size, filters or n_stages to decide the U-Net depth, got none of them")
        strides = [(1,) * ndim] + [(2,) * ndim] * (wanted - 1)
    if len(strides) < 2:
        raise ValueError(f"expected a patch large enough for at least one downsampling, got {patch_size}")
    if filters is None:
        filters = [min(base_filters * 2**s, max_filters) for s in range(len(strides))]
    return UNetTopology(tuple(int(f) for f in filters), tuple(strides))
