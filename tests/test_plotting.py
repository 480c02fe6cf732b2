"""Plots of skflow_ad.plotting, drawn with the Agg backend."""

import importlib
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from skflow_ad import metrics, plotting  # noqa: E402
from skflow_ad.plotting import (  # noqa: E402
    INFERNO_ANCHORS,
    MASK_PRED_COLOR,
    MASK_TRUE_COLOR,
    colorize,
    plot_anomaly,
    plot_anomaly_grid,
    plot_pro_curve,
    plot_roc_curve,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def batch():
    """6 gray uint8 images (3 normal, 3 with a bright square), maps, masks, labels."""
    rng = np.random.RandomState(0)
    images = (rng.rand(6, 24, 24) * 120).astype(np.uint8)
    masks_true = np.zeros((6, 24, 24), dtype=bool)
    for index in range(3, 6):
        masks_true[index, 4 + index : 10 + index, 6:12] = True
    images[masks_true] = 230
    maps = rng.rand(6, 24, 24).astype(np.float32) * 0.3 + masks_true * 0.6
    masks_pred = maps > 0.5
    labels = np.array([1, 1, 1, -1, -1, -1])
    return images, maps, masks_pred, masks_true, labels


def _legend_texts(legend):
    return [text.get_text() for text in legend.get_texts()]


# ------------------------------------------------------------------ plot_anomaly
def test_plot_anomaly_draws_image_heatmap_and_outlines(batch):
    images, maps, masks_pred, masks_true, _ = batch
    ax = plot_anomaly(images[4], maps[4], mask_pred=masks_pred[4], mask_true=masks_true[4], title="defect")
    assert isinstance(ax, matplotlib.axes.Axes)
    assert len(ax.images) == 2  # the image, then the heatmap
    assert ax.images[0].get_cmap().name == "gray"
    assert ax.images[1].get_alpha() == 0.5
    assert len(ax.collections) >= 2  # one contour set per mask
    assert _legend_texts(ax.get_legend()) == ["ground truth", "predicted"]
    handle_colors = [matplotlib.colors.to_hex(h.get_color()) for h in ax.get_legend().legend_handles]
    assert handle_colors == [matplotlib.colors.to_hex(MASK_TRUE_COLOR), matplotlib.colors.to_hex(MASK_PRED_COLOR)]
    assert ax.get_title() == "defect"


def test_plot_anomaly_image_alone_and_on_given_axes(batch):
    images = batch[0]
    fig, ax = plt.subplots()
    assert plot_anomaly(images[0], ax=ax) is ax
    assert len(ax.images) == 1 and not ax.collections and ax.get_legend() is None


@pytest.mark.parametrize(
    "image",
    [
        np.random.RandomState(0).rand(24, 24, 3),  # float RGB in [0, 1]
        (np.random.RandomState(0).rand(3, 24, 24) * 255).astype(np.uint8),  # channels-first
        torch.rand(24, 24, 1),  # gray tensor with a channel axis
        (np.random.RandomState(0).rand(24, 24) * 65535).astype(np.uint16),
    ],
)
def test_plot_anomaly_accepts_image_layouts(image, batch):
    ax = plot_anomaly(image, batch[1][0], colorbar=True)
    shown = ax.images[0].get_array()
    assert shown.shape[:2] == (24, 24) and float(shown.max()) <= 1.0
    assert len(ax.figure.axes) == 2  # the colorbar's axes


def test_plot_anomaly_empty_mask_draws_no_outline(batch):
    images, maps, _, masks_true, _ = batch
    ax = plot_anomaly(images[0], maps[0], mask_true=masks_true[0])
    assert not ax.collections
    assert _legend_texts(ax.get_legend()) == ["ground truth"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(anomaly_map=np.zeros((12, 12))), ValueError, r"anomaly_map has shape \(12, 12\) but the image is \(24, 24\)"),
        (dict(mask_true=np.zeros((24, 23), dtype=bool)), ValueError, r"mask_true has shape \(24, 23\)"),
        (dict(mask_pred=np.full((24, 24), 7)), ValueError, "mask_pred has values"),
        (dict(anomaly_map=np.full((24, 24), np.nan)), ValueError, "anomaly_map contains NaN"),
        (dict(alpha=2), ValueError, r"alpha must be a number in \[0, 1\]"),
    ],
)
def test_plot_anomaly_rejects_mismatched_inputs(batch, kwargs, error, match):
    with pytest.raises(error, match=match):
        plot_anomaly(batch[0][0], **kwargs)


@pytest.mark.parametrize(
    "image, error, match",
    [
        (np.zeros((2, 24, 24, 3)), ValueError, r"expected a gray \(H, W\) or RGB \(H, W, 3\) image"),
        (np.zeros((24, 24, 5)), ValueError, "a 3-d image must be"),
        (np.full((24, 24), 2.0), ValueError, r"must lie in \[0, 1\]"),
        (np.zeros((24, 24), dtype=np.int32), TypeError, "dtype int32"),
    ],
)
def test_plot_anomaly_rejects_bad_images(image, error, match):
    with pytest.raises(error, match=match):
        plot_anomaly(image)


# -------------------------------------------------------------- plot_anomaly_grid
def test_plot_anomaly_grid_has_one_panel_per_image(batch, tmp_path):
    images, maps, masks_pred, masks_true, labels = batch
    scores = maps.max(axis=(1, 2))
    fig = plot_anomaly_grid(
        images, maps, masks_pred=masks_pred, masks_true=masks_true, scores=scores, labels=labels, n_cols=4
    )
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 6  # 2 x 4 grid, the 2 unused cells removed
    assert fig.axes[0].get_title() == f"normal · score {scores[0]:.3g}"
    assert fig.axes[5].get_title().startswith("anomalous · ")
    assert all(len(ax.images) == 2 for ax in fig.axes)
    assert all(ax.collections for ax in fig.axes[3:])
    # One shared colour scale.
    assert {ax.images[1].get_clim() for ax in fig.axes} == {(float(maps.min()), float(maps.max()))}
    assert _legend_texts(fig.legends[0]) == ["ground truth", "predicted"]
    path = tmp_path / "grid.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_anomaly_grid_lists_of_mixed_sizes_and_text_labels():
    rng = np.random.RandomState(1)
    images = [rng.rand(16, 20), rng.rand(30, 24, 3)]
    maps = [rng.rand(16, 20), rng.rand(30, 24)]
    fig = plot_anomaly_grid(images, maps, labels=np.array(["good", "scratch"], dtype=object),
                            titles=["a.png", "b.png"], vmin=0, vmax=2, colorbar=True)
    assert len(fig.axes) == 3  # two panels and the colorbar
    assert [ax.get_title() for ax in fig.axes[:2]] == ["a.png · good", "b.png · scratch"]
    assert fig.axes[0].images[1].get_clim() == (0, 2)
    assert not fig.legends


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(anomaly_maps=np.zeros((5, 24, 24))), "anomaly_maps has 5 items but images has 6"),
        (dict(masks_true=np.zeros((6, 24, 20), dtype=bool)), r"mask_true has shape \(24, 20\)"),
        (dict(scores=np.zeros(4)), r"scores must have shape \(6,\)"),
        (dict(labels=np.ones(6)), "labels are all 1"),
        (dict(labels=np.arange(6)), "labels has values"),
        (dict(n_cols=0), "n_cols must be a positive integer"),
    ],
)
def test_plot_anomaly_grid_rejects_mismatched_inputs(batch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_anomaly_grid(batch[0], **kwargs)


# ------------------------------------------------------------------------ curves
def test_plot_roc_curve_reports_the_auroc(batch):
    labels = batch[4]
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9])
    ax = plot_roc_curve(labels, scores, name="model A")
    auroc = metrics.image_auroc(labels, scores)
    assert _legend_texts(ax.get_legend()) == [f"model A (AUROC = {auroc:.3f})", "chance (AUROC = 0.5)"]
    line = ax.lines[0]
    assert line.get_xdata()[0] == 0 and line.get_xdata()[-1] == 1 and line.get_ydata()[-1] == 1
    # A second curve on the same axes, without another chance line.
    plot_roc_curve(labels == -1, -scores, ax=ax, plot_chance_level=False, color="red")
    assert len(ax.lines) == 3 and ax.lines[2].get_color() == "red"


def test_plot_pro_curve_reports_the_aupro(batch, tmp_path):
    _, maps, _, masks_true, _ = batch
    ax = plot_pro_curve(masks_true, maps, max_fpr=0.2)
    aupro = metrics.aupro(masks_true, maps, max_fpr=0.2)
    assert _legend_texts(ax.get_legend()) == [f"AUPRO@0.2 = {aupro:.3f}"]
    assert ax.get_xlim() == (0.0, 0.2)
    fpr, pro = metrics.pro_curve(masks_true, maps)
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), fpr)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), pro)
    ax.figure.savefig(tmp_path / "pro.png")
    assert (tmp_path / "pro.png").read_bytes()[:8] == PNG_SIGNATURE


def test_curve_input_errors(batch):
    _, maps, _, masks_true, labels = batch
    with pytest.raises(ValueError, match="different lengths"):
        plot_roc_curve(labels, np.zeros(5))
    with pytest.raises(ValueError, match="only normal samples"):
        plot_roc_curve(np.ones(6, dtype=bool) & False, np.zeros(6))
    with pytest.raises(ValueError, match=r"max_fpr must be a number in \(0, 1\]"):
        plot_pro_curve(masks_true, maps, max_fpr=0)
    with pytest.raises(ValueError, match="masks_true and anomaly_maps have different numbers of images"):
        plot_pro_curve(masks_true, maps[:3])


# ------------------------------------------------------------------ colorize
def test_colorize_is_dark_to_bright_and_clips():
    rgb = colorize(np.array([[-1.0, 0.0, 0.5, 1.0, 2.0, np.nan]]), 0.0, 1.0)
    assert rgb.shape == (1, 6, 3) and rgb.dtype == np.uint8
    brightness = rgb.astype(int).sum(axis=-1)[0]
    assert brightness[0] == brightness[1] == brightness[5] < brightness[2] < brightness[3] == brightness[4]
    constant = colorize(np.ones((2, 2)), 3.0, 3.0)  # an empty range: everything at the dark end
    np.testing.assert_array_equal(constant, np.broadcast_to(INFERNO_ANCHORS[0], (2, 2, 3)))


def test_colorize_is_matplotlibs_inferno():
    cmap = matplotlib.colormaps["inferno"]
    anchors = np.linspace(0.0, 1.0, len(INFERNO_ANCHORS))
    exact = np.rint(cmap(anchors)[:, :3] * 255)
    np.testing.assert_array_equal(colorize(anchors[None] * 4 - 2, -2.0, 2.0)[0], exact)  # any (low, high)
    # Between the anchors the interpolation stays close to matplotlib's 256-entry table.
    positions = np.linspace(0.0, 1.0, 1001)
    difference = np.abs(colorize(positions[None], 0.0, 1.0)[0].astype(int) - np.rint(cmap(positions)[:, :3] * 255))
    assert difference.mean() < 3 and difference.max() <= 17


# ------------------------------------------------------------- missing matplotlib
def test_missing_matplotlib_raises_an_install_hint(monkeypatch, batch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    # Importing the module must not need matplotlib; only calling a plot does.
    reloaded = importlib.reload(plotting)
    for call in (
        lambda: reloaded.plot_anomaly(batch[0][0]),
        lambda: reloaded.plot_anomaly_grid(batch[0]),
        lambda: reloaded.plot_roc_curve(batch[4], np.arange(6.0)),
        lambda: reloaded.plot_pro_curve(batch[3], batch[1]),
    ):
        with pytest.raises(ImportError, match=r'pip install "skflow-ad\[plot\]"'):
            call()
    # colorize needs numpy only.
    np.testing.assert_array_equal(reloaded.colorize(batch[1][0], 0.0, 1.0), colorize(batch[1][0], 0.0, 1.0))
