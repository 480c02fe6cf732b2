"""The two kinds of input a detector models: images, and feature vectors.

Each mode is a small stateless object that knows, for its kind of input, how
to validate it, prepare the features the flow is trained on, compute the
training statistics that set the thresholds, score new samples and rebuild
the fitted networks after unpickling. :class:`~skflow_ad.base.BaseFlowDetector`
picks the mode from the training input (:func:`mode_of`) and stays one path:
validate, prepare features, train, calibrate, predict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.utils.validation import validate_data

from ._validation import IMAGES, VECTORS, check_fitted_images, check_images, describe_kind_mismatch, input_kind
from .features import BatchNormRecalibration
from .inference import InferenceNetwork, Preprocess
from .nfa import chi2_threshold
from .nn._blocks import seeded
from .nn.vector import VectorFlow
from .trainer import iter_batches

#: Most pixel values used to learn the pixel threshold (a strided subsample beyond).
MAX_THRESHOLD_PIXELS = 2_000_000

#: ``feature_cache_dtype="auto"`` keeps cached features in float32 up to this size, float16 beyond.
FLOAT32_CACHE_BYTES = 2 * 2**30


@dataclass
class PreparedTraining:
    """What a mode hands to the trainer, and the fitted attributes it produced on the way.

    Attributes
    ----------
    features : list of Tensor
        Per-scale training features ``(n, ...)`` on the CPU, computed once.
    flow : nn.Module
        The untrained flow for them.
    dtype : torch.dtype
        Precision of training and prediction.
    fitted : dict
        Mode-specific fitted attributes, assigned to the detector once training succeeded.
    """

    features: list
    flow: torch.nn.Module
    dtype: torch.dtype
    fitted: dict = field(default_factory=dict)


class ImageMode:
    """Images: frozen extractor, cached features, flow, anomaly maps and masks."""

    kind = IMAGES
    #: Fitted attributes set for images, beyond :data:`skflow_ad.base.FITTED_ATTRIBUTES`.
    fitted_attributes = (
        "feature_shapes_", "image_size_", "n_channels_", "feature_cache_dtype_", "latent_shapes_", "pixel_threshold_",
    )

    def check_training_input(self, detector, X):
        images = check_images(X)
        if len(images) < 2:
            raise ValueError(f"n_samples={len(images)}: fitting a flow needs at least 2 images.")
        return images

    def check_input(self, detector, X):
        """Validate images against the fitted model (channels), without touching its state."""
        return check_fitted_images(X, detector.n_channels_, type(detector).__name__)

    def prepare(self, detector, images, params, device, seed):
        working_size = detector._resolve_working_size(params)
        with seeded(seed):  # random backbone weights (pretrained=False) are reproducible too
            extractor = detector._make_extractor(params, params["pretrained"]).to(device)
        shapes = [tuple(int(v) for v in s) for s in extractor.feature_shapes(working_size)]
        detector._check_feature_shapes(shapes, working_size, extractor)  # before any image is processed
        if params["backbone_batchnorm"] == "recalibrate":
            recalibrate_batchnorm(extractor, images, working_size, device, detector.batch_size,
                                  verbose=bool(params["verbose"]))
        features = extract_features(
            extractor, images, working_size, device, detector.batch_size, params["feature_cache_dtype"],
            verbose=bool(params["verbose"]),
        )
        cache_dtype = features[0].dtype
        features = detector._calibrate(extractor, features)
        flow = detector._make_flow(params, shapes, seed)
        fitted = {
            "extractor_": extractor,
            "feature_shapes_": shapes,
            "image_size_": working_size,
            "n_channels_": images.n_channels,
            "feature_cache_dtype_": str(cache_dtype).removeprefix("torch."),
        }
        return PreparedTraining(features, flow, torch.float32, fitted)

    def training_statistics(self, detector, features):
        """Training scores ``(n,)`` (as ``score_samples``) and a subsample of their anomaly-map values."""
        scores, pixels = [], []
        for outputs in self._network_outputs(detector, features):
            scores.append(outputs[0].double().cpu())
            pixels.append(outputs[1].flatten().cpu())
        pixels = torch.cat(pixels).numpy()
        stride = max(1, len(pixels) // MAX_THRESHOLD_PIXELS)
        return -torch.cat(scores).numpy(), pixels[::stride]

    def mean_anomaly_map(self, detector, features):
        """Mean over the training images of their anomaly maps at the working size, ``(H, W)`` float32."""
        total = sum(outputs[1].double().sum(0) for outputs in self._network_outputs(detector, features))
        return (total / len(features[0])).float().cpu().numpy()

    @staticmethod
    def _network_outputs(detector, features):
        """The fitted network's outputs for cached features, one batch at a time (inference mode)."""
        network = detector._inference_network()
        threshold = torch.tensor(chi2_threshold(detector.nfa_probability_threshold), device=detector.device_)
        with torch.inference_mode():
            for batch in iter_batches(features, detector.batch_size, detector.device_):
                yield network.from_features(batch, threshold)

    def latent_shapes(self, detector):
        """``(C, h, w)`` of each latent scale, from one blank sample through the flow."""
        with torch.inference_mode():
            blank = [torch.zeros(1, *shape, device=detector.device_) for shape in detector.feature_shapes_]
            latents, _ = detector.flow_(blank)
        return [tuple(int(v) for v in z.shape[1:]) for z in latents]

    def score_samples(self, detector, images):
        return detector._predict(images, scores=True)["scores"]

    def rebuild(self, detector, flow_state, extractor_state, device):
        """The fitted networks from their state dicts, on ``device``."""
        params = detector._fit_params
        extractor = detector._make_extractor(params, False)
        extractor.load_state_dict(extractor_state)
        flow = detector._make_flow(params, detector.feature_shapes_, detector._seed)
        flow.load_state_dict(flow_state)
        return flow.to(device).eval(), extractor.to(device).eval()


class VectorMode:
    """Feature vectors ``(n_samples, n_features)``: standardised, modelled by a vector flow in float64."""

    kind = VECTORS
    #: Fitted attributes set for feature vectors, beyond :data:`skflow_ad.base.FITTED_ATTRIBUTES`
    #: (``feature_names_in_`` too, for input with column names).
    fitted_attributes = ("_standardize", "n_features_in_")

    def check_training_input(self, detector, X):
        X = validate_data(detector, X, dtype=[np.float64, np.float32], reset=True)
        if X.shape[0] < 2:
            raise ValueError(f"n_samples={X.shape[0]}: fitting a flow needs at least 2 samples.")
        return X

    def check_input(self, detector, X):
        if input_kind(X) != VECTORS:
            raise ValueError(describe_kind_mismatch(X, VECTORS, type(detector).__name__))
        return validate_data(detector, X, dtype=[np.float64, np.float32], reset=False)

    def prepare(self, detector, X, params, device, seed):
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale < 1e-12] = 1.0
        # Feature vectors are cheap: float64 makes scores independent of the batch split.
        dtype = torch.float64 if torch.device(device).type != "mps" else torch.float32
        features = [torch.as_tensor((X - mean) / scale, dtype=dtype)]
        flow = VectorFlow(X.shape[1], seed=seed, **detector._vector_flow_kwargs(params))
        return PreparedTraining(features, flow, dtype, {"_standardize": (mean, scale)})

    def training_statistics(self, detector, features):
        return self._scores(detector, features[0]), None

    def score_samples(self, detector, X):
        mean, scale = detector._standardize
        return self._scores(detector, torch.as_tensor((X - mean) / scale, dtype=detector._dtype))

    def _scores(self, detector, vectors):
        scores = []
        with torch.inference_mode():
            for start in range(0, len(vectors), detector.batch_size):
                batch = [vectors[start : start + detector.batch_size].to(detector.device_)]
                scores.append(detector._vector_anomaly_scores(*detector.flow_(batch)).double().cpu())
        return -torch.cat(scores).numpy()

    def rebuild(self, detector, flow_state, extractor_state, device):
        mean, _ = detector._standardize
        flow = VectorFlow(len(mean), seed=detector._seed, **detector._vector_flow_kwargs(detector._fit_params))
        flow.to(detector._dtype).load_state_dict(flow_state)
        return flow.to(device).eval(), None


MODES = {IMAGES: ImageMode(), VECTORS: VectorMode()}


def mode_of(X):
    """The mode for training input ``X`` (images or feature vectors)."""
    return MODES[input_kind(X)]


def extract_features(extractor, images, working_size, device, batch_size, cache_dtype="float32", verbose=False):
    """Features of all images, computed once: per-scale CPU tensors ``(n, C, h, w)``.

    Parameters
    ----------
    extractor : FeatureExtractor
    images : ImageSet
    working_size : (int, int)
    device : str
    batch_size : int
    cache_dtype : {"auto", "float32", "float16"}
        Storage precision; ``"auto"`` is float32 unless that would exceed
        :data:`FLOAT32_CACHE_BYTES`, float16 then (training converts each
        batch back to float32).
    verbose : bool
        Show a progress bar over the images.
    """
    per_scale, dtype = None, None
    with torch.inference_mode():
        for batch in _network_batches(extractor, images, working_size, device, batch_size, "features", verbose):
            maps = extractor(batch)
            if per_scale is None:
                per_scale = [[] for _ in maps]
                dtype = _cache_dtype(cache_dtype, maps, len(images))
            for store, m in zip(per_scale, maps):
                store.append(m.to(dtype).cpu())
    return [torch.cat(store) for store in per_scale]


def recalibrate_batchnorm(extractor, images, working_size, device, batch_size, verbose=False):
    """Set the BatchNorm statistics of ``extractor`` from one pass over ``images``.

    See :class:`~skflow_ad.features.BatchNormRecalibration`; the batches are
    those of :func:`extract_features` (same size, order and preprocessing).
    Raises ``ValueError`` before any image is processed when ``extractor``
    has no BatchNorm layer.
    """
    with BatchNormRecalibration(extractor), torch.no_grad():
        for batch in _network_batches(extractor, images, working_size, device, batch_size, "batchnorm", verbose):
            extractor(batch)


def _network_batches(extractor, images, working_size, device, batch_size, desc, verbose):
    """Normalised network input ``(b, 3, H, W)`` on ``device``, batch by batch, with a progress bar."""
    from tqdm.auto import tqdm

    preprocess = Preprocess(extractor.mean, extractor.std).to(device)
    with tqdm(total=len(images), desc=desc, unit="img", disable=not verbose, leave=False) as progress:
        for _, batch in images.batches(batch_size, working_size):
            yield preprocess(torch.from_numpy(batch).to(device))
            progress.update(len(batch))


def _cache_dtype(option, first_maps, n_images):
    if option != "auto":
        return getattr(torch, option)
    float32_bytes = 4 * n_images * sum(m[0].numel() for m in first_maps)
    return torch.float32 if float32_bytes <= FLOAT32_CACHE_BYTES else torch.float16


def inference_network(detector):
    """:class:`InferenceNetwork` of a fitted image detector (shares its modules)."""
    head = detector._make_head(detector._fit_params, detector.image_size_)
    return InferenceNetwork(detector.extractor_, detector.flow_, head).to(detector.device_).eval()
