"""Run a fitted detector over large image sets in parallel partitions with Dask.

:func:`score_partitions` cuts the images into partitions of
``partition_size`` images and returns a lazy :class:`dask.array.Array` whose
blocks are the detector's outputs on those partitions. Dask then runs the
partitions on whatever scheduler is active: threads of this process by
default, or the workers of a :class:`distributed.Client` (a local cluster or a
real one). The fitted detector is put in the task graph once and shared by
all partitions; image files are read by the tasks themselves, so only the
paths travel to the workers.

Dask is an optional dependency (``pip install "skflow-ad[dask]"``), imported
when :func:`score_partitions` is called. Tuning with
:class:`~sklearn.model_selection.GridSearchCV` on a Dask cluster needs no code
from this module: joblib's ``"dask"`` backend runs the search's fits there
(see the user guide, "Beyond one machine: Dask").
"""

from __future__ import annotations

import numbers
import os

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._validation import IMAGES, batch_layout, check_image_size
from .datasets.files import check_paths, describe_size, image_file_size, load_images, read_image, stack_images
from .extras import require

__all__ = ["score_partitions"]

#: Per-image methods and the dtype of their ``(n,)`` results.
_SCORE_METHODS = {
    "score_samples": np.dtype(np.float64),
    "decision_function": np.dtype(np.float64),
    "predict": np.dtype(int),
}
#: Per-pixel methods and the dtype of their ``(n, H, W)`` results.
_MAP_METHODS = {
    "anomaly_map": np.dtype(np.float32),
    "log_nfa_map": np.dtype(np.float32),
    "predict_mask": np.dtype(bool),
}


def _is_path(item):
    return isinstance(item, (str, os.PathLike))


def _is_path_sequence(images):
    if isinstance(images, np.ndarray):
        return images.dtype.kind in "OUS" and images.ndim == 1
    return isinstance(images, (list, tuple)) and all(_is_path(item) for item in images)


def _check_channels(estimator, n_channels):
    fitted = getattr(estimator, "n_channels_", None)
    if fitted is not None and n_channels != fitted:
        raise ValueError(
            f"images have {n_channels} channel(s) but {type(estimator).__name__} was fitted on images "
            f"with {fitted} channel(s)."
        )


def _native_size(path, method):
    """``(H, W)`` of the first image file, read here to shape the maps of all of them."""
    try:
        return image_file_size(path)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{method} of image files read at their native size needs the size of the first one, and "
            f"reading {path} failed here ({error}). Pass image_size=(height, width)."
        ) from error


def _apply(block, estimator, method):
    """``estimator.<method>`` of one partition of images."""
    return getattr(estimator, method)(block)


def _apply_to_files(paths, estimator, method, image_size, color, reference):
    """Read one partition of image files, then apply ``estimator.<method>``.

    ``reference`` is None or the ``((H, W), path)`` that every image must match,
    for maps of files read at their native size. Scores of files read at their
    native size take images of several sizes (a list of arrays).
    """
    if image_size is None and method in _SCORE_METHODS:
        images = stack_images([read_image(path, color=color) for path in paths])
        return getattr(estimator, method)(images)
    images = load_images(list(paths), image_size=image_size, color=color)
    if reference is not None and images.shape[1:3] != reference[0]:
        raise ValueError(
            f"images differ in size: {paths[0]} is {describe_size(images.shape[1:3])} but {reference[1]} is "
            f"{describe_size(reference[0])}, and the maps of all images form one array. Pass "
            f"image_size=(height, width) (or an int for squares) to read all images at one size."
        )
    return getattr(estimator, method)(images)


def score_partitions(estimator, images, method="score_samples", partition_size=64, image_size=None, color=None):
    """Apply a fitted detector to many images in parallel partitions with Dask.

    The images are split along their first axis into partitions of
    ``partition_size`` images, one Dask task each; the result is lazy: call
    ``.compute()`` (or store it) to run the tasks on the active Dask scheduler
    (threads of this process by default, the workers of a
    ``distributed.Client`` when one is active). Its values equal
    ``getattr(estimator, method)`` on all images at once.

    Parameters
    ----------
    estimator : fitted estimator
        Typically a fitted :class:`~skflow_ad.UFlowDetector` or
        :class:`~skflow_ad.CSFlowDetector` (fitted on images). It is placed in
        the task graph once, shared by all partitions: on a cluster each worker
        receives it once and unpickles it on the device the detector was
        fitted on when the worker has one, else on the CPU.
    images : ndarray, dask array, or sequence of str or path-like
        - an array of images ``(n, H, W)``, ``(n, H, W, C)`` or
          ``(n, C, H, W)`` with the layouts and dtypes ``fit`` accepts;
        - a :class:`dask.array.Array` of such images, for instance backed by
          zarr or HDF5 files: rechunked to ``partition_size`` images along
          the first axis and a single chunk along the others;
        - image file paths (as for :func:`~skflow_ad.load_images`): each task
          reads its own partition of files, so only the paths are sent to the
          workers, and the files must be readable there. Files of several
          sizes give one score each; their maps need ``image_size``.
    method : {"score_samples", "decision_function", "predict", "anomaly_map", \
"log_nfa_map", "predict_mask"}, default="score_samples"
        The detector method to apply. ``score_samples`` is higher for more
        normal images, ``predict`` is +1 (normal) or -1 (anomalous), maps are
        higher where a pixel is more anomalous (``log_nfa_map``: lower), and
        masks are True on anomalous pixels.
    partition_size : int, default=64
        Images per partition, that is per task. A task holds its partition's
        images and results in memory, while the network sees
        ``estimator.batch_size`` images at a time whatever the partition size.
    image_size : int, (int, int) or None, default=None
        Paths only: the size the files are read at, as in
        :func:`~skflow_ad.load_images`. None keeps each file's native size:
        the score methods then take files of any sizes, while the map methods
        read the first file's header here to learn the size of the maps, and
        a partition holding another size fails with a ``ValueError`` when
        computed (the maps of all images form one array).
    color : bool or None, default=None
        Paths only: read the files as RGB (True) or gray (False). None reads
        them with the channel count the detector was fitted on
        (``n_channels_``), gray when it has none.

    Returns
    -------
    result : dask.array.Array
        Lazy; of shape ``(n,)`` for ``score_samples`` and
        ``decision_function`` (float64) and ``predict`` (int), or ``(n, H,
        W)`` for ``anomaly_map`` and ``log_nfa_map`` (float32) and
        ``predict_mask`` (bool), with ``(H, W)`` the images' size (for paths,
        ``image_size`` or the files' native size). One chunk per partition
        along the first axis, ``ceil(n / partition_size)`` in all.

    Raises
    ------
    ValueError
        For an unknown ``method``, ``partition_size`` below 1, empty input,
        arrays that are not image batches, a channel count other than the
        detector's, or ``image_size`` / ``color`` given with arrays; at
        compute time for images the detector rejects (e.g. floats outside
        [0, 1]).
    TypeError
        For a single path, a sequence mixing paths and other things, an
        unsupported dtype, or an estimator without ``method``.
    sklearn.exceptions.NotFittedError
        If ``estimator`` is not fitted.
    ImportError
        If dask is not installed.

    Notes
    -----
    Each result holds its own copy of the detector in its graph. Each worker
    process runs PyTorch with its own threads: give worker processes one Dask
    thread each and keep workers times PyTorch threads within the cores.
    Dask starts worker processes with ``OMP_NUM_THREADS=1`` and
    ``MKL_NUM_THREADS=1``, so one PyTorch thread each; set both variables in
    the workers' environment for more. On GPU workers, fit the detector with
    ``device="cuda"`` (or ``"auto"`` on a GPU machine): it then unpickles
    onto each worker's GPU, whereas a detector fitted on the CPU runs on the
    CPU there too.

    Examples
    --------
    A detector fitted on small images, then applied to an image array and to
    image files, four images per task:

    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skflow_ad import UFlowDetector, make_surface_defects, score_partitions
    >>> X, y, _ = make_surface_defects(4, 2, image_size=32, random_state=0)
    >>> detector = UFlowDetector("resnet18", pretrained=False, image_size=32, max_epochs=1,
    ...                          random_state=0).fit(X[:4])
    >>> scores = score_partitions(detector, X, partition_size=4)
    >>> scores.chunks, np.allclose(scores.compute(), detector.score_samples(X))
    (((4, 2),), True)
    >>> folder = tempfile.mkdtemp()
    >>> paths = [os.path.join(folder, f"{index}.png") for index in range(len(X))]
    >>> for path, image in zip(paths, X):
    ...     Image.fromarray(image).save(path)
    >>> masks = score_partitions(detector, paths, "predict_mask", partition_size=4, image_size=16)
    >>> masks.shape, masks.dtype, masks.compute().shape
    ((6, 16, 16), dtype('bool'), (6, 16, 16))

    ``.compute()`` gathers the whole result in this process. Results larger
    than memory can be written by the tasks instead, one ``.npy`` file per
    partition with ``dask.array.to_npy_stack("masks/", masks)``, or to zarr
    with ``masks.to_zarr("masks.zarr")`` (needs the zarr package); on a
    cluster the folder must be on storage that the workers share.
    """
    dask = require("dask", "score_partitions", "dask")
    da = require("dask.array", "score_partitions", "dask")

    if method in _SCORE_METHODS:
        dtype = _SCORE_METHODS[method]
    elif method in _MAP_METHODS:
        dtype = _MAP_METHODS[method]
    else:
        known = ", ".join(repr(name) for name in (*_SCORE_METHODS, *_MAP_METHODS))
        raise ValueError(f"method must be one of {known}; got {method!r}.")
    if not callable(getattr(estimator, method, None)):
        raise TypeError(f"{type(estimator).__name__} has no method {method!r}.")
    check_is_fitted(estimator)
    if getattr(estimator, "input_kind_", IMAGES) != IMAGES:
        raise ValueError(
            f"score_partitions applies detectors to images; this {type(estimator).__name__} was fitted "
            f"on feature vectors."
        )
    if not isinstance(partition_size, numbers.Integral) or isinstance(partition_size, bool) or partition_size < 1:
        raise ValueError(f"partition_size must be a positive int; got {partition_size!r}.")
    partition_size = int(partition_size)
    maps = method in _MAP_METHODS

    if isinstance(images, (str, bytes, os.PathLike)) or _is_path_sequence(images):
        paths = [os.fspath(path) for path in check_paths(images)]
        target_size = check_image_size(image_size, allow_none=True)
        if color is None:
            color = getattr(estimator, "n_channels_", 1) == 3
        elif not isinstance(color, (bool, np.bool_)):
            raise TypeError(f"color must be True, False or None; got {color!r}.")
        _check_channels(estimator, 3 if color else 1)
        map_size, reference = target_size, None
        if maps and target_size is None:
            map_size = _native_size(paths[0], method)
            reference = (map_size, paths[0])
        # An object array of paths, partitioned like the images will be.
        partitions = da.from_array(np.array(paths, dtype=object), chunks=partition_size)
        function, extra = _apply_to_files, (target_size, bool(color), reference)
        drop_axis, new_axis = [], ([1, 2] if maps else [])
    else:
        if isinstance(images, (list, tuple)):
            kinds = sorted({type(item).__name__ for item in images if not _is_path(item)})
            raise TypeError(
                f"images must be an array of images, a dask array or a sequence of image file paths; "
                f"got a {type(images).__name__} holding {', '.join(kinds) or 'nothing'}."
            )
        if image_size is not None or color is not None:
            raise ValueError("image_size and color apply to image file paths only; leave them None for arrays.")
        if not isinstance(images, da.Array):
            images = np.asarray(images)
        map_size, n_channels, _ = batch_layout(images.shape, images.dtype, name="images")
        _check_channels(estimator, n_channels)
        chunks = (partition_size, *images.shape[1:])
        partitions = images.rechunk(chunks) if isinstance(images, da.Array) else da.from_array(images, chunks=chunks)
        function, extra = _apply, ()
        # Each image block gives a block of scores (all image axes dropped) or of maps (the channel axis dropped).
        drop_axis, new_axis = list(range(3 if maps else 1, images.ndim)), []

    # Not pure: tokenizing the detector would pickle it several times. One key, shared by all partitions.
    shared = dask.delayed(estimator, pure=False)
    if maps:
        out_chunks, meta = (partitions.chunks[0], (map_size[0],), (map_size[1],)), np.empty((0, 0, 0), dtype=dtype)
    else:
        out_chunks, meta = (partitions.chunks[0],), np.empty((0,), dtype=dtype)
    return da.map_blocks(
        function, partitions, shared, method, *extra, chunks=out_chunks, drop_axis=drop_axis,
        new_axis=new_axis, meta=meta, token=method,
    )

