"""skflow_ad.datasets.mvtec: the MVTec-AD folder walk, masks and loader."""

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skflow_ad.datasets import find_mvtec_files, load_mvtec_folder
from skflow_ad.datasets.mvtec import is_mvtec_root

from .conftest import KSDD, gray as _gray, save_rgb

HEIGHT, WIDTH = 12, 10
_save_rgb = partial(save_rgb, size=(HEIGHT, WIDTH))


def _save_mask(path, mask, on_value=255):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * on_value).save(path)


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


def test_find_mvtec_files_lists_the_layout_without_reading_pixels(mvtec_root):
    root, _, _ = mvtec_root
    for image in root.rglob("*"):  # the walk must not decode a single file
        if image.is_file() and not image.name.startswith("."):
            image.write_bytes(b"not an image")
    files = find_mvtec_files(root)
    relative = lambda paths: [path.relative_to(root).as_posix() for path in paths]  # noqa: E731
    assert relative(files.train_paths) == ["train/good/000.png", "train/good/001.png", "train/good/002.bmp"]
    assert relative(files.test_paths) == [
        "test/good/000.png", "test/good/001.PNG", "test/hole/000.png", "test/scratch/000.png", "test/scratch/001.png",
    ]
    assert files.y_test.tolist() == [1, 1, -1, -1, -1]
    assert list(files.defect_types) == ["good", "good", "hole", "scratch", "scratch"]
    assert [None if p is None else p.relative_to(root).as_posix() for p in files.mask_paths] == [
        None, None, "ground_truth/hole/000_mask.png", "ground_truth/scratch/000_mask.png",
        "ground_truth/scratch/001_mask.png",
    ]


def test_find_mvtec_files_one_split_and_an_excluded_folder(mvtec_root):
    root, _, _ = mvtec_root
    (root / "train" / "good").rename(root / "train" / "elsewhere")  # a test split alone is enough
    output = root / "test" / "results"
    _save_rgb(output / "000.png", seed=0)
    files = find_mvtec_files(root, split="test", exclude=output)
    assert files.train_paths == [] and len(files.test_paths) == 5
    assert "results" not in set(files.defect_types)
    assert "results" in set(find_mvtec_files(root, split="test").defect_types)
    with pytest.raises(FileNotFoundError, match=r"train.good does not exist; expected the MVTec-AD layout"):
        find_mvtec_files(root)
    with pytest.raises(ValueError, match="split must be one of"):
        find_mvtec_files(root, split="validation")


def test_is_mvtec_root(mvtec_root, tmp_path):
    root, _, _ = mvtec_root
    assert is_mvtec_root(root)
    assert not is_mvtec_root(root / "test")  # its subfolders are not splits
    (tmp_path / "plain" / "test").mkdir(parents=True)  # a folder that happens to be called test
    assert not is_mvtec_root(tmp_path / "plain")


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


@pytest.mark.skipif(not KSDD.is_dir(), reason="KolektorSDD not found at ../shared/data/ksdd")
def test_load_mvtec_folder_on_kolektorsdd():
    data = load_mvtec_folder(KSDD, image_size=(96, 40))
    assert data.X_train.shape == (250, 96, 40)
    assert data.X_test.shape == (149, 96, 40)
    assert (data.y_test == 1).sum() == 97 and (data.y_test == -1).sum() == 52
    assert set(data.defect_types) == {"good", "defect"}
    assert data.masks_test[data.y_test == -1].any(axis=(1, 2)).mean() > 0.9
    assert not data.masks_test[data.y_test == 1].any()
    assert 0 < data.masks_test[data.y_test == -1].mean() < 0.05


def test_load_mvtec_folder_reads_float_tiffs_and_deep_masks(tmp_path):
    rng = np.random.RandomState(0)
    root = tmp_path / "float"
    written = {}
    for split, folder, count in (("train", "good", 2), ("test", "good", 1), ("test", "dent", 1)):
        for index in range(count):
            values = rng.rand(HEIGHT, WIDTH).astype(np.float32)
            path = root / split / folder / f"{index:03d}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(values).save(path)
            written[f"{split}/{folder}/{index}"] = values
    mask = _square_mask(3, 2, 4)
    (root / "ground_truth" / "dent").mkdir(parents=True)
    Image.fromarray(mask.astype(np.uint16)).save(root / "ground_truth" / "dent" / "000_mask.png")  # 16-bit 0/1
    data = load_mvtec_folder(root)
    assert data.X_train.dtype == np.float32 and data.X_test.dtype == np.float32
    np.testing.assert_array_equal(data.X_train, [written["train/good/0"], written["train/good/1"]])
    np.testing.assert_array_equal(data.X_test[1], written["test/dent/0"])
    np.testing.assert_array_equal(data.masks_test[1], mask)
