import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from skflow_ad.metrics import (
    aupro,
    best_f1,
    image_auroc,
    pixel_auroc,
    pixel_best_f1,
    pro_curve,
)


# --------------------------------------------------------------------------
# Hand-worked AUPRO example: two 4x4 images, three regions, 24 normal pixels.
#
# Image A: region R1 = 2x2 block at the top left.
# Image B: region R2 = (0,0),(0,1); region R3 = (2,2),(3,3), one region
#          under 8-connectivity (two under 4-connectivity).
# Normal pixels score 0 except A(3,3)=4.5, B(3,0)=2.5, B(1,3)=1.5.
#
# threshold  R1    R2   R3   PRO    false positives  FPR
#   5        2/4   0    0    1/6    0                0
#   4.5                      1/6    1                1/24
#   4        2/4   1/2  0    1/3    1                1/24
#   3        2/4   1/2  1    2/3    1                1/24
#   2.5                      2/3    2                1/12
#   2        3/4   1/2  1    3/4    2                1/12
#   1.5                      3/4    3                1/8
#   1        3/4   1    1    11/12  3                1/8
#   0        1     1    1    1      24               1
def _hand_example():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2, :2] = True
    masks[1, 0, :2] = True
    masks[1, 2, 2] = masks[1, 3, 3] = True
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = maps[0, 0, 1] = 5.0
    maps[0, 1, 0] = 2.0
    maps[0, 3, 3] = 4.5
    maps[1, 0, 0], maps[1, 0, 1] = 4.0, 1.0
    maps[1, 2, 2] = maps[1, 3, 3] = 3.0
    maps[1, 3, 0], maps[1, 1, 3] = 2.5, 1.5
    return masks, maps


HAND_FPR = [0, 0, 1 / 24, 1 / 24, 1 / 24, 1 / 12, 1 / 12, 1 / 8, 1 / 8, 1]
HAND_PRO = [0, 1 / 6, 1 / 6, 1 / 3, 2 / 3, 2 / 3, 3 / 4, 3 / 4, 11 / 12, 1]
# Areas under the curve above, worked out segment by segment.
HAND_AREA_TO_EIGHTH = 1 / 24 * 1 / 6 + 1 / 24 * 2 / 3 + 1 / 24 * 3 / 4  # = 19/288


def test_pro_curve_by_hand():
    fpr, pro = pro_curve(*_hand_example())
    np.testing.assert_allclose(fpr, HAND_FPR)
    np.testing.assert_allclose(pro, HAND_PRO)


@pytest.mark.parametrize(
    "max_fpr, expected",
    [
        (1 / 12, 5 / 12),  # limit on a vertex: (1/144 + 1/36) / (1/12)
        (1 / 8, 19 / 36),  # (19/288) / (1/8)
        # Interpolated at 0.3 between (1/8, 11/12) and (1, 1): PRO = 14/15.
        (0.3, (HAND_AREA_TO_EIGHTH + 0.175 * (11 / 12 + 14 / 15) / 2) / 0.3),
        (1.0, 521 / 576),
    ],
)
def test_aupro_by_hand(max_fpr, expected):
    masks, maps = _hand_example()
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, rel=1e-12)


def test_aupro_uses_eight_connectivity():
    masks, maps = _hand_example()
    # Split R3 into two 4-connected regions by hand: the value must change,
    # proving the diagonal pair was one region.
    masks_apart = masks.copy()
    maps_apart = maps.copy()
    masks_apart[1, 3, 3], maps_apart[1, 3, 3] = False, 0.0
    masks_apart[1, 3, 1], maps_apart[1, 3, 1] = True, 3.0
    assert aupro(masks, maps) == pytest.approx(aupro(masks_apart, maps_apart))


def test_aupro_thresholds_on_the_score_grid_match_exact():
    # linspace(0, 5, 11) holds every score of the example: same polyline.
    masks, maps = _hand_example()
    for max_fpr in (1 / 8, 0.3, 1.0):
        assert aupro(masks, maps, max_fpr=max_fpr, n_thresholds=11) == pytest.approx(
            aupro(masks, maps, max_fpr=max_fpr)
        )


def _aupro_brute_force(masks, maps, max_fpr):
    """Definition-level AUPRO: loops over thresholds and regions."""
    regions = []
    for mask, anomaly_map in zip(masks, maps):
        labels, n_regions = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [anomaly_map[labels == label] for label in range(1, n_regions + 1)]
    normal_scores = np.concatenate([m[~k] for m, k in zip(maps, masks)])
    all_scores = np.concatenate([m.ravel() for m in maps])
    thresholds = np.concatenate([[np.inf], np.unique(all_scores)[::-1]])
    points = [
        (
            np.mean(normal_scores >= threshold),
            np.mean([np.mean(region >= threshold) for region in regions]),
        )
        for threshold in thresholds
    ]
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (max_fpr - x0) / (x1 - x0) * (y1 - y0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


@pytest.mark.parametrize("seed", range(4))
def test_aupro_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 12, 10), dtype=bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 0, 0] = True
    masks[1, 6:9, 1:3] = True
    masks[2, 8:, 6:] = True
    masks[2, 1, 1] = masks[2, 2, 2] = True
    # Integer scores: many ties, between and within classes.
    maps = rng.integers(0, 12, masks.shape) + 4 * masks
    for max_fpr in (0.05, 0.3, 1.0):
        assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(
            _aupro_brute_force(masks, maps, max_fpr), rel=1e-10
        )


def test_aupro_perfect_and_inverted_maps():
    masks, _ = _hand_example()
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, masks.astype(float) * 7 + 3) == pytest.approx(1.0)
    assert aupro(masks, -masks.astype(float)) == pytest.approx(0.0)
    # Constant map: the diagonal from (0, 0) to (1, 1), area 0.3**2 / 2.
    assert aupro(masks, np.zeros(masks.shape)) == pytest.approx(0.15)


def test_aupro_accepts_lists_of_different_sizes_and_uint8_masks():
    masks, maps = _hand_example()
    # Second image enlarged to 5x6 with extra normal pixels of varied scores.
    rng = np.random.default_rng(5)
    big_mask = np.zeros((5, 6), dtype=np.uint8)
    big_mask[:4, :4] = masks[1] * np.uint8(255)
    big_map = rng.integers(0, 6, (5, 6)).astype(float)
    big_map[:4, :4] = maps[1]
    listed_masks = [masks[0].astype(np.uint8) * 255, big_mask]
    listed_maps = [maps[0], big_map]
    expected = _aupro_brute_force([m > 0 for m in listed_masks], listed_maps, 0.3)
    assert aupro(listed_masks, listed_maps) == pytest.approx(expected, rel=1e-10)
    assert aupro([m > 0 for m in listed_masks], listed_maps) == pytest.approx(expected)


def test_pro_curve_is_monotone_from_origin_to_one():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 16, 16)) > 0.9
    maps = rng.random((4, 16, 16)).astype(np.float32) + masks
    for n_thresholds in (None, 50):
        fpr, pro = pro_curve(masks, maps, n_thresholds=n_thresholds)
        assert (fpr[0], pro[0]) == (0.0, 0.0)
        assert (fpr[-1], pro[-1]) == (1.0, 1.0)
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)


# --------------------------------------------------------------------------
# AUROC


def test_image_auroc_by_hand():
    # Anomalous 0.35 beats 0.1 but not 0.4; anomalous 0.8 beats both: 3/4.
    y_true = [1, 1, -1, -1]
    assert image_auroc(y_true, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # A tie counts one half: (0.5 + 1 + 2) / 4.
    assert image_auroc(y_true, [0.1, 0.4, 0.4, 0.8]) == pytest.approx(0.875)


def test_image_auroc_perfect_and_inverted():
    y_true = np.array([1, -1, 1, -1, 1])
    scores = np.array([0.0, 2.0, 0.5, 3.0, 1.0])
    assert image_auroc(y_true, scores) == 1.0
    assert image_auroc(y_true, -scores) == 0.0
    assert image_auroc(y_true, np.zeros(5)) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_agrees_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    is_anomalous = rng.random(200) < 0.3
    scores = rng.integers(0, 15, 200) + 3 * is_anomalous + rng.random(200) * (seed % 2)
    y_true = np.where(is_anomalous, -1, 1)
    assert image_auroc(y_true, scores) == pytest.approx(
        roc_auc_score(is_anomalous, scores), abs=1e-12
    )


def test_label_conventions_give_identical_values():
    rng = np.random.default_rng(1)
    is_anomalous = np.array([False, True, False, True, True, False, False, True])
    scores = rng.normal(size=8)
    conventions = [
        np.where(is_anomalous, -1, 1),
        is_anomalous.astype(int),
        is_anomalous,
        is_anomalous.astype(float),
        list(np.where(is_anomalous, -1, 1)),
        torch.as_tensor(is_anomalous),
    ]
    aurocs = {image_auroc(labels, scores) for labels in conventions}
    f1s = {best_f1(labels, scores) for labels in conventions}
    assert len(aurocs) == 1 and len(f1s) == 1


def test_pixel_auroc_by_hand_with_lists_of_sizes():
    masks = [np.array([[1, 0], [0, 0]]), np.array([[0, 1, 0]])]
    maps = [np.array([[0.9, 0.1], [0.5, 0.2]]), np.array([[0.3, 0.6, 0.7]])]
    # Anomalous 0.9 beats all 5 normal pixels, 0.6 beats 4 of them: 9/10.
    assert pixel_auroc(masks, maps) == pytest.approx(0.9)


def test_pixel_auroc_agrees_with_sklearn_and_mask_formats():
    rng = np.random.default_rng(2)
    masks = rng.random((3, 8, 9)) > 0.8
    maps = rng.random((3, 8, 9)) + 0.3 * masks
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    for mask_format in (masks, masks.astype(np.uint8), masks.astype(np.uint8) * 255):
        assert pixel_auroc(mask_format, maps) == pytest.approx(expected)
    assert pixel_auroc(torch.as_tensor(masks), torch.as_tensor(maps)) == pytest.approx(
        expected
    )
    assert pixel_auroc(masks, -maps) == pytest.approx(1 - expected)


def test_pixel_auroc_single_image():
    mask = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    assert pixel_auroc(mask, mask * 2.0) == 1.0


# --------------------------------------------------------------------------
# F1


def test_best_f1_by_hand():
    # threshold: TP FP -> F1 = 2TP / (TP + FP + 3)
    #   0.9: 1 0 -> 0.5;   0.8: 1 1 -> 0.4;   0.4: 2 1 -> 2/3
    #   0.3: 3 1 -> 6/7;   0.2: 3 2 -> 3/4;   0.1: 3 3 -> 2/3
    y_true = [0, 0, 1, 1, 0, 1]
    scores = [0.1, 0.2, 0.3, 0.9, 0.8, 0.4]
    f1, threshold = best_f1(y_true, scores)
    assert f1 == pytest.approx(6 / 7)
    assert threshold == 0.3


def test_best_f1_perfect_and_ties():
    assert best_f1([1, -1, 1, -1], [0.1, 0.7, 0.2, 0.9]) == (1.0, 0.7)
    # All scores tied: everything is predicted anomalous, F1 = 2*2 / (2+2+2).
    f1, threshold = best_f1([1, -1, 1, -1], [0.5, 0.5, 0.5, 0.5])
    assert f1 == pytest.approx(2 / 3) and threshold == 0.5


def test_best_f1_threshold_reproduces_f1():
    rng = np.random.default_rng(3)
    is_anomalous = rng.random(100) < 0.2
    scores = rng.normal(size=100) + is_anomalous
    f1, threshold = best_f1(is_anomalous, scores)
    predicted = scores >= threshold
    true_positives = np.sum(predicted & is_anomalous)
    recomputed = 2 * true_positives / (predicted.sum() + is_anomalous.sum())
    assert f1 == pytest.approx(recomputed)


def test_pixel_best_f1_by_hand():
    masks = [np.array([[1, 0], [0, 0]]), np.array([[0, 1, 0]])]
    maps = [np.array([[0.9, 0.1], [0.5, 0.2]]), np.array([[0.3, 0.6, 0.7]])]
    # 0.9: TP 1, FP 0 -> 2/3;  0.6: TP 2, FP 1 -> 4/5.
    f1, threshold = pixel_best_f1(masks, maps)
    assert f1 == pytest.approx(0.8) and threshold == 0.6


# --------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "y_true, scores, message",
    [
        ([1, 2, 1, 2], [0.1, 0.2, 0.3, 0.4], r"labels \[1, 2\], which match no known"),
        ([-1, 0, 1], [0.1, 0.2, 0.3], "match no known convention"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "single label value 1"),
        ([0, 0], [0.1, 0.2], "single label value 0"),
        ([True, True], [0.1, 0.2], "only anomalous samples"),
        (["normal", "anomalous"], [0.1, 0.2], "expected numeric labels"),
        ([[1, -1]], [0.1, 0.2], "y_true must be 1-d"),
        ([], [], "y_true is empty"),
        ([1, -1, 1], [0.1, 0.2], "different lengths: 3 and 2"),
        ([1, -1], [0.1, np.nan], "anomaly_scores contains NaN"),
        ([1, -1], [0.1, np.inf], "anomaly_scores contains infinite"),
        ([1, -1], [[0.1, 0.2]], "anomaly_scores must be 1-d"),
        ([1, -1], ["a", "b"], "anomaly_scores must contain real numbers"),
    ],
)
def test_image_level_errors(y_true, scores, message):
    with pytest.raises(ValueError, match=message):
        image_auroc(y_true, scores)
    with pytest.raises(ValueError, match=message):
        best_f1(y_true, scores)


_MASKS, _MAPS = _hand_example()


@pytest.mark.parametrize(
    "masks, maps, message",
    [
        (_MASKS, _MAPS[:1], "different numbers of images: 2 and 1"),
        (_MASKS, _MAPS[:, :3], r"masks_true\[0\] has shape \(4, 4\) but anomaly_maps\[0\]"),
        (_MASKS.astype(np.uint8) * 128, _MAPS, r"masks_true\[0\] has values \[0, 128\]"),
        (_MASKS.astype(float) * 0.5, _MAPS, r"masks_true\[0\] has values \[0.0, 0.5\]"),
        (np.where(_MASKS, 255, 1 - np.eye(4, dtype=int)), _MAPS, "masks must be boolean"),
        (np.zeros((2, 4, 4), dtype=bool), _MAPS, "no anomalous pixel"),
        (np.ones((2, 4, 4), dtype=bool), _MAPS, "no normal pixel"),
        (_MASKS, np.where(_MASKS, np.nan, _MAPS), r"anomaly_maps\[0\] contains NaN"),
        (_MASKS[None], _MAPS[None], r"masks_true must have shape \(n, H, W\)"),
        ([_MASKS[0], _MASKS], [_MAPS[0], _MAPS], r"masks_true\[1\] must be 2-d"),
        ([], [], "masks_true is empty"),
        (np.zeros((2, 0, 4), dtype=bool), np.zeros((2, 0, 4)), "masks_true is empty"),
    ],
)
def test_pixel_level_errors(masks, maps, message):
    for metric in (pixel_auroc, aupro, pro_curve, pixel_best_f1):
        with pytest.raises(ValueError, match=message):
            metric(masks, maps)


@pytest.mark.parametrize("max_fpr", [0, -0.1, 1.5, "0.3", True])
def test_aupro_max_fpr_errors(max_fpr):
    with pytest.raises(ValueError, match="max_fpr must be a number in"):
        aupro(*_hand_example(), max_fpr=max_fpr)


@pytest.mark.parametrize("n_thresholds", [1, 0, 2.5, True])
def test_n_thresholds_errors(n_thresholds):
    with pytest.raises(ValueError, match="n_thresholds must be None or an integer >= 2"):
        aupro(*_hand_example(), n_thresholds=n_thresholds)
