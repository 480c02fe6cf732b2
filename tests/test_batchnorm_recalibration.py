"""backbone_batchnorm="recalibrate": BatchNorm statistics of the frozen backbone re-estimated on the training images."""

import numpy as np
import pytest
import torch
from torch import nn

import skflow_ad
from skflow_ad import CSFlowDetector, UFlowDetector
from skflow_ad.features import BatchNormRecalibration, batchnorm_layers, freeze
from skflow_ad.inference import Preprocess

from .conftest import FAST_UFLOW
from .test_csflow import FAST_CSFLOW
from .test_persistence import TwoScales  # two maps, no BatchNorm


def _net():
    torch.manual_seed(0)
    return freeze(nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5),
    ))


def _batches():
    g = torch.Generator().manual_seed(1)
    # unequal batch sizes, data far from zero mean / unit variance
    return [3.0 + 2.5 * torch.randn(n, 3, 9, 7, generator=g) for n in (5, 8, 2)]


def test_running_statistics_are_those_of_all_inputs_seen():
    net = _net()
    batches = _batches()
    with BatchNormRecalibration(net), torch.no_grad():
        for batch in batches:
            net(batch)
    # The first layer's input does not depend on the recalibration: its statistics must be exact.
    with torch.no_grad():
        inputs = torch.cat([net[0](b) for b in batches]).double()
    mean = inputs.mean((0, 2, 3))
    var = inputs.permute(1, 0, 2, 3).reshape(4, -1).var(1, unbiased=True)
    torch.testing.assert_close(net[1].running_mean.double(), mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(net[1].running_var.double(), var, atol=1e-5, rtol=1e-5)
    # In eval mode, every BatchNorm output over the data is now centred and scaled to 1 per channel.
    with torch.no_grad():
        first = torch.cat([net[1](net[0](b)) for b in batches])
        last = torch.cat([net(b) for b in batches])
    for out in (first, last):
        assert out.mean((0, 2, 3)).abs().max() < 0.05
        assert (out.std((0, 2, 3)) - 1).abs().max() < 0.05


def test_only_batchnorm_layers_train_and_the_network_is_frozen_after():
    net = _net()
    with BatchNormRecalibration(net), torch.no_grad():
        assert [m.training for m in net] == [False, True, False, False, False, True]
        batch = _batches()[0]
        torch.testing.assert_close(net(batch), net(batch), atol=0, rtol=0)  # dropout stays off
    assert not any(m.training for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())


def test_an_error_inside_the_block_leaves_the_statistics_alone():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), BatchNormRecalibration(net), torch.no_grad():
        net(_batches()[0])
        raise RuntimeError("boom")
    for key in ("1.running_mean", "1.running_var", "5.running_mean", "5.running_var"):
        torch.testing.assert_close(net.state_dict()[key], before[key], atol=0, rtol=0)
    assert not any(m.training for m in net.modules())


def test_a_network_without_batchnorm_is_refused():
    with pytest.raises(ValueError, match="needs BatchNorm layers.*backbone_batchnorm='frozen'"):
        BatchNormRecalibration(nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 7, 5])))


def test_fit_with_a_backbone_without_batchnorm_fails_before_any_image_and_keeps_the_model(small_images):
    det = UFlowDetector(backbone=TwoScales(), pretrained=False, image_size=32, max_epochs=1, batch_size=8,
                        random_state=0).fit(small_images)
    scores = det.score_samples(small_images)
    det.set_params(backbone_batchnorm="recalibrate")
    with pytest.raises(ValueError, match="needs BatchNorm layers"):
        det.fit(small_images)
    np.testing.assert_array_equal(det.score_samples(small_images), scores)


@pytest.mark.parametrize("bad", ["recalibrated", "", None])
def test_bad_backbone_batchnorm_is_rejected(small_images, bad):
    with pytest.raises(ValueError, match="'backbone_batchnorm' parameter of UFlowDetector must be a str among"):
        UFlowDetector(**FAST_UFLOW, backbone_batchnorm=bad).fit(small_images)


def test_default_keeps_the_stored_statistics(fitted_uflow):
    assert UFlowDetector().backbone_batchnorm == "frozen"
    assert CSFlowDetector().backbone_batchnorm == "frozen"
    # random weights: timm's initial statistics, zero mean and unit variance
    for layer in batchnorm_layers(fitted_uflow.extractor_):
        assert float(layer.running_mean.abs().max()) == 0.0
        assert float((layer.running_var - 1).abs().max()) == 0.0


@pytest.fixture(scope="module")
def recalibrated(small_images):
    return UFlowDetector(**FAST_UFLOW, backbone_batchnorm="recalibrate").fit(small_images)


def test_fit_sets_the_first_layers_statistics_from_the_training_images(recalibrated, small_images):
    body = recalibrated.extractor_.wrapped.body
    preprocess = Preprocess(recalibrated.extractor_.mean, recalibrated.extractor_.std)
    with torch.no_grad():
        conv = body.conv1(preprocess(torch.from_numpy(small_images[..., None]))).double()
    torch.testing.assert_close(body.bn1.running_mean.double(), conv.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(body.bn1.running_var.double(),
                               conv.permute(1, 0, 2, 3).reshape(conv.shape[1], -1).var(1), atol=1e-4, rtol=1e-4)
    assert not any(m.training for m in recalibrated.extractor_.modules())


def test_recalibrated_model_files_predict_the_same(recalibrated, small_images, tmp_path):
    path = tmp_path / "model.skad"
    recalibrated.save(path)
    loaded = skflow_ad.load(path)
    assert loaded.backbone_batchnorm == "recalibrate"
    np.testing.assert_array_equal(loaded.score_samples(small_images), recalibrated.score_samples(small_images))
    frozen = UFlowDetector(**FAST_UFLOW).fit(small_images)
    assert np.abs(frozen.score_samples(small_images) - recalibrated.score_samples(small_images)).max() > 1e-3


def test_recalibrated_uflow_detects_and_localises_better_on_surfaces(surfaces):
    from skflow_ad.metrics import image_auroc, pixel_auroc

    settings = dict(backbone="resnet18", pretrained=False, image_size=64, max_epochs=10, batch_size=16,
                    random_state=0)
    results = {}
    for option in ("frozen", "recalibrate"):
        det = UFlowDetector(**settings, backbone_batchnorm=option).fit(surfaces.X_train)
        scores, maps = det.score_samples_and_anomaly_map(surfaces.X_test)
        results[option] = image_auroc(surfaces.y_test, -scores), pixel_auroc(surfaces.masks_test, maps)
    assert results["recalibrate"][0] > 0.75, results
    assert results["recalibrate"][1] > 0.88, results
    assert results["recalibrate"][1] > results["frozen"][1] + 0.05, results


def test_csflow_recalibrates_its_efficientnet(small_images):
    images = np.resize(small_images, (6, 128, 128))
    det = CSFlowDetector(**FAST_CSFLOW, backbone_batchnorm="recalibrate").fit(images)
    layers = batchnorm_layers(det.extractor_)
    assert layers and float(layers[0].running_mean.abs().max()) > 0
    assert np.isfinite(det.score_samples(images)).all()


def test_exported_recalibrated_model_predicts_the_same(recalibrated, small_images, tmp_path):
    from skflow_ad.deploy import ExportedDetector

    path = tmp_path / "model.onnx"
    recalibrated.export_onnx(path)
    exported = ExportedDetector(path, runtime="onnxruntime")
    scores, maps = recalibrated.score_samples_and_anomaly_map(small_images)
    exported_scores, exported_maps = exported.score_samples_and_anomaly_map(small_images)
    np.testing.assert_allclose(exported_scores, scores, rtol=1e-4, atol=0)
    np.testing.assert_allclose(exported_maps, maps, rtol=0, atol=1e-4)
