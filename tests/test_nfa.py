import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import binom

from skflow_ad.nfa import (
    _LOG10_PROBABILITY_FLOOR,
    _box_sum_reflect,
    _log_nfa_reference,
    log_nfa,
    nfa_mask,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _normal_latents(n_images, n_channels, sizes, seed, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n_images, n_channels, size, size, generator=generator).to(device)
        for size in sizes
    ]


def _plant_square_anomaly(latents, image_index, start, stop, output_side, factor=3.0):
    """Scale the latents of a square ``[start, stop)^2`` (output pixels) at every scale."""
    for z in latents:
        ratio = z.shape[-1] / output_side
        low, high = int(start * ratio), int(stop * ratio)
        z[image_index, :, low:high, low:high] *= factor
    mask = torch.zeros((len(latents[0]), output_side, output_side), dtype=torch.bool)
    mask[image_index, start:stop, start:stop] = True
    return mask


@pytest.mark.parametrize("device", DEVICES)
def test_planted_anomaly_is_segmented(device):
    output_side = 64
    latents = _normal_latents(2, 8, (32, 16, 8), seed=0, device=device)
    true_mask = _plant_square_anomaly(latents, 0, 20, 44, output_side)

    predicted = nfa_mask(latents, (output_side, output_side)).cpu().numpy()
    true_mask = true_mask.numpy()

    recall = (predicted & true_mask).sum() / true_mask.sum()
    iou = (predicted & true_mask).sum() / (predicted | true_mask).sum()
    assert recall > 0.8
    assert iou > 0.7
    # The counting window blurs the boundary by about one latent pixel, so
    # false positives are only measured beyond a 4-pixel margin.
    near_patch = ndimage.binary_dilation(true_mask, structure=np.ones((1, 9, 9)))
    false_positive_rate = (predicted & ~near_patch).sum() / (~near_patch).sum()
    assert false_positive_rate < 0.01
    assert not predicted[1].any()


def test_anomaly_has_lower_log_nfa_than_background():
    latents = _normal_latents(1, 8, (32, 16, 8), seed=1)
    true_mask = _plant_square_anomaly(latents, 0, 20, 44, 64)[0]
    log_nfa_map = log_nfa(latents, 64)[0]
    assert log_nfa_map[true_mask].median() < -1.0
    assert log_nfa_map[~true_mask].median() > 0.0


def test_pure_noise_gives_almost_no_detections():
    latents = _normal_latents(4, 16, (32, 16, 8), seed=2)
    detections = nfa_mask(latents, (64, 64))
    assert detections.float().mean() < 0.001


@pytest.mark.parametrize(
    "window_size, probability_threshold", [(7, 0.5), (5, 0.9), (11, 0.3)]
)
def test_fast_matches_reference(window_size, probability_threshold):
    latents = _normal_latents(2, 6, (16, 8, 4), seed=3)
    _plant_square_anomaly(latents, 1, 8, 20, 32)
    kwargs = dict(window_size=window_size, probability_threshold=probability_threshold)

    fast = log_nfa(latents, (32, 32), **kwargs)
    reference = _log_nfa_reference(latents, (32, 32), **kwargs)

    np.testing.assert_allclose(fast.numpy(), reference, rtol=1e-5, atol=1e-4)


def test_fast_matches_reference_non_square_and_tiny_maps():
    # Windows wider than the map exercise the repeated reflection; a 1-pixel
    # wide scale exercises the degenerate reflection.
    generator = torch.Generator().manual_seed(4)
    latents = [
        torch.randn(1, 3, 5, 7, generator=generator),
        torch.randn(1, 5, 2, 3, generator=generator),
        torch.randn(1, 2, 1, 1, generator=generator),
    ]
    fast = log_nfa(latents, (13, 17), window_size=11)
    reference = _log_nfa_reference(latents, (13, 17), window_size=11)
    np.testing.assert_allclose(fast.numpy(), reference, rtol=1e-5, atol=1e-4)


def test_single_scale_value_by_hand():
    # 1 channel, 3x3 map, 3x3 window: with every entry large, k = 9 = n_trials
    # and the empty binomial tail is clamped to the floor.
    latents = [torch.full((1, 1, 3, 3), 10.0)]
    result = log_nfa(latents, (3, 3), window_size=3)
    expected = _LOG10_PROBABILITY_FLOOR + math.log10(9)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6)
    assert torch.isfinite(result).all()

    # No large entry: k = 0, P(Binomial(9, 0.5) > 0) = 1 - 0.5**9.
    latents = [torch.zeros((1, 1, 3, 3))]
    result = log_nfa(latents, (3, 3), window_size=3)
    expected = math.log10(1 - 0.5**9) + math.log10(9)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6)


def test_channel_average_is_floored():
    # Channel 0 is large everywhere, channel 1 nowhere: k = 9 / 2 = 4.5,
    # which the binomial tail evaluates at floor(k) = 4.
    z = torch.zeros((1, 2, 3, 3))
    z[:, 0] = 10.0
    result = log_nfa([z], (3, 3), window_size=3)
    expected = binom.logsf(4, 9, 0.5) / math.log(10) + math.log10(9)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6)


def test_box_sum_reflect_matches_numpy_padding():
    values = torch.randint(0, 5, (2, 4, 6))
    for half_width in (1, 2, 5):
        padded = np.pad(
            values.numpy(), ((0, 0), (half_width,) * 2, (half_width,) * 2), mode="reflect"
        )
        side = 2 * half_width + 1
        expected = np.zeros(values.shape, dtype=np.int64)
        for row in range(values.shape[1]):
            for col in range(values.shape[2]):
                expected[:, row, col] = padded[:, row : row + side, col : col + side].sum(
                    axis=(1, 2)
                )
        np.testing.assert_array_equal(_box_sum_reflect(values, half_width).numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_dtypes_and_device(device):
    latents = _normal_latents(3, 4, (16, 8), seed=5, device=device)
    latents = [z.requires_grad_() for z in latents]

    log_nfa_map = log_nfa(latents, (20, 24))
    mask = nfa_mask(latents, 20)

    assert log_nfa_map.shape == (3, 20, 24)
    assert log_nfa_map.dtype == torch.float32
    assert log_nfa_map.device.type == device
    assert not log_nfa_map.requires_grad
    assert mask.shape == (3, 20, 20)
    assert mask.dtype == torch.bool
    assert mask.device.type == device


def test_half_precision_latents_are_accepted():
    latents = _normal_latents(1, 4, (16, 8), seed=6)
    full = log_nfa(latents, 16)
    half = log_nfa([z.half() for z in latents], 16)
    assert half.dtype == torch.float32
    # A few entries near tau may flip in half precision.
    assert torch.isclose(full, half, atol=1e-4).float().mean() > 0.9


def test_log_epsilon_moves_the_threshold():
    latents = _normal_latents(1, 4, (16, 8), seed=7)
    log_nfa_map = log_nfa(latents, 16)
    for log_epsilon in (-2.0, 0.0, 1.5):
        mask = nfa_mask(latents, 16, log_epsilon=log_epsilon)
        assert torch.equal(mask, log_nfa_map < log_epsilon)
    assert nfa_mask(latents, 16, log_epsilon=100.0).all()


@pytest.mark.parametrize(
    "latents, kwargs, message",
    [
        ([], {}, "non-empty list"),
        (torch.zeros(1, 1, 4, 4), {}, "non-empty list"),
        ([np.zeros((1, 1, 4, 4))], {}, r"latents\[0\] must be a torch.Tensor"),
        ([torch.zeros(1, 4, 4)], {}, r"latents\[0\] must be 4-d"),
        ([torch.zeros(1, 1, 4, 4, dtype=torch.int64)], {}, "floating dtype"),
        ([torch.zeros(1, 0, 4, 4)], {}, "empty channel or spatial"),
        (
            [torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 2, 2)],
            {},
            "same number of images",
        ),
        ([torch.zeros(1, 1, 4, 4)], {"window_size": 0}, "window_size must be an integer >= 1"),
        ([torch.zeros(1, 1, 4, 4)], {"window_size": 7.0}, "window_size must be an integer"),
        ([torch.zeros(1, 1, 4, 4)], {"window_size": True}, "window_size must be an integer"),
        (
            [torch.zeros(1, 1, 4, 4)],
            {"probability_threshold": 1.0},
            "probability_threshold must be a number strictly between 0 and 1",
        ),
        (
            [torch.zeros(1, 1, 4, 4)],
            {"probability_threshold": 0},
            "probability_threshold must be a number strictly between 0 and 1",
        ),
    ],
)
def test_argument_errors(latents, kwargs, message):
    with pytest.raises(ValueError, match=message):
        log_nfa(latents, (8, 8), **kwargs)
    with pytest.raises(ValueError, match=message):
        nfa_mask(latents, (8, 8), **kwargs)
    with pytest.raises(ValueError, match=message):
        _log_nfa_reference(latents, (8, 8), **kwargs)


@pytest.mark.parametrize("output_size", [(8,), (8, 0), (8.0, 8), "88", -1])
def test_output_size_errors(output_size):
    with pytest.raises(ValueError, match="output_size"):
        log_nfa([torch.zeros(1, 1, 4, 4)], output_size)


@pytest.mark.parametrize("log_epsilon", [float("nan"), float("inf"), "0", None])
def test_log_epsilon_errors(log_epsilon):
    with pytest.raises(ValueError, match="log_epsilon"):
        nfa_mask([torch.zeros(1, 1, 4, 4)], 8, log_epsilon=log_epsilon)
