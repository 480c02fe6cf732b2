"""skflow_ad.datasets.files: reading image files, alone or in a pipeline."""

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.validation import check_is_fitted

from skflow_ad.datasets import ImageFileLoader, load_images

from .conftest import gray as _gray, save_rgb as _save_rgb


@pytest.fixture
def image_files(tmp_path):
    paths = [tmp_path / f"image_{index}.png" for index in range(4)]
    pixels = [_save_rgb(path, seed=index, size=(9, 7)) for index, path in enumerate(paths)]
    return paths, pixels


def test_load_images_gray_color_and_resize(image_files):
    paths, pixels = image_files
    gray = load_images(paths)
    assert gray.shape == (4, 9, 7) and gray.dtype == np.uint8
    np.testing.assert_array_equal(gray[3], _gray(pixels[3]))
    color = load_images([str(path) for path in paths], color=True)
    np.testing.assert_array_equal(color, np.stack(pixels))
    assert load_images(paths, image_size=5).shape == (4, 5, 5)
    column_of_paths = np.array([str(path) for path in paths])[:, None]
    assert load_images(column_of_paths, image_size=(4, 6), color=True).shape == (4, 4, 6, 3)


def test_load_images_sixteen_bit_gray(tmp_path):
    values = np.array([[0, 257, 65535], [25700, 1000, 51400]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    loaded = load_images([tmp_path / "deep.png"])
    np.testing.assert_array_equal(loaded[0], np.rint(values / 257).astype(np.uint8))


def test_load_images_errors(tmp_path, image_files):
    paths, _ = image_files
    with pytest.raises(ValueError, match="empty"):
        load_images([])
    with pytest.raises(TypeError, match="single path"):
        load_images(str(paths[0]))
    with pytest.raises(TypeError, match="item 1"):
        load_images([paths[0], 3])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_images([paths[0], tmp_path / "missing.png"])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=r"cannot read image file .*broken\.jpg"):
        load_images([tmp_path / "broken.jpg"])
    _save_rgb(tmp_path / "other_size.png", seed=0, size=(5, 5))
    with pytest.raises(ValueError, match="image_size"):
        load_images([paths[0], tmp_path / "other_size.png"])


def test_image_file_loader_starts_a_pipeline(image_files):
    paths, pixels = image_files
    pipeline = Pipeline(
        [
            ("load", ImageFileLoader(image_size=6)),
            ("flatten", FunctionTransformer(lambda images: images.reshape(len(images), -1) / 255.0)),
            ("detect", IsolationForest(n_estimators=5, random_state=0)),
        ]
    )
    predictions = pipeline.fit(paths).predict(paths)
    assert predictions.shape == (4,) and set(predictions) <= {-1, 1}
    np.testing.assert_array_equal(ImageFileLoader(color=True).fit_transform(paths), np.stack(pixels))


def test_image_file_loader_is_a_stateless_estimator(image_files):
    paths, _ = image_files
    loader = ImageFileLoader(image_size=(8, 5), color=True)
    check_is_fitted(loader)
    assert loader.__sklearn_tags__().requires_fit is False
    assert loader.transform(paths).shape == (4, 8, 5, 3)
    assert clone(loader).get_params() == {"image_size": (8, 5), "color": True}
    assert loader.fit(paths) is loader
    with pytest.raises(ValueError, match="image_size"):
        ImageFileLoader(image_size=0).fit(paths)
    with pytest.raises(TypeError, match=r"\(height, width\) pair"):
        ImageFileLoader(image_size=(8,)).transform(paths)
    with pytest.raises(ValueError, match="color"):
        ImageFileLoader(color="yes").transform(paths)
