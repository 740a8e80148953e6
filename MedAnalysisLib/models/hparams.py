"""Bounds on the hyper-parameters of the built-in model families, and what a model costs, known before it is built.

A bundle's ``hparams`` decide the size of the network that is built from MedAnalysis code. Read from an untrusted
``bundle.json`` they could ask for a billion parameters, a depth no patch allows, or a negative width, and the
first sign would be an allocator error deep inside TensorFlow. :func:`check_hparams` refuses such values with an
"expected ..., got ..." message, :func:`estimate_parameters` counts the weights from the same arithmetic the layers
use, and :func:`estimate_activation_bytes` estimates the peak working memory of one input, so that both can be
compared with a bound before anything is allocated. Nothing here imports TensorFlow or Keras.

Families registered from outside (:func:`MedAnalysisLib.models.register_model`) have no schema here: their builders
validate their own arguments, and the estimates return None for them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from MedAnalysisLib.models.topology import MAX_STAGES, UNetTopology, unet_topology

#: Most output classes (the largest public label sets, whole-body CT and brain parcellations, have a few hundred).
MAX_CLASSES = 1024
#: Most image channels a model may take (multi-parametric MR has four or five).
MAX_CHANNELS = 64
#: Widest layer (filters or units); nnU-Net's widest is 320, large classifiers 2048.
MAX_WIDTH = 4096
#: Largest fixed input size along one axis, in voxels or pixels.
MAX_SIZE = 4096
#: Most parameters a bundle's model may have: 250 M parameters are 1 GB of float32 weights, about 8x nnU-Net's
#: largest 3D U-Net (31 M); a bundle asking for more is refused before anything is built.
MAX_PARAMETERS = 250_000_000
#: Most stages or blocks of the classifiers (each halves the feature maps, so more than 8 leaves nothing to see).
MAX_BLOCKS = 8
NORMS = ("instance", "group", "batch", "none")

Check = Callable[[str, Any], None]


def _show(value: Any) -> str:
    """``repr`` of a value for a message, shortened (a hostile value can be a megabyte of JSON)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def is_integer(value: Any) -> bool:
    """An integer (numpy's too) that is not a bool (JSON ``true`` is not a width)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number (numpy's too) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int, high: int) -> Check:
    def check(name: str, value: Any) -> None:
        _require(is_integer(value) and low <= value <= high,
                 f"expected {name} to be an integer in [{low}, {high}], got {_show(value)}")

    return check


def number(low: float, high: float, *, open_high: bool = False) -> Check:
    bracket = ")" if open_high else "]"

    def check(name: str, value: Any) -> None:
        inside = is_number(value) and low <= value and (value < high if open_high else value <= high)
        _require(inside, f"expected {name} to be a finite number in [{low}, {high}{bracket}, got {_show(value)}")

    return check


def choice(options: Sequence[Any]) -> Check:
    def check(name: str, value: Any) -> None:
        _require(isinstance(value, str) and value in options,
                 f"expected {name} to be one of {tuple(options)}, got {_show(value)}")

    return check


def boolean(name: str, value: Any) -> None:
    _require(isinstance(value, bool), f"expected {name} to be true or false, got {_show(value)}")


def integers(min_len: int, max_len: int, low: int, high: int, *, free: bool = False) -> Check:
    """A list of ``min_len``..``max_len`` integers in [low, high] (``free``: null entries allowed, as free sizes)."""

    def check(name: str, value: Any) -> None:
        counted = isinstance(value, (list, tuple)) and min_len <= len(value) <= max_len
        _require(counted and all((free and item is None) or (is_integer(item) and low <= item <= high)
                                 for item in value),
                 f"expected {name} to be a list of {min_len} to {max_len} integers in [{low}, {high}]"
                 f"{' or null' if free else ''}, got {_show(value)}")

    return check


def optional(inner: Check) -> Check:
    def check(name: str, value: Any) -> None:
        if value is not None:
            inner(name, value)

    return check


def _unet_schema(ndim: int) -> dict[str, Check]:
    return {
        "n_classes": integer(2, MAX_CLASSES), "in_channels": integer(1, MAX_CHANNELS),
        "patch_size": optional(integers(ndim, ndim, 1, MAX_SIZE)),
        "filters": optional(integers(2, MAX_STAGES[ndim], 1, MAX_WIDTH)),
        "base_filters": integer(1, MAX_WIDTH), "max_filters": integer(1, MAX_WIDTH),
        "n_stages": optional(integer(2, MAX_STAGES[ndim])), "min_feature_size": integer(1, MAX_SIZE),
        "norm": choice(NORMS), "residual": boolean, "deep_supervision": boolean,
        "deep_supervision_levels": integer(0, MAX_STAGES[ndim]), "negative_slope": number(0.0, 1.0),
    }


_CLASSIFIER_COMMON: dict[str, Check] = {
    "n_classes": integer(2, MAX_CLASSES), "in_channels": integer(1, MAX_CHANNELS), "norm": choice(NORMS),
    "dropout": number(0.0, 1.0, open_high=True),
}

#: Family -> accepted hyper-parameters and their checks (the builders' keyword arguments).
SCHEMAS: dict[str, dict[str, Check]] = {
    "unet3d": _unet_schema(3),
    "unet2d": _unet_schema(2),
    "cnn3d": {**_CLASSIFIER_COMMON, "filters": integers(1, MAX_BLOCKS, 1, MAX_WIDTH), "residual": boolean,
              "input_shape": optional(integers(3, 3, 1, MAX_SIZE, free=True))},
    "slice_cnn": {**_CLASSIFIER_COMMON, "preset": choice(("basic", "global_pool", "residual")),
                  "input_shape": optional(integers(2, 3, 1, MAX_SIZE, free=True)),
                  "base_filters": integer(1, MAX_WIDTH), "n_blocks": integer(1, MAX_BLOCKS),
                  "pooling": choice(("avg", "max", "avgmax"))},
    "cnn_rnn": {**_CLASSIFIER_COMMON, "slice_shape": optional(integers(2, 2, 1, MAX_SIZE, free=True)),
                "encoder_filters": integers(1, MAX_BLOCKS, 1, MAX_WIDTH), "rnn": choice(("gru", "lstm")),
                "rnn_units": integer(1, MAX_WIDTH), "attention_units": integer(1, MAX_WIDTH),
                "scan_head": choice(("attention", "slice_max"))},
}
#: Hyper-parameters without a default in the builder.
REQUIRED = {"unet3d": {"n_classes"}, "unet2d": {"n_classes"}}
#: The builders' defaults, used by the estimates for what a bundle leaves out.
DEFAULTS: dict[str, dict[str, Any]] = {
    "unet3d": {"in_channels": 1, "base_filters": 32, "max_filters": 320, "min_feature_size": 4, "norm": "instance",
               "residual": False, "deep_supervision": False, "deep_supervision_levels": 2},
    "cnn3d": {"n_classes": 2, "in_channels": 1, "filters": (16, 32, 64, 128), "norm": "group", "residual": True},
    "slice_cnn": {"n_classes": 2, "preset": "basic", "in_channels": 1, "base_filters": 32, "n_blocks": 4,
                  "norm": "group", "pooling": "avg"},
    "cnn_rnn": {"n_classes": 2, "in_channels": 1, "encoder_filters": (16, 32, 64), "norm": "group", "rnn": "gru",
                "rnn_units": 64, "attention_units": 64, "scan_head": "attention"},
}
DEFAULTS["unet2d"] = DEFAULTS["unet3d"]


def with_defaults(family: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` completed with the builder's defaults (what the built model will use)."""
    return {**DEFAULTS.get(family, {}), **hparams}


def check_hparams(family: str, hparams: Mapping[str, Any]) -> UNetTopology | None:
    """Refuse hyper-parameters of a built-in family that are unknown, missing, of the wrong type, out of bounds or
    inconsistent with each other; return the U-Net topology they give (None for other families, and for a U-Net
    whose depth nothing decides).

    Raises:
        ValueError: With an "expected ..., got ..." message naming the hyper-parameter.
    """
    schema = SCHEMAS.get(family)
    if schema is None:
        return None
    _require(isinstance(hparams, Mapping), f"expected hyper-parameters as a JSON object, got {_show(hparams)}")
    unknown = sorted(str(key) for key in set(hparams) - set(schema))
    _require(not unknown, f"expected hyper-parameters of a {family!r} model among {sorted(schema)}, "
                          f"got unknown {_show(unknown)}")
    missing = sorted(REQUIRED.get(family, set()) - set(hparams))
    _require(not missing, f"expected the hyper-parameters {missing} of a {family!r} model, they are missing")
    for name, value in hparams.items():
        schema[name](name, value)
    values = with_defaults(family, hparams)
    if family in ("unet3d", "unet2d"):
        return _unet_consistency(family, values)
    if family == "slice_cnn" and values["preset"] == "basic":
        shape = values.get("input_shape")
        _require(shape is not None and all(s is not None and s >= 4 for s in shape[:2]),
                 f"expected a fixed (H, W) input_shape of at least 4x4 pixels for the basic preset (it flattens), "
                 f"got {_show(shape)}")
    if family == "cnn_rnn" and values["scan_head"] == "slice_max":
        _require(values["n_classes"] == 2,
                 f"expected n_classes == 2 for scan_head 'slice_max', got {_show(values['n_classes'])}")
    return None


def _unet_consistency(family: str, values: Mapping[str, Any]) -> UNetTopology | None:
    """The topology; None when nothing decides the depth (a model card only: the builder refuses to build it)."""
    ndim = 3 if family == "unet3d" else 2
    if all(values.get(key) is None for key in ("patch_size", "filters", "n_stages")):
        return None
    keys = ("patch_size", "filters", "base_filters", "max_filters", "n_stages", "min_feature_size")
    return unet_topology(ndim, **{key: values[key] for key in keys if key in values})


# ------------------------------------------------------------------------------------------------ parameters
def _conv(ndim: int, kernel: int | Sequence[int], cin: int, cout: int, norm: str, *, bias: bool | None = None) -> int:
    """Weights of one convolution (and its normalisation; batch norm counts its moving statistics too)."""
    size = kernel**ndim if isinstance(kernel, int) else math.prod(kernel)
    with_bias = norm == "none" if bias is None else bias
    norm_weights = {"instance": 2, "group": 2, "batch": 4}.get(norm, 0) * cout
    return size * cin * cout + (cout if with_bias else 0) + norm_weights


def _block(ndim: int, cin: int, cout: int, norm: str, residual: bool, strided: bool) -> int:
    """Weights of :func:`~MedAnalysisLib.models.layers.conv_block`."""
    total = _conv(ndim, 3, cin, cout, norm) + _conv(ndim, 3, cout, cout, norm)
    if residual and (cin != cout or strided):
        total += _conv(ndim, 1, cin, cout, norm)
    return total


def _head(features: int, n_classes: int) -> int:
    units = 1 if n_classes == 2 else n_classes
    return features * units + units


def _unet_parameters(ndim: int, h: Mapping[str, Any], topology: UNetTopology) -> int:
    filters, strides, norm, residual = topology.filters, topology.strides, h["norm"], h["residual"]
    total, cin = 0, h["in_channels"]
    for width, stride in zip(filters, strides, strict=True):
        total += _block(ndim, cin, width, norm, residual, any(s != 1 for s in stride))
        cin = width
    for stage in range(len(filters) - 2, -1, -1):
        total += math.prod(strides[stage + 1]) * filters[stage + 1] * filters[stage]  # transposed conv, no bias
        total += _block(ndim, 2 * filters[stage], filters[stage], norm, residual, False)
        if stage == 0 or (h["deep_supervision"] and stage <= h["deep_supervision_levels"]):
            total += filters[stage] * h["n_classes"] + h["n_classes"]
    return total


def _slice_cnn_parameters(h: Mapping[str, Any]) -> int:
    shape = h.get("input_shape") or (None, None)
    channels = shape[2] if len(shape) == 3 and shape[2] is not None else h["in_channels"]
    if h["preset"] == "basic":
        flat = ((shape[0] - 2) // 2) * ((shape[1] - 2) // 2) * 32
        return 9 * channels * 32 + 32 + flat * 64 + 64 + _head(64, h["n_classes"])
    base, norm, total = h["base_filters"], h["norm"], 0
    cin = channels
    if h["preset"] == "residual":
        total, cin = _conv(2, 5, channels, base, norm), base
    for block in range(h["n_blocks"]):
        width = base * 2**block
        if h["preset"] == "global_pool":
            total += _conv(2, 3, cin, width, norm) + _conv(2, 3, width, width, norm)
        else:
            total += _block(2, cin, width, norm, True, block > 0)
        cin = width
    return total + _head(cin * (2 if h["pooling"] == "avgmax" else 1), h["n_classes"])


def _cnn_rnn_parameters(h: Mapping[str, Any]) -> int:
    total, cin = 0, h["in_channels"]
    for width in h["encoder_filters"]:
        total += _conv(2, 3, cin, width, h["norm"]) + _conv(2, 3, width, width, h["norm"])
        cin = width
    units, gates = h["rnn_units"], (3 if h["rnn"] == "gru" else 4)
    total += 2 * gates * (cin * units + units * units + 2 * units)  # both directions; GRU keeps two biases
    total += _head(2 * units, h["n_classes"])
    if h["scan_head"] == "attention":
        attention = h["attention_units"]
        total += 2 * units * attention + 2 * attention + _head(2 * units, h["n_classes"])
    return total


def estimate_parameters(family: str, hparams: Mapping[str, Any]) -> int | None:
    """Number of weights (trainable and not) the family builds from ``hparams``, counted without building it; an
    upper bound within a few percent. None for a family without a schema.

    ``hparams`` must have passed :func:`check_hparams`.
    """
    if family not in SCHEMAS:
        return None
    h = with_defaults(family, hparams)
    if family in ("unet3d", "unet2d"):
        topology = check_hparams(family, hparams)
        return None if topology is None else _unet_parameters(3 if family == "unet3d" else 2, h, topology)
    if family == "cnn3d":
        total, cin = 0, h["in_channels"]
        for stage, width in enumerate(h["filters"]):
            total += _block(3, cin, width, h["norm"], h["residual"], stage > 0)
            cin = width
        return total + _head(cin, h["n_classes"])
    if family == "slice_cnn":
        return _slice_cnn_parameters(h)
    return _cnn_rnn_parameters(h)


# -------------------------------------------------------------------------------------------- working memory
def _halved(size: Sequence[int], times: int) -> list[int]:
    return [max(1, math.ceil(s / 2**times)) for s in size]


def estimate_activation_bytes(family: str, hparams: Mapping[str, Any], spatial: Sequence[int],
                              sequence: int = 1) -> int | None:
    """Estimated peak working memory (bytes, float32) of the model on one input of ``spatial`` voxels (``(k, j, i)``
    for 3D families, ``(j, i)`` for slice families; ``sequence`` slices for ``cnn_rnn``), before it is built.

    The estimate keeps every U-Net skip connection alive, adds four tensors of the largest stage (a convolution's
    input, output, normalisation and activation) and the input and output; classifiers keep only the four largest
    tensors. None for a family without a schema.
    """
    if family not in SCHEMAS:
        return None
    h = with_defaults(family, hparams)
    voxels = math.prod(int(s) for s in spatial)
    if family in ("unet3d", "unet2d"):
        topology = check_hparams(family, hparams)
        if topology is None:
            return None
        stage_voxels, size = [], [int(s) for s in spatial]
        for stride in topology.strides:
            size = [max(1, math.ceil(s / t)) for s, t in zip(size, stride, strict=True)]
            stage_voxels.append(math.prod(size))
        tensors = [v * w for v, w in zip(stage_voxels, topology.filters, strict=True)]
        floats = 2 * sum(tensors) + 4 * max(tensors) + voxels * (h["in_channels"] + 2 * h["n_classes"])
        return 4 * floats
    if family == "cnn3d":
        widths = list(h["filters"])
        largest = max(math.prod(_halved(spatial, stage)) * w for stage, w in enumerate(widths))
        return 4 * (4 * largest + voxels * h["in_channels"])
    widths = list(h["encoder_filters"] if family == "cnn_rnn" else
                  [h["base_filters"] * 2**b for b in range(h["n_blocks"])] if h["preset"] != "basic" else [32])
    largest = max(math.prod(_halved(spatial, block)) * w for block, w in enumerate(widths))
    return 4 * max(1, sequence) * (4 * largest + voxels * h["in_channels"])


__all__ = ["MAX_CLASSES", "MAX_PARAMETERS", "SCHEMAS", "check_hparams", "estimate_activation_bytes",
           "estimate_parameters", "with_defaults"]
