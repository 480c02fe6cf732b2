"""skflow_ad: normalizing-flow anomaly detection for images as scikit-learn estimators.

Detectors: :class:`UFlowDetector` (U-Flow) and :class:`CSFlowDetector` (CS-Flow).
Submodules: ``datasets``, ``metrics``, ``model_selection``, ``nfa``, ``parallel``
(:func:`score_partitions`, which imports dask when called), ``plotting`` (needs
matplotlib, imported on use), ``regions`` (connected defect regions of a mask)
and ``cli``.
"""

from . import datasets, metrics, model_selection, nfa, regions
from .base import BaseFlowDetector
from .csflow import CSFlowDetector
from .datasets import ImageFileLoader, load_images, load_mvtec_folder, make_surface_defects, make_surface_train_test
from .features import PretrainedWeightsError
from .model_selection import NormalOnlyKFold, NormalOnlyShuffleSplit
from .parallel import score_partitions
from .uflow import UFlowDetector

__version__ = "0.1.0"

__all__ = [
    "UFlowDetector",
    "CSFlowDetector",
    "BaseFlowDetector",
    "PretrainedWeightsError",
    "ImageFileLoader",
    "load_images",
    "load_mvtec_folder",
    "make_surface_defects",
    "make_surface_train_test",
    "NormalOnlyKFold",
    "NormalOnlyShuffleSplit",
    "score_partitions",
    "datasets",
    "metrics",
    "model_selection",
    "nfa",
    "regions",
    "__version__",
]
