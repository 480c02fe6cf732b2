"""Resampling without torch: images to the working size, per-pixel results to each input's size.

:func:`resize_image` brings an input image to the network's working size:
bilinear and anti-aliased when shrinking (Pillow's filter), in the image's own
precision (``uint8`` stays ``uint8``, other images are resized as ``float32``).
The detectors and the exported-model runtime both resize with it.

:func:`resize_maps` reproduces ``torch.nn.functional.interpolate(maps[:, None],
size, mode="bilinear", align_corners=False, antialias=False)``, so that maps
computed after the network (log-NFA maps, anomaly maps) are the same whether
torch is installed or not. Output pixel ``i`` of a side resized from ``s`` to
``S`` samples the input at position ``max((i + 0.5) * s / S - 0.5, 0)``,
interpolating linearly between the two nearest input pixels (the last one is
repeated at the far edge). Downsampling does not average (no antialiasing),
like torch's default. The interpolation is two matrix products with the
sparse-in-effect weight matrices of :func:`interpolation_matrix`.
"""

from __future__ import annotations

import functools
from numbers import Integral

import numpy as np
from PIL import Image

__all__ = ["as_map_size", "interpolation_matrix", "resize_image", "resize_maps"]

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


def resize_image(image, size):
    """Resize one image to ``size = (H, W)``.

    Parameters
    ----------
    image : ndarray of shape (h, w, C), uint8 or float32
        ``C`` in {1, 3}.
    size : (int, int)

    Returns
    -------
    ndarray of shape (H, W, C), same dtype
        ``image`` itself when it already has that size.
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    if image.dtype == np.uint8:
        mode = "L" if image.shape[2] == 1 else "RGB"
        pil = Image.fromarray(image[..., 0] if mode == "L" else image, mode=mode)
        return np.asarray(pil.resize((width, height), resample=_BILINEAR)).reshape(height, width, image.shape[2])
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32), mode="F")
                   .resize((width, height), resample=_BILINEAR))
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=-1)


def as_map_size(size, name="output_size"):
    """Return a map size as a ``(H, W)`` tuple of positive ints.

    Parameters
    ----------
    size : int or pair of int
        An int ``s`` means ``(s, s)``.
    name : str, default="output_size"
        Argument name used in the error message.

    Returns
    -------
    tuple of int
        ``(H, W)``.

    Raises
    ------
    ValueError
        If ``size`` is not a positive int or a pair of positive ints.
    """
    if isinstance(size, Integral) and not isinstance(size, bool):
        size = (size, size)
    try:
        height, width = size
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair (H, W) of ints, got {size!r}.") from None
    for side in (height, width):
        if isinstance(side, bool) or not isinstance(side, Integral) or side < 1:
            raise ValueError(f"{name} must contain positive integers, got {size!r}.")
    return int(height), int(width)


@functools.lru_cache(maxsize=128)
def interpolation_matrix(in_size, out_size):
    """``(out_size, in_size)`` matrix of the bilinear weights along one side (two per row), read-only.

    Output position ``i`` reads input position ``max((i + 0.5) * in_size / out_size - 0.5, 0)``
    between its two nearest input pixels (the last one repeated at the far edge).
    """
    position = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    position = np.maximum(position, 0.0)
    lower = np.minimum(np.floor(position).astype(np.intp), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    upper_weight = position - lower
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower), 1.0 - upper_weight)
    np.add.at(matrix, (rows, upper), upper_weight)
    matrix.flags.writeable = False
    return matrix


def resize_maps(maps, size):
    """Resize a batch of maps bilinearly (``align_corners=False``, no antialiasing).

    Parameters
    ----------
    maps : array-like of shape (n, h, w)
        Finite real-valued maps.
    size : int or (H, W)
        Output size; an int means ``(size, size)``.

    Returns
    -------
    resized : ndarray of shape (n, H, W), float32
        Equal, up to float32 rounding, to ``torch.nn.functional.interpolate(
        torch.as_tensor(maps)[:, None], size=(H, W), mode="bilinear",
        align_corners=False)[:, 0]``.

    Raises
    ------
    ValueError
        If ``maps`` is not 3-d with non-empty sides, not real-valued or not
        finite, or ``size`` is not a positive size.
    """
    height, width = as_map_size(size, "size")
    maps = np.asarray(maps)
    if maps.ndim != 3 or min(maps.shape[1:], default=0) == 0:
        raise ValueError(f"maps must have shape (n, h, w) with h, w >= 1; got shape {maps.shape}.")
    if not (np.issubdtype(maps.dtype, np.floating) or np.issubdtype(maps.dtype, np.integer)):
        raise ValueError(f"maps must be real numbers, got dtype {maps.dtype}.")
    n_maps, in_height, in_width = maps.shape
    if (in_height, in_width) == (height, width):
        return maps.astype(np.float32)  # torch: identity at equal size
    if n_maps == 0:
        return np.zeros((0, height, width), dtype=np.float32)
    if not np.isfinite(maps).all():
        raise ValueError("maps must be finite (no NaN or infinity) to be resized.")
    # float32 maps are resized in float32 (as torch does), others in float64.
    dtype = np.float32 if maps.dtype in (np.float16, np.float32) else np.float64
    # Separable, as two matrix products (BLAS): rows (n, H, w), then columns (n, H, W).
    stacked = maps.astype(dtype).transpose(1, 0, 2).reshape(in_height, n_maps * in_width)
    row_weights = interpolation_matrix(in_height, height).astype(dtype)
    rows = (row_weights @ stacked).reshape(height, n_maps, in_width)
    rows = rows.transpose(1, 0, 2).reshape(n_maps * height, in_width)
    out = rows @ interpolation_matrix(in_width, width).T.astype(dtype)
    return out.reshape(n_maps, height, width).astype(np.float32, copy=False)
