"""TEMPORARY stand-in; replaced by the regions module of the metrics branch."""
import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)


def remove_small_regions(mask, min_area):
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0 or min_area <= 1:
        return mask
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    return keep[labels]


def find_regions(mask, anomaly_map, *, log_nfa=None, threshold=None, min_area=1):
    labels, n = ndimage.label(mask, structure=_EIGHT)
    return [dict(label=i) for i in range(1, n + 1)]
