"""Former name of :mod:`MedAnalysisLib.bundles.ensemble`, kept so that existing scripts keep working.

New code imports from :mod:`MedAnalysisLib.bundles` (``make_ensemble``, ``LoadedEnsemble``, ``load_bundle``).
Nothing in the library imports this module.
"""

from __future__ import annotations

from MedAnalysisLib.bundles.ensemble import (
    LoadedEnsemble,
    check_members,
    is_ensemble,
    load_ensemble,
    make_ensemble,
    read_ensemble_config,
)
from MedAnalysisLib.bundles.ensemble_config import (
    COMBINE_RULES,
    ENSEMBLE_FILE,
    ENSEMBLE_SCHEMA_VERSION,
    MAX_MEMBERS,
    MIN_MEMBERS,
    EnsembleConfig,
)

__all__ = ["COMBINE_RULES", "ENSEMBLE_FILE", "ENSEMBLE_SCHEMA_VERSION", "MAX_MEMBERS", "MIN_MEMBERS", "EnsembleConfig",
           "LoadedEnsemble", "check_members", "is_ensemble", "load_ensemble", "make_ensemble", "read_ensemble_config"]
