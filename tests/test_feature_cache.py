"""The cached training features: float32, or float16 to halve their memory."""

import numpy as np
import pytest

import skflow_ad.modes
from skflow_ad.trainer import FlowTrainer
from skflow_ad import CSFlowDetector, UFlowDetector

from .conftest import FAST_UFLOW


@pytest.fixture
def cached_dtypes(monkeypatch):
    """Record the dtype of the features each fit hands to the trainer."""
    seen = []
    original = FlowTrainer.fit

    def fit(self, flow, features):
        seen.append(str(features[0].dtype))
        return original(self, flow, features)

    monkeypatch.setattr(FlowTrainer, "fit", fit)
    return seen


def test_float16_cache_trains_the_same_model_closely(fitted_uflow, small_images, cached_dtypes):
    half = UFlowDetector(**FAST_UFLOW, feature_cache_dtype="float16").fit(small_images)
    assert cached_dtypes == ["torch.float16"] and half.feature_cache_dtype_ == "float16"
    assert fitted_uflow.feature_cache_dtype_ == "float32"
    full = fitted_uflow.score_samples(small_images)
    scores = half.score_samples(small_images)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, full, rtol=1e-2, atol=1e-3)
    assert np.corrcoef(scores, full)[0, 1] > 0.99


def test_auto_switches_to_float16_beyond_the_size_limit(small_images, cached_dtypes, monkeypatch):
    det = UFlowDetector(**{**FAST_UFLOW, "max_epochs": 1})
    assert det.fit(small_images).feature_cache_dtype_ == "float32"
    # 12 images of 32 px give 12 * (64*8*8 + 128*4*4 + 256*2*2) * 4 = 344,064 bytes of float32 features.
    monkeypatch.setattr(skflow_ad.modes, "FLOAT32_CACHE_BYTES", 344_063)
    assert det.fit(small_images).feature_cache_dtype_ == "float16"
    monkeypatch.setattr(skflow_ad.modes, "FLOAT32_CACHE_BYTES", 344_064)
    assert det.fit(small_images).feature_cache_dtype_ == "float32"
    assert cached_dtypes == ["torch.float32", "torch.float16", "torch.float32"]


def test_csflow_calibrates_on_a_float16_cache(small_images):
    from .test_csflow import FAST_CSFLOW, _shallow_trunk

    params = {**FAST_CSFLOW, "image_size": 64, "max_epochs": 1}
    fits = [CSFlowDetector(_shallow_trunk(), **params, feature_cache_dtype=dtype).fit(small_images)
            for dtype in ("float32", "float16")]
    assert [f.feature_cache_dtype_ for f in fits] == ["float32", "float16"]
    stats = [{k: v for k, v in f.extractor_.state_dict().items() if k.startswith("channel_")} for f in fits]
    assert stats[0].keys() == stats[1].keys() and len(stats[0]) == 6
    for name in stats[0]:
        np.testing.assert_allclose(stats[1][name].numpy(), stats[0][name].numpy(), rtol=1e-2, atol=1e-4)


def test_unknown_cache_dtype_is_rejected(small_images):
    with pytest.raises(ValueError, match="feature_cache_dtype"):
        UFlowDetector(**FAST_UFLOW, feature_cache_dtype="bfloat16").fit(small_images)
