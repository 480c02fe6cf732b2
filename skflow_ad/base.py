"""The estimator core shared by the flow detectors.

Subclasses say how to build the feature extractor and the flow, and how to turn
latents into scores and maps; this class owns validation, feature caching,
training, thresholds, batching at prediction time and persistence.
"""

from __future__ import annotations

import numbers
import os
from abc import abstractmethod

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._validation import IMAGES, VECTORS, check_images, input_kind
from .nn._blocks import seeded
from .nn.vector import VectorFlow, gaussian_log_likelihood
from .trainer import FlowTrainer, device_available, iter_batches, resolve_device, seed_from_random_state

#: Most pixel values used to learn the pixel threshold (a strided subsample beyond).
_MAX_THRESHOLD_PIXELS = 2_000_000

#: ``feature_cache_dtype="auto"`` keeps cached features in float32 up to this size, float16 beyond.
_FLOAT32_CACHE_BYTES = 2 * 2**30


def _tukey_lower_fence(scores):
    q1, q3 = np.percentile(scores, [25, 75])
    return q1 - 1.5 * (q3 - q1)


class BaseFlowDetector(OutlierMixin, BaseEstimator):
    """Base class of the normalizing-flow anomaly detectors.

    Conventions: ``score_samples`` is higher for more normal samples;
    ``predict`` returns +1 for normal and -1 for anomalous samples; anomaly
    maps are higher where a pixel is more anomalous; masks are True on
    anomalous pixels.
    """

    _parameter_constraints: dict = {
        "pretrained": ["boolean", str, os.PathLike],
        "image_size": [None, Interval(numbers.Integral, 1, None, closed="left"), tuple],
        "contamination": [StrOptions({"auto"}), Interval(numbers.Real, 0, 0.5, closed="right")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "mask_method": [StrOptions({"nfa", "threshold"})],
        "nfa_window_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "nfa_probability_threshold": [Interval(numbers.Real, 0, 1, closed="neither")],
        "nfa_log_epsilon": [Interval(numbers.Real, None, None, closed="neither")],
        "pixel_quantile": [Interval(numbers.Real, 0, 1, closed="neither")],
        "feature_cache_dtype": [StrOptions({"auto", "float32", "float16"})],
        "compile_inference": ["boolean"],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    # ----------------------------------------------------------------- hooks
    @abstractmethod
    def _make_extractor(self, params, pretrained):
        """The frozen feature extractor (``nn.Module``) for these parameters."""

    @abstractmethod
    def _working_size(self, params):
        """``(h, w)`` the images are resized to before feature extraction."""

    @abstractmethod
    def _make_flow(self, params, feature_shapes, seed):
        """The flow for per-scale feature shapes ``[(C, h, w), ...]``."""

    @abstractmethod
    def _nll(self, latents, log_jac_det):
        """Per-sample training loss ``(n,)``."""

    @abstractmethod
    def _make_optimizer(self, params):
        """``parameters -> optimizer`` factory."""

    def _make_scheduler(self, params):
        """``(optimizer, max_epochs) -> scheduler`` factory, or None."""
        return None

    def _clip_grad_norm(self, params):
        return None

    @abstractmethod
    def _image_anomaly_scores(self, latents, working_size):
        """Image anomaly scores ``(n,)`` from latents (higher = more anomalous)."""

    @abstractmethod
    def _anomaly_maps(self, latents, output_size):
        """Anomaly maps ``(n, H, W)`` from latents (higher = more anomalous)."""

    def _vector_flow_kwargs(self, params):
        return {}

    def _calibrate(self, extractor, features):
        """Fit feature statistics on the training features (none by default)."""
        return features

    def _vector_anomaly_scores(self, latents, log_jac_det):
        """Vector-mode anomaly score: the negative log-likelihood, ``(n,)``."""
        return -gaussian_log_likelihood(latents, log_jac_det)

    def _nll_per_dim(self, latent_shapes):
        """Factor turning ``_nll`` into NLL per latent dimension for the loss curves."""
        return 1.0 / sum(int(np.prod(s)) for s in latent_shapes)

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None):
        """Fit the flow on normal samples.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C), list of images, or (n, n_features)
            Normal training images (see the user guide for accepted layouts) or
            feature vectors.
        y : Ignored
            Present for API consistency.

        Returns
        -------
        self : object
            The fitted detector. When fitting fails, a previously fitted
            model is kept unchanged.
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
        kind = input_kind(X)
        if kind == VECTORS:
            X = validate_data(self, X, dtype=[np.float64, np.float32], reset=True)
            if X.shape[0] < 2:
                raise ValueError(f"n_samples={X.shape[0]}: fitting a flow needs at least 2 samples.")
        else:
            images = check_images(X)
            if len(images) < 2:
                raise ValueError(f"n_samples={len(images)}: fitting a flow needs at least 2 images.")
            working_size = self._resolve_working_size(params)
        device = resolve_device(self.device)
        seed = seed_from_random_state(self.random_state)
        # Feature vectors are cheap: float64 makes scores independent of the batch split.
        dtype = torch.float64 if kind == VECTORS and torch.device(device).type != "mps" else torch.float32

        if kind == VECTORS:
            mean = X.mean(axis=0)
            scale = X.std(axis=0)
            scale[scale < 1e-12] = 1.0
            features = [torch.as_tensor((X - mean) / scale, dtype=dtype)]
            extractor = None
            flow = VectorFlow(X.shape[1], seed=seed, **self._vector_flow_kwargs(params))
            standardize = (mean, scale)
        else:
            with seeded(seed):  # random backbone weights (pretrained=False) are reproducible too
                extractor = self._make_extractor(params, params["pretrained"]).to(device)
            features = self._extract(extractor, images, working_size, device, params)
            features = self._calibrate(extractor, features)
            shapes = [tuple(f.shape[1:]) for f in features]
            flow = self._make_flow(params, shapes, seed)
            standardize = None

        trainer = FlowTrainer(
            self._nll, self._make_optimizer(params), self._make_scheduler(params),
            batch_size=self.batch_size, max_epochs=self.max_epochs,
            validation_fraction=self.validation_fraction, n_iter_no_change=self.n_iter_no_change,
            tol=self.tol, clip_grad_norm=self._clip_grad_norm(params), device=device, seed=seed,
            verbose=bool(self.verbose), dtype=dtype, report_scale=self._nll_per_dim([tuple(f.shape[1:]) for f in features]),
        )
        result = trainer.fit(flow, features)

        # Fitted state is assigned only now, so a failure above leaves the old model.
        just_validated = {"n_features_in_", "feature_names_in_"} if kind == VECTORS else set()
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            if name not in just_validated:
                delattr(self, name)
        self._fit_params = params
        self._seed = seed
        self.input_kind_ = kind
        self.device_ = device
        self._dtype = dtype
        self.flow_ = flow
        self.extractor_ = extractor
        self._standardize = standardize
        self.loss_curve_ = result.loss_curve
        self.validation_loss_curve_ = result.validation_loss_curve
        self.best_loss_ = result.best_loss
        self.n_iter_ = result.n_iter
        if kind == IMAGES:
            self.feature_shapes_ = [tuple(f.shape[1:]) for f in features]
            self.feature_cache_dtype_ = str(features[0].dtype).removeprefix("torch.")
            self.n_channels_ = images.n_channels
            self.image_size_ = working_size
        train_scores, pixel_values = self._training_statistics(features)
        self.offset_ = (
            _tukey_lower_fence(train_scores) if self.contamination == "auto"
            else float(np.percentile(train_scores, 100.0 * self.contamination))
        )
        if kind == IMAGES:
            self.pixel_threshold_ = float(np.quantile(pixel_values, self.pixel_quantile))
        return self

    def _resolve_working_size(self, params):
        size = self._working_size(params)
        if isinstance(size, numbers.Integral):
            size = (int(size), int(size))
        if len(size) != 2 or any(not isinstance(v, numbers.Integral) or v < 1 for v in size):
            raise ValueError(f"image_size must be a positive int or a (height, width) pair; got {size!r}.")
        return tuple(int(v) for v in size)

    def _extract(self, extractor, images, working_size, device, params):
        """Features of all images, computed once: per-scale CPU tensors ``(n, C, h, w)``.

        Stored as ``params["feature_cache_dtype"]``; ``"auto"`` is float32 unless
        that would exceed ``_FLOAT32_CACHE_BYTES``, float16 then (training
        converts each batch back to float32).
        """
        per_scale, cache_dtype = None, None
        with torch.inference_mode():
            for _, batch in images.batches(self.batch_size, working_size, device):
                maps = extractor(self._normalize(batch, extractor))
                if per_scale is None:
                    per_scale = [[] for _ in maps]
                    cache_dtype = self._cache_dtype(params["feature_cache_dtype"], maps, len(images))
                for store, m in zip(per_scale, maps):
                    store.append(m.to(cache_dtype).cpu())
        return [torch.cat(store) for store in per_scale]

    @staticmethod
    def _cache_dtype(option, first_maps, n_images):
        if option != "auto":
            return getattr(torch, option)
        float32_bytes = 4 * n_images * sum(m[0].numel() for m in first_maps)
        return torch.float32 if float32_bytes <= _FLOAT32_CACHE_BYTES else torch.float16

    @staticmethod
    def _normalize(batch, extractor):
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        mean = torch.tensor(extractor.mean, device=batch.device).view(1, -1, 1, 1)
        std = torch.tensor(extractor.std, device=batch.device).view(1, -1, 1, 1)
        return (batch - mean) / std

    def _training_statistics(self, features):
        """Scores of the training rows, and a subsample of their anomaly-map values."""
        scores, pixels = [], []
        with torch.inference_mode():
            for batch in iter_batches(features, self.batch_size, self.device_, dtype=self._dtype):
                latents, log_jac_det = self.flow_(batch)
                scores.append(self._scores_from_latents(latents, log_jac_det).cpu())
                if self.input_kind_ == IMAGES:
                    maps = self._anomaly_maps(latents, self.image_size_).flatten()
                    pixels.append(maps.cpu())
        scores = -torch.cat(scores).double().numpy()
        if not pixels:
            return scores, None
        pixels = torch.cat(pixels).numpy()
        stride = max(1, len(pixels) // _MAX_THRESHOLD_PIXELS)
        return scores, pixels[::stride]

    def _scores_from_latents(self, latents, log_jac_det):
        if self.input_kind_ == VECTORS:
            return self._vector_anomaly_scores(latents, log_jac_det)
        return self._image_anomaly_scores(latents, self.image_size_)

    # ------------------------------------------------------------ predict
    def _check_input(self, X):
        """Validate ``X`` against the fitted model without touching its state."""
        check_is_fitted(self, "flow_")
        kind = input_kind(X)
        if kind != self.input_kind_:
            fitted_on = "images" if self.input_kind_ == IMAGES else "feature vectors (n_samples, n_features)"
            raise ValueError(f"{type(self).__name__} was fitted on {fitted_on}; got {kind} of another kind.")
        if kind == VECTORS:
            return validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        images = check_images(X)
        if images.n_channels != self.n_channels_:
            raise ValueError(
                f"X has {images.n_channels} channel(s) but {type(self).__name__} was fitted on images "
                f"with {self.n_channels_} channel(s)."
            )
        return images

    def _prediction_modules(self):
        """``(extractor, flow, compiled)``: the fitted modules, compiled once if asked."""
        if not self.compile_inference:
            return self.extractor_, self.flow_, False
        if getattr(self, "_compiled_modules_", None) is None:
            # freezing folds the frozen weights as constants (BatchNorm into convolutions,
            # prepacked kernels); valid because prediction never changes them.
            self._compiled_modules_ = tuple(
                torch.compile(module, options={"freezing": True}) for module in (self.extractor_, self.flow_)
            )
        return (*self._compiled_modules_, True)

    def _iter_latents(self, data):
        """Yield ``(start, latents, log_jac_det)`` batch by batch, in inference mode."""
        with torch.inference_mode():
            if self.input_kind_ == VECTORS:
                mean, scale = self._standardize
                vectors = torch.as_tensor((data - mean) / scale, dtype=self._dtype)
                for start in range(0, len(vectors), self.batch_size):
                    batch = [vectors[start : start + self.batch_size].to(self.device_)]
                    yield start, *self.flow_(batch)
                return
            extractor, flow, compiled = self._prediction_modules()
            for start, batch in data.batches(self.batch_size, self.image_size_, self.device_):
                n = len(batch)
                if compiled and n < self.batch_size:
                    # One input shape for the compiled graph: pad the last batch (samples are independent).
                    batch = torch.cat([batch, batch[-1:].expand(self.batch_size - n, -1, -1, -1)])
                try:
                    maps = extractor(self._normalize(batch, self.extractor_))
                    latents, log_jac_det = flow([m.float() for m in maps])
                except Exception as exc:
                    if not compiled:
                        raise
                    raise RuntimeError(
                        f"compile_inference=True: torch.compile failed on this machine ({type(exc).__name__}); "
                        f"set compile_inference=False to predict without compilation."
                    ) from exc
                yield start, [z[:n] for z in latents], log_jac_det[:n]

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
        data = self._check_input(X)
        scores = [self._scores_from_latents(lat, ljd).cpu() for _, lat, ljd in self._iter_latents(data)]
        return -torch.cat(scores).double().numpy()

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for predicted anomalies, shape ``(n,)``."""
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for normal, -1 for anomalous samples, shape ``(n,)``."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def fit_predict(self, X, y=None):
        """Fit on ``X`` and return its predicted labels (+1 normal, -1 anomalous)."""
        return self.fit(X).predict(X)

    def _check_images_fitted(self, X, method):
        data = self._check_input(X)
        if self.input_kind_ != IMAGES:
            raise ValueError(f"{method} needs a detector fitted on images; this one was fitted on feature vectors.")
        return data

    def _per_image(self, data, compute, with_scores=False):
        """Apply ``compute(latents, log_jac_det, size) -> (b, H, W)`` at each image's own size.

        Returns an ``(n, H, W)`` array for array input, a list for a list of
        images; with ``with_scores``, ``(score_samples, that)`` from the same pass.
        """
        scores = np.empty(len(data)) if with_scores else None
        uniform_size = data.sizes[0] if data.uniform else None
        outputs = None if data.uniform else [None] * len(data)
        for start, latents, log_jac_det in self._iter_latents(data):
            stop = start + latents[0].shape[0]
            if with_scores:
                scores[start:stop] = -self._scores_from_latents(latents, log_jac_det).double().cpu().numpy()
            if data.uniform:
                batch = compute(latents, log_jac_det, uniform_size).cpu().numpy()
                if outputs is None:  # filled in place: the peak is the output, not twice it
                    outputs = np.empty((len(data), *batch.shape[1:]), dtype=batch.dtype)
                outputs[start:stop] = batch
                continue
            batch_sizes = data.sizes[start:stop]
            for size in dict.fromkeys(batch_sizes):
                rows = [i for i, s in enumerate(batch_sizes) if s == size]
                picked = [z[rows] for z in latents]
                result = compute(picked, log_jac_det[rows], size).cpu().numpy()
                for row, value in zip(rows, result):
                    outputs[start + row] = value
        return (scores, outputs) if with_scores else outputs

    def anomaly_map(self, X):
        """Pixel anomaly scores at each input's own resolution (higher = more anomalous).

        Returns
        -------
        maps : ndarray of shape (n, H, W), float32, or a list of (H, W) arrays for a list input
        """
        data = self._check_images_fitted(X, "anomaly_map")
        return self._per_image(data, lambda lat, ljd, size: self._anomaly_maps(lat, size).float())

    def score_samples_and_anomaly_map(self, X):
        """``(score_samples(X), anomaly_map(X))`` from one pass of backbone and flow.

        Equal to calling the two methods, at half the cost: use it when both
        the image scores and the maps are needed.

        Returns
        -------
        scores : ndarray of shape (n,), float64
            Higher means more normal.
        maps : ndarray of shape (n, H, W), float32, or a list of (H, W) arrays for a list input
            Higher means more anomalous.
        """
        data = self._check_images_fitted(X, "score_samples_and_anomaly_map")
        return self._per_image(data, lambda lat, ljd, size: self._anomaly_maps(lat, size).float(), with_scores=True)

    def log_nfa_map(self, X):
        """log10 of the a-contrario number of false alarms of each pixel (lower = more anomalous).

        ``predict_mask(X, method="nfa")`` is ``log_nfa_map(X) < nfa_log_epsilon``.

        Returns
        -------
        log_nfa : ndarray of shape (n, H, W), float32, or a list for a list input
        """
        from .nfa import log_nfa

        data = self._check_images_fitted(X, "log_nfa_map")
        return self._per_image(
            data,
            lambda latents, ljd, size: log_nfa(
                latents, size, window_size=self.nfa_window_size,
                probability_threshold=self.nfa_probability_threshold,
            ),
        )

    def predict_mask(self, X, method=None):
        """Segment anomalous pixels without labels.

        Parameters
        ----------
        X : images
        method : {"nfa", "threshold"}, default=None
            ``"nfa"``: the a-contrario test on the latents (pixels whose number
            of false alarms is below ``10**nfa_log_epsilon``); ``"threshold"``:
            anomaly map above ``pixel_threshold_``. None uses ``mask_method``.

        Returns
        -------
        masks : ndarray of shape (n, H, W), bool, or a list for a list input
            True on anomalous pixels.
        """
        data = self._check_images_fitted(X, "predict_mask")
        method = self.mask_method if method is None else method
        if method == "nfa":
            from .nfa import nfa_mask

            def compute(latents, log_jac_det, size):
                return nfa_mask(
                    latents, size, window_size=self.nfa_window_size,
                    probability_threshold=self.nfa_probability_threshold, log_epsilon=self.nfa_log_epsilon,
                )
        elif method == "threshold":
            def compute(latents, log_jac_det, size):
                return self._anomaly_maps(latents, size) > self.pixel_threshold_
        else:
            raise ValueError(f"method must be 'nfa', 'threshold' or None; got {method!r}.")
        return self._per_image(data, compute)

    # --------------------------------------------------------- persistence
    def __getstate__(self):
        state = super().__getstate__()
        state = dict(state)
        state.pop("_compiled_modules_", None)  # compiled graphs do not pickle; rebuilt on first use
        for name in ("flow_", "extractor_"):
            module = state.get(name)
            if isinstance(module, torch.nn.Module):
                state[name] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        return state

    def __setstate__(self, state):
        flow_state = state.get("flow_")
        extractor_state = state.get("extractor_")
        super().__setstate__(state)
        if not isinstance(flow_state, dict):
            return
        device = self.device_ if device_available(self.device_) else "cpu"
        params = self._fit_params
        if self.input_kind_ == VECTORS:
            flow = VectorFlow(len(self._standardize[0]), seed=self._seed, **self._vector_flow_kwargs(params))
        else:
            flow = self._make_flow(params, self.feature_shapes_, self._seed)
            extractor = self._make_extractor(params, False)
            extractor.load_state_dict(extractor_state)
            self.extractor_ = extractor.to(device).eval()
        flow.to(self._dtype).load_state_dict(flow_state)
        self.flow_ = flow.to(device).eval()
        self.device_ = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
