"""skflow_ad: normalizing-flow anomaly detection for images as scikit-learn estimators.

Detectors: :class:`UFlowDetector` (U-Flow) and :class:`CSFlowDetector` (CS-Flow).
Submodules that need no torch (what a deployment machine runs): ``datasets``,
``extras`` (the optional dependencies and their install commands),
``metrics``, ``model_selection``, ``nfa``, ``regions`` (connected defect
regions of a mask), ``resample``, ``conventions`` and ``deploy``
(:class:`ExportedDetector`, exported models on onnxruntime or OpenVINO, which
it imports only when a model is opened). With torch: ``export``
(``detector.export_onnx`` / ``export_openvino``), ``parallel``
(:func:`score_partitions`, which imports dask when called), ``plotting``
(needs matplotlib, imported on use), ``persistence`` (model files:
:func:`load` and ``detector.save``) and ``cli``.
"""

from importlib import import_module

# Torch-free submodules are imported at once; the torch-based ones on first use
# (PEP 562), so that the exported-model runtime works where torch is not installed.
from . import conventions, datasets, deploy, extras, metrics, model_selection, nfa, regions, resample
from .deploy import ExportedDetector
from .model_selection import NormalOnlyKFold, NormalOnlyShuffleSplit
from .datasets import ImageFileLoader, load_images, load_mvtec_folder, make_surface_defects, make_surface_train_test

#: Public names imported on first access, and the submodule that defines them.
_LAZY = {
    "BaseFlowDetector": ".base",
    "CSFlowDetector": ".csflow",
    "UFlowDetector": ".uflow",
    "PretrainedWeightsError": ".features",
    "load": ".persistence",
    "ModelFileError": ".persistence",
    "ModelVersionWarning": ".persistence",
    "score_partitions": ".parallel",
}


#: Packages of the ``torch`` extra, whose absence the lazy imports explain.
TORCH_EXTRA = ("torch", "timm", "FrEIA", "safetensors")


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = import_module(_LAZY[name], __name__)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in TORCH_EXTRA:
            raise
        raise ModuleNotFoundError(
            f"skflow_ad.{name} needs {error.name!r}, which is not installed: {extras.install_command('torch')} "
            f"(a deployment install, skflow-ad[deploy], runs exported models with skflow_ad.ExportedDetector).",
            name=error.name,
        ) from error
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "UFlowDetector",
    "CSFlowDetector",
    "BaseFlowDetector",
    "ExportedDetector",
    "PretrainedWeightsError",
    "load",
    "ModelFileError",
    "ModelVersionWarning",
    "ImageFileLoader",
    "load_images",
    "load_mvtec_folder",
    "make_surface_defects",
    "make_surface_train_test",
    "NormalOnlyKFold",
    "NormalOnlyShuffleSplit",
    "score_partitions",
    "datasets",
    "deploy",
    "extras",
    "metrics",
    "model_selection",
    "nfa",
    "regions",
    "resample",
    "conventions",
    "__version__",
]
