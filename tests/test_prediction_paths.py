"""Optimised prediction paths give the plain paths' results.

``score_samples_and_anomaly_map`` (one pass) against ``score_samples`` and
``anomaly_map`` (two passes), and ``compile_inference=True`` (torch.compile
with frozen weights, padded last batch) against eager prediction, for both
detectors.
"""

import pickle

import numpy as np
import pytest
import torch

from skflow_ad import CSFlowDetector, UFlowDetector

from .conftest import FAST_UFLOW


@pytest.fixture(scope="module")
def fitted_csflow(small_images):
    from .test_csflow import FAST_CSFLOW, _shallow_trunk

    # A shallow trunk keeps the compiled graph small (EfficientNet-B5 takes minutes to compile on a CPU).
    params = {**FAST_CSFLOW, "image_size": 64, "max_epochs": 1}
    return CSFlowDetector(_shallow_trunk(), **params).fit(small_images)


@pytest.fixture(params=["uflow", "csflow"])
def detector(request, fitted_uflow):
    return fitted_uflow if request.param == "uflow" else request.getfixturevalue("fitted_csflow")


def test_one_pass_equals_the_two_public_methods(detector, small_images):
    scores, maps = detector.score_samples_and_anomaly_map(small_images)
    assert scores.dtype == np.float64 and scores.shape == (len(small_images),)
    assert maps.dtype == np.float32 and maps.shape == small_images.shape
    np.testing.assert_array_equal(scores, detector.score_samples(small_images))
    np.testing.assert_array_equal(maps, detector.anomaly_map(small_images))


def test_a_list_of_sizes_gives_each_images_own_results(detector, small_images):
    # Mixed sizes: every image's map, mask and score equal those of the image scored alone.
    rng = np.random.RandomState(1)
    images = [small_images[0], (rng.rand(40, 36) * 255).astype(np.uint8), small_images[2][:24, :20]]
    maps = detector.anomaly_map(images)
    masks = detector.predict_mask(images, method="threshold")
    scores = detector.score_samples(images)
    assert isinstance(maps, list) and [m.shape for m in maps] == [(32, 32), (40, 36), (24, 20)]
    for image, anomaly_map, mask, score in zip(images, maps, masks, scores):
        alone_score, (alone_map,) = detector.score_samples_and_anomaly_map(image[None])
        np.testing.assert_allclose(anomaly_map, alone_map, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(mask, detector.predict_mask(image[None], method="threshold")[0])
        np.testing.assert_allclose(score, alone_score[0], rtol=1e-5, atol=1e-6)
        assert anomaly_map.std() > 0  # a real map


def test_one_pass_on_images_of_different_sizes(fitted_uflow, small_images):
    images = [small_images[0], np.pad(small_images[1], ((0, 8), (0, 4))), small_images[2]]
    scores, maps = fitted_uflow.score_samples_and_anomaly_map(images)
    assert [m.shape for m in maps] == [(32, 32), (40, 36), (32, 32)]
    np.testing.assert_array_equal(scores, fitted_uflow.score_samples(images))
    for got, expected in zip(maps, fitted_uflow.anomaly_map(images)):
        np.testing.assert_array_equal(got, expected)


def test_one_pass_needs_images(fitted_uflow):
    vectors = UFlowDetector(**{**FAST_UFLOW, "image_size": None}).fit(np.random.RandomState(0).rand(30, 4))
    with pytest.raises(ValueError, match="score_samples_and_anomaly_map needs a detector fitted on images"):
        vectors.score_samples_and_anomaly_map(np.random.RandomState(1).rand(3, 4))


def test_compiled_prediction_matches_eager(detector, small_images):
    compiled = pickle.loads(pickle.dumps(detector)).set_params(compile_inference=True)  # same fitted weights
    images = small_images[:11]  # 8 + 3: the last batch is padded for the compiled graph
    scores, maps = compiled.score_samples_and_anomaly_map(images)
    np.testing.assert_allclose(scores, detector.score_samples(images), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps, detector.anomaly_map(images), rtol=1e-4, atol=1e-5)
    assert compiled._compiled_network_ is not None
    # The compiled graphs stay out of the pickle (they do not pickle); the restored model compiles
    # again on first use, through the path above (not repeated here: a compile costs minutes on CI).
    restored = pickle.loads(pickle.dumps(compiled))
    assert getattr(restored, "_compiled_network_", None) is None and restored.compile_inference is True


def test_compile_failure_is_a_clear_error(fitted_uflow, small_images, monkeypatch):
    def broken_compile(module, **kwargs):
        def call(*args):
            raise OSError("no C++ compiler")
        return call

    det = pickle.loads(pickle.dumps(fitted_uflow)).set_params(compile_inference=True)
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.raises(RuntimeError, match="compile_inference=True: torch.compile failed .*OSError.*compile_inference=False"):
        det.score_samples(small_images)
    det.set_params(compile_inference=False)  # the fitted model is intact
    np.testing.assert_array_equal(det.score_samples(small_images), fitted_uflow.score_samples(small_images))
