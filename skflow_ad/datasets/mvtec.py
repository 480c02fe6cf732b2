"""MVTec-AD folders: the folder walk, the ground-truth masks and the loader.

The layout of one category::

    root/
        train/good/            normal training images
        test/good/             normal test images
        test/<defect type>/    anomalous test images, one folder per defect type
        ground_truth/<defect type>/<image name>_mask.png

:func:`find_mvtec_files` walks it without reading any pixels (the command line
scores the files it finds batch by batch); :func:`load_mvtec_folder` reads
them all into arrays.
"""

from __future__ import annotations

import warnings
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.utils import Bunch

from ._parameters import check_bool, check_image_size
from .files import (
    IMAGE_EXTENSIONS, describe_size, find_image_files, image_file_size, is_high_depth_mode, load_images, open_image,
)

__all__ = ["find_mask", "find_mvtec_files", "is_mvtec_root", "load_mvtec_folder", "read_mask"]

_MVTEC_LAYOUT = (
    "expected the MVTec-AD layout: <root>/train/good/*.png, <root>/test/good/*.png, "
    "<root>/test/<defect type>/*.png and <root>/ground_truth/<defect type>/<name>_mask.png"
)
_SPLITS = ("all", "train", "test")
_RESAMPLING = getattr(Image, "Resampling", Image)  # Pillow < 9.1 has the filters on Image


def is_mvtec_root(path):
    """Whether ``path`` looks like an MVTec-AD category.

    That is a folder with a ``test/`` holding at least one (non-hidden)
    subfolder, next to ``train/`` or ``ground_truth/``.
    """
    path = Path(path)
    test = path / "test"
    if not test.is_dir() or not ((path / "train").is_dir() or (path / "ground_truth").is_dir()):
        return False
    return any(child.is_dir() and not child.name.startswith(".") for child in test.iterdir())


def find_mask(ground_truth, defect_type, image_path):
    """The mask file of a defect image, or None.

    Looks in ``ground_truth/<defect_type>/`` for ``<stem>_mask.<ext>``, then
    ``<stem>.<ext>``, with ``<ext>`` any of :data:`IMAGE_EXTENSIONS` (``.png``
    first) in lower or upper case.
    """
    folder = Path(ground_truth) / defect_type
    if not folder.is_dir():
        return None
    stem = Path(image_path).stem
    for name in (f"{stem}_mask", stem):
        for extension in (".png", *IMAGE_EXTENSIONS):
            for candidate in (folder / f"{name}{extension}", folder / f"{name}{extension.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def _check_root(root):
    if not isinstance(root, (str, PathLike)):
        raise TypeError(f"root must be a str or path-like, got {type(root).__name__}.")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist or is not a folder.")
    return root


def _no_images(where):
    return ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {where}.")


def find_mvtec_files(root, *, split="all", exclude=None):
    """The files of an MVTec-AD category, found without reading any pixels.

    Image files are those ending in .png, .jpg, .jpeg, .bmp, .tif or .tiff
    (any case) directly in the split folders; other and hidden files are
    ignored.

    Parameters
    ----------
    root : str or path-like
        The category folder.
    split : {"all", "train", "test"}, default="all"
        Which splits to list; the other one's keys hold empty lists.
    exclude : str, path-like or None, default=None
        A folder inside ``root/test`` to skip, such as an output folder
        written inside the data.

    Returns
    -------
    files : :class:`~sklearn.utils.Bunch`
        - ``train_paths``: list of Path, ``train/good`` sorted by file name;
        - ``test_paths``: list of Path, ``test/good`` first, then the other
          folders in alphabetical order, each sorted by file name;
        - ``y_test``: ndarray ``(n_test,)``, ``+1`` for ``test/good``, ``-1`` otherwise;
        - ``defect_types``: ndarray ``(n_test,)`` of str, ``"good"`` or the folder name;
        - ``mask_paths``: list of (Path or None), the mask of each test image
          (see :func:`find_mask`); None for normal images and missing masks.

    Raises
    ------
    FileNotFoundError
        If ``root`` or a split folder it needs (``train/good``, ``test``) does not exist.
    ValueError
        If ``split`` is unknown, or a split it needs holds no image files.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    root = _check_root(root)
    exclude = None if exclude is None else Path(exclude).resolve()
    train_paths, test_paths, defect_types = [], [], []

    if split in ("all", "train"):
        train_folder = root / "train" / "good"
        if not train_folder.is_dir():
            raise FileNotFoundError(f"folder {train_folder} does not exist; {_MVTEC_LAYOUT}.")
        train_paths = find_image_files(train_folder)
        if not train_paths:
            raise _no_images(train_folder)

    if split in ("all", "test"):
        test_folder = root / "test"
        if not test_folder.is_dir():
            raise FileNotFoundError(f"folder {test_folder} does not exist; {_MVTEC_LAYOUT}.")
        folders = sorted(
            (
                folder for folder in test_folder.iterdir()
                if folder.is_dir() and not folder.name.startswith(".")
                and (exclude is None or folder.resolve() != exclude)
            ),
            key=lambda folder: (folder.name != "good", folder.name),
        )
        for folder in folders:
            images = find_image_files(folder)
            test_paths += images
            defect_types += [folder.name] * len(images)
        if not test_paths:
            raise _no_images(f"the subfolders of {test_folder}")

    ground_truth = root / "ground_truth"
    mask_paths = [
        None if defect_type == "good" else find_mask(ground_truth, defect_type, path)
        for path, defect_type in zip(test_paths, defect_types)
    ]
    defect_types = np.asarray(defect_types, dtype=object)
    return Bunch(
        train_paths=train_paths,
        test_paths=test_paths,
        y_test=np.where(defect_types == "good", 1, -1),
        defect_types=defect_types,
        mask_paths=mask_paths,
    )


def read_mask(path):
    """Read a mask image as bool ``(H, W)``: pixels above half the mask's maximum value.

    Half the maximum accepts 0/255 masks, 0/1 label images and slightly
    compressed masks alike; an all-zero file is an empty mask.
    """
    with open_image(path) as image:
        if image.mode in ("1", "L") or is_high_depth_mode(image.mode):
            values = np.asarray(image)
        else:
            values = np.asarray(image.convert("L"))
    peak = values.max()
    if peak <= 0:
        return np.zeros(values.shape, dtype=bool)
    return values > peak / 2


def _resize_mask(mask, target_size):
    image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    resized = image.resize((target_size[1], target_size[0]), resample=_RESAMPLING.NEAREST)
    return np.asarray(resized) > 127


def load_mvtec_folder(root, *, image_size=None, color=False, require_masks=True):
    """Load a dataset stored in the MVTec-AD folder layout.

    ::

        root/
            train/good/            normal training images
            test/good/             normal test images
            test/<defect type>/    anomalous test images, one folder per defect type
            ground_truth/<defect type>/<image name>_mask.png

    The files are those :func:`find_mvtec_files` finds. A mask may also be
    named like its image (``<image name>.png``); its defect pixels are those
    above half the mask's maximum value, so 0/255 and 0/1 masks both work.

    Parameters
    ----------
    root : str or path-like
        The dataset folder (one MVTec-AD category).
    image_size : int, (int, int) or None, default=None
        None keeps the native size, which then must be the same for all
        images. An int resizes to squares, a pair to ``(height, width)``:
        images with bilinear interpolation (anti-aliased when shrinking),
        masks with nearest-neighbour interpolation.
    color : bool, default=False
        False gives gray ``(n, H, W)`` images, True RGB ``(n, H, W, 3)``.
    require_masks : bool, default=True
        True raises an error when an anomalous test image has no mask file;
        False gives it an all-False mask and warns once for all such images.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        - ``X_train``: ndarray ``(n_train, H, W)`` or ``(n_train, H, W, 3)``;
        - ``X_test``: ndarray ``(n_test, H, W)`` or ``(n_test, H, W, 3)``;
        - ``y_test``: ndarray ``(n_test,)``, ``+1`` for ``test/good``, ``-1`` otherwise;
        - ``masks_test``: ndarray ``(n_test, H, W)``, bool, all False for normal images;
        - ``defect_types``: ndarray ``(n_test,)`` of str, ``"good"`` or the folder name;
        - ``train_paths``, ``test_paths``: lists of str, the image files;
        - ``mask_paths``: list of str or None, the mask file of each test image;
        - ``root``: str, the dataset folder.

        The images are uint8 for 8-bit files (other file types: see
        :func:`load_images`). Training images are sorted by file name; test
        images come ``test/good`` first, then the other folders in
        alphabetical order, each sorted by file name.

    Raises
    ------
    FileNotFoundError
        If ``root``, ``root/train/good`` or ``root/test`` does not exist.
    ValueError
        If a folder holds no images, a file cannot be read, images differ in
        size while ``image_size`` is None, a mask's size differs from its
        image's, or (with ``require_masks=True``) an anomalous image has no
        mask.

    Examples
    --------
    A tiny category written from generated surfaces (an MVTec-AD category
    such as ``mvtec_ad/bottle`` reads the same way):

    >>> import os, tempfile
    >>> from PIL import Image
    >>> from skflow_ad.datasets import load_mvtec_folder, make_surface_defects
    >>> X, y, masks = make_surface_defects(5, 2, image_size=32, random_state=0)
    >>> root = tempfile.mkdtemp()
    >>> def save(array, *parts):
    ...     os.makedirs(os.path.join(root, *parts[:-1]), exist_ok=True)
    ...     Image.fromarray(array).save(os.path.join(root, *parts))
    >>> for index in range(3):
    ...     save(X[index], "train", "good", f"{index:03d}.png")
    >>> for index in range(3, 7):
    ...     kind = "good" if y[index] == 1 else "scratch"
    ...     save(X[index], "test", kind, f"{index:03d}.png")
    ...     if kind != "good":
    ...         save(masks[index].astype("uint8") * 255, "ground_truth", kind, f"{index:03d}_mask.png")
    >>> data = load_mvtec_folder(root, image_size=16)
    >>> data.X_train.shape, data.X_test.shape, data.y_test.tolist()
    ((3, 16, 16), (4, 16, 16), [1, 1, -1, -1])
    >>> list(data.defect_types), data.masks_test.shape
    (['good', 'good', 'scratch', 'scratch'], (4, 16, 16))
    """
    root = _check_root(root)
    target_size = check_image_size(image_size, allow_none=True)
    color = check_bool(color, "color")
    require_masks = check_bool(require_masks, "require_masks")
    files = find_mvtec_files(root)
    test_paths, mask_paths = files.test_paths, files.mask_paths

    ground_truth = root / "ground_truth"
    missing = [
        path for path, label, mask in zip(test_paths, files.y_test, mask_paths) if label == -1 and mask is None
    ]
    if missing:
        listed = ", ".join(str(path) for path in missing[:3])
        if len(missing) > 3:
            listed += f" and {len(missing) - 3} more"
        message = (
            f"{len(missing)} anomalous test image(s) have no mask file in {ground_truth}/<defect type>/ "
            f"(looked for <name>_mask.png): {listed}."
        )
        if require_masks:
            raise ValueError(f"{message} Pass require_masks=False to give them empty masks.")
        warnings.warn(f"{message} Their masks are left empty (all False).", UserWarning, stacklevel=2)

    # One read of both splits: one size and one dtype for all images.
    images = load_images(files.train_paths + test_paths, image_size=target_size, color=color)
    X_train, X_test = images[: len(files.train_paths)], images[len(files.train_paths) :]

    masks_test = np.zeros(X_test.shape[:3], dtype=bool)
    for index, (image_path, mask_path) in enumerate(zip(test_paths, mask_paths)):
        if mask_path is None:
            continue
        mask = read_mask(mask_path)
        image_size_native = X_test.shape[1:3] if target_size is None else image_file_size(image_path)
        if mask.shape != tuple(image_size_native):
            raise ValueError(
                f"mask {mask_path} is {describe_size(mask.shape)} but its image {image_path} is "
                f"{describe_size(image_size_native)}."
            )
        if mask.shape != masks_test.shape[1:]:
            mask = _resize_mask(mask, masks_test.shape[1:])
        masks_test[index] = mask

    return Bunch(
        X_train=X_train,
        X_test=X_test,
        y_test=files.y_test,
        masks_test=masks_test,
        defect_types=files.defect_types,
        train_paths=[str(path) for path in files.train_paths],
        test_paths=[str(path) for path in test_paths],
        mask_paths=[None if path is None else str(path) for path in mask_paths],
        root=str(root),
    )
