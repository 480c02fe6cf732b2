"""FeatureStandardizer, StandardizedExtractor and the detectors' feature_normalization options."""

import copy
import pickle

import numpy as np
import pytest
import torch

import skflow_ad
from skflow_ad import CSFlowDetector, UFlowDetector
from skflow_ad.deploy import ExportedDetector
from skflow_ad.features import (
    FeatureStandardizer,
    ImagePyramidFeatures,
    StandardizedExtractor,
    TimmFeaturePyramid,
)
from skflow_ad.modes import ImageMode
from skflow_ad.trainer import FlowTrainer

from .conftest import FAST_UFLOW

SHAPES = [(4, 6, 5), (8, 3, 2)]


def _maps(n=40, seed=0):
    """Maps with a different mean and spread at every channel and position."""
    g = torch.Generator().manual_seed(seed)
    maps = []
    for c, h, w in SHAPES:
        offset = 5.0 * torch.randn(c, h, w, generator=g)
        spread = 0.1 + 3.0 * torch.rand(c, h, w, generator=g)
        maps.append(offset + spread * torch.randn(n, c, h, w, generator=g))
    return maps


def _clone(maps):
    return [m.clone() for m in maps]


def test_position_mode_gives_mean_0_std_1_at_every_position():
    standardised = FeatureStandardizer(SHAPES, "position").fit(_maps())
    for maps in standardised:
        torch.testing.assert_close(maps.mean(0), torch.zeros(maps.shape[1:]), atol=1e-5, rtol=0)
        torch.testing.assert_close(maps.std(0), torch.ones(maps.shape[1:]), atol=1e-5, rtol=0)


def test_channel_mode_gives_mean_0_std_1_per_channel_only():
    standardised = FeatureStandardizer(SHAPES, "channel").fit(_maps())
    for maps in standardised:
        torch.testing.assert_close(maps.mean((0, 2, 3)), torch.zeros(maps.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(maps.std((0, 2, 3)), torch.ones(maps.shape[1]), atol=1e-5, rtol=0)
        # positions keep their differences: one mean per channel cannot centre them all
        assert maps.mean(0).std() > 0.5


def test_forward_applies_to_new_features_what_fit_did_to_the_training_ones():
    raw = _maps()
    standardizer = FeatureStandardizer(SHAPES, "position")
    fitted = standardizer.fit(_clone(raw))
    for again, once in zip(standardizer(raw), fitted):
        torch.testing.assert_close(again, once, atol=0, rtol=0)
    # a fixed affine map: per-position (x - mean) / std with the training statistics
    mean, std = raw[0].double().mean(0), raw[0].double().std(0)
    new = _maps(n=3, seed=1)
    expected = (new[0].double() - mean) / std
    torch.testing.assert_close(standardizer(new)[0].double(), expected, atol=1e-5, rtol=1e-5)


def test_fit_standardises_in_place_and_keeps_the_dtype():
    half = [m.half() for m in _maps()]
    out = FeatureStandardizer(SHAPES, "position").fit(half)
    assert all(o is h and o.dtype == torch.float16 for o, h in zip(out, half))
    torch.testing.assert_close(out[0].float().mean(0), torch.zeros(SHAPES[0]), atol=5e-3, rtol=0)


def test_inference_tensors_as_the_feature_cache_holds_them_are_standardised():
    with torch.inference_mode():
        cached = _maps()
    out = FeatureStandardizer(SHAPES, "position").fit(cached)
    torch.testing.assert_close(out[1].std(0), torch.ones(SHAPES[1]), atol=1e-5, rtol=0)


def test_a_constant_feature_stays_finite():
    maps = _maps()
    maps[0][:, 1] = 3.0
    out = FeatureStandardizer(SHAPES, "position").fit(maps)
    assert torch.isfinite(out[0]).all()
    assert float(out[0][:, 1].abs().max()) == 0.0


def test_unfitted_is_the_identity_and_state_dict_has_the_declared_shapes():
    raw = _maps()
    for again, before in zip(FeatureStandardizer(SHAPES, "position")(raw), raw):
        torch.testing.assert_close(again, before, atol=0, rtol=0)
    fitted = FeatureStandardizer(SHAPES, "position")
    fitted.fit(_clone(raw))
    assert {k: tuple(v.shape) for k, v in fitted.state_dict().items()} == {
        "mean_0": (4, 6, 5), "std_0": (4, 6, 5), "mean_1": (8, 3, 2), "std_1": (8, 3, 2)}
    assert {tuple(v.shape) for v in FeatureStandardizer(SHAPES, "channel").state_dict().values()} == {
        (4, 1, 1), (8, 1, 1)}
    loaded = FeatureStandardizer(SHAPES, "position")
    loaded.load_state_dict(fitted.state_dict())  # strict: the shapes follow from the arguments
    for a, b in zip(loaded(raw), fitted(raw)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bad_mode_and_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"mode must be one of \('channel', 'position'\); got 'pixel'"):
        FeatureStandardizer(SHAPES, "pixel")
    with pytest.raises(ValueError, match=r"do not match the declared \[\(4, 6, 5\), \(8, 3, 2\)\]"):
        FeatureStandardizer(SHAPES, "position").fit(_maps()[:1])


def test_standardized_extractor_declares_the_wrapped_shapes():
    inner = TimmFeaturePyramid("resnet18", pretrained=False)
    wrapped = StandardizedExtractor(inner, "position", (64, 32))
    for size in [(64, 32), (32, 48)]:
        assert wrapped.feature_shapes(size) == inner.feature_shapes(size)
    assert (wrapped.strides, wrapped.mean, wrapped.std) == (inner.strides, inner.mean, inner.std)
    assert [tuple(b.shape) for b in wrapped.standardizer.buffers()][::2] == inner.feature_shapes((64, 32))


# ------------------------------------------------------------ UFlowDetector
def _recorded_fit(estimator, images):
    """``(estimator fitted, features it trained on, its training scores from the cache)``."""
    trained_on, training_scores = [], []
    fit, statistics = FlowTrainer.fit, ImageMode.training_statistics

    def recording_fit(self, flow, features):
        trained_on.extend(f.double().clone() for f in features)
        return fit(self, flow, features)

    def recording_statistics(self, detector, features):
        scores, pixels = statistics(self, detector, features)
        training_scores.append(scores)
        return scores, pixels

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FlowTrainer, "fit", recording_fit)
        patch.setattr(ImageMode, "training_statistics", recording_statistics)
        estimator.fit(images)
    return estimator, trained_on, training_scores[0]


@pytest.fixture(scope="module")
def position_fit(small_images):
    """A ``"layer+position"`` fit, with the features it trained on and its training scores from the cache."""
    return _recorded_fit(UFlowDetector(**FAST_UFLOW, feature_normalization="layer+position"), small_images)


def test_training_features_are_standardised_per_position(position_fit):
    _, features, _ = position_fit
    assert len(features) == 3
    for maps in features:
        zeros = torch.zeros(maps.shape[1:], dtype=torch.float64)
        torch.testing.assert_close(maps.mean(0), zeros, atol=1e-5, rtol=0)
        torch.testing.assert_close(maps.std(0), zeros + 1, atol=1e-4, rtol=0)


def test_cached_and_new_image_paths_agree(position_fit, small_images):
    # offset_ comes from scores of the cached features; score_samples extracts the
    # features again through extractor_: both must see the same standardisation.
    det, _, training_scores = position_fit
    np.testing.assert_allclose(det.score_samples(small_images), training_scores, rtol=1e-6, atol=1e-7)


def test_statistics_travel_in_model_files_and_pickles(position_fit, small_images, tmp_path):
    det = position_fit[0]
    state = det.extractor_.state_dict()
    assert [tuple(state[f"standardizer.mean_{s}"].shape) for s in range(3)] == det.feature_shapes_
    assert float(state["standardizer.std_0"].min()) != 1.0  # fitted, not the identity it starts as
    path = tmp_path / "model.skad"
    det.save(path)
    for loaded in (skflow_ad.load(path), pickle.loads(pickle.dumps(det))):
        np.testing.assert_array_equal(loaded.score_samples(small_images), det.score_samples(small_images))
        np.testing.assert_array_equal(loaded.anomaly_map(small_images[:2]), det.anomaly_map(small_images[:2]))
        for name, value in state.items():
            torch.testing.assert_close(loaded.extractor_.state_dict()[name], value, atol=0, rtol=0)


def test_the_option_changes_the_scores_and_layer_keeps_the_plain_extractor(position_fit, small_images):
    layer = UFlowDetector(**FAST_UFLOW, feature_normalization="layer").fit(small_images)
    assert isinstance(layer.extractor_, TimmFeaturePyramid)
    assert not any("standardizer" in k for k in layer.extractor_.state_dict())
    difference = position_fit[0].score_samples(small_images) - layer.score_samples(small_images)
    assert np.abs(difference).max() > 0.02
    assert UFlowDetector().feature_normalization == "layer+position"


@pytest.mark.parametrize("bad", ["position", "batch", None, 1])
def test_bad_feature_normalization_is_rejected(small_images, bad):
    with pytest.raises(ValueError, match="'feature_normalization' parameter of UFlowDetector must be a str among"):
        UFlowDetector(**FAST_UFLOW, feature_normalization=bad).fit(small_images)


# ------------------------------------------------------------ CSFlowDetector
def _shallow_trunk():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, 2, 1),
    )


def _csflow(normalization):
    return CSFlowDetector(_shallow_trunk(), pretrained=False, image_size=(64, 48), feature_normalization=normalization,
                          cross_conv_hidden_channels=8, max_epochs=2, batch_size=8, random_state=0)


@pytest.fixture(scope="module")
def csflow_position_fit(small_images):
    """A CS-Flow ``"position"`` fit with the features it trained on and its training scores from the cache."""
    return _recorded_fit(_csflow("position"), small_images)


def test_csflow_position_standardises_every_scale_per_position_and_keeps_the_paths_equal(
    csflow_position_fit, small_images
):
    det, features, training_scores = csflow_position_fit
    assert det.feature_shapes_ == [(8, 8, 6), (8, 4, 3), (8, 2, 2)]
    assert [tuple(f.shape[1:]) for f in features] == det.feature_shapes_
    for maps in features:
        zeros = torch.zeros(maps.shape[1:], dtype=torch.float64)
        torch.testing.assert_close(maps.mean(0), zeros, atol=1e-5, rtol=0)
        torch.testing.assert_close(maps.std(0), zeros + 1, atol=1e-4, rtol=0)
    # offset_ comes from the cached features, score_samples from new passes through extractor_
    np.testing.assert_allclose(det.score_samples(small_images), training_scores, rtol=1e-6, atol=1e-7)


def test_csflow_position_statistics_travel_in_pickles(csflow_position_fit, small_images):
    # (a user trunk has no model file; the file path rebuilds the extractor from the same hook)
    det = csflow_position_fit[0]
    assert isinstance(det.extractor_, StandardizedExtractor)
    assert isinstance(det.extractor_.wrapped, ImagePyramidFeatures)
    state = det.extractor_.state_dict()
    assert [tuple(state[f"standardizer.mean_{s}"].shape) for s in range(3)] == det.feature_shapes_
    assert float(state["standardizer.std_0"].min()) != 1.0
    loaded = pickle.loads(pickle.dumps(det))
    assert loaded.feature_normalization == "position"
    np.testing.assert_array_equal(loaded.score_samples(small_images), det.score_samples(small_images))
    np.testing.assert_array_equal(loaded.anomaly_map(small_images[:2]), det.anomaly_map(small_images[:2]))


def test_csflow_position_exports_the_same_numbers(csflow_position_fit, small_images, tmp_path):
    det = csflow_position_fit[0]
    images = [small_images[0], small_images[1][:50, :40]]
    scores, maps = det.score_samples_and_anomaly_map(images)
    got_scores, got_maps = ExportedDetector(det.export_onnx(tmp_path / "model.onnx"), threads=1) \
        .score_samples_and_anomaly_map(images)
    np.testing.assert_allclose(got_scores, scores, rtol=1e-4, atol=0)
    for got, expected in zip(got_maps, maps):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_csflow_channel_is_the_default_and_keeps_the_plain_pyramid(csflow_position_fit, small_images):
    assert CSFlowDetector().feature_normalization == "channel"
    channel = _csflow("channel").fit(small_images)
    assert isinstance(channel.extractor_, ImagePyramidFeatures)
    assert not any("standardizer" in k for k in channel.extractor_.state_dict())
    difference = csflow_position_fit[0].score_samples(small_images) - channel.score_samples(small_images)
    assert np.abs(difference).max() > 1e-3


@pytest.mark.parametrize("bad", ["layer+position", "layer", None])
def test_csflow_bad_feature_normalization_is_rejected(small_images, bad):
    with pytest.raises(ValueError, match="'feature_normalization' parameter of CSFlowDetector must be a str among"):
        _csflow(bad).fit(small_images)


def test_csflow_pickles_from_before_the_option_load_as_channel(small_images):
    # Saved before feature_normalization existed: no such name in the state, features standardised per channel.
    original = _csflow("channel").fit(small_images)
    state = copy.deepcopy(original.__getstate__())
    del state["feature_normalization"], state["_fit_params"]["feature_normalization"]
    unpickled = CSFlowDetector.__new__(CSFlowDetector)
    unpickled.__setstate__(state)
    assert unpickled.get_params()["feature_normalization"] == "channel"
    assert unpickled._fit_params["feature_normalization"] == "channel"  # what rebuilds the extractor
    np.testing.assert_array_equal(unpickled.score_samples(small_images), original.score_samples(small_images))
