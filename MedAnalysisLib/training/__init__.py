"""Training: one function from a dataset (or prepared arrays) to a model bundle.

TensorFlow-specific code (devices, distribution) is confined to this package.
"""

from __future__ import annotations

from MedAnalysisLib.training.pipeline import train
from MedAnalysisLib.training.runner import TrainResult, checkpoint_dir_for, train_on_arrays

__all__ = ["TrainResult", "checkpoint_dir_for", "train", "train_on_arrays"]
