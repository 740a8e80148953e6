"""``cnn3d``: a 3D CNN classifier of whole volumes (or crops) ``(B, k, j, i, C)``, channels-last.

Stages of two conv-norm-leaky-ReLU units (optionally residual), each after the first downsampling by a strided
convolution, then global average pooling, dropout and a dense head: ``(B, 1)`` sigmoid = P(class 1) for two
classes, ``(B, n_classes)`` softmax otherwise, float32. Spatial sizes are free.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from MedAnalysisLib.models import register_model
from MedAnalysisLib.models.layers import NORMS, classification_head, conv_block


@register_model("cnn3d", task="classification")
def build_cnn3d(
    *,
    n_classes: int = 2,
    in_channels: int = 1,
    filters: Sequence[int] = (16, 32, 64, 128),
    norm: str = "group",
    residual: bool = True,
    dropout: float = 0.3,
    input_shape: Sequence[int | None] | None = None,
) -> keras.Model:
    """Build a volume classifier.

    Args:
        n_classes: Number of classes (2 gives one sigmoid output).
        in_channels: Image channels.
        filters: Width per stage; stage ``s > 0`` halves every axis.
        norm: ``"group"``, ``"instance"``, ``"batch"`` or ``"none"``.
        residual: Residual stages with projected shortcuts.
        dropout: Dropout rate before the head.
        input_shape: Optional fixed ``(k, j, i)`` in voxels (``None`` entries stay free).
    """
    if norm not in NORMS:
        raise ValueError(f"expected norm to be one of {NORMS}, got {norm!r}")
    if not filters:
        raise ValueError("expected at least one stage width in filters, got none")
    spatial = (None, None, None) if input_shape is None else tuple(None if s is None else int(s) for s in input_shape)
    if len(spatial) != 3:
        raise ValueError(f"expected input_shape (k, j, i), got {list(input_shape or [])}")
    inputs = keras.Input(shape=(*spatial, in_channels), name="image")
    x = inputs
    for stage, width in enumerate(filters):
        x = conv_block(x, int(width), ndim=3, name=f"stage{stage}", strides=1 if stage == 0 else 2, norm=norm,
                       residual=residual)
    x = layers.GlobalAveragePooling3D(name="pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, classification_head(x, n_classes), name="cnn3d")
