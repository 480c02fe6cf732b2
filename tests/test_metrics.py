import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from skflow_ad.metrics import (
    aupimo,
    aupro,
    best_f1,
    dice,
    image_auroc,
    iou,
    mean_dice,
    mean_iou,
    pixel_auroc,
    pixel_best_f1,
    pro_curve,
    region_precision_recall,
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



# --------------------------------------------------------------------------
# Binary masks. Four 4x4 images, worked out by hand:
#
# image  true                 predicted                      I  |T| |P|  IoU   Dice
#   A    rows 0-1 x cols 0-1  rows 1-2 x cols 1-2             1   4   4   1/7   1/4
#   B    row 3                row 3 cols 0-1, and (0, 3)      2   4   3   2/5   4/7
#   C    (normal)             (2, 2)                          0   0   1   0     0
#   D    (normal)             nothing                         0   0   0   1     1
def _mask_example():
    true = np.zeros((4, 4, 4), dtype=bool)
    pred = np.zeros((4, 4, 4), dtype=bool)
    true[0, :2, :2] = True
    pred[0, 1:3, 1:3] = True
    true[1, 3, :] = True
    pred[1, 3, :2] = True
    pred[1, 0, 3] = True
    pred[2, 2, 2] = True
    return true, pred


def test_pooled_iou_and_dice_by_hand():
    true, pred = _mask_example()
    # I = 3, |T| = 8, |P| = 8: union 13.
    assert iou(true, pred) == pytest.approx(3 / 13, rel=1e-15)
    assert dice(true, pred) == pytest.approx(6 / 16, rel=1e-15)
    assert iou(true, true) == 1.0 and dice(true, true) == 1.0
    assert iou(true, ~true) == 0.0 and dice(true, ~true) == 0.0


def test_mean_iou_and_mean_dice_by_hand():
    true, pred = _mask_example()
    assert mean_iou(true, pred) == pytest.approx((1 / 7 + 2 / 5) / 2, rel=1e-15)
    assert mean_iou(true, pred, include_normal=True) == pytest.approx((1 / 7 + 2 / 5 + 0 + 1) / 4, rel=1e-15)
    assert mean_dice(true, pred) == pytest.approx((1 / 4 + 4 / 7) / 2, rel=1e-15)
    assert mean_dice(true, pred, include_normal=True) == pytest.approx((1 / 4 + 4 / 7 + 0 + 1) / 4, rel=1e-15)
    # False alarms on normal images change only the include_normal score.
    quiet = pred.copy()
    quiet[2] = False
    assert mean_iou(true, quiet) == mean_iou(true, pred)
    assert mean_iou(true, quiet, include_normal=True) == pytest.approx((1 / 7 + 2 / 5 + 2) / 4)


def test_mask_metrics_accept_lists_of_sizes_uint8_and_tensors():
    true, pred = _mask_example()
    big_true = np.zeros((5, 7), dtype=np.uint8)
    big_pred = np.zeros((5, 7), dtype=np.uint8)
    big_true[:4, :4] = true[1] * 255
    big_pred[:4, :4] = pred[1]
    big_pred[4, 6] = 1  # one more false positive pixel: image B now has I 2, union 6
    listed_true = [true[0], big_true, true[2], true[3]]
    listed_pred = [pred[0], big_pred, pred[2], pred[3]]
    assert mean_iou(listed_true, listed_pred) == pytest.approx((1 / 7 + 2 / 6) / 2)
    assert iou(listed_true, listed_pred) == pytest.approx(3 / 14)
    assert dice(torch.as_tensor(true), torch.as_tensor(pred)) == pytest.approx(6 / 16)


def test_region_precision_recall_by_hand():
    true, pred = _mask_example()
    scores = region_precision_recall(true, pred)
    # True regions: A's block, B's row (2, both found). Predicted: A's block
    # (correct), B's pair (correct), B's (0, 3) and C's pixel (false).
    assert (scores.precision, scores.recall) == (0.5, 1.0)
    assert (scores.n_true_regions, scores.n_true_found) == (2, 2)
    assert (scores.n_pred_regions, scores.n_pred_correct, scores.n_false_regions) == (4, 2, 2)
    assert scores.n_normal_images == 2
    assert scores.false_regions_per_normal_image == 0.5
    # A's predicted block shares 1 pixel with its true block, B's pair 2.
    strict = region_precision_recall(true, pred, min_overlap=2)
    assert (strict.precision, strict.recall) == (0.25, 0.5)
    assert (strict.n_true_found, strict.n_pred_correct, strict.n_false_regions) == (1, 1, 3)


def test_region_matching_is_many_to_many_with_eight_connectivity():
    true = np.zeros((1, 5, 5), dtype=bool)
    pred = np.zeros((1, 5, 5), dtype=bool)
    true[0, 0, 0] = true[0, 0, 4] = True  # two true regions
    pred[0, 0, :] = True  # one predicted region covering both
    pred[0, 2, 1] = pred[0, 3, 2] = pred[0, 4, 3] = True  # one diagonal region: a false one
    scores = region_precision_recall(true, pred)
    assert (scores.n_true_regions, scores.n_true_found) == (2, 2)
    assert (scores.n_pred_regions, scores.n_pred_correct) == (2, 1)
    assert np.isnan(scores.false_regions_per_normal_image) and scores.n_normal_images == 0
    # Two predicted regions on one true region: both correct.
    true2 = np.zeros((1, 3, 5), dtype=bool)
    true2[0, 1, :] = True
    pred2 = np.zeros((1, 3, 5), dtype=bool)
    pred2[0, :, 0] = pred2[0, :, 4] = True
    both = region_precision_recall(true2, pred2)
    assert (both.precision, both.recall, both.n_pred_regions) == (1.0, 1.0, 2)


def test_region_scores_on_normal_images_only():
    pred = np.zeros((3, 4, 4), dtype=bool)
    pred[0, 0, 0] = pred[0, 3, 3] = pred[2, 1, 1] = True
    scores = region_precision_recall(np.zeros((3, 4, 4), dtype=bool), pred)
    assert scores.precision == 0.0 and np.isnan(scores.recall)
    assert scores.false_regions_per_normal_image == 1.0
    nothing = region_precision_recall(np.zeros((3, 4, 4), dtype=bool), np.zeros((3, 4, 4), dtype=bool))
    assert np.isnan(nothing.precision) and nothing.false_regions_per_normal_image == 0.0


_TRUE, _PRED = _mask_example()


@pytest.mark.parametrize(
    "masks_true, masks_pred, message",
    [
        (_TRUE, _PRED[:3], "masks_true and masks_pred have different numbers of images: 4 and 3"),
        (_TRUE, _PRED[:, :3], r"masks_true\[0\] has shape \(4, 4\) but masks_pred\[0\] has shape \(3, 4\)"),
        (_TRUE, _PRED.astype(np.uint8) * 2, r"masks_pred\[0\] has values \[0, 2\]"),
        (_TRUE, _PRED * 0.5, r"masks_pred\[0\] has values \[0.0, 0.5\]"),
        (_TRUE, _PRED.astype(str), r"masks_pred\[0\] must be boolean or numeric"),
        (_TRUE.astype(np.int64) * 3, _PRED, r"masks_true\[0\] has values \[0, 3\]"),
        ([], [], "masks_true is empty"),
        (_TRUE[None], _PRED[None], r"masks_true must have shape \(n, H, W\)"),
    ],
)
def test_mask_metric_errors(masks_true, masks_pred, message):
    for metric in (iou, mean_iou, dice, mean_dice, region_precision_recall):
        with pytest.raises(ValueError, match=message):
            metric(masks_true, masks_pred)


def test_mask_metric_degenerate_cases_raise():
    empty = np.zeros((2, 3, 3), dtype=bool)
    for metric, name in ((iou, "IoU"), (dice, "Dice coefficient")):
        with pytest.raises(ValueError, match=f"no anomalous pixel: the {name} is 0 / 0"):
            metric(empty, empty)
    pred = empty.copy()
    pred[0, 1, 1] = True
    assert iou(empty, pred) == 0.0
    for metric, name in ((mean_iou, "mean IoU"), (mean_dice, "mean Dice")):
        with pytest.raises(ValueError, match=f"no anomalous image: the {name} over anomalous images"):
            metric(empty, pred)
        assert metric(empty, pred, include_normal=True) == 0.5
        with pytest.raises(ValueError, match="include_normal must be True or False"):
            metric(_TRUE, _PRED, include_normal="yes")
    for min_overlap in (0, 1.5, True):
        with pytest.raises(ValueError, match="min_overlap must be an integer >= 1"):
            region_precision_recall(_TRUE, _PRED, min_overlap=min_overlap)


# --------------------------------------------------------------------------
# AUPIMO. Hand example: two normal 2x2 images, every pixel weighing 1/8 in
# the shared FPR; one anomalous image whose normal pixels (score 100) must
# be ignored.
#
#   normal scores 8, 6, 4, 2 and four 0s -> vertices (threshold: FPR)
#   8: 1/8,  6: 2/8,  4: 3/8,  2: 4/8,  0: 1
#
# With true pixel scores 7, 5, 3, 3 the overlap on each FPR segment is:
#   [1/8, 2/8] at threshold 6: 1/4;  [2/8, 3/8] at 4: 2/4;  [3/8, 4/8] at 2: 1.
def _aupimo_example(true_scores=(7.0, 5.0, 3.0, 3.0)):
    masks = [np.zeros((2, 2), dtype=bool), np.zeros((2, 2), dtype=bool), np.array([[1, 1], [1, 1], [0, 0]], dtype=bool)]
    maps = [
        np.array([[8.0, 4.0], [2.0, 0.0]]),
        np.array([[6.0, 0.0], [0.0, 0.0]]),
        np.array([list(true_scores[:2]), list(true_scores[2:]), [100.0, 100.0]]),
    ]
    return masks, maps


def test_aupimo_by_hand_on_vertices():
    result = aupimo(*_aupimo_example(), fpr_bounds=(1 / 8, 1 / 2))
    expected = (np.log(2) / 4 + np.log(1.5) / 2 + np.log(4 / 3)) / np.log(4)
    assert result.mean == pytest.approx(expected, rel=1e-12)
    assert np.isnan(result.per_image[:2]).all()
    assert result.per_image[2] == pytest.approx(expected, rel=1e-12)
    assert result.fpr_bounds == (0.125, 0.5)


def test_aupimo_tie_counts_half_and_bounds_interpolate_in_log_fpr():
    # A true pixel at 4 ties with a normal pixel: on [2/8, 3/8] the overlap
    # rises linearly in log FPR from T(> 4) = 1/4 to T(>= 4) = 2/4.
    masks, maps = _aupimo_example((7.0, 4.0, 3.0, 3.0))
    expected = (np.log(2) / 4 + np.log(1.5) * 3 / 8 + np.log(4 / 3)) / np.log(4)
    assert aupimo(masks, maps, fpr_bounds=(1 / 8, 1 / 2)).mean == pytest.approx(expected, rel=1e-12)
    # Upper bound 0.3 inside that sloped segment: overlap there
    # 1/4 + 1/4 * log(0.3 / (2/8)) / log(3/2).
    at_upper = 1 / 4 + 1 / 4 * np.log(1.2) / np.log(1.5)
    expected = (np.log(2) / 4 + np.log(1.2) * (1 / 4 + at_upper) / 2) / np.log(0.3 / 0.125)
    assert aupimo(masks, maps, fpr_bounds=(1 / 8, 0.3)).mean == pytest.approx(expected, rel=1e-12)
    # Lower bound 3/16 inside the flat first segment.
    expected = (np.log(4 / 3) / 4 + np.log(1.5) * 3 / 8 + np.log(4 / 3)) / np.log(8 / 3)
    assert aupimo(masks, maps, fpr_bounds=(3 / 16, 1 / 2)).mean == pytest.approx(expected, rel=1e-12)


def test_aupimo_shared_fpr_is_the_mean_of_per_image_rates():
    # Normal images of 2 and 4 pixels: weights 1/4 and 1/8 per pixel, so the
    # vertices are 6: 1/8, 4: 1/8 + 1/4, 0: 1 (a pooled FPR would give 1/6, 2/6).
    masks = [np.zeros((1, 2), dtype=bool), np.zeros((2, 2), dtype=bool), np.ones((1, 2), dtype=bool)]
    maps = [np.array([[4.0, 0.0]]), np.array([[6.0, 0.0], [0.0, 0.0]]), np.array([[5.0, 1.0]])]
    assert aupimo(masks, maps, fpr_bounds=(1 / 8, 3 / 8)).mean == pytest.approx(0.5, rel=1e-12)
    expected = (np.log(3) / 2 + np.log(8 / 3)) / np.log(8)
    assert aupimo(masks, maps, fpr_bounds=(1 / 8, 1.0)).mean == pytest.approx(expected, rel=1e-12)


def test_aupimo_up_to_fpr_one():
    # Two normal 1x3 images: weights 1/6, whose float sum is not exactly 1.
    # Vertices 2.5: 1/6, 2: 2/6, 1.5: 3/6, 1: 4/6, 0.5: 5/6, 0: 1; true
    # pixels 3 and 0.75 give overlap 1/2 up to FPR 4/6, then 1.
    masks = [np.zeros((1, 3), dtype=bool), np.zeros((1, 3), dtype=bool), np.ones((1, 2), dtype=bool)]
    maps = [np.array([[2.0, 1.0, 0.0]]), np.array([[2.5, 1.5, 0.5]]), np.array([[3.0, 0.75]])]
    expected = (np.log(4) / 2 + np.log(1.5)) / np.log(6)
    assert aupimo(masks, maps, fpr_bounds=(1 / 6, 1.0)).mean == pytest.approx(expected, rel=1e-12)


def test_aupimo_perfect_and_hopeless_maps():
    masks, maps = _aupimo_example((9.0, 9.0, 9.0, 9.0))
    assert aupimo(masks, maps, fpr_bounds=(1 / 8, 1.0)).mean == 1.0
    masks, maps = _aupimo_example((-1.0, -1.0, -1.0, -1.0))
    assert aupimo(masks, maps, fpr_bounds=(1 / 8, 1 / 2)).mean == 0.0


def _aupimo_brute_force(masks, maps, lower, upper):
    """Definition-level AUPIMO: every distinct score as a threshold, plain loops."""
    normal_maps = [m for m, k in zip(maps, masks) if not k.any()]
    thresholds = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    shared_fpr = [np.mean([np.mean(m >= t) for m in normal_maps]) for t in thresholds]
    values = []
    for mask, anomaly_map in zip(masks, maps):
        if not mask.any():
            values.append(np.nan)
            continue
        true_scores = anomaly_map[mask]
        points = [(np.log(f), np.mean(true_scores >= t)) for f, t in zip(shared_fpr, thresholds) if f > 0]
        area = 0.0
        for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
            low, high = max(x0, np.log(lower)), min(x1, np.log(upper))
            if high <= low:
                continue
            y_low = y0 + (y1 - y0) * (low - x0) / (x1 - x0)
            y_high = y0 + (y1 - y0) * (high - x0) / (x1 - x0)
            area += (high - low) * (y_low + y_high) / 2
        values.append(area / np.log(upper / lower))
    return np.array(values)


@pytest.mark.parametrize("seed", range(3))
def test_aupimo_matches_brute_force_with_ties_and_sizes(seed):
    rng = np.random.default_rng(seed)
    shapes = [(12, 10), (9, 11), (8, 4), (6, 6), (7, 5)]
    masks = [np.zeros(shape, dtype=bool) for shape in shapes]
    masks[2][1:4, 1:3] = True
    masks[3][0, 0] = masks[3][5, 5] = True
    masks[4][2:, 3:] = True
    # Integer scores: ties within and across images and classes.
    maps = [rng.integers(0, 40, shape) + 12 * mask for shape, mask in zip(shapes, masks)]
    for bounds in [(0.03, 0.3), (0.05, 1.0), (0.03, 0.06)]:
        result = aupimo(masks, maps, fpr_bounds=bounds)
        expected = _aupimo_brute_force(masks, maps, *bounds)
        np.testing.assert_allclose(result.per_image, expected, rtol=1e-10, atol=1e-12)
        assert result.mean == pytest.approx(np.nanmean(expected), rel=1e-10)


def test_aupimo_errors():
    masks, maps = _aupimo_example()
    with pytest.raises(ValueError, match="no anomalous image"):
        aupimo(masks[:2], maps[:2], fpr_bounds=(1 / 8, 1 / 2))
    with pytest.raises(ValueError, match=r"no normal image \(empty mask\)"):
        aupimo(masks[2:], maps[2:], fpr_bounds=(1 / 8, 1 / 2))
    # 8 normal pixels resolve FPR 1/8 at best.
    with pytest.raises(ValueError, match=r"cannot resolve fpr_bounds\[0\] = 0.1: .* 0.125"):
        aupimo(masks, maps, fpr_bounds=(0.1, 0.5))
    with pytest.raises(ValueError, match="cannot resolve"):
        aupimo(masks, maps)  # the default 1e-5 needs 100 000 normal pixels
    constant = [np.zeros_like(anomaly_map) for anomaly_map in maps]
    with pytest.raises(ValueError, match="cannot resolve"):
        aupimo(masks, constant, fpr_bounds=(0.5, 1.0))
    for bounds in [(0.5, 0.1), (0, 0.5), (0.1, 1.5), (0.1,), "0.1", (0.1, True), (0.1, None)]:
        with pytest.raises(ValueError, match="fpr_bounds must be two numbers"):
            aupimo(masks, maps, fpr_bounds=bounds)
    with pytest.raises(ValueError, match=r"anomaly_maps\[0\] contains NaN"):
        aupimo(masks, [np.full((2, 2), np.nan)] + maps[1:], fpr_bounds=(1 / 8, 1 / 2))
