"""Shared fixtures: small synthetic surfaces and cheap detector settings."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skflow_ad.datasets import make_surface_train_test

KSDD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ksdd"

#: Cheap settings shared by the image tests: tiny images, random weights, few epochs.
FAST_UFLOW = dict(backbone="resnet18", pretrained=False, image_size=32, max_epochs=2, batch_size=8, random_state=0)


def save_rgb(path, seed, size):
    """Write random RGB pixels ``size + (3,)`` as an image file (format from the suffix); return them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, size=(*size, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def gray(pixels):
    """Pillow's 8-bit gray conversion of RGB pixels, as the loaders do it."""
    return np.asarray(Image.fromarray(pixels).convert("L"))


@pytest.fixture
def one_torch_thread():
    """One PyTorch thread: tiny models run fastest so, and dask's worker processes use one too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def surfaces():
    """64 px synthetic surfaces: 120 normal training images, 40 + 40 test images."""
    return make_surface_train_test(
        n_train=120, n_test_normal=40, n_test_anomalous=40, image_size=64, random_state=0
    )


@pytest.fixture(scope="session")
def small_images():
    rng = np.random.RandomState(0)
    return (rng.rand(12, 32, 32) * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def fitted_uflow(small_images):
    from skflow_ad import UFlowDetector

    return UFlowDetector(**FAST_UFLOW).fit(small_images)
