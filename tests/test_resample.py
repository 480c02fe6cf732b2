import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skflow_ad.resample import as_map_size, interpolation_matrix, resize_maps


def _torch_resize(maps, size):
    tensor = torch.as_tensor(np.asarray(maps, dtype=np.float64))[:, None]
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=False)
    return resized[:, 0].numpy()


@pytest.mark.parametrize(
    "in_size, out_size",
    [
        ((5, 7), (13, 17)),  # up, non-square, non-integer factors
        ((8, 8), (32, 32)),  # up, integer factor
        ((17, 13), (5, 4)),  # down, no antialiasing
        ((64, 64), (30, 97)),  # down one side, up the other
        ((1, 1), (4, 6)),  # one pixel
        ((1, 5), (3, 2)),  # one row
        ((6, 1), (2, 9)),  # one column
        ((9, 11), (9, 11)),  # same size
    ],
)
def test_matches_torch_interpolate(in_size, out_size):
    maps = np.random.default_rng(0).normal(size=(3, *in_size)) * 10.0
    result = resize_maps(maps, out_size)
    assert result.shape == (3, *out_size) and result.dtype == np.float32
    np.testing.assert_allclose(result, _torch_resize(maps, out_size), rtol=1e-6, atol=1e-6)


def test_float32_maps_match_torch_float32():
    maps = np.random.default_rng(2).normal(size=(4, 9, 7)).astype(np.float32) * 10.0
    expected = F.interpolate(torch.from_numpy(maps)[:, None], size=(20, 33), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(resize_maps(maps, (20, 33)), expected[:, 0].numpy(), rtol=1e-6, atol=1e-5)


def test_large_values_keep_relative_precision():
    maps = np.random.default_rng(1).uniform(-3000.0, 0.0, size=(2, 8, 8))
    np.testing.assert_allclose(resize_maps(maps, (32, 20)), _torch_resize(maps, (32, 20)), rtol=1e-6)


def test_int_size_integer_maps_and_constant_maps():
    maps = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    np.testing.assert_allclose(resize_maps(maps, 7), _torch_resize(maps, (7, 7)), atol=1e-5)
    # Bilinear weights sum to one: constants stay constant.
    np.testing.assert_array_equal(resize_maps(np.full((1, 3, 5), 2.5), (11, 4)), np.float32(2.5))


def test_interpolation_matrix_rows():
    matrix = interpolation_matrix(4, 10)
    assert matrix.shape == (10, 4)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    assert ((matrix > 0).sum(axis=1) <= 2).all()
    # Output pixel 0 of a 4 -> 10 upsampling sits at max(0.5 * 0.4 - 0.5, 0) = 0: input pixel 0 only.
    np.testing.assert_array_equal(matrix[0], [1.0, 0.0, 0.0, 0.0])
    # Output pixel 5 sits at 5.5 * 0.4 - 0.5 = 1.7: 0.3 of pixel 1, 0.7 of pixel 2.
    np.testing.assert_allclose(matrix[5], [0.0, 0.3, 0.7, 0.0])
    assert not matrix.flags.writeable


def test_empty_batch():
    assert resize_maps(np.zeros((0, 3, 3)), 5).shape == (0, 5, 5)


@pytest.mark.parametrize(
    "maps, size, message",
    [
        (np.zeros((3, 3)), 4, r"shape \(n, h, w\)"),
        (np.zeros((1, 0, 3)), 4, r"shape \(n, h, w\)"),
        (np.zeros((1, 3, 3), dtype=bool), 4, "real numbers"),
        (np.full((1, 3, 3), np.nan), 4, "finite"),
        (np.full((1, 3, 3), -np.inf), 4, "finite"),
        (np.zeros((1, 3, 3)), 0, "size must contain positive integers"),
        (np.zeros((1, 3, 3)), (4,), "size must be an int or a pair"),
        (np.zeros((1, 3, 3)), (4.0, 4), "size must contain positive integers"),
    ],
)
def test_errors(maps, size, message):
    with pytest.raises(ValueError, match=message):
        resize_maps(maps, size)


@pytest.mark.parametrize("size", [True, "64", (2, 3, 4), (-1, 2), None])
def test_as_map_size_errors(size):
    with pytest.raises(ValueError, match="output_size must"):
        as_map_size(size)


def test_as_map_size():
    assert as_map_size(5) == (5, 5)
    assert as_map_size((3, np.int64(7))) == (3, 7)
