"""Inference: sliding windows, the model runner, prediction in the input's geometry, post-processing, writers,
batch runs over many cases.

Import the sub-modules directly (``from MedAnalysisLib.inference.predict import predict``); nothing here imports
TensorFlow until a model is run.
"""
