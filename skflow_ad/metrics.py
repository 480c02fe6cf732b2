"""Evaluation metrics for image- and pixel-level anomaly detection.

Score convention
----------------
Every metric here takes an **anomaly score: higher means more anomalous**,
like :func:`sklearn.metrics.roc_auc_score` with the anomalous class as the
positive class. The detectors' ``score_samples`` follows the scikit-learn
outlier-detection convention (higher means *more normal*), so pass its
negation: ``image_auroc(y, -detector.score_samples(X))``.

Label conventions
-----------------
Image labels ``y_true`` may use any of these conventions, recognised from
the set of values present:

- ``{+1, -1}``: +1 normal, -1 anomalous (the package convention, as the
  ``predict`` of scikit-learn outlier detectors);
- ``{0, 1}``: 0 normal, 1 anomalous;
- booleans: True anomalous.

Anything else (e.g. ``{1, 2}``), or a single class where both are needed,
raises ``ValueError``; labels are never silently inverted.

Pixel masks are boolean arrays, or numeric arrays with values in ``{0, 1}``
or ``{0, 255}`` (e.g. uint8 PNG masks); True / nonzero means anomalous
pixel. Masks and maps come either as arrays of shape ``(n, H, W)`` (or one
``(H, W)`` image) or as lists of ``(H, W)`` arrays whose sizes may differ
between images. Torch tensors are accepted anywhere arrays are.
"""

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "aupro",
    "best_f1",
    "image_auroc",
    "pixel_auroc",
    "pixel_best_f1",
    "pro_curve",
]

_LABEL_CONVENTIONS = (
    "{+1 normal, -1 anomalous}, {0 normal, 1 anomalous} or booleans "
    "(True = anomalous)"
)
# 8-connectivity: diagonal neighbours belong to the same defect region, as in
# the MVTec AD evaluation.
_EIGHT_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def image_auroc(y_true, anomaly_scores):
    """Area under the ROC curve of image-level anomaly detection.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Image labels in one of the accepted conventions (see the module
        docstring); both normal and anomalous images must be present.
    anomaly_scores : array-like of shape (n,)
        Anomaly scores, **higher = more anomalous** (e.g. the negated
        ``score_samples`` of a detector).

    Returns
    -------
    float
        AUROC in [0, 1]: 1 when every anomalous image scores above every
        normal one, 0.5 for chance, 0 for a perfectly inverted score. Ties
        count one half, as in :func:`sklearn.metrics.roc_auc_score`.
    """
    is_anomalous = _anomalous_from_labels(y_true, "y_true")
    scores = _checked_scores(anomaly_scores, "anomaly_scores")
    _check_same_length(is_anomalous, scores, "y_true", "anomaly_scores")
    return _auroc(is_anomalous, scores)


def pixel_auroc(masks_true, anomaly_maps):
    """Area under the ROC curve of anomaly segmentation, over all pixels.

    Parameters
    ----------
    masks_true : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, True / nonzero = anomalous pixel.
    anomaly_maps : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Pixel anomaly scores, **higher = more anomalous**, same shapes as
        ``masks_true``.

    Returns
    -------
    float
        AUROC over the pooled pixels of all images.
    """
    masks, maps = _paired_masks_and_maps(masks_true, anomaly_maps)
    is_anomalous = np.concatenate([mask.ravel() for mask in masks])
    scores = np.concatenate([anomaly_map.ravel() for anomaly_map in maps])
    _check_both_pixel_classes(is_anomalous)
    return _auroc(is_anomalous, scores)


def pro_curve(masks_true, anomaly_maps, *, n_thresholds=None):
    """Per-region overlap (PRO) against false positive rate.

    Ground-truth regions are the 8-connected components of each mask. At a
    threshold ``t``, the PRO is the mean over all regions (of all images) of
    the fraction of the region's pixels with score ``>= t``, and the false
    positive rate is the fraction of normal pixels with score ``>= t``.

    Parameters
    ----------
    masks_true : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, True / nonzero = anomalous pixel. At least one
        anomalous and one normal pixel are required.
    anomaly_maps : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Pixel anomaly scores, **higher = more anomalous**.
    n_thresholds : int or None, default=None
        None evaluates the curve exactly, at every distinct score. An int
        ``>= 2`` evaluates it at that many evenly spaced thresholds from the
        smallest to the largest score (as some benchmarks do); the area is
        then an approximation.

    Returns
    -------
    fpr : numpy.ndarray of shape (n_points,)
        Non-decreasing false positive rates, from 0 to 1.
    pro : numpy.ndarray of shape (n_points,)
        Matching per-region overlaps, from 0 to 1. The first point is
        ``(0, 0)`` (threshold above every score). In exact mode, points in
        the middle of horizontal segments (thresholds between two anomalous
        pixel scores) are omitted: they do not change the curve.
    """
    masks, maps = _paired_masks_and_maps(masks_true, anomaly_maps)
    n_thresholds = _checked_n_thresholds(n_thresholds)
    region_weights, is_anomalous, scores = _region_weights(masks, maps)
    if n_thresholds is None:
        fpr, pro = _exact_curve(scores, is_anomalous, region_weights)
    else:
        fpr, pro = _binned_curve(scores, is_anomalous, region_weights, n_thresholds)
    return fpr, pro


def aupro(masks_true, anomaly_maps, *, max_fpr=0.3, n_thresholds=None):
    """Normalised area under the PRO curve up to a false positive rate.

    The MVTec AD segmentation metric: the PRO curve (see :func:`pro_curve`)
    is integrated with the trapezoidal rule over ``fpr`` in
    ``[0, max_fpr]``, the curve being linearly interpolated at exactly
    ``max_fpr``, and the area is divided by ``max_fpr``. Unlike the pixel
    AUROC, each defect region weighs the same whatever its size.

    Parameters
    ----------
    masks_true : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, True / nonzero = anomalous pixel.
    anomaly_maps : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Pixel anomaly scores, **higher = more anomalous**.
    max_fpr : float, default=0.3
        Upper integration limit, in ``(0, 1]``.
    n_thresholds : int or None, default=None
        None for the exact curve, or a number of evenly spaced thresholds;
        see :func:`pro_curve`.

    Returns
    -------
    float
        AUPRO in [0, 1]; 1 for a map that scores every anomalous pixel above
        every normal pixel.
    """
    if (
        isinstance(max_fpr, (bool, np.bool_))
        or not isinstance(max_fpr, (int, float, np.integer, np.floating))
        or not 0.0 < max_fpr <= 1.0
    ):
        raise ValueError(f"max_fpr must be a number in (0, 1], got {max_fpr!r}.")
    fpr, pro = pro_curve(masks_true, anomaly_maps, n_thresholds=n_thresholds)
    return _partial_area(fpr, pro, float(max_fpr)) / max_fpr


def best_f1(y_true, anomaly_scores):
    """Best F1 score over all thresholds, anomalous being the positive class.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels in one of the accepted conventions (see the module
        docstring); both classes must be present.
    anomaly_scores : array-like of shape (n,)
        Anomaly scores, **higher = more anomalous**.

    Returns
    -------
    f1 : float
        The largest F1 score reachable by thresholding the scores.
    threshold : float
        The largest threshold reaching it: samples with
        ``anomaly_score >= threshold`` are predicted anomalous.
    """
    is_anomalous = _anomalous_from_labels(y_true, "y_true")
    scores = _checked_scores(anomaly_scores, "anomaly_scores")
    _check_same_length(is_anomalous, scores, "y_true", "anomaly_scores")
    return _best_f1(is_anomalous, scores)


def pixel_best_f1(masks_true, anomaly_maps):
    """Best pixel-level F1 score over all thresholds, pooling all pixels.

    Parameters
    ----------
    masks_true : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, True / nonzero = anomalous pixel.
    anomaly_maps : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Pixel anomaly scores, **higher = more anomalous**.

    Returns
    -------
    f1 : float
        The largest pixel F1 score reachable with a single threshold.
    threshold : float
        The largest threshold reaching it (``score >= threshold`` =>
        anomalous pixel).
    """
    masks, maps = _paired_masks_and_maps(masks_true, anomaly_maps)
    is_anomalous = np.concatenate([mask.ravel() for mask in masks])
    scores = np.concatenate([anomaly_map.ravel() for anomaly_map in maps])
    _check_both_pixel_classes(is_anomalous)
    return _best_f1(is_anomalous, scores)


# --------------------------------------------------------------------------
# Curves


def _exact_counts(scores, is_positive, positive_weights=None):
    """Class counts at the distinct scores of the positive samples.

    Between two consecutive distinct positive scores only negatives are
    added, so the ROC / PRO curve is a horizontal segment there: its
    vertices are, for each distinct positive score ``u``, the counts
    strictly above ``u`` and at or above ``u``. Sorting the negatives (a
    plain sort) and searching them at the positive scores is an order of
    magnitude faster than an argsort of all samples when the positives are
    few, as anomalous pixels usually are.

    Parameters
    ----------
    scores : numpy.ndarray of shape (m,)
        Finite scores.
    is_positive : numpy.ndarray of shape (m,)
        Boolean class of each sample; both classes present.
    positive_weights : numpy.ndarray of shape (n_positives,), optional
        Weight of each positive sample, in the order of ``scores[is_positive]``
        (1 if None).

    Returns
    -------
    thresholds : numpy.ndarray of shape (k,)
        Decreasing distinct scores of the positive samples.
    negatives_above : numpy.ndarray of shape (k,)
        Number of negatives with ``score > threshold``.
    negatives_at_or_above : numpy.ndarray of shape (k,)
        Number of negatives with ``score >= threshold``.
    positives_at_or_above : numpy.ndarray of shape (k,)
        Summed weight of the positives with ``score >= threshold``.
    """
    negative_scores = np.sort(scores[~is_positive])
    positive_scores = scores[is_positive]
    if positive_weights is None:
        positive_weights = np.ones(positive_scores.size)
    order = np.argsort(positive_scores)[::-1]
    sorted_positive_scores = positive_scores[order]
    cumulative_weights = np.cumsum(positive_weights[order], dtype=np.float64)
    # Last position of each run of equal scores: ties enter together.
    run_ends = np.flatnonzero(sorted_positive_scores[1:] != sorted_positive_scores[:-1])
    run_ends = np.append(run_ends, sorted_positive_scores.size - 1)
    thresholds = sorted_positive_scores[run_ends]
    n_negatives = negative_scores.size
    negatives_above = n_negatives - np.searchsorted(negative_scores, thresholds, side="right")
    negatives_at_or_above = n_negatives - np.searchsorted(
        negative_scores, thresholds, side="left"
    )
    return (
        thresholds,
        negatives_above.astype(np.float64),
        negatives_at_or_above.astype(np.float64),
        cumulative_weights[run_ends],
    )


def _exact_curve(scores, is_positive, positive_weights=None):
    """Vertices ``(negative_rate, positive_rate)`` of the exact curve, from (0, 0) to (1, 1).

    ``positive_rate`` is the weighted fraction of positives at or above the
    threshold (the TPR for unit weights, the PRO for region weights).
    """
    _, negatives_above, negatives_at_or_above, positives_at_or_above = _exact_counts(
        scores, is_positive, positive_weights
    )
    n_negatives = np.count_nonzero(~is_positive)
    positive_total = positives_at_or_above[-1]
    positives_before = np.concatenate([[0.0], positives_at_or_above[:-1]])
    negative_counts = np.concatenate(
        [[0.0], np.column_stack([negatives_above, negatives_at_or_above]).ravel(), [n_negatives]]
    )
    positive_counts = np.concatenate(
        [
            [0.0],
            np.column_stack([positives_before, positives_at_or_above]).ravel(),
            [positive_total],
        ]
    )
    negative_rate = negative_counts / n_negatives
    positive_rate = positive_counts / positive_total
    is_new_point = np.ones(negative_rate.size, dtype=bool)
    is_new_point[1:] = (np.diff(negative_rate) != 0) | (np.diff(positive_rate) != 0)
    return negative_rate[is_new_point], positive_rate[is_new_point]


def _binned_curve(scores, is_positive, positive_weights, n_thresholds):
    """Curve vertices at ``n_thresholds`` evenly spaced thresholds, from (0, 0) to (1, 1)."""
    negative_scores = np.sort(scores[~is_positive])
    thresholds = np.linspace(scores.min(), scores.max(), n_thresholds)
    negatives_at_or_above = negative_scores.size - np.searchsorted(
        negative_scores, thresholds, side="left"
    )
    # Index of the largest threshold each positive score reaches.
    reached = np.searchsorted(thresholds, scores[is_positive], side="right") - 1
    positives_per_threshold = np.bincount(
        reached, weights=positive_weights, minlength=n_thresholds
    )
    positives_at_or_above = np.cumsum(positives_per_threshold[::-1])
    negative_rate = np.concatenate(
        [[0.0], negatives_at_or_above[::-1] / negative_scores.size]
    )
    positive_rate = np.concatenate([[0.0], positives_at_or_above / positives_at_or_above[-1]])
    return negative_rate, positive_rate


def _auroc(is_positive, scores):
    fpr, tpr = _exact_curve(scores, is_positive)
    return float(_trapezoid(fpr, tpr))


def _best_f1(is_positive, scores):
    # For a given number of true positives F1 only drops with more false
    # positives, so the best threshold is one of the positive scores.
    thresholds, _, false_positives, true_positives = _exact_counts(scores, is_positive)
    # F1 = 2 TP / (2 TP + FP + FN) with TP + FN = number of positives.
    f1 = 2.0 * true_positives / (true_positives + false_positives + true_positives[-1])
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def _region_weights(masks, maps):
    """Per-pixel weights turning weighted counts into the mean region overlap.

    Returns
    -------
    region_weights : numpy.ndarray of shape (n_anomalous_pixels,)
        ``1 / (region size * number of regions)`` for each anomalous pixel,
        in the order of ``scores[is_anomalous]``.
    is_anomalous : numpy.ndarray of shape (total_pixels,)
        True for anomalous pixels, all images pooled.
    scores : numpy.ndarray of shape (total_pixels,)
        Pooled scores.
    """
    inverse_sizes = []
    n_regions = 0
    for mask in masks:
        labels, n_image_regions = ndimage.label(mask, structure=_EIGHT_CONNECTIVITY)
        region_sizes = np.bincount(labels.ravel(), minlength=n_image_regions + 1)
        inverse_size_of_label = np.zeros(n_image_regions + 1)
        inverse_size_of_label[1:] = 1.0 / region_sizes[1:]
        inverse_sizes.append(inverse_size_of_label[labels[mask]])
        n_regions += n_image_regions
    if n_regions == 0:
        raise ValueError(
            "masks_true contains no anomalous pixel: the per-region overlap needs "
            "at least one anomalous region."
        )
    is_anomalous = np.concatenate([mask.ravel() for mask in masks])
    if is_anomalous.all():
        raise ValueError(
            "masks_true contains no normal pixel: the false positive rate is undefined."
        )
    region_weights = np.concatenate(inverse_sizes) / n_regions
    scores = np.concatenate([anomaly_map.ravel() for anomaly_map in maps])
    return region_weights, is_anomalous, scores


def _trapezoid(x, y):
    return np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0)


def _partial_area(x, y, x_max):
    """Trapezoidal area under ``y(x)`` for ``x`` in ``[0, x_max]``.

    ``x`` is non-decreasing, starts at 0 and ends at or beyond ``x_max``;
    the curve is linearly interpolated at ``x_max``. Vertical steps (equal
    ``x``) are allowed and add no area.
    """
    n_kept = int(np.searchsorted(x, x_max, side="right"))
    x_kept, y_kept = x[:n_kept], y[:n_kept]
    if x_kept[-1] < x_max:
        x_next, y_next = x[n_kept], y[n_kept]
        fraction = (x_max - x_kept[-1]) / (x_next - x_kept[-1])
        y_at_max = y_kept[-1] + fraction * (y_next - y_kept[-1])
        x_kept = np.append(x_kept, x_max)
        y_kept = np.append(y_kept, y_at_max)
    return float(_trapezoid(x_kept, y_kept))


# --------------------------------------------------------------------------
# Input validation


def _to_numpy(values, name):
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.bfloat16, torch.float16):
            values = values.float()
        return values.numpy()
    try:
        return np.asarray(values)
    except ValueError as error:
        raise ValueError(f"{name} could not be converted to an array: {error}") from None


def _anomalous_from_labels(y_true, name):
    """Boolean ``(n,)`` array, True for anomalous, from any accepted labelling."""
    labels = _to_numpy(y_true, name)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-d of shape (n,), got shape {labels.shape}.")
    if labels.size == 0:
        raise ValueError(f"{name} is empty.")
    if labels.dtype == np.bool_:
        is_anomalous = labels
    elif np.issubdtype(labels.dtype, np.integer) or np.issubdtype(
        labels.dtype, np.floating
    ):
        values = set(np.unique(labels).tolist())
        if values == {-1, 1}:
            is_anomalous = labels == -1
        elif values == {0, 1}:
            is_anomalous = labels == 1
        elif len(values) == 1:
            raise ValueError(
                f"{name} contains a single label value {values.pop()!r}: both normal "
                f"and anomalous samples are needed (labels: {_LABEL_CONVENTIONS})."
            )
        else:
            raise ValueError(
                f"{name} has labels {sorted(values)}, which match no known "
                f"convention; expected {_LABEL_CONVENTIONS}."
            )
    else:
        raise ValueError(
            f"{name} has dtype {labels.dtype}; expected numeric labels "
            f"{_LABEL_CONVENTIONS}."
        )
    if is_anomalous.all() or not is_anomalous.any():
        kind = "anomalous" if is_anomalous.all() else "normal"
        raise ValueError(
            f"{name} contains only {kind} samples: both normal and anomalous samples "
            "are needed."
        )
    return is_anomalous


def _checked_scores(scores, name, expected_ndim=1):
    """Finite real scores as a float numpy array."""
    array = _to_numpy(scores, name)
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float64)
    elif not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must contain real numbers, got dtype {array.dtype}.")
    if expected_ndim is not None and array.ndim != expected_ndim:
        shape = "(n,)" if expected_ndim == 1 else "(H, W)"
        raise ValueError(
            f"{name} must be {expected_ndim}-d of shape {shape}, got shape {array.shape}."
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty.")
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN.")
    if np.isinf(array).any():
        raise ValueError(f"{name} contains infinite values.")
    return array


def _check_same_length(labels, scores, labels_name, scores_name):
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"{labels_name} and {scores_name} have different lengths: "
            f"{labels.shape[0]} and {scores.shape[0]}."
        )


def _checked_mask(mask, name):
    """Boolean ``(H, W)`` mask from a bool, {0, 1} or {0, 255} array."""
    if mask.dtype == np.bool_:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise ValueError(f"{name} must be boolean or numeric, got dtype {mask.dtype}.")
    is_anomalous = mask != 0
    anomalous_values = mask[is_anomalous]
    if anomalous_values.size and not (
        (anomalous_values == 1).all() or (anomalous_values == 255).all()
    ):
        found = np.unique(mask).tolist()
        shown = found if len(found) <= 6 else found[:6] + ["..."]
        raise ValueError(
            f"{name} has values {shown}; masks must be boolean, {{0, 1}} or "
            "{0, 255} with nonzero = anomalous pixel."
        )
    return is_anomalous


def _as_image_list(images, name):
    """List of 2-d numpy arrays from an ``(n, H, W)`` / ``(H, W)`` array or a list."""
    if isinstance(images, (list, tuple)):
        arrays = [_to_numpy(image, f"{name}[{index}]") for index, image in enumerate(images)]
        for index, array in enumerate(arrays):
            if array.ndim != 2:
                raise ValueError(
                    f"{name}[{index}] must be 2-d (H, W), got shape {array.shape}."
                )
    else:
        array = _to_numpy(images, name)
        if array.ndim == 2:
            arrays = [array]
        elif array.ndim == 3:
            arrays = list(array)
        else:
            raise ValueError(
                f"{name} must have shape (n, H, W) or (H, W), or be a list of (H, W) "
                f"arrays; got shape {array.shape}."
            )
    if len(arrays) == 0 or all(array.size == 0 for array in arrays):
        raise ValueError(f"{name} is empty.")
    return arrays


def _paired_masks_and_maps(masks_true, anomaly_maps):
    """Validated lists of boolean masks and finite float maps of matching shapes."""
    masks = _as_image_list(masks_true, "masks_true")
    maps = _as_image_list(anomaly_maps, "anomaly_maps")
    if len(masks) != len(maps):
        raise ValueError(
            f"masks_true and anomaly_maps have different numbers of images: "
            f"{len(masks)} and {len(maps)}."
        )
    for index, (mask, anomaly_map) in enumerate(zip(masks, maps)):
        if mask.shape != anomaly_map.shape:
            raise ValueError(
                f"masks_true[{index}] has shape {mask.shape} but anomaly_maps[{index}] "
                f"has shape {anomaly_map.shape}."
            )
    masks = [_checked_mask(mask, f"masks_true[{index}]") for index, mask in enumerate(masks)]
    maps = [
        _checked_scores(anomaly_map, f"anomaly_maps[{index}]", expected_ndim=None)
        for index, anomaly_map in enumerate(maps)
    ]
    return masks, maps


def _check_both_pixel_classes(is_anomalous):
    if not is_anomalous.any():
        raise ValueError("masks_true contains no anomalous pixel: both classes are needed.")
    if is_anomalous.all():
        raise ValueError("masks_true contains no normal pixel: both classes are needed.")


def _checked_n_thresholds(n_thresholds):
    if n_thresholds is None:
        return None
    if (
        isinstance(n_thresholds, (bool, np.bool_))
        or not isinstance(n_thresholds, (int, np.integer))
        or n_thresholds < 2
    ):
        raise ValueError(
            f"n_thresholds must be None or an integer >= 2, got {n_thresholds!r}."
        )
    return int(n_thresholds)
