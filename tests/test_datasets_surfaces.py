"""skflow_ad.datasets.surfaces: generated surfaces with planted defects and exact masks."""

import numpy as np
import pytest

from skflow_ad.datasets import DEFECT_AREA_RANGE, DEFECT_TYPES, SURFACE_TEXTURES, make_surface_defects, make_surface_train_test
from skflow_ad.datasets.surfaces import _generate_surfaces

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
