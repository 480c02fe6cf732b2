"""Input rules (skflow_ad._validation): what is accepted, what each refusal says, and the batching."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skflow_ad._validation import (
    IMAGES,
    VECTORS,
    check_image_size,
    check_images,
    describe_kind_mismatch,
    input_kind,
)
from skflow_ad.resample import resize_image


def _images(n=3, size=(20, 30), seed=0):
    return (np.random.RandomState(seed).rand(n, *size) * 255).astype(np.uint8)


@pytest.mark.parametrize(
    "value, expected",
    [(32, (32, 32)), ((16, 48), (16, 48)), ([16, 48], (16, 48)), (np.int64(8), (8, 8))],
)
def test_image_size_becomes_height_width(value, expected):
    assert check_image_size(value) == expected


@pytest.mark.parametrize(
    "value, error, message",
    [
        (True, TypeError, "an int \\(square images\\) or a \\(height, width\\) pair of ints, got True"),
        ((32, True), TypeError, "got \\(32, True\\)"),
        (32.0, TypeError, "got 32.0"),
        ((1, 2, 3), TypeError, "pair of ints"),
        (0, ValueError, "at least 1 pixels on each side, got 0"),
        (None, TypeError, "got None"),
    ],
)
def test_bad_image_sizes(value, error, message):
    with pytest.raises(error, match=message):
        check_image_size(value)
    assert check_image_size(None, allow_none=True) is None


def test_input_kinds():
    images = _images()
    assert input_kind(images) == IMAGES
    assert input_kind(list(images)) == IMAGES
    assert input_kind(["a.png", Path("b.png")]) == IMAGES
    assert input_kind(torch.from_numpy(images)) == IMAGES
    assert input_kind(images.tolist()) == IMAGES  # nested lists
    assert input_kind(np.zeros((4, 3))) == VECTORS
    assert input_kind([[1.0, 2.0], [3.0, 4.0]]) == VECTORS


def test_tensors_big_endian_and_nested_lists_read_like_the_array():
    images = _images()
    reference = next(check_images(images).batches(8, (20, 30)))[1]
    grad_tensor = torch.from_numpy(images.astype(np.float32) / 255).requires_grad_()
    for variant in (torch.from_numpy(images), images.astype(">u2").astype(">u1"), [torch.from_numpy(i) for i in images]):
        np.testing.assert_array_equal(next(check_images(variant).batches(8, (20, 30)))[1], reference)
    as_float = next(check_images(grad_tensor).batches(8, (20, 30)))[1]
    np.testing.assert_allclose(as_float * 255, reference, atol=1e-4)
    for floats in ((images / 255).astype(">f8"), (images / 255).tolist()):  # big-endian, nested lists
        np.testing.assert_allclose(next(check_images(floats).batches(8, (20, 30)))[1] * 255, reference, atol=1e-4)
    with pytest.raises(TypeError, match="dtype int64; images must be uint8"):
        check_images(images.astype(np.int64).tolist())


def test_a_list_of_paths_is_read_as_load_images_reads_it(tmp_path):
    images = _images(2, (12, 16))
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    read = check_images([str(paths[0]), paths[1]])
    assert not read.uniform and read.sizes == [(12, 16), (12, 16)] and read.n_channels == 1
    np.testing.assert_array_equal(next(read.batches(8, (12, 16)))[1][..., 0], images)
    assert check_images(paths, color=True).n_channels == 3


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ((x for x in _images()), TypeError, "generator.*pass a list or an array"),
        ("image.png", TypeError, "single path 'image.png'; pass a list of image paths"),
        ([], ValueError, "empty list"),
        (np.zeros((32, 32), dtype=np.uint8), ValueError, "For one image pass X\\[None\\]"),
        ([np.zeros((4, 4, 5), dtype=np.uint8)], ValueError, "X\\[0\\] has shape \\(4, 4, 5\\)"),
        ([np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint16)], TypeError, "different dtypes"),
    ],
)
def test_refusals_name_the_problem_and_the_fix(bad, error, message):
    with pytest.raises(error, match=message):
        check_images(bad)


def test_kind_mismatch_messages_name_the_fix():
    pandas = pytest.importorskip("pandas")
    from scipy import sparse

    assert "a DataFrame is a table, not images" in describe_kind_mismatch(pandas.DataFrame(np.zeros((3, 4))), IMAGES, "D")
    assert "sparse matrices are not images" in describe_kind_mismatch(sparse.csr_matrix(np.eye(3)), IMAGES, "D")
    assert "For one image pass X[None]" in describe_kind_mismatch(np.zeros((32, 32)), IMAGES, "D")
    assert "fitted on feature vectors" in describe_kind_mismatch(_images(), VECTORS, "D")


def test_batches_resize_each_image_before_batching(monkeypatch):
    # A batch of large images costs its working-size array: images are resized one at a
    # time in their own dtype, never converted to float at full resolution as a batch.
    seen = []

    def recording_resize(image, size):
        seen.append((image.shape, image.dtype))
        return resize_image(image, size)

    monkeypatch.setattr("skflow_ad._validation.resize_image", recording_resize)
    large = _images(5, (300, 400))
    batches = list(check_images(large).batches(2, (30, 40)))
    assert [b.shape for _, b in batches] == [(2, 30, 40, 1), (2, 30, 40, 1), (1, 30, 40, 1)]
    assert all(b.dtype == np.uint8 for _, b in batches)
    assert seen == [((300, 400, 1), np.dtype(np.uint8))] * 5


def test_batch_dtypes_and_scales():
    images = _images(2, (8, 8))
    as_uint16 = images.astype(np.uint16) * 257
    uint16_batch = next(check_images(as_uint16).batches(4, (8, 8)))[1]
    assert uint16_batch.dtype == np.float32
    np.testing.assert_allclose(uint16_batch[..., 0], images / 255, atol=1e-6)
    float_batch = next(check_images(images / 255.0).batches(4, (8, 8)))[1]
    assert float_batch.dtype == np.float32


def test_resize_image_keeps_dtype_and_matches_pil():
    image = _images(1, (40, 60))[0][..., None]
    small = resize_image(image, (20, 30))
    assert small.shape == (20, 30, 1) and small.dtype == np.uint8
    expected = np.asarray(Image.fromarray(image[..., 0]).resize((30, 20), Image.BILINEAR))
    np.testing.assert_array_equal(small[..., 0], expected)
    rgb = np.random.RandomState(1).rand(10, 12, 3).astype(np.float32)
    out = resize_image(rgb, (20, 24))
    assert out.shape == (20, 24, 3) and out.dtype == np.float32
    for c in range(3):
        channel = np.asarray(Image.fromarray(rgb[..., c], mode="F").resize((24, 20), Image.BILINEAR))
        np.testing.assert_array_equal(out[..., c], channel)
    assert resize_image(image, (40, 60)) is image
