"""skflow_ad: normalizing-flow anomaly detection for images as scikit-learn estimators."""

from .csflow import CSFlowDetector
from .features import PretrainedWeightsError
from .uflow import UFlowDetector

__version__ = "0.1.0"

__all__ = ["UFlowDetector", "CSFlowDetector", "PretrainedWeightsError", "__version__"]
