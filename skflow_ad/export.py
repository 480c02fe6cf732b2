"""Exported inference graphs: a fitted image detector as one ONNX model, or as OpenVINO IR.

The graph is the detector's whole prediction network,
:class:`skflow_ad.inference.InferenceNetwork`, captured by ``torch.export``
and translated by PyTorch's ONNX exporter: a ``uint8`` batch ``(n, H, W, C)``
at the working size in (dynamic ``n``), the cast and scaling, gray to three
channels, the extractor's normalisation, the frozen extractor, the flow and
the detector's head; out come the outputs :class:`skflow_ad.prediction.NetworkOutputs`
reads: image anomaly scores ``(n,)``, anomaly maps ``(n, H, W)``, per latent
scale the energy ``sum_c z**2`` ``(n, h_s, w_s)`` and the exceedance counts
``(n, h_s, w_s)`` int32 of the block-NFA test, its threshold on ``z**2``
(:func:`skflow_ad.nfa.chi2_threshold` of the fitted
``nfa_probability_threshold``) baked into the graph as a constant. Everything
after the network (resizing the maps to each input's size, the NFA maps,
masks, regions) is the torch-free code the detectors run too, so
:class:`skflow_ad.deploy.ExportedDetector` computes it from these outputs.

The model's metadata (ONNX ``metadata_props``, OpenVINO ``rt_info``) holds
one JSON document under the key :data:`skflow_ad.deploy.METADATA_KEY`
(format in :mod:`skflow_ad.deploy`).

Two choices keep the exported numbers those of the detector:

- layer norms over a whole feature map ``(C, h, w)`` (U-Flow's extractor)
  are written as nested means over one axis at a time
  (:func:`nested_mean_layer_norm`), not as ONNX ``LayerNormalization``,
  which ONNX Runtime and OpenVINO accumulate over all ``C h w`` terms in
  float32. On a 128 px U-Flow (resnet18, random weights) the anomaly maps of
  ONNX Runtime differed from torch's by 3.1e-6 with ``LayerNormalization``
  and 2.4e-7 with nested means;
- OpenVINO runs the graph with an FP32 inference precision (its CPU plugin
  otherwise runs bfloat16 on CPUs that have it); see :mod:`skflow_ad.deploy`.

One choice lays the graph out for its runtime (``runtime=``, recorded in
the metadata as ``graph_runtime``): CS-Flow's coarse-to-fine convolutions
sum their shifted taps with one ``Col2Im`` node for ONNX Runtime and with
slices for OpenVINO (:data:`GRAPH_TAP_SUMS`); the two compute the same
function, differ in float32 rounding only, and each graph runs on both
runtimes, the other one a little slower. U-Flow's graph is the same either
way.

INT8 (``precision="INT8"``) is NNCF's post-training quantization of the
frozen extractor only, calibrated on normal images the caller passes (the
training images are the natural choice): its convolutions and matrix products
run on 8-bit integers, with fast bias correction. The flow and the head stay
in FP32: the coupling blocks' clamped exponential scales and the Gaussian
log-likelihood are where anomaly scores come from, and a fully quantized
U-Flow failed to compile with OpenVINO 2026.4 (a quantized concatenation of
the coupling halves). Quantizing changes the numbers: docs/benchmarks.md
reports what it cost on KolektorSDD; measure it on your data before
deploying (``benchmarks/ksdd.py --runtimes``).

This module needs torch, ``onnx`` and ``onnxscript`` (``pip install
"skflow-ad[export]"``), ``openvino`` for :func:`export_openvino`, and
``nncf`` for its INT8 precision (in the ``export`` extra too).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import re
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._validation import IMAGES, check_bool, check_fitted_images
from .extras import require
from .deploy import (
    FORMAT_NAME, FORMAT_VERSION, FORMAT_VERSIONS, INPUT_NAME, METADATA_KEY, OPENVINO_PRECISIONS,
    as_graph_input, output_names, read_metadata,
)
from .inference import BlockLogNFA
from .modes import inference_network
from .nfa import chi2_threshold
from .nn.csflow import tap_sum
from .persistence import atomic_destination, current_versions
from .prediction import PREDICTION_PARAMETER_CONSTRAINTS, validate_prediction_parameters

__all__ = [
    "export_onnx", "export_openvino", "onnx_to_openvino", "export_metadata", "nested_mean_layer_norm",
    "unquantized_node_names",
]

#: The packages an export records beyond :func:`skflow_ad.persistence.current_versions`.
EXPORT_PACKAGES = ("onnx", "onnxscript", "openvino", "nncf")

#: The runtimes a graph can be laid out for, and how CS-Flow's up-convolutions sum their shifted taps on each
#: (:func:`skflow_ad.nn.csflow.tap_sum`): one ``Col2Im`` node runs faster on ONNX Runtime, slices on OpenVINO.
GRAPH_TAP_SUMS = {"onnxruntime": "fold", "openvino": "shifts"}

#: The module (name scope of the exported graph) that INT8 quantizes; the flow and head stay FP32.
INT8_SCOPE = "network.extractor"

#: The ONNX node metadata key in which PyTorch's exporter records each node's module path.
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"

#: Above this size ONNX's protobuf cannot hold the weights: they go to a ``.data`` file beside the model.
PROTOBUF_LIMIT_BYTES = 2 * 2**30


def nested_mean_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    """``torch.nn.functional.layer_norm`` with every mean taken over one axis at a time.

    Same value as the layer norm; written so for the exported graph: each
    ``ReduceMean`` then sums at most ``max(C, h, w)`` float32 terms instead of
    ``C h w`` (see the module doc). Signature of ``aten.layer_norm``.

    Parameters
    ----------
    input : Tensor of shape (..., *normalized_shape)
    normalized_shape : sequence of int
    weight, bias : Tensor of shape normalized_shape or None
    eps : float
    cudnn_enable : bool
        Ignored (part of the aten signature).

    Returns
    -------
    Tensor of the shape of ``input``
    """
    axes = range(input.dim() - len(normalized_shape), input.dim())

    def mean(tensor):
        for axis in reversed(axes):
            tensor = tensor.mean(axis, keepdim=True)
        return tensor

    centred = input - mean(input)
    out = centred * torch.rsqrt(mean(centred * centred) + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


class _GraphWithThreshold(nn.Module):
    """``images -> InferenceNetwork(images, chi2_threshold)`` with the threshold a constant buffer.

    With a ``block_nfa`` module (:class:`skflow_ad.inference.BlockLogNFA`),
    its map of the exceedance counts is one more output, the last.
    """

    def __init__(self, network, threshold, block_nfa=None):
        super().__init__()
        self.network = network
        self.block_nfa = block_nfa
        self.register_buffer("chi2_threshold", torch.tensor(threshold, dtype=torch.float32), persistent=False)

    def forward(self, images):
        outputs = self.network(images, self.chi2_threshold)
        if self.block_nfa is None:
            return outputs
        n_scales = (len(outputs) - 2) // 2
        return (*outputs, self.block_nfa(outputs[2 + n_scales:]))


def _require(module, purpose):
    return require(module, purpose, "export")


def _package_version(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _check_exportable(detector, method):
    check_is_fitted(detector, "flow_")
    if detector.input_kind_ != IMAGES:
        raise ValueError(
            f"{method} needs a detector fitted on images; this {type(detector).__name__} was fitted on feature "
            f"vectors, whose scores have no image graph to export."
        )
    validate_prediction_parameters(detector, PREDICTION_PARAMETER_CONSTRAINTS, PREDICTION_PARAMETER_CONSTRAINTS)


def export_metadata(detector, runtime="onnxruntime", block_nfa_map=False):
    """The metadata document of an export of ``detector`` laid out for ``runtime`` (format in :mod:`skflow_ad.deploy`).

    ``block_nfa_map``: whether the graph also outputs the block-NFA map
    (:func:`export_onnx`); such a graph is format version 2, older ones 1.

    Returns
    -------
    dict
        JSON-serialisable.
    """
    return {
        "format": FORMAT_NAME,
        # Without the map, the version that skflow_ad 0.1 reads too.
        "format_version": FORMAT_VERSION if block_nfa_map else FORMAT_VERSIONS[0],
        "detector": type(detector).__name__,
        "image_size_": [int(v) for v in detector.image_size_],
        "n_channels_": int(detector.n_channels_),
        "latent_shapes_": [[int(v) for v in shape] for shape in detector.latent_shapes_],
        "offset_": float(detector.offset_),
        "pixel_threshold_": float(detector.pixel_threshold_),
        "chi2_threshold": float(chi2_threshold(detector.nfa_probability_threshold)),
        "prediction_parameters": {
            name: getattr(detector, name) for name in PREDICTION_PARAMETER_CONSTRAINTS
        },
        "input": INPUT_NAME,
        "outputs": output_names(len(detector.latent_shapes_), block_nfa_map=block_nfa_map),
        "graph_runtime": runtime,
        "versions": {**current_versions(), **{name: _package_version(name) for name in EXPORT_PACKAGES}},
    }


def _check_graph_runtime(runtime):
    if runtime not in GRAPH_TAP_SUMS:
        raise ValueError(f"runtime must be one of {', '.join(map(repr, GRAPH_TAP_SUMS))}; got {runtime!r}.")


def _onnx_program(detector, opset, runtime, block_nfa_map):
    """The ``torch.onnx.ONNXProgram`` of ``detector``'s prediction network laid out for ``runtime``, with its metadata."""
    network = inference_network(detector)
    if torch.device(detector.device_).type != "cpu":
        import copy

        network = copy.deepcopy(network).cpu()
    metadata = export_metadata(detector, runtime, block_nfa_map)
    block_nfa = None
    if block_nfa_map:
        block_nfa = BlockLogNFA(detector.latent_shapes_, detector.image_size_, window_size=detector.nfa_window_size,
                                probability_threshold=detector.nfa_probability_threshold,
                                high_precision=detector.nfa_high_precision)
    graph = _GraphWithThreshold(network, metadata["chi2_threshold"], block_nfa).eval()
    height, width = detector.image_size_
    example = torch.zeros((2, height, width, detector.n_channels_), dtype=torch.uint8)
    with torch.inference_mode(False), torch.no_grad(), tap_sum(GRAPH_TAP_SUMS[runtime]), \
            warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress and deprecation notes are not the user's business
        program = torch.export.export(
            graph, (example,), dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}}
        )
        layer_norm = torch.ops.aten.layer_norm.default
        if any(node.target is layer_norm for node in program.graph.nodes):  # a pass over the graph costs seconds
            program = program.run_decompositions({layer_norm: nested_mean_layer_norm})
        onnx_program = torch.onnx.export(
            program, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=metadata["outputs"], verbose=False,
        )
    onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    onnx_program.model.doc_string = (
        f"skflow_ad {metadata['detector']}: uint8 images {tuple(metadata['image_size_'])} x "
        f"{metadata['n_channels_']} channel(s) -> {', '.join(metadata['outputs'])}."
    )
    return onnx_program


def export_onnx(detector, path, *, opset=None, runtime="onnxruntime", block_nfa_map=False):
    """Write the prediction network of a fitted image detector as one ONNX model.

    Parameters
    ----------
    detector : BaseFlowDetector
        Fitted on images.
    path : str or path-like
        Destination (``.onnx`` by convention); replaced atomically. Models
        over 2 GiB keep their weights in ``<path>.data`` beside it (ONNX's
        protobuf cannot hold more).
    opset : int or None
        ONNX opset; None uses the exporter's default.
    runtime : {"onnxruntime", "openvino"}
        The runtime the graph is laid out for (module doc); the same numbers
        up to float32 rounding, and either graph runs on either runtime.
    block_nfa_map : bool, default=False
        Also output ``block_log_nfa`` ``(n, H, W)`` float32 at the working
        size: the detector's ``log_nfa_map(X, "block_nfa")`` with its
        ``nfa_window_size``, ``nfa_probability_threshold`` and
        ``nfa_high_precision`` at export time (the metadata's
        ``prediction_parameters``), for programs that run the graph without
        skflow_ad: a pixel is anomalous where it is below
        ``nfa_log_epsilon``. :class:`skflow_ad.deploy.ExportedDetector`
        reads such a graph and computes its NFA maps from the counts, at
        each input's size, with any parameters.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    NotFittedError
        When the detector is not fitted.
    ValueError
        When it was fitted on feature vectors, or ``runtime`` is unknown.
    ImportError
        When ``onnx`` or ``onnxscript`` is missing (``pip install "skflow-ad[export]"``).
    """
    _check_graph_runtime(runtime)
    block_nfa_map = check_bool(block_nfa_map, "block_nfa_map")
    _check_exportable(detector, "export_onnx")
    _require("onnx", "export_onnx")
    _require("onnxscript", "export_onnx")
    path = Path(os.fspath(path))
    onnx_program = _onnx_program(detector, opset, runtime, block_nfa_map)
    n_bytes = sum(value.const_value.nbytes for value in onnx_program.model.graph.initializers.values()
                  if value.const_value is not None)
    if n_bytes >= PROTOBUF_LIMIT_BYTES:
        onnx_program.save(path, external_data=True)
        return path
    with atomic_destination(path) as temporary:
        onnx_program.save(temporary, external_data=False)
    return path


def export_openvino(detector, path, *, precision="FP32", calibration_images=None, opset=None, block_nfa_map=False):
    """Write the prediction network of a fitted image detector as OpenVINO IR (``.xml`` + ``.bin``).

    The ONNX model of :func:`export_onnx` laid out for OpenVINO, converted by
    ``openvino.convert_model``, with the same metadata in its ``rt_info``.

    Parameters
    ----------
    detector : BaseFlowDetector
        Fitted on images.
    path : str or path-like
        The ``.xml`` file; the weights go to the ``.bin`` file of the same name.
    precision : {"FP32", "FP16", "INT8"}
        ``"FP32"``: the detector's numbers. ``"FP16"``: weights stored in
        16 bits (half the file), computed in FP32. ``"INT8"``: the extractor
        quantized to 8-bit integers by NNCF on ``calibration_images`` (flow
        and head in FP32; module doc), faster and not the same numbers.
    calibration_images : image input or None
        Required for ``"INT8"``, refused otherwise: normal images (the
        training images, or a few hundred of them), any input the detector
        accepts, resized to the working size as for prediction.
    opset : int or None
        ONNX opset of the intermediate model.
    block_nfa_map : bool, default=False
        Also output the block-NFA map, as :func:`export_onnx`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    NotFittedError, ValueError, ImportError
        As :func:`export_onnx`; ``ValueError`` also for a bad ``precision``
        or calibration input, ``ImportError`` when ``openvino`` (or, for
        INT8, ``nncf``) is missing.
    """
    path = _checked_openvino_destination(path, precision, calibration_images)
    check_bool(block_nfa_map, "block_nfa_map")
    _check_exportable(detector, "export_openvino")
    calibration = _checked_calibration(calibration_images, detector.n_channels_, type(detector).__name__)
    _require("openvino", "export_openvino")
    with tempfile.TemporaryDirectory() as directory:
        onnx_path = export_onnx(detector, Path(directory) / "model.onnx", opset=opset, runtime="openvino",
                                block_nfa_map=block_nfa_map)
        model_proto, metadata = _read_exported_onnx(onnx_path)
        return _convert_to_openvino(onnx_path, path, precision, calibration, model_proto, metadata)


def _checked_openvino_destination(path, precision, calibration_images):
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, OPENVINO_PRECISIONS))}; got {precision!r}.")
    if precision == "INT8" and calibration_images is None:
        raise ValueError(
            "precision='INT8' needs calibration_images: normal images (e.g. the training images) on which NNCF "
            "measures the ranges of the extractor's activations."
        )
    if precision != "INT8" and calibration_images is not None:
        raise ValueError(f"calibration_images are used by precision='INT8' only; got precision={precision!r}.")
    path = Path(os.fspath(path))
    if path.suffix != ".xml":
        raise ValueError(f"OpenVINO IR is an .xml file (weights in the .bin beside it); got {str(path)!r}.")
    if precision == "INT8":
        _require("nncf", "precision='INT8'")
    return path


def _checked_calibration(calibration_images, n_channels, model_name):
    """The calibration images as an ImageSet (validated as prediction input), or None."""
    if calibration_images is None:
        return None
    return check_fitted_images(calibration_images, n_channels, model_name, name="calibration_images")


def unquantized_node_names(model_proto, scope=INT8_SCOPE):
    """Names of the nodes of an exported ONNX model outside the module ``scope`` (what INT8 leaves in FP32).

    Parameters
    ----------
    model_proto : onnx.ModelProto
        A model written by :func:`export_onnx` (its nodes carry PyTorch's
        name scopes in their metadata).
    scope : str
        Module path in the exported graph, e.g. ``"network.extractor"``.

    Returns
    -------
    list of str

    Raises
    ------
    skflow_ad.ModelFileError
        When the nodes carry no name scopes (a model not written by :func:`export_onnx`).
    """
    from .persistence import ModelFileError

    outside, n_inside = [], 0
    for node in model_proto.graph.node:
        text = next((prop.value for prop in node.metadata_props if prop.key == NAME_SCOPES_KEY), None)
        if text is None:
            outside.append(node.name)
            continue
        scopes = ast.literal_eval(text)
        if scope in scopes:
            n_inside += 1
        else:
            outside.append(node.name)
    if n_inside == 0:
        raise ModelFileError(
            f"no node of this ONNX model belongs to {scope!r} (PyTorch's name scopes are missing): INT8 needs a "
            f"model written by export_onnx of this skflow_ad; export the detector again."
        )
    return outside


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF's log lines (one per node it leaves alone), progress bars and warnings are not the user's business."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _calibration_dataset(nncf, images, image_size):
    """An ``nncf.Dataset`` of single uint8 images ``(1, H, W, C)`` at the working size."""
    return nncf.Dataset([as_graph_input(batch) for _, batch in images.batches(1, image_size)])


def onnx_to_openvino(onnx_path, path, *, precision="FP32", calibration_images=None):
    """Convert a model written by :func:`export_onnx` to OpenVINO IR, metadata included.

    A CS-Flow graph exported for ONNX Runtime (the default) converts and
    predicts the same numbers, and runs a little slower on OpenVINO than one
    exported with ``runtime="openvino"``, as :func:`export_openvino` does.

    Parameters
    ----------
    onnx_path : str or path-like
        The ``.onnx`` file.
    path : str or path-like
        The ``.xml`` file; the weights go to the ``.bin`` file of the same name.
    precision : {"FP32", "FP16", "INT8"}
        As :func:`export_openvino`.
    calibration_images : image input or None
        Required for ``"INT8"``, as :func:`export_openvino`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    skflow_ad.ModelFileError
        When ``onnx_path`` is not a model exported by skflow_ad.
    """
    path = _checked_openvino_destination(path, precision, calibration_images)
    _require("openvino", "onnx_to_openvino")
    model_proto, metadata = _read_exported_onnx(onnx_path)
    calibration = _checked_calibration(calibration_images, int(metadata["n_channels_"]), metadata["detector"])
    return _convert_to_openvino(onnx_path, path, precision, calibration, model_proto, metadata)


def _read_exported_onnx(onnx_path):
    """``(model_proto without external weights, checked metadata)`` of a model written by :func:`export_onnx`."""
    model_proto = _require("onnx", "onnx_to_openvino").load(os.fspath(onnx_path), load_external_data=False)
    text = next((prop.value for prop in model_proto.metadata_props if prop.key == METADATA_KEY), None)
    return model_proto, read_metadata(text, onnx_path)


def _convert_to_openvino(onnx_path, path, precision, calibration, model_proto, metadata):
    """IR at ``path`` from the ONNX model, its proto and metadata; ``calibration`` (an ImageSet) for INT8."""
    openvino = _require("openvino", "onnx_to_openvino")
    unquantized = unquantized_node_names(model_proto) if precision == "INT8" else None
    del model_proto
    metadata["openvino_precision"] = precision
    for name in ("openvino", "nncf"):
        metadata["versions"][name] = _package_version(name)
    model = openvino.convert_model(os.fspath(onnx_path))
    if precision == "INT8":
        nncf = _require("nncf", "precision='INT8'")
        image_size = tuple(int(v) for v in metadata["image_size_"])
        # OpenVINO names an ONNX node's operations after it, some with a "/suffix".
        ignored = nncf.IgnoredScope(patterns=[re.escape(name) + "(/.*)?" for name in unquantized], validate=False)
        with _quiet_nncf():
            model = nncf.quantize(model, _calibration_dataset(nncf, calibration, image_size),
                                  subset_size=len(calibration), ignored_scope=ignored)
        metadata["int8"] = {"quantized": INT8_SCOPE, "calibration_images": len(calibration)}
    model.set_rt_info(json.dumps(metadata), [METADATA_KEY])
    openvino.save_model(model, os.fspath(path), compress_to_fp16=precision == "FP16")
    return path
