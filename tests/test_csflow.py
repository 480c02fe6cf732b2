"""CSFlowDetector: the estimator on top of the cross-scale flow."""

import pickle

import joblib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.estimator_checks import parametrize_with_checks

from skflow_ad import CSFlowDetector
from skflow_ad.csflow import BACKBONE_NAMES
from skflow_ad.features import (
    CSFLOW_BACKBONE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetStage,
    ImagePyramidFeatures,
)
from skflow_ad.nn.csflow import csflow_anomaly_map, csflow_anomaly_score

#: Cheap settings: the smallest image size CS-Flow supports, a narrow flow, random weights.
FAST_CSFLOW = dict(
    pretrained=False, image_size=128, cross_conv_hidden_channels=16, max_epochs=2, batch_size=8, random_state=0
)


@parametrize_with_checks([CSFlowDetector(max_epochs=3, random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def images():
    rng = np.random.RandomState(0)
    return (rng.rand(10, 128, 96) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fitted(images):
    return CSFlowDetector(**FAST_CSFLOW).fit(images)


def test_image_size_below_the_minimum_says_the_minimum(images):
    with pytest.raises(ValueError, match="at least 128 px.*got 96"):
        CSFlowDetector(**{**FAST_CSFLOW, "image_size": 96}).fit(images)


def test_three_scales_of_efficientnet_b5_stage_6(fitted):
    # 304 channels at stride 32 of the image at full, half and quarter size
    assert fitted.feature_shapes_ == [(304, 4, 4), (304, 2, 2), (304, 1, 1)]
    assert fitted.flow_.kernel_sizes == (3, 3, 3, 5)
    assert fitted.flow_.n_coupling_blocks == 4


def test_paper_backbone_is_the_authors_weights_tag(fitted):
    # efficientnet_pytorch's EfficientNet-B5 (the authors') is TensorFlow's AutoAugment checkpoint,
    # timm tag aa_in1k; timm's default tag for tf_efficientnet_b5 is Noisy Student (ns_jft_in1k).
    assert CSFLOW_BACKBONE == "tf_efficientnet_b5.aa_in1k"
    trunk = fitted.extractor_.trunk
    assert trunk.model_name == "tf_efficientnet_b5.aa_in1k" and trunk.pretrained_tag == "aa_in1k"
    assert fitted.extractor_.mean == IMAGENET_MEAN and fitted.extractor_.std == IMAGENET_STD


def test_pretrained_true_requests_the_tag_explicitly(monkeypatch):
    import timm

    requested = []
    create_model = timm.create_model

    def offline_create_model(name, pretrained=False, **kwargs):
        requested.append((name, pretrained))
        return create_model(name, pretrained=False, **kwargs)  # no download in tests

    monkeypatch.setattr(timm, "create_model", offline_create_model)
    EfficientNetStage(True)
    other = EfficientNetStage(True, "tf_efficientnet_b5.ap_in1k")
    assert requested == [("tf_efficientnet_b5.aa_in1k", True), ("tf_efficientnet_b5.ap_in1k", True)]
    # AdvProp weights expect inputs in [-1, 1]: the normalisation follows the tag
    assert other.pretrained_tag == "ap_in1k" and other.mean == (0.5, 0.5, 0.5) and other.std == (0.5, 0.5, 0.5)


def test_backbone_names_are_timm_weight_tags(images):
    import timm

    assert BACKBONE_NAMES[0] == "efficientnet_b5"
    assert set(BACKBONE_NAMES[1:]) <= set(timm.list_pretrained("tf_efficientnet_b5.*"))
    for name in ("tf_efficientnet_b5.no_such_tag", "efficientnet_b5.sw_in12k_ft_in1k", "tf_efficientnet_b5"):
        with pytest.raises(ValueError, match="'backbone' parameter of CSFlowDetector must be a str among.*aa_in1k"):
            CSFlowDetector(name, **FAST_CSFLOW).fit(images)


def test_local_weights_file_with_a_tag_loads_without_download(tmp_path, monkeypatch):
    import timm

    source = timm.create_model(CSFLOW_BACKBONE, pretrained=False)
    with torch.no_grad():
        source.conv_stem.weight.fill_(0.25)
    path = tmp_path / "b5.pth"
    torch.save(source.state_dict(), path)
    create_model = timm.create_model

    def no_download(name, pretrained=False, **kwargs):
        assert pretrained is False, "a local weights file must not trigger a download"
        return create_model(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", no_download)
    stage = EfficientNetStage(str(path), "tf_efficientnet_b5.ns_jft_in1k")
    assert torch.equal(stage.stem[0].weight, torch.full_like(stage.stem[0].weight, 0.25))
    assert torch.equal(stage.blocks[0][0].conv_dw.weight, source.blocks[0][0].conv_dw.weight)
    assert stage.pretrained_tag == "ns_jft_in1k" and stage.mean == IMAGENET_MEAN


class RecordingTrunk(torch.nn.Module):
    """A trunk that keeps the images it is given and returns a 2-channel stride-4 map."""

    output_channels = 2  # declared, so the pyramid need not probe the trunk
    output_stride = 4

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, images):
        self.inputs.append(images.clone())
        return images[:, :2, ::4, ::4]


@pytest.mark.parametrize("size", [(64, 48), (66, 50)])
def test_image_pyramid_is_nearest_resizing(size):
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    trunk = RecordingTrunk()
    ImagePyramidFeatures(trunk, n_scales=3)(images)
    full, half, quarter = trunk.inputs
    height, width = size
    assert torch.equal(full, images)
    assert half.shape[-2:] == (height // 2, width // 2) and quarter.shape[-2:] == (height // 4, width // 4)
    for scaled in (half, quarter):
        torch.testing.assert_close(scaled, F.interpolate(images, size=scaled.shape[-2:], mode="nearest"),
                                   rtol=0, atol=0)
        bilinear = F.interpolate(images, size=scaled.shape[-2:], mode="bilinear", align_corners=False)
        assert not torch.allclose(scaled, bilinear)
    if height % 4 == 0 and width % 4 == 0:
        # pixels are picked, not averaged: every second / fourth pixel of the full image
        assert torch.equal(half, images[..., ::2, ::2]) and torch.equal(quarter, images[..., ::4, ::4])


def test_features_are_standardised_on_the_training_set(fitted, images):
    # the per-channel statistics are learned once at fit time and kept with the model
    maps = fitted.extract_features(images)
    for m in maps:
        np.testing.assert_allclose(m.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-3)
        np.testing.assert_allclose(m.std(dim=(0, 2, 3)).numpy(), 1, rtol=1e-2)


def test_scores_and_maps_follow_the_paper(fitted, images):
    with torch.inference_mode():
        latents, _ = fitted.flow_(fitted.extract_features(images[:4]))
    # image score: mean of z^2 / 2 over every latent entry of every scale
    expected = 0.5 * sum(z.pow(2).sum(dim=(1, 2, 3)) for z in latents) / sum(z[0].numel() for z in latents)
    np.testing.assert_allclose(fitted.score_samples(images[:4]), -expected.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(-fitted.score_samples(images[:4]), csflow_anomaly_score(latents).numpy(), rtol=1e-6)
    maps = fitted.anomaly_map(images[:4])
    assert maps.shape == (4, 128, 96) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, csflow_anomaly_map(latents, (128, 96), mode="all").numpy(), rtol=1e-4)
    masks = fitted.predict_mask(images[:4])
    assert masks.shape == (4, 128, 96) and masks.dtype == bool
    np.testing.assert_array_equal(
        fitted.predict_mask(images[:4], method="threshold"), maps > fitted.pixel_threshold_
    )


def test_map_mode_max_uses_the_finest_scale(images):
    det = CSFlowDetector(**{**FAST_CSFLOW, "map_mode": "max", "max_epochs": 1}).fit(images[:6])
    with torch.inference_mode():
        latents, _ = det.flow_(det.extract_features(images[:2]))
    expected = csflow_anomaly_map(latents[:1], (128, 96), mode="all").numpy()
    np.testing.assert_allclose(det.anomaly_map(images[:2]), expected, rtol=1e-5)
    # changing the mode after fit does not desynchronise maps and the learned threshold
    det.set_params(map_mode="all")
    np.testing.assert_allclose(det.anomaly_map(images[:2]), expected, rtol=1e-5)


def test_loss_is_per_dimension_and_training_moves_it(fitted):
    assert len(fitted.loss_curve_) == fitted.n_iter_ == 2
    # per-dimension NLL of standardised features starts near 0.5 (z ~ N(0, 1), log-det ~ 0)
    assert 0.2 < fitted.loss_curve_[0] < 0.8
    assert fitted.loss_curve_[-1] < fitted.loss_curve_[0]


def test_persistence_round_trip(fitted, images, tmp_path):
    path = tmp_path / "csflow.joblib"
    joblib.dump(fitted, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.score_samples(images), fitted.score_samples(images))
    np.testing.assert_array_equal(loaded.anomaly_map(images[:2]), fitted.anomaly_map(images[:2]))
    np.testing.assert_array_equal(loaded.predict_mask(images[:2]), fitted.predict_mask(images[:2]))


def test_model_saved_on_a_gpu_device_loads_here(fitted, images):
    det = pickle.loads(pickle.dumps(fitted))
    det.device_ = "cuda:0"
    loaded = pickle.loads(pickle.dumps(det))
    assert loaded.device_ == ("cuda:0" if torch.cuda.is_available() else "cpu")
    np.testing.assert_allclose(loaded.score_samples(images), fitted.score_samples(images), rtol=1e-5)


def test_bad_input_keeps_the_model(fitted, images):
    det = pickle.loads(pickle.dumps(fitted))
    before = det.score_samples(images[:2])
    with pytest.raises(ValueError, match="1 channel\\(s\\) but CSFlowDetector was fitted on images with 3"):
        rgb = CSFlowDetector(**{**FAST_CSFLOW, "max_epochs": 1}).fit(np.stack([images[:4]] * 3, axis=-1))
        rgb.score_samples(images[:1])
    with pytest.raises(ValueError, match="NaN"):
        det.fit(np.full((3, 128, 128), np.nan))
    np.testing.assert_array_equal(det.score_samples(images[:2]), before)


def _shallow_trunk():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, 2, 1),
    )


def test_user_backbone_below_efficientnet_minimum(images):
    det = CSFlowDetector(_shallow_trunk(), **{**FAST_CSFLOW, "image_size": 64, "max_epochs": 1}).fit(images[:6])
    assert det.feature_shapes_ == [(64, 8, 8), (64, 4, 4), (64, 2, 2)]
    loaded = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(loaded.score_samples(images[:3]), det.score_samples(images[:3]))


def test_detects_planted_defects():
    # A random EfficientNet-B5 barely carries information (its stage-6 features of random
    # weights are nearly constant), so this end-to-end check uses a shallow random trunk;
    # the image score is the paper's global mean of z^2 / 2, hence several defects per image.
    from sklearn.metrics import roc_auc_score

    from skflow_ad import make_surface_train_test

    data = make_surface_train_test(
        n_train=80, n_test_normal=20, n_test_anomalous=20, image_size=64, random_state=0,
        defect_types=("contamination", "spot", "crack"), max_defects_per_image=3,
    )
    det = CSFlowDetector(
        _shallow_trunk(), pretrained=False, image_size=64, cross_conv_hidden_channels=32,
        max_epochs=10, batch_size=16, learning_rate=2e-3, random_state=0,
    ).fit(data.X_train)
    image_auroc = roc_auc_score(data.y_test == -1, -det.score_samples(data.X_test))
    pixel_auroc = roc_auc_score(data.masks_test.ravel(), det.anomaly_map(data.X_test).ravel())
    assert image_auroc > 0.75, image_auroc
    assert pixel_auroc > 0.75, pixel_auroc
    assert det.loss_curve_[-1] < det.loss_curve_[0] - 0.1
