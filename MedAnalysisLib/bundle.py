"""Former name of :mod:`MedAnalysisLib.bundles` (single bundles), kept so that existing scripts keep working.

New code imports from :mod:`MedAnalysisLib.bundles`, which loads, saves and inspects single bundles and ensembles
alike. Nothing in the library imports this module.
"""

from __future__ import annotations

from MedAnalysisLib.bundles import (
    BUNDLE_SCHEMA_VERSION,
    CONFIG_FILE,
    DEFAULT_COLORS,
    MAX_CONFIG_BYTES,
    TASKS,
    TRAINING_LOG_FILE,
    WEIGHTS_FILE,
    BundleConfig,
    LabelInfo,
    LoadedBundle,
    bundle_summary,
    copy_with_inference_defaults,
    default_labels,
    load_bundle,
    read_bundle_config,
    save_bundle,
    sha256_file,
)

__all__ = ["BUNDLE_SCHEMA_VERSION", "CONFIG_FILE", "DEFAULT_COLORS", "MAX_CONFIG_BYTES", "TASKS", "TRAINING_LOG_FILE",
           "WEIGHTS_FILE", "BundleConfig", "LabelInfo", "LoadedBundle", "bundle_summary", "copy_with_inference_defaults",
           "default_labels", "load_bundle", "read_bundle_config", "save_bundle", "sha256_file"]
