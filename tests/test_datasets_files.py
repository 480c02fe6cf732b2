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


# ---------------------------------------------------------------------------
# What each file type becomes (the table in docs/user_guide.md, "Data loading")
# ---------------------------------------------------------------------------


def _save(array, path):
    Image.fromarray(array).save(path)
    return path


def test_float_tiffs_in_unit_range_are_float32_not_black(tmp_path):
    values = np.array([[0.0, 0.25, 0.5], [0.75, 0.9, 1.0]], dtype=np.float32)
    path = _save(values, tmp_path / "float.tif")
    assert Image.open(path).mode == "F"
    loaded = load_images([path])
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded[0], values)
    color = load_images([path], color=True)
    assert color.shape == (1, 2, 3, 3) and color.dtype == np.float32
    np.testing.assert_array_equal(color[0], np.repeat(values[..., None], 3, axis=-1))


@pytest.mark.parametrize("values, match", [
    (np.array([[0.0, 255.0]], dtype=np.float32), r"float\.tif holds floating-point values in \[0, 255\]"),
    (np.array([[-0.5, 0.5]], dtype=np.float32), r"\[-0\.5, 0\.5\].*must lie in \[0, 1\]"),
    (np.array([[np.nan, 0.5]], dtype=np.float32), "NaN or infinity"),
])
def test_float_tiffs_outside_the_unit_range_are_rejected(tmp_path, values, match):
    path = _save(values, tmp_path / "float.tif")
    with pytest.raises(ValueError, match=match):
        load_images([path])


def test_sixteen_bit_pngs_stay_uint16(tmp_path):
    values = np.array([[0, 257, 65535], [25700, 1000, 51400]], dtype=np.uint16)
    path = _save(values, tmp_path / "deep.png")
    loaded = load_images([path])
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded[0], values)
    assert load_images([path], color=True)[0].tolist() == np.repeat(values[..., None], 3, axis=-1).tolist()


def test_thirty_two_bit_integer_files_keep_their_range_as_uint16(tmp_path):
    values = np.array([[0, 7, 300], [40000, 65535, 12]], dtype=np.int32)
    path = _save(values, tmp_path / "counts.tif")
    assert Image.open(path).mode == "I"
    loaded = load_images([path])
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded[0], values)
    for bad in (np.array([[0, 70000]], dtype=np.int32), np.array([[-1, 5]], dtype=np.int32)):
        _save(bad, tmp_path / "wide.tif")
        with pytest.raises(ValueError, match=r"wide\.tif holds 32-bit integer values in \[-?\d+, \d+\].*0-65535"):
            load_images([tmp_path / "wide.tif"])


def test_high_depth_images_resize_at_their_depth(tmp_path):
    rng = np.random.RandomState(0)
    deep = (rng.rand(9, 7) * 65535).astype(np.uint16)
    unit = rng.rand(9, 7).astype(np.float32)
    for values in (deep, unit):
        path = _save(values, tmp_path / "image.tif")
        resized = load_images([path], image_size=(4, 5))[0]
        reference = np.asarray(Image.fromarray(values.astype(np.float32)).resize((5, 4), Image.BILINEAR))
        if values.dtype == np.uint16:
            reference = np.rint(reference).astype(np.uint16)
        assert resized.dtype == values.dtype
        np.testing.assert_array_equal(resized, reference)
        assert 0 <= resized.min() and resized.max() <= (65535 if values.dtype == np.uint16 else 1)


def test_files_of_different_depths_are_read_at_the_widest_one(tmp_path):
    eight = np.array([[0, 128, 255]], dtype=np.uint8)
    sixteen = np.array([[0, 1000, 65535]], dtype=np.uint16)
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    paths = [_save(eight, tmp_path / "a.png"), _save(sixteen, tmp_path / "b.png"), _save(unit, tmp_path / "c.tif")]
    both = load_images(paths[:2])
    assert both.dtype == np.uint16
    np.testing.assert_array_equal(both, [eight.astype(np.uint16) * 257, sixteen])
    every = load_images(paths)
    assert every.dtype == np.float32
    np.testing.assert_array_equal(every, [eight / np.float32(255), sixteen / np.float32(65535), unit])
    assert load_images(paths[::-1]).dtype == np.float32  # whatever the order


def test_image_file_loader_reads_float_files(tmp_path):
    values = np.random.RandomState(1).rand(2, 6, 5).astype(np.float32)
    paths = [_save(image, tmp_path / f"{index}.tiff") for index, image in enumerate(values)]
    np.testing.assert_array_equal(ImageFileLoader().fit_transform(paths), values)


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
