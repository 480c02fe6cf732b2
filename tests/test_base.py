"""The estimator core: validation before work, prediction-time parameters, divergence, extension points."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

import skflow_ad.modes
from skflow_ad import CSFlowDetector, UFlowDetector

from .conftest import FAST_UFLOW


class Processed(Exception):
    """Raised by a stand-in feature extraction: an image would have been processed."""


@pytest.fixture
def no_extraction(monkeypatch):
    calls = []

    def refuse(extractor, images, working_size, *args, **kwargs):
        calls.append(tuple(working_size))
        raise Processed(working_size)

    monkeypatch.setattr(skflow_ad.modes, "extract_features", refuse)
    return calls


def test_a_bad_image_size_fails_before_any_image_is_processed(small_images, no_extraction):
    with pytest.raises(ValueError, match=r"image_size \(40, 40\) does not suit the backbone: .*divisible by its "
                                         r"coarsest stride 16.*e\.g\. image_size=\(32, 32\)"):
        UFlowDetector(**{**FAST_UFLOW, "image_size": 40}).fit(small_images)
    assert no_extraction == []
    with pytest.raises(Processed):  # a good size goes on to the features
        UFlowDetector(**{**FAST_UFLOW, "image_size": (32, 48)}).fit(small_images)
    assert no_extraction == [(32, 48)]


def test_image_size_true_is_rejected(small_images, no_extraction):
    with pytest.raises(TypeError, match="image_size must be an int .* got True"):
        UFlowDetector(**{**FAST_UFLOW, "image_size": True}).fit(small_images)
    assert no_extraction == []


def test_csflow_image_size_none_is_the_papers_768(small_images, no_extraction):
    trunk = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
    with pytest.raises(Processed):
        CSFlowDetector(trunk, pretrained=False, image_size=None, max_epochs=1).fit(small_images)
    assert no_extraction == [(768, 768)]


@pytest.mark.parametrize(
    "name, value",
    [("batch_size", 0), ("batch_size", -1), ("compile_inference", "no"), ("mask_method", "nfa"),
     ("nfa_log_epsilon", np.inf), ("min_region_area", 0)],
)
def test_prediction_time_parameters_are_validated(fitted_uflow, small_images, name, value):
    det = pickle.loads(pickle.dumps(fitted_uflow))
    expected = det.score_samples(small_images[:2])
    det.set_params(**{name: value})
    with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of UFlowDetector must be"):
        det.predict_mask(small_images[:2])
    with pytest.raises(InvalidParameterError, match=f"'{name}'"):
        det.score_samples(small_images[:2])
    det.set_params(**{name: fitted_uflow.get_params()[name]})
    np.testing.assert_array_equal(det.score_samples(small_images[:2]), expected)


@pytest.mark.parametrize(
    "detector, knob",
    [(lambda: UFlowDetector(**FAST_UFLOW), "Lower learning_rate or affine_clamp."),
     (lambda: CSFlowDetector(torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), pretrained=False, image_size=32,
                             cross_conv_hidden_channels=8, max_epochs=1, random_state=0),
      "Lower learning_rate or clamp.")],
)
def test_non_finite_training_scores_raise_and_keep_the_previous_model(small_images, monkeypatch, detector, knob):
    det = detector().fit(small_images)
    before = det.score_samples(small_images[:2])
    original = skflow_ad.modes.ImageMode.training_statistics

    def diverged(self, detector, features):
        scores, pixels = original(self, detector, features)
        return np.full_like(scores, np.inf), pixels

    monkeypatch.setattr(skflow_ad.modes.ImageMode, "training_statistics", diverged)
    with pytest.raises(FloatingPointError, match=f"training diverged: 12 training scores are not finite. {knob}"):
        det.fit(small_images)
    np.testing.assert_array_equal(det.score_samples(small_images[:2]), before)


def test_a_non_finite_pixel_threshold_raises(small_images, monkeypatch):
    original = skflow_ad.modes.ImageMode.training_statistics
    monkeypatch.setattr(skflow_ad.modes.ImageMode, "training_statistics",
                        lambda self, d, f: (original(self, d, f)[0], np.array([np.nan, 1.0])))
    with pytest.raises(FloatingPointError, match="pixel_threshold_ is nan. Lower learning_rate or affine_clamp."):
        UFlowDetector(**FAST_UFLOW).fit(small_images)


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda X: X[0], "For one image pass X\\[None\\]"),
        (lambda X: (x for x in X), "generator.*list\\(X\\)"),
        (lambda X: __import__("scipy").sparse.csr_matrix(X[0]), "sparse matrices are not images"),
    ],
)
def test_misleading_inputs_get_errors_that_say_what_to_do(fitted_uflow, small_images, make_bad, message):
    with pytest.raises((TypeError, ValueError), match=message):
        fitted_uflow.score_samples(make_bad(small_images))


def test_dataframes_given_to_an_image_detector(fitted_uflow):
    pandas = pytest.importorskip("pandas")
    with pytest.raises(ValueError, match="a DataFrame is a table, not images"):
        fitted_uflow.score_samples(pandas.DataFrame(np.zeros((3, 4))))


def test_plausible_inputs_are_accepted(fitted_uflow, small_images, tmp_path):
    from PIL import Image

    expected = fitted_uflow.score_samples(small_images[:3])
    paths = []
    for i, image in enumerate(small_images[:3]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    np.testing.assert_allclose(fitted_uflow.score_samples(paths), expected, rtol=1e-6)
    np.testing.assert_allclose(fitted_uflow.score_samples([str(p) for p in paths]), expected, rtol=1e-6)
    tensor = torch.from_numpy(small_images[:3].astype(np.float32) / 255).requires_grad_()
    np.testing.assert_allclose(fitted_uflow.score_samples(tensor), expected, rtol=1e-5)
    np.testing.assert_allclose(fitted_uflow.score_samples(small_images[:3].astype(">f4") / 255), expected, rtol=1e-5)


def test_extension_points_rebuild_what_fit_trained(fitted_uflow, small_images):
    features = fitted_uflow.extract_features(small_images)
    assert [tuple(f.shape[1:]) for f in features] == fitted_uflow.feature_shapes_
    flow = fitted_uflow.build_flow()
    fitted_uflow.make_trainer().fit(flow, features)
    for name, value in fitted_uflow.flow_.state_dict().items():
        torch.testing.assert_close(flow.state_dict()[name], value)
    with pytest.raises(TypeError, match="unexpected option 'epochs'"):
        fitted_uflow.make_trainer(epochs=3)
    assert fitted_uflow.make_trainer(max_epochs=1).max_epochs == 1


def test_inspect_equals_the_separate_methods(fitted_uflow, small_images):
    det = pickle.loads(pickle.dumps(fitted_uflow)).set_params(mask_method="threshold")
    images = small_images[:5]
    result = det.inspect(images)
    np.testing.assert_array_equal(result.scores, det.score_samples(images))
    np.testing.assert_array_equal(result.labels, det.predict(images))
    np.testing.assert_array_equal(result.anomaly_maps, det.anomaly_map(images))
    np.testing.assert_array_equal(result.masks, det.predict_mask(images))
    assert result.log_nfa is None and result.mask_method == "threshold"
    regions = det.predict_regions(images)
    assert [len(r) for r in result.regions] == [len(r) for r in regions]
    for image_regions, mask, anomaly_map in zip(regions, result.masks, result.anomaly_maps):
        assert sum(r.area for r in image_regions) == mask.sum()
        for region in image_regions:
            assert region.margin == pytest.approx(region.max_anomaly - det.pixel_threshold_)
    tree = det.inspect(images, method="tree_nfa")
    np.testing.assert_array_equal(tree.log_nfa, det.log_nfa_map(images, method="tree_nfa"))
    np.testing.assert_array_equal(tree.masks, tree.log_nfa < det.nfa_log_epsilon)


def test_min_region_area_drops_specks_from_masks_and_regions(fitted_uflow, small_images):
    det = pickle.loads(pickle.dumps(fitted_uflow)).set_params(mask_method="threshold", pixel_quantile=0.5)
    det.pixel_threshold_ = float(np.quantile(det.anomaly_map(small_images[:4]), 0.9))
    masks = det.predict_mask(small_images[:4])
    # Drop the smallest region(s) whatever the fitted maps look like.
    smallest = min(r.area for image in det.predict_regions(small_images[:4]) for r in image)
    det.set_params(min_region_area=smallest + 1)
    kept = det.predict_mask(small_images[:4])
    assert kept.sum() < masks.sum() and not (kept & ~masks).any()
    assert all(r.area > smallest for image in det.predict_regions(small_images[:4]) for r in image)
    assert sum(r.area for image in det.predict_regions(small_images[:4]) for r in image) == kept.sum()


def test_log_nfa_map_methods(fitted_uflow, small_images):
    block = fitted_uflow.log_nfa_map(small_images[:2], method="block_nfa")
    tree = fitted_uflow.log_nfa_map(small_images[:2])  # mask_method's default: the tree
    assert block.shape == tree.shape == (2, 32, 32) and block.dtype == tree.dtype == np.float32
    assert not np.array_equal(block, tree)
    with pytest.raises(ValueError, match="method must be one of 'tree_nfa', 'block_nfa' or None; got 'threshold'"):
        fitted_uflow.log_nfa_map(small_images[:2], method="threshold")
