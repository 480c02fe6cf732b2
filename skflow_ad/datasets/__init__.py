"""Datasets for image anomaly detection.

Three sources of images, one module each, all returned in the package's
conventions:

- :mod:`~skflow_ad.datasets.surfaces`: :func:`make_surface_defects` and
  :func:`make_surface_train_test` generate textured industrial surfaces
  (brushed metal, cast grain, woven fabric) with planted scratches, cracks,
  spots and contamination, together with exact pixel masks of every defect;
- :mod:`~skflow_ad.datasets.files`: :func:`load_images` and
  :class:`ImageFileLoader` read a list of image files, the latter as the first
  step of a scikit-learn :class:`~sklearn.pipeline.Pipeline`;
- :mod:`~skflow_ad.datasets.mvtec`: :func:`load_mvtec_folder` reads a dataset
  stored in the MVTec-AD folder layout, and :func:`find_mvtec_files` lists its
  files without reading them.

Conventions: images are gray ``(n, H, W)`` or colour channels-last
``(n, H, W, 3)`` arrays; labels are ``+1`` for normal and ``-1`` for
anomalous images (as returned by scikit-learn outlier detectors' ``predict``);
masks are boolean ``(n, H, W)`` arrays, ``True`` on anomalous pixels.
"""

from .files import IMAGE_EXTENSIONS, ImageFileLoader, load_images
from .mvtec import find_mvtec_files, load_mvtec_folder
from .surfaces import DEFECT_AREA_RANGE, DEFECT_TYPES, SURFACE_TEXTURES, make_surface_defects, make_surface_train_test

__all__ = [
    "DEFECT_AREA_RANGE",
    "DEFECT_TYPES",
    "IMAGE_EXTENSIONS",
    "SURFACE_TEXTURES",
    "ImageFileLoader",
    "find_mvtec_files",
    "load_images",
    "load_mvtec_folder",
    "make_surface_defects",
    "make_surface_train_test",
]
