"""Datasets (MSD folders, CSV manifests, DICOM folders), grouped splits, training samplers, and the preprocessed
cache that training reads lazily."""

from MedAnalysisLib.data.cache import CachedCase, PreprocessedCache, build_cache, is_cache, open_cache
from MedAnalysisLib.data.datasets import Case, Dataset, kfold_splits, load_dataset, read_case, split_cases
from MedAnalysisLib.data.samplers import PatchSampler, SequenceSampler, SliceSampler

__all__ = [
    "CachedCase",
    "Case",
    "Dataset",
    "PatchSampler",
    "PreprocessedCache",
    "SequenceSampler",
    "SliceSampler",
    "build_cache",
    "is_cache",
    "kfold_splits",
    "load_dataset",
    "open_cache",
    "read_case",
    "split_cases",
]
