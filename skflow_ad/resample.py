"""Resampling without torch: images to the working size, per-pixel results to each input's size.

Two rules, each with one home:

- :func:`resize_image`: an input image to the network's working size,
  bilinear and anti-aliased when shrinking (Pillow's filter), in the image's
  own precision (``uint8`` stays ``uint8``, floats are resized as ``float32``).
- :func:`resize_maps`: per-pixel results (anomaly maps, log-NFA maps) from the
  working size to an image's size, bilinear with the half-pixel convention
  of ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.

Both serve the detectors and the exported-model runtime alike.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

__all__ = ["resize_image", "resize_maps"]

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
        resized = np.asarray(pil.resize((width, height), resample=_BILINEAR))
        return resized.reshape(height, width, image.shape[2])
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32), mode="F")
                   .resize((width, height), resample=_BILINEAR))
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=-1)


@functools.lru_cache(maxsize=128)
def _interpolation_matrix(n_in, n_out):
    """``(n_out, n_in)`` weights of 1-d linear interpolation, half-pixel centres, edges clamped."""
    position = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lower = np.minimum(np.floor(position).astype(int), n_in - 1)
    upper = np.minimum(lower + 1, n_in - 1)
    fraction = position - lower
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out), lower), 1.0 - fraction)
    np.add.at(matrix, (np.arange(n_out), upper), fraction)
    matrix.setflags(write=False)
    return matrix


def resize_maps(maps, size):
    """Bilinearly resize per-pixel maps ``(n, h, w)`` to ``(n, H, W)``.

    Same values as ``F.interpolate(maps[:, None], size, mode="bilinear",
    align_corners=False)`` (no anti-aliasing) up to float rounding; the two
    axes are interpolated separately, as matrix products.

    Parameters
    ----------
    maps : ndarray of shape (n, h, w)
    size : (int, int)
        ``(H, W)``.

    Returns
    -------
    ndarray of shape (n, H, W), float32
    """
    maps = np.asarray(maps)
    height, width = int(size[0]), int(size[1])
    if maps.shape[1:] == (height, width):
        return maps.astype(np.float32, copy=False)
    rows = _interpolation_matrix(maps.shape[1], height)
    cols = _interpolation_matrix(maps.shape[2], width)
    return np.einsum("ij,njk,lk->nil", rows, maps.astype(np.float64, copy=False), cols, optimize=True).astype(np.float32)
