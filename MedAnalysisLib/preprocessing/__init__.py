"""Preprocessing shared by training and inference: dataset fingerprint -> plan -> apply/invert, and augmentation.

Typical use::

    dataset = load_dataset("Task04_Hippocampus")
    plan = make_plan(fingerprint_dataset(dataset))
    prepared = apply_plan(plan, images, label)          # float32 (k, j, i, C), int (k, j, i), inverse
    label_volume = invert_plan(plan, predicted_labels, prepared.inverse, kind="label")  # input geometry

Only numpy is imported here; SimpleITK is imported by the functions that resample.
"""

from MedAnalysisLib.preprocessing.augment import NO_AUGMENTATION, AugmentConfig, Augmenter
from MedAnalysisLib.preprocessing.fingerprint import Fingerprint, fingerprint_dataset
from MedAnalysisLib.preprocessing.plan import (
    DEFAULT_MEMORY_BUDGET_MB,
    PLAN_SCHEMA_VERSION,
    Normalization,
    Plan,
    make_plan,
)
from MedAnalysisLib.preprocessing.transforms import (
    Grid,
    Inverse,
    PreparedCase,
    PreprocessingWarning,
    apply_plan,
    invert_plan,
    normalize,
    prepare_slices,
    reorient,
    resample_to_grid,
    resample_to_spacing,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET_MB",
    "NO_AUGMENTATION",
    "PLAN_SCHEMA_VERSION",
    "AugmentConfig",
    "Augmenter",
    "Fingerprint",
    "Grid",
    "Inverse",
    "Normalization",
    "Plan",
    "PreparedCase",
    "PreprocessingWarning",
    "apply_plan",
    "fingerprint_dataset",
    "invert_plan",
    "make_plan",
    "normalize",
    "prepare_slices",
    "reorient",
    "resample_to_grid",
    "resample_to_spacing",
]
