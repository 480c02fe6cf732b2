"""Scorers and normal-only splitters of skflow_ad.model_selection."""

import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.metrics import average_precision_score
from sklearn.model_selection import GridSearchCV, PredefinedSplit, cross_val_score, cross_validate

from skflow_ad import UFlowDetector, metrics
from skflow_ad.model_selection import (
    NormalOnlyKFold,
    NormalOnlyShuffleSplit,
    aupro_scorer,
    get_scorer,
    get_scorer_names,
    image_auroc_scorer,
    image_average_precision_scorer,
    image_best_f1_scorer,
    make_image_scorer,
    make_pixel_scorer,
    pixel_auroc_scorer,
    pixel_best_f1_scorer,
)

from .conftest import FAST_UFLOW

# 7 normal then 5 anomalous samples, in the three label conventions and as masks.
LABELS_PM1 = np.array([1] * 7 + [-1] * 5)
LABELS_01 = (LABELS_PM1 == -1).astype(int)
LABELS_BOOL = LABELS_PM1 == -1


def _masks_for(labels_pm1, size=8):
    masks = np.zeros((len(labels_pm1), size, size), dtype=bool)
    for index in np.flatnonzero(labels_pm1 == -1):
        masks[index, index % 4 : index % 4 + 3, 2:5] = True
    return masks


MASKS = _masks_for(LABELS_PM1)


class _DistanceToMeanDetector(OutlierMixin, BaseEstimator):
    """Deterministic stand-in detector: distance of each pixel to the mean training image."""

    def __init__(self, power=1.0):
        self.power = power

    def fit(self, X, y=None):
        self.mean_image_ = np.asarray(X, dtype=np.float64).mean(axis=0)
        return self

    def anomaly_map(self, X):
        return np.abs(np.asarray(X, dtype=np.float64) - self.mean_image_) ** self.power

    def score_samples(self, X):
        return -self.anomaly_map(X).max(axis=(1, 2))


def _images_from_masks(masks, seed=0):
    """Noise images with brighter defects where the masks are True."""
    rng = np.random.RandomState(seed)
    return rng.rand(*masks.shape) * 0.5 + masks * rng.uniform(0.2, 0.5, size=masks.shape)


# --------------------------------------------------------------------- NormalOnlyKFold
@pytest.mark.parametrize("y", [LABELS_PM1, LABELS_01, LABELS_BOOL, MASKS, list(MASKS)])
def test_kfold_trains_on_normal_only_and_tests_cover_every_sample_once(y):
    cv = NormalOnlyKFold(n_splits=3)
    splits = list(cv.split(np.zeros((12, 8, 8)), y))
    assert len(splits) == cv.get_n_splits() == 3
    tested = np.concatenate([test for _, test in splits])
    assert np.array_equal(np.sort(tested), np.arange(12))
    for train, test in splits:
        assert (LABELS_PM1[train] == 1).all()
        assert set(LABELS_PM1[test]) == {1, -1}
        assert not set(train) & set(test)
        # Every normal sample outside the test fold is trained on.
        assert np.array_equal(np.sort(np.concatenate([train, test[LABELS_PM1[test] == 1]])), np.arange(7))
    # Folds are balanced: 7 normal -> 3, 2, 2 and 5 anomalous -> 2, 2, 1.
    assert [len(test) for _, test in splits] == [5, 4, 3]


def test_kfold_same_folds_for_labels_and_masks():
    from_labels = list(NormalOnlyKFold(3, shuffle=True, random_state=1).split(None, LABELS_PM1))
    from_masks = list(NormalOnlyKFold(3, shuffle=True, random_state=1).split(None, MASKS))
    for (train_a, test_a), (train_b, test_b) in zip(from_labels, from_masks):
        assert np.array_equal(train_a, train_b) and np.array_equal(test_a, test_b)


def test_kfold_shuffle_is_reproducible_with_an_int_seed():
    def folds(**kwargs):
        return [tuple(test) for _, test in NormalOnlyKFold(3, **kwargs).split(None, LABELS_PM1)]

    assert folds(shuffle=True, random_state=0) == folds(shuffle=True, random_state=0)
    assert folds(shuffle=True, random_state=0) != folds(shuffle=True, random_state=1)
    assert folds(shuffle=True, random_state=0) != folds()
    assert folds() == [(0, 1, 2, 7, 8), (3, 4, 9, 10), (5, 6, 11)]


@pytest.mark.parametrize(
    "y, match",
    [
        (None, "needs y to tell normal from anomalous"),
        (np.ones(12, dtype=int) * 0, "single label value 0"),
        (np.full(12, -1), "single label value -1"),
        (np.zeros(12, dtype=bool), "only normal samples"),
        (np.zeros((12, 8, 8), dtype=bool), "without any anomalous pixel"),
        (np.ones((12, 8, 8), dtype=bool), "no image is normal"),
        (np.array([1, 2] * 6), "match no known convention"),
        (np.zeros((12, 3)), r"has shape \(12, 3\); expected image labels"),
    ],
)
def test_kfold_rejects_bad_targets(y, match):
    with pytest.raises(ValueError, match=match):
        next(NormalOnlyKFold(2).split(np.zeros((12, 8, 8)), y))


def test_kfold_needs_enough_normal_and_anomalous_samples():
    y = np.array([1, 1, 1, -1, -1, -1, -1])
    with pytest.raises(ValueError, match=r"needs at least 4 normal samples, one per test fold; y has 3"):
        next(NormalOnlyKFold(4).split(None, y))
    with pytest.raises(ValueError, match=r"needs at least 4 anomalous samples.*y has 3"):
        next(NormalOnlyKFold(4).split(None, -y))


def test_kfold_checks_x_and_y_lengths():
    with pytest.raises(ValueError, match="X has 5 samples but y has 12"):
        next(NormalOnlyKFold(2).split(np.zeros((5, 8, 8)), LABELS_PM1))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_splits=1), ValueError, "at least 2"),
        (dict(n_splits=2.0), TypeError, "must be an integer"),
        (dict(n_splits=True), TypeError, "must be an integer"),
        (dict(shuffle="yes"), TypeError, "shuffle must be True or False"),
        (dict(random_state=0), ValueError, "no effect since shuffle is False"),
    ],
)
def test_kfold_validates_its_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        NormalOnlyKFold(**kwargs)


def test_kfold_repr():
    assert repr(NormalOnlyKFold(3, shuffle=True, random_state=0)) == (
        "NormalOnlyKFold(n_splits=3, random_state=0, shuffle=True)"
    )


# --------------------------------------------------------------- NormalOnlyShuffleSplit
def test_shuffle_split_holds_out_normal_samples_and_tests_on_all_anomalies():
    cv = NormalOnlyShuffleSplit(n_splits=4, test_size=2, random_state=0)
    splits = list(cv.split(np.zeros((12, 8, 8)), MASKS))
    assert len(splits) == cv.get_n_splits() == 4
    anomalous = np.flatnonzero(LABELS_PM1 == -1)
    for train, test in splits:
        assert (LABELS_PM1[train] == 1).all() and len(train) == 5
        assert np.array_equal(test[LABELS_PM1[test] == -1], anomalous)
        assert (LABELS_PM1[test] == 1).sum() == 2
        assert not set(train) & set(test)
    again = list(NormalOnlyShuffleSplit(n_splits=4, test_size=2, random_state=0).split(None, LABELS_01))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))
    assert len({tuple(test) for _, test in splits}) > 1


def test_shuffle_split_errors():
    with pytest.raises(ValueError, match="cannot split the 7 normal samples with test_size=7"):
        next(NormalOnlyShuffleSplit(2, test_size=7).split(None, LABELS_PM1))
    with pytest.raises(ValueError, match="needs y"):
        next(NormalOnlyShuffleSplit(2).split(np.zeros(12)))
    with pytest.raises(ValueError, match="at least 1"):
        NormalOnlyShuffleSplit(0)


# ------------------------------------------------------------------------ scorers
@pytest.fixture(scope="module")
def fitted_stub():
    images = _images_from_masks(MASKS)
    return _DistanceToMeanDetector().fit(images[:7]), images


@pytest.mark.parametrize("y", [LABELS_PM1, LABELS_01, LABELS_BOOL, MASKS])
def test_image_scorers_equal_the_metrics(fitted_stub, y):
    detector, images = fitted_stub
    anomaly_scores = -detector.score_samples(images)
    assert image_auroc_scorer(detector, images, y) == metrics.image_auroc(LABELS_PM1, anomaly_scores)
    assert image_best_f1_scorer(detector, images, y) == metrics.best_f1(LABELS_PM1, anomaly_scores)[0]
    assert image_average_precision_scorer(detector, images, y) == pytest.approx(
        average_precision_score(LABELS_BOOL, anomaly_scores)
    )


def test_pixel_scorers_equal_the_metrics(fitted_stub):
    detector, images = fitted_stub
    maps = detector.anomaly_map(images)
    assert pixel_auroc_scorer(detector, images, MASKS) == metrics.pixel_auroc(MASKS, maps)
    assert aupro_scorer(detector, images, MASKS) == metrics.aupro(MASKS, maps)
    assert pixel_best_f1_scorer(detector, images, list(MASKS)) == metrics.pixel_best_f1(MASKS, maps)[0]
    custom = make_pixel_scorer("aupro", max_fpr=0.05, n_thresholds=50)
    assert custom(detector, images, MASKS) == metrics.aupro(MASKS, maps, max_fpr=0.05, n_thresholds=50)


def test_pixel_scorer_needs_masks_as_y(fitted_stub):
    detector, images = fitted_stub
    with pytest.raises(ValueError, match=r"needs ground-truth masks as y.*got shape \(12,\)"):
        pixel_auroc_scorer(detector, images, LABELS_PM1)
    with pytest.raises(ValueError, match="got None"):
        aupro_scorer(detector, images, None)


def test_scorers_need_the_right_method():
    class ScoresOnly(BaseEstimator):
        def score_samples(self, X):
            return np.zeros(len(X))

    with pytest.raises(TypeError, match="needs an estimator with a anomaly_map method; ScoresOnly has none"):
        pixel_auroc_scorer(ScoresOnly(), np.zeros((12, 8, 8)), MASKS)
    with pytest.raises(TypeError, match="score_samples"):
        image_auroc_scorer(object(), np.zeros((12, 8, 8)), LABELS_PM1)
    with pytest.raises(ValueError, match="y is None"):
        image_auroc_scorer(ScoresOnly(), np.zeros((12, 8, 8)), None)


def test_scorer_factories_validate_their_arguments():
    with pytest.raises(ValueError, match=r"metric must be one of \['auroc', 'average_precision', 'best_f1'\]"):
        make_image_scorer("aupro")
    with pytest.raises(ValueError, match="metric must be one of"):
        make_pixel_scorer("roc")
    with pytest.raises(ValueError, match="max_fpr only apply to metric='aupro'"):
        make_pixel_scorer("auroc", max_fpr=0.1)
    with pytest.raises(ValueError, match=r"max_fpr must be a number in \(0, 1\]"):
        make_pixel_scorer("aupro", max_fpr=1.5)
    with pytest.raises(ValueError, match="n_thresholds must be None or an integer >= 2"):
        make_pixel_scorer("aupro", n_thresholds=1)


def test_scorer_registry_and_repr():
    assert get_scorer_names() == sorted(
        ["aupro", "image_auroc", "image_average_precision", "image_best_f1", "pixel_auroc", "pixel_best_f1"]
    )
    assert get_scorer("aupro") is aupro_scorer
    assert repr(get_scorer("image_auroc")) == "make_image_scorer(metric='auroc')"
    assert repr(make_pixel_scorer("aupro", max_fpr=0.05)) == "make_pixel_scorer(metric='aupro', max_fpr=0.05)"
    with pytest.raises(ValueError, match="Unknown scorer 'roc_auc'.*sklearn.metrics.get_scorer_names"):
        get_scorer("roc_auc")
    with pytest.raises(TypeError, match="must be a str"):
        get_scorer(image_auroc_scorer)
    restored = pickle.loads(pickle.dumps(aupro_scorer))
    assert repr(restored) == repr(aupro_scorer)


def test_stub_in_grid_search_with_every_scorer():
    images = _images_from_masks(MASKS)
    search = GridSearchCV(
        _DistanceToMeanDetector(),
        {"power": [1.0, 2.0]},
        scoring={name: get_scorer(name) for name in get_scorer_names()},
        refit=False,
        cv=NormalOnlyKFold(3, shuffle=True, random_state=0),
        error_score="raise",
    ).fit(images, MASKS)
    for name in get_scorer_names():
        assert np.isfinite(search.cv_results_[f"mean_test_{name}"]).all()
    scores = cross_val_score(
        _DistanceToMeanDetector(), images, LABELS_PM1, scoring=image_auroc_scorer,
        cv=NormalOnlyShuffleSplit(3, test_size=2, random_state=0), error_score="raise",
    )
    assert scores.shape == (3,)


# ----------------------------------------------------------- with a real detector
#: The shared fast settings, one epoch: these tests check the plumbing, not the accuracy.
ONE_EPOCH_UFLOW = dict(FAST_UFLOW, max_epochs=1)


@pytest.fixture(scope="module")
def surface_subset(surfaces):
    """8 normal training images then 4 anomalous test images, with their masks."""
    anomalous = np.flatnonzero(surfaces.y_test == -1)[:4]
    X = np.concatenate([surfaces.X_train[:8], surfaces.X_test[anomalous]])
    masks = np.concatenate([np.zeros((8,) + X.shape[1:], dtype=bool), surfaces.masks_test[anomalous]])
    return X, masks


def test_grid_search_uflow_with_normal_only_folds(surface_subset):
    X, masks = surface_subset
    search = GridSearchCV(
        UFlowDetector(**ONE_EPOCH_UFLOW),
        {"flow_steps": [1, 2]},
        scoring={"image_auroc": image_auroc_scorer, "aupro": aupro_scorer},
        cv=NormalOnlyKFold(2, shuffle=True, random_state=0),
        refit=False,  # refitting would train on all of X, anomalies included
        error_score="raise",
    ).fit(X, masks)
    assert [params["flow_steps"] for params in search.cv_results_["params"]] == [1, 2]
    for name in ("image_auroc", "aupro"):
        for fold in range(2):
            scores = search.cv_results_[f"split{fold}_test_{name}"]
            assert ((0.0 <= scores) & (scores <= 1.0)).all()
    assert search.cv_results_["rank_test_image_auroc"].min() == 1


def test_cross_validate_uflow_scores_equal_metrics_on_the_same_split(surface_subset):
    X, masks = surface_subset
    scoring = {"image_auroc": image_auroc_scorer, "pixel_auroc": pixel_auroc_scorer, "aupro": aupro_scorer}
    result = cross_validate(
        UFlowDetector(**ONE_EPOCH_UFLOW, flow_steps=1), X, masks, scoring=scoring,
        cv=NormalOnlyKFold(2, shuffle=True, random_state=0), error_score="raise",
        return_estimator=True, return_indices=True,
    )
    for fold, (detector, test) in enumerate(zip(result["estimator"], result["indices"]["test"])):
        assert not masks[result["indices"]["train"][fold]].any()
        labels = np.where(masks[test].any(axis=(1, 2)), -1, 1)
        maps = detector.anomaly_map(X[test])
        assert result["test_image_auroc"][fold] == metrics.image_auroc(labels, -detector.score_samples(X[test]))
        assert result["test_pixel_auroc"][fold] == metrics.pixel_auroc(masks[test], maps)
        assert result["test_aupro"][fold] == metrics.aupro(masks[test], maps)


def test_predefined_train_test_split_works_with_the_scorers():
    # The benchmark protocol: train on a fixed normal set, test on a fixed test set.
    images = _images_from_masks(MASKS)
    test_fold = np.where(np.arange(12) < 4, -1, 0)  # first 4 normal images train
    scores = cross_val_score(
        _DistanceToMeanDetector(), images, MASKS, scoring=aupro_scorer,
        cv=PredefinedSplit(test_fold), error_score="raise",
    )
    detector = _DistanceToMeanDetector().fit(images[:4])
    assert scores[0] == metrics.aupro(MASKS[4:], detector.anomaly_map(images[4:]))
