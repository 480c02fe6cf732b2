"""Defect regions: the connected anomalous areas of a binary mask.

An inspector decides on defects, not on pixels: how large each one is, where
it lies and how strong it is. This module turns one image's boolean mask
(True = anomalous pixel) and its anomaly map (higher = more anomalous) into
a list of :class:`Region` records, and those into rows for a CSV or JSON
file. It is pure numpy/scipy (no torch), so it runs on saved masks too.

Conventions
-----------
- A region is a connected component of the mask under **8-connectivity**:
  pixels touching by an edge or a corner belong to the same region, as in
  the MVTec AD evaluation. :func:`label_regions` is the one place that
  applies this rule; :mod:`skflow_ad.metrics` calls it too.
- Bounding boxes are ``(row0, col0, row1, col1)``, **half-open** like numpy
  slices: the region lies in ``mask[row0:row1, col0:col1]``, so
  ``row1 - row0`` is its height in pixels.
- Centroids are ``(row, col)`` in pixel coordinates (the mean of the
  region's row and column indices, unweighted by the map).
"""

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from scipy import ndimage

__all__ = [
    "RECORD_FIELDS",
    "Region",
    "find_regions",
    "label_regions",
    "regions_to_records",
    "remove_small_regions",
]

# 8-connectivity: diagonal neighbours belong to the same defect region, as in
# the MVTec AD evaluation.
_EIGHT_CONNECTIVITY = np.ones((3, 3), dtype=bool)

#: Keys of the rows made by :func:`regions_to_records`, in order (CSV header).
RECORD_FIELDS = (
    "image",
    "rank",
    "label",
    "area",
    "row0",
    "col0",
    "row1",
    "col1",
    "centroid_row",
    "centroid_col",
    "max_anomaly",
    "mean_anomaly",
    "log_nfa",
    "margin",
)


@dataclass(frozen=True)
class Region:
    """One connected anomalous region of an image.

    Attributes
    ----------
    label : int
        The region's value in ``label_regions(mask)[0]`` (1, 2, ... in
        raster order of the full mask), so ``labels == region.label``
        selects its pixels.
    area : int
        Number of pixels.
    bbox : tuple of int
        ``(row0, col0, row1, col1)``, half-open: the region lies in
        ``mask[row0:row1, col0:col1]``.
    centroid : tuple of float
        ``(row, col)``, mean of the region's pixel coordinates.
    max_anomaly : float
        Largest anomaly-map value over the region (higher = more anomalous).
    mean_anomaly : float
        Mean anomaly-map value over the region.
    log_nfa : float or None
        Smallest log10 NFA over the region (its most significant pixel;
        lower = more anomalous), when a log-NFA map was given.
    margin : float or None
        ``max_anomaly - threshold``, when a threshold was given: how far the
        region's peak clears the decision threshold.
    """

    label: int
    area: int
    bbox: tuple
    centroid: tuple
    max_anomaly: float
    mean_anomaly: float
    log_nfa: float = None
    margin: float = None

    def to_dict(self):
        """Flat dict of plain Python numbers (JSON- and CSV-ready).

        Returns
        -------
        dict
            Keys ``label, area, row0, col0, row1, col1, centroid_row,
            centroid_col, max_anomaly, mean_anomaly, log_nfa, margin``
            (``RECORD_FIELDS`` without ``image`` and ``rank``); ``log_nfa``
            and ``margin`` are None when not computed.
        """
        row0, col0, row1, col1 = self.bbox
        return {
            "label": self.label,
            "area": self.area,
            "row0": row0,
            "col0": col0,
            "row1": row1,
            "col1": col1,
            "centroid_row": self.centroid[0],
            "centroid_col": self.centroid[1],
            "max_anomaly": self.max_anomaly,
            "mean_anomaly": self.mean_anomaly,
            "log_nfa": self.log_nfa,
            "margin": self.margin,
        }


def label_regions(mask):
    """Label the 8-connected anomalous regions of one mask.

    Parameters
    ----------
    mask : numpy.ndarray of shape (H, W), bool
        True = anomalous pixel.

    Returns
    -------
    labels : numpy.ndarray of shape (H, W), int32
        0 on normal pixels, ``1..n_regions`` on the regions, numbered in
        raster order of their first pixel.
    n_regions : int
    """
    mask = _checked_bool_mask(mask, "mask")
    labels, n_regions = ndimage.label(mask, structure=_EIGHT_CONNECTIVITY)
    return labels, int(n_regions)


def remove_small_regions(mask, min_area):
    """Remove the regions of fewer than ``min_area`` pixels from a mask.

    Parameters
    ----------
    mask : numpy.ndarray of shape (H, W), bool
        True = anomalous pixel.
    min_area : int
        Smallest area kept, in pixels (``>= 1``; 1 keeps everything).

    Returns
    -------
    numpy.ndarray of shape (H, W), bool
        A new mask holding the regions of at least ``min_area`` pixels.
        ``find_regions(remove_small_regions(mask, a), ...)`` and
        ``find_regions(mask, ..., min_area=a)`` describe the same regions,
        in the same order; only their labels may differ, since labels
        number the regions of the mask given.
    """
    labels, n_regions = label_regions(mask)
    min_area = _checked_min_area(min_area)
    is_kept = np.bincount(labels.ravel(), minlength=n_regions + 1) >= min_area
    is_kept[0] = False
    return is_kept[labels]


def find_regions(mask, anomaly_map, *, log_nfa=None, threshold=None, min_area=1):
    """Describe the connected anomalous regions of one image.

    Parameters
    ----------
    mask : numpy.ndarray of shape (H, W), bool
        True = anomalous pixel (e.g. one image of ``predict_mask``).
    anomaly_map : array-like of shape (H, W)
        Real anomaly scores, higher = more anomalous, without NaN or
        infinity.
    log_nfa : array-like of shape (H, W), optional
        log10 Number of False Alarms per pixel (lower = more anomalous; no
        NaN). Each region then gets the minimum over its pixels.
    threshold : float, optional
        The anomaly-map threshold that made the mask. Each region then gets
        ``margin = max_anomaly - threshold``. Give ``log_nfa`` or
        ``threshold``, not both.
    min_area : int, default=1
        Regions of fewer pixels are left out of the list. The mask itself is
        not changed; :func:`remove_small_regions` removes them from it.

    Returns
    -------
    list of Region
        Most severe first: by increasing ``log_nfa`` when given, then by
        decreasing ``max_anomaly``, then by label. Empty when the mask has
        no region of ``min_area`` pixels or more.

    Raises
    ------
    TypeError
        If ``mask`` is not boolean.
    ValueError
        If an input is not 2-d, the shapes differ, a map holds NaN (or
        infinity, for ``anomaly_map``), both ``log_nfa`` and ``threshold``
        are given, or ``min_area`` is not an integer ``>= 1``.
    """
    mask = _checked_bool_mask(mask, "mask")
    anomaly_map = _checked_map(anomaly_map, "anomaly_map", mask.shape, allow_infinite=False)
    if log_nfa is not None and threshold is not None:
        raise ValueError(
            "pass log_nfa or threshold, not both: a region's significance is its "
            "log10 NFA for NFA masks and its margin above the threshold for "
            "threshold masks."
        )
    if log_nfa is not None:
        log_nfa = _checked_map(log_nfa, "log_nfa", mask.shape, allow_infinite=True)
    if threshold is not None:
        threshold = _checked_threshold(threshold)
    min_area = _checked_min_area(min_area)

    labels, n_regions = label_regions(mask)
    flat_labels = labels.ravel()
    areas = np.bincount(flat_labels, minlength=n_regions + 1)
    kept = np.flatnonzero(areas[1:] >= min_area) + 1
    if kept.size == 0:
        return []
    height, width = mask.shape
    row_sums = np.bincount(flat_labels, weights=np.repeat(np.arange(height, dtype=np.float64), width))
    col_sums = np.bincount(flat_labels, weights=np.tile(np.arange(width, dtype=np.float64), height))
    boxes = ndimage.find_objects(labels)
    max_values = np.asarray(ndimage.maximum(anomaly_map, labels, kept), dtype=np.float64)
    mean_values = np.asarray(ndimage.mean(anomaly_map, labels, kept), dtype=np.float64)
    if log_nfa is not None:
        log_nfas = np.asarray(ndimage.minimum(log_nfa, labels, kept), dtype=np.float64)
        order = np.lexsort((kept, -max_values, log_nfas))
    else:
        order = np.lexsort((kept, -max_values))

    regions = []
    for index in order:
        label = int(kept[index])
        rows, cols = boxes[label - 1]
        area = int(areas[label])
        regions.append(
            Region(
                label=label,
                area=area,
                bbox=(rows.start, cols.start, rows.stop, cols.stop),
                centroid=(float(row_sums[label] / area), float(col_sums[label] / area)),
                max_anomaly=float(max_values[index]),
                mean_anomaly=float(mean_values[index]),
                log_nfa=None if log_nfa is None else float(log_nfas[index]),
                margin=None if threshold is None else float(max_values[index] - threshold),
            )
        )
    return regions


def regions_to_records(regions_per_image, image_ids=None):
    """Flatten per-image region lists into rows for a CSV or JSON file.

    Parameters
    ----------
    regions_per_image : sequence of lists of Region
        One list per image, as returned by :func:`find_regions`.
    image_ids : sequence, optional
        One identifier per image (e.g. file names). Default: the image's
        index ``0, 1, ...``.

    Returns
    -------
    list of dict
        One row per region, keys ``RECORD_FIELDS``: ``image`` (its id),
        ``rank`` (1 = the image's most severe region, in the order of its
        list) and the fields of :meth:`Region.to_dict`. Images without a
        region give no row.
    """
    if isinstance(regions_per_image, Region) or not isinstance(regions_per_image, (list, tuple)):
        raise TypeError(
            "regions_per_image must be a list with one list of Region per image, "
            f"got {type(regions_per_image).__name__}."
        )
    if image_ids is None:
        image_ids = range(len(regions_per_image))
    else:
        image_ids = list(image_ids)
        if len(image_ids) != len(regions_per_image):
            raise ValueError(
                f"image_ids has {len(image_ids)} entries but regions_per_image has "
                f"{len(regions_per_image)} images: give one id per image."
            )
    records = []
    for image_index, (image_id, regions) in enumerate(zip(image_ids, regions_per_image)):
        if not isinstance(regions, (list, tuple)):
            raise TypeError(
                f"regions_per_image[{image_index}] must be a list of Region, got "
                f"{type(regions).__name__}."
            )
        for rank, region in enumerate(regions, start=1):
            if not isinstance(region, Region):
                raise TypeError(
                    f"regions_per_image[{image_index}][{rank - 1}] is a "
                    f"{type(region).__name__}, expected a Region (as returned by find_regions)."
                )
            records.append({"image": image_id, "rank": rank, **region.to_dict()})
    return records


# --------------------------------------------------------------------------
# Input validation


def _checked_bool_mask(mask, name):
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be 2-d of shape (H, W) (one image), got shape {mask.shape}.")
    if mask.dtype != np.bool_:
        raise TypeError(
            f"{name} must be a boolean array (True = anomalous pixel), got dtype "
            f"{mask.dtype}; convert it, e.g. mask > 0."
        )
    return mask


def _checked_map(values, name, shape, *, allow_infinite):
    values = np.asarray(values)
    if values.shape != shape:
        raise ValueError(f"{name} has shape {values.shape} but mask has shape {shape}.")
    if values.dtype == np.bool_ or not (
        np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
    ):
        raise ValueError(f"{name} must contain real numbers, got dtype {values.dtype}.")
    if np.issubdtype(values.dtype, np.floating):
        if np.isnan(values).any():
            raise ValueError(f"{name} contains NaN.")
        if not allow_infinite and np.isinf(values).any():
            raise ValueError(f"{name} contains infinite values.")
    return values


def _checked_threshold(threshold):
    if (
        isinstance(threshold, (bool, np.bool_))
        or not isinstance(threshold, Real)
        or not np.isfinite(threshold)
    ):
        raise ValueError(f"threshold must be a finite real number, got {threshold!r}.")
    return float(threshold)


def _checked_min_area(min_area):
    if isinstance(min_area, (bool, np.bool_)) or not isinstance(min_area, Integral) or min_area < 1:
        raise ValueError(f"min_area must be an integer >= 1 (pixels), got {min_area!r}.")
    return int(min_area)
