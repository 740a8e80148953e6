"""Model families, registered by name and built from code (never deserialised from files).

Importing this package does not import Keras: the family modules are imported when a model is first built, so
that :mod:`MedAnalysisLib.bundles` can validate family names without TensorFlow.

Output contract (all inputs channels-last, float32):

* segmentation (``unet2d``, ``unet3d``): softmax probabilities ``(B, *spatial, n_classes)`` float32; the
  inference model has one output (deep-supervision outputs exist only in the training graph, see
  :func:`build_training_model`);
* binary classification (``slice_cnn``, ``cnn3d`` with ``n_classes=2``): ``(B, 1)`` sigmoid = P(class 1);
  multi-class: ``(B, n_classes)`` softmax;
* ``cnn_rnn``: inputs ``{"slices": (B, S, H, W, C), "mask": (B, S) bool}``, outputs a dict
  ``{"slices": (B, S, n_out), "scan": (B, n_out)}`` (sigmoid for binary, softmax otherwise).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

#: Family name -> (module that defines it, task, one-line description). Filled for the built-in families here;
#: :func:`register_model` adds entries for families defined elsewhere.
MODEL_FAMILIES: dict[str, dict[str, str]] = {
    "unet2d": {"module": "MedAnalysisLib.models.unet", "task": "segmentation",
               "description": "nnU-Net-style 2D U-Net on slices"},
    "unet3d": {"module": "MedAnalysisLib.models.unet", "task": "segmentation",
               "description": "nnU-Net-style 3D U-Net on patches"},
    "slice_cnn": {"module": "MedAnalysisLib.models.slice_cnn", "task": "classification",
                  "description": "2D CNN classifier of single slices (presets: basic, global_pool, residual)"},
    "cnn3d": {"module": "MedAnalysisLib.models.cnn3d", "task": "classification",
              "description": "3D CNN classifier of whole volumes"},
    "cnn_rnn": {"module": "MedAnalysisLib.models.cnn_rnn", "task": "classification",
                "description": "per-slice 2D CNN + bidirectional RNN over slices, per-slice and whole-scan heads"},
}

#: Family name -> builder ``(**hparams) -> (inference_model, training_model)``; filled by the family modules.
_BUILDERS: dict[str, Callable[..., tuple[keras.Model, keras.Model]]] = {}


def register_model(
    name: str, *, task: str = "segmentation", description: str = ""
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``builder(**hparams) -> (inference_model, training_model)`` under ``name``.

    The two models share their layers; they differ only when the training graph has extra outputs (deep
    supervision). A builder may return a single model, used for both.
    """

    def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
        entry = MODEL_FAMILIES.setdefault(name, {"module": builder.__module__, "task": task,
                                                 "description": description})
        if description:
            entry["description"] = description
        _BUILDERS[name] = builder
        return builder

    return decorate


def _builder(family: str) -> Callable[..., Any]:
    if family not in MODEL_FAMILIES:
        raise ValueError(f"expected a model family among {sorted(MODEL_FAMILIES)}, got {family!r}")
    if family not in _BUILDERS:
        importlib.import_module(MODEL_FAMILIES[family]["module"])
    return _BUILDERS[family]


def check_model_size(family: str, hparams: dict[str, Any]) -> None:
    """Refuse hyper-parameters of a built-in family that are out of bounds (:mod:`MedAnalysisLib.models.hparams`)
    or that would build more than :data:`~MedAnalysisLib.models.hparams.MAX_PARAMETERS` weights, before any layer
    is allocated.

    Raises:
        ValueError: With an "expected ..., got ..." message.
    """
    from MedAnalysisLib.models.hparams import MAX_PARAMETERS, check_hparams, estimate_parameters

    check_hparams(family, hparams)
    parameters = estimate_parameters(family, hparams)
    if parameters is not None and parameters > MAX_PARAMETERS:
        raise ValueError(f"expected a model of at most {MAX_PARAMETERS:,} parameters, got hyper-parameters that "
                         f"build about {parameters:,}")


def build_training_model(family: str, **hparams: Any) -> tuple[keras.Model, keras.Model]:
    """Build ``(inference_model, training_model)`` of a family; they share every layer and weight.

    The hyper-parameters are checked (:func:`check_model_size`) before anything is built.
    """
    builder = _builder(family)
    check_model_size(family, hparams)
    built = builder(**hparams)
    if isinstance(built, tuple):
        return built
    return built, built


def build_model(family: str, **hparams: Any) -> keras.Model:
    """Build the inference model of a family from its hyper-parameters (see each family module for them).

    Raises:
        ValueError: Unknown family or invalid hyper-parameters (the message says what was expected).
    """
    return build_training_model(family, **hparams)[0]


def family_task(family: str) -> str:
    """``"segmentation"`` or ``"classification"`` for a registered family."""
    if family not in MODEL_FAMILIES:
        raise ValueError(f"expected a model family among {sorted(MODEL_FAMILIES)}, got {family!r}")
    return MODEL_FAMILIES[family]["task"]


__all__ = ["MODEL_FAMILIES", "build_model", "build_training_model", "check_model_size", "family_task",
           "register_model"]
