"""Input checking for images: layouts, dtypes, ranges, and batched conversion to tensors.

Accepted image inputs (anything else raises ``ValueError`` or ``TypeError``):

- ``(n, H, W)`` gray images;
- ``(n, H, W, C)`` channels-last with ``C`` in {1, 3}; when the last axis is not
  1 or 3 but the second is, ``(n, C, H, W)`` channels-first (torch layout);
- a list of ``(H, W)`` or ``(H, W, C)`` arrays of different sizes (same ``C``).

``uint8`` images are read as 0-255, ``uint16`` as 0-65535, floating images must
lie in [0, 1]. Two-dimensional input ``(n_samples, n_features)`` is not an image
batch: the detectors model those feature vectors directly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

VECTORS = "vectors"
IMAGES = "images"

_INTEGER_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def input_kind(X):
    """``"images"`` for 3-d/4-d arrays and lists of 2-d/3-d arrays, else ``"vectors"``.

    Vectors (and anything malformed, such as 1-d arrays or sparse matrices) go
    through scikit-learn's own validation, which raises its usual errors.
    """
    if isinstance(X, (list, tuple)) and len(X) and all(isinstance(x, np.ndarray) and x.ndim in (2, 3) for x in X):
        return IMAGES
    ndim = getattr(X, "ndim", None)
    if ndim is None and isinstance(X, (list, tuple)):
        try:
            ndim = np.asarray(X).ndim
        except ValueError:  # ragged nested lists
            ndim = None
    return IMAGES if ndim is not None and ndim >= 3 else VECTORS


def _scale_of(dtype, name):
    if dtype in _INTEGER_SCALES:
        return _INTEGER_SCALES[dtype]
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise TypeError(
        f"{name} has dtype {dtype}; images must be uint8 (0-255), uint16 (0-65535) "
        f"or floating point in [0, 1]."
    )


def _check_values(array, name):
    if not np.issubdtype(array.dtype, np.floating):
        return
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinity.")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"floating-point images must lie in [0, 1]; {name} spans [{low:.4g}, {high:.4g}]. "
            f"Divide by 255 (or pass uint8 images)."
        )


def batch_layout(shape, dtype, name="X"):
    """Check an image batch by its shape and dtype alone (no values read).

    Returns ``((H, W), n_channels, channels_first)`` by the layout rule of the
    module doc; raises ``ValueError`` / ``TypeError`` as :func:`check_images`.
    """
    shape, dtype = tuple(shape), np.dtype(dtype)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"{name} has {len(shape)} dimensions (shape {shape}); images must be (n, H, W), "
            f"(n, H, W, C) or (n, C, H, W)."
        )
    if dtype == object:
        raise TypeError(f"{name} has dtype object; pass a numeric array or a list of arrays.")
    if shape[0] == 0:
        raise ValueError(f"{name} contains no images (0 samples).")
    if 0 in shape[1:]:
        raise ValueError(f"{name} has an empty image axis: shape {shape}.")
    _scale_of(dtype, name)
    if len(shape) == 3:
        return shape[1:3], 1, False
    if shape[-1] in (1, 3):
        return shape[1:3], shape[-1], False
    if shape[1] in (1, 3):
        return shape[2:4], shape[1], True
    raise ValueError(
        f"{name} has shape {shape}: 4-d images must be (n, H, W, C) or (n, C, H, W) "
        f"with C = 1 (gray) or 3 (RGB)."
    )


class ImageSet:
    """Validated images, converted to float tensors batch by batch.

    Attributes
    ----------
    sizes : list of (H, W)
        Each image's own size.
    n_channels : int
    uniform : bool
        Whether the input was one array (all images the same size).
    """

    def __init__(self, images, scale, n_channels, uniform):
        self._images = images
        self._scale = scale
        self.n_channels = n_channels
        self.uniform = uniform
        self.sizes = [tuple(img.shape[:2]) for img in images] if not uniform else [tuple(images.shape[1:3])] * len(images)

    def __len__(self):
        return len(self._images)

    def batches(self, batch_size, size, device):
        """Yield ``(start, images)``: float32 ``(b, C, h, w)`` in [0, 1] at ``size`` on ``device``."""
        for start in range(0, len(self), batch_size):
            chunk = self._images[start : start + batch_size]
            if self.uniform:
                yield start, self._convert(np.ascontiguousarray(chunk), size, device)
            else:
                yield start, torch.cat([self._convert(np.ascontiguousarray(img[None]), size, device) for img in chunk])

    def _convert(self, array, size, device):
        batch = torch.from_numpy(array).to(device)
        batch = batch.permute(0, 3, 1, 2).to(torch.float32) / self._scale
        if tuple(batch.shape[-2:]) != tuple(size):
            shrink = batch.shape[-2] > size[0] or batch.shape[-1] > size[1]
            batch = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)
        return batch


def check_images(X, name="X"):
    """Validate an image input and wrap it as an :class:`ImageSet`.

    Raises
    ------
    TypeError
        For unsupported dtypes (bool, signed integers, objects, complex).
    ValueError
        For empty input, wrong layouts or channel counts, NaN or out-of-range values.
    """
    if isinstance(X, (list, tuple)):
        images = []
        for i, img in enumerate(X):
            img = img if img.ndim == 3 else img[..., None]
            if img.shape[-1] not in (1, 3):
                raise ValueError(
                    f"{name}[{i}] has shape {img.shape}: list items must be (H, W) or (H, W, C) with C = 1 or 3."
                )
            images.append(img)
        channels = {img.shape[-1] for img in images}
        if len(channels) > 1:
            raise ValueError(f"the images in {name} have different channel counts {sorted(channels)}.")
        dtypes = {img.dtype for img in images}
        if len(dtypes) > 1:
            raise TypeError(f"the images in {name} have different dtypes {sorted(map(str, dtypes))}.")
        scale = _scale_of(images[0].dtype, name)
        for i, img in enumerate(images):
            if 0 in img.shape:
                raise ValueError(f"{name}[{i}] is empty (shape {img.shape}).")
            _check_values(img, f"{name}[{i}]")
        return ImageSet(images, scale, channels.pop(), uniform=False)

    array = np.asarray(X)
    _, n_channels, channels_first = batch_layout(array.shape, array.dtype, name)
    scale = _scale_of(array.dtype, name)
    array = array[..., None] if array.ndim == 3 else np.moveaxis(array, 1, -1) if channels_first else array
    _check_values(array, name)
    return ImageSet(array, scale, n_channels, uniform=True)
