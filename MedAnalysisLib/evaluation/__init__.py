"""Evaluation: metrics with physical units, per-case reports with bootstrap confidence intervals, figures.

:mod:`~MedAnalysisLib.evaluation.metrics` needs only numpy and SimpleITK; :mod:`~MedAnalysisLib.evaluation.report`
runs a bundle over a dataset; :mod:`~MedAnalysisLib.evaluation.figures` draws PNGs with matplotlib (Agg backend).
"""
