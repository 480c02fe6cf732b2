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

This module needs torch, ``onnx`` and ``onnxscript`` (``pip install
"skflow-ad[export]"``), and ``openvino`` for :func:`export_openvino`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._validation import IMAGES
from .deploy import (
    FORMAT_NAME, FORMAT_VERSION, INPUT_NAME, METADATA_KEY, OPENVINO_PRECISIONS, output_names, read_metadata,
)
from .modes import inference_network
from .nfa import chi2_threshold
from .persistence import atomic_destination, current_versions
from .prediction import PREDICTION_PARAMETER_CONSTRAINTS, validate_prediction_parameters

__all__ = ["export_onnx", "export_openvino", "onnx_to_openvino", "export_metadata", "nested_mean_layer_norm"]

#: The packages an export records beyond :func:`skflow_ad.persistence.current_versions`.
EXPORT_PACKAGES = ("onnx", "onnxscript", "openvino")

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
    """``images -> InferenceNetwork(images, chi2_threshold)`` with the threshold a constant buffer."""

    def __init__(self, network, threshold):
        super().__init__()
        self.network = network
        self.register_buffer("chi2_threshold", torch.tensor(threshold, dtype=torch.float32), persistent=False)

    def forward(self, images):
        return self.network(images, self.chi2_threshold)


def _require(module, purpose, extra="export"):
    try:
        return import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the package {module!r}, which is not installed: pip install \"skflow-ad[{extra}]\"."
        ) from error


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


def export_metadata(detector):
    """The metadata document of an export of ``detector`` (format in :mod:`skflow_ad.deploy`).

    Returns
    -------
    dict
        JSON-serialisable.
    """
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
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
        "outputs": output_names(len(detector.latent_shapes_)),
        "versions": {**current_versions(), **{name: _package_version(name) for name in EXPORT_PACKAGES}},
    }


def _onnx_program(detector, opset):
    """The ``torch.onnx.ONNXProgram`` of ``detector``'s prediction network, with its metadata."""
    network = inference_network(detector)
    if torch.device(detector.device_).type != "cpu":
        import copy

        network = copy.deepcopy(network).cpu()
    metadata = export_metadata(detector)
    graph = _GraphWithThreshold(network, metadata["chi2_threshold"]).eval()
    height, width = detector.image_size_
    example = torch.zeros((2, height, width, detector.n_channels_), dtype=torch.uint8)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
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


def export_onnx(detector, path, *, opset=None):
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

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    NotFittedError
        When the detector is not fitted.
    ValueError
        When it was fitted on feature vectors.
    ImportError
        When ``onnx`` or ``onnxscript`` is missing (``pip install "skflow-ad[export]"``).
    """
    _check_exportable(detector, "export_onnx")
    _require("onnx", "export_onnx")
    _require("onnxscript", "export_onnx")
    path = Path(os.fspath(path))
    onnx_program = _onnx_program(detector, opset)
    n_bytes = sum(value.const_value.nbytes for value in onnx_program.model.graph.initializers.values()
                  if value.const_value is not None)
    if n_bytes >= PROTOBUF_LIMIT_BYTES:
        onnx_program.save(path, external_data=True)
        return path
    with atomic_destination(path) as temporary:
        onnx_program.save(temporary, external_data=False)
    return path


def export_openvino(detector, path, *, precision="FP32", opset=None):
    """Write the prediction network of a fitted image detector as OpenVINO IR (``.xml`` + ``.bin``).

    The ONNX model of :func:`export_onnx`, converted by
    ``openvino.convert_model``, with the same metadata in its ``rt_info``.

    Parameters
    ----------
    detector : BaseFlowDetector
        Fitted on images.
    path : str or path-like
        The ``.xml`` file; the weights go to the ``.bin`` file of the same name.
    precision : {"FP32", "FP16"}
        Storage precision of the weights. FP16 halves the file; OpenVINO
        computes in FP32 either way (:class:`skflow_ad.deploy.ExportedDetector`
        asks for FP32 inference).
    opset : int or None
        ONNX opset of the intermediate model.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    NotFittedError, ValueError, ImportError
        As :func:`export_onnx`; ``ImportError`` also when ``openvino`` is missing.
    """
    path = _checked_openvino_destination(path, precision)
    _check_exportable(detector, "export_openvino")
    _require("openvino", "export_openvino")
    with tempfile.TemporaryDirectory() as directory:
        onnx_path = export_onnx(detector, Path(directory) / "model.onnx", opset=opset)
        return onnx_to_openvino(onnx_path, path, precision=precision)


def _checked_openvino_destination(path, precision):
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, OPENVINO_PRECISIONS))}; got {precision!r}.")
    path = Path(os.fspath(path))
    if path.suffix != ".xml":
        raise ValueError(f"OpenVINO IR is an .xml file (weights in the .bin beside it); got {str(path)!r}.")
    return path


def onnx_to_openvino(onnx_path, path, *, precision="FP32"):
    """Convert a model written by :func:`export_onnx` to OpenVINO IR, metadata included.

    Parameters
    ----------
    onnx_path : str or path-like
        The ``.onnx`` file.
    path : str or path-like
        The ``.xml`` file; the weights go to the ``.bin`` file of the same name.
    precision : {"FP32", "FP16"}
        Storage precision of the weights.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    skflow_ad.ModelFileError
        When ``onnx_path`` is not a model exported by skflow_ad.
    """
    path = _checked_openvino_destination(path, precision)
    onnx = _require("onnx", "onnx_to_openvino")
    openvino = _require("openvino", "onnx_to_openvino")
    model_proto = onnx.load(os.fspath(onnx_path), load_external_data=False)
    props = {prop.key: prop.value for prop in model_proto.metadata_props}
    metadata = read_metadata(props.get(METADATA_KEY), onnx_path)
    del model_proto
    metadata["openvino_precision"] = precision
    metadata["versions"]["openvino"] = _package_version("openvino")
    model = openvino.convert_model(os.fspath(onnx_path))
    model.set_rt_info(json.dumps(metadata), [METADATA_KEY])
    openvino.save_model(model, os.fspath(path), compress_to_fp16=precision == "FP16")
    return path
