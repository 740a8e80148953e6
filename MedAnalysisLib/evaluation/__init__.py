"""Evaluation: metrics with physical units, per-case reports with bootstrap confidence intervals, figures.

:mod:`~MedAnalysisLib.evaluation.metrics` needs only numpy and SimpleITK; :mod:`~MedAnalysisLib.evaluation.labels`
pairs a bundle's labels with a dataset's; :mod:`~MedAnalysisLib.evaluation.report` runs a bundle over a dataset;
:mod:`~MedAnalysisLib.evaluation.figures` draws every PNG (evaluation and demo) with matplotlib (Agg backend).
"""
