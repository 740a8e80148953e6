"""MedAnalysisLib: deep learning on medical scans with exact geometry.

Importing the package is cheap: TensorFlow and Keras are imported only by the modules that build or run models.
"""

__version__ = "0.1.0"

from MedAnalysisLib.errors import MedAnalysisError  # noqa: E402
from MedAnalysisLib.volume import Volume  # noqa: E402

__all__ = ["MedAnalysisError", "Volume", "__version__"]
