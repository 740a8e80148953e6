"""``slice_cnn``: 2D classifiers of single slices ``(B, H, W, C)``, channels-last.

Presets:

* ``basic``: the textbook small network, layer for layer: ``Conv2D(32, (3, 3), relu) -> MaxPooling2D((2, 2)) ->
  Flatten -> Dense(64, relu) -> Dense(1, sigmoid)`` (``Dense(n, softmax)`` for more than two classes), built as a
  ``keras.Sequential`` so that ``model.layers`` lists exactly those five layers. It needs a fixed input size.
* ``global_pool``: ``n_blocks`` VGG-style blocks (two conv-norm-ReLU, max-pool) widening ``base_filters`` x2 per
  block, global pooling, dropout, dense head. Any input size.
* ``residual``: a strided stem and residual stages (projected shortcuts), global pooling, dropout, dense
  head. Any input size.

Global pooling (``pooling``, ``global_pool``/``residual``): ``"avg"`` (default) suits findings that cover much of the
slice; ``"max"`` answers "is it anywhere?" (a contrast-filled vessel, a small lesion) without the rest of the slice
diluting it; ``"avgmax"`` concatenates both.

Output: ``(B, 1)`` sigmoid = P(class 1) for ``n_classes=2``, ``(B, n_classes)`` softmax otherwise; float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from MedAnalysisLib.models import register_model
from MedAnalysisLib.models.layers import classification_head, conv_block, conv_norm_act

PRESETS = ("basic", "global_pool", "residual")
POOLINGS = ("avg", "max", "avgmax")


def _input_shape(input_shape: Sequence[int | None] | None, in_channels: int) -> tuple[int | None, ...]:
    if input_shape is None:
        return (None, None, in_channels)
    shape = tuple(None if s is None else int(s) for s in input_shape)
    if len(shape) == 2:
        shape = (*shape, in_channels)
    if len(shape) != 3:
        raise ValueError(f"expected input_shape (H, W) or (H, W, C), got {list(input_shape)}")
    return shape


def build_basic(input_shape: tuple[int | None, ...], n_classes: int = 2) -> keras.Model:
    """The textbook CNN: Conv2D(32, 3x3, relu), MaxPooling2D(2x2), Flatten, Dense(64, relu), Dense(1, sigmoid)."""
    if input_shape[0] is None or input_shape[1] is None:
        raise ValueError(f"expected a fixed (H, W) for the basic preset (it flattens), got {input_shape}")
    units, activation = (1, "sigmoid") if n_classes == 2 else (n_classes, "softmax")
    return keras.Sequential(
        [
            keras.Input(shape=input_shape, name="image"),
            layers.Conv2D(32, (3, 3), activation="relu", name="conv2d"),
            layers.MaxPooling2D((2, 2), name="max_pooling2d"),
            layers.Flatten(name="flatten"),
            layers.Dense(64, activation="relu", name="dense"),
            layers.Dense(units, activation=activation, dtype="float32", name="output"),
        ],
        name="slice_cnn_basic",
    )


@register_model("slice_cnn", task="classification")
def build_slice_cnn(
    *,
    n_classes: int = 2,
    preset: str = "basic",
    input_shape: Sequence[int | None] | None = None,
    in_channels: int = 1,
    base_filters: int = 32,
    n_blocks: int = 4,
    dropout: float = 0.3,
    norm: str = "group",
    pooling: str = "avg",
) -> keras.Model:
    """Build a slice classifier.

    Args:
        n_classes: Number of classes (2 gives one sigmoid output).
        preset: ``"basic"``, ``"global_pool"`` or ``"residual"``.
        input_shape: ``(H, W)`` or ``(H, W, C)`` in pixels; required by ``basic``, free (``None``) otherwise.
        in_channels: Channels when ``input_shape`` leaves them out.
        base_filters: Width of the first block (``global_pool``/``residual``).
        n_blocks: Number of blocks/stages (``global_pool``/``residual``).
        dropout: Dropout rate before the head (``global_pool``/``residual``).
        norm: ``"group"``, ``"instance"``, ``"batch"`` or ``"none"`` (``global_pool``/``residual``). Per-image
            norms (group, instance) discard each image's overall intensity level; ``"batch"`` keeps it, which
            matters when the class is an absolute intensity (Hounsfield units of contrast-filled vessels).
        pooling: Global pooling before the head, ``"avg"``, ``"max"`` or ``"avgmax"`` (``global_pool``/``residual``).
    """
    if preset not in PRESETS:
        raise ValueError(f"expected preset to be one of {PRESETS}, got {preset!r}")
    if n_classes < 2:
        raise ValueError(f"expected n_classes >= 2, got {n_classes}")
    if pooling not in POOLINGS:
        raise ValueError(f"expected pooling to be one of {POOLINGS}, got {pooling!r}")
    shape = _input_shape(input_shape, in_channels)
    if preset == "basic":
        return build_basic(shape, n_classes)
    inputs = keras.Input(shape=shape, name="image")
    x = inputs
    if preset == "global_pool":
        for block in range(n_blocks):
            width = base_filters * 2**block
            x = conv_norm_act(x, width, ndim=2, name=f"block{block}_a", norm=norm, negative_slope=0.0)
            x = conv_norm_act(x, width, ndim=2, name=f"block{block}_b", norm=norm, negative_slope=0.0)
            x = layers.MaxPooling2D(2, padding="same", name=f"block{block}_pool")(x)
    else:
        x = conv_norm_act(x, base_filters, ndim=2, name="stem", kernel_size=5, strides=2, norm=norm)
        for block in range(n_blocks):
            width = base_filters * 2**block
            x = conv_block(x, width, ndim=2, name=f"stage{block}", strides=1 if block == 0 else 2, norm=norm,
                           residual=True)
    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="pool")(x)
    else:
        x = layers.Concatenate(name="pool")(
            [layers.GlobalAveragePooling2D(name="pool_avg")(x), layers.GlobalMaxPooling2D(name="pool_max")(x)])
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = classification_head(x, n_classes)
    return keras.Model(inputs, outputs, name=f"slice_cnn_{preset}")
