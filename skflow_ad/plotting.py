"""Plots of anomaly maps, masks and evaluation curves.

matplotlib is an optional dependency (``pip install "skflow-ad[plot]"``); it
is imported only when a function here is called.

Conventions, as in the rest of the package: anomaly maps and anomaly scores
are **higher = more anomalous** (negate ``score_samples``), masks are True /
nonzero on anomalous pixels. Images may be gray ``(H, W)`` or ``(H, W, 1)``,
RGB ``(H, W, 3)`` or channels-first ``(1 | 3, H, W)``; ``uint8`` (0-255),
``uint16`` (0-65535) or floating point in [0, 1].

:func:`colorize` (numpy only) turns an anomaly map into RGB heatmap pixels,
as the command line writes them.

Mask outlines are drawn in fixed colours: the **ground truth** as a solid
:data:`MASK_TRUE_COLOR` (lime green) line, the **prediction** as a dashed
:data:`MASK_PRED_COLOR` (white) line; a legend names them.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import metrics
from ._validation import check_image_values, image_scale
from .conventions import anomalous_from_labels, check_mask, check_scores, to_numpy
from .extras import require

__all__ = [
    "INFERNO_ANCHORS",
    "MASK_PRED_COLOR",
    "MASK_TRUE_COLOR",
    "colorize",
    "plot_anomaly",
    "plot_anomaly_grid",
    "plot_pro_curve",
    "plot_roc_curve",
]

#: Colour of the ground-truth mask outline (solid).
MASK_TRUE_COLOR = "lime"
#: Colour of the predicted mask outline (dashed).
MASK_PRED_COLOR = "white"

#: matplotlib's "inferno" colour map sampled at 9 evenly spaced positions (RGB, 0-255):
#: perceptually ordered, dark for normal and bright for anomalous pixels.
#: :func:`colorize` interpolates it linearly, so heatmaps need no matplotlib.
INFERNO_ANCHORS = np.array(
    [
        (0, 0, 4), (33, 12, 74), (87, 16, 110), (138, 34, 106), (188, 55, 84),
        (228, 90, 49), (249, 142, 9), (249, 203, 53), (252, 255, 164),
    ],
    dtype=np.float64,
)

_MASK_TRUE_LABEL = "ground truth"
_MASK_PRED_LABEL = "predicted"


def _pyplot():
    return require("matplotlib.pyplot", "skflow_ad.plotting", "plot")


def _figure_legend_loc():
    import matplotlib

    # "outside" placements (kept clear of the panels by the constrained layout) came in 3.7.
    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return "outside lower center" if (major, minor) >= (3, 7) else "lower center"


def colorize(anomaly_map, low, high):
    """Map values to RGB colours of the "inferno" colour map, ``low`` darkest and ``high`` brightest.

    Needs only numpy (the command line writes its heatmap PNGs with it).
    Values are placed linearly between ``low`` (position 0) and ``high``
    (position 1), clipped to that range, and coloured by linear interpolation
    between the :data:`INFERNO_ANCHORS`; NaN is coloured like ``low``, and so
    is everything when ``high <= low``.

    Parameters
    ----------
    anomaly_map : array-like of shape (H, W)
        Higher = more anomalous.
    low, high : float
        Values at the ends of the colour map.

    Returns
    -------
    rgb : ndarray of shape (H, W, 3), uint8

    Examples
    --------
    >>> import numpy as np
    >>> from skflow_ad.plotting import colorize
    >>> colorize(np.array([[0.0, 0.5, 1.0]]), 0.0, 1.0).tolist()
    [[[0, 0, 4], [188, 55, 84], [252, 255, 164]]]
    """
    anomaly_map = np.asarray(anomaly_map, dtype=np.float64)
    span = high - low
    position = np.clip((anomaly_map - low) / span, 0.0, 1.0) if span > 0 else np.zeros(anomaly_map.shape)
    position = np.nan_to_num(position, nan=0.0)
    anchors = np.linspace(0.0, 1.0, len(INFERNO_ANCHORS))
    rgb = np.stack([np.interp(position, anchors, INFERNO_ANCHORS[:, c]) for c in range(3)], axis=-1)
    return np.rint(rgb).astype(np.uint8)


# --------------------------------------------------------------------------
# Validation


def _displayable_image(image, name):
    """An ``(H, W)`` or ``(H, W, 3)`` float image in [0, 1]."""
    array = to_numpy(image)
    if array.ndim == 3:
        if array.shape[-1] in (1, 3):
            pass
        elif array.shape[0] in (1, 3):
            array = np.moveaxis(array, 0, -1)
        else:
            raise ValueError(
                f"{name} has shape {array.shape}: a 3-d image must be (H, W, C) or "
                "(C, H, W) with C = 1 (gray) or 3 (RGB)."
            )
        if array.shape[-1] == 1:
            array = array[..., 0]
    elif array.ndim != 2:
        raise ValueError(
            f"{name} has shape {array.shape}; expected a gray (H, W) or RGB (H, W, 3) image."
        )
    if array.dtype == np.bool_:
        return array.astype(np.float64)
    scale = image_scale(array.dtype, name)
    check_image_values(array, name)
    return array.astype(np.float64) / scale


def _checked_map(anomaly_map, image_shape, name):
    array = check_scores(to_numpy(anomaly_map), name, expected_ndim=None)
    if array.shape != image_shape:
        raise ValueError(
            f"{name} has shape {array.shape} but the image is {image_shape}: anomaly "
            "maps must have the image's resolution (as the detectors' anomaly_map returns)."
        )
    return array


def _checked_overlay_mask(mask, image_shape, name):
    array = to_numpy(mask)
    if array.shape != image_shape:
        raise ValueError(f"{name} has shape {array.shape} but the image is {image_shape}.")
    return check_mask(array, name)


def _as_list(batch, name, n_expected=None):
    """Per-image list from an array batch ``(n, ...)`` or a list; None stays None."""
    if batch is None:
        return None
    items = list(batch) if isinstance(batch, (list, tuple)) else list(to_numpy(batch))
    if not items:
        raise ValueError(f"{name} is empty.")
    if n_expected is not None and len(items) != n_expected:
        raise ValueError(f"{name} has {len(items)} items but images has {n_expected}.")
    return items


def _label_texts(labels, n_images):
    """Display texts of image labels: class names, or the labels themselves for strings."""
    array = to_numpy(labels)
    if array.shape != (n_images,):
        raise ValueError(f"labels must have shape ({n_images},), got {array.shape}.")
    if array.dtype.kind in "US" or (
        array.dtype == object and all(isinstance(label, str) for label in array)
    ):
        return [str(label) for label in array]
    if array.dtype == np.bool_:
        is_anomalous = array
    else:
        values = set(np.unique(array).tolist())
        if values <= {-1, 1} and -1 in values:
            is_anomalous = array == -1
        elif values <= {0, 1} and 0 in values:
            is_anomalous = array == 1
        elif values == {1}:
            raise ValueError(
                "labels are all 1, which means normal for {+1, -1} labels and anomalous "
                "for {0, 1} labels; pass booleans (True = anomalous) or strings."
            )
        else:
            raise ValueError(
                f"labels has values {sorted(values)}; expected {{+1 normal, -1 anomalous}}, "
                "{0 normal, 1 anomalous}, booleans (True = anomalous) or strings."
            )
    return ["anomalous" if flag else "normal" for flag in is_anomalous]


def _mask_legend_handles(show_true, show_pred):
    from matplotlib.lines import Line2D

    handles = []
    if show_true:
        handles.append(Line2D([], [], color=MASK_TRUE_COLOR, linestyle="-", label=_MASK_TRUE_LABEL))
    if show_pred:
        handles.append(Line2D([], [], color=MASK_PRED_COLOR, linestyle="--", label=_MASK_PRED_LABEL))
    return handles


def _draw_outline(ax, mask, color, linestyle):
    if mask.any() and not mask.all():  # a constant mask has no outline
        ax.contour(
            mask.astype(np.float32), levels=[0.5], colors=[color],
            linestyles=[linestyle], linewidths=1.5,
        )


# --------------------------------------------------------------------------
# Images


def plot_anomaly(
    image,
    anomaly_map=None,
    *,
    mask_pred=None,
    mask_true=None,
    ax=None,
    alpha=0.5,
    cmap="jet",
    vmin=None,
    vmax=None,
    title=None,
    colorbar=False,
    legend=True,
):
    """Show an image with its anomaly map overlaid and mask outlines.

    Parameters
    ----------
    image : array-like of shape (H, W), (H, W, 1 | 3) or (1 | 3, H, W)
        The image: uint8, uint16 or float in [0, 1]; gray images are shown
        in gray levels.
    anomaly_map : array-like of shape (H, W), default=None
        Pixel anomaly scores (higher = more anomalous) at the image's
        resolution, drawn over it as a heatmap; None shows the image alone.
    mask_pred : array-like of shape (H, W), default=None
        Predicted mask (e.g. from ``predict_mask``), outlined with a dashed
        :data:`MASK_PRED_COLOR` (white) line.
    mask_true : array-like of shape (H, W), default=None
        Ground-truth mask, outlined with a solid :data:`MASK_TRUE_COLOR`
        (lime) line.
    ax : matplotlib Axes, default=None
        Where to draw; None creates a new figure.
    alpha : float in [0, 1], default=0.5
        Opacity of the heatmap.
    cmap : str or Colormap, default="jet"
        Colormap of the heatmap.
    vmin, vmax : float, default=None
        Heatmap values mapped to the ends of the colormap; None uses the
        map's minimum / maximum. Fix them to compare several images.
    title : str, default=None
        Axes title.
    colorbar : bool, default=False
        Whether to add a colorbar of the heatmap next to the axes.
    legend : bool, default=True
        Whether to name the mask outlines in a legend (when masks are given).

    Returns
    -------
    ax : matplotlib Axes
        The axes drawn on.

    Raises
    ------
    ValueError
        If the map or a mask does not have the image's ``(H, W)``, or the
        image has an unsupported shape or values.
    TypeError
        If the image dtype is unsupported (signed integers, complex, ...).
    """
    plt = _pyplot()
    picture = _displayable_image(image, "image")
    shape = picture.shape[:2]
    heatmap = None if anomaly_map is None else _checked_map(anomaly_map, shape, "anomaly_map")
    true_mask = None if mask_true is None else _checked_overlay_mask(mask_true, shape, "mask_true")
    pred_mask = None if mask_pred is None else _checked_overlay_mask(mask_pred, shape, "mask_pred")
    if not (isinstance(alpha, numbers.Real) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    if ax is None:
        _, ax = plt.subplots()

    if picture.ndim == 2:
        ax.imshow(picture, cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(picture)
    if heatmap is not None:
        overlay = ax.imshow(heatmap, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
        if colorbar:
            ax.figure.colorbar(overlay, ax=ax, fraction=0.046, pad=0.04)
    if true_mask is not None:
        _draw_outline(ax, true_mask, MASK_TRUE_COLOR, "solid")
    if pred_mask is not None:
        _draw_outline(ax, pred_mask, MASK_PRED_COLOR, "dashed")
    if legend and (true_mask is not None or pred_mask is not None):
        ax.legend(
            handles=_mask_legend_handles(true_mask is not None, pred_mask is not None),
            loc="upper right", fontsize="small", facecolor="0.3", labelcolor="white",
            framealpha=0.7,
        )
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def plot_anomaly_grid(
    images,
    anomaly_maps=None,
    *,
    masks_pred=None,
    masks_true=None,
    scores=None,
    labels=None,
    titles=None,
    n_cols=4,
    alpha=0.5,
    cmap="jet",
    vmin=None,
    vmax=None,
    panel_size=2.5,
    colorbar=False,
):
    """A grid of :func:`plot_anomaly` panels, one per image.

    All heatmaps share one colour scale, so that panels can be compared.

    Parameters
    ----------
    images : array-like of shape (n, H, W) or (n, H, W, C), or list of n images
        The images (see :func:`plot_anomaly`); a list may mix sizes.
    anomaly_maps : array-like of shape (n, H, W) or list of n (H_i, W_i) arrays, default=None
        Anomaly maps at each image's resolution, e.g. from ``anomaly_map``.
    masks_pred, masks_true : array-like of shape (n, H, W) or list, default=None
        Predicted and ground-truth masks, outlined as in :func:`plot_anomaly`;
        one legend for the whole figure names them.
    scores : array-like of shape (n,), default=None
        Image anomaly scores (higher = more anomalous, e.g.
        ``-score_samples(X)``), shown in the panel titles.
    labels : array-like of shape (n,), default=None
        Image labels shown in the titles: ``{+1, -1}``, ``{0, 1}`` or booleans
        are shown as "normal" / "anomalous"; strings (e.g. defect types) as
        they are.
    titles : list of n str, default=None
        Text starting each panel title (e.g. file names).
    n_cols : int, default=4
        Number of columns (fewer when there are fewer images).
    alpha, cmap : see :func:`plot_anomaly`
    vmin, vmax : float, default=None
        Ends of the shared colour scale; None uses the minimum / maximum over
        all maps.
    panel_size : float, default=2.5
        Width and height of each panel, in inches.
    colorbar : bool, default=False
        Whether to add one colorbar for the shared scale.

    Returns
    -------
    fig : matplotlib Figure
        With one axes per image, in row-major order (plus the colorbar's).

    Raises
    ------
    ValueError
        If the inputs have different numbers of images, shapes that do not
        match, or invalid values.
    """
    plt = _pyplot()
    image_list = _as_list(images, "images")
    n_images = len(image_list)
    map_list = _as_list(anomaly_maps, "anomaly_maps", n_images)
    pred_list = _as_list(masks_pred, "masks_pred", n_images)
    true_list = _as_list(masks_true, "masks_true", n_images)
    texts = [[] for _ in range(n_images)]
    if titles is not None:
        for parts, text in zip(texts, _as_list(titles, "titles", n_images)):
            parts.append(str(text))
    if labels is not None:
        for parts, text in zip(texts, _label_texts(labels, n_images)):
            parts.append(text)
    if scores is not None:
        score_values = check_scores(to_numpy(scores), "scores")
        if score_values.shape != (n_images,):
            raise ValueError(f"scores must have shape ({n_images},), got {score_values.shape}.")
        for parts, value in zip(texts, score_values):
            parts.append(f"score {value:.3g}")
    if isinstance(n_cols, (bool, np.bool_)) or not isinstance(n_cols, numbers.Integral) or n_cols < 1:
        raise ValueError(f"n_cols must be a positive integer, got {n_cols!r}.")
    if not (isinstance(panel_size, numbers.Real) and panel_size > 0):
        raise ValueError(f"panel_size must be a positive number, got {panel_size!r}.")

    if map_list is not None and (vmin is None or vmax is None):
        checked = [check_scores(to_numpy(m), f"anomaly_maps[{i}]", expected_ndim=None) for i, m in enumerate(map_list)]
        vmin = min(float(m.min()) for m in checked) if vmin is None else vmin
        vmax = max(float(m.max()) for m in checked) if vmax is None else vmax

    n_cols = min(int(n_cols), n_images)
    n_rows = -(-n_images // n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(panel_size * n_cols, panel_size * n_rows + 0.4),
        squeeze=False, layout="constrained",
    )
    for index, ax in enumerate(axes.ravel()):
        if index >= n_images:
            ax.remove()
            continue
        plot_anomaly(
            image_list[index],
            None if map_list is None else map_list[index],
            mask_pred=None if pred_list is None else pred_list[index],
            mask_true=None if true_list is None else true_list[index],
            ax=ax, alpha=alpha, cmap=cmap, vmin=vmin, vmax=vmax, legend=False,
            title=" · ".join(texts[index]) if texts[index] else None,
        )
        if texts[index]:
            ax.title.set_fontsize("small")
    used_axes = axes.ravel()[:n_images]
    if colorbar and map_list is not None:
        fig.colorbar(used_axes[0].images[-1], ax=list(used_axes), shrink=0.8, label="pixel anomaly score")
    handles = _mask_legend_handles(true_list is not None, pred_list is not None)
    if handles:
        fig.legend(
            handles=handles, loc=_figure_legend_loc(), ncols=len(handles),
            fontsize="small", facecolor="0.3", labelcolor="white",
        )
    return fig


# --------------------------------------------------------------------------
# Curves


def plot_roc_curve(y_true, anomaly_scores, *, ax=None, name=None, plot_chance_level=True, **line_kwargs):
    """Image-level ROC curve, with the AUROC in the legend.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Image labels: ``{+1 normal, -1 anomalous}``, ``{0 normal, 1 anomalous}``
        or booleans (True = anomalous); both classes must be present.
    anomaly_scores : array-like of shape (n,)
        Anomaly scores, **higher = more anomalous** (e.g.
        ``-detector.score_samples(X)``).
    ax : matplotlib Axes, default=None
        Where to draw; None creates a new figure. Draw several curves on one
        axes to compare detectors (pass ``plot_chance_level=False`` after the
        first).
    name : str, default=None
        Curve name in the legend, before the AUROC.
    plot_chance_level : bool, default=True
        Whether to draw the diagonal of a random detector.
    **line_kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot` (``color``, ``linewidth``...).

    Returns
    -------
    ax : matplotlib Axes
    """
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    is_anomalous = anomalous_from_labels(y_true, "y_true")
    scores = check_scores(anomaly_scores, "anomaly_scores")
    auroc = metrics.image_auroc(is_anomalous, scores)
    fpr, tpr, _ = roc_curve(is_anomalous, scores)
    if ax is None:
        _, ax = plt.subplots()
    label = f"AUROC = {auroc:.3f}" if name is None else f"{name} (AUROC = {auroc:.3f})"
    ax.plot(fpr, tpr, label=label, **line_kwargs)
    if plot_chance_level:
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="chance (AUROC = 0.5)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (normal images flagged)")
    ax.set_ylabel("True positive rate (anomalies found)")
    ax.legend(loc="lower right")
    return ax


def plot_pro_curve(
    masks_true, anomaly_maps, *, ax=None, max_fpr=0.3, n_thresholds=None, name=None, **line_kwargs
):
    """Per-region overlap curve up to ``max_fpr``, with the AUPRO in the legend.

    The curve is :func:`skflow_ad.metrics.pro_curve`; the AUPRO is the
    normalised area under it for pixel false positive rates in
    ``[0, max_fpr]`` (the x-range shown), as in :func:`skflow_ad.metrics.aupro`.

    Parameters
    ----------
    masks_true : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, True / nonzero = anomalous pixel.
    anomaly_maps : array-like of shape (n, H, W) or list of (H_i, W_i) arrays
        Pixel anomaly scores, **higher = more anomalous**.
    ax : matplotlib Axes, default=None
        Where to draw; None creates a new figure.
    max_fpr : float in (0, 1], default=0.3
        Upper false positive rate of the AUPRO and of the x-axis.
    n_thresholds : int >= 2 or None, default=None
        See :func:`skflow_ad.metrics.pro_curve`.
    name : str, default=None
        Curve name in the legend, before the AUPRO.
    **line_kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot`.

    Returns
    -------
    ax : matplotlib Axes
    """
    plt = _pyplot()
    max_fpr = metrics.check_max_fpr(max_fpr)
    fpr, pro = metrics.pro_curve(masks_true, anomaly_maps, n_thresholds=n_thresholds)
    # Same area as metrics.aupro, without computing the curve a second time.
    area = metrics.aupro_from_curve(fpr, pro, max_fpr)
    if ax is None:
        _, ax = plt.subplots()
    metric_text = f"AUPRO@{max_fpr:g} = {area:.3f}"
    ax.plot(fpr, pro, label=metric_text if name is None else f"{name} ({metric_text})", **line_kwargs)
    ax.set_xlim(0.0, max_fpr)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("False positive rate (normal pixels)")
    ax.set_ylabel("Per-region overlap")
    ax.legend(loc="lower right")
    return ax
