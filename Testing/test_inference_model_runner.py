"""The Keras model runner: tf.function-wrapped predict, batched vs unbatched windows, bfloat16 copy."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from MedAnalysisLib.inference.model_runner import keras_predict_fn, resolve_precision, with_precision  # noqa: E402
from MedAnalysisLib.inference.sliding_window import sliding_window_predict  # noqa: E402


def tiny_segmenter(n_classes: int = 3, seed: int = 0) -> keras.Model:
    """A small fully convolutional 3D network with a down/up path (channels last)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, None, 1))
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)
    y = keras.layers.MaxPooling3D(2)(x)
    y = keras.layers.Conv3D(8, 3, padding="same", activation="relu")(y)
    y = keras.layers.UpSampling3D(2)(y)
    x = keras.layers.Concatenate()([x, y])
    x = keras.layers.Conv3D(n_classes, 1)(x)
    outputs = keras.layers.Softmax()(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return tiny_segmenter()


def test_one_window_equals_the_direct_model_call(model: keras.Model) -> None:
    image = np.random.default_rng(1).normal(size=(8, 16, 12, 1)).astype(np.float32)
    predict_fn = keras_predict_fn(model, precision="float32", patch_size=(8, 16, 12))
    assert predict_fn.window_activation_bytes > 0
    result = sliding_window_predict(predict_fn, image, (8, 16, 12), n_classes=3)
    direct = np.asarray(model(image[None], training=False))[0]
    np.testing.assert_allclose(result, direct, atol=1e-5)
    np.testing.assert_allclose(result.sum(-1), 1.0, atol=1e-5)


def test_batched_and_unbatched_windows_agree(model: keras.Model) -> None:
    image = np.random.default_rng(2).normal(size=(12, 20, 20, 1)).astype(np.float32)
    predict_fn = keras_predict_fn(model, precision="float32")
    one = sliding_window_predict(predict_fn, image, (8, 8, 8), n_classes=3, overlap=0.5, batch_size=1)
    many = sliding_window_predict(predict_fn, image, (8, 8, 8), n_classes=3, overlap=0.5, batch_size=5)
    np.testing.assert_allclose(one, many, atol=1e-5)
    top2 = np.sort(one, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4  # voxels not on a near-tie between two classes
    np.testing.assert_array_equal(np.argmax(one, -1)[clear], np.argmax(many, -1)[clear])


def test_bfloat16_copy_keeps_weights_and_float32_outputs(model: keras.Model) -> None:
    clone = with_precision(model, "bfloat16")
    assert clone is not model
    assert all(w.dtype == "float32" for w in clone.weights)
    image = np.random.default_rng(3).normal(size=(1, 8, 8, 8, 1)).astype(np.float32)
    predict_fn = keras_predict_fn(model, precision="bfloat16")
    low = predict_fn(image)
    assert low.dtype == np.float32 and predict_fn.precision == "bfloat16"
    np.testing.assert_allclose(low, np.asarray(model(image)), atol=3e-2)
    assert with_precision(model, "float32") is model
    assert resolve_precision("float32") == "float32"
    with pytest.raises(Exception, match="expected precision"):
        resolve_precision("fp8")
