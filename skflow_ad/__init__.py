"""skflow_ad: normalizing-flow anomaly detection for images as scikit-learn estimators.

Detectors: :class:`UFlowDetector` (U-Flow) and :class:`CSFlowDetector` (CS-Flow).
Submodules: ``datasets``, ``metrics``, ``model_selection``, ``nfa`` and ``resample``
(these two need no torch), ``parallel``
(:func:`score_partitions`, which imports dask when called), ``plotting`` (needs
matplotlib, imported on use) and ``cli``.
"""

from importlib import import_module

# Torch-free submodules are imported at once; the torch-based ones on first use
# (PEP 562), so that ``import skflow_ad.nfa`` works where torch is not installed.
from . import datasets, nfa, resample
from .datasets import ImageFileLoader, load_images, load_mvtec_folder, make_surface_defects, make_surface_train_test

#: Public names imported on first access, and the submodule that defines them.
_LAZY = {
    "BaseFlowDetector": ".base",
    "CSFlowDetector": ".csflow",
    "UFlowDetector": ".uflow",
    "PretrainedWeightsError": ".features",
    "NormalOnlyKFold": ".model_selection",
    "NormalOnlyShuffleSplit": ".model_selection",
    "score_partitions": ".parallel",
}
_LAZY_MODULES = {"metrics", "model_selection"}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
    elif name in _LAZY_MODULES:
        value = import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


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
    "resample",
    "__version__",
]
