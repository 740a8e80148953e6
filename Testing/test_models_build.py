"""Every model family builds, trains one step, predicts with the documented output contract, and round-trips its
configuration; the `basic` preset is the textbook network; cnn_rnn masks padded slices."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from MedAnalysisLib.losses import BinaryCrossEntropy, DiceCELoss
from MedAnalysisLib.models import MODEL_FAMILIES, build_model, build_training_model, family_task
from MedAnalysisLib.models.layers import ApplyMask, MaskedAttentionPooling
from MedAnalysisLib.models.unet import deep_supervision_strides, total_stride, unet_topology

RNG = np.random.default_rng(0)


def test_registry_lists_every_family_with_its_task() -> None:
    assert set(MODEL_FAMILIES) >= {"unet2d", "unet3d", "slice_cnn", "cnn3d", "cnn_rnn"}
    assert family_task("unet3d") == "segmentation"
    assert family_task("cnn_rnn") == "classification"
    with pytest.raises(ValueError, match="expected a model family"):
        build_model("resnet9000")


def test_unet_topology_follows_the_patch_size() -> None:
    # 96^3 with the benchmark widths: four halvings, 96 -> 6.
    topology = unet_topology(3, patch_size=(96, 96, 96), filters=(16, 32, 64, 128, 256))
    assert topology.strides[1:] == ((2, 2, 2),) * 4
    assert topology.total_stride == (16, 16, 16)
    # Anisotropic patch: the short k axis stops halving before j and i do.
    topology = unet_topology(3, patch_size=(16, 64, 64), base_filters=8)
    assert topology.strides[1:] == ((2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2))
    assert topology.filters == (8, 16, 32, 64, 128)
    assert total_stride(3, patch_size=(16, 64, 64)) == (4, 16, 16)
    with pytest.raises(ValueError, match="allows"):
        unet_topology(3, patch_size=(8, 8, 8), filters=(4, 8, 16, 32))


@pytest.mark.parametrize("ndim", [2, 3])
def test_unet_trains_one_step_and_outputs_probabilities(ndim: int) -> None:
    patch = (8,) * ndim
    model = build_model(f"unet{ndim}d", n_classes=3, in_channels=2, patch_size=patch, filters=(4, 8),
                        residual=ndim == 3, norm="group" if ndim == 2 else "instance")
    x = RNG.normal(size=(2, *patch, 2)).astype("float32")
    y = RNG.integers(0, 3, size=(2, *patch)).astype("int32")
    model.compile(optimizer="adam", loss=DiceCELoss(3), jit_compile=False)
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    probs = model(x, training=False).numpy()
    assert probs.shape == (2, *patch, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_unet_deep_supervision_exists_only_in_the_training_graph() -> None:
    hparams = {"n_classes": 2, "patch_size": (16, 32, 32), "filters": (4, 8, 16, 32), "deep_supervision": True}
    inference, training = build_training_model("unet3d", **hparams)
    assert len(inference.outputs) == 1
    assert len(training.outputs) == 3
    strides = deep_supervision_strides(3, **hparams)
    assert strides == [(2, 2, 2), (4, 4, 4)]
    x = RNG.normal(size=(1, 16, 32, 32, 1)).astype("float32")
    outputs = training(x)
    assert [tuple(o.shape) for o in outputs] == [(1, 16, 32, 32, 2), (1, 8, 16, 16, 2), (1, 4, 8, 8, 2)]
    # The inference model is the same weights: its output equals the training model's first output.
    np.testing.assert_allclose(inference(x).numpy(), outputs[0].numpy(), atol=1e-6)


def test_basic_preset_is_the_textbook_network() -> None:
    model = build_model("slice_cnn", preset="basic", input_shape=(28, 28, 1))
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    conv, pool, _, hidden, out = model.layers
    assert (conv.filters, conv.kernel_size, conv.activation.__name__) == (32, (3, 3), "relu")
    assert pool.pool_size == (2, 2)
    assert (hidden.units, hidden.activation.__name__) == (64, "relu")
    assert (out.units, out.activation.__name__) == (1, "sigmoid")
    # Same parameter count as the textbook: conv 3*3*1*32+32, dense 13*13*32*64+64, out 64+1.
    assert model.count_params() == 320 + 13 * 13 * 32 * 64 + 64 + 65
    with pytest.raises(ValueError, match="fixed"):
        build_model("slice_cnn", preset="basic")


@pytest.mark.parametrize(
    ("family", "hparams", "shape", "train"),
    [
        ("slice_cnn", {"preset": "basic", "input_shape": (16, 16, 1)}, (3, 16, 16, 1), True),
        ("slice_cnn", {"preset": "global_pool", "base_filters": 4, "n_blocks": 2}, (3, 20, 24, 1), False),
        ("slice_cnn", {"preset": "residual", "base_filters": 4, "n_blocks": 2, "n_classes": 3}, (3, 16, 16, 1), False),
        ("slice_cnn", {"preset": "global_pool", "base_filters": 4, "n_blocks": 2, "pooling": "max", "norm": "batch"},
         (3, 20, 24, 1), True),
        ("slice_cnn", {"preset": "residual", "base_filters": 4, "n_blocks": 2, "pooling": "avgmax"}, (3, 16, 16, 1),
         False),
        ("cnn3d", {"filters": (4, 8), "n_classes": 2}, (3, 8, 16, 16, 1), False),
        ("cnn3d", {"filters": (4, 8), "n_classes": 4, "residual": False}, (3, 8, 16, 16, 1), True),
    ],
)
def test_classifiers_follow_the_output_contract(family: str, hparams: dict, shape: tuple, train: bool) -> None:
    model = build_model(family, **hparams)
    n_classes = hparams.get("n_classes", 2)
    x = RNG.normal(size=shape).astype("float32")
    y = RNG.integers(0, n_classes, size=(shape[0],))
    if train and n_classes == 2:
        model.compile(optimizer="adam", loss=BinaryCrossEntropy(), jit_compile=False)
        assert np.isfinite(model.train_on_batch(x, y.reshape(-1, 1).astype("float32")))
    elif train:
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=False)
        assert np.isfinite(model.train_on_batch(x, y))
    out = model(x, training=False).numpy()
    if n_classes == 2:
        assert out.shape == (shape[0], 1) and np.all((out >= 0) & (out <= 1))
    else:
        assert out.shape == (shape[0], n_classes)
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_slice_cnn_global_max_pooling_sees_a_finding_anywhere_in_the_slice() -> None:
    """``pooling="max"``: the pooled features are the largest activation of each channel, so one bright spot moved
    across a blank slice leaves them (nearly) unchanged, while average pooling keeps them equal only by symmetry;
    ``"avgmax"`` concatenates both; an unknown pooling is refused by name."""
    model = build_model("slice_cnn", preset="global_pool", base_filters=4, n_blocks=1, pooling="max", norm="none",
                        dropout=0.0)
    features = keras.Model(model.input, model.get_layer("pool").output)
    x = np.zeros((2, 32, 32, 1), "float32")
    x[0, 8, 8, 0] = x[1, 20, 22, 0] = 5.0
    pooled = features(x).numpy()
    np.testing.assert_allclose(pooled[0], pooled[1], rtol=1e-5, atol=1e-6)
    both = build_model("slice_cnn", preset="residual", base_filters=4, n_blocks=2, pooling="avgmax")
    assert both.get_layer("pool").output.shape[-1] == 2 * both.get_layer("pool_avg").output.shape[-1]
    with pytest.raises(ValueError, match="expected pooling to be one of"):
        build_model("slice_cnn", preset="global_pool", pooling="sum")


def _cnn_rnn() -> keras.Model:
    return build_model("cnn_rnn", slice_shape=(16, 16), encoder_filters=(4, 8), rnn_units=6, attention_units=5,
                       dropout=0.0)


def test_cnn_rnn_handles_scans_with_different_slice_counts() -> None:
    model = _cnn_rnn()
    long_scan = RNG.normal(size=(1, 7, 16, 16, 1)).astype("float32")
    short_scan = RNG.normal(size=(1, 4, 16, 16, 1)).astype("float32")
    # One batch of both, the short one zero-padded with its mask.
    batch = np.zeros((2, 7, 16, 16, 1), "float32")
    batch[0], batch[1, :4] = long_scan[0], short_scan[0]
    mask = np.zeros((2, 7), bool)
    mask[0], mask[1, :4] = True, True
    together = model({"slices": batch, "mask": mask}, training=False)
    assert together["slices"].shape == (2, 7, 1) and together["scan"].shape == (2, 1)
    alone = model({"slices": short_scan, "mask": np.ones((1, 4), bool)}, training=False)
    # Padding changes nothing for the short scan: same scan prediction, same per-slice predictions.
    np.testing.assert_allclose(together["scan"].numpy()[1], alone["scan"].numpy()[0], atol=1e-5)
    np.testing.assert_allclose(together["slices"].numpy()[1, :4], alone["slices"].numpy()[0], atol=1e-5)
    # Without the mask the padding would change the result: the mask is what makes them equal.
    unmasked = model({"slices": batch, "mask": np.ones((2, 7), bool)}, training=False)
    assert abs(float(unmasked["scan"][1, 0]) - float(alone["scan"][0, 0])) > 1e-6


def test_cnn_rnn_trains_one_step_with_masked_slice_loss() -> None:
    model = build_model("cnn_rnn", slice_shape=(16, 16), encoder_filters=(4,), rnn="lstm", rnn_units=4,
                        attention_units=4, n_classes=3)
    x = RNG.normal(size=(2, 5, 16, 16, 1)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], bool)
    y = {"slices": RNG.integers(0, 3, size=(2, 5)), "scan": np.array([0, 2])}
    model.compile(optimizer="adam", loss={"slices": "sparse_categorical_crossentropy",
                                          "scan": "sparse_categorical_crossentropy"}, jit_compile=False)
    logs = model.train_on_batch({"slices": x, "mask": mask}, y,
                                sample_weight={"slices": mask.astype("float32"), "scan": np.ones(2, "float32")},
                                return_dict=True)
    assert np.isfinite(logs["loss"])
    out = model({"slices": x, "mask": mask}, training=False)
    assert out["scan"].shape == (2, 3) and out["slices"].shape == (2, 5, 3)


def test_custom_layers_round_trip_their_config() -> None:
    layer = MaskedAttentionPooling(units=7, return_weights=True, name="pool")
    clone = MaskedAttentionPooling.from_config(layer.get_config())
    assert (clone.units, clone.return_weights, clone.name) == (7, True, "pool")
    assert keras.saving.get_registered_object("MedAnalysis>MaskedAttentionPooling") is MaskedAttentionPooling
    assert ApplyMask.from_config(ApplyMask(name="m").get_config()).name == "m"


@pytest.mark.parametrize("family", ["unet3d", "cnn_rnn", "slice_cnn"])
def test_model_config_round_trips_with_identical_predictions(family: str) -> None:
    if family == "unet3d":
        model = build_model("unet3d", n_classes=2, patch_size=(16, 16, 16), filters=(4, 8), residual=True)
        x: object = RNG.normal(size=(1, 16, 16, 16, 1)).astype("float32")
    elif family == "cnn_rnn":
        model = _cnn_rnn()
        x = {"slices": RNG.normal(size=(2, 3, 16, 16, 1)).astype("float32"), "mask": np.array([[1, 1, 1], [1, 0, 0]], bool)}
    else:
        model = build_model("slice_cnn", preset="residual", base_filters=4, n_blocks=2)
        x = RNG.normal(size=(2, 16, 16, 1)).astype("float32")
    clone = model.__class__.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    expected, got = model(x, training=False), clone(x, training=False)
    if isinstance(expected, dict):
        for key in expected:
            np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), atol=1e-6)
    else:
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6)


def test_folded_slice_encoder_equals_encoding_each_slice_alone() -> None:
    from MedAnalysisLib.models.cnn_rnn import build_slice_encoder
    from MedAnalysisLib.models.layers import FoldSlices, UnfoldSlices

    encoder = build_slice_encoder((16, 16), 1, (4, 8), "group")
    scans = RNG.normal(size=(2, 3, 16, 16, 1)).astype("float32")
    folded = UnfoldSlices()([encoder(FoldSlices()(scans)), scans])
    assert tuple(folded.shape) == (2, 3, 8)
    for b in range(2):
        for s in range(3):
            np.testing.assert_allclose(folded[b, s].numpy(), encoder(scans[b, s][None])[0].numpy(), atol=1e-5)


def test_cnn_rnn_slice_max_scan_head_is_the_largest_real_slice_probability() -> None:
    model = build_model("cnn_rnn", slice_shape=(16, 16), encoder_filters=(4,), rnn_units=4, dropout=0.0,
                        scan_head="slice_max")
    x = RNG.normal(size=(2, 6, 16, 16, 1)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], bool)
    out = model({"slices": x, "mask": mask}, training=False)
    slices, scan = out["slices"].numpy()[..., 0], out["scan"].numpy()[:, 0]
    np.testing.assert_allclose(scan, [slices[0].max(), slices[1, :3].max()], atol=1e-6)
    clone = model.__class__.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone({"slices": x, "mask": mask}, training=False)["scan"].numpy()[:, 0], scan, atol=1e-6)
    with pytest.raises(ValueError, match="n_classes == 2"):
        build_model("cnn_rnn", slice_shape=(16, 16), n_classes=3, scan_head="slice_max")
