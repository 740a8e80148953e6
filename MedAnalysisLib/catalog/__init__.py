"""The model catalog: which trained bundles exist, what each is for, and a verified per-user cache of them.

A catalog (JSON, :data:`CATALOG_SCHEMA_VERSION`) lists model versions with their model card (title, task,
modality, body part, labels, description, license, citation, intended use) and the file (size, sha256, URLs).
MedAnalysis ships one (:data:`~MedAnalysisLib.catalog.sources.DEFAULT_CATALOG`); more come from
``MEDANALYSIS_CATALOGS`` or the caller (a hospital's own registry). Catalogs and the servers behind them are
untrusted: see :mod:`~MedAnalysisLib.catalog.schema` (what a catalog may hold), :mod:`~MedAnalysisLib.catalog.sources`
(where entries may point), :mod:`~MedAnalysisLib.catalog.download` (redirects, caps, Cancel),
:mod:`~MedAnalysisLib.catalog.pull` (verify before reading) and :mod:`~MedAnalysisLib.catalog.cache` (layout,
concurrency). Only the standard library is used for the network; TensorFlow is never imported here.

The face: :func:`list_models`, :func:`pull`, :func:`cached_path`, :func:`parse_catalog`, :func:`default_catalogs`,
:func:`model_cache_dir`, and the :class:`CatalogEntry`, :class:`ModelListing` and :class:`ModelList` they return.
"""

from __future__ import annotations

from MedAnalysisLib.catalog.cache import model_cache_dir
from MedAnalysisLib.catalog.listing import ModelList, ModelListing, cached_path, list_models
from MedAnalysisLib.catalog.pull import pull
from MedAnalysisLib.catalog.schema import CATALOG_SCHEMA_VERSION, CatalogEntry
from MedAnalysisLib.catalog.sources import default_catalogs, parse_catalog

__all__ = ["CATALOG_SCHEMA_VERSION", "CatalogEntry", "ModelList", "ModelListing", "cached_path", "default_catalogs",
           "list_models", "model_cache_dir", "parse_catalog", "pull"]
