"""``cnn_rnn``: a scan read as a sequence of axial slices.

A 2D CNN encoder runs on every slice (time-distributed: the slices are folded into the batch axis, see
:class:`~MedAnalysisLib.models.layers.FoldSlices`), a bidirectional GRU or LSTM reads the slice features
in order, and two heads predict

* ``"slices"``: one prediction per slice, ``(B, S, n_out)`` (e.g. "this slice contains the structure");
* ``"scan"``: one prediction per scan, ``(B, n_out)``, from attention pooling over the real slices, or (with
  ``scan_head="slice_max"``) the largest per-slice probability over the real slices.

``n_out`` is 1 (sigmoid = P(class 1)) for two classes and ``n_classes`` (softmax) otherwise; outputs are float32.

Inputs (a dict): ``"slices"``: ``(B, S, H, W, C)`` float32, slices in increasing k order, zero-padded at the end
to the longest scan of the batch; ``"mask"``: ``(B, S)`` bool, True for real slices. Padded slices do not reach
the recurrent state or the attention pooling, so a scan's ``"scan"`` output does not depend on the padding (its
per-slice outputs at padded positions are meaningless and must be ignored, e.g. with the mask as sample weight).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from MedAnalysisLib.models import register_model
from MedAnalysisLib.models.layers import (
    NORMS,
    ApplyMask,
    FoldSlices,
    MaskedAttentionPooling,
    MaskedMaxPooling,
    UnfoldSlices,
    conv_norm_act,
)


def build_slice_encoder(
    slice_shape: tuple[int | None, int | None], in_channels: int, filters: Sequence[int], norm: str
) -> keras.Model:
    """Per-slice encoder ``(H, W, C) -> (F,)``: conv-norm-ReLU blocks with max-pooling, then global average pooling."""
    inputs = keras.Input(shape=(*slice_shape, in_channels), name="slice")
    x = inputs
    for block, width in enumerate(filters):
        x = conv_norm_act(x, int(width), ndim=2, name=f"enc{block}_a", norm=norm)
        x = conv_norm_act(x, int(width), ndim=2, name=f"enc{block}_b", norm=norm)
        x = layers.MaxPooling2D(2, padding="same", name=f"enc{block}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="enc_pool")(x)
    return keras.Model(inputs, x, name="slice_encoder")


@register_model("cnn_rnn", task="classification")
def build_cnn_rnn(
    *,
    n_classes: int = 2,
    slice_shape: Sequence[int | None] | None = None,
    in_channels: int = 1,
    encoder_filters: Sequence[int] = (16, 32, 64),
    norm: str = "group",
    rnn: str = "gru",
    rnn_units: int = 64,
    attention_units: int = 64,
    dropout: float = 0.2,
    scan_head: str = "attention",
) -> keras.Model:
    """Build the slice-sequence model.

    Args:
        n_classes: Classes of the per-slice and per-scan targets (2 gives sigmoid outputs of size 1).
        slice_shape: ``(H, W)`` of the slices in pixels, or ``None`` for free sizes.
        in_channels: Image channels.
        encoder_filters: Width of each encoder block.
        norm: Normalisation in the encoder (``"group"``, ``"instance"``, ``"batch"``, ``"none"``).
        rnn: ``"gru"`` or ``"lstm"``.
        rnn_units: Units per direction.
        attention_units: Hidden size of the attention scorer.
        dropout: Dropout on the slice features and before the scan head.
        scan_head: ``"attention"``: the scan prediction comes from attention pooling of the recurrent features;
            ``"slice_max"`` (two classes only): the scan probability is the largest per-slice probability over the
            real slices (multiple-instance learning: "the scan holds a finding when one of its slices does"), which
            learns from few scans because every scan label also trains the per-slice head.
    """
    if n_classes < 2:
        raise ValueError(f"expected n_classes >= 2, got {n_classes}")
    if rnn not in ("gru", "lstm"):
        raise ValueError(f"expected rnn 'gru' or 'lstm', got {rnn!r}")
    if scan_head not in ("attention", "slice_max"):
        raise ValueError(f"expected scan_head 'attention' or 'slice_max', got {scan_head!r}")
    if scan_head == "slice_max" and n_classes != 2:
        raise ValueError(f"expected n_classes == 2 for scan_head 'slice_max', got {n_classes}")
    if norm not in NORMS:
        raise ValueError(f"expected norm to be one of {NORMS}, got {norm!r}")
    shape = (None, None) if slice_shape is None else tuple(None if s is None else int(s) for s in slice_shape)
    if len(shape) != 2:
        raise ValueError(f"expected slice_shape (H, W), got {list(slice_shape or [])}")
    slices = keras.Input(shape=(None, *shape, in_channels), name="slices")
    mask = keras.Input(shape=(None,), dtype="bool", name="mask")
    encoder = build_slice_encoder(shape, in_channels, encoder_filters, norm)  # type: ignore[arg-type]
    features = UnfoldSlices(name="unfold_slices")([encoder(FoldSlices(name="fold_slices")(slices)), slices])
    if dropout > 0:
        features = layers.Dropout(dropout, name="feature_dropout")(features)
    features = ApplyMask(name="apply_mask")([features, mask])
    cell = layers.GRU if rnn == "gru" else layers.LSTM
    sequence = layers.Bidirectional(cell(rnn_units, return_sequences=True, name=rnn), name="bidirectional")(features)
    units, activation = (1, "sigmoid") if n_classes == 2 else (n_classes, "softmax")
    per_slice = layers.Dense(units, name="slice_logits")(sequence)
    per_slice = layers.Activation(activation, dtype="float32", name="slices_out")(per_slice)
    if scan_head == "slice_max":
        scan = MaskedMaxPooling(name="scan_out")(per_slice, mask=mask)
    else:
        pooled = MaskedAttentionPooling(attention_units, name="attention_pool")(sequence, mask=mask)
        if dropout > 0:
            pooled = layers.Dropout(dropout, name="scan_dropout")(pooled)
        scan = layers.Dense(units, name="scan_logits")(pooled)
        scan = layers.Activation(activation, dtype="float32", name="scan_out")(scan)
    return keras.Model({"slices": slices, "mask": mask}, {"slices": per_slice, "scan": scan}, name="cnn_rnn")
