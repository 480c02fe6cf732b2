"""Exported detectors on a machine without torch: :class:`ExportedDetector`.

A deployment machine installs ``skflow-ad[deploy]`` (onnxruntime; numpy and
pillow come with the package) and runs the model files that
``detector.export_onnx(path)`` or ``detector.export_openvino(path)`` wrote
(:mod:`skflow_ad.export`). This module imports neither torch nor timm, and
the runtime only when a model is opened.

:class:`ExportedDetector` is the detectors' prediction API
(:class:`skflow_ad.prediction.ImagePredictionMixin`) on the exported graph:
the same input rules and errors (the same validation functions), the same code from the network's outputs to
scores, maps at each input's own size, NFA maps, masks and regions.

Format of an exported model
---------------------------
An ONNX model (or OpenVINO IR) with one input, ``images``: ``uint8``
``(n, H, W, C)`` at the working size, ``n`` dynamic; outputs ``scores``
``(n,)``, ``anomaly_maps`` ``(n, H, W)``, then per latent scale ``s``
(finest first) ``energy_s`` ``(n, h_s, w_s)`` float32 and ``exceedances_s``
``(n, h_s, w_s)`` int32 (:class:`skflow_ad.prediction.NetworkOutputs`), and,
in a graph exported with ``block_nfa_map=True``, last, ``block_log_nfa``
``(n, H, W)`` float32: the block-NFA ``log10 NFA`` map at the working size
(:class:`skflow_ad.inference.BlockLogNFA`) with the ``nfa_window_size``,
``nfa_probability_threshold`` and ``nfa_high_precision`` of the metadata's
``prediction_parameters``. Its
metadata (ONNX ``metadata_props``, OpenVINO ``rt_info``) holds one JSON
document under the key :data:`METADATA_KEY`:

``format``, ``format_version``
    :data:`FORMAT_NAME` and 1, or 2 (:data:`FORMAT_VERSION`) for a graph
    with the ``block_log_nfa`` output, which readers of version 1 would
    misread.
``detector``
    The class of the exported detector.
``image_size_``, ``n_channels_``, ``latent_shapes_``, ``offset_``, ``pixel_threshold_``
    Its fitted attributes.
``chi2_threshold``
    The threshold on ``z**2`` of the exceedance counts, a constant of the
    graph: :func:`skflow_ad.nfa.chi2_threshold` of
    ``prediction_parameters["nfa_probability_threshold"]``.
``prediction_parameters``
    ``batch_size``, ``mask_method``, ``nfa_window_size``,
    ``nfa_probability_threshold``, ``nfa_high_precision``,
    ``nfa_log_epsilon``, ``min_region_area`` at export time.
``input``, ``outputs``
    The graph's input and output names.
``graph_runtime``
    ``"onnxruntime"`` or ``"openvino"``: the runtime the graph was laid out
    for (:func:`skflow_ad.export.export_onnx`); absent from exports of
    skflow_ad before it, whose graphs are OpenVINO's layout.
``versions``
    Of skflow_ad, torch, timm, FrEIA, scikit-learn, numpy, safetensors,
    python, onnx, onnxscript and openvino at export time.
"""

from __future__ import annotations

import json
import os
from importlib import import_module
from pathlib import Path

import numpy as np

from ._validation import check_fitted_images, is_integer
from .persistence import ModelFileError
from .prediction import (
    PREDICTION_PARAMETER_CONSTRAINTS, ImagePredictionMixin, NetworkOutputs, validate_prediction_parameters,
)

__all__ = [
    "BLOCK_LOG_NFA_OUTPUT", "ExportedDetector", "FORMAT_NAME", "FORMAT_VERSION", "FORMAT_VERSIONS",
    "METADATA_KEY", "RUNTIMES", "as_graph_input", "output_names", "read_metadata",
]

#: ``format`` of the metadata of an exported model.
FORMAT_NAME = "skflow_ad.exported_detector"
#: The newest ``format_version`` this skflow_ad writes; it reads :data:`FORMAT_VERSIONS`.
FORMAT_VERSION = 2
#: The ``format_version`` values this skflow_ad reads (2 adds the optional ``block_log_nfa`` output).
FORMAT_VERSIONS = (1, 2)
#: Name of the graph's optional block-NFA map output.
BLOCK_LOG_NFA_OUTPUT = "block_log_nfa"
#: The metadata key (ONNX ``metadata_props``, OpenVINO ``rt_info``) of the JSON document.
METADATA_KEY = "skflow_ad"
#: The graph's input.
INPUT_NAME = "images"
#: The runtimes :class:`ExportedDetector` runs a model on, and the package each needs.
RUNTIMES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
#: Precisions of OpenVINO IR (see :func:`skflow_ad.export.export_openvino`).
OPENVINO_PRECISIONS = ("FP32", "FP16", "INT8")

#: Prediction parameters an :class:`ExportedDetector` may override (``nfa_probability_threshold`` is in the graph).
OVERRIDABLE_PARAMETERS = tuple(name for name in PREDICTION_PARAMETER_CONSTRAINTS if name != "nfa_probability_threshold")

_REQUIRED_KEYS = (
    "detector", "image_size_", "n_channels_", "latent_shapes_", "offset_", "pixel_threshold_", "chi2_threshold",
    "prediction_parameters", "outputs",
)


def output_names(n_scales, *, block_nfa_map=False):
    """The output names of an exported graph with ``n_scales`` latent scales (and the block-NFA map)."""
    return ["scores", "anomaly_maps", *(f"energy_{s}" for s in range(n_scales)),
            *(f"exceedances_{s}" for s in range(n_scales)), *([BLOCK_LOG_NFA_OUTPUT] if block_nfa_map else [])]


def as_graph_input(batch):
    """An image batch ``(b, H, W, C)`` at the working size as the graph's ``uint8`` input.

    ``uint8`` passes unchanged; floats in [0, 1] (what other input depths
    become) are rounded to the nearest of the 256 levels.
    """
    if batch.dtype != np.uint8:
        batch = np.rint(batch * np.float32(255)).astype(np.uint8)
    return np.ascontiguousarray(batch)


def read_metadata(text, path):
    """The metadata document of an exported model, checked; ``text`` is None when the model has none.

    Raises
    ------
    skflow_ad.ModelFileError
        When the model was not exported by skflow_ad, by a newer format, or
        its metadata is damaged.
    """
    not_ours = (
        f"{os.fspath(path)!r} is not a model exported by skflow_ad (no {METADATA_KEY!r} metadata): "
        f"export a fitted detector with detector.export_onnx(path) or detector.export_openvino(path)."
    )
    if text is None:
        raise ModelFileError(not_ours)
    try:
        metadata = json.loads(text)
    except ValueError:
        raise ModelFileError(f"{os.fspath(path)!r} has damaged skflow_ad metadata (not JSON); export it again.") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(not_ours)
    if metadata.get("format_version") not in FORMAT_VERSIONS:
        raise ModelFileError(
            f"{os.fspath(path)!r} has export format version {metadata.get('format_version')!r}; this skflow_ad "
            f"reads versions {', '.join(map(str, FORMAT_VERSIONS))}: upgrade skflow_ad or export the model with "
            f"this one."
        )
    missing = [key for key in _REQUIRED_KEYS if key not in metadata]
    if missing:
        raise ModelFileError(f"{os.fspath(path)!r} has damaged skflow_ad metadata (missing {', '.join(missing)}).")
    return metadata


def _import_runtime(runtime):
    try:
        return import_module(RUNTIMES[runtime])
    except ImportError as error:
        install = 'pip install "skflow-ad[deploy]"' if runtime == "onnxruntime" else "pip install openvino"
        raise ImportError(
            f"runtime={runtime!r} needs the package {RUNTIMES[runtime]!r}, which is not installed: {install}."
        ) from error


def _unreadable(path, runtime, error):
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelFileError(
        f"{os.fspath(path)!r} could not be read as a model by {runtime} ({type(error).__name__}: {first_line[:200]}); "
        f"pass a .onnx file written by detector.export_onnx or an .xml file written by detector.export_openvino."
    )


class _OnnxRuntimeSession:
    """An ONNX model on onnxruntime's CPU provider."""

    def __init__(self, path, threads):
        onnxruntime = _import_runtime("onnxruntime")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            raise _unreadable(path, "onnxruntime", error) from error
        self.metadata_text = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.output_names = [output.name for output in self._session.get_outputs()]

    def run(self, batch):
        return self._session.run(None, {INPUT_NAME: batch})


class _OpenVinoSession:
    """An OpenVINO IR (or ONNX) model on OpenVINO's CPU plugin, computing in FP32."""

    def __init__(self, path, threads):
        openvino = _import_runtime("openvino")
        core = openvino.Core()
        try:
            model = core.read_model(str(path))
        except Exception as error:  # openvino raises RuntimeError or its own types
            raise _unreadable(path, "openvino", error) from error
        self.metadata_text = _openvino_metadata(model, path)
        # FP32 execution: the CPU plugin would otherwise pick bfloat16 on CPUs that have it.
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self.output_names = [output.get_any_name() for output in self._compiled.outputs]

    def run(self, batch):
        result = self._request.infer({INPUT_NAME: batch})
        return [np.array(result[output]) for output in self._compiled.outputs]


def _openvino_metadata(model, path):
    if model.has_rt_info([METADATA_KEY]):
        return model.get_rt_info([METADATA_KEY]).astype(str)
    # An ONNX model read by OpenVINO keeps its metadata_props under "framework".
    if model.has_rt_info(["framework", METADATA_KEY]):
        return model.get_rt_info(["framework", METADATA_KEY]).astype(str)
    return None


_SESSIONS = {"onnxruntime": _OnnxRuntimeSession, "openvino": _OpenVinoSession}


class ExportedDetector(ImagePredictionMixin):
    """A detector exported by ``export_onnx`` / ``export_openvino``, with the detectors' prediction API.

    ``score_samples``, ``decision_function``, ``predict``, ``anomaly_map``,
    ``score_samples_and_anomaly_map``, ``log_nfa_map``, ``predict_mask``,
    ``predict_regions`` and ``inspect`` take the same inputs, raise the same
    errors and return what the exported detector returns (within the
    tolerances the user guide states), maps at each input's own size. Needs
    neither torch nor timm.

    Parameters
    ----------
    path : str or path-like
        A ``.onnx`` file (either runtime) or an OpenVINO ``.xml`` file (``runtime="openvino"``).
    runtime : {"onnxruntime", "openvino"}
        OpenVINO computes in FP32 whatever the storage precision of FP16 IR;
        INT8 IR runs its quantized extractor on integers and the rest in FP32.
    threads : int or None
        Intra-op threads of the runtime; None lets it choose.
    batch_size, mask_method, nfa_window_size, nfa_high_precision, nfa_log_epsilon, min_region_area : optional
        Override the detector's values at export time (None keeps them);
        checked as the detectors check them. ``nfa_probability_threshold``
        cannot change: the graph's exceedance counts are computed with it.

    Attributes
    ----------
    metadata_ : dict
        The model's metadata document (format in the module doc).
    detector_class_ : str
        Class name of the exported detector.
    image_size_ : (int, int)
    n_channels_ : int
    latent_shapes_ : list of (C, h, w)
    offset_, pixel_threshold_ : float
    runtime : str

    Notes
    -----
    The graph takes ``uint8`` images. Other inputs (``uint16``, floats in
    [0, 1]) are rounded to the nearest of the 256 ``uint8`` levels after
    resizing, so their results differ from the detector's by that rounding;
    ``uint8`` input gives the detector's numbers.
    """

    def __init__(self, path, runtime="onnxruntime", *, threads=None, batch_size=None, mask_method=None,
                 nfa_window_size=None, nfa_high_precision=None, nfa_log_epsilon=None, min_region_area=None):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(map(repr, RUNTIMES))}; got {runtime!r}.")
        if threads is not None and (not is_integer(threads) or threads < 1):
            raise ValueError(f"threads must be None or a positive int; got {threads!r}.")
        path = Path(os.fspath(path))
        if not path.is_file():
            raise FileNotFoundError(f"no exported model at {str(path)!r}.")
        self.path = path
        self.runtime = runtime
        self.threads = threads
        self._session = _SESSIONS[runtime](path, threads)
        metadata = read_metadata(self._session.metadata_text, path)
        if self._session.output_names != list(metadata["outputs"]):
            raise ModelFileError(
                f"{str(path)!r}: the graph's outputs {self._session.output_names} are not those its metadata "
                f"lists {metadata['outputs']}; export the model again."
            )
        self.metadata_ = metadata
        self.detector_class_ = metadata["detector"]
        self.image_size_ = tuple(int(v) for v in metadata["image_size_"])
        self.n_channels_ = int(metadata["n_channels_"])
        self.latent_shapes_ = [tuple(int(v) for v in shape) for shape in metadata["latent_shapes_"]]
        self.offset_ = float(metadata["offset_"])
        self.pixel_threshold_ = float(metadata["pixel_threshold_"])
        parameters = metadata["prediction_parameters"]
        self._nfa_probability_threshold = float(parameters["nfa_probability_threshold"])
        overrides = dict(batch_size=batch_size, mask_method=mask_method, nfa_window_size=nfa_window_size,
                         nfa_high_precision=nfa_high_precision, nfa_log_epsilon=nfa_log_epsilon,
                         min_region_area=min_region_area)
        for name in OVERRIDABLE_PARAMETERS:
            setattr(self, name, parameters[name] if overrides[name] is None else overrides[name])
        self._validate_parameters()

    @property
    def nfa_probability_threshold(self):
        """The block-NFA probability threshold the graph was exported with (fixed)."""
        return self._nfa_probability_threshold

    @nfa_probability_threshold.setter
    def nfa_probability_threshold(self, value):
        raise AttributeError(
            f"nfa_probability_threshold is fixed by the exported graph (its exceedance counts use "
            f"{self._nfa_probability_threshold!r}); set it on the detector and export it again."
        )

    def __repr__(self):
        return f"ExportedDetector({str(self.path)!r}, runtime={self.runtime!r}, detector={self.detector_class_!r})"

    def _validate_parameters(self):
        validate_prediction_parameters(self, PREDICTION_PARAMETER_CONSTRAINTS, OVERRIDABLE_PARAMETERS)

    # ------------------------------------------------- ImagePredictionMixin
    def _checked_images(self, X, method_name):
        self._validate_parameters()
        return check_fitted_images(X, self.n_channels_, self.detector_class_)

    def _run_network(self, batch):
        # A block_log_nfa output comes last; the maps are computed from the counts at each input's size.
        n_network_outputs = 2 + 2 * len(self.latent_shapes_)
        return NetworkOutputs.from_sequence(self._session.run(as_graph_input(batch))[:n_network_outputs])
