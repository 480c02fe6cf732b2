from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.validation import check_is_fitted

from skflow_ad.datasets import (
    DEFECT_AREA_RANGE,
    DEFECT_TYPES,
    SURFACE_TEXTURES,
    ImageFileLoader,
    _generate_surfaces,
    load_images,
    load_mvtec_folder,
    make_surface_defects,
    make_surface_train_test,
)

KSDD_ROOT = Path(__file__).parents[1] / "../shared/data/ksdd"

# The mask holds every pixel the defects moved by 8 gray levels or more; pixels
# outside it may still move by up to that much (plus one level of rounding).
VISIBLE_CHANGE = 8


def _surfaces(n_normal=3, n_anomalous=6, **params):
    params = {
        "image_size": 40,
        "color": False,
        "texture": "brushed",
        "defect_types": DEFECT_TYPES,
        "max_defects_per_image": 1,
        "random_state": 0,
        **params,
    }
    return _generate_surfaces(n_normal, n_anomalous, **params)


# ---------------------------------------------------------------------------
# Synthetic surfaces
# ---------------------------------------------------------------------------


def test_make_surface_defects_shapes_dtypes_and_normal_first():
    X, y, masks = make_surface_defects(5, 4, image_size=40, random_state=0)
    assert X.shape == (9, 40, 40) and X.dtype == np.uint8
    assert masks.shape == (9, 40, 40) and masks.dtype == bool
    assert y.tolist() == [1] * 5 + [-1] * 4
    # A real surface, not a flat or saturated image.
    assert 80 < X.mean() < 180
    assert X.std(axis=(1, 2)).min() > 5


def test_make_surface_defects_color_and_rectangular_size():
    X, y, masks = make_surface_defects(2, 2, image_size=(32, 48), color=True, random_state=0)
    assert X.shape == (4, 32, 48, 3) and X.dtype == np.uint8
    assert masks.shape == (4, 32, 48)
    # The material is tinted, so the channels differ.
    assert np.abs(X[..., 0].astype(int) - X[..., 2]).mean() > 3


def test_make_surface_defects_is_deterministic_given_random_state():
    first = make_surface_defects(3, 3, image_size=32, random_state=7)
    second = make_surface_defects(3, 3, image_size=32, random_state=np.random.RandomState(7))
    other = make_surface_defects(3, 3, image_size=32, random_state=8)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_normal_images_vary():
    X, _, _ = make_surface_defects(4, 0, image_size=32, random_state=0)
    differences = [np.abs(X[i].astype(int) - X[j]).mean() for i in range(4) for j in range(i)]
    assert min(differences) > 5


@pytest.mark.parametrize("texture", SURFACE_TEXTURES)
def test_masks_mark_exactly_the_anomalous_images(texture):
    X, y, masks = make_surface_defects(4, 8, image_size=40, texture=texture, random_state=1)
    has_defect = masks.any(axis=(1, 2))
    np.testing.assert_array_equal(has_defect, y == -1)
    fractions = masks[y == -1].mean(axis=(1, 2))
    assert np.all(fractions >= DEFECT_AREA_RANGE[0])
    assert np.all(fractions <= DEFECT_AREA_RANGE[1])


@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
def test_masks_match_where_the_image_was_changed(defect_type, color):
    data = _surfaces(2, 4, defect_types=defect_type, color=color)
    change = np.abs(data.X.astype(int) - data.X_clean.astype(int))
    if color:
        change = change.max(axis=-1)
    assert not change[:2].any(), "normal images must equal their defect-free rendering"
    assert list(data.defect_types) == ["good"] * 2 + [defect_type] * 4
    for image_change, mask in zip(change[2:], data.masks[2:]):
        assert image_change[~mask].max() <= VISIBLE_CHANGE + 1
        # Contamination masks also hold the inside of the smudge's outline,
        # where the stain may by chance look like the surface it covers.
        assert (image_change[mask] >= VISIBLE_CHANGE).mean() > 0.5
        # Defects are local: one compact region, not scattered noise.
        rows, cols = np.nonzero(mask)
        assert (rows.max() - rows.min()) * (cols.max() - cols.min()) < 0.6 * mask.size


def test_max_defects_per_image_and_single_defect_type_string():
    data = _surfaces(0, 8, max_defects_per_image=3, random_state=3)
    assert set(data.defect_types) <= set(DEFECT_TYPES) | {"combined"}
    assert "combined" in set(data.defect_types)
    fractions = data.masks.mean(axis=(1, 2))
    assert np.all((fractions >= DEFECT_AREA_RANGE[0]) & (fractions <= DEFECT_AREA_RANGE[1]))
    _, _, masks = make_surface_defects(0, 2, image_size=32, defect_types="spot", random_state=0)
    assert masks.any(axis=(1, 2)).all()


def test_shuffle_permutes_images_labels_and_masks_together():
    ordered = make_surface_defects(4, 4, image_size=32, random_state=5)
    shuffled = make_surface_defects(4, 4, image_size=32, shuffle=True, random_state=5)
    assert shuffled[1].tolist() != ordered[1].tolist()
    position = {image.tobytes(): index for index, image in enumerate(ordered[0])}
    order = [position[image.tobytes()] for image in shuffled[0]]
    assert sorted(order) == list(range(8))
    np.testing.assert_array_equal(shuffled[1], ordered[1][order])
    np.testing.assert_array_equal(shuffled[2], ordered[2][order])


def test_larger_images_scale_the_scene():
    X, y, masks = make_surface_defects(1, 2, image_size=128, random_state=0)
    assert X.shape == (3, 128, 128)
    fractions = masks[y == -1].mean(axis=(1, 2))
    assert np.all((fractions >= DEFECT_AREA_RANGE[0]) & (fractions <= DEFECT_AREA_RANGE[1]))


def test_make_surface_train_test_bunch():
    data = make_surface_train_test(6, 4, 4, image_size=32, color=True, texture="grain", random_state=0)
    assert data.X_train.shape == (6, 32, 32, 3)
    assert data.X_test.shape == (8, 32, 32, 3)
    assert data.masks_test.shape == (8, 32, 32)
    assert sorted(data.y_test.tolist()) == [-1] * 4 + [1] * 4
    assert data.y_test.tolist() != sorted(data.y_test.tolist(), reverse=True), "test set should be shuffled"
    np.testing.assert_array_equal(data.masks_test.any(axis=(1, 2)), data.y_test == -1)
    np.testing.assert_array_equal(data.defect_types == "good", data.y_test == 1)
    assert data.texture == "grain" and "grain" in data.DESCR
    again = make_surface_train_test(6, 4, 4, image_size=32, color=True, texture="grain", random_state=0)
    np.testing.assert_array_equal(again.X_test, data.X_test)


@pytest.mark.parametrize(
    "params, error, match",
    [
        ({"texture": "wood"}, ValueError, "unknown texture 'wood'"),
        ({"defect_types": ("dent",)}, ValueError, r"unknown defect type\(s\) \['dent'\]"),
        ({"defect_types": ()}, ValueError, "defect_types is empty"),
        ({"image_size": 16}, ValueError, "at least 32 pixels"),
        ({"image_size": (32,)}, TypeError, "image_size must be"),
        ({"image_size": 32.0}, TypeError, "image_size must be"),
        ({"n_normal": -1}, ValueError, "n_normal must be a non-negative int"),
        ({"n_normal": 0, "n_anomalous": 0}, ValueError, "at least 1"),
        ({"max_defects_per_image": 0}, ValueError, "max_defects_per_image"),
        ({"color": "yes"}, TypeError, "color must be True or False"),
    ],
)
def test_make_surface_defects_rejects_bad_parameters(params, error, match):
    params = {"n_normal": 1, "n_anomalous": 1, "image_size": 32, **params}
    with pytest.raises(error, match=match):
        make_surface_defects(**params)


# ---------------------------------------------------------------------------
# MVTec-AD folders
# ---------------------------------------------------------------------------

HEIGHT, WIDTH = 12, 10


def _save_rgb(path, seed, size=(HEIGHT, WIDTH)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, size=(*size, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _save_mask(path, mask, on_value=255):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * on_value).save(path)


def _gray(pixels):
    return np.asarray(Image.fromarray(pixels).convert("L"))


def _square_mask(top, left, side, size=(HEIGHT, WIDTH)):
    mask = np.zeros(size, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


@pytest.fixture
def mvtec_root(tmp_path):
    """A tiny MVTec-style category; returns its root and the pixels and masks written."""
    root = tmp_path / "widget"
    written = {}
    for index, name in enumerate(["000.png", "001.png", "002.bmp"]):
        written[f"train/good/{name}"] = _save_rgb(root / "train" / "good" / name, seed=index)
    for index, name in enumerate(["000.png", "001.PNG"]):
        written[f"test/good/{name}"] = _save_rgb(root / "test" / "good" / name, seed=10 + index)
    for index, name in enumerate(["000.png", "001.png"]):
        written[f"test/scratch/{name}"] = _save_rgb(root / "test" / "scratch" / name, seed=20 + index)
    written["test/hole/000.png"] = _save_rgb(root / "test" / "hole" / "000.png", seed=30)
    masks = {
        "scratch/000": _square_mask(1, 1, 3),
        "scratch/001": _square_mask(6, 4, 5),
        "hole/000": _square_mask(2, 5, 4),
    }
    _save_mask(root / "ground_truth" / "scratch" / "000_mask.png", masks["scratch/000"])
    _save_mask(root / "ground_truth" / "scratch" / "001_mask.png", masks["scratch/001"])
    # 0/1 label images work as masks too.
    _save_mask(root / "ground_truth" / "hole" / "000_mask.png", masks["hole/000"], on_value=1)
    # Files that are not images, and hidden files, are ignored.
    (root / "train" / "good" / "notes.txt").write_text("not an image")
    (root / "train" / "good" / ".hidden.png").write_bytes(b"")
    return root, written, masks


def test_load_mvtec_folder_layout_labels_and_masks(mvtec_root):
    root, written, masks = mvtec_root
    data = load_mvtec_folder(root)
    assert data.X_train.shape == (3, HEIGHT, WIDTH) and data.X_train.dtype == np.uint8
    assert data.X_test.shape == (5, HEIGHT, WIDTH)
    assert [Path(path).name for path in data.train_paths] == ["000.png", "001.png", "002.bmp"]
    assert list(data.defect_types) == ["good", "good", "hole", "scratch", "scratch"]
    assert data.y_test.tolist() == [1, 1, -1, -1, -1]
    assert data.masks_test.dtype == bool and data.masks_test.shape == (5, HEIGHT, WIDTH)
    assert not data.masks_test[:2].any()
    np.testing.assert_array_equal(data.masks_test[2], masks["hole/000"])
    np.testing.assert_array_equal(data.masks_test[3], masks["scratch/000"])
    np.testing.assert_array_equal(data.masks_test[4], masks["scratch/001"])
    np.testing.assert_array_equal(data.X_train[1], _gray(written["train/good/001.png"]))
    np.testing.assert_array_equal(data.X_test[4], _gray(written["test/scratch/001.png"]))
    assert data.mask_paths[0] is None and data.mask_paths[4].endswith("001_mask.png")


def test_load_mvtec_folder_color(mvtec_root):
    root, written, _ = mvtec_root
    data = load_mvtec_folder(root, color=True)
    assert data.X_train.shape == (3, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(data.X_train[2], written["train/good/002.bmp"])
    np.testing.assert_array_equal(data.X_test[2], written["test/hole/000.png"])


@pytest.mark.parametrize("image_size, expected", [(8, (8, 8)), ((6, 15), (6, 15))])
def test_load_mvtec_folder_resizes_images_and_masks(mvtec_root, image_size, expected):
    root, written, masks = mvtec_root
    data = load_mvtec_folder(root, image_size=image_size, color=True)
    assert data.X_train.shape == (3, *expected, 3)
    assert data.X_test.shape == (5, *expected, 3)
    assert data.masks_test.shape == (5, *expected) and data.masks_test.dtype == bool
    height, width = expected
    mask_image = Image.fromarray(masks["scratch/001"].astype(np.uint8) * 255)
    resized_mask = mask_image.resize((width, height), Image.NEAREST)
    np.testing.assert_array_equal(data.masks_test[4], np.asarray(resized_mask) > 127)
    resized_image = Image.fromarray(written["train/good/000.png"]).resize((width, height), Image.BILINEAR)
    np.testing.assert_array_equal(data.X_train[0], np.asarray(resized_image))


def test_load_mvtec_folder_missing_mask(mvtec_root):
    root, _, _ = mvtec_root
    (root / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(ValueError, match=r"no mask file.*scratch.001\.png.*require_masks=False"):
        load_mvtec_folder(root)
    with pytest.warns(UserWarning, match=r"scratch.001\.png"):
        data = load_mvtec_folder(root, require_masks=False)
    assert not data.masks_test[4].any() and data.masks_test[3].any()
    assert data.y_test[4] == -1


def test_load_mvtec_folder_mask_size_mismatch(mvtec_root):
    root, _, _ = mvtec_root
    _save_mask(root / "ground_truth" / "hole" / "000_mask.png", np.ones((5, 5), dtype=bool))
    expected = r"mask .*000_mask\.png is 5 x 5 .* its image .*hole.000\.png is 12 x 10"
    with pytest.raises(ValueError, match=expected):
        load_mvtec_folder(root, image_size=8)


def test_load_mvtec_folder_missing_folders(tmp_path, mvtec_root):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        load_mvtec_folder(tmp_path / "does_not_exist")
    root, _, _ = mvtec_root
    for image in (root / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"no image files .* in .*train.good"):
        load_mvtec_folder(root)
    (root / "train" / "good").rmdir()
    with pytest.raises(FileNotFoundError, match=r"train.good does not exist"):
        load_mvtec_folder(root)


def test_load_mvtec_folder_unreadable_image(mvtec_root):
    root, _, _ = mvtec_root
    (root / "test" / "good" / "002.png").write_bytes(b"this is not a PNG file")
    with pytest.raises(ValueError, match=r"cannot read image file .*good.002\.png"):
        load_mvtec_folder(root)


def test_load_mvtec_folder_images_of_different_sizes(mvtec_root):
    root, _, _ = mvtec_root
    _save_rgb(root / "test" / "good" / "002.png", seed=40, size=(HEIGHT + 2, WIDTH))
    with pytest.raises(ValueError, match=r"002\.png is 14 x 10 .* Pass image_size"):
        load_mvtec_folder(root)
    assert load_mvtec_folder(root, image_size=(HEIGHT, WIDTH)).X_test.shape == (6, HEIGHT, WIDTH)


@pytest.mark.skipif(not KSDD_ROOT.is_dir(), reason="KolektorSDD not found at ../shared/data/ksdd")
def test_load_mvtec_folder_on_kolektorsdd():
    data = load_mvtec_folder(KSDD_ROOT, image_size=(96, 40))
    assert data.X_train.shape == (250, 96, 40)
    assert data.X_test.shape == (149, 96, 40)
    assert (data.y_test == 1).sum() == 97 and (data.y_test == -1).sum() == 52
    assert set(data.defect_types) == {"good", "defect"}
    assert data.masks_test[data.y_test == -1].any(axis=(1, 2)).mean() > 0.9
    assert not data.masks_test[data.y_test == 1].any()
    assert 0 < data.masks_test[data.y_test == -1].mean() < 0.05


# ---------------------------------------------------------------------------
# Image files
# ---------------------------------------------------------------------------


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
