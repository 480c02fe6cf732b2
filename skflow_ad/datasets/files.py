"""Image files: reading them into arrays, alone or as the first step of a pipeline.

:func:`load_images` reads a list of files into one array and
:class:`ImageFileLoader` does the same inside a scikit-learn
:class:`~sklearn.pipeline.Pipeline`. The helpers that find, open and read
image files live here too, for the MVTec-AD reader, the command line and
:func:`~skflow_ad.score_partitions`.
"""

from __future__ import annotations

import os
from numbers import Integral
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval

from ._parameters import check_bool, check_image_size

__all__ = [
    "DEPTHS",
    "IMAGE_EXTENSIONS",
    "ImageFileLoader",
    "check_paths",
    "describe_size",
    "find_image_files",
    "image_file_size",
    "is_high_depth_mode",
    "is_image_file",
    "load_images",
    "open_image",
    "read_image",
    "stack_images",
    "to_depth",
    "widest_depth",
]

#: File name endings (any case) read as images.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_RESAMPLING = getattr(Image, "Resampling", Image)  # Pillow < 9.1 has the filters on Image

#: Pixel dtypes of the arrays read from files, narrowest first: 8-bit files give
#: uint8, 16-bit and 32-bit integer files uint16, 32-bit float files float32.
DEPTHS = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
_UINT16_MAX = np.iinfo(np.uint16).max


def describe_size(size):
    """``(H, W)`` as text for messages: ``"H x W (height x width)"``."""
    return f"{size[0]} x {size[1]} (height x width)"


def is_high_depth_mode(mode):
    """Whether Pillow holds the image with more than 8 bits per sample: one channel of I;16*, I or F."""
    return mode in ("I", "F") or mode.startswith("I;16")


def _high_depth_values(image, path):
    """A one-channel high-depth image as uint16 (integer modes) or float32 in [0, 1] (mode F)."""
    values = np.array(image)  # a writable copy: Pillow's buffer is read-only
    if image.mode == "F":
        values = values.astype(np.float32, copy=False)
        if not np.isfinite(values).all():
            raise ValueError(f"image file {path} holds NaN or infinity; images must be finite.")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"image file {path} holds floating-point values in [{low:.4g}, {high:.4g}]; floating-point "
                f"images must lie in [0, 1]. Rescale the file to [0, 1] (or save it as 8 or 16-bit integers)."
            )
        return values
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > _UINT16_MAX:
        raise ValueError(
            f"image file {path} holds 32-bit integer values in [{low}, {high}]; integer images are read on "
            f"the 16-bit scale 0-65535 (0 black, 65535 white). Save the file as 16-bit integers, or as "
            f"floating point in [0, 1]."
        )
    return values.astype(np.uint16)


def _resize_high_depth(values, target_size):
    """Bilinear resize (anti-aliased when shrinking) of uint16 or float32 ``(H, W)`` values, same dtype."""
    resized = Image.fromarray(values.astype(np.float32)).resize(
        (target_size[1], target_size[0]), resample=_RESAMPLING.BILINEAR
    )
    resized = np.asarray(resized)
    if values.dtype == np.uint16:
        return np.clip(np.rint(resized), 0, _UINT16_MAX).astype(np.uint16)
    return np.clip(resized, 0.0, 1.0)


def to_depth(images, dtype):
    """Pixel values converted to a wider dtype of :data:`DEPTHS`, black and white kept.

    uint8 images span 0-255, uint16 0-65535 and floating-point ones [0, 1]:
    uint8 to uint16 multiplies by 257 (exact), integers to float32 divide by
    the integer maximum.

    Parameters
    ----------
    images : ndarray of dtype uint8, uint16 or float32
    dtype : numpy dtype, at least as wide as ``images.dtype`` in :data:`DEPTHS`

    Returns
    -------
    converted : ndarray of dtype ``dtype``, shaped like ``images``
    """
    source, dtype = np.dtype(images.dtype), np.dtype(dtype)
    if DEPTHS.index(dtype) < DEPTHS.index(source):
        raise ValueError(f"to_depth converts to wider dtypes only; {source} does not fit in {dtype}.")
    if source == dtype:
        return images
    if dtype == np.float32:
        return images.astype(np.float32) / np.float32(np.iinfo(source).max)
    return images.astype(np.uint16) * np.uint16(257)


def widest_depth(dtypes):
    """The widest of ``dtypes`` in :data:`DEPTHS` order (uint8 < uint16 < float32)."""
    return max((np.dtype(dtype) for dtype in dtypes), key=DEPTHS.index)


def open_image(path):
    """Open and decode an image file, with errors that name the file."""
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} does not exist.") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not an image file.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image file {path}: {error}") from error
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        image.close()
        raise ValueError(f"cannot read image file {path}: {error}") from error
    return image


def _read_image(path, *, target_size, color):
    """Read one image (dtype by :data:`DEPTHS`), ``(H, W)`` or ``(H, W, 3)``; also return its native ``(H, W)``."""
    with open_image(path) as image:
        native_size = (image.height, image.width)
        resize = target_size is not None and target_size != native_size
        if is_high_depth_mode(image.mode):
            values = _high_depth_values(image, path)
            if resize:
                values = _resize_high_depth(values, target_size)
            return (np.repeat(values[..., None], 3, axis=-1) if color else values), native_size
        image = image.convert("RGB" if color else "L")
        if resize:
            image = image.resize((target_size[1], target_size[0]), resample=_RESAMPLING.BILINEAR)
        return np.array(image, dtype=np.uint8), native_size  # writable, unlike Pillow's buffer


def check_paths(paths):
    """A list of image paths as ``Path`` objects; ``TypeError`` / ``ValueError`` naming the problem."""
    if isinstance(paths, (str, bytes, PathLike)):
        raise TypeError(f"expected a list of image paths, got the single path {paths!r}; wrap it in a list.")
    if isinstance(paths, np.ndarray) and paths.ndim == 2 and paths.shape[1] == 1:
        # A one-column table of paths, as a ColumnTransformer passes it on.
        paths = paths[:, 0]
    try:
        paths = list(paths)
    except TypeError:
        raise TypeError(f"expected a list of image paths, got {type(paths).__name__}.") from None
    for index, path in enumerate(paths):
        if not isinstance(path, (str, PathLike)):
            raise TypeError(
                f"image paths must be str or os.PathLike; item {index} is {path!r} ({type(path).__name__})."
            )
    if not paths:
        raise ValueError("the list of image paths is empty.")
    return [Path(path) for path in paths]


def is_image_file(path):
    """Whether ``path`` is a file with an image extension (any case) that is not hidden."""
    path = Path(path)
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def find_image_files(folder, *, recursive=False, exclude=None):
    """Image files in ``folder`` (and its subfolders when ``recursive``), sorted by relative path.

    Hidden files and folders are skipped (see :func:`is_image_file`), and so
    is the folder ``exclude`` (compared resolved), so that results written
    inside the data are not read back as images.

    Returns
    -------
    paths : list of Path
    """
    folder = Path(folder)
    exclude = None if exclude is None else Path(exclude).resolve()
    found = []
    for directory, subfolders, files in os.walk(folder):
        directory = Path(directory)
        if recursive:
            subfolders[:] = [
                name for name in subfolders
                if not name.startswith(".") and (exclude is None or (directory / name).resolve() != exclude)
            ]
        else:
            subfolders[:] = []
        found += [directory / name for name in files if is_image_file(directory / name)]
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def image_file_size(path):
    """The ``(H, W)`` of an image file, from its header (the pixels are not decoded)."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} does not exist.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image file {path}: {error}") from error


def read_image(path, *, image_size=None, color=False):
    """Read one image file.

    Parameters
    ----------
    path : str or path-like
    image_size : int, (int, int) or None, default=None
        As in :func:`load_images`.
    color : bool, default=False
        As in :func:`load_images`.

    Returns
    -------
    image : ndarray of shape (H, W) or (H, W, 3)
        Of the dtype :func:`load_images` gives this file.
    """
    image, _ = _read_image(path, target_size=check_image_size(image_size, allow_none=True),
                           color=check_bool(color, "color"))
    return image


def _read_images(paths, *, target_size, color):
    """Read images into one array at the widest depth among them; without ``target_size`` they must share one size."""
    images = None
    reference = None
    for index, path in enumerate(paths):
        image, native_size = _read_image(path, target_size=target_size, color=color)
        if target_size is None:
            if reference is None:
                reference = (native_size, path)
            elif native_size != reference[0]:
                raise ValueError(
                    f"images differ in size: {path} is {describe_size(native_size)} but {reference[1]} is "
                    f"{describe_size(reference[0])}. Pass image_size=(height, width) (or an int for "
                    f"squares) to resize all images to one size."
                )
        if images is None:
            images = np.empty((len(paths), *image.shape), dtype=image.dtype)
        elif image.dtype != images.dtype:
            dtype = widest_depth([image.dtype, images.dtype])
            if dtype != images.dtype:  # rare: a deeper file after shallower ones
                images = to_depth(images, dtype)
            image = to_depth(image, dtype)
        images[index] = image
    return images


def stack_images(images):
    """Images as one array when they share a shape, else as a list; all at the widest depth among them.

    Parameters
    ----------
    images : sequence of ndarray
        ``(H, W)`` or ``(H, W, C)`` images as :func:`read_image` returns them.

    Returns
    -------
    stacked : ndarray of shape (n, H, W) or (n, H, W, C), or list of ndarray
        A list when the shapes differ, as the detectors accept images of several sizes.
    """
    dtype = widest_depth(image.dtype for image in images)
    images = [to_depth(image, dtype) for image in images]
    if len({image.shape for image in images}) == 1:
        return np.stack(images)
    return images


def load_images(paths, *, image_size=None, color=False):
    """Read image files into one array.

    Parameters
    ----------
    paths : sequence of str or path-like
        Image files in any format Pillow reads (PNG, JPEG, BMP, TIFF, ...).
        A 2-d array with a single column is read as its column.
    image_size : int, (int, int) or None, default=None
        None keeps the native size, which then must be the same for all
        images. An int resizes to squares, a pair to ``(height, width)``, with
        bilinear interpolation (anti-aliased when shrinking).
    color : bool, default=False
        False gives gray ``(n, H, W)`` images, True RGB ``(n, H, W, 3)``
        (alpha channels are dropped; gray files are repeated to three
        channels).

    Returns
    -------
    images : ndarray of shape (n, H, W) or (n, H, W, 3), dtype uint8, uint16 or float32
        The images in the order of ``paths``, at the depth of the files:
        8-bit files (and palette, bilevel, RGB, RGBA, CMYK, ... files, which
        Pillow decodes to 8 bits per channel) give ``uint8``; 16-bit gray
        files ``uint16`` with their values unchanged; 32-bit integer files
        ``uint16`` too, when their values lie in 0-65535; 32-bit float files
        ``float32``, whose values must lie in [0, 1]. Files of several depths
        give the widest one (``uint8 < uint16 < float32``), values rescaled
        so that black and white stay black and white. The detectors accept
        all three dtypes.

    Raises
    ------
    TypeError
        If ``paths`` is a single path or holds something that is not a path.
    ValueError
        If ``paths`` is empty, a file cannot be decoded as an image, a float
        file holds values outside [0, 1] (or NaN), a 32-bit integer file
        values outside 0-65535, or images differ in size while
        ``image_size`` is None.
    FileNotFoundError
        If a file does not exist.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skflow_ad.datasets import load_images
    >>> folder = tempfile.mkdtemp()
    >>> Image.fromarray(np.full((4, 6), 200, dtype=np.uint8)).save(os.path.join(folder, "a.png"))
    >>> Image.fromarray(np.full((4, 6), 0.5, dtype=np.float32)).save(os.path.join(folder, "b.tif"))
    >>> images = load_images([os.path.join(folder, "a.png"), os.path.join(folder, "b.tif")])
    >>> images.shape, images.dtype, images[:, 0, 0].astype(float).round(3).tolist()
    ((2, 4, 6), dtype('float32'), [0.784, 0.5])
    """
    paths = check_paths(paths)
    target_size = check_image_size(image_size, allow_none=True)
    color = check_bool(color, "color")
    return _read_images(paths, target_size=target_size, color=color)


class ImageFileLoader(TransformerMixin, BaseEstimator):
    """Read image files: the first step of a pipeline that starts from file paths.

    A stateless transformer: ``fit`` only checks the parameters, and
    ``transform`` maps a list of paths to an image array with
    :func:`load_images`, so that for instance
    ``Pipeline([("load", ImageFileLoader(image_size=64)), ("detect", detector)])``
    fits and predicts on lists of files.

    Parameters
    ----------
    image_size : int, (int, int) or None, default=None
        None keeps the native size (all images must then share it); an int
        resizes to squares, a pair to ``(height, width)``.
    color : bool, default=False
        False gives gray ``(n, H, W)`` images, True RGB ``(n, H, W, 3)``.

    See Also
    --------
    load_images : The function this transformer applies.

    Examples
    --------
    >>> from skflow_ad.datasets import ImageFileLoader
    >>> ImageFileLoader(image_size=(48, 64), color=True).fit()
    ImageFileLoader(color=True, image_size=(48, 64))

    Starting a pipeline from file paths; any estimator that takes image
    arrays can follow the loader (here a flattening step and an
    ``IsolationForest``, to keep the example fast; an
    :class:`~skflow_ad.UFlowDetector` takes the images themselves):

    >>> import os, tempfile
    >>> from PIL import Image
    >>> from sklearn.ensemble import IsolationForest
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import FunctionTransformer
    >>> from skflow_ad.datasets import make_surface_defects
    >>> X, y, _ = make_surface_defects(6, 2, image_size=32, random_state=0)
    >>> folder = tempfile.mkdtemp()
    >>> paths = [os.path.join(folder, f"{index}.png") for index in range(len(X))]
    >>> for path, image in zip(paths, X):
    ...     Image.fromarray(image).save(path)
    >>> pipeline = make_pipeline(
    ...     ImageFileLoader(image_size=16),
    ...     FunctionTransformer(lambda images: images.reshape(len(images), -1) / 255),
    ...     IsolationForest(random_state=0),
    ... )
    >>> pipeline.fit(paths[:6]).predict(paths).shape
    (8,)
    """

    _parameter_constraints = {
        "image_size": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
        "color": ["boolean"],
    }

    def __init__(self, image_size=None, color=False):
        self.image_size = image_size
        self.color = color

    def _check_parameters(self):
        self._validate_params()
        return check_image_size(self.image_size, allow_none=True)

    def fit(self, X=None, y=None):
        """Check the parameters; nothing is learned.

        Parameters
        ----------
        X : ignored
            Accepted for compatibility with :class:`~sklearn.pipeline.Pipeline`.
        y : ignored

        Returns
        -------
        self : ImageFileLoader
        """
        self._check_parameters()
        return self

    def transform(self, X):
        """Read the image files.

        Parameters
        ----------
        X : sequence of str or path-like, length n
            Image file paths.

        Returns
        -------
        images : ndarray of shape (n, H, W) or (n, H, W, 3)
            uint8, uint16 or float32 by the files' depth, as in :func:`load_images`.
        """
        target_size = self._check_parameters()
        paths = check_paths(X)
        return _read_images(paths, target_size=target_size, color=self.color)

    def __sklearn_is_fitted__(self):
        return True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []
        return tags
