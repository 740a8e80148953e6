"""Typed errors of MedAnalysis.

Every error raised for bad input says what was expected and what was found, and never contains patient names,
IDs or birth dates. Callers (the command line, the worker protocol, the Slicer panel) show ``str(error)`` to the
user as it is.
"""

from __future__ import annotations


class MedAnalysisError(Exception):
    """Base class of every error MedAnalysis raises on purpose."""


class InputError(MedAnalysisError):
    """An input (file, folder, array, argument) is not what MedAnalysis can use."""


class UnreadableFileError(InputError):
    """A file is missing, empty, truncated, or not in a format MedAnalysis reads."""


class DicomSeriesError(InputError):
    """A DICOM folder or series cannot be turned into one volume (mixed series, missing slices, ...)."""


class GeometryError(InputError):
    """Geometry is invalid (sheared, non-finite) or two grids that must match do not."""


class ImageValidationError(InputError):
    """Voxel values or image layout are not acceptable (NaN/Inf, float labels, unexpected dimensionality)."""


class MemoryBudgetError(InputError):
    """An image or a computation would need more memory than the configured budget allows."""


class PlanError(MedAnalysisError):
    """A preprocessing plan or fingerprint is invalid or does not fit the data."""


class BundleError(MedAnalysisError):
    """A model bundle is invalid, incomplete, or fails its integrity checks. Nothing from it was executed."""


class UnsafeArchiveError(BundleError):
    """An archive holds entries that could escape the extraction folder or exhaust the disk."""


class CancelledError(MedAnalysisError):
    """Work was stopped on request (SIGTERM, the Cancel button); partial results were saved where stated."""


class OutputError(InputError):
    """An output cannot be written: the path holds something MedAnalysis did not create (never replaced), is a link,
    a file where a folder goes (or the reverse), or the operating system refused the write (permissions, a full or
    read-only disk, a name too long). Nothing the user had was changed, and no temporary is left behind."""
