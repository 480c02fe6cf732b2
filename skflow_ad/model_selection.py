"""Scorers and cross-validation splitters for tuning anomaly detectors.

The detectors learn from normal images only and are judged on normal and
anomalous ones, which scikit-learn's model selection tools do not know. This
module fills the two gaps:

- **splitters** (:class:`NormalOnlyKFold`, :class:`NormalOnlyShuffleSplit`)
  that train on normal samples only and test on held-out normal samples plus
  anomalous ones;
- **scorers** computing the :mod:`skflow_ad.metrics` of a fitted detector on
  a test fold, usable as ``scoring=`` of
  :class:`~sklearn.model_selection.GridSearchCV`,
  :func:`~sklearn.model_selection.cross_validate` and the like.

The target ``y``: labels or masks
---------------------------------
Everything here reads the ground truth from the ``y`` that scikit-learn
splits alongside ``X``, in one of two forms:

- **image labels** of shape ``(n,)``: ``{+1 normal, -1 anomalous}``,
  ``{0 normal, 1 anomalous}`` or booleans (True = anomalous), as in
  :mod:`skflow_ad.metrics`;
- **ground-truth masks** of shape ``(n, H, W)`` (or a list of ``(H_i, W_i)``
  arrays when image sizes differ), True / nonzero on anomalous pixels; an
  image is anomalous when its mask has at least one anomalous pixel.

Pixel-level scorers need masks, and scikit-learn hands a scorer only
``(estimator, X_test, y_test)``: passing the masks *as* ``y`` lets
scikit-learn cut them into folds together with the images, so the scorers
hold no dataset-bound state and work with any splitter. Image-level scorers
and the splitters accept either form, so one ``y = masks`` serves them all::

    search = GridSearchCV(
        UFlowDetector(),
        {"flow_steps": [2, 4]},
        scoring={"image_auroc": image_auroc_scorer, "aupro": aupro_scorer},
        refit=False,
        cv=NormalOnlyKFold(5, shuffle=True, random_state=0),
    )
    search.fit(X, masks)  # masks: all False for normal images
    results = search.cv_results_  # mean_test_image_auroc, mean_test_aupro, ...

The detectors ignore ``y`` in ``fit``. When some anomalous images have no
mask annotation, pass image labels as ``y`` and use the image-level scorers
only: with masks as ``y`` such images would count as normal.

Refitting
---------
The splitters keep anomalies out of the training folds, but ``refit`` of
:class:`~sklearn.model_selection.GridSearchCV` fits the best parameters on
*all* of ``X``, anomalies included (``fit`` ignores ``y``). Pass
``refit=False`` and fit the chosen parameters on the normal images yourself::

    search = GridSearchCV(UFlowDetector(), grid, scoring=aupro_scorer,
                          cv=NormalOnlyKFold(5), refit=False).fit(X, masks)
    is_normal = ~masks.any(axis=(1, 2))
    detector = UFlowDetector(**search.best_params_).fit(X[is_normal])

For a benchmark's fixed split (normal training images, then a labelled test
set), concatenate both and use
:class:`~sklearn.model_selection.PredefinedSplit` with ``test_fold`` -1 for
the training images and 0 for the test images: the scorers work there too.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.metrics import average_precision_score
from sklearn.model_selection import BaseCrossValidator, ShuffleSplit
from sklearn.utils import check_random_state

from . import metrics
from ._validation import check_bool
from .conventions import anomalous_from_labels, as_image_list, check_mask

__all__ = [
    "NormalOnlyKFold",
    "NormalOnlyShuffleSplit",
    "aupro_scorer",
    "get_scorer",
    "get_scorer_names",
    "image_auroc_scorer",
    "image_average_precision_scorer",
    "image_best_f1_scorer",
    "make_image_scorer",
    "make_pixel_scorer",
    "pixel_auroc_scorer",
    "pixel_best_f1_scorer",
]

_TARGET_FORMS = (
    "image labels of shape (n,) ({+1 normal, -1 anomalous}, {0 normal, 1 anomalous} "
    "or booleans with True = anomalous) or ground-truth masks of shape (n, H, W) "
    "(or a list of (H, W) arrays)"
)


# --------------------------------------------------------------------------
# The target y


def _is_mask_target(y):
    """Whether ``y`` holds per-image masks rather than per-image labels."""
    if isinstance(y, (list, tuple)):
        return len(y) > 0 and all(np.ndim(item) == 2 for item in y)
    return np.ndim(y) == 3


def _checked_masks(y, name):
    """List of boolean ``(H, W)`` masks from a mask target."""
    return [
        check_mask(mask, f"{name}[{index}]")
        for index, mask in enumerate(as_image_list(y, name))
    ]


def _anomalous_flags(y, name="y"):
    """Boolean ``(n,)`` array, True for anomalous images, from labels or masks.

    Both normal and anomalous images must be present.
    """
    if y is None:
        raise ValueError(
            f"{name} is None: the ground truth is needed, as {_TARGET_FORMS}."
        )
    if not _is_mask_target(y):
        if np.ndim(y) != 1:
            raise ValueError(
                f"{name} has shape {np.shape(y)}; expected {_TARGET_FORMS}."
            )
        return anomalous_from_labels(y, name)
    flags = np.array([mask.any() for mask in _checked_masks(y, name)], dtype=bool)
    if not flags.any():
        raise ValueError(
            f"{name} holds masks without any anomalous pixel, so every image is "
            "normal: both normal and anomalous images are needed."
        )
    if flags.all():
        raise ValueError(
            f"{name} holds masks with anomalous pixels in every image, so no image "
            "is normal: both normal and anomalous images are needed."
        )
    return flags


def _check_n_samples(X, n_targets, splitter_name):
    """Check that ``X``, when given, has as many samples as ``y``."""
    if X is not None and len(X) != n_targets:
        raise ValueError(
            f"{splitter_name}.split: X has {len(X)} samples but y has {n_targets}."
        )


def _split_flags(y, splitter_name):
    if y is None:
        raise ValueError(
            f"{splitter_name}.split needs y to tell normal from anomalous samples: "
            f"pass {_TARGET_FORMS}."
        )
    return _anomalous_flags(y, "y")


# --------------------------------------------------------------------------
# Splitters


class NormalOnlyKFold(BaseCrossValidator):
    """K-fold cross-validation that trains on normal samples only.

    The normal samples are split into ``n_splits`` consecutive folds, and so
    are the anomalous samples. Split ``k`` trains on the normal samples
    outside normal fold ``k`` and tests on normal fold ``k`` plus anomalous
    fold ``k``. Anomalous samples are therefore never trained on, the test
    sets are disjoint and together cover every sample once, and each test set
    holds both classes, as the image and pixel metrics require.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2. Both the normal and the anomalous
        samples must number at least ``n_splits``.
    shuffle : bool, default=False
        Whether to shuffle the normal and the anomalous samples (separately)
        before cutting them into folds.
    random_state : int, RandomState instance or None, default=None
        Seed of the shuffle; only allowed with ``shuffle=True``. An int gives
        the same folds at every call of ``split``.

    See Also
    --------
    NormalOnlyShuffleSplit : Repeated random normal train / test splits.

    Notes
    -----
    ``y`` (see :meth:`split`) may be image labels or ground-truth masks; see
    the module documentation. ``groups`` is ignored.

    Examples
    --------
    >>> import numpy as np
    >>> from skflow_ad.model_selection import NormalOnlyKFold
    >>> y = np.array([1, 1, 1, 1, -1, -1])
    >>> for train, test in NormalOnlyKFold(n_splits=2).split(np.zeros(6), y):
    ...     print(train, test)
    [2 3] [0 1 4]
    [0 1] [2 3 5]
    """

    def __init__(self, n_splits=5, *, shuffle=False, random_state=None):
        if isinstance(n_splits, (bool, np.bool_)) or not isinstance(n_splits, numbers.Integral):
            raise TypeError(f"n_splits must be an integer, got {n_splits!r}.")
        if n_splits < 2:
            raise ValueError(f"n_splits must be at least 2, got {n_splits}.")
        check_bool(shuffle, "shuffle")
        if not shuffle and random_state is not None:
            raise ValueError(
                "random_state has no effect since shuffle is False: leave it as None "
                "or set shuffle=True."
            )
        self.n_splits = int(n_splits)
        self.shuffle = bool(shuffle)
        self.random_state = random_state

    def split(self, X, y=None, groups=None):
        """Generate train / test indices.

        Parameters
        ----------
        X : array-like of shape (n, ...) or list of n images
            The samples; only their number is used. May be None.
        y : array-like of shape (n,) or (n, H, W), or list of n (H_i, W_i) masks
            Image labels or ground-truth masks (see the module documentation);
            required, None raises ``ValueError``.
        groups : None
            Ignored.

        Yields
        ------
        train : numpy.ndarray of shape (n_train,)
            Indices of the training samples, all normal, sorted.
        test : numpy.ndarray of shape (n_test,)
            Indices of the test samples, normal and anomalous, sorted.

        Raises
        ------
        ValueError
            If ``y`` is missing or malformed, lacks a class, or there are fewer
            normal or anomalous samples than ``n_splits``.
        """
        name = type(self).__name__
        is_anomalous = _split_flags(y, name)
        _check_n_samples(X, is_anomalous.size, name)
        normal = np.flatnonzero(~is_anomalous)
        anomalous = np.flatnonzero(is_anomalous)
        for kind, indices in (("normal", normal), ("anomalous", anomalous)):
            if indices.size < self.n_splits:
                raise ValueError(
                    f"{name}(n_splits={self.n_splits}) needs at least {self.n_splits} "
                    f"{kind} samples, one per test fold; y has {indices.size}."
                )
        if self.shuffle:
            rng = check_random_state(self.random_state)
            normal = rng.permutation(normal)
            anomalous = rng.permutation(anomalous)
        normal_folds = np.array_split(normal, self.n_splits)
        anomalous_folds = np.array_split(anomalous, self.n_splits)
        for fold in range(self.n_splits):
            train = np.concatenate(normal_folds[:fold] + normal_folds[fold + 1 :])
            test = np.concatenate([normal_folds[fold], anomalous_folds[fold]])
            yield np.sort(train), np.sort(test)

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits, ``n_splits``; the arguments are ignored.

        Returns
        -------
        int
        """
        return self.n_splits


class NormalOnlyShuffleSplit(BaseCrossValidator):
    """Random train / test splits that train on normal samples only.

    Each split shuffles the normal samples and holds out a share of them as
    in :class:`~sklearn.model_selection.ShuffleSplit`; the test set is the
    held-out normal samples plus **every** anomalous sample (they are never
    trained on, so all of them can test every split). Test sets of different
    splits overlap.

    Parameters
    ----------
    n_splits : int, default=10
        Number of re-shuffling and splitting iterations, at least 1.
    test_size : float, int or None, default=None
        Share (float in (0, 1)) or number (int) of the **normal** samples held
        out for testing. None means 0.1, or the complement of ``train_size``
        when that is set.
    train_size : float, int or None, default=None
        Share or number of the normal samples to train on; None means all the
        normal samples that are not held out.
    random_state : int, RandomState instance or None, default=None
        Seed of the shuffles. An int gives the same splits at every call of
        ``split``.

    See Also
    --------
    NormalOnlyKFold : Disjoint test folds covering every sample.

    Examples
    --------
    >>> import numpy as np
    >>> from skflow_ad.model_selection import NormalOnlyShuffleSplit
    >>> y = np.array([1, 1, 1, 1, -1, -1])
    >>> cv = NormalOnlyShuffleSplit(n_splits=3, test_size=1, random_state=0)
    >>> [len(test) for _, test in cv.split(None, y)]
    [3, 3, 3]
    """

    def __init__(self, n_splits=10, *, test_size=None, train_size=None, random_state=None):
        if isinstance(n_splits, (bool, np.bool_)) or not isinstance(n_splits, numbers.Integral):
            raise TypeError(f"n_splits must be an integer, got {n_splits!r}.")
        if n_splits < 1:
            raise ValueError(f"n_splits must be at least 1, got {n_splits}.")
        self.n_splits = int(n_splits)
        self.test_size = test_size
        self.train_size = train_size
        self.random_state = random_state

    def split(self, X, y=None, groups=None):
        """Generate train / test indices.

        Parameters
        ----------
        X : array-like of shape (n, ...) or list of n images
            The samples; only their number is used. May be None.
        y : array-like of shape (n,) or (n, H, W), or list of n (H_i, W_i) masks
            Image labels or ground-truth masks (see the module documentation);
            required, None raises ``ValueError``.
        groups : None
            Ignored.

        Yields
        ------
        train : numpy.ndarray of shape (n_train,)
            Indices of the training samples, all normal, sorted.
        test : numpy.ndarray of shape (n_test,)
            Indices of the held-out normal samples and of all anomalous
            samples, sorted.

        Raises
        ------
        ValueError
            If ``y`` is missing or malformed, lacks a class, or the sizes
            leave an empty train or test set of normal samples.
        """
        name = type(self).__name__
        is_anomalous = _split_flags(y, name)
        _check_n_samples(X, is_anomalous.size, name)
        normal = np.flatnonzero(~is_anomalous)
        anomalous = np.flatnonzero(is_anomalous)
        normal_splitter = ShuffleSplit(
            self.n_splits,
            test_size=self.test_size,
            train_size=self.train_size,
            random_state=self.random_state,
        )
        try:
            splits = list(normal_splitter.split(normal))
        except ValueError as error:
            raise ValueError(
                f"{name}: cannot split the {normal.size} normal samples with "
                f"test_size={self.test_size!r}, train_size={self.train_size!r}: {error}"
            ) from None
        for train, test in splits:
            yield np.sort(normal[train]), np.sort(np.concatenate([normal[test], anomalous]))

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits, ``n_splits``; the arguments are ignored.

        Returns
        -------
        int
        """
        return self.n_splits


# --------------------------------------------------------------------------
# Scorers


def _image_average_precision(is_anomalous, anomaly_scores):
    return float(average_precision_score(is_anomalous, anomaly_scores))


def _image_best_f1(is_anomalous, anomaly_scores):
    return metrics.best_f1(is_anomalous, anomaly_scores)[0]


def _pixel_best_f1(masks, anomaly_maps):
    return metrics.pixel_best_f1(masks, anomaly_maps)[0]


_IMAGE_METRICS = {
    "auroc": metrics.image_auroc,
    "average_precision": _image_average_precision,
    "best_f1": _image_best_f1,
}
_PIXEL_METRICS = {
    "auroc": metrics.pixel_auroc,
    "aupro": metrics.aupro,
    "best_f1": _pixel_best_f1,
}


def _required_method(estimator, method, scorer):
    function = getattr(estimator, method, None)
    if not callable(function):
        raise TypeError(
            f"{scorer!r} needs an estimator with a {method} method; "
            f"{type(estimator).__name__} has none."
        )
    return function


class _ImageScorer:
    """``scorer(estimator, X, y) -> float`` from ``-estimator.score_samples(X)``."""

    def __init__(self, metric):
        self.metric = metric

    def __call__(self, estimator, X, y=None):
        """Image-level metric of a fitted detector on ``X``.

        Parameters
        ----------
        estimator : fitted detector
            Must have ``score_samples`` (higher = more normal), as the
            skflow_ad detectors and scikit-learn outlier detectors do.
        X : images or array-like of shape (n, ...)
            Test samples, in any form the estimator accepts.
        y : array-like of shape (n,) or (n, H, W), or list of n (H_i, W_i) masks
            Image labels or ground-truth masks; both classes must be present.

        Returns
        -------
        float
            The metric, higher is better.
        """
        is_anomalous = _anomalous_flags(y, "y")
        score_samples = _required_method(estimator, "score_samples", self)
        anomaly_scores = -np.asarray(score_samples(X), dtype=np.float64)
        return float(_IMAGE_METRICS[self.metric](is_anomalous, anomaly_scores))

    def __repr__(self):
        return f"make_image_scorer(metric={self.metric!r})"


class _PixelScorer:
    """``scorer(estimator, X, masks) -> float`` from ``estimator.anomaly_map(X)``."""

    def __init__(self, metric, metric_params):
        self.metric = metric
        self.metric_params = metric_params

    def __call__(self, estimator, X, y=None):
        """Pixel-level metric of a fitted detector on ``X``.

        Parameters
        ----------
        estimator : fitted detector
            Must have ``anomaly_map`` returning maps at the resolution of the
            inputs (higher = more anomalous).
        X : images of shape (n, H, W[, C]) or list of n images
            Test images.
        y : array-like of shape (n, H, W) or list of n (H_i, W_i) arrays
            Ground-truth masks of the images in ``X``, True / nonzero on
            anomalous pixels; at least one anomalous and one normal pixel.

        Returns
        -------
        float
            The metric, higher is better.
        """
        if y is None or not _is_mask_target(y):
            shape = None if y is None else np.shape(y)
            raise ValueError(
                f"{self!r} needs ground-truth masks as y, of shape (n, H, W) or a "
                f"list of (H, W) arrays; got {'None' if y is None else f'shape {shape}'}. "
                "Pass the masks as y to fit / cross_validate (all False for normal "
                "images)."
            )
        anomaly_map = _required_method(estimator, "anomaly_map", self)
        return float(_PIXEL_METRICS[self.metric](y, anomaly_map(X), **self.metric_params))

    def __repr__(self):
        params = "".join(f", {key}={value!r}" for key, value in self.metric_params.items())
        return f"make_pixel_scorer(metric={self.metric!r}{params})"


def _checked_metric(metric, known, factory):
    if not isinstance(metric, str) or metric not in known:
        raise ValueError(
            f"{factory}: metric must be one of {sorted(known)}, got {metric!r}."
        )
    return metric


def make_image_scorer(metric="auroc"):
    """Scorer of an image-level metric, for ``scoring=`` in scikit-learn.

    The scorer is called as ``scorer(estimator, X, y)``: it negates
    ``estimator.score_samples(X)`` into anomaly scores and compares them with
    the image labels read from ``y``.

    Parameters
    ----------
    metric : {"auroc", "average_precision", "best_f1"}, default="auroc"
        :func:`skflow_ad.metrics.image_auroc`, scikit-learn's
        :func:`~sklearn.metrics.average_precision_score` with anomalous as
        the positive class, or the F1 score of
        :func:`skflow_ad.metrics.best_f1`.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float``, higher is better. ``y`` holds
        image labels of shape ``(n,)`` or ground-truth masks of shape
        ``(n, H, W)`` (an image is anomalous when its mask has an anomalous
        pixel); both classes must be present.

    Examples
    --------
    >>> from skflow_ad.model_selection import make_image_scorer
    >>> make_image_scorer("average_precision")
    make_image_scorer(metric='average_precision')
    """
    return _ImageScorer(_checked_metric(metric, _IMAGE_METRICS, "make_image_scorer"))


def make_pixel_scorer(metric="auroc", *, max_fpr=None, n_thresholds=None):
    """Scorer of a pixel-level metric, for ``scoring=`` in scikit-learn.

    The scorer is called as ``scorer(estimator, X, masks)``: it compares
    ``estimator.anomaly_map(X)`` with the ground-truth masks, which must
    therefore be passed as ``y`` to ``fit`` of
    :class:`~sklearn.model_selection.GridSearchCV` or to
    :func:`~sklearn.model_selection.cross_validate` (scikit-learn then cuts
    them into folds along with the images).

    Parameters
    ----------
    metric : {"auroc", "aupro", "best_f1"}, default="auroc"
        :func:`skflow_ad.metrics.pixel_auroc`, :func:`skflow_ad.metrics.aupro`
        or the F1 score of :func:`skflow_ad.metrics.pixel_best_f1`.
    max_fpr : float in (0, 1], default=None
        Integration limit of ``"aupro"`` (None: 0.3); only for ``"aupro"``.
    n_thresholds : int >= 2 or None, default=None
        Approximate ``"aupro"`` at that many thresholds (faster on large
        data); None computes it exactly. Only for ``"aupro"``.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float``, higher is better, with ``y`` the
        masks ``(n, H, W)`` (or a list of ``(H_i, W_i)`` arrays) of ``X``.

    Examples
    --------
    >>> from skflow_ad.model_selection import make_pixel_scorer
    >>> make_pixel_scorer("aupro", max_fpr=0.05)
    make_pixel_scorer(metric='aupro', max_fpr=0.05)
    """
    metric = _checked_metric(metric, _PIXEL_METRICS, "make_pixel_scorer")
    metric_params = {}
    if max_fpr is not None:
        metric_params["max_fpr"] = max_fpr
    if n_thresholds is not None:
        metric_params["n_thresholds"] = n_thresholds
    if metric_params and metric != "aupro":
        raise ValueError(
            f"make_pixel_scorer: {' and '.join(metric_params)} only apply to "
            f"metric='aupro', not {metric!r}."
        )
    if "max_fpr" in metric_params:
        metrics.check_max_fpr(metric_params["max_fpr"])
    if "n_thresholds" in metric_params:
        metrics.check_n_thresholds(metric_params["n_thresholds"])
    return _PixelScorer(metric, metric_params)


#: AUROC of ``-score_samples`` against the image labels (or masks) in ``y``.
image_auroc_scorer = make_image_scorer("auroc")
#: Average precision of ``-score_samples``, anomalous being the positive class.
image_average_precision_scorer = make_image_scorer("average_precision")
#: Best F1 over all thresholds of ``-score_samples``.
image_best_f1_scorer = make_image_scorer("best_f1")
#: Pixel AUROC of ``anomaly_map`` against the masks in ``y``.
pixel_auroc_scorer = make_pixel_scorer("auroc")
#: AUPRO (up to a false positive rate of 0.3) of ``anomaly_map`` against the masks in ``y``.
aupro_scorer = make_pixel_scorer("aupro")
#: Best pixel F1 over all thresholds of ``anomaly_map``.
pixel_best_f1_scorer = make_pixel_scorer("best_f1")

_SCORERS = {
    "image_auroc": image_auroc_scorer,
    "image_average_precision": image_average_precision_scorer,
    "image_best_f1": image_best_f1_scorer,
    "pixel_auroc": pixel_auroc_scorer,
    "aupro": aupro_scorer,
    "pixel_best_f1": pixel_best_f1_scorer,
}


def get_scorer_names():
    """Names accepted by :func:`get_scorer`.

    Returns
    -------
    list of str
        ``"image_auroc"``, ``"image_average_precision"``, ``"image_best_f1"``
        (need labels or masks as ``y``) and ``"pixel_auroc"``, ``"aupro"``,
        ``"pixel_best_f1"`` (need masks as ``y``), sorted.
    """
    return sorted(_SCORERS)


def get_scorer(scoring):
    """The ready-made scorer of that name.

    scikit-learn's ``scoring="..."`` strings only know its own scorers, so
    pass the returned object (or a dict of them) as ``scoring=``.

    Parameters
    ----------
    scoring : str
        One of :func:`get_scorer_names`.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float``.

    Examples
    --------
    >>> from skflow_ad.model_selection import get_scorer
    >>> scoring = {name: get_scorer(name) for name in ["image_auroc", "aupro"]}
    """
    if not isinstance(scoring, str):
        raise TypeError(f"scoring must be a str, got {type(scoring).__name__}.")
    if scoring not in _SCORERS:
        raise ValueError(
            f"Unknown scorer {scoring!r}; skflow_ad's scorers are {get_scorer_names()} "
            "(scikit-learn's own are in sklearn.metrics.get_scorer_names())."
        )
    return _SCORERS[scoring]
