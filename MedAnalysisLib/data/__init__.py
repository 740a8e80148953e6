"""Datasets (MSD folders, CSV manifests, DICOM folders), grouped splits, and training samplers."""

from MedAnalysisLib.data.datasets import Case, Dataset, kfold_splits, load_dataset, read_case, split_cases
from MedAnalysisLib.data.samplers import PatchSampler, SequenceSampler, SliceSampler

__all__ = [
    "Case",
    "Dataset",
    "PatchSampler",
    "SequenceSampler",
    "SliceSampler",
    "kfold_splits",
    "load_dataset",
    "read_case",
    "split_cases",
]
