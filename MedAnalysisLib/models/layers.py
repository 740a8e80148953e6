"""Building blocks shared by the model families (backend-neutral: ``keras.layers`` and ``keras.ops`` only).

Every block names its layers explicitly from a caller-given prefix, so that two builds of the same family with the
same hyper-parameters have the same layer names. Custom layers are registered as Keras serializable under the
package ``"MedAnalysis"`` with a complete ``get_config``; there are no Lambda layers.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

NORMS = ("instance", "group", "batch", "none")


def conv_layer(ndim: int) -> type[keras.layers.Layer]:
    if ndim not in (2, 3):
        raise ValueError(f"expected 2 or 3 spatial dimensions, got {ndim}")
    return layers.Conv2D if ndim == 2 else layers.Conv3D


def conv_transpose_layer(ndim: int) -> type[keras.layers.Layer]:
    return layers.Conv2DTranspose if ndim == 2 else layers.Conv3DTranspose


def normalization(kind: str, filters: int, name: str) -> keras.layers.Layer | None:
    """Instance norm (one group per channel), group norm (8 groups or fewer), batch norm, or nothing."""
    if kind == "instance":
        return layers.GroupNormalization(groups=filters, epsilon=1e-5, name=name)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if filters % g == 0)
        return layers.GroupNormalization(groups=groups, epsilon=1e-5, name=name)
    if kind == "batch":
        return layers.BatchNormalization(name=name)
    if kind == "none":
        return None
    raise ValueError(f"expected norm to be one of {NORMS}, got {kind!r}")


def conv_norm_act(
    x: Any,
    filters: int,
    *,
    ndim: int,
    name: str,
    kernel_size: int | tuple[int, ...] = 3,
    strides: int | tuple[int, ...] = 1,
    norm: str = "instance",
    negative_slope: float = 0.01,
    activation: bool = True,
) -> Any:
    """Conv (same padding) -> norm -> leaky ReLU, nnU-Net's basic unit. ``activation=False`` leaves the ReLU out."""
    x = conv_layer(ndim)(
        filters, kernel_size, strides=strides, padding="same", use_bias=norm == "none", name=f"{name}_conv",
        kernel_initializer="he_normal",
    )(x)
    norm_layer = normalization(norm, filters, f"{name}_norm")
    if norm_layer is not None:
        x = norm_layer(x)
    if activation:
        x = layers.LeakyReLU(negative_slope=negative_slope, name=f"{name}_act")(x)
    return x


def conv_block(
    x: Any,
    filters: int,
    *,
    ndim: int,
    name: str,
    strides: int | tuple[int, ...] = 1,
    norm: str = "instance",
    residual: bool = False,
    negative_slope: float = 0.01,
) -> Any:
    """Two conv-norm-act units (the first one strided); with ``residual`` a projected shortcut is added before the
    second activation."""
    shortcut = x
    y = conv_norm_act(x, filters, ndim=ndim, name=f"{name}_a", strides=strides, norm=norm,
                      negative_slope=negative_slope)
    y = conv_norm_act(y, filters, ndim=ndim, name=f"{name}_b", norm=norm, negative_slope=negative_slope,
                      activation=not residual)
    if not residual:
        return y
    needs_projection = shortcut.shape[-1] != filters or any(s != 1 for s in _as_tuple(strides, ndim))
    if needs_projection:
        shortcut = conv_norm_act(shortcut, filters, ndim=ndim, name=f"{name}_skip", kernel_size=1, strides=strides,
                                 norm=norm, activation=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.LeakyReLU(negative_slope=negative_slope, name=f"{name}_act")(y)


def _as_tuple(value: int | tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return (value,) * ndim if isinstance(value, int) else tuple(value)


def classification_head(x: Any, n_classes: int, *, name: str = "head") -> Any:
    """Dense output in float32: ``(B, 1)`` sigmoid for two classes, ``(B, n)`` softmax otherwise."""
    if n_classes < 2:
        raise ValueError(f"expected n_classes >= 2, got {n_classes}")
    units, activation = (1, "sigmoid") if n_classes == 2 else (n_classes, "softmax")
    x = layers.Dense(units, name=f"{name}_dense")(x)
    return layers.Activation(activation, dtype="float32", name=f"{name}_{activation}")(x)


@keras.saving.register_keras_serializable(package="MedAnalysis")
class MaskedAttentionPooling(keras.layers.Layer):
    """Attention pooling over a sequence, ignoring masked (padded) steps.

    Scores ``s_t = w2 . tanh(W1 h_t + b1)``; weights ``a_t = softmax(s_t)`` over the unmasked steps; output
    ``sum_t a_t h_t``.

    Call args:
        inputs: ``(B, S, F)`` features.
        mask: ``(B, S)`` bool, True for real steps; ``None`` means all steps are real. A row with no real step gives
            zeros.

    Returns:
        ``(B, F)`` pooled features (and, with ``return_weights=True`` at construction, also ``(B, S)`` weights).
    """

    def __init__(self, units: int = 64, return_weights: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.return_weights = bool(return_weights)
        self.supports_masking = True

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        features = int(input_shape[-1])
        self.w1 = self.add_weight(name="w1", shape=(features, self.units), initializer="glorot_uniform")
        self.b1 = self.add_weight(name="b1", shape=(self.units,), initializer="zeros")
        self.w2 = self.add_weight(name="w2", shape=(self.units, 1), initializer="glorot_uniform")

    def call(self, inputs: Any, mask: Any = None) -> Any:
        hidden = ops.tanh(ops.matmul(inputs, ops.cast(self.w1, inputs.dtype)) + ops.cast(self.b1, inputs.dtype))
        scores = ops.squeeze(ops.matmul(hidden, ops.cast(self.w2, inputs.dtype)), axis=-1)
        scores = ops.cast(scores, "float32")
        if mask is None:
            weights = ops.softmax(scores, axis=-1)
        else:
            valid = ops.cast(mask, "bool")
            scores = ops.where(valid, scores, ops.full_like(scores, -1e9))
            weights = ops.softmax(scores, axis=-1) * ops.cast(valid, "float32")
            weights = weights / ops.maximum(ops.sum(weights, axis=-1, keepdims=True), 1e-9)
        pooled = ops.sum(ops.cast(inputs, "float32") * ops.expand_dims(weights, -1), axis=1)
        pooled = ops.cast(pooled, inputs.dtype)
        if self.return_weights:
            return pooled, weights
        return pooled

    def compute_mask(self, inputs: Any, mask: Any = None) -> None:
        return None

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> Any:
        pooled = (input_shape[0], input_shape[-1])
        return (pooled, (input_shape[0], input_shape[1])) if self.return_weights else pooled

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "return_weights": self.return_weights}


@keras.saving.register_keras_serializable(package="MedAnalysis")
class ApplyMask(keras.layers.Layer):
    """Attach a ``(B, S)`` boolean mask to ``(B, S, F)`` features so that masking-aware layers (RNNs) skip
    padded steps, and zero the padded features.

    Call args:
        inputs: ``[features (B, S, F), mask (B, S)]``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any) -> Any:
        features, mask = inputs
        return features * ops.expand_dims(ops.cast(mask, features.dtype), -1)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return ops.cast(inputs[1], "bool")

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        return super().get_config()


@keras.saving.register_keras_serializable(package="MedAnalysis")
class FoldSlices(keras.layers.Layer):
    """``(B, S, H, W, C) -> (B*S, H, W, C)``: put the slices of every scan into the batch axis.

    With :class:`UnfoldSlices` this applies a 2D encoder to every slice, as ``TimeDistributed`` does, but as one
    ordinary batched call: Keras 3 runs ``TimeDistributed`` over a variable-length axis through a vectorised map
    whose graph takes 5-10x longer to trace and runs about 2x slower on CPU.
    """

    def call(self, inputs: Any) -> Any:
        return ops.reshape(inputs, (-1, *inputs.shape[2:]))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (None, *input_shape[2:])

    def get_config(self) -> dict[str, Any]:
        return super().get_config()


@keras.saving.register_keras_serializable(package="MedAnalysis")
class UnfoldSlices(keras.layers.Layer):
    """``[(B*S, F), reference (B, S, ...)] -> (B, S, F)``: undo :class:`FoldSlices` on per-slice features."""

    def call(self, inputs: Any) -> Any:
        features, reference = inputs
        shape = ops.shape(reference)
        return ops.reshape(features, (shape[0], shape[1], features.shape[-1]))

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        features, reference = input_shape
        return (reference[0], reference[1], features[-1])

    def get_config(self) -> dict[str, Any]:
        return super().get_config()


@keras.saving.register_keras_serializable(package="MedAnalysis")
class MaskedMaxPooling(keras.layers.Layer):
    """Largest value over the real steps of a sequence: ``(B, S, F), mask (B, S) -> (B, F)``.

    Used as a multiple-instance scan head: a scan holds a finding when its most suspicious slice does, so the scan
    probability is the maximum of the per-slice probabilities, and the scan label trains the per-slice head directly.
    A row with no real step gives zeros.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any, mask: Any = None) -> Any:
        values = ops.cast(inputs, "float32")
        if mask is None:
            return ops.max(values, axis=1)
        valid = ops.expand_dims(ops.cast(mask, "bool"), -1)
        lowest = ops.full_like(values, -3.0e38)
        pooled = ops.max(ops.where(valid, values, lowest), axis=1)
        any_valid = ops.any(valid, axis=1)
        return ops.where(any_valid, pooled, ops.zeros_like(pooled))

    def compute_mask(self, inputs: Any, mask: Any = None) -> None:
        return None

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return super().get_config()
