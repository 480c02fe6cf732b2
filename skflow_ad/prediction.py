"""From a network's outputs to what the user asks for: scores, maps, masks, regions.

Torch-free: the detectors (their torch network) and
:class:`skflow_ad.deploy.ExportedDetector` (an exported graph) share this
code, so both give the same numbers from the same network outputs.

The network of a fitted image detector maps a batch ``(b, h, w, C)`` at the
working size to :class:`NetworkOutputs`: image anomaly scores, anomaly maps at
the working size, and per latent scale ``s`` the latent energy
``sum_c z**2`` and the number of channels with ``z**2`` above the block-NFA
threshold, both ``(b, h_s, w_s)``. Everything per pixel is then brought to
each input's own size: anomaly maps by bilinear resampling
(:func:`skflow_ad.resample.resize_maps`), log-NFA maps computed there directly.

Conventions: ``score_samples`` is higher for more normal images (minus the
image anomaly score); ``predict`` is +1 normal / -1 anomalous; maps are higher
where more anomalous; log10 NFA is lower where more anomalous; masks are True
on anomalous pixels.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints

from . import nfa
from .conventions import labels_from_decision
from .regions import find_regions, remove_small_regions
from .resample import resize_maps

__all__ = [
    "MASK_METHODS", "NFA_METHODS", "PREDICTION_PARAMETER_CONSTRAINTS", "validate_prediction_parameters",
    "Inspection", "NetworkOutputs", "ImagePredictionMixin",
]

#: ``mask_method`` values: the a-contrario tests on the latents, or the learned pixel threshold.
MASK_METHODS = ("tree_nfa", "block_nfa", "threshold")
#: The methods ``log_nfa_map`` computes.
NFA_METHODS = ("tree_nfa", "block_nfa")

#: scikit-learn constraints of the parameters read at prediction time (by the detectors and exported models).
PREDICTION_PARAMETER_CONSTRAINTS = {
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
    "mask_method": [StrOptions(set(MASK_METHODS))],
    "nfa_window_size": [Interval(numbers.Integral, 1, None, closed="left")],
    "nfa_probability_threshold": [Interval(numbers.Real, 0, 1, closed="neither")],
    "nfa_high_precision": ["boolean"],
    "nfa_log_epsilon": [Interval(numbers.Real, None, None, closed="neither")],
    "min_region_area": [Interval(numbers.Integral, 1, None, closed="left")],
}


def validate_prediction_parameters(host, constraints, names):
    """Raise scikit-learn's ``InvalidParameterError`` naming the first of ``host``'s ``names`` out of ``constraints``."""
    validate_parameter_constraints(
        {name: constraints[name] for name in names}, {name: getattr(host, name) for name in names},
        caller_name=type(host).__name__,
    )


@dataclass
class NetworkOutputs:
    """One batch's network outputs, as numpy arrays.

    Attributes
    ----------
    scores : ndarray of shape (b,)
        Image anomaly scores (higher = more anomalous).
    anomaly_maps : ndarray of shape (b, h, w), float32
        At the working size.
    energies : list of ndarray of shape (b, h_s, w_s)
        ``sum_c z**2`` per latent scale, finest first.
    exceedances : list of ndarray of shape (b, h_s, w_s), int
        Number of channels with ``z**2 > nfa.chi2_threshold(nfa_probability_threshold)``.
    """

    scores: np.ndarray
    anomaly_maps: np.ndarray
    energies: list
    exceedances: list

    @classmethod
    def from_sequence(cls, outputs):
        """From the flat sequence ``(scores, maps, *energies, *exceedances)`` a network returns."""
        n_scales = (len(outputs) - 2) // 2
        arrays = [np.asarray(o) for o in outputs]
        return cls(arrays[0], arrays[1], arrays[2 : 2 + n_scales], arrays[2 + n_scales :])


@dataclass
class Inspection:
    """Everything :meth:`ImagePredictionMixin.inspect` computed, from one pass of the network.

    Per-image results are ``(n, ...)`` arrays for array input and lists for a
    list of images.

    Attributes
    ----------
    scores : ndarray of shape (n,), float64
        ``score_samples``: higher = more normal.
    labels : ndarray of shape (n,), int
        ``predict``: +1 normal, -1 anomalous.
    anomaly_maps : (n, H, W) float32 or list
        Higher = more anomalous.
    masks : (n, H, W) bool or list
        True on anomalous pixels, by ``mask_method``.
    log_nfa : (n, H, W) float32, list or None
        log10 NFA of the NFA mask methods (None for ``"threshold"``).
    regions : list of list of :class:`skflow_ad.regions.Region`
        The connected regions of each mask.
    mask_method : str
    """

    scores: np.ndarray
    labels: np.ndarray
    anomaly_maps: object
    masks: object
    log_nfa: object
    regions: list = field(default_factory=list)
    mask_method: str = "tree_nfa"


def _checked_method(method, default, allowed, argument="method"):
    method = default if method is None else method
    if method not in allowed:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, allowed))} or None; got {method!r}.")
    return method


class ImagePredictionMixin:
    """The image-prediction API shared by the detectors and the exported-model runtime.

    A host class provides:

    - ``_checked_images(X, method_name) -> ImageSet``: validation against the
      fitted model (raises before any work);
    - ``_run_network(batch) -> NetworkOutputs`` for one ``(b, h, w, C)``
      batch at the working size;
    - attributes ``batch_size``, ``image_size_``, ``latent_shapes_``,
      ``offset_``, ``pixel_threshold_``, ``mask_method``, ``nfa_window_size``,
      ``nfa_probability_threshold``, ``nfa_high_precision``,
      ``nfa_log_epsilon`` and ``min_region_area``.
    """

    # ---------------------------------------------------------------- public
    def score_samples(self, X):
        """Normality score of each image: higher means more normal, shape ``(n,)`` float64."""
        return self._predict(self._checked_images(X, "score_samples"), scores=True)["scores"]

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for predicted anomalies, shape ``(n,)``."""
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for normal, -1 for anomalous samples, shape ``(n,)``."""
        return labels_from_decision(self.decision_function(X))

    def anomaly_map(self, X):
        """Pixel anomaly scores at each input's own resolution (higher = more anomalous).

        Returns
        -------
        maps : ndarray of shape (n, H, W), float32, or a list of (H, W) arrays for a list input
        """
        return self._predict(self._checked_images(X, "anomaly_map"), maps=True)["maps"]

    def score_samples_and_anomaly_map(self, X):
        """``(score_samples(X), anomaly_map(X))`` from one pass of the network.

        Returns
        -------
        scores : ndarray of shape (n,), float64
            Higher means more normal.
        maps : ndarray of shape (n, H, W), float32, or a list of (H, W) arrays for a list input
            Higher means more anomalous.
        """
        result = self._predict(self._checked_images(X, "score_samples_and_anomaly_map"), scores=True, maps=True)
        return result["scores"], result["maps"]

    def log_nfa_map(self, X, method=None):
        """log10 of the a-contrario number of false alarms of each pixel (lower = more anomalous).

        Parameters
        ----------
        X : images
        method : {"tree_nfa", "block_nfa"} or None
            None uses ``mask_method`` when it is an NFA method, else ``"tree_nfa"``.

        Returns
        -------
        log_nfa : ndarray of shape (n, H, W), float32, or a list for a list input
            ``predict_mask(X, method)`` is ``log_nfa_map(X, method) < nfa_log_epsilon``
            (less the regions smaller than ``min_region_area``).
        """
        images = self._checked_images(X, "log_nfa_map")
        default = self.mask_method if self.mask_method in NFA_METHODS else "tree_nfa"
        return self._predict(images, log_nfa=_checked_method(method, default, NFA_METHODS))["log_nfa"]

    def predict_mask(self, X, method=None):
        """Segment anomalous pixels without labels.

        Parameters
        ----------
        X : images
        method : {"tree_nfa", "block_nfa", "threshold"} or None
            ``"tree_nfa"``: the a-contrario test on the level sets of the latent
            energy (U-Flow's current paper); ``"block_nfa"``: the a-contrario
            test on windows of the latents (its first version); NFA pixels are
            anomalous where the number of false alarms is below
            ``10**nfa_log_epsilon``. ``"threshold"``: anomaly map above
            ``pixel_threshold_``. None uses ``mask_method``. Regions smaller
            than ``min_region_area`` pixels are dropped.

        Returns
        -------
        masks : ndarray of shape (n, H, W), bool, or a list for a list input
            True on anomalous pixels.
        """
        images = self._checked_images(X, "predict_mask")
        return self._predict(images, masks=_checked_method(method, self.mask_method, MASK_METHODS))["masks"]

    def predict_regions(self, X, method=None):
        """The connected anomalous regions of each image's mask: the unit of an inspection decision.

        Parameters
        ----------
        X : images
        method : {"tree_nfa", "block_nfa", "threshold"} or None
            The mask method, as in :meth:`predict_mask`.

        Returns
        -------
        regions : list of list of :class:`skflow_ad.regions.Region`
            For each image, its regions of at least ``min_region_area`` pixels
            (area, bounding box, centroid, maximum and mean anomaly-map value,
            and log10 NFA for the NFA methods or the margin over
            ``pixel_threshold_`` for ``"threshold"``), most severe first.
        """
        images = self._checked_images(X, "predict_regions")
        method = _checked_method(method, self.mask_method, MASK_METHODS)
        return self._predict(images, masks=method, regions=True)["regions"]

    def inspect(self, X, method=None):
        """Scores, labels, maps, masks and regions of every image from one pass of the network.

        Parameters
        ----------
        X : images
        method : {"tree_nfa", "block_nfa", "threshold"} or None
            The mask method, as in :meth:`predict_mask`.

        Returns
        -------
        Inspection
            Equal to calling ``score_samples``, ``predict``, ``anomaly_map``,
            ``predict_mask`` and ``predict_regions`` (and ``log_nfa_map`` for
            the NFA methods), at the cost of one of them.
        """
        images = self._checked_images(X, "inspect")
        method = _checked_method(method, self.mask_method, MASK_METHODS)
        result = self._predict(images, scores=True, maps=True, masks=method, regions=True)
        return Inspection(
            scores=result["scores"], labels=labels_from_decision(result["scores"] - self.offset_),
            anomaly_maps=result["maps"], masks=result["masks"], log_nfa=result.get("log_nfa"),
            regions=result["regions"], mask_method=method,
        )

    # -------------------------------------------------------------- the pass
    def _predict(self, images, *, scores=False, maps=False, log_nfa=None, masks=None, regions=False):
        """One pass of the network over ``images``, turning each batch into the requested outputs.

        ``log_nfa`` / ``masks`` name a method or are None. Returns a dict with
        the keys asked for (``"scores"``, ``"maps"``, ``"log_nfa"``, ``"masks"``,
        ``"regions"``).
        """
        nfa_method = masks if masks in NFA_METHODS else log_nfa
        need_maps = maps or masks == "threshold" or regions
        store = _Results(images, scores=scores, maps=maps, log_nfa=nfa_method is not None,
                         masks=masks is not None, regions=regions)
        channels = [shape[0] for shape in self.latent_shapes_]
        for start, batch in images.batches(self.batch_size, self.image_size_):
            outputs = self._run_network(batch)
            stop = start + len(batch)
            if scores:
                store.put_scores(start, -np.asarray(outputs.scores, dtype=np.float64))
            for size, rows in _rows_by_size(images.sizes[start:stop]):
                batch_maps = resize_maps(outputs.anomaly_maps[rows], size) if need_maps else None
                batch_log_nfa = (
                    self._log_nfa(nfa_method, outputs, rows, channels, size) if nfa_method is not None else None
                )
                batch_masks = None
                if masks == "threshold":
                    batch_masks = batch_maps > self.pixel_threshold_
                elif masks is not None:
                    batch_masks = batch_log_nfa < self.nfa_log_epsilon
                if batch_masks is not None and self.min_region_area > 1:
                    batch_masks = np.stack([remove_small_regions(m, self.min_region_area) for m in batch_masks])
                for offset, row in enumerate(rows):
                    store.put_pixels(
                        start + row,
                        maps=None if batch_maps is None else batch_maps[offset],
                        log_nfa=None if batch_log_nfa is None else batch_log_nfa[offset],
                        masks=None if batch_masks is None else batch_masks[offset],
                    )
                    if regions:
                        store.put_regions(start + row, find_regions(
                            batch_masks[offset], batch_maps[offset],
                            log_nfa=None if batch_log_nfa is None else batch_log_nfa[offset],
                            threshold=self.pixel_threshold_ if masks == "threshold" else None,
                            min_area=self.min_region_area,
                        ))
        return store.results()

    def _log_nfa(self, method, outputs, rows, channels, size):
        if method == "tree_nfa":
            return nfa.tree_log_nfa([e[rows] for e in outputs.energies], channels, size)
        return nfa.block_log_nfa(
            [c[rows] for c in outputs.exceedances], channels, size, window_size=self.nfa_window_size,
            probability_threshold=self.nfa_probability_threshold, high_precision=self.nfa_high_precision,
        )


def _rows_by_size(sizes):
    """``[(size, rows), ...]``: the rows of a batch grouped by image size, in first-seen order."""
    groups = {}
    for row, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(row)
    return [(size, np.asarray(rows)) for size, rows in groups.items()]


class _Results:
    """Per-image outputs filled batch by batch: preallocated arrays for uniform input, else lists."""

    def __init__(self, images, **wanted):
        self._uniform = images.uniform
        self._n = len(images)
        self._size = images.sizes[0]
        self._wanted = {name for name, on in wanted.items() if on}
        self._store = {}
        if "scores" in self._wanted:
            self._store["scores"] = np.empty(self._n)
        if "regions" in self._wanted:
            self._store["regions"] = [None] * self._n
        dtypes = {"maps": np.float32, "log_nfa": np.float32, "masks": bool}
        for name, dtype in dtypes.items():
            if name in self._wanted:
                # Filled in place: the peak memory is the output, not twice it.
                self._store[name] = np.empty((self._n, *self._size), dtype=dtype) if self._uniform else [None] * self._n

    def put_scores(self, start, values):
        self._store["scores"][start : start + len(values)] = values

    def put_pixels(self, index, **values):
        for name, value in values.items():
            if name in self._wanted and value is not None:
                self._store[name][index] = value

    def put_regions(self, index, found):
        self._store["regions"][index] = found

    def results(self):
        return dict(self._store)
