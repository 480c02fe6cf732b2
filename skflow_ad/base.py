"""The estimator core shared by the flow detectors.

:class:`BaseFlowDetector` owns the scikit-learn contract (parameter
validation, fit/predict, persistence) and orchestration; the kind of input
(images or feature vectors) is handled by a mode object
(:mod:`skflow_ad.modes`), the image predictions by
:class:`~skflow_ad.prediction.ImagePredictionMixin`, and each detector says,
through the hooks documented on the class, how to build its networks and
train them.
"""

from __future__ import annotations

import numbers
import os
from abc import abstractmethod

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from . import persistence
from .features import BACKBONE_BATCHNORM_OPTIONS
from ._validation import IMAGES, check_image_size
from .modes import MODES, extract_features, inference_network, mode_of
from .nfa import chi2_threshold
from .prediction import PREDICTION_PARAMETER_CONSTRAINTS, ImagePredictionMixin, NetworkOutputs, validate_prediction_parameters
from .trainer import FlowTrainer, device_available, resolve_device, seed_from_random_state
from .nn.vector import gaussian_log_likelihood


#: The fitted networks: persisted as state dicts and rebuilt from the fit-time parameters on loading.
NETWORK_ATTRIBUTES = ("flow_", "extractor_")

#: Fitted attributes every fit sets, whatever the input (each mode adds its ``fitted_attributes``).
FITTED_ATTRIBUTES = (
    "_fit_params", "_seed", "_dtype", "input_kind_", "device_", "flow_", "extractor_", "loss_curve_",
    "validation_loss_curve_", "best_loss_", "n_iter_", "offset_",
)


def _tukey_lower_fence(scores):
    q1, q3 = np.percentile(scores, [25, 75])
    return q1 - 1.5 * (q3 - q1)


class BaseFlowDetector(ImagePredictionMixin, OutlierMixin, BaseEstimator):
    """Base class of the normalizing-flow anomaly detectors.

    Conventions: ``score_samples`` is higher for more normal samples;
    ``predict`` returns +1 for normal and -1 for anomalous samples; anomaly
    maps are higher where a pixel is more anomalous; masks are True on
    anomalous pixels.

    Extension points
    ----------------
    A detector subclasses this class, declares its parameters (``__init__``
    and ``_parameter_constraints``) and implements the hooks below. Every hook
    receives ``params``, the detector's ``get_params(deep=False)`` as they were
    at ``fit``; what a hook builds must depend only on ``params``, the fitted
    attributes (shapes, ``map_reference_``...) and the seed, because
    persistence stores those and rebuilds the networks from them (weights are
    loaded afterwards).

    ``_make_extractor(params, pretrained) -> FeatureExtractor``
        The frozen extractor (contract in :mod:`skflow_ad.features`: ``mean``,
        ``std``, ``feature_shapes(working_size)``, ``forward``). Built inside
        ``seeded(seed)``; ``pretrained`` is ``False`` when rebuilding.
    ``_working_size(params) -> int or (int, int)``
        The resolution images are resized to.
    ``_check_feature_shapes(shapes, working_size, extractor)``
        Raise ``ValueError`` (saying which ``image_size`` works) when the
        flow cannot take the declared feature shapes; called before any
        image is processed.
    ``_make_flow(params, feature_shapes, seed) -> nn.Module``
        ``flow(features) -> (latents, log_jac_det)``, latents finest first,
        ``log_jac_det`` of shape ``(n,)``; deterministic given ``seed``.
    ``_make_head(params, working_size) -> nn.Module``
        ``head(latents) -> (image anomaly scores (n,), anomaly maps (n, H, W))``
        at the working size: the method's scores and maps.
    ``_training_recipe(params, feature_shapes) -> TrainingRecipe``
        Loss, optimiser, schedule, clipping, and the advice for divergence.
    ``_calibrate(extractor, features) -> features`` (optional)
        Fit a fixed normalisation of the training features, stored in the
        extractor (default: the extractor's own ``calibrate``).
    ``_fit_map_calibration(mean_anomaly_map)`` (optional)
        Called once the flow is trained, before the thresholds are set;
        ``mean_anomaly_map()`` computes the ``(H, W)`` mean of the training
        images' maps (one pass over the cached features). A detector whose
        head uses it stores it as a fitted attribute (default: nothing).
    ``_vector_flow_kwargs(params) -> dict`` and ``_vector_anomaly_scores(latents, log_jac_det) -> (n,)`` (optional)
        The flow and the score for feature-vector input.

    Public extension points for tools and benchmarks: :meth:`extract_features`,
    :meth:`build_flow` and :meth:`make_trainer` build what ``fit`` builds.
    """

    #: Parameters added after model files of the class were first written, with the value that
    #: reproduces a model saved before each existed: restoring a model file or a pickle that
    #: lacks one fills it in (model parameter and fit-time parameter alike).
    _legacy_parameter_values: dict = {"backbone_batchnorm": "frozen"}

    _parameter_constraints: dict = {
        "pretrained": ["boolean", str, os.PathLike],
        "backbone_batchnorm": [StrOptions(set(BACKBONE_BATCHNORM_OPTIONS))],
        "image_size": [None, Interval(numbers.Integral, 1, None, closed="left"), tuple, list],
        "contamination": [StrOptions({"auto"}), Interval(numbers.Real, 0, 0.5, closed="right")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        **PREDICTION_PARAMETER_CONSTRAINTS,
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "pixel_quantile": [Interval(numbers.Real, 0, 1, closed="neither")],
        "feature_cache_dtype": [StrOptions({"auto", "float32", "float16"})],
        "compile_inference": ["boolean"],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    #: Parameters read at prediction time: checked again before every prediction.
    _prediction_parameters = (
        "batch_size", "compile_inference", "mask_method", "nfa_window_size", "nfa_probability_threshold",
        "nfa_high_precision", "nfa_log_epsilon", "min_region_area",
    )

    # ----------------------------------------------------------------- hooks
    @abstractmethod
    def _make_extractor(self, params, pretrained):
        """The frozen feature extractor for these parameters (see the class doc)."""

    @abstractmethod
    def _working_size(self, params):
        """``(h, w)`` or an int: the size images are resized to before feature extraction."""

    def _check_feature_shapes(self, shapes, working_size, extractor):
        """Raise ``ValueError`` when the flow cannot take these feature shapes (none by default)."""

    @abstractmethod
    def _make_flow(self, params, feature_shapes, seed):
        """The flow for per-scale feature shapes ``[(C, h, w), ...]``."""

    @abstractmethod
    def _make_head(self, params, working_size):
        """``latents -> (image anomaly scores (n,), anomaly maps (n, H, W))`` at ``working_size``."""

    @abstractmethod
    def _training_recipe(self, params, feature_shapes):
        """The :class:`~skflow_ad.trainer.TrainingRecipe` of the flow."""

    def _calibrate(self, extractor, features):
        """Fit feature statistics on the training features; returns the features the flow is trained on."""
        return extractor.calibrate(features)

    def _vector_flow_kwargs(self, params):
        return {}

    def _vector_anomaly_scores(self, latents, log_jac_det):
        """Vector-mode anomaly score: the negative log-likelihood, ``(n,)``."""
        return -gaussian_log_likelihood(latents, log_jac_det)

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None):
        """Fit the flow on normal samples.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C), list of images or image paths, or (n, n_features)
            Normal training images (see the user guide for accepted layouts) or
            feature vectors.
        y : Ignored
            Present for API consistency.

        Returns
        -------
        self : object
            The fitted detector. When fitting fails, a previously fitted
            model is kept unchanged.

        Raises
        ------
        FloatingPointError
            When training diverges (the message names the parameter to change).
        """
        snapshot = dict(self.__dict__)
        try:
            return self._fit(X)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(snapshot)
            raise

    @_fit_context(prefer_skip_nested_validation=True)
    def _fit(self, X):
        params = self.get_params(deep=False)
        mode = mode_of(X)
        data = mode.check_training_input(self, X)
        device = resolve_device(self.device)
        seed = seed_from_random_state(self.random_state)
        prepared = mode.prepare(self, data, params, device, seed)
        feature_shapes = [tuple(f.shape[1:]) for f in prepared.features]
        trainer = self._trainer(params, feature_shapes, device, seed, prepared.dtype)
        result = trainer.fit(prepared.flow, prepared.features)

        # Fitted state is assigned only now, so a failure above leaves the old model.
        just_validated = {"n_features_in_", "feature_names_in_"} if mode.kind != IMAGES else set()
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            if name not in just_validated:
                delattr(self, name)
        for name in ("_standardize", "_compiled_network_"):
            self.__dict__.pop(name, None)
        self._fit_params = params
        self._seed = seed
        self._dtype = prepared.dtype
        self.input_kind_ = mode.kind
        self.device_ = device
        self.flow_ = prepared.flow
        self.extractor_ = None
        for name, value in prepared.fitted.items():
            setattr(self, name, value)
        self.loss_curve_ = result.loss_curve
        self.validation_loss_curve_ = result.validation_loss_curve
        self.best_loss_ = result.best_loss
        self.n_iter_ = result.n_iter
        if mode.kind == IMAGES:
            self.latent_shapes_ = mode.latent_shapes(self)
            self._fit_map_calibration(lambda: mode.mean_anomaly_map(self, prepared.features))
        self._set_thresholds(*mode.training_statistics(self, prepared.features), trainer.recipe)
        return self

    def _set_thresholds(self, train_scores, pixel_values, recipe):
        """``offset_`` from the training scores and ``pixel_threshold_`` from their map values."""
        if not np.isfinite(train_scores).all():
            raise recipe.diverged(f"{int((~np.isfinite(train_scores)).sum())} training scores are not finite")
        self.offset_ = float(
            _tukey_lower_fence(train_scores) if self.contamination == "auto"
            else np.percentile(train_scores, 100.0 * self.contamination)
        )
        if not np.isfinite(self.offset_):
            raise recipe.diverged(f"offset_ is {self.offset_}")
        if pixel_values is not None:
            self.pixel_threshold_ = float(np.quantile(pixel_values, self.pixel_quantile))
            if not np.isfinite(self.pixel_threshold_):
                raise recipe.diverged(f"pixel_threshold_ is {self.pixel_threshold_}")

    def _fit_map_calibration(self, mean_anomaly_map):
        """Hook: store fitted map statistics the head needs (none by default)."""

    def _trainer(self, params, feature_shapes, device, seed, dtype):
        return FlowTrainer(
            self._training_recipe(params, feature_shapes), batch_size=params["batch_size"],
            max_epochs=params["max_epochs"], validation_fraction=params["validation_fraction"],
            n_iter_no_change=params["n_iter_no_change"], tol=params["tol"], device=device, seed=seed,
            verbose=bool(params["verbose"]), dtype=dtype,
        )

    def _resolve_working_size(self, params):
        return check_image_size(self._working_size(params))

    # ----------------------------------------------- public extension points
    def extract_features(self, X):
        """The features the flow models, for images, from the fitted extractor.

        Parameters
        ----------
        X : images

        Returns
        -------
        features : list of Tensor
            Per scale, finest first, ``(n, C_s, h_s, w_s)`` float32 on the CPU,
            as ``fit`` caches them (after the fitted normalisation).
        """
        images = self._checked_images(X, "extract_features")
        return extract_features(self.extractor_, images, self.image_size_, self.device_, self.batch_size)

    def build_flow(self, feature_shapes=None):
        """A new, untrained flow with this detector's parameters and seed.

        Parameters
        ----------
        feature_shapes : list of (C, h, w), optional
            Defaults to the fitted ``feature_shapes_``.
        """
        params = getattr(self, "_fit_params", None) or self.get_params(deep=False)
        shapes = self.feature_shapes_ if feature_shapes is None else [tuple(s) for s in feature_shapes]
        seed = getattr(self, "_seed", None)
        return self._make_flow(params, shapes, seed_from_random_state(self.random_state) if seed is None else seed)

    def make_trainer(self, feature_shapes=None, **options):
        """The :class:`~skflow_ad.trainer.FlowTrainer` ``fit`` uses, with ``options`` overriding its settings.

        Parameters
        ----------
        feature_shapes : list of (C, h, w), optional
            Defaults to the fitted ``feature_shapes_``.
        **options
            ``FlowTrainer`` keyword arguments (``max_epochs``, ``validation_fraction``, ``device``...).
        """
        self._validate_params()
        params = self.get_params(deep=False)
        shapes = self.feature_shapes_ if feature_shapes is None else [tuple(s) for s in feature_shapes]
        trainer = self._trainer(params, shapes, options.pop("device", resolve_device(self.device)),
                                options.pop("seed", seed_from_random_state(self.random_state)),
                                options.pop("dtype", torch.float32))
        for name, value in options.items():
            if not hasattr(trainer, name):
                raise TypeError(f"make_trainer() got an unexpected option {name!r}.")
            setattr(trainer, name, value)
        return trainer

    # ------------------------------------------------------------ predict
    def _fitted_mode(self):
        check_is_fitted(self, "flow_")
        self._validate_prediction_parameters()
        return MODES[self.input_kind_]

    def _validate_prediction_parameters(self):
        validate_prediction_parameters(self, self._parameter_constraints, self._prediction_parameters)

    def _checked_images(self, X, method):
        mode = self._fitted_mode()
        if mode.kind != IMAGES:
            raise ValueError(f"{method} needs a detector fitted on images; this one was fitted on feature vectors.")
        return mode.check_input(self, X)

    def score_samples(self, X):
        """Normality score of each sample: higher means more normal.

        For images this is minus the image anomaly score of the method; for
        feature vectors the method's vector score (see the user guide).

        Parameters
        ----------
        X : array-like
            Same kind of input as in ``fit``.

        Returns
        -------
        scores : ndarray of shape (n,), float64
        """
        mode = self._fitted_mode()
        return mode.score_samples(self, mode.check_input(self, X))

    def fit_predict(self, X, y=None):
        """Fit on ``X`` and return its predicted labels (+1 normal, -1 anomalous)."""
        return self.fit(X).predict(X)

    def _inference_network(self):
        return inference_network(self)

    def _prediction_network(self):
        """``(network, compiled)``: the fitted network, compiled once if asked."""
        if not self.compile_inference:
            return self._inference_network(), False
        if getattr(self, "_compiled_network_", None) is None:
            # freezing folds the frozen weights as constants (BatchNorm into convolutions,
            # prepacked kernels); valid because prediction never changes them.
            self._compiled_network_ = torch.compile(self._inference_network(), options={"freezing": True})
        return self._compiled_network_, True

    def _run_network(self, batch):
        """:class:`~skflow_ad.prediction.NetworkOutputs` of one ``(b, h, w, C)`` numpy batch."""
        network, compiled = self._prediction_network()
        n = len(batch)
        images = torch.from_numpy(batch).to(self.device_)
        if compiled and n < self.batch_size:
            # One input shape for the compiled graph: pad the last batch (samples are independent).
            images = torch.cat([images, images[-1:].expand(self.batch_size - n, -1, -1, -1)])
        threshold = torch.tensor(chi2_threshold(self.nfa_probability_threshold), device=self.device_)
        with torch.inference_mode():
            try:
                outputs = network(images, threshold)
            except Exception as exc:
                if not compiled:
                    raise
                raise RuntimeError(
                    f"compile_inference=True: torch.compile failed on this machine ({type(exc).__name__}); "
                    f"set compile_inference=False to predict without compilation."
                ) from exc
        return NetworkOutputs.from_sequence([o[:n].cpu().numpy() for o in outputs])

    # --------------------------------------------------------- persistence
    def save(self, path):
        """Write the fitted detector to one model file that loads without unpickling.

        A zip archive (suffix ``.skad`` by convention) of a JSON manifest
        (parameters, fitted attributes, package versions, checksum) and the
        weights as safetensors; load it with :func:`skflow_ad.load`. See
        :func:`skflow_ad.persistence.save`.

        Parameters
        ----------
        path : str or path-like
            Destination; replaced atomically.

        Raises
        ------
        NotFittedError
            When the detector is not fitted.
        ValueError
            When the backbone is a user's ``nn.Module``, which a manifest
            cannot describe: save such a detector with joblib.
        """
        persistence.save(self, path)

    # ---------------------------------------------------------------- export
    def export_onnx(self, path, *, opset=None, runtime="onnxruntime", block_nfa_map=False):
        """Write the whole prediction network as one ONNX model, for :class:`skflow_ad.deploy.ExportedDetector`.

        A ``uint8`` batch ``(n, H, W, C)`` at the working size in (dynamic
        ``n``), scores, anomaly maps and the per-scale latent energies and
        exceedance counts out; the fitted thresholds and prediction
        parameters in its metadata. See :func:`skflow_ad.export.export_onnx`.

        Parameters
        ----------
        path : str or path-like
            Destination, ``.onnx`` by convention.
        opset : int or None
            ONNX opset; None uses the exporter's default.
        runtime : {"onnxruntime", "openvino"}
            The runtime the graph is laid out for: CS-Flow sums its
            up-convolutions' taps in the form that runtime runs faster (the
            same numbers up to float32 rounding; either graph runs on either
            runtime). U-Flow's graph is the same for both.
        block_nfa_map : bool, default=False
            Also output ``block_log_nfa`` ``(n, H, W)``: this detector's
            ``log_nfa_map(X, "block_nfa")`` at the working size, with its NFA
            parameters at export time, for programs that run the graph
            without skflow_ad.

        Returns
        -------
        pathlib.Path

        Raises
        ------
        NotFittedError
            When the detector is not fitted.
        ValueError
            When it was fitted on feature vectors, or ``runtime`` is unknown.
        ImportError
            When ``onnx`` or ``onnxscript`` is missing: ``pip install "skflow-ad[export]"``.
        """
        from .export import export_onnx

        return export_onnx(self, path, opset=opset, runtime=runtime, block_nfa_map=block_nfa_map)

    def export_openvino(self, path, *, precision="FP32", calibration_images=None, opset=None, block_nfa_map=False):
        """Write the prediction network as OpenVINO IR (``.xml`` + ``.bin``); see :meth:`export_onnx`.

        Parameters
        ----------
        path : str or path-like
            The ``.xml`` file.
        precision : {"FP32", "FP16", "INT8"}
            FP32: this detector's numbers; FP16: weights stored in 16 bits,
            computed in FP32; INT8: the extractor quantized by NNCF on
            ``calibration_images`` (faster, not the same numbers). See
            :func:`skflow_ad.export.export_openvino`.
        calibration_images : image input or None
            Normal images, for (and only for) ``precision="INT8"``.
        opset : int or None
            ONNX opset of the intermediate ONNX model.
        block_nfa_map : bool, default=False
            Also output the block-NFA map, as :meth:`export_onnx`.

        Returns
        -------
        pathlib.Path
        """
        from .export import export_openvino

        return export_openvino(self, path, precision=precision, calibration_images=calibration_images, opset=opset,
                               block_nfa_map=block_nfa_map)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_compiled_network_", None)  # compiled graphs do not pickle; rebuilt on first use
        for name in NETWORK_ATTRIBUTES:
            module = state.get(name)
            if isinstance(module, torch.nn.Module):
                state[name] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        return persistence.record_versions(state)

    def __setstate__(self, state):
        # The one restore path of both formats: unpickling, and skflow_ad.load with the state of a manifest.
        state = dict(state)
        persistence.warn_if_versions_differ(type(self).__name__, persistence.pop_saved_versions(state))
        fit_params = state.get("_fit_params")
        for name, value in self._legacy_parameter_values.items():
            state.setdefault(name, value)
            if isinstance(fit_params, dict):
                fit_params.setdefault(name, value)
        flow_state = state.get("flow_")
        extractor_state = state.get("extractor_")
        super().__setstate__(state)
        if not isinstance(flow_state, dict):
            return
        device = self.device_ if device_available(self.device_) else "cpu"
        try:
            self.flow_, self.extractor_ = MODES[self.input_kind_].rebuild(self, flow_state, extractor_state, device)
        except RuntimeError as exc:
            if not str(exc).startswith("Error(s) in loading state_dict"):
                raise
            raise persistence.ModelFileError(
                f"the saved weights do not match the networks rebuilt from the saved parameters "
                f"({persistence.summarize_state_dict_error(exc)})."
            ) from exc
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise persistence.ModelFileError(
                f"the networks could not be rebuilt from the saved parameters ({type(exc).__name__}: {exc})."
            ) from exc
        self.device_ = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
