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
between images. Torch tensors are accepted anywhere arrays are. Predicted
masks (``masks_pred``, e.g. from ``predict_mask``) follow the same rules.

An image is *anomalous* when its true mask has at least one anomalous
pixel and *normal* otherwise. Defect regions are the 8-connected components
of a mask, as defined once in :func:`skflow_ad.regions.label_regions`.
"""

from dataclasses import dataclass

import numbers

import numpy as np

from .conventions import LABEL_CONVENTIONS, anomalous_from_labels, as_image_list, check_mask, check_scores, to_numpy
from .regions import label_regions

__all__ = [
    "AUPIMOResult",
    "RegionScores",
    "aupimo",
    "aupro",
    "aupro_from_curve",
    "best_f1",
    "check_max_fpr",
    "check_n_thresholds",
    "dice",
    "image_auroc",
    "iou",
    "mean_dice",
    "mean_iou",
    "pixel_auroc",
    "pixel_best_f1",
    "pro_curve",
    "region_precision_recall",
]



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
    is_anomalous = anomalous_from_labels(y_true, "y_true")
    scores = check_scores(anomaly_scores, "anomaly_scores")
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
    n_thresholds = check_n_thresholds(n_thresholds)
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
    max_fpr = check_max_fpr(max_fpr)
    fpr, pro = pro_curve(masks_true, anomaly_maps, n_thresholds=n_thresholds)
    return aupro_from_curve(fpr, pro, max_fpr)


def check_max_fpr(max_fpr):
    """``max_fpr`` as a float in (0, 1]; ``ValueError`` otherwise."""
    if isinstance(max_fpr, (bool, np.bool_)) or not isinstance(max_fpr, numbers.Real) or not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be a number in (0, 1], got {max_fpr!r}.")
    return float(max_fpr)


def aupro_from_curve(fpr, pro, max_fpr=0.3):
    """AUPRO from a :func:`pro_curve`: the area up to ``max_fpr`` over ``max_fpr``, in [0, 1]."""
    max_fpr = check_max_fpr(max_fpr)
    return _partial_area(np.asarray(fpr), np.asarray(pro), max_fpr) / max_fpr


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
    is_anomalous = anomalous_from_labels(y_true, "y_true")
    scores = check_scores(anomaly_scores, "anomaly_scores")
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
# Binary masks


def iou(masks_true, masks_pred):
    """Intersection over union of the anomalous pixels, all images pooled.

    ``|T & P| / |T | P|`` where ``T`` and ``P`` are the true and predicted
    anomalous pixels of all images together (the Jaccard index of the
    anomalous class). Large defects weigh more than small ones; see
    :func:`mean_iou` for the per-image mean.

    Parameters
    ----------
    masks_true : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, True / nonzero = anomalous pixel.
    masks_pred : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Predicted masks (e.g. ``predict_mask``), same shapes.

    Returns
    -------
    float
        In [0, 1], from exact pixel counts.

    Raises
    ------
    ValueError
        When neither ``masks_true`` nor ``masks_pred`` has an anomalous pixel
        (the ratio is 0 / 0), besides invalid masks.
    """
    return _pooled_ratio(masks_true, masks_pred, _iou_terms, "IoU")


def mean_iou(masks_true, masks_pred, *, include_normal=False):
    """Mean over images of the per-image IoU, by default over anomalous images.

    Each image scores ``IoU_i = |T_i & P_i| / |T_i | P_i|``.

    - ``include_normal=False``: the mean over the anomalous images (true
      mask not empty), whose union is never empty. Normal images are left
      out, so false alarms on them do not count here: judge them with
      :func:`region_precision_recall` (false regions per normal image).
    - ``include_normal=True``: the mean over every image, a normal image
      scoring 1 when nothing is predicted in it and 0 otherwise. This is
      the protocol of the script that the U-Flow authors' repository gives
      to reproduce the paper's mIoU (mtailanian/uflow, ``src/evaluate.py``
      with ``src/miou.py``: ``(I + eps) / (U + eps)`` per image, averaged
      over all test images of a category, the good ones included).

    Parameters
    ----------
    masks_true : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, True / nonzero = anomalous pixel.
    masks_pred : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Predicted masks, same shapes.
    include_normal : bool, default=False
        Whether images without a true defect enter the mean (see above).

    Returns
    -------
    float
        In [0, 1].

    Raises
    ------
    ValueError
        With ``include_normal=False``, when no image of ``masks_true`` has
        an anomalous pixel; besides invalid masks.
    """
    return _mean_per_image(masks_true, masks_pred, include_normal, _iou_terms, "mean IoU")


def dice(masks_true, masks_pred):
    """Dice coefficient (pixel F1) of the anomalous pixels, all images pooled.

    ``2 |T & P| / (|T| + |P|)`` over the pixels of all images together;
    equal to ``2 IoU / (1 + IoU)`` of the same masks. See :func:`mean_dice`
    for the per-image mean.

    Parameters
    ----------
    masks_true : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, True / nonzero = anomalous pixel.
    masks_pred : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Predicted masks, same shapes.

    Returns
    -------
    float
        In [0, 1], from exact pixel counts.

    Raises
    ------
    ValueError
        When neither mask has an anomalous pixel (0 / 0), besides invalid
        masks.
    """
    return _pooled_ratio(masks_true, masks_pred, _dice_terms, "Dice coefficient")


def mean_dice(masks_true, masks_pred, *, include_normal=False):
    """Mean over images of the per-image Dice coefficient.

    Each image scores ``2 |T_i & P_i| / (|T_i| + |P_i|)``; the images
    averaged, and the score of a normal image with ``include_normal=True``
    (1 when nothing is predicted, else 0), are those of :func:`mean_iou`.

    Parameters
    ----------
    masks_true : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, True / nonzero = anomalous pixel.
    masks_pred : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Predicted masks, same shapes.
    include_normal : bool, default=False
        Whether images without a true defect enter the mean.

    Returns
    -------
    float
        In [0, 1].

    Raises
    ------
    ValueError
        With ``include_normal=False``, when no image of ``masks_true`` has
        an anomalous pixel; besides invalid masks.
    """
    return _mean_per_image(masks_true, masks_pred, include_normal, _dice_terms, "mean Dice")


@dataclass(frozen=True)
class RegionScores:
    """Region-level detection counts, from :func:`region_precision_recall`.

    Attributes
    ----------
    precision : float
        ``n_pred_correct / n_pred_regions``: the share of predicted regions
        that overlap a true region; NaN when no region is predicted.
    recall : float
        ``n_true_found / n_true_regions``: the share of true regions that a
        predicted region overlaps; NaN when there is no true region.
    n_true_regions : int
        True defect regions, all images.
    n_true_found : int
        True regions overlapped by at least one predicted region.
    n_pred_regions : int
        Predicted regions, all images.
    n_pred_correct : int
        Predicted regions overlapping at least one true region.
    n_false_regions : int
        ``n_pred_regions - n_pred_correct``, normal and anomalous images.
    n_normal_images : int
        Images whose true mask is empty.
    false_regions_per_normal_image : float
        Predicted regions on normal images (all of them false) divided by
        ``n_normal_images``; NaN when there is no normal image.
    """

    precision: float
    recall: float
    n_true_regions: int
    n_true_found: int
    n_pred_regions: int
    n_pred_correct: int
    n_false_regions: int
    n_normal_images: int
    false_regions_per_normal_image: float


def region_precision_recall(masks_true, masks_pred, *, min_overlap=1):
    """Precision and recall of defect regions rather than pixels.

    Regions are the 8-connected components of each mask
    (:func:`skflow_ad.regions.label_regions`). A predicted region is
    correct when it shares at least ``min_overlap`` pixels with one true
    region of its image; a true region is found when one predicted region
    shares at least ``min_overlap`` pixels with it. One predicted region
    may thus find several true regions, and several predicted regions may
    find the same one.

    Parameters
    ----------
    masks_true : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, True / nonzero = anomalous pixel. Normal images
        (empty masks) are allowed and needed for
        ``false_regions_per_normal_image``.
    masks_pred : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Predicted masks, same shapes.
    min_overlap : int, default=1
        Pixels a predicted and a true region must share to match; 1 means
        any overlap.

    Returns
    -------
    RegionScores
        Precision, recall and the counts behind them; a ratio whose
        denominator is 0 is NaN.
    """
    true, pred = _paired_masks(masks_true, masks_pred)
    if (
        isinstance(min_overlap, (bool, np.bool_))
        or not isinstance(min_overlap, (int, np.integer))
        or min_overlap < 1
    ):
        raise ValueError(f"min_overlap must be an integer >= 1 (pixels), got {min_overlap!r}.")
    n_true_regions = n_true_found = n_pred_regions = n_pred_correct = 0
    n_normal_images = n_regions_on_normal_images = 0
    for true_mask, pred_mask in zip(true, pred):
        true_labels, n_true = label_regions(true_mask)
        pred_labels, n_pred = label_regions(pred_mask)
        n_true_regions += n_true
        n_pred_regions += n_pred
        if n_true == 0:
            n_normal_images += 1
            n_regions_on_normal_images += n_pred
            continue
        # One code per (true region, predicted region) pair of each shared pixel.
        shared = (true_labels > 0) & (pred_labels > 0)
        pair_codes = true_labels[shared].astype(np.int64) * (n_pred + 1) + pred_labels[shared]
        codes, overlaps = np.unique(pair_codes, return_counts=True)
        matched = codes[overlaps >= min_overlap]
        n_true_found += np.unique(matched // (n_pred + 1)).size
        n_pred_correct += np.unique(matched % (n_pred + 1)).size
    return RegionScores(
        precision=n_pred_correct / n_pred_regions if n_pred_regions else float("nan"),
        recall=n_true_found / n_true_regions if n_true_regions else float("nan"),
        n_true_regions=n_true_regions,
        n_true_found=n_true_found,
        n_pred_regions=n_pred_regions,
        n_pred_correct=n_pred_correct,
        n_false_regions=n_pred_regions - n_pred_correct,
        n_normal_images=n_normal_images,
        false_regions_per_normal_image=(
            n_regions_on_normal_images / n_normal_images if n_normal_images else float("nan")
        ),
    )


# --------------------------------------------------------------------------
# AUPIMO


@dataclass(frozen=True, eq=False)
class AUPIMOResult:
    """AUPIMO scores, from :func:`aupimo`.

    Attributes
    ----------
    mean : float
        Mean of ``per_image`` over the anomalous images.
    per_image : numpy.ndarray of shape (n,)
        AUPIMO of each anomalous image, in [0, 1]; NaN for normal images.
    fpr_bounds : tuple of float
        The integration range ``(lower, upper)`` of the shared FPR.
    """

    mean: float
    per_image: np.ndarray
    fpr_bounds: tuple


def aupimo(masks_true, anomaly_maps, *, fpr_bounds=(1e-5, 1e-4)):
    r"""Area under the per-image overlap curve (AUPIMO, Bertoldo et al. 2024).

    AUPIMO ("AUPIMO: Redefining Visual Anomaly Detection Benchmarks with
    High Speed and Low Tolerance", arXiv:2401.01984; reported by anomalib)
    asks how much of each defect is found while normal images stay almost
    free of false positives. For an anomaly-map threshold ``t``:

    - the shared false positive rate is measured on the **normal images
      only**, as the mean over them of each image's fraction of pixels
      scoring ``>= t``:
      :math:`F(t) = \frac{1}{N}\sum_j |\{p \in j : s_p \ge t\}| / |j|`;
    - the per-image overlap of an anomalous image ``i`` is the fraction of
      its true anomalous pixels scoring ``>= t``, :math:`T_i(t)` (its normal
      pixels are not used at all).

    The PIMO curve of image ``i`` is :math:`T_i` against :math:`F` over all
    thresholds, and its AUPIMO is the area under it with a **logarithmic**
    FPR axis between the bounds ``L, U``, normalised by the width of that
    range, i.e. the image's mean recall over the log-spaced FPR band:

    .. math:: \mathrm{AUPIMO}_i = \frac{1}{\log(U / L)}
              \int_{\log L}^{\log U} T_i \, d(\log F).

    The curve is evaluated exactly: its vertices are at every distinct
    score of the normal images and consecutive vertices are joined by
    straight lines in ``(log F, T)``, which makes an anomalous pixel tied
    with a normal one count half, as in ROC curves; the curve is
    interpolated linearly in ``log F`` at the two bounds. (anomalib
    evaluates the same curve on a grid of 300 000 thresholds and integrates
    between the grid points whose FPR is nearest to the bounds.)

    Parameters
    ----------
    masks_true : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, True / nonzero = anomalous pixel. At least one
        normal image (empty mask) and one anomalous image are required.
    anomaly_maps : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Pixel anomaly scores, **higher = more anomalous**.
    fpr_bounds : tuple of two floats, default=(1e-5, 1e-4)
        ``(L, U)`` with ``0 < L < U <= 1``, the paper's default range. The
        normal images must resolve ``L``: the highest normal score alone
        must give a shared FPR ``<= L``, which needs at least ``1 / L``
        normal pixels (100 000 for the default, e.g. two 256 x 256 images).

    Returns
    -------
    AUPIMOResult
        ``per_image`` (NaN for normal images) and ``mean`` over the
        anomalous images; 1 for an image all of whose anomalous pixels
        score above every normal-image pixel in the FPR band, 0 for one
        none of whose pixels does.

    Raises
    ------
    ValueError
        For invalid ``fpr_bounds``; when there is no normal or no anomalous
        image; when the normal images cannot resolve the lower bound.
    """
    lower, upper = _checked_fpr_bounds(fpr_bounds)
    masks, maps = _paired_masks_and_maps(masks_true, anomaly_maps)
    n_anomalous_pixels = np.array([np.count_nonzero(mask) for mask in masks])
    is_anomalous_image = n_anomalous_pixels > 0
    if not is_anomalous_image.any():
        raise ValueError(
            "masks_true contains no anomalous image: AUPIMO scores the recall of "
            "images with at least one anomalous pixel."
        )
    if is_anomalous_image.all():
        raise ValueError(
            "masks_true contains no normal image (empty mask): AUPIMO measures its "
            "false positive rate on normal images only; add defect-free images."
        )
    normal_maps = [anomaly_map for anomaly_map, is_anomalous in zip(maps, is_anomalous_image) if not is_anomalous]
    thresholds, fpr = _shared_fpr_vertices(normal_maps, upper)
    if fpr[0] > lower:
        raise ValueError(
            f"the normal images cannot resolve fpr_bounds[0] = {lower:g}: their highest "
            f"score alone gives a shared false positive rate of {fpr[0]:.3g}. Add normal "
            "images (at least 1 / fpr_bounds[0] pixels in all) or raise fpr_bounds[0]."
        )
    # Segment k joins vertices k and k + 1; along it the threshold is
    # thresholds[k + 1]. Keep the segments that meet [lower, upper].
    start = int(np.searchsorted(fpr, lower, side="right")) - 1
    # stop is past the end only when upper = 1 and the FPR sums round just
    # below 1: the slices below then end at the last vertex, as they should.
    stop = int(np.searchsorted(fpr, upper, side="left"))
    log_fpr = np.log(fpr[start : stop + 1])
    segment_thresholds = thresholds[start + 1 : stop + 1]
    segment_low = np.maximum(log_fpr[:-1], np.log(lower))
    segment_high = np.minimum(log_fpr[1:], np.log(upper))
    width = segment_high - segment_low
    # On segment k the overlap rises linearly from T(> threshold) to
    # T(>= threshold); the trapezoid over its clipped part weighs the two
    # ends by (1 - c) and c, c the relative position of the part's middle.
    middle = ((segment_low + segment_high) / 2 - log_fpr[:-1]) / (log_fpr[1:] - log_fpr[:-1])
    weight_above = width * (1.0 - middle)
    weight_at_or_above = width * middle
    # A pixel of score s counts in T(> v) for the segments of threshold
    # v < s and in T(>= v) for those with v <= s: cumulative weights over
    # the thresholds in increasing order give its whole contribution.
    ascending = segment_thresholds[::-1]
    cumulative_above = np.concatenate([[0.0], np.cumsum(weight_above[::-1])])
    cumulative_at_or_above = np.concatenate([[0.0], np.cumsum(weight_at_or_above[::-1])])
    anomalous_indices = np.flatnonzero(is_anomalous_image)
    pixel_scores = np.concatenate([maps[index][masks[index]] for index in anomalous_indices])
    pixel_image = np.repeat(np.arange(anomalous_indices.size), n_anomalous_pixels[anomalous_indices])
    contributions = (
        cumulative_above[np.searchsorted(ascending, pixel_scores, side="left")]
        + cumulative_at_or_above[np.searchsorted(ascending, pixel_scores, side="right")]
    )
    areas = np.bincount(pixel_image, weights=contributions, minlength=anomalous_indices.size)
    per_image = np.full(len(masks), np.nan)
    # Clipped because the summed widths equal log(upper / lower) only up to rounding.
    per_image[anomalous_indices] = np.clip(
        areas / n_anomalous_pixels[anomalous_indices] / np.log(upper / lower), 0.0, 1.0
    )
    return AUPIMOResult(
        mean=float(per_image[anomalous_indices].mean()),
        per_image=per_image,
        fpr_bounds=(lower, upper),
    )


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


def _shared_fpr_vertices(normal_maps, upper):
    """Vertices of the shared FPR of normal images, up to the first one ``>= upper``.

    Parameters
    ----------
    normal_maps : list of numpy.ndarray
        Anomaly maps of the normal images.
    upper : float
        Largest FPR needed.

    Returns
    -------
    thresholds : numpy.ndarray of shape (k,)
        Decreasing distinct normal scores.
    fpr : numpy.ndarray of shape (k,)
        Increasing shared FPR at each threshold (mean over the normal
        images of the fraction of their pixels ``>= threshold``), exact up
        to the first vertex reaching ``upper``. One vertex reaches it, but
        for ``upper = 1`` when the full sum rounds just below 1.
    """
    n_images = len(normal_maps)
    kept_scores, kept_weights = [], []
    for anomaly_map in normal_maps:
        scores = anomaly_map.ravel()
        # Once more than upper * n_images * size of its pixels are at or
        # above a threshold, this image alone brings the shared FPR above
        # `upper`: lower thresholds are never needed, so only its top
        # pixels are sorted. Below the cut the summed FPR undercounts, but
        # it is already above `upper` at the cut, so those vertices come
        # after the first one reaching `upper` and are never used.
        n_kept = min(scores.size, int(upper * n_images * scores.size) + 1)
        if n_kept < scores.size:
            cut = np.partition(scores, scores.size - n_kept)[scores.size - n_kept]
            scores = scores[scores >= cut]
        kept_scores.append(scores)
        kept_weights.append(np.full(scores.size, 1.0 / (n_images * anomaly_map.size)))
    scores = np.concatenate(kept_scores)
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    cumulative_fpr = np.cumsum(np.concatenate(kept_weights)[order])
    run_ends = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
    run_ends = np.append(run_ends, sorted_scores.size - 1)
    thresholds = sorted_scores[run_ends]
    return thresholds, cumulative_fpr[run_ends]


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
        labels, n_image_regions = label_regions(mask)
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
# Mask overlaps


def _overlap_counts(masks_true, masks_pred):
    """Per-image pixel counts ``(intersection, true, predicted)``, int64 arrays of shape (n,)."""
    true, pred = _paired_masks(masks_true, masks_pred)
    intersection = np.array([np.count_nonzero(t & p) for t, p in zip(true, pred)], dtype=np.int64)
    n_true = np.array([np.count_nonzero(t) for t in true], dtype=np.int64)
    n_pred = np.array([np.count_nonzero(p) for p in pred], dtype=np.int64)
    return intersection, n_true, n_pred


def _iou_terms(intersection, n_true, n_pred):
    return intersection, n_true + n_pred - intersection


def _dice_terms(intersection, n_true, n_pred):
    return 2 * intersection, n_true + n_pred


def _pooled_ratio(masks_true, masks_pred, terms, name):
    numerator, denominator = terms(*(counts.sum() for counts in _overlap_counts(masks_true, masks_pred)))
    if denominator == 0:
        raise ValueError(
            f"masks_true and masks_pred contain no anomalous pixel: the {name} is 0 / 0. "
            "Judge defect-free images by their false alarms (region_precision_recall)."
        )
    return float(numerator / denominator)


def _mean_per_image(masks_true, masks_pred, include_normal, terms, name):
    if not isinstance(include_normal, (bool, np.bool_)):
        raise ValueError(f"include_normal must be True or False, got {include_normal!r}.")
    intersection, n_true, n_pred = _overlap_counts(masks_true, masks_pred)
    numerator, denominator = terms(intersection, n_true, n_pred)
    # 0 / 0 only on a normal image with nothing predicted: a perfect answer.
    per_image = np.ones(n_true.size)
    np.divide(numerator, denominator, out=per_image, where=denominator > 0)
    if include_normal:
        return float(per_image.mean())
    is_anomalous = n_true > 0
    if not is_anomalous.any():
        raise ValueError(
            f"masks_true contains no anomalous image: the {name} over anomalous images "
            "is undefined. Pass include_normal=True to score defect-free images (1 when "
            "nothing is predicted in them, else 0)."
        )
    return float(per_image[is_anomalous].mean())


# --------------------------------------------------------------------------
# Input validation


def _check_same_length(labels, scores, labels_name, scores_name):
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"{labels_name} and {scores_name} have different lengths: "
            f"{labels.shape[0]} and {scores.shape[0]}."
        )


def _paired_images(first, second, first_name, second_name):
    """Two lists of 2-d arrays with as many images, of matching shapes."""
    firsts = as_image_list(first, first_name)
    seconds = as_image_list(second, second_name)
    if len(firsts) != len(seconds):
        raise ValueError(
            f"{first_name} and {second_name} have different numbers of images: "
            f"{len(firsts)} and {len(seconds)}."
        )
    for index, (one, other) in enumerate(zip(firsts, seconds)):
        if one.shape != other.shape:
            raise ValueError(
                f"{first_name}[{index}] has shape {one.shape} but {second_name}[{index}] "
                f"has shape {other.shape}."
            )
    return firsts, seconds


def _paired_masks(masks_true, masks_pred):
    """Validated lists of true and predicted boolean masks of matching shapes."""
    true, pred = _paired_images(masks_true, masks_pred, "masks_true", "masks_pred")
    true = [check_mask(mask, f"masks_true[{index}]") for index, mask in enumerate(true)]
    pred = [check_mask(mask, f"masks_pred[{index}]") for index, mask in enumerate(pred)]
    return true, pred


def _paired_masks_and_maps(masks_true, anomaly_maps):
    """Validated lists of boolean masks and finite float maps of matching shapes."""
    masks, maps = _paired_images(masks_true, anomaly_maps, "masks_true", "anomaly_maps")
    masks = [check_mask(mask, f"masks_true[{index}]") for index, mask in enumerate(masks)]
    maps = [
        check_scores(anomaly_map, f"anomaly_maps[{index}]", expected_ndim=None)
        for index, anomaly_map in enumerate(maps)
    ]
    return masks, maps


def _check_both_pixel_classes(is_anomalous):
    if not is_anomalous.any():
        raise ValueError("masks_true contains no anomalous pixel: both classes are needed.")
    if is_anomalous.all():
        raise ValueError("masks_true contains no normal pixel: both classes are needed.")


def check_n_thresholds(n_thresholds):
    """``n_thresholds`` as None or an int >= 2; ``ValueError`` otherwise."""
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


def _checked_fpr_bounds(fpr_bounds):
    def is_number(value):
        return not isinstance(value, (bool, np.bool_)) and isinstance(
            value, (int, float, np.integer, np.floating)
        )

    if (
        not isinstance(fpr_bounds, (tuple, list))
        or len(fpr_bounds) != 2
        or not all(is_number(bound) for bound in fpr_bounds)
        or not 0.0 < fpr_bounds[0] < fpr_bounds[1] <= 1.0
    ):
        raise ValueError(
            "fpr_bounds must be two numbers (lower, upper) with 0 < lower < upper <= 1, "
            f"got {fpr_bounds!r}."
        )
    return float(fpr_bounds[0]), float(fpr_bounds[1])
