"""Input rules: image layouts, dtypes and ranges, feature vectors, and shared parameter checks.

Torch-free: the exported-model runtime (:mod:`skflow_ad.deploy`) applies the
same rules as the detectors.

Accepted image inputs (anything else raises ``ValueError`` or ``TypeError``
naming the problem and the fix):

- ``(n, H, W)`` gray images;
- ``(n, H, W, C)`` channels-last with ``C`` in {1, 3}; when the last axis is not
  1 or 3 but the second is, ``(n, C, H, W)`` channels-first (torch layout);
- a list of ``(H, W)`` or ``(H, W, C)`` arrays of different sizes (same ``C``);
- a list of image file paths (``str`` or ``os.PathLike``), read as
  :func:`skflow_ad.datasets.load_images` reads them, each at its own size;
- torch tensors of these layouts (moved to the CPU, detached) and
  non-native byte orders (converted).

``uint8`` images are read as 0-255, ``uint16`` as 0-65535, floating images must
lie in [0, 1]. Two-dimensional input ``(n_samples, n_features)`` is not an image
batch: the detectors model those feature vectors directly.

Images are resized to the working size one at a time (anti-aliased bilinear,
:func:`skflow_ad.resample.resize_image`) before they are batched, so a batch
costs its working-size array whatever the size of the input images.
"""

from __future__ import annotations

import numbers
import os

import numpy as np

from .conventions import is_tensor, to_numpy
from .resample import resize_image

VECTORS = "vectors"
IMAGES = "images"

_INTEGER_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


# --------------------------------------------------------------------------- parameters
def is_integer(value):
    """Whether ``value`` is an integer and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_bool(value, name):
    """``value`` as a bool; ``TypeError`` naming ``name`` unless it is True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_image_size(image_size, *, allow_none=False, minimum=1, name="image_size"):
    """``image_size`` as a ``(height, width)`` tuple of ints (None passes when allowed).

    An int means a square; a pair means ``(height, width)``. Bools are rejected.

    Raises
    ------
    TypeError
        When ``image_size`` is neither an int nor a pair of ints.
    ValueError
        When a side is below ``minimum``.
    """
    if image_size is None and allow_none:
        return None
    if is_integer(image_size):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(map(is_integer, image_size)):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        expected = "None, " if allow_none else ""
        raise TypeError(
            f"{name} must be {expected}an int (square images) or a (height, width) pair of ints, "
            f"got {image_size!r}."
        )
    if min(size) < minimum:
        raise ValueError(f"{name} must be at least {minimum} pixels on each side, got {image_size!r}.")
    return size


# --------------------------------------------------------------------------- conversions
def _as_numpy(value):
    """Arrays and tensors as native-order numpy arrays (:func:`conventions.to_numpy`); anything else as is."""
    return to_numpy(value) if isinstance(value, np.ndarray) or is_tensor(value) else value


def _is_path(value):
    return isinstance(value, (str, os.PathLike))


def _describe(X):
    module = type(X).__module__.split(".")[0]
    return f"{module}.{type(X).__name__}" if module not in ("builtins", "numpy") else type(X).__name__


def input_kind(X):
    """``"images"`` for image inputs (module doc), ``"vectors"`` for everything else.

    Vectors (and anything malformed, such as 1-d arrays or sparse matrices) go
    through scikit-learn's own validation, which raises its usual errors.
    """
    if isinstance(X, (list, tuple)) and len(X):
        if all(_is_path(x) for x in X):
            return IMAGES
        items = [_as_numpy(x) for x in X]
        if all(isinstance(x, np.ndarray) and x.ndim in (2, 3) for x in items):
            return IMAGES
    ndim = getattr(X, "ndim", None)
    if ndim is None and isinstance(X, (list, tuple)):
        try:
            ndim = np.asarray(X).ndim
        except ValueError:  # ragged nested lists
            ndim = None
    return IMAGES if ndim is not None and ndim >= 3 else VECTORS


def describe_kind_mismatch(X, fitted_kind, estimator_name):
    """The message for input of another kind than the detector was fitted on, with the fix."""
    if fitted_kind == VECTORS:
        return (
            f"{estimator_name} was fitted on feature vectors (n_samples, n_features); got images. "
            f"Pass a 2-d array with the features it was fitted on, or refit on images."
        )
    what = _describe(X)
    if hasattr(X, "toarray") or what.startswith("scipy."):
        hint = "sparse matrices are not images; pass a dense (n, H, W) or (n, H, W, C) array."
    elif what.startswith("pandas."):
        hint = "a DataFrame is a table, not images; pass a (n, H, W) or (n, H, W, C) array."
    elif getattr(X, "ndim", None) == 2 or np.ndim(X) == 2:
        hint = f"a 2-d array of shape {np.shape(X)} is read as feature vectors. For one image pass X[None]."
    else:
        hint = "pass an (n, H, W) or (n, H, W, C) array, a list of images or a list of image paths."
    return f"{estimator_name} was fitted on images; got {what} that is not an image batch: {hint}"


def reject_unsupported_containers(X, name="X"):
    """``TypeError`` for inputs that can only be read once or are not array-like at all."""
    if isinstance(X, (str, os.PathLike)):
        raise TypeError(
            f"{name} is a single path {X!r}; pass a list of image paths ([path]) or an image array."
        )
    if hasattr(X, "__next__") or (hasattr(X, "__iter__") and not hasattr(X, "__len__")
                                  and not hasattr(X, "shape")):
        raise TypeError(
            f"{name} is a {type(X).__name__} (an iterator or generator); pass a list or an array "
            f"(e.g. list({name}))."
        )


# --------------------------------------------------------------------------- images
def _scale_of(dtype, name):
    if dtype in _INTEGER_SCALES:
        return _INTEGER_SCALES[dtype]
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise TypeError(
        f"{name} has dtype {dtype}; images must be uint8 (0-255), uint16 (0-65535) "
        f"or floating point in [0, 1]."
    )


def check_image_values(array, name):
    """Raise ``ValueError`` for NaN, infinity or floats outside [0, 1]; integer arrays pass.

    Also ``TypeError`` for dtypes images cannot have (see :func:`image_scale`).
    """
    image_scale(array.dtype, name)
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


def image_scale(dtype, name="X"):
    """The value of full brightness for an image dtype: 255, 65535 or 1.0; ``TypeError`` otherwise."""
    return _scale_of(np.dtype(dtype), name)


def batch_layout(shape, dtype, name="X"):
    """Check an image batch by its shape and dtype alone (no values read).

    Returns ``((H, W), n_channels, channels_first)`` by the layout rule of the
    module doc; raises ``ValueError`` / ``TypeError`` as :func:`check_images`.
    """
    shape, dtype = tuple(shape), np.dtype(dtype)
    if len(shape) not in (3, 4):
        hint = " For one image pass X[None]." if len(shape) == 2 else ""
        raise ValueError(
            f"{name} has {len(shape)} dimensions (shape {shape}); images must be (n, H, W), "
            f"(n, H, W, C) or (n, C, H, W).{hint}"
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
    """Validated images, resized to a working size and batched on demand.

    Batches are numpy arrays ``(b, h, w, C)``: ``uint8`` for ``uint8`` input,
    else ``float32`` in [0, 1]. This is the input of the detectors' networks
    and of exported models.

    Attributes
    ----------
    sizes : list of (H, W)
        Each image's own size.
    n_channels : int
    uniform : bool
        Whether the input was one array (all images the same size); results
        then come back as one array, else as a list.
    """

    def __init__(self, images, scale, n_channels, uniform):
        self._images = images
        self._scale = scale
        self.n_channels = n_channels
        self.uniform = uniform
        self.sizes = [tuple(img.shape[:2]) for img in images] if not uniform else [tuple(images.shape[1:3])] * len(images)
        #: dtype of the batches: uint8 for uint8 input, else float32 in [0, 1].
        self.dtype = np.dtype(np.uint8) if images[0].dtype == np.uint8 else np.dtype(np.float32)

    def __len__(self):
        return len(self._images)

    def batches(self, batch_size, size):
        """Yield ``(start, batch)``: ``(b, h, w, C)`` arrays at ``size = (h, w)``, in order."""
        size = tuple(size)
        for start in range(0, len(self), batch_size):
            chunk = self._images[start : start + batch_size]
            if self.uniform and tuple(chunk.shape[1:3]) == size:
                yield start, self._as_batch_dtype(chunk)
                continue
            batch = np.empty((len(chunk), *size, self.n_channels), dtype=self.dtype)
            for row, image in enumerate(chunk):
                batch[row] = resize_image(self._as_batch_dtype(image), size)
            yield start, batch

    def _as_batch_dtype(self, array):
        if self.dtype == np.uint8:
            return np.ascontiguousarray(array)
        array = np.ascontiguousarray(array, dtype=np.float32)
        return array / np.float32(self._scale) if self._scale != 1.0 else array


def _read_paths(paths, color):
    from .datasets import load_images  # images on disk: the datasets' reading rules

    return [load_images([path], color=color)[0] for path in paths]


def check_fitted_images(X, n_channels, estimator_name, name="X"):
    """Validate images for a model fitted on ``n_channels``-channel images.

    The input rule of every fitted image model (the detectors and
    :class:`skflow_ad.deploy.ExportedDetector`): image input only, image paths
    read in the fitted colour mode, the fitted channel count.

    Parameters
    ----------
    X : image input (module doc)
    n_channels : {1, 3}
        The channel count the model was fitted on.
    estimator_name : str
        Named in the error messages.
    name : str
        The argument's name in the error messages.

    Returns
    -------
    ImageSet
    """
    reject_unsupported_containers(X, name)
    if input_kind(X) != IMAGES:
        raise ValueError(describe_kind_mismatch(X, IMAGES, estimator_name))
    images = check_images(X, name, color=n_channels == 3)
    if images.n_channels != n_channels:
        raise ValueError(
            f"{name} has {images.n_channels} channel(s) but {estimator_name} was fitted on images "
            f"with {n_channels} channel(s)."
        )
    return images


def check_images(X, name="X", *, color=False):
    """Validate an image input and wrap it as an :class:`ImageSet`.

    Parameters
    ----------
    X : image input (module doc)
    name : str
        How ``X`` is called in error messages.
    color : bool
        How a list of image paths is read: RGB (True) or gray (False).

    Raises
    ------
    TypeError
        For unsupported dtypes (bool, signed integers, objects, complex),
        iterators and single paths.
    ValueError
        For empty input, wrong layouts or channel counts, NaN or out-of-range values.
    """
    reject_unsupported_containers(X, name)
    if isinstance(X, (list, tuple)) and len(X) and all(_is_path(x) for x in X):
        X = _read_paths(X, color)
    if isinstance(X, (list, tuple)) and not len(X):
        raise ValueError(f"{name} is an empty list: pass at least one image.")
    if isinstance(X, (list, tuple)) and all(isinstance(_as_numpy(x), np.ndarray) for x in X):
        images = []
        for i, img in enumerate(X):
            img = _as_numpy(img)
            if img.ndim not in (2, 3):
                raise ValueError(
                    f"{name}[{i}] has shape {np.shape(img)}: list items must be (H, W) or (H, W, C) arrays."
                )
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
            raise TypeError(
                f"the images in {name} have different dtypes {sorted(map(str, dtypes))}; convert them to one."
            )
        scale = _scale_of(images[0].dtype, name)
        for i, img in enumerate(images):
            if 0 in img.shape:
                raise ValueError(f"{name}[{i}] is empty (shape {img.shape}).")
            check_image_values(img, f"{name}[{i}]")
        return ImageSet(images, scale, channels.pop(), uniform=False)

    array = _as_numpy(X)
    try:
        array = np.asarray(array)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{name} could not be read as an image array ({error}); pass a list of arrays.") from None
    _, n_channels, channels_first = batch_layout(array.shape, array.dtype, name)
    scale = _scale_of(array.dtype, name)
    array = array[..., None] if array.ndim == 3 else np.moveaxis(array, 1, -1) if channels_first else array
    check_image_values(array, name)
    return ImageSet(array, scale, n_channels, uniform=True)
