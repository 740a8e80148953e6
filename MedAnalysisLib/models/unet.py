"""nnU-Net-style U-Nets for 2D slices (``unet2d``) and 3D patches (``unet3d``).

Each stage is two conv -> norm (instance by default) -> leaky ReLU units; the encoder downsamples with strided
convolutions and the decoder upsamples with transposed convolutions and concatenates the skip connection.
Residual stages and deep supervision are optional. Depth and per-axis strides follow the patch size as in nnU-Net:
an axis is halved at a stage only while its feature map stays at least ``min_feature_size`` voxels, so anisotropic
patches get anisotropic strides, and widths double per stage up to ``max_filters``.

Inputs are channels-last, ``(B, k, j, i, C)`` for 3D and ``(B, j, i, C)`` for 2D, float32, with free spatial
sizes that must be divisible by :func:`total_stride` along each axis. The inference output is the softmax
``(B, *spatial, n_classes)`` in float32; with deep supervision the training model also returns softmax maps at
the coarser decoder levels (sizes divided by :func:`deep_supervision_strides`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from MedAnalysisLib.models import register_model
from MedAnalysisLib.models.layers import NORMS, conv_block, conv_layer, conv_transpose_layer
from MedAnalysisLib.models.topology import MAX_STAGES, UNetTopology, unet_topology

__all__ = ["MAX_STAGES", "UNetTopology", "build_unet2d", "build_unet3d", "deep_supervision_strides", "total_stride",
           "unet_topology"]

def _build_unet(
    ndim: int,
    *,
    n_classes: int,
    in_channels: int = 1,
    patch_size: Sequence[int] | None = None,
    filters: Sequence[int] | None = None,
    base_filters: int = 32,
    max_filters: int = 320,
    n_stages: int | None = None,
    min_feature_size: int = 4,
    norm: str = "instance",
    residual: bool = False,
    deep_supervision: bool = False,
    deep_supervision_levels: int = 2,
    negative_slope: float = 0.01,
    name: str | None = None,
) -> tuple[keras.Model, keras.Model]:
    if n_classes < 2:
        raise ValueError(f"expected n_classes >= 2 (background included), got {n_classes}")
    if in_channels < 1:
        raise ValueError(f"expected in_channels >= 1, got {in_channels}")
    if norm not in NORMS:
        raise ValueError(f"expected norm to be one of {NORMS}, got {norm!r}")
    topology = unet_topology(ndim, patch_size=patch_size, filters=filters, base_filters=base_filters,
                             max_filters=max_filters, n_stages=n_stages, min_feature_size=min_feature_size)
    block = {"ndim": ndim, "norm": norm, "residual": residual, "negative_slope": negative_slope}
    inputs = keras.Input(shape=(None,) * ndim + (in_channels,), name="image")
    x = inputs
    skips = []
    for stage, (width, stride) in enumerate(zip(topology.filters, topology.strides, strict=True)):
        x = conv_block(x, width, strides=stride, name=f"enc{stage}", **block)
        skips.append(x)
    head_outputs = []
    n_levels = len(topology.filters)
    for stage in range(n_levels - 2, -1, -1):
        up_stride = topology.strides[stage + 1]
        x = conv_transpose_layer(ndim)(topology.filters[stage], up_stride, strides=up_stride, use_bias=False,
                                       name=f"up{stage}")(x)
        x = layers.Concatenate(axis=-1, name=f"dec{stage}_concat")([x, skips[stage]])
        x = conv_block(x, topology.filters[stage], name=f"dec{stage}", **block)
        if stage == 0 or (deep_supervision and stage <= deep_supervision_levels):
            logits = conv_layer(ndim)(n_classes, 1, name=f"seg{stage}_logits")(x)
            head_outputs.append(layers.Activation("softmax", dtype="float32", name=f"seg{stage}")(logits))
    main = head_outputs[-1]
    family = f"unet{ndim}d"
    inference = keras.Model(inputs, main, name=name or family)
    if not deep_supervision:
        return inference, inference
    auxiliary = head_outputs[:-1][::-1]  # finest first
    training = keras.Model(inputs, [main, *auxiliary], name=f"{name or family}_deep_supervision")
    return inference, training


def total_stride(ndim: int, **hparams: Any) -> tuple[int, ...]:
    """Product of all strides per axis: spatial input sizes must be multiples of it."""
    keys = ("patch_size", "filters", "base_filters", "max_filters", "n_stages", "min_feature_size")
    return unet_topology(ndim, **{k: v for k, v in hparams.items() if k in keys}).total_stride


def deep_supervision_strides(ndim: int, **hparams: Any) -> list[tuple[int, ...]]:
    """Cumulative strides of the auxiliary outputs of the deep-supervision training model, finest first.

    Labels for auxiliary output ``n`` are ``y[:, ::s_k, ::s_j, ::s_i]`` with ``(s_k, s_j, s_i)`` the n-th entry.
    """
    if not hparams.get("deep_supervision", False):
        return []
    keys = ("patch_size", "filters", "base_filters", "max_filters", "n_stages", "min_feature_size")
    topology = unet_topology(ndim, **{k: v for k, v in hparams.items() if k in keys})
    levels = hparams.get("deep_supervision_levels", 2)
    result = []
    cumulative = [1] * ndim
    for stage in range(1, len(topology.filters) - 1):
        cumulative = [c * s for c, s in zip(cumulative, topology.strides[stage], strict=True)]
        if stage <= levels:
            result.append(tuple(cumulative))
    return result


@register_model("unet3d", task="segmentation")
def build_unet3d(**hparams: Any) -> tuple[keras.Model, keras.Model]:
    """3D U-Net. Hyper-parameters: ``n_classes`` (background included), ``in_channels=1``,
    ``patch_size=(k, j, i)``, ``filters`` or ``base_filters=32``/``max_filters=320``, ``n_stages``,
    ``min_feature_size=4``, ``norm="instance"|"group"|"batch"|"none"``, ``residual=False``,
    ``deep_supervision=False``, ``deep_supervision_levels=2``, ``negative_slope=0.01``."""
    return _build_unet(3, **hparams)


@register_model("unet2d", task="segmentation")
def build_unet2d(**hparams: Any) -> tuple[keras.Model, keras.Model]:
    """2D U-Net on ``(B, j, i, C)`` slices; hyper-parameters as :func:`build_unet3d` with ``patch_size=(j, i)``."""
    return _build_unet(2, **hparams)
