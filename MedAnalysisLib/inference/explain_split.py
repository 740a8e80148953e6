"""A classifier cut at its last convolutional stage, for Grad-CAM and occlusion (:mod:`.explain`).

``split_model(model, family)`` finds the last layer whose output is still a spatial map (rank 4 for slices, 5 for
volumes; pooling layers excluded), searching inside the per-slice encoder of ``cnn_rnn``, and builds two Keras
sub-models that share the model's layers and weights: ``head`` (input -> that map) and ``tail`` (map -> class
*logits*, the scores before the final sigmoid or soft-max). Only the public functional API is used (sub-models
between tensors of the built graph), so the architecture and weights are untouched and any family built the same way
is handled. Keras is imported when a model is split; TensorFlow or JAX only when gradients are asked for.

It also holds the arithmetic of the maps: linear upsampling of a coarse map and the occlusion sweep.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from MedAnalysisLib.errors import InputError

#: Final activations whose logits are read.
ACTIVATIONS = ("sigmoid", "softmax")
#: Occlusion patch: an eighth of each axis (at least one voxel), moved by half a patch.
OCCLUSION_FRACTION = 8


def last_conv_stage(model: Any) -> Any:
    """The last layer (in graph order) whose output is a spatial map and which follows a convolution, or None.

    That is the last convolution itself or the activation (or residual addition) after it: the most semantic
    features that still have a position. Pooling layers are skipped: they only subsample the same features.
    """
    seen_conv = False
    found = None
    for layer in model.layers:
        kind = type(layer).__name__
        if kind.startswith("Conv"):
            seen_conv = True
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if (seen_conv and shape is not None and len(shape) in (4, 5) and "Pooling" not in kind
                and kind != "InputLayer"):
            found = layer
    return found


def _activation_name(layer: Any) -> str | None:
    function = getattr(layer, "activation", None)
    name = getattr(function, "__name__", None)
    return name if name in ACTIVATIONS else None


@dataclass
class Split:
    """A classifier as ``tail(head(x))``: see the module docstring.

    Attributes:
        layer: Name of the layer Grad-CAM uses (``encoder/layer`` inside ``cnn_rnn``), or None without one.
        activation: ``"sigmoid"`` (one output, P(class 1)) or ``"softmax"``.
    """

    layer: str | None
    activation: str
    head: Any
    tail: Any

    def __post_init__(self) -> None:
        self._traced: Any = None

    def _logits(self, batch: Any, mask: Any) -> Any:
        """Forward pass; on TensorFlow traced once (shapes left free), since eager calls run layer by layer and an
        occlusion makes thousands of them."""
        import keras

        if keras.backend.backend() != "tensorflow":
            return self.tail(self.head(batch), batch, mask)
        if self._traced is None:
            import tensorflow as tf

            self._traced = tf.function(lambda b, m: self.tail(self.head(b), b, m), reduce_retracing=True)
        return self._traced(batch, mask)

    def logits(self, batch: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Class logits ``(B, 1)`` (sigmoid) or ``(B, n)`` (soft-max) of a model-ready batch, any backend."""
        from keras import ops

        x = ops.convert_to_tensor(np.asarray(batch, np.float32))
        return np.asarray(ops.convert_to_numpy(self._logits(x, ops.convert_to_tensor(_mask(batch, mask)))), np.float64)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """``(B, n_classes)`` probabilities from :meth:`logits`."""
        if self.activation == "sigmoid":
            p = 1.0 / (1.0 + np.exp(-np.clip(logits[:, :1], -80, 80)))
            return np.concatenate([1.0 - p, p], axis=1)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def score(self, logits: Any, index: int) -> Any:
        """The target class's logit per sample (for one sigmoid output, class 0's logit is minus class 1's)."""
        if self.activation == "sigmoid":
            return logits[:, 0] if index == 1 else -logits[:, 0]
        return logits[:, index]

    def gradients(self, batch: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The last stage's activations and the gradient of the summed target logit with respect to them."""
        import keras

        if self.layer is None:
            raise InputError("expected a model with a convolutional stage for Grad-CAM, got none")
        mask = _mask(batch, None)
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            x = tf.convert_to_tensor(batch)
            activations = self.head(x)
            with tf.GradientTape() as tape:
                tape.watch(activations)
                total = tf.reduce_sum(self.score(self.tail(activations, x, mask), index))
            gradient = tape.gradient(total, activations)
            gradient = tf.zeros_like(activations) if gradient is None else gradient
            return activations.numpy(), gradient.numpy()
        if backend == "jax":
            import jax
            import jax.numpy as jnp

            x = jnp.asarray(batch)
            activations = self.head(x)
            gradient = jax.grad(lambda a: jnp.sum(self.score(self.tail(a, x, mask), index)))(activations)
            return np.asarray(activations), np.asarray(gradient)
        raise InputError(f"expected the TensorFlow or JAX backend for Grad-CAM, got {backend!r}; use occlusion")


def _mask(batch: Any, mask: np.ndarray | None) -> np.ndarray:
    """The ``(B, S)`` slice mask of a cnn_rnn batch (all slices real unless given); unused by other families."""
    if mask is not None:
        return mask
    shape = batch.shape
    return np.ones((shape[0], shape[1]) if len(shape) == 5 else (shape[0], 1), bool)


def split_model(model: Any, family: str) -> Split:
    """Cut ``model`` (a classifier of ``family``) at its last convolutional stage.

    Raises:
        InputError: The model's output is not a sigmoid or soft-max classifier output.
    """
    if family == "cnn_rnn":
        return _split_sequence(model)
    import keras

    layer = last_conv_stage(model)
    logits_tensor, dense, activation = _logits_tensor(model)
    start = model.inputs[0] if layer is None else layer.output
    tail_model = keras.Model(start, logits_tensor)
    head_model = None if layer is None else keras.Model(model.inputs[0], layer.output)

    def head(x: Any) -> Any:
        return x if head_model is None else head_model(x, training=False)

    def tail(a: Any, x: Any, mask: Any) -> Any:
        return _apply_dense(dense, tail_model(a, training=False))

    return Split(None if layer is None else layer.name, activation, head, tail)


def _logits_tensor(model: Any) -> tuple[Any, Any, str]:
    """The graph tensor holding the logits, the Dense layer still to apply to it (its activation dropped) or None,
    and the final activation's name."""
    from keras import layers

    final = model.layers[-1]
    activation = _activation_name(final)
    if activation is None:
        raise InputError(f"expected a classifier ending in a sigmoid or soft-max, got a final layer "
                         f"{type(final).__name__} {final.name!r}")
    if isinstance(final, layers.Activation):
        return final.input, None, activation
    return final.input, final, activation


def _apply_dense(dense: Any, features: Any) -> Any:
    if dense is None:
        return features
    from keras import ops

    return ops.matmul(features, ops.cast(dense.kernel, features.dtype)) + ops.cast(dense.bias, features.dtype)


def _split_sequence(model: Any) -> Split:
    """cnn_rnn: the encoder's last stage per slice; the tail runs the rest of the encoder, the recurrent layers and
    the scan head (attention: the scan logit; ``slice_max``: the largest slice logit over the real slices)."""
    import keras
    from keras import layers, ops

    encoder = model.get_layer("slice_encoder")
    layer = last_conv_stage(encoder)
    scan_out = model.get_layer("scan_out")
    slice_max = not isinstance(scan_out, layers.Activation)
    final = model.get_layer("slices_out") if slice_max else scan_out
    activation = _activation_name(final)
    if activation is None or layer is None:
        raise InputError(f"expected a cnn_rnn with a convolutional encoder and a sigmoid or soft-max head, got "
                         f"{type(final).__name__} {final.name!r}")
    encoder_head = keras.Model(encoder.inputs[0], layer.output)
    encoder_tail = keras.Model(layer.output, encoder.outputs[0])
    features = model.get_layer("unfold_slices").input[0]
    inputs = [features, model.get_layer("slices").output, model.get_layer("mask").output]
    sequence_tail = keras.Model(inputs, final.input)

    def head(x: Any) -> Any:
        return encoder_head(ops.reshape(x, (-1, *x.shape[2:])), training=False)

    def tail(a: Any, x: Any, mask: Any) -> Any:
        mask = ops.convert_to_tensor(mask)
        logits = sequence_tail([encoder_tail(a, training=False), ops.convert_to_tensor(x), mask], training=False)
        if not slice_max:
            return logits
        valid = ops.expand_dims(mask, -1)
        return ops.max(ops.where(valid, logits, ops.full_like(logits, -1e30)), axis=1)

    return Split(f"{encoder.name}/{layer.name}", activation, head, tail)


def upsample_linear(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize ``array`` to ``shape`` by separable linear interpolation with cell centres aligned (a cell of a map
    at 1/4 resolution covers four input pixels; its value sits at their centre), edges held constant."""
    out = np.asarray(array, np.float32)
    for axis, size in enumerate(shape):
        n = out.shape[axis]
        if n == size:
            continue
        centres = (np.arange(size) + 0.5) * n / size - 0.5
        out = np.apply_along_axis(lambda line, c=centres, m=n: np.interp(c, np.arange(m), line), axis, out)
    return out.astype(np.float32)


def _starts(length: int, patch: int, stride: int) -> list[int]:
    """Patch starts covering ``[0, length)``, the last one flush with the end."""
    starts = list(range(0, max(1, length - patch + 1), stride))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return starts


def occlusion_passes(shape: Sequence[int], patch: Sequence[int]) -> int:
    """Number of patch positions over ``shape`` (stride half a patch)."""
    return math.prod(len(_starts(n, p, max(1, p // 2))) for n, p in zip(shape, patch, strict=True))


def occlusion_patch(shape: Sequence[int]) -> tuple[int, ...]:
    """The occlusion patch for a grid: an eighth of each axis, at least one voxel."""
    return tuple(max(1, math.ceil(n / OCCLUSION_FRACTION)) for n in shape)


def occlusion_map(score: Callable[[np.ndarray], np.ndarray], image: np.ndarray, patch: Sequence[int], batch: int,
                  check: Callable[[], None]) -> np.ndarray:
    """Mean drop of ``score`` when a zero patch covers each voxel of ``image`` (``(*spatial, C)``).

    ``score`` maps a batch ``(B, *spatial, C)`` to ``(B,)``. Returns a ``spatial``-shaped float32 map (drops below
    zero, where covering made the class more likely, are kept; the caller clips them).
    """
    spatial = image.shape[:-1]
    axes = [_starts(n, p, max(1, p // 2)) for n, p in zip(spatial, patch, strict=True)]
    positions = list(itertools.product(*axes))
    base = float(score(image[None])[0])
    heat = np.zeros(spatial, np.float64)
    count = np.zeros(spatial, np.float64)
    for start in range(0, len(positions), batch):
        check()
        chunk = positions[start : start + batch]
        boxes = [tuple(slice(a, a + p) for a, p in zip(pos, patch, strict=True)) for pos in chunk]
        covered = np.repeat(image[None], len(chunk), axis=0)
        for b, box in enumerate(boxes):
            covered[(b, *box)] = 0.0
        drops = base - np.asarray(score(covered), np.float64)
        for box, drop in zip(boxes, drops, strict=True):
            heat[box] += drop
            count[box] += 1
    return (heat / np.maximum(count, 1)).astype(np.float32)
