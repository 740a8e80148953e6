"""Training: one function from a dataset (or prepared arrays) and a :class:`TrainingOptions` to a model bundle.

``train(dataset, TrainingOptions(task=..., family=..., out=...))`` or, the same, ``train(dataset, task=...,
family=..., out=...)``. TensorFlow-specific code (devices, distribution) is confined to this package, and imported
only when a run starts.
"""

from __future__ import annotations

from MedAnalysisLib.training.options import TrainingOptions
from MedAnalysisLib.training.pipeline import train
from MedAnalysisLib.training.runner import TrainResult, checkpoint_dir_for, train_on_arrays

__all__ = ["TrainResult", "TrainingOptions", "checkpoint_dir_for", "train", "train_on_arrays"]
