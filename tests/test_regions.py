import csv
import io
import json

import numpy as np
import pytest

from skflow_ad.regions import (
    RECORD_FIELDS,
    Region,
    find_regions,
    label_regions,
    regions_to_records,
    remove_small_regions,
)


# --------------------------------------------------------------------------
# Hand-made image, 5 x 6, three regions under 8-connectivity:
#
#   row 0:  A A . . . .      A = label 1: (0,0) (0,1) (1,0)
#   row 1:  A . . . B .      B = label 2: (1,4) (2,3), touching by a corner
#   row 2:  . . . B . .      C = label 3: (4,5)
#   row 3:  . . . . . .
#   row 4:  . . . . . C
#
# Map values (dyadic, so means are exact): A 0.5, 0.75, 0.25 (max 0.75,
# mean 0.5); B 1.0, 0.5 (max 1.0, mean 0.75); C 0.875; background 0.125.
# log NFA minima: A -3, B -1, C -2.
def _hand_image():
    mask = np.zeros((5, 6), dtype=bool)
    anomaly_map = np.full((5, 6), 0.125)
    log_nfa = np.zeros((5, 6))
    for (row, col), value, nfa in [
        ((0, 0), 0.5, -3.0),
        ((0, 1), 0.75, -1.0),
        ((1, 0), 0.25, -0.5),
        ((1, 4), 1.0, -1.0),
        ((2, 3), 0.5, 0.5),
        ((4, 5), 0.875, -2.0),
    ]:
        mask[row, col] = True
        anomaly_map[row, col] = value
        log_nfa[row, col] = nfa
    return mask, anomaly_map, log_nfa


REGION_A = dict(label=1, area=3, bbox=(0, 0, 2, 2), centroid=(1 / 3, 1 / 3), max_anomaly=0.75, mean_anomaly=0.5)
REGION_B = dict(label=2, area=2, bbox=(1, 3, 3, 5), centroid=(1.5, 3.5), max_anomaly=1.0, mean_anomaly=0.75)
REGION_C = dict(label=3, area=1, bbox=(4, 5, 5, 6), centroid=(4.0, 5.0), max_anomaly=0.875, mean_anomaly=0.875)


def test_label_regions_by_hand():
    mask, _, _ = _hand_image()
    labels, n_regions = label_regions(mask)
    expected = np.zeros((5, 6), dtype=int)
    expected[0, 0] = expected[0, 1] = expected[1, 0] = 1
    expected[1, 4] = expected[2, 3] = 2
    expected[4, 5] = 3
    assert n_regions == 3
    np.testing.assert_array_equal(labels, expected)


def test_find_regions_by_hand_ordered_by_max_value():
    mask, anomaly_map, _ = _hand_image()
    regions = find_regions(mask, anomaly_map)
    assert regions == [Region(**REGION_B), Region(**REGION_C), Region(**REGION_A)]
    # Centroid of A is (1/3, 1/3): compare as floats, not exact.
    assert regions[2].centroid == pytest.approx((1 / 3, 1 / 3))


def test_find_regions_with_log_nfa_orders_by_significance():
    mask, anomaly_map, log_nfa = _hand_image()
    regions = find_regions(mask, anomaly_map, log_nfa=log_nfa)
    assert [region.label for region in regions] == [1, 3, 2]
    assert [region.log_nfa for region in regions] == [-3.0, -2.0, -1.0]
    assert all(region.margin is None for region in regions)


def test_find_regions_with_threshold_gives_margins():
    mask, anomaly_map, _ = _hand_image()
    regions = find_regions(mask, anomaly_map, threshold=0.5)
    assert [region.label for region in regions] == [2, 3, 1]
    assert [region.margin for region in regions] == [0.5, 0.375, 0.25]
    assert all(region.log_nfa is None for region in regions)


def test_ties_break_by_max_value_then_label():
    mask = np.zeros((3, 7), dtype=bool)
    mask[1, [0, 2, 4, 6]] = True  # four one-pixel regions, labels 1..4
    anomaly_map = np.zeros((3, 7))
    anomaly_map[1, [0, 2, 4, 6]] = [2.0, 5.0, 5.0, 1.0]
    assert [r.label for r in find_regions(mask, anomaly_map)] == [2, 3, 1, 4]
    log_nfa = np.zeros((3, 7))
    log_nfa[1, [0, 2, 4, 6]] = [-4.0, -1.0, -1.0, -4.0]
    # Equal log NFA: higher max first (1 before 4); then label (2 before 3).
    assert [r.label for r in find_regions(mask, anomaly_map, log_nfa=log_nfa)] == [1, 4, 2, 3]


def test_min_area_drops_specks_but_not_from_the_mask():
    mask, anomaly_map, _ = _hand_image()
    before = mask.copy()
    regions = find_regions(mask, anomaly_map, min_area=2)
    assert regions == [Region(**REGION_B), Region(**REGION_A)]
    np.testing.assert_array_equal(mask, before)
    assert find_regions(mask, anomaly_map, min_area=4) == []


def test_remove_small_regions_matches_min_area():
    mask, anomaly_map, _ = _hand_image()
    cleaned = remove_small_regions(mask, 3)
    expected = np.zeros_like(mask)
    expected[0, 0] = expected[0, 1] = expected[1, 0] = True
    np.testing.assert_array_equal(cleaned, expected)
    assert cleaned is not mask and mask.sum() == 6
    np.testing.assert_array_equal(remove_small_regions(mask, 1), mask)
    # Removing region A renumbers the others; all else is identical.
    without_a = mask.copy()
    without_a[0, :2] = without_a[1, 0] = False
    kept = find_regions(remove_small_regions(without_a, 2), anomaly_map)
    assert kept == [Region(**{**REGION_B, "label": 1})]


def test_empty_mask_gives_no_region():
    assert find_regions(np.zeros((4, 4), dtype=bool), np.ones((4, 4))) == []
    assert label_regions(np.zeros((4, 4), dtype=bool))[1] == 0


def test_integer_maps_and_float32_values():
    mask, anomaly_map, _ = _hand_image()
    as_float32 = find_regions(mask, anomaly_map.astype(np.float32))
    assert as_float32 == find_regions(mask, anomaly_map)
    assert all(type(region.max_anomaly) is float for region in as_float32)
    counts = find_regions(mask, (anomaly_map * 8).astype(np.int64))
    assert [region.max_anomaly for region in counts] == [8.0, 7.0, 6.0]


# --------------------------------------------------------------------------
# Records


def test_regions_to_records_rows_and_formats():
    mask, anomaly_map, log_nfa = _hand_image()
    per_image = [find_regions(mask, anomaly_map, log_nfa=log_nfa), [], find_regions(mask, anomaly_map, min_area=3)]
    records = regions_to_records(per_image, image_ids=["a.png", "b.png", "c.png"])
    assert len(records) == 4
    assert [(r["image"], r["rank"], r["label"]) for r in records] == [
        ("a.png", 1, 1), ("a.png", 2, 3), ("a.png", 3, 2), ("c.png", 1, 1),
    ]
    assert all(tuple(record) == RECORD_FIELDS for record in records)
    assert records[0] == {
        "image": "a.png", "rank": 1, "label": 1, "area": 3, "row0": 0, "col0": 0, "row1": 2, "col1": 2,
        "centroid_row": pytest.approx(1 / 3), "centroid_col": pytest.approx(1 / 3),
        "max_anomaly": 0.75, "mean_anomaly": 0.5, "log_nfa": -3.0, "margin": None,
    }
    assert json.loads(json.dumps(records))[1]["log_nfa"] == -2.0
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RECORD_FIELDS)
    writer.writeheader()
    writer.writerows(records)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert rows[3]["image"] == "c.png" and rows[3]["area"] == "3" and rows[3]["margin"] == ""


def test_regions_to_records_default_ids_are_indices():
    mask, anomaly_map, _ = _hand_image()
    records = regions_to_records([[], find_regions(mask, anomaly_map, min_area=2)])
    assert [(r["image"], r["rank"]) for r in records] == [(1, 1), (1, 2)]


def test_regions_to_records_errors():
    mask, anomaly_map, _ = _hand_image()
    regions = find_regions(mask, anomaly_map)
    with pytest.raises(ValueError, match="image_ids has 1 entries but regions_per_image has 2 images"):
        regions_to_records([regions, []], image_ids=["a"])
    with pytest.raises(TypeError, match=r"regions_per_image\[0\]\[1\] is a dict, expected a Region"):
        regions_to_records([[regions[0], regions[1].to_dict()]])
    with pytest.raises(TypeError, match=r"regions_per_image\[1\] must be a list of Region"):
        regions_to_records([regions, regions[0]])
    with pytest.raises(TypeError, match="one list of Region per image"):
        regions_to_records(regions[0])


# --------------------------------------------------------------------------
# Errors


_MASK, _MAP, _LOG_NFA = _hand_image()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(mask=_MASK.astype(np.uint8)), TypeError, "mask must be a boolean array .* got dtype uint8"),
        (dict(mask=_MASK[None]), ValueError, r"mask must be 2-d of shape \(H, W\) \(one image\), got shape \(1, 5, 6\)"),
        (dict(anomaly_map=_MAP[:, :5]), ValueError, r"anomaly_map has shape \(5, 5\) but mask has shape \(5, 6\)"),
        (dict(anomaly_map=np.where(_MASK, np.nan, _MAP)), ValueError, "anomaly_map contains NaN"),
        (dict(anomaly_map=np.where(_MASK, np.inf, _MAP)), ValueError, "anomaly_map contains infinite values"),
        (dict(anomaly_map=_MAP.astype(str)), ValueError, "anomaly_map must contain real numbers"),
        (dict(log_nfa=_LOG_NFA[:4]), ValueError, r"log_nfa has shape \(4, 6\) but mask"),
        (dict(log_nfa=np.full((5, 6), np.nan)), ValueError, "log_nfa contains NaN"),
        (dict(log_nfa=_LOG_NFA, threshold=0.5), ValueError, "pass log_nfa or threshold, not both"),
        (dict(threshold=np.nan), ValueError, "threshold must be a finite real number"),
        (dict(threshold="0.5"), ValueError, "threshold must be a finite real number"),
        (dict(min_area=0), ValueError, r"min_area must be an integer >= 1 \(pixels\), got 0"),
        (dict(min_area=2.5), ValueError, "min_area must be an integer >= 1"),
        (dict(min_area=True), ValueError, "min_area must be an integer >= 1"),
    ],
)
def test_find_regions_errors(kwargs, error, message):
    arguments = {"mask": _MASK, "anomaly_map": _MAP, **kwargs}
    with pytest.raises(error, match=message):
        find_regions(arguments.pop("mask"), arguments.pop("anomaly_map"), **arguments)


def test_log_nfa_may_be_infinite():
    log_nfa = np.where(_MASK, -np.inf, 0.0)
    assert find_regions(_MASK, _MAP, log_nfa=log_nfa)[0].log_nfa == -np.inf


def test_label_and_remove_errors():
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        label_regions(_MASK.astype(float))
    with pytest.raises(ValueError, match="mask must be 2-d"):
        remove_small_regions(np.zeros(4, dtype=bool), 2)
    with pytest.raises(ValueError, match="min_area must be an integer >= 1"):
        remove_small_regions(_MASK, -1)
