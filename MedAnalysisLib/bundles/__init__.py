"""Model bundles: load any bundle (single or ensemble), save one, inspect one.

A bundle is everything needed to run a trained model exactly as it was trained (DESIGN.md, decision 3):

* ``bundle.json``: a :class:`BundleConfig` (schema version, task, model family and hyper-parameters, input spec,
  the full preprocessing plan, labels with names, RGB colours and terminology codes, inference defaults, training
  provenance) and the sha256 of the weights file;
* ``model.weights.h5``: the Keras weights, nothing else;
* optional sidecars such as ``training_log.csv`` (one row per epoch).

An *ensemble* is a folder (or .zip) with ``ensemble.json`` and one complete bundle per member; it loads, runs and
prints like a single bundle (:mod:`MedAnalysisLib.bundles.ensemble`).

The architecture is always rebuilt from MedAnalysisLib code (:func:`MedAnalysisLib.models.build_model`), and
weights are read only after their sha256 matches ``bundle.json``. Nothing in a bundle is ever executed or
deserialised as code: no ``keras.models.load_model``, no pickle, no SavedModel, no ``eval``. ``.keras`` files,
SavedModel folders and pickles offered as bundles are refused before any of their bytes are interpreted.

The face of the package:

* load: :func:`load_bundle` (a :class:`LoadedBundle`; its :attr:`~LoadedBundle.members` are the single bundles that
  run: the bundle itself, or an ensemble's members);
* save: :func:`save_bundle`, :func:`make_ensemble`, :func:`copy_with_inference_defaults` (also changes the model
  card);
* inspect: :func:`read_bundle_config` (no TensorFlow; the Slicer panel shows model cards with it),
  :func:`bundle_summary` and :func:`card_sections` (the model card as headings and rows, shared by ``info`` and the
  panel; :mod:`MedAnalysisLib.bundles.card`).

Inside, the modules only import downward: ``config`` (``bundle.json``) < ``storage`` (files, archives, hashes) <
``single`` < ``ensemble``; ``card`` (the model card) sits below ``config``; ``summary`` needs ``config`` and
``card``; this face dispatches between single and ensemble.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from MedAnalysisLib.bundles.card import (
    CARD_FIELDS,
    NOT_FOR_CLINICAL_USE,
    NOT_STATED,
    card_sections,
    check_card,
    check_card_part,
    evaluation_from_summary,
    merge_cards,
    with_change,
)
from MedAnalysisLib.bundles.config import (
    BUNDLE_SCHEMA_VERSION,
    CONFIG_FILE,
    INFERENCE_DEFAULTS,
    MAX_CONFIG_BYTES,
    TASKS,
    TRAINING_LOG_FILE,
    WEIGHTS_FILE,
    BundleConfig,
    changed_defaults,
    expect,
)
from MedAnalysisLib.bundles.ensemble import (
    ENSEMBLE_FILE,
    EnsembleConfig,
    LoadedEnsemble,
    copy_ensemble_with_inference_defaults,
    is_ensemble,
    load_ensemble,
    make_ensemble,
    read_ensemble_config,
)
from MedAnalysisLib.bundles.single import (
    LoadedBundle,
    copy_single_with_inference_defaults,
    load_single,
    read_single_config,
    save_bundle,
)
from MedAnalysisLib.bundles.storage import sha256_file
from MedAnalysisLib.bundles.summary import bundle_summary
from MedAnalysisLib.errors import BundleError
from MedAnalysisLib.labels import DEFAULT_COLORS, LabelInfo, default_labels


def read_bundle_config(path: str | os.PathLike[str]) -> BundleConfig:
    """Read and validate ``bundle.json`` from a bundle folder, the json file itself, or a .zip bundle.

    Does not import TensorFlow or Keras and does not check the weights (that happens in :func:`load_bundle`). For
    an ensemble it returns the ensemble's model card (:func:`MedAnalysisLib.bundles.ensemble.read_ensemble_config`).

    Raises:
        BundleError: Not a bundle, unsafe archive, invalid JSON, unknown keys, wrong schema version or types.
    """
    path = Path(path)
    expect(path.exists(), f"expected a bundle folder or .zip at {path}, found nothing")
    return read_ensemble_config(path) if is_ensemble(path) else read_single_config(path)


def load_bundle(path: str | os.PathLike[str]) -> LoadedBundle:
    """Load a bundle folder or .zip: validate ``bundle.json``, check the weights' sha256, build and load the model.

    The model is returned uncompiled, ready for ``predict`` or ``__call__``. An ensemble path gives a
    :class:`LoadedEnsemble`, whose members are each loaded this way.

    Args:
        path: Bundle folder, its ``bundle.json``, or a .zip of the folder (or an ensemble folder or .zip).

    Raises:
        BundleError: Any check fails (see :func:`read_bundle_config`), the weights hash differs, or the weights do
            not fit the architecture the config describes. Nothing from the bundle was executed.
    """
    path = Path(path)
    expect(path.exists(), f"expected a bundle folder or .zip at {path}, found nothing")
    return load_ensemble(path) if is_ensemble(path) else load_single(path)


def copy_with_inference_defaults(source: str | os.PathLike[str], out: str | os.PathLike[str], *,
                                 card: Mapping[str, Any] | None = None, evaluation: Mapping[str, Any] | None = None,
                                 **changes: Any) -> Path:
    """Write a copy of a bundle (or an ensemble) whose inference defaults (``overlap``, ``tta``, ``postprocess``)
    or model card are changed.

    The weights are verified and copied byte for byte (same sha256), with the sidecars such as the training log;
    ``training.inference_defaults_changed`` (an ensemble: ``provenance.inference_defaults_changed``) records what
    changed (old, new). The source is never modified: ``out`` must be another path. Use it to store settings chosen
    on validation cases after training, so that ``medanalysis predict`` with the new bundle reproduces them, and to
    complete the model card.

    Args:
        source, out: The bundle and its copy.
        card: Fields of the model card to replace (a part of a card, checked; ``training_data`` merged key by key).
        evaluation: The parsed ``summary.json`` of ``medanalysis evaluate`` run with this bundle: its headline
            metrics with their bootstrap intervals become the card's evaluation
            (:func:`~MedAnalysisLib.bundles.card.evaluation_from_summary`).
        changes: Inference defaults; None keeps one.

    Every copy appends one entry to the card's changelog saying what changed.

    Raises:
        BundleError: ``out`` is the source, an unknown setting, an invalid value or card field, a summary of another
            bundle.
    """
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise BundleError(f"expected an output other than the source bundle {source.name!r} (bundles are never "
                          "changed in place)")
    changed_defaults({}, changes)  # refuses unknown settings before anything is loaded
    part = check_card_part(dict(card or {}))
    loaded = load_bundle(source)
    try:
        if evaluation is not None:
            part["evaluation"] = evaluation_from_summary(evaluation, loaded.weights_sha256, loaded.config.task)
        new_card = with_change(merge_cards(loaded.config.card, part), _changes_text(loaded.config, part, changes,
                                                                                    evaluation is not None))
        if isinstance(loaded, LoadedEnsemble):
            return copy_ensemble_with_inference_defaults(loaded, out, changes, new_card)
        return copy_single_with_inference_defaults(loaded, out, changes, new_card)
    finally:
        loaded.cleanup()


def _changes_text(config: BundleConfig, card: Mapping[str, Any], changes: Mapping[str, Any], evaluated: bool) -> str:
    """What a copy changed, for its changelog entry: the card fields and the inference defaults (old -> new)."""
    parts = []
    fields = [key for key in card if key != "changelog" and not (evaluated and key == "evaluation")]
    if fields:
        parts.append("model card fields changed: " + ", ".join(fields))
    if evaluated:
        parts.append("evaluation from a medanalysis evaluate summary")
    inference = [f"{key} {config.inference.get(key)} -> {value}" for key, value in changes.items()
                 if value is not None and config.inference.get(key) != value]
    if inference:
        parts.append("inference defaults changed: " + ", ".join(inference))
    return "; ".join(parts) or "copied without changes"


__all__ = [
    "BUNDLE_SCHEMA_VERSION",
    "CONFIG_FILE",
    "DEFAULT_COLORS",
    "ENSEMBLE_FILE",
    "INFERENCE_DEFAULTS",
    "MAX_CONFIG_BYTES",
    "TASKS",
    "TRAINING_LOG_FILE",
    "WEIGHTS_FILE",
    "BundleConfig",
    "EnsembleConfig",
    "LabelInfo",
    "LoadedBundle",
    "LoadedEnsemble",
    "CARD_FIELDS",
    "NOT_FOR_CLINICAL_USE",
    "NOT_STATED",
    "bundle_summary",
    "card_sections",
    "check_card",
    "copy_with_inference_defaults",
    "default_labels",
    "load_bundle",
    "make_ensemble",
    "read_bundle_config",
    "save_bundle",
    "sha256_file",
]
